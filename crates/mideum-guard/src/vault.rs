//! Reversible pseudonymization. A [`Vault`] belongs to one conversation: it
//! hands out placeholders such as `<KR_PHONE_1>` (same value, same
//! placeholder; distinct values, distinct placeholders) and puts the
//! originals back in the model's answer, in plain text, in JSON tool-call
//! arguments (where `<` may arrive as `\u003c`) and across streamed chunks.
//!
//! Placeholders never collide with the input: a number is skipped when its
//! placeholder already occurs in the text, and text that spells a placeholder
//! this vault issued earlier is itself pseudonymized (as `LITERAL`) so that
//! restoring gives back exactly what the user wrote.

use std::collections::{HashMap, HashSet};

use crate::error::GuardError;
use crate::ops::check_spans;
use crate::types::Entity;

/// Longest placeholder body we accept (`KR_DRIVER_LICENSE_` plus a counter).
const MAX_BODY: usize = 40;
const LITERAL: &str = "LITERAL";

/// Where a text to restore comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// Plain text: placeholders are replaced by the raw original.
    Text,
    /// The inside of JSON strings (tool-call arguments): placeholders may be
    /// written `\u003c...\u003e`, and originals are inserted JSON-escaped.
    Json,
}

/// Per-conversation placeholder store.
#[derive(Debug, Default, Clone)]
pub struct Vault {
    by_value: HashMap<(String, String), String>,
    by_placeholder: HashMap<String, String>,
    counters: HashMap<String, u64>,
}

fn body_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// Every substring of `text` shaped like a placeholder (`<BODY>`).
fn placeholder_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = memchr::memchr(b'<', &b[from..]) {
        let s = from + k;
        let mut j = s + 1;
        while j < b.len() && body_byte(b[j]) && j - s <= MAX_BODY {
            j += 1;
        }
        if j < b.len() && b[j] == b'>' && j > s + 1 {
            out.push((s, j + 1));
        }
        from = s + 1;
    }
    out
}

impl Vault {
    /// An empty vault.
    pub fn new() -> Vault {
        Vault::default()
    }

    /// Number of placeholders issued.
    pub fn len(&self) -> usize {
        self.by_placeholder.len()
    }

    /// True when no placeholder has been issued.
    pub fn is_empty(&self) -> bool {
        self.by_placeholder.is_empty()
    }

    /// Every placeholder this vault has issued.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.by_placeholder.keys().map(String::as_str)
    }

    /// The original behind a placeholder, if this vault issued it.
    pub fn original(&self, placeholder: &str) -> Option<&str> {
        self.by_placeholder.get(placeholder).map(String::as_str)
    }

    fn placeholder_for(&mut self, kind: &str, value: &str, taken: &HashSet<&str>) -> String {
        let key = (kind.to_string(), value.to_string());
        if let Some(p) = self.by_value.get(&key) {
            return p.clone();
        }
        let counter = self.counters.entry(kind.to_string()).or_insert(0);
        let p = loop {
            *counter += 1;
            let p = format!("<{kind}_{counter}>");
            if !taken.contains(p.as_str()) && !self.by_placeholder.contains_key(&p) {
                break p;
            }
        };
        self.by_placeholder.insert(p.clone(), value.to_string());
        self.by_value.insert(key, p.clone());
        p
    }

    /// Replaces every entity by a placeholder and remembers the original.
    pub fn pseudonymize(&mut self, text: &str, entities: &[Entity]) -> Result<String, GuardError> {
        check_spans(text, entities)?;
        let spans = placeholder_spans(text);
        let taken: HashSet<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        let mut lit = spans.iter().peekable();
        for e in entities
            .iter()
            .map(Some)
            .chain(std::iter::once(None::<&Entity>))
        {
            let gap_end = e.map_or(text.len(), |e| e.byte_start);
            // Escape text that spells a placeholder this vault already issued.
            while let Some(&&(s, end)) = lit.peek() {
                if s < pos {
                    lit.next();
                    continue;
                }
                if end > gap_end {
                    break;
                }
                lit.next();
                let literal = &text[s..end];
                if self.by_placeholder.contains_key(literal) {
                    out.push_str(&text[pos..s]);
                    let p = self.placeholder_for(LITERAL, literal, &taken);
                    out.push_str(&p);
                    pos = end;
                }
            }
            out.push_str(&text[pos..gap_end]);
            pos = gap_end;
            if let Some(e) = e {
                let value = &text[e.byte_start..e.byte_end];
                let p = self.placeholder_for(e.kind.as_str(), value, &taken);
                out.push_str(&p);
                pos = e.byte_end;
            }
        }
        Ok(out)
    }

    /// Puts the originals back into plain text.
    pub fn restore(&self, text: &str) -> String {
        self.restore_core(text, RestoreMode::Text, true).0
    }

    /// Puts the originals back into the inside of JSON strings.
    pub fn restore_json(&self, text: &str) -> String {
        self.restore_core(text, RestoreMode::Json, true).0
    }

    /// Restores `s`. When `last` is false, stops before a trailing possible
    /// placeholder prefix and reports how many bytes were consumed.
    /// Restores a streamed prefix: returns what can be emitted now and how many bytes of
    /// `text` it used; the rest may be the start of a placeholder and should be fed again
    /// with the next chunk (`last` = no more chunks follow). Lets callers that cannot
    /// borrow the vault (async streams) keep their own pending buffer.
    pub fn restore_partial(&self, text: &str, mode: RestoreMode, last: bool) -> (String, usize) {
        self.restore_core(text, mode, last)
    }

    fn restore_core(&self, s: &str, mode: RestoreMode, last: bool) -> (String, usize) {
        let b = s.as_bytes();
        let json = mode == RestoreMode::Json;
        let mut out = String::with_capacity(s.len());
        let mut pos = 0; // copied up to here
        let mut i = 0;
        loop {
            let next = if json {
                memchr::memchr2(b'<', b'\\', &b[i..])
            } else {
                memchr::memchr(b'<', &b[i..])
            };
            let Some(k) = next else { break };
            let at = i + k;
            match self.parse_at(b, at, json, last) {
                Parsed::Incomplete => {
                    out.push_str(&s[pos..at]);
                    return (out, at);
                }
                Parsed::No(skip) => i = at + skip,
                Parsed::Yes(end, key) => match self.by_placeholder.get(&key) {
                    Some(orig) => {
                        out.push_str(&s[pos..at]);
                        if json {
                            json_escape_into(orig, &mut out);
                        } else {
                            out.push_str(orig);
                        }
                        pos = end;
                        i = end;
                    }
                    None => i = at + 1,
                },
            }
        }
        out.push_str(&s[pos..]);
        (out, s.len())
    }

    fn parse_at(&self, b: &[u8], at: usize, json: bool, last: bool) -> Parsed {
        let rest = &b[at..];
        let open = if rest[0] == b'<' {
            1
        } else {
            // A backslash in JSON: either the escaped `<` or some other escape
            // pair, which must be skipped whole (`\\u003c` is not a placeholder).
            match escaped(rest, b'c', b'C') {
                Esc::Yes => 6,
                Esc::Prefix if !last => return Parsed::Incomplete,
                Esc::Prefix | Esc::No => {
                    if rest.len() < 2 && !last {
                        return Parsed::Incomplete;
                    }
                    return Parsed::No(2.min(rest.len()));
                }
            }
        };
        let mut j = open;
        while j < rest.len() && body_byte(rest[j]) && j - open <= MAX_BODY {
            j += 1;
        }
        if j - open > MAX_BODY || j == open {
            return if j == rest.len() && j == open && !last {
                Parsed::Incomplete
            } else {
                Parsed::No(1)
            };
        }
        if j == rest.len() {
            return if last {
                Parsed::No(1)
            } else {
                Parsed::Incomplete
            };
        }
        let close = if rest[j] == b'>' {
            1
        } else if json && rest[j] == b'\\' {
            match escaped(&rest[j..], b'e', b'E') {
                Esc::Yes => 6,
                Esc::Prefix if !last => return Parsed::Incomplete,
                _ => return Parsed::No(1),
            }
        } else {
            return Parsed::No(1);
        };
        let body = String::from_utf8_lossy(&rest[open..j]);
        Parsed::Yes(at + j + close, format!("<{body}>"))
    }
}

enum Parsed {
    /// Not a placeholder; skip this many bytes.
    No(usize),
    /// Might become one when more text arrives.
    Incomplete,
    /// A placeholder-shaped token ending at the given offset, with its key.
    Yes(usize, String),
}

enum Esc {
    Yes,
    Prefix,
    No,
}

/// Is `b` the JSON escape `\u003c` (or `\u003e`), in either hex case?
fn escaped(b: &[u8], lower: u8, upper: u8) -> Esc {
    let pat = [b'\\', b'u', b'0', b'0', b'3'];
    for (i, &x) in b.iter().take(6).enumerate() {
        let ok = if i < 5 {
            x == pat[i]
        } else {
            x == lower || x == upper
        };
        if !ok {
            return Esc::No;
        }
    }
    if b.len() >= 6 {
        Esc::Yes
    } else {
        Esc::Prefix
    }
}

fn json_escape_into(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Restores a streamed answer chunk by chunk. It holds back only a trailing
/// possible placeholder prefix (a few dozen bytes at most), so output is
/// delayed no longer than needed and the result equals restoring the whole
/// text at once, however it was split.
pub struct StreamRestorer<'v> {
    vault: &'v Vault,
    mode: RestoreMode,
    pending: String,
}

impl<'v> StreamRestorer<'v> {
    /// A restorer reading from `vault`.
    pub fn new(vault: &'v Vault, mode: RestoreMode) -> StreamRestorer<'v> {
        StreamRestorer {
            vault,
            mode,
            pending: String::new(),
        }
    }

    /// Feeds one chunk and returns what can be emitted now.
    pub fn push(&mut self, chunk: &str) -> String {
        self.pending.push_str(chunk);
        let (out, used) = self.vault.restore_core(&self.pending, self.mode, false);
        self.pending.drain(..used);
        out
    }

    /// Bytes currently held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Ends the stream and returns whatever was held back.
    pub fn finish(self) -> String {
        self.vault.restore_core(&self.pending, self.mode, true).0
    }
}
