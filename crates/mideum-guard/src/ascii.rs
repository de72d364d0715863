//! Detectors anchored on ASCII punctuation or letters: e-mail (`@`), IPv6
//! (`:`) and passport numbers (a letter before a digit run). Each expansion
//! is capped, so a text made of nothing but `@` or `:` stays linear.

use std::net::Ipv6Addr;

use crate::context::{self, ContextMatcher};
use crate::digits::Cand;
use crate::types::EntityType;

fn local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Finds e-mail addresses around every `@`.
pub fn emails(text: &str, out: &mut Vec<Cand>) {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(k) = memchr::memchr(b'@', &b[from..]) {
        let at = from + k;
        from = at + 1;
        // Local part: at most 64 bytes (RFC 5321); longer means it is not an address.
        let mut s = at;
        while s > 0 && local_byte(b[s - 1]) && at - s <= 64 {
            s -= 1;
        }
        if at - s > 64 || at == s {
            continue;
        }
        while s < at && !b[s].is_ascii_alphanumeric() {
            s += 1;
        }
        if s == at {
            continue;
        }
        let mut e = at + 1;
        while e < b.len() && domain_byte(b[e]) && e - at <= 254 {
            e += 1;
        }
        if e - at > 254 {
            continue;
        }
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        let domain = &b[at + 1..e];
        let Some(dot) = domain.iter().rposition(|&x| x == b'.') else {
            continue;
        };
        let tld = &domain[dot + 1..];
        if tld.len() < 2 || !tld.iter().all(|x| x.is_ascii_alphabetic()) {
            continue;
        }
        if domain.split(|&x| x == b'.').any(|l| l.is_empty()) || domain[0] == b'-' {
            continue;
        }
        out.push(Cand {
            start: s,
            end: e,
            kind: EntityType::Email,
            score: 0.95,
        });
        from = e.max(from);
    }
}

fn v6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// Finds IPv6 addresses around every `:`; parsing is left to the standard library.
pub fn ipv6(text: &str, out: &mut Vec<Cand>) {
    const MAX: usize = 45;
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(k) = memchr::memchr(b':', &b[from..]) {
        let c = from + k;
        let mut s = c;
        while s > 0 && v6_byte(b[s - 1]) && c - s <= MAX {
            s -= 1;
        }
        let mut e = c + 1;
        while e < b.len() && v6_byte(b[e]) && e - s <= MAX {
            e += 1;
        }
        if e - s > MAX {
            // Far too long for one address: skip the whole run at once.
            while e < b.len() && v6_byte(b[e]) {
                e += 1;
            }
            from = e;
            continue;
        }
        from = e;
        if s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_') {
            continue;
        }
        if e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_') {
            continue;
        }
        // Sentence punctuation may follow the address.
        let mut end = e;
        while end > s && matches!(b[end - 1], b'.' | b':') && !text[s..end].ends_with("::") {
            end -= 1;
        }
        let cand = &text[s..end];
        if cand.bytes().filter(|&x| x == b':').count() < 2 {
            continue;
        }
        if cand.bytes().filter(|x| x.is_ascii_hexdigit()).count() < 1 {
            continue;
        }
        if cand.parse::<Ipv6Addr>().is_ok() {
            out.push(Cand {
                start: s,
                end,
                kind: EntityType::IpAddress,
                score: 0.9,
            });
        }
    }
}

/// Passport numbers `M123A4567` or `M12345678`; `digits_at` is the first digit.
/// Only reported with a passport word nearby because the shape alone is
/// shared by many product and document codes.
pub fn passport(text: &str, digits_at: usize, m: &ContextMatcher) -> Option<Cand> {
    let b = text.as_bytes();
    if digits_at == 0 {
        return None;
    }
    let l = digits_at - 1;
    if !matches!(b[l], b'M' | b'S' | b'R' | b'O' | b'D') {
        return None;
    }
    if l > 0 && (b[l - 1].is_ascii_alphanumeric() || b[l - 1] == b'_' || b[l - 1] == b'-') {
        return None;
    }
    let digits = |from: usize, n: usize| -> bool {
        from + n <= b.len() && b[from..from + n].iter().all(|x| x.is_ascii_digit())
    };
    let old_form = digits(digits_at, 8);
    let new_form = digits(digits_at, 3)
        && digits_at + 3 < b.len()
        && b[digits_at + 3].is_ascii_uppercase()
        && digits(digits_at + 4, 4);
    if !(old_form || new_form) {
        return None;
    }
    let end = digits_at + 8;
    if end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
        return None;
    }
    let ctx = m.around(text, l, end);
    let mut score: f32 = 0.4;
    if ctx.has(context::PASSPORT) {
        score = 0.9;
    }
    if ctx.nearest_before & context::NEG != 0 {
        score -= 0.3;
    }
    Some(Cand {
        start: l,
        end,
        kind: EntityType::KrPassport,
        score,
    })
}
