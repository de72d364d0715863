//! Irreversible operators: redact (`[KR_RRN]`), mask in the Korean convention
//! (`900101-1******`, `010-****-5678`, `홍*동`) and keyed hashing (stable
//! pseudonyms per tenant key).

use crate::error::GuardError;
use crate::hmac::hmac_sha256;
use crate::types::{Entity, EntityType};

/// Checks that entities are sorted, non-overlapping and lie on char boundaries.
pub(crate) fn check_spans(text: &str, entities: &[Entity]) -> Result<(), GuardError> {
    let mut prev = 0;
    for e in entities {
        let bad = e.byte_start < prev
            || e.byte_end < e.byte_start
            || e.byte_end > text.len()
            || !text.is_char_boundary(e.byte_start)
            || !text.is_char_boundary(e.byte_end);
        if bad {
            return Err(GuardError::InvalidSpan {
                start: e.byte_start,
                end: e.byte_end,
            });
        }
        prev = e.byte_end;
    }
    Ok(())
}

/// Rebuilds `text` with every entity replaced by `f(entity, value)`.
pub(crate) fn replace_with(
    text: &str,
    entities: &[Entity],
    mut f: impl FnMut(&Entity, &str) -> String,
) -> Result<String, GuardError> {
    check_spans(text, entities)?;
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for e in entities {
        out.push_str(&text[pos..e.byte_start]);
        out.push_str(&f(e, &text[e.byte_start..e.byte_end]));
        pos = e.byte_end;
    }
    out.push_str(&text[pos..]);
    Ok(out)
}

/// Replaces every entity with its type in brackets: `[KR_RRN]`.
pub fn redact(text: &str, entities: &[Entity]) -> Result<String, GuardError> {
    replace_with(text, entities, |e, _| format!("[{}]", e.kind.as_str()))
}

/// Masks every entity the way Korean services customarily display it.
pub fn mask(text: &str, entities: &[Entity]) -> Result<String, GuardError> {
    replace_with(text, entities, |e, v| mask_value(e.kind, v))
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

/// Masks digits whose index (among digits) satisfies `hide`.
fn mask_digits(v: &str, hide: impl Fn(usize, usize) -> bool) -> String {
    let total = v.chars().filter(|&c| is_digit(c)).count();
    let mut i = 0;
    v.chars()
        .map(|c| {
            if is_digit(c) {
                let h = hide(i, total);
                i += 1;
                if h {
                    return '*';
                }
            }
            c
        })
        .collect()
}

/// Digit groups as (first digit index, length) pairs.
fn digit_groups(v: &str) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut idx = 0;
    let mut in_group = false;
    for c in v.chars() {
        if is_digit(c) {
            if in_group {
                if let Some(g) = groups.last_mut() {
                    let g: &mut (usize, usize) = g;
                    g.1 += 1;
                }
            } else {
                groups.push((idx, 1));
                in_group = true;
            }
            idx += 1;
        } else {
            in_group = false;
        }
    }
    groups
}

/// Masks one value of the given type.
pub fn mask_value(kind: EntityType, v: &str) -> String {
    match kind {
        EntityType::KrRrn | EntityType::KrFrn => mask_digits(v, |i, _| i >= 7),
        EntityType::KrCrn => mask_digits(v, |i, _| i >= 6),
        EntityType::KrBrn => mask_digits(v, |i, _| i >= 5),
        EntityType::KrPhone => {
            let groups = digit_groups(v);
            let head = if v.starts_with('+') && groups.len() >= 3 {
                groups[0].1 + groups[1].1
            } else if groups.len() >= 2 {
                groups[0].1
            } else {
                3
            };
            mask_digits(v, |i, n| i >= head && i + 4 < n)
        }
        EntityType::CreditCard => mask_digits(v, |i, n| i >= 4 && i + 4 < n),
        EntityType::KrBankAccount => mask_digits(v, |i, n| i >= 3 && i + 3 < n),
        EntityType::KrDriverLicense => {
            let groups = digit_groups(v);
            match groups.iter().max_by_key(|g| g.1) {
                Some(&(s, l)) if groups.len() > 1 => mask_digits(v, |i, _| i >= s && i < s + l),
                _ => mask_digits(v, |i, n| i >= 4 && i + 2 < n),
            }
        }
        EntityType::KrVehiclePlate => mask_digits(v, |i, n| i + 4 >= n),
        EntityType::KrAddress => {
            // Keep the street, hide the building or lot number.
            let cut = v.rfind(' ').map_or(0, |p| p + 1);
            let (head, tail) = v.split_at(cut);
            format!("{head}{}", mask_digits(tail, |_, _| true))
        }
        EntityType::KrPassport => v
            .chars()
            .enumerate()
            .map(|(i, c)| if i >= 4 { '*' } else { c })
            .collect(),
        EntityType::Email => match v.find('@') {
            Some(at) => {
                let local: Vec<char> = v[..at].chars().collect();
                let keep = if local.len() > 2 { 2 } else { 1 };
                let masked: String = local
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| if i < keep { c } else { '*' })
                    .collect();
                format!("{masked}{}", &v[at..])
            }
            None => "*".repeat(v.chars().count()),
        },
        EntityType::IpAddress => {
            let sep = if v.contains(':') { ':' } else { '.' };
            let mut seen = 0;
            v.chars()
                .map(|c| {
                    if c == sep {
                        seen += 1;
                        c
                    } else if seen >= 2 && c.is_ascii_hexdigit() {
                        '*'
                    } else {
                        c
                    }
                })
                .collect()
        }
        EntityType::KrPerson => {
            let cs: Vec<char> = v.chars().collect();
            match cs.len() {
                0 | 1 => "*".to_string(),
                2 => format!("{}*", cs[0]),
                n => {
                    let keep_head = if n >= 4 { 2 } else { 1 };
                    cs.iter()
                        .enumerate()
                        .map(|(i, &c)| if i < keep_head || i == n - 1 { c } else { '*' })
                        .collect()
                }
            }
        }
    }
}

/// Keyed pseudonyms: the same value under the same tenant key always gives
/// the same token, and without the key the value cannot be recovered or guessed
/// by hashing candidate numbers.
pub struct Hasher {
    key: Vec<u8>,
}

impl Hasher {
    /// `key` is the tenant's secret; it must not be empty.
    pub fn new(key: &[u8]) -> Result<Hasher, GuardError> {
        if key.is_empty() {
            return Err(GuardError::EmptyKey);
        }
        Ok(Hasher { key: key.to_vec() })
    }

    /// The pseudonym of one value, e.g. `KR_PHONE_3f9a0c1b2d4e`. Separators
    /// and full-width digits are ignored so `010-1234-5678` and `01012345678`
    /// get the same token.
    pub fn pseudonym(&self, kind: EntityType, value: &str) -> String {
        let canon = canonical(kind, value);
        let mut msg = Vec::with_capacity(kind.as_str().len() + 1 + canon.len());
        msg.extend_from_slice(kind.as_str().as_bytes());
        msg.push(0);
        msg.extend_from_slice(canon.as_bytes());
        let mac = hmac_sha256(&self.key, &msg);
        let hex: String = mac[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}_{hex}", kind.as_str())
    }

    /// Replaces every entity by its pseudonym.
    pub fn apply(&self, text: &str, entities: &[Entity]) -> Result<String, GuardError> {
        replace_with(text, entities, |e, v| self.pseudonym(e.kind, v))
    }
}

fn canonical(kind: EntityType, value: &str) -> String {
    let fold = |c: char| -> char {
        let u = c as u32;
        if (0xFF01..=0xFF5E).contains(&u) {
            char::from_u32(u - 0xFF01 + 0x21).unwrap_or(c)
        } else {
            c
        }
    };
    let v: String = value.chars().map(fold).collect();
    match kind {
        EntityType::Email | EntityType::IpAddress => v.to_ascii_lowercase(),
        EntityType::KrPerson | EntityType::KrAddress | EntityType::KrVehiclePlate => {
            v.split_whitespace().collect::<Vec<_>>().join(" ")
        }
        EntityType::KrPassport => v.to_ascii_uppercase(),
        _ => {
            let digits: String = v.chars().filter(|c| c.is_ascii_digit()).collect();
            // +82 10 ... and 010 ... are the same phone number.
            if kind == EntityType::KrPhone && v.starts_with('+') && digits.starts_with("82") {
                format!("0{}", &digits[2..])
            } else {
                digits
            }
        }
    }
}
