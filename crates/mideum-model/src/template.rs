//! Chat templates rendered with minijinja under Hugging Face semantics: `trim_blocks` and
//! `lstrip_blocks`, `raise_exception`, `strftime_now`, Python string methods, and a `tojson`
//! that formats like transformers' (`json.dumps` with `ensure_ascii=False`: key order kept,
//! `<`, `>`, `&`, `'` and non-ASCII left as they are).

use crate::error::{ModelError, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use std::sync::Arc;

/// A calendar time for `strftime_now` (UTC by default; tests inject a fixed one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl DateTime {
    pub fn now_utc() -> DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        DateTime::from_unix(secs)
    }

    pub fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    fn weekday(&self) -> usize {
        // 0 = Monday, from days since 1970-01-01 (a Thursday).
        let (y, m) = if self.month <= 2 {
            (self.year - 1, self.month + 9)
        } else {
            (self.year, self.month - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let doy = (153 * m as i64 + 2) / 5 + self.day as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        (days + 3).rem_euclid(7) as usize
    }

    fn day_of_year(&self) -> u32 {
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let leap = (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0;
        CUM[(self.month as usize - 1) % 12] + self.day + u32::from(leap && self.month > 2)
    }

    /// Python `strftime` for the directives chat templates use.
    pub fn strftime(&self, fmt: &str) -> String {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        const DAYS: [&str; 7] = [
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ];
        let month = MONTHS[(self.month as usize + 11) % 12];
        let wd = DAYS[self.weekday()];
        let mut out = String::new();
        let mut it = fmt.chars();
        while let Some(c) = it.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('d') => out += &format!("{:02}", self.day),
                Some('e') => out += &format!("{:>2}", self.day),
                Some('-') => match it.next() {
                    Some('d') => out += &self.day.to_string(),
                    Some('m') => out += &self.month.to_string(),
                    Some(o) => {
                        out.push_str("%-");
                        out.push(o)
                    }
                    None => out.push_str("%-"),
                },
                Some('m') => out += &format!("{:02}", self.month),
                Some('Y') => out += &self.year.to_string(),
                Some('y') => out += &format!("{:02}", self.year.rem_euclid(100)),
                Some('b') | Some('h') => out += &month[..3],
                Some('B') => out += month,
                Some('a') => out += &wd[..3],
                Some('A') => out += wd,
                Some('H') => out += &format!("{:02}", self.hour),
                Some('I') => {
                    out += &format!(
                        "{:02}",
                        if self.hour.is_multiple_of(12) {
                            12
                        } else {
                            self.hour % 12
                        }
                    )
                }
                Some('p') => out += if self.hour < 12 { "AM" } else { "PM" },
                Some('M') => out += &format!("{:02}", self.minute),
                Some('S') => out += &format!("{:02}", self.second),
                Some('j') => out += &format!("{:03}", self.day_of_year()),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o)
                }
                None => out.push('%'),
            }
        }
        out
    }
}

type Clock = Arc<dyn Fn() -> DateTime + Send + Sync>;

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        pad_token: Option<String>,
        unk_token: Option<String>,
    ) -> Result<ChatTemplate> {
        Self::with_clock(
            source,
            bos_token,
            eos_token,
            pad_token,
            unk_token,
            Arc::new(DateTime::now_utc),
        )
    }

    pub fn with_clock(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        pad_token: Option<String>,
        unk_token: Option<String>,
        clock: Clock,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| ModelError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", move |fmt: String| -> String {
            clock().strftime(&fmt)
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::Template(format!("cannot compile the chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            pad_token,
            unk_token,
        })
    }

    /// Renders the prompt for `messages` (a JSON array of `{role, content, ...}`) as
    /// `tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
    /// add_generation_prompt=...)` does.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if !messages.is_array() {
            return Err(ModelError::Input(
                "`messages` must be a JSON array of {role, content} objects".into(),
            ));
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            tools => tools.map(|t| Value::from(minijinja::value::Serde(t))).unwrap_or(Value::from(())),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            pad_token => self.pad_token.clone(),
            unk_token => self.unk_token.clone(),
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            ModelError::Template(msg)
        })
    }
}

fn tojson_filter(v: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() => None,
        Some(i) => match i.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => i.as_str().map(str::to_string),
        },
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&v, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
}

/// Serialises like Python's `json.dumps`: `", "`/`": "` separators without indent, `","` and
/// newlines with it.
fn write_json(
    v: &Value,
    o: &JsonOpts,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    if depth > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, d: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..d {
                out.push_str(ind);
            }
        }
    };
    let item_sep = if o.indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
                if v.to_string().contains('.') {
                    out.push_str(&py_float_repr(i as f64));
                } else {
                    out.push_str(&i.to_string());
                }
            } else if let Ok(f) = f64::try_from(v.clone()) {
                out.push_str(&py_float_repr(f));
            } else {
                out.push_str(&v.to_string());
            }
        }
        ValueKind::String => write_json_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(it, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(|a| a.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let ks = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                write_json_str(&ks, o.ensure_ascii, out);
                out.push_str(": ");
                write_json(&v.get_item(k)?, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_str(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

fn write_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 or from 1e16.
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let e = format!("{:e}", f); // e.g. "1.5e-5", "1e16"
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = format!("{}", f);
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixed() -> Clock {
        Arc::new(|| DateTime {
            year: 2026,
            month: 11,
            day: 30,
            hour: 9,
            minute: 5,
            second: 7,
        })
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (123.25, "123.25"),
            (0.0001, "0.0001"),
        ] {
            assert_eq!(py_float_repr(f), s);
        }
    }

    #[test]
    fn strftime_and_calendar() {
        let d = DateTime::from_unix(1_796_083_200); // 2026-12-01 00:00:00 UTC
        assert_eq!((d.year, d.month, d.day), (2026, 12, 1));
        let t = DateTime {
            year: 2026,
            month: 11,
            day: 30,
            hour: 9,
            minute: 5,
            second: 7,
        };
        assert_eq!(t.strftime("%d %b %Y"), "30 Nov 2026");
        assert_eq!(
            t.strftime("%A %B %-d, %H:%M:%S %j %%"),
            "Monday November 30, 09:05:07 334 %"
        );
    }

    #[test]
    fn tojson_like_transformers() {
        let t = ChatTemplate::with_clock(
            "{{ tools | tojson }}|{{ tools | tojson(indent=2) }}",
            None,
            None,
            None,
            None,
            fixed(),
        )
        .unwrap();
        let tools = json!([{"name": "날씨", "d": "a<b & c>'d'", "z": 1, "a": [1.5, true, null]}]);
        let out = t.render(&json!([]), Some(&tools), false).unwrap();
        assert_eq!(
            out,
            "[{\"name\": \"날씨\", \"d\": \"a<b & c>'d'\", \"z\": 1, \"a\": [1.5, true, null]}]|[\n  {\n    \"name\": \"날씨\",\n    \"d\": \"a<b & c>'d'\",\n    \"z\": 1,\n    \"a\": [\n      1.5,\n      true,\n      null\n    ]\n  }\n]"
        );
    }

    #[test]
    fn hf_features() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}\n{{ m.content | trim }}{{ m.role.upper() }}\n{% endfor %}{{ strftime_now('%d %b %Y') }}";
        let t =
            ChatTemplate::with_clock(src, Some("<s>".into()), None, None, None, fixed()).unwrap();
        let out = t
            .render(&json!([{"role": "user", "content": " 안녕 "}]), None, true)
            .unwrap();
        assert_eq!(out, "<s>안녕USER\n30 Nov 2026");
        let err = t
            .render(&json!([{"role": "system", "content": "x"}]), None, true)
            .unwrap_err();
        assert!(err.to_string().contains("no system"), "{err}");
        assert!(ChatTemplate::new("{% if %}", None, None, None, None).is_err());
        assert!(t.render(&json!({"role": "user"}), None, true).is_err());
    }
}
