//! Folds what people type (full-width digits, ideographic spaces, typographic
//! dashes) into ASCII so that detectors only have to understand one form,
//! while remembering how to map offsets back to the original text.

use std::borrow::Cow;

/// A normalised view of a text plus the information to map offsets back.
pub struct Normalized<'a> {
    /// Text in which full-width ASCII, U+3000 and dashes became ASCII.
    pub text: Cow<'a, str>,
    /// Sorted `(normalized byte position after the replaced char, total bytes
    /// saved so far)`; empty when nothing was replaced. Sparse so that a 100 MB
    /// input costs nothing extra when it has no full-width characters.
    shifts: Vec<(usize, usize)>,
}

/// The ASCII replacement of a character, if it has one.
fn fold(c: char) -> Option<u8> {
    let u = c as u32;
    match u {
        0xFF01..=0xFF5E => Some((u - 0xFF01 + 0x21) as u8),
        0x3000 | 0x00A0 => Some(b' '),
        0x2010..=0x2015 | 0x2212 | 0xFE63 => Some(b'-'),
        _ => None,
    }
}

/// Every foldable character as (byte offset, char, ASCII replacement). Only
/// the lead bytes of foldable characters (0xC2, 0xE2, 0xE3, 0xEF) are
/// inspected, so Hangul text is skipped at memchr speed; each iterator walks
/// the text once, keeping the pass linear.
fn foldables(text: &str) -> Vec<(usize, char, u8)> {
    let b = text.as_bytes();
    let mut wide = memchr::memchr3_iter(0xEF, 0xE2, 0xE3, b).peekable();
    let mut nbsp = memchr::memchr_iter(0xC2, b).peekable();
    let mut out = Vec::new();
    loop {
        let at = match (wide.peek().copied(), nbsp.peek().copied()) {
            (Some(x), Some(y)) if x < y => wide.next(),
            (Some(_), Some(_)) | (None, Some(_)) => nbsp.next(),
            (Some(_), None) => wide.next(),
            (None, None) => None,
        };
        let Some(at) = at else { break };
        if let Some(c) = text.get(at..).and_then(|t| t.chars().next()) {
            if let Some(a) = fold(c) {
                out.push((at, c, a));
            }
        }
    }
    out
}

impl<'a> Normalized<'a> {
    /// Builds the normalised view of `text`.
    pub fn new(text: &'a str) -> Normalized<'a> {
        let found = foldables(text);
        if found.is_empty() {
            return Normalized {
                text: Cow::Borrowed(text),
                shifts: Vec::new(),
            };
        }
        let mut out = String::with_capacity(text.len());
        let mut shifts = Vec::with_capacity(found.len());
        let mut saved = 0usize;
        let mut pos = 0;
        for (at, c, a) in found {
            out.push_str(&text[pos..at]);
            out.push(a as char);
            saved += c.len_utf8() - 1;
            shifts.push((out.len(), saved));
            pos = at + c.len_utf8();
        }
        out.push_str(&text[pos..]);
        Normalized {
            text: Cow::Owned(out),
            shifts,
        }
    }

    /// Maps a byte offset in the normalised text to one in the original text.
    pub fn to_original(&self, pos: usize) -> usize {
        if self.shifts.is_empty() {
            return pos;
        }
        let i = self.shifts.partition_point(|&(p, _)| p <= pos);
        if i == 0 {
            pos
        } else {
            pos + self.shifts[i - 1].1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_width_digits_fold_and_map_back() {
        let s = "전화 ０１０－１２３４";
        let n = Normalized::new(s);
        assert_eq!(n.text, "전화 010-1234");
        let start = n.text.find('0').unwrap_or(usize::MAX);
        assert_eq!(n.to_original(start), s.find('０').unwrap_or(0));
        assert_eq!(n.to_original(n.text.len()), s.len());
    }

    #[test]
    fn plain_text_is_borrowed() {
        let n = Normalized::new("홍길동 010-1234-5678…");
        assert!(matches!(n.text, Cow::Borrowed(_)));
    }
}
