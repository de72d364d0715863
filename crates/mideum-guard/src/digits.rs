//! Detectors anchored on runs of ASCII digits: RRN, FRN, CRN, BRN, phone,
//! card, IPv4, driver licence, bank account and vehicle plate.
//!
//! A candidate is a short chain of digit groups joined by separators
//! (`-`, `.`, spaces, `)`). Every detector looks at a bounded number of groups
//! from one start, so the whole pass stays linear even on inputs such as a
//! 100 MB run of digits or `1-1-1-1-...`.

use crate::context::{self, Context, ContextMatcher};
use crate::hangul::{self, char_at, char_before, is_unit};
use crate::types::EntityType;
use crate::validate;

/// A detection before thresholding and overlap resolution (byte offsets in
/// the normalised text).
#[derive(Debug, Clone, Copy)]
pub struct Cand {
    pub start: usize,
    pub end: usize,
    pub kind: EntityType,
    pub score: f32,
}

/// The most groups any format uses (card 4-4-4-4-3, +82-10-1234-5678).
pub const MAX_GROUPS: usize = 6;

#[derive(Clone, Copy, Default, Debug)]
struct Group {
    s: usize,
    e: usize,
}

impl Chain {
    /// Group lengths, zero past `n`, so shape tests can compare slices.
    fn lens(&self) -> [usize; MAX_GROUPS] {
        let mut l = [0; MAX_GROUPS];
        for (i, x) in l.iter_mut().enumerate().take(self.n) {
            *x = self.g[i].len();
        }
        l
    }
}

impl Group {
    fn len(&self) -> usize {
        self.e - self.s
    }
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
enum SepKind {
    #[default]
    None,
    Space,
    Dash,
    Dot,
    Paren,
}

#[derive(Clone, Copy, Default, Debug)]
struct Sep {
    kind: SepKind,
    /// Number of bytes (1 for a tight "-", 3 for " - ").
    len: usize,
}

/// Up to [`MAX_GROUPS`] digit groups starting at one position.
#[derive(Default)]
struct Chain {
    g: [Group; MAX_GROUPS],
    /// `sep[i]` sits between `g[i-1]` and `g[i]`; `sep[0]` is unused.
    sep: [Sep; MAX_GROUPS],
    n: usize,
}

fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Parses a separator at `p`: optional spaces, at most one of `-.)`, optional
/// spaces, at most 3 bytes, and a digit must follow.
fn parse_sep(b: &[u8], p: usize) -> Option<(Sep, usize)> {
    let mut q = p;
    let mut kind = SepKind::None;
    while q < b.len() && q - p < 3 {
        match b[q] {
            b' ' => q += 1,
            b'-' if kind == SepKind::None => {
                kind = SepKind::Dash;
                q += 1
            }
            b'.' if kind == SepKind::None => {
                kind = SepKind::Dot;
                q += 1
            }
            b')' if kind == SepKind::None => {
                kind = SepKind::Paren;
                q += 1
            }
            _ => break,
        }
    }
    if q == p || q >= b.len() || !is_digit(b[q]) {
        return None;
    }
    if kind == SepKind::None {
        kind = SepKind::Space;
    }
    Some((Sep { kind, len: q - p }, q))
}

fn parse_chain(b: &[u8], start: usize) -> Chain {
    let mut c = Chain::default();
    let mut pos = start;
    loop {
        let s = pos;
        while pos < b.len() && is_digit(b[pos]) {
            pos += 1;
        }
        c.g[c.n] = Group { s, e: pos };
        c.n += 1;
        if c.n == MAX_GROUPS {
            break;
        }
        match parse_sep(b, pos) {
            Some((sep, next)) => {
                c.sep[c.n] = sep;
                pos = next;
            }
            None => break,
        }
    }
    c
}

/// Collects the digits of `groups` into a fixed buffer; `None` when longer than 20.
fn collect(b: &[u8], groups: &[Group]) -> Option<([u8; 20], usize)> {
    let mut out = [0u8; 20];
    let mut n = 0;
    for g in groups {
        for &x in &b[g.s..g.e] {
            if n == 20 {
                return None;
            }
            out[n] = x - b'0';
            n += 1;
        }
    }
    Some((out, n))
}

fn num(b: &[u8], g: &Group) -> u32 {
    b[g.s..g.e]
        .iter()
        .take(9)
        .fold(0u32, |a, &x| a * 10 + (x - b'0') as u32)
}

/// Context is computed lazily, once per chain, because most digit groups
/// (dates, amounts) are rejected by shape alone.
struct LazyCtx<'a> {
    m: &'a ContextMatcher,
    text: &'a str,
    start: usize,
    end: usize,
    ctx: Option<Context>,
}

impl LazyCtx<'_> {
    fn get(&mut self) -> Context {
        if let Some(c) = self.ctx {
            return c;
        }
        let c = self.m.around(self.text, self.start, self.end);
        self.ctx = Some(c);
        c
    }
}

/// One proposal from a detector for the chain at hand.
#[derive(Clone, Copy)]
struct Prop {
    groups: usize,
    kind: EntityType,
    score: f32,
    /// Start moved before the first group (`+82`, `(`, region names).
    start: Option<usize>,
}

/// Scans the digit runs of `text` and pushes candidates into `out`.
pub fn scan(text: &str, m: &ContextMatcher, out: &mut Vec<Cand>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match next_digit(b, i) {
            Some(k) => i = k,
            None => break,
        }
        let run_end = b[i..]
            .iter()
            .position(|x| !x.is_ascii_digit())
            .map_or(b.len(), |k| i + k);
        if start_allowed(b, i) {
            if let Some((c, end)) = plate(text, i, run_end, m) {
                out.push(c);
                i = end;
                continue;
            }
            let chain = parse_chain(b, i);
            let mut ctx = LazyCtx {
                m,
                text,
                start: i,
                end: chain.g[chain.n - 1].e,
                ctx: None,
            };
            if let Some(p) = best(text, &chain, &mut ctx) {
                let end = chain.g[p.groups - 1].e;
                out.push(Cand {
                    start: p.start.unwrap_or(i),
                    end,
                    kind: p.kind,
                    score: p.score,
                });
                i = end;
                continue;
            }
            if let Some(c) = crate::address::at_number(text, i, run_end, &mut || ctx.get()) {
                out.push(c);
                i = c.end;
                continue;
            }
        } else if let Some(c) = crate::ascii::passport(text, i, m) {
            out.push(c);
            i = c.end;
            continue;
        }
        i = run_end;
    }
}

/// Position of the next ASCII digit at or after `from`, eight bytes at a
/// time: most of a Korean text is Hangul (bytes >= 0x80) and never a digit.
fn next_digit(b: &[u8], mut from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while from + 8 <= b.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[from..from + 8]);
        // XOR with '0' maps exactly the digits to bytes 0..=9; "has a byte
        // below 10" is the classic SWAR test (exact as a yes/no answer).
        let x = u64::from_le_bytes(w) ^ (ONES * 0x30);
        if x.wrapping_sub(ONES * 10) & !x & HIGH != 0 {
            break;
        }
        from += 8;
    }
    b[from..]
        .iter()
        .position(|x| x.is_ascii_digit())
        .map(|k| from + k)
}

/// A chain may not start in the middle of a longer code: after a letter, or
/// after `digit-` / `digit.` / `letter-` (as in `ORD-2024...`).
fn start_allowed(b: &[u8], i: usize) -> bool {
    if i == 0 {
        return true;
    }
    let p = b[i - 1];
    if is_word_byte(p) {
        return false;
    }
    if (p == b'-' || p == b'.' || p == b'_' || p == b'/') && i >= 2 && is_word_byte(b[i - 2]) {
        return false;
    }
    true
}

/// The match may not stop in the middle of a longer code either.
fn end_allowed(b: &[u8], e: usize) -> bool {
    if e >= b.len() {
        return true;
    }
    let n = b[e];
    if is_word_byte(n) {
        return false;
    }
    if (n == b'-' || n == b'.' || n == b'_' || n == b'/')
        && e + 1 < b.len()
        && is_word_byte(b[e + 1])
    {
        return false;
    }
    true
}

fn followed_by_unit(text: &str, e: usize) -> bool {
    matches!(char_at(text, e), Some(c) if is_unit(c))
}

fn best(text: &str, c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let b = text.as_bytes();
    let mut props: [Option<Prop>; 8] = [None; 8];
    props[0] = rrn_like(b, c, ctx);
    props[1] = brn(b, c, ctx);
    props[2] = phone(text, c, ctx);
    props[3] = card(b, c, ctx);
    props[4] = ipv4(b, c);
    props[5] = license(text, c, ctx);
    let mut best: Option<Prop> = None;
    for p in props.iter().flatten() {
        if !end_allowed(b, c.g[p.groups - 1].e) {
            continue;
        }
        best = match best {
            Some(q) if q.score > p.score || (q.score == p.score && q.groups >= p.groups) => Some(q),
            _ => Some(*p),
        };
    }
    if best.is_none() {
        best = account(text, c, ctx);
    }
    best
}

fn ok_sep(s: Sep, allow: &[SepKind]) -> bool {
    allow.contains(&s.kind)
}

/// RRN, FRN and CRN share the 6-7 shape and are told apart by the century
/// digit, the two checksums and the words around them.
fn rrn_like(b: &[u8], c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let (groups, separated) = if c.n >= 2
        && c.g[0].len() == 6
        && c.g[1].len() == 7
        && ok_sep(c.sep[1], &[SepKind::Dash, SepKind::Space])
    {
        (2, true)
    } else if c.g[0].len() == 13 {
        (1, false)
    } else {
        return None;
    };
    let (buf, _) = collect(b, &c.g[..groups])?;
    let mut d = [0u8; 13];
    d.copy_from_slice(&buf[..13]);
    let date_ok = validate::rrn_date_ok(&d);
    let rrn_ck = validate::rrn_checksum_ok(&d);
    let crn_ck = validate::crn_checksum_ok(&d);
    let person_kind = if (5..=8).contains(&d[6]) {
        EntityType::KrFrn
    } else {
        EntityType::KrRrn
    };
    // The common case needs no context: only an RRN reading fits.
    if date_ok && rrn_ck && !crn_ck {
        return Some(Prop {
            groups,
            kind: person_kind,
            score: if separated { 0.95 } else { 0.85 },
            start: None,
        });
    }
    let x = ctx.get();
    let person_ctx = x.has(context::RRN | context::FRN);
    let prop = |kind, score: f32| {
        Some(Prop {
            groups,
            kind,
            score: score.min(1.0),
            start: None,
        })
    };
    if x.has(context::CRN) && crn_ck && !(person_ctx && x.nearest_before & context::CRN == 0) {
        return prop(EntityType::KrCrn, 0.95);
    }
    if date_ok {
        if rrn_ck {
            return prop(person_kind, if separated { 0.95 } else { 0.85 });
        }
        // Both a failed RRN check digit and a valid CRN one: a CRN, unless the
        // birth date is on or after 2020-10-05, when RRNs stopped carrying a
        // check digit and a valid CRN checksum is a 1-in-10 coincidence.
        if crn_ck && !person_ctx && !validate::born_after_checksum_end(&d) {
            return prop(EntityType::KrCrn, if separated { 0.8 } else { 0.45 });
        }
        // Numbers issued since 2020-10-05 carry no check digit: a valid date
        // and the right shape are still an RRN, with less confidence.
        let base = if separated { 0.65 } else { 0.35 };
        let bonus = if person_ctx { 0.3 } else { 0.0 };
        let malus = if x.nearest_before & context::NEG != 0 {
            0.3
        } else {
            0.0
        };
        return prop(person_kind, base + bonus - malus);
    }
    if crn_ck {
        return prop(EntityType::KrCrn, if separated { 0.8 } else { 0.45 });
    }
    None
}

fn brn(b: &[u8], c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let (groups, separated) = if c.n >= 3
        && c.g[0].len() == 3
        && c.g[1].len() == 2
        && c.g[2].len() == 5
        && ok_sep(c.sep[1], &[SepKind::Dash, SepKind::Space, SepKind::Dot])
        && c.sep[2].kind == c.sep[1].kind
    {
        (3, true)
    } else if c.g[0].len() == 10 {
        (1, false)
    } else {
        return None;
    };
    let (buf, _) = collect(b, &c.g[..groups])?;
    if buf[0] == 0 {
        return None;
    }
    let mut d = [0u8; 10];
    d.copy_from_slice(&buf[..10]);
    if !validate::brn_checksum_ok(&d) {
        return None;
    }
    let x = ctx.get();
    let mut score: f32 = if separated { 0.9 } else { 0.35 };
    if x.has(context::BRN) {
        score += 0.5;
    }
    Some(Prop {
        groups,
        kind: EntityType::KrBrn,
        score: score.min(1.0),
        start: None,
    })
}

/// Scores a phone number given as up to three digit strings (the area or
/// mobile prefix first).
fn phone_shape(p: &[u8], m: Option<&[u8]>, l: Option<&[u8]>) -> Option<f32> {
    let area_ok = |p: &[u8]| -> bool {
        matches!(
            p,
            b"02"
                | b"031"
                | b"032"
                | b"033"
                | b"041"
                | b"042"
                | b"043"
                | b"044"
                | b"051"
                | b"052"
                | b"053"
                | b"054"
                | b"055"
                | b"061"
                | b"062"
                | b"063"
                | b"064"
        )
    };
    let mobile_old = |p: &[u8]| matches!(p, b"011" | b"016" | b"017" | b"018" | b"019");
    let vn = |p: &[u8]| p.len() == 4 && p.starts_with(b"050") && (b'2'..=b'8').contains(&p[3]);
    match (m, l) {
        (Some(m), Some(l)) => {
            if l.len() != 4 {
                return None;
            }
            let ml = m.len();
            let local_ok = m.first().is_some_and(|&x| x != b'0');
            if p == b"010" && ml == 4 {
                Some(0.95)
            } else if (3..=4).contains(&ml)
                && (mobile_old(p)
                    || (area_ok(p) && local_ok)
                    || p == b"070"
                    || p == b"080"
                    || vn(p))
            {
                Some(0.9)
            } else {
                None
            }
        }
        (Some(m), None) => {
            // 1588-1234 style nationwide numbers, or 010-12345678.
            if p.len() == 4
                && m.len() == 4
                && (p.starts_with(b"15") || p.starts_with(b"16") || p.starts_with(b"18"))
            {
                Some(0.6)
            } else if p == b"010" && m.len() == 8 {
                Some(0.85)
            } else {
                None
            }
        }
        _ => {
            let n = p.len();
            if p.starts_with(b"010") && n == 11 {
                Some(0.9)
            } else if p.len() >= 3 && mobile_old(&p[..3]) && (n == 10 || n == 11) {
                Some(0.8)
            } else if (p.starts_with(b"02") && (n == 9 || n == 10) && p[2] >= b'2')
                || (n >= 10 && area_ok(&p[..3]) && n <= 11 && p[3] >= b'2')
                || (p.starts_with(b"070") && n == 11)
                || (n >= 4 && vn(&p[..4]) && (n == 11 || n == 12))
            {
                Some(0.6)
            } else if n == 8
                && (p.starts_with(b"15") || p.starts_with(b"16") || p.starts_with(b"18"))
            {
                Some(0.3)
            } else {
                None
            }
        }
    }
}

fn phone(text: &str, c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let b = text.as_bytes();
    let g = |i: usize| &b[c.g[i].s..c.g[i].e];
    let seps_ok = |from: usize, to: usize| {
        (from..to).all(|i| ok_sep(c.sep[i], &[SepKind::Dash, SepKind::Space, SepKind::Dot]))
    };
    let s0 = c.g[0].s;
    let plus = s0 >= 1 && b[s0 - 1] == b'+';
    let mut best: Option<(usize, f32, Option<usize>)> = None;
    if plus && g(0).starts_with(b"82") {
        // +82 drops the leading 0 of the national number.
        let mut buf = [0u8; 16];
        if g(0) == b"82" && c.n >= 3 {
            let first = g(1);
            if first.len() < 15 {
                buf[0] = b'0';
                buf[1..=first.len()].copy_from_slice(first);
                let p = &buf[..=first.len()];
                if c.n >= 4 && seps_ok(1, 4) {
                    if let Some(s) = phone_shape(p, Some(g(2)), Some(g(3))) {
                        best = Some((4, s, Some(s0 - 1)));
                    }
                }
                if best.is_none() && seps_ok(1, 3) {
                    if let Some(s) = phone_shape(p, Some(g(2)), None) {
                        best = Some((3, s, Some(s0 - 1)));
                    }
                }
            }
        } else if g(0).len() < 15 {
            let rest = &g(0)[2..];
            buf[0] = b'0';
            buf[1..=rest.len()].copy_from_slice(rest);
            if let Some(s) = phone_shape(&buf[..=rest.len()], None, None) {
                best = Some((1, (s + 0.3).min(0.95), Some(s0 - 1)));
            }
        }
    } else {
        let paren_open = s0 >= 1 && b[s0 - 1] == b'(';
        let first_sep_ok = |i: usize| {
            ok_sep(c.sep[i], &[SepKind::Dash, SepKind::Space, SepKind::Dot])
                || (i == 1 && c.sep[1].kind == SepKind::Paren)
        };
        if c.n >= 3 && first_sep_ok(1) && seps_ok(2, 3) {
            if let Some(s) = phone_shape(g(0), Some(g(1)), Some(g(2))) {
                let start = (paren_open && c.sep[1].kind == SepKind::Paren).then(|| s0 - 1);
                best = Some((3, s, start));
            }
        }
        if best.is_none() && c.n >= 2 && first_sep_ok(1) {
            if let Some(s) = phone_shape(g(0), Some(g(1)), None) {
                best = Some((2, s, None));
            }
        }
        if best.is_none() {
            if let Some(s) = phone_shape(g(0), None, None) {
                best = Some((1, s, None));
            }
        }
    }
    let (groups, mut score, start) = best?;
    if groups >= 2 && score >= 0.85 {
        // A separated number with a valid prefix: context cannot change the
        // verdict, so the (comparatively costly) window lookup is skipped.
        return Some(Prop {
            groups,
            kind: EntityType::KrPhone,
            score,
            start,
        });
    }
    let x = ctx.get();
    if x.has(context::PHONE) {
        score += 0.3;
    }
    if x.nearest_before & context::NEG != 0 && groups == 1 {
        score -= 0.3;
    }
    let e = c.g[groups - 1].e;
    if groups == 2 && score < 0.9 && followed_by_unit(text, e) {
        return None;
    }
    Some(Prop {
        groups,
        kind: EntityType::KrPhone,
        score: score.clamp(0.0, 1.0),
        start,
    })
}

fn card(b: &[u8], c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let same_sep = |to: usize| {
        let k = c.sep[1].kind;
        (k == SepKind::Dash || k == SepKind::Space) && (2..to).all(|i| c.sep[i].kind == k)
    };
    let lens = c.lens();
    let (groups, base) = if c.n >= 5 && lens[..5] == [4, 4, 4, 4, 3] && same_sep(5) {
        (5, 0.95)
    } else if c.n >= 4 && lens[..4] == [4, 4, 4, 4] && same_sep(4) {
        (4, 0.95)
    } else if c.n >= 3 && lens[..3] == [4, 6, 5] && same_sep(3) {
        (3, 0.9)
    } else if (14..=16).contains(&lens[0]) {
        // Unseparated: only the common lengths, so long ids and timestamps
        // that happen to pass Luhn are not taken for cards.
        (1, 0.7)
    } else {
        return None;
    };
    let (d, n) = collect(b, &c.g[..groups])?;
    if !validate::luhn_ok(&d[..n]) {
        return None;
    }
    let iin_ok = match d[0] {
        3..=6 | 9 => true,
        2 => {
            let p = d[0] as u32 * 1000 + d[1] as u32 * 100 + d[2] as u32 * 10 + d[3] as u32;
            (2221..=2720).contains(&p)
        }
        _ => false,
    };
    if !iin_ok {
        return None;
    }
    if groups > 1 {
        return Some(Prop {
            groups,
            kind: EntityType::CreditCard,
            score: base,
            start: None,
        });
    }
    let x = ctx.get();
    let mut score: f32 = base;
    if x.has(context::CARD) {
        score += 0.2;
    }
    if x.nearest_before & context::NEG != 0 {
        score -= 0.4;
    }
    Some(Prop {
        groups,
        kind: EntityType::CreditCard,
        score: score.clamp(0.0, 1.0),
        start: None,
    })
}

fn ipv4(b: &[u8], c: &Chain) -> Option<Prop> {
    if c.n < 4 {
        return None;
    }
    for i in 0..4 {
        let g = c.g[i];
        if g.len() > 3 || (g.len() > 1 && b[g.s] == b'0') || num(b, &g) > 255 {
            return None;
        }
        if i > 0 && (c.sep[i].kind != SepKind::Dot || c.sep[i].len != 1) {
            return None;
        }
    }
    Some(Prop {
        groups: 4,
        kind: EntityType::IpAddress,
        score: 0.9,
        start: None,
    })
}

fn license(text: &str, c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let b = text.as_bytes();
    let lens = c.lens();
    let dashy = |to: usize| {
        (1..to).all(|i| ok_sep(c.sep[i], &[SepKind::Dash, SepKind::Space]))
            && (1..to).any(|i| c.sep[i].kind == SepKind::Dash)
    };
    let region_code = (11..=28).contains(&num(b, &c.g[0]));
    if c.n >= 4 && lens[..4] == [2, 2, 6, 2] && dashy(4) && region_code {
        let s: f32 = 0.9;
        return Some(Prop {
            groups: 4,
            kind: EntityType::KrDriverLicense,
            score: s.min(1.0),
            start: None,
        });
    }
    if c.n >= 3 && lens[..3] == [2, 6, 2] && dashy(3) {
        if let Some(rs) = hangul::region_before(text, c.g[0].s, true) {
            let s: f32 = 0.9;
            return Some(Prop {
                groups: 3,
                kind: EntityType::KrDriverLicense,
                score: s.min(1.0),
                start: Some(rs),
            });
        }
    }
    if lens[0] == 12 && region_code && ctx.get().has(context::LICENSE) {
        return Some(Prop {
            groups: 1,
            kind: EntityType::KrDriverLicense,
            score: 0.85,
            start: None,
        });
    }
    None
}

/// Bank accounts have no public format or checksum; they are only reported
/// next to banking words and when no other reading of the digits fits.
fn account(text: &str, c: &Chain, ctx: &mut LazyCtx) -> Option<Prop> {
    let b = text.as_bytes();
    let mut found = None;
    for k in (1..=c.n.min(4)).rev() {
        if k > 1 && !(1..k).all(|i| c.sep[i].kind == SepKind::Dash) {
            continue;
        }
        let total: usize = (0..k).map(|i| c.g[i].len()).sum();
        if !(10..=14).contains(&total) {
            continue;
        }
        // The last group may be a single check digit (새마을금고 9002-1234-5678-9).
        if k > 1 && !(0..k).all(|i| (2..=7).contains(&c.g[i].len()) || (i == k - 1 && i > 1)) {
            continue;
        }
        found = Some(k);
        break;
    }
    let k = found?;
    let (d, n) = collect(b, &c.g[..k])?;
    // Phone look-alike: 01x with 10-11 digits.
    if d[0] == 0 && d[1] == 1 && (n == 10 || n == 11) {
        return None;
    }
    // Date look-alike: starts with YYYYMMDD or YYYY-MM-DD.
    let yyyy = d[0] as u32 * 1000 + d[1] as u32 * 100 + d[2] as u32 * 10 + d[3] as u32;
    let mm = d[4] as u32 * 10 + d[5] as u32;
    let dd = d[6] as u32 * 10 + d[7] as u32;
    if (1900..=2099).contains(&yyyy) && validate::valid_date(yyyy, mm, dd) {
        return None;
    }
    let e = c.g[k - 1].e;
    if !end_allowed(b, e) || followed_by_unit(text, e) {
        return None;
    }
    let x = ctx.get();
    if !x.has(context::ACCOUNT) || x.nearest_before & context::NEG != 0 {
        return None;
    }
    Some(Prop {
        groups: k,
        kind: EntityType::KrBankAccount,
        score: 0.85,
        start: None,
    })
}

const PLATE_SYLLABLES: &str =
    "가나다라마거너더러머버서어저고노도로모보소오조구누두루무부수우주아바사자배하허호";

/// `12가3456`, `123가 4567`, `서울12가3456`.
fn plate(text: &str, s: usize, run_end: usize, m: &ContextMatcher) -> Option<(Cand, usize)> {
    let b = text.as_bytes();
    let n = run_end - s;
    if !(2..=3).contains(&n) {
        return None;
    }
    let c = char_at(text, run_end)?;
    if !PLATE_SYLLABLES.contains(c) {
        return None;
    }
    let mut p = run_end + c.len_utf8();
    let spaced = p < b.len() && b[p] == b' ';
    if spaced {
        p += 1;
    }
    let ds = p;
    while p < b.len() && is_digit(b[p]) && p - ds <= 4 {
        p += 1;
    }
    if p - ds != 4 || !end_allowed(b, p) || followed_by_unit(text, p) {
        return None;
    }
    // "12조 3456억" reads like money; spaced forms need a plate-like context.
    let mut start = s;
    let mut score: f32 = if n == 3 { 0.85 } else { 0.8 };
    if let Some(rs) = hangul::region_before(text, s, true) {
        if n == 2 {
            start = rs;
            score = 0.9;
        }
    } else if let Some((pc, _)) = char_before(text, s) {
        if hangul::is_syllable(pc) {
            // Glued to a word that is not a region: "제12조3항" and the like.
            return None;
        }
    }
    // "12조 3456억" reads like money: spaced forms need a vehicle word nearby.
    if spaced && !m.around(text, start, p).has(context::VEHICLE) {
        score -= 0.2;
    }
    Some((
        Cand {
            start,
            end: p,
            kind: EntityType::KrVehiclePlate,
            score: score.min(1.0),
        },
        p,
    ))
}
