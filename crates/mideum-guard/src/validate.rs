//! Checksums and date checks that decide whether a digit string can be a given identifier.

/// Days in a month, taking leap years into account.
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => {
            // `%` rather than `is_multiple_of`: the workspace supports Rust 1.85.
            let div = |n: u32| year % n == 0;
            if (div(4) && !div(100)) || div(400) {
                29
            } else {
                28
            }
        }
        _ => 0,
    }
}

/// True when year/month/day is a real calendar date.
pub fn valid_date(year: u32, month: u32, day: u32) -> bool {
    (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month)
}

/// Century implied by the 7th digit (gender/century digit) of an RRN/FRN.
pub fn century_of(g: u8) -> u32 {
    match g {
        9 | 0 => 1800,
        1 | 2 | 5 | 6 => 1900,
        _ => 2000,
    }
}

/// True when the first six digits plus the century digit form a real birth date.
pub fn rrn_date_ok(d: &[u8; 13]) -> bool {
    let year = century_of(d[6]) + (d[0] * 10 + d[1]) as u32;
    let month = (d[2] * 10 + d[3]) as u32;
    let day = (d[4] * 10 + d[5]) as u32;
    valid_date(year, month, day)
}

/// True when the birth date encoded in an RRN is on or after 2020-10-05,
/// the day new numbers stopped having a meaningful check digit.
pub fn born_after_checksum_end(d: &[u8; 13]) -> bool {
    let year = century_of(d[6]) + (d[0] * 10 + d[1]) as u32;
    let month = (d[2] * 10 + d[3]) as u32;
    let day = (d[4] * 10 + d[5]) as u32;
    (year, month, day) >= (2020, 10, 5)
}

/// RRN check digit: weights 2..9,2..5; check = (11 - sum mod 11) mod 10.
pub fn rrn_checksum_ok(d: &[u8; 13]) -> bool {
    const W: [u32; 12] = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5];
    let sum: u32 = d[..12].iter().zip(W).map(|(&x, w)| x as u32 * w).sum();
    (11 - sum % 11) % 10 == d[12] as u32
}

/// 법인등록번호 check digit: weights 1,2 alternating over 12 digits,
/// check = (10 - sum mod 10) mod 10.
pub fn crn_checksum_ok(d: &[u8; 13]) -> bool {
    let sum: u32 = d[..12]
        .iter()
        .enumerate()
        .map(|(i, &x)| x as u32 * if i % 2 == 0 { 1 } else { 2 })
        .sum();
    (10 - sum % 10) % 10 == d[12] as u32
}

/// 사업자등록번호 check digit: weights 1,3,7,1,3,7,1,3,5 plus the tens of
/// (9th digit × 5); check = (10 - sum mod 10) mod 10.
pub fn brn_checksum_ok(d: &[u8; 10]) -> bool {
    const W: [u32; 9] = [1, 3, 7, 1, 3, 7, 1, 3, 5];
    let mut sum: u32 = d[..9].iter().zip(W).map(|(&x, w)| x as u32 * w).sum();
    sum += (d[8] as u32 * 5) / 10;
    (10 - sum % 10) % 10 == d[9] as u32
}

/// Luhn check used by payment cards.
pub fn luhn_ok(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = x as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    matches!(sum % 10, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr13(s: &str) -> [u8; 13] {
        let mut a = [0u8; 13];
        for (i, b) in s.bytes().enumerate() {
            a[i] = b - b'0';
        }
        a
    }

    #[test]
    fn rrn_checksum_known_value() {
        // 900101-1234568: sum = 2*9+3*0+4*0+5*1+6*0+7*1+8*1+9*2+2*3+3*4+4*5+5*6 = 124;
        // (11 - 124 % 11) % 10 = (11 - 3) % 10 = 8.
        assert!(rrn_checksum_ok(&arr13("9001011234568")));
        assert!(!rrn_checksum_ok(&arr13("9001011234567")));
        assert!(rrn_date_ok(&arr13("9001011234568")));
        assert!(!rrn_date_ok(&arr13("9013011234568")));
        // 2000-02-29 exists (century digit 3), 1900-02-29 does not (digit 1).
        assert!(rrn_date_ok(&arr13("0002293000000")));
        assert!(!rrn_date_ok(&arr13("0002291000000")));
    }

    #[test]
    fn luhn_and_brn() {
        assert!(luhn_ok(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn_ok(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
        // 220-81-62517 (a well-known public company number) passes.
        assert!(brn_checksum_ok(&[2, 2, 0, 8, 1, 6, 2, 5, 1, 7]));
        assert!(!brn_checksum_ok(&[2, 2, 0, 8, 1, 6, 2, 5, 1, 8]));
    }
}
