//! UTC calendar arithmetic for budgets (day / month periods), retention and export filters,
//! without a date-time dependency: Howard Hinnant's civil-date algorithms.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::StoreError;

const DAY_MS: i64 = 86_400_000;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of the civil date `y-m-d`.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(y, m, d)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The UTC day of `ms` as `YYYY-MM-DD` (the key of a daily budget period).
pub fn day_key(ms: u64) -> String {
    let (y, m, d) = civil_from_days(ms as i64 / DAY_MS);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC month of `ms` as `YYYY-MM` (the key of a monthly budget period).
pub fn month_key(ms: u64) -> String {
    let (y, m, _) = civil_from_days(ms as i64 / DAY_MS);
    format!("{y:04}-{m:02}")
}

/// Seconds from `ms` until the next UTC midnight (at least 1).
pub fn secs_to_next_day(ms: u64) -> u64 {
    let next = (ms as i64 / DAY_MS + 1) * DAY_MS;
    ((next - ms as i64) as u64).div_ceil(1000).max(1)
}

/// Seconds from `ms` until the first instant of the next UTC month (at least 1).
pub fn secs_to_next_month(ms: u64) -> u64 {
    let (y, m, _) = civil_from_days(ms as i64 / DAY_MS);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = days_from_civil(ny, nm, 1) * DAY_MS;
    ((next - ms as i64).max(0) as u64).div_ceil(1000).max(1)
}

/// `ms` as RFC 3339 UTC with milliseconds, e.g. `2026-11-30T07:01:38.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let days = ms as i64 / DAY_MS;
    let rem = ms as i64 % DAY_MS;
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

fn num(s: &str, what: &str, input: &str) -> Result<u32, StoreError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StoreError::Invalid(format!(
            "expected a date as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, found `{input}` (bad {what})"
        )));
    }
    s.parse::<u32>()
        .map_err(|_| StoreError::Invalid(format!("bad {what} in `{input}`")))
}

/// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM[:SS]Z` (UTC) into Unix milliseconds.
pub fn parse_date(input: &str) -> Result<u64, StoreError> {
    let s = input.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() != 3 || parts[0].len() != 4 {
        return Err(StoreError::Invalid(format!(
            "expected a date as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, found `{input}`"
        )));
    }
    let y = num(parts[0], "year", input)?;
    let m = num(parts[1], "month", input)?;
    let d = num(parts[2], "day", input)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(StoreError::Invalid(format!(
            "`{input}` is not a date after 1970-01-01"
        )));
    }
    let days = days_from_civil(y as i64, m, d);
    if civil_from_days(days) != (y as i64, m, d) {
        return Err(StoreError::Invalid(format!(
            "`{input}` is not a calendar date"
        )));
    }
    let mut ms = days as u64 * DAY_MS as u64;
    if let Some(t) = time {
        let tp: Vec<&str> = t.split(':').collect();
        if tp.len() < 2 || tp.len() > 3 {
            return Err(StoreError::Invalid(format!(
                "expected a time as HH:MM[:SS] in `{input}`"
            )));
        }
        let h = num(tp[0], "hour", input)?;
        let mi = num(tp[1], "minute", input)?;
        let sec = match tp.get(2) {
            Some(x) => num(x.split('.').next().unwrap_or(x), "second", input)?,
            None => 0,
        };
        if h > 23 || mi > 59 || sec > 60 {
            return Err(StoreError::Invalid(format!(
                "`{input}` has an impossible time"
            )));
        }
        ms += (h as u64 * 3600 + mi as u64 * 60 + sec as u64) * 1000;
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 30), 20_787);
        for z in [-1000i64, 0, 59, 60, 11_016, 20_787, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        let ms = parse_date("2026-11-30T07:01:38Z").unwrap();
        assert_eq!(rfc3339(ms), "2026-11-30T07:01:38.000Z");
        assert_eq!(day_key(ms), "2026-11-30");
        assert_eq!(month_key(ms), "2026-11");
        assert_eq!(
            secs_to_next_day(parse_date("2026-11-30T23:59:00Z").unwrap()),
            60
        );
        assert_eq!(
            secs_to_next_month(parse_date("2026-12-31T23:00:00Z").unwrap()),
            3600
        );
    }

    #[test]
    fn bad_dates_are_errors() {
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-30",
            "20261130",
            "2026-11-30T25:00Z",
            "x-y-z",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }
}
