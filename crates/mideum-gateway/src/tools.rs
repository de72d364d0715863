//! Mi:dm answers a tool call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
//! This parser turns generated text, whole or in streamed pieces, into content text and
//! OpenAI-style tool calls. Text that only might be the start of a tag is held back until it
//! is known; a block that is not valid JSON is passed on as content.

use serde_json::Value;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Content(String),
    Call(ToolCall),
}

#[derive(Default)]
pub struct ToolCallParser {
    buf: String,
    in_call: bool,
}

fn parse_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(a) => serde_json::to_string(a).ok()?,
    };
    Some(ToolCall { name, arguments })
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_tag(s: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| {
            s.len() >= n && s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..])
        })
        .unwrap_or(0)
}

impl ToolCallParser {
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            if !self.in_call {
                if let Some(p) = self.buf.find(OPEN) {
                    if p > 0 {
                        out.push(Delta::Content(self.buf[..p].to_string()));
                    }
                    self.buf.drain(..p + OPEN.len());
                    self.in_call = true;
                    continue;
                }
                let keep = partial_tag(&self.buf, OPEN);
                let emit = self.buf.len() - keep;
                if emit > 0 {
                    out.push(Delta::Content(self.buf[..emit].to_string()));
                    self.buf.drain(..emit);
                }
                return out;
            }
            let Some(p) = self.buf.find(CLOSE) else {
                return out;
            };
            let body = self.buf[..p].to_string();
            self.buf.drain(..p + CLOSE.len());
            self.in_call = false;
            out.push(match parse_call(&body) {
                Some(c) => Delta::Call(c),
                None => Delta::Content(format!("{OPEN}{body}{CLOSE}")),
            });
        }
    }

    /// The end of the text: an unterminated call is still a call if its JSON is complete.
    pub fn finish(&mut self) -> Vec<Delta> {
        let rest = std::mem::take(&mut self.buf);
        if self.in_call {
            self.in_call = false;
            return vec![match parse_call(&rest) {
                Some(c) => Delta::Call(c),
                None => Delta::Content(format!("{OPEN}{rest}")),
            }];
        }
        if rest.is_empty() {
            vec![]
        } else {
            vec![Delta::Content(rest)]
        }
    }

    /// Parses a whole answer: (content, tool calls).
    pub fn parse_all(text: &str) -> (String, Vec<ToolCall>) {
        let mut p = ToolCallParser::default();
        let mut deltas = p.push(text);
        deltas.extend(p.finish());
        let mut content = String::new();
        let mut calls = Vec::new();
        for d in deltas {
            match d {
                Delta::Content(c) => content.push_str(&c),
                Delta::Call(c) => calls.push(c),
            }
        }
        (content, calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "확인해 볼게요.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"서울\", \"unit\": \"c\"}}\n</tool_call><tool_call>{\"name\": \"now\", \"arguments\": \"{}\"}</tool_call>";

    #[test]
    fn whole_answer() {
        let (content, calls) = ToolCallParser::parse_all(ANSWER);
        assert_eq!(content, "확인해 볼게요.\n");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, "{\"city\":\"서울\",\"unit\":\"c\"}");
        assert_eq!(calls[1].arguments, "{}");
    }

    #[test]
    fn every_chunking_gives_the_same_result() {
        let chars: Vec<char> = ANSWER.chars().collect();
        let whole = ToolCallParser::parse_all(ANSWER);
        for cut in 1..chars.len() {
            for step in [1usize, 3, 7] {
                let mut p = ToolCallParser::default();
                let mut deltas = Vec::new();
                let mut i = 0;
                let mut first = true;
                while i < chars.len() {
                    let n = if first { cut } else { step };
                    first = false;
                    let piece: String = chars[i..(i + n).min(chars.len())].iter().collect();
                    deltas.extend(p.push(&piece));
                    i += n;
                }
                deltas.extend(p.finish());
                let mut content = String::new();
                let mut calls = Vec::new();
                for d in deltas {
                    match d {
                        Delta::Content(c) => content.push_str(&c),
                        Delta::Call(c) => calls.push(c),
                    }
                }
                assert_eq!((content, calls), whole, "cut {cut} step {step}");
            }
        }
    }

    #[test]
    fn invalid_or_unterminated_blocks() {
        let (c, calls) = ToolCallParser::parse_all("a <tool_call>not json</tool_call> b");
        assert_eq!(c, "a <tool_call>not json</tool_call> b");
        assert!(calls.is_empty());
        let (c, calls) =
            ToolCallParser::parse_all("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}");
        assert_eq!((c.as_str(), calls.len()), ("", 1));
        let (c, calls) = ToolCallParser::parse_all("x < y <tool");
        assert_eq!((c.as_str(), calls.len()), ("x < y <tool", 0));
    }
}
