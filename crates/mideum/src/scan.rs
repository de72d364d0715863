//! `mideum scan [FILE|-] [--json] [--mask|--redact] [--show-values]`: finds
//! Korean personal data in a file or standard input.
//!
//! By default it prints the text with every entity masked (`--redact`
//! replaces them with `[TYPE]` instead). With `--json` it prints
//! `{"entities": [{"type": "KR_PHONE", "start": 10, "end": 23, "score": 0.95}]}`
//! where start/end are Unicode character offsets (Python string indices).
//! Matched values are never printed unless `--show-values` is given, so the
//! command cannot itself become a leak.
//!
//! Invalid UTF-8 is decoded lossily (each invalid sequence becomes U+FFFD)
//! and a warning goes to stderr; offsets then refer to the decoded text.
//! Lossy decoding was chosen over refusing the input because a scanner that
//! stops at the first bad byte would let the rest of the file go unchecked.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mideum_guard::{mask, redact, Analyzer};

/// Arguments of `mideum scan`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ScanArgs {
    /// File to scan; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
    /// Print the entities as JSON instead of the masked text.
    #[arg(long)]
    pub json: bool,
    /// Print the text with entities masked (the default).
    #[arg(long, conflicts_with = "redact")]
    pub mask: bool,
    /// Print the text with entities replaced by `[TYPE]`.
    #[arg(long)]
    pub redact: bool,
    /// Include the matched values in the JSON output.
    #[arg(long)]
    pub show_values: bool,
}

/// Runs the command, writing to stdout.
pub fn run(args: &ScanArgs) -> Result<()> {
    let input = read_input(args.file.as_deref())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let lossy = scan_bytes(args, &input, &mut out)?;
    out.flush()?;
    if lossy {
        eprintln!(
            "warning: input is not valid UTF-8; invalid bytes were replaced by U+FFFD \
             and offsets refer to the decoded text"
        );
    }
    Ok(())
}

fn read_input(file: Option<&Path>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    match file {
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
        }
        Some(p) if p == Path::new("-") => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")?;
        }
        Some(p) => {
            buf = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        }
    }
    Ok(buf)
}

/// Scans `input` and writes the result to `out`. Returns true when the input
/// was not valid UTF-8 and had to be decoded lossily.
pub fn scan_bytes(args: &ScanArgs, input: &[u8], out: &mut dyn Write) -> Result<bool> {
    let text = String::from_utf8_lossy(input);
    let lossy = matches!(text, std::borrow::Cow::Owned(_));
    let analyzer = Analyzer::new()?;
    let entities = analyzer.analyze(&text);
    if args.json {
        let list: Vec<serde_json::Value> = entities
            .iter()
            .map(|e| {
                let mut o = serde_json::Map::new();
                o.insert("type".into(), e.kind.as_str().into());
                o.insert("start".into(), e.start.into());
                o.insert("end".into(), e.end.into());
                let score = (f64::from(e.score) * 100.0).round() / 100.0;
                o.insert("score".into(), score.into());
                if args.show_values {
                    o.insert("value".into(), text[e.byte_start..e.byte_end].into());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        let doc = serde_json::json!({ "entities": list });
        serde_json::to_writer(&mut *out, &doc)?;
        writeln!(out)?;
    } else if args.redact {
        out.write_all(redact(&text, &entities)?.as_bytes())?;
    } else {
        out.write_all(mask(&text, &entities)?.as_bytes())?;
    }
    Ok(lossy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(args: &ScanArgs, input: &[u8]) -> (String, bool) {
        let mut out = Vec::new();
        let lossy = scan_bytes(args, input, &mut out).expect("scan runs");
        (String::from_utf8(out).expect("utf-8 output"), lossy)
    }

    #[test]
    fn json_reports_char_offsets_without_values() {
        let args = ScanArgs {
            json: true,
            ..ScanArgs::default()
        };
        let (out, lossy) = run_on(&args, "연락처는 010-1234-5678입니다".as_bytes());
        assert!(!lossy);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let e = &v["entities"][0];
        assert_eq!(e["type"], "KR_PHONE");
        assert_eq!(
            (e["start"].as_u64(), e["end"].as_u64()),
            (Some(5), Some(18))
        );
        assert!(!out.contains("5678"), "values must not leak: {out}");
        let args = ScanArgs {
            json: true,
            show_values: true,
            ..ScanArgs::default()
        };
        let (out, _) = run_on(&args, "연락처는 010-1234-5678입니다".as_bytes());
        assert!(out.contains("010-1234-5678"));
    }

    #[test]
    fn default_masks_and_redact_redacts() {
        let (out, _) = run_on(&ScanArgs::default(), "주민번호 900101-1234568".as_bytes());
        assert_eq!(out, "주민번호 900101-1******");
        let args = ScanArgs {
            redact: true,
            ..ScanArgs::default()
        };
        let (out, _) = run_on(&args, "주민번호 900101-1234568".as_bytes());
        assert_eq!(out, "주민번호 [KR_RRN]");
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily_and_still_scanned() {
        let mut input = b"\xff\xfe ".to_vec();
        input.extend_from_slice("전화 010-1234-5678".as_bytes());
        let (out, lossy) = run_on(&ScanArgs::default(), &input);
        assert!(lossy);
        assert!(out.ends_with("전화 010-****-5678"), "{out}");
    }
}
