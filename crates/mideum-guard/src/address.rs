//! Road-name (`서울특별시 강남구 테헤란로 123`) and lot-number
//! (`경기도 수원시 팔달구 인계동 1234-5번지`) addresses, anchored on the
//! building or lot number and read backwards over the administrative units,
//! so that no dictionary pass over the whole text is needed.

use crate::context::{self, Context};
use crate::digits::Cand;
use crate::hangul::{char_at, char_before, is_sido, is_syllable, is_unit, syllables_before};
use crate::types::EntityType;

/// Back-scan over a road token such as `테헤란로`, `판교역로146번길`, `을지로1가`:
/// Hangul syllables and digits, at most 16 characters.
fn token_before(text: &str, end: usize) -> Option<(usize, &str)> {
    let mut s = end;
    let mut n = 0;
    while let Some((c, p)) = char_before(text, s) {
        if !(is_syllable(c) || c.is_ascii_digit()) {
            break;
        }
        s = p;
        n += 1;
        if n > 16 {
            return None;
        }
    }
    if n < 2 {
        return None;
    }
    Some((s, &text[s..end]))
}

#[derive(PartialEq)]
enum Tok {
    Road,
    Lot,
}

fn classify_last(tok: &str) -> Option<Tok> {
    let last = tok.chars().next_back()?;
    let first = tok.chars().next()?;
    if !is_syllable(first) {
        return None;
    }
    match last {
        '로' | '길' => Some(Tok::Road),
        '동' | '리' => Some(Tok::Lot),
        '가' => {
            // 을지로1가, 종로2가: the 가 of a lot area always follows a digit.
            let mut it = tok.chars().rev();
            it.next();
            it.next().filter(|c| c.is_ascii_digit()).map(|_| Tok::Lot)
        }
        _ => None,
    }
}

/// Tries to read an address whose number starts at byte `s` (digits up to
/// `run_end`).
pub fn at_number(
    text: &str,
    s: usize,
    run_end: usize,
    ctx: &mut dyn FnMut() -> Context,
) -> Option<Cand> {
    let b = text.as_bytes();
    if run_end - s > 5 || b[s] == b'0' {
        return None;
    }
    let mut p = s;
    if text[..p].ends_with('산') {
        p -= '산'.len_utf8();
    }
    if p == 0 || b[p - 1] != b' ' {
        return None;
    }
    let (tok_start, tok) = token_before(text, p - 1)?;
    let kind = classify_last(tok)?;
    // Walk back over administrative units separated by single spaces.
    let mut start = tok_start;
    let mut sido = false;
    let mut sejong = false;
    let mut sgg = 0;
    let mut gu_gun = false;
    let mut steps = 0;
    while steps < 6 && start > 0 && b[start - 1] == b' ' {
        steps += 1;
        let te = start - 1;
        let (ts, n) = syllables_before(text, te, 8);
        if !(2..=8).contains(&n) {
            break;
        }
        let t = &text[ts..te];
        if is_sido(t) {
            sido = true;
            sejong |= t.starts_with("세종");
            start = ts;
            continue;
        }
        if sido {
            break;
        }
        let last = t.chars().next_back().unwrap_or(' ');
        match last {
            '시' | '군' | '구' if n <= 5 => {
                sgg += 1;
                gu_gun |= last != '시';
                start = ts;
            }
            '읍' | '면' | '동' if n <= 5 && sgg == 0 => start = ts,
            // 중앙로 12번길 34: the road name sits left of a spaced 번길 token.
            '로' if steps == 1 && kind == Tok::Road && tok.contains("번길") => start = ts,
            _ => break,
        }
    }
    let valid = (sido && (sgg >= 1 || sejong)) || (sgg >= 1 && gu_gun);
    if !valid {
        return None;
    }
    // The number: 123, 123-4, 산12-3, optionally 번지.
    let mut e = run_end;
    if e + 1 < b.len() && b[e] == b'-' && b[e + 1].is_ascii_digit() {
        let mut q = e + 1;
        while q < b.len() && b[q].is_ascii_digit() && q - e <= 5 {
            q += 1;
        }
        if q - e - 1 > 4 {
            return None;
        }
        e = q;
    }
    if e < b.len()
        && (b[e].is_ascii_alphanumeric()
            || (b[e] == b'-' && e + 1 < b.len() && b[e + 1].is_ascii_digit()))
    {
        return None;
    }
    if text[e..].starts_with("번지") {
        e += "번지".len();
    } else if let Some(c) = char_at(text, e) {
        if is_unit(c) || c == '번' {
            return None;
        }
    }
    let mut score: f32 = if sido { 0.9 } else { 0.7 };
    if !sido && ctx().has(context::ADDRESS) {
        score += 0.15;
    }
    Some(Cand {
        start,
        end: e,
        kind: EntityType::KrAddress,
        score: score.min(1.0),
    })
}
