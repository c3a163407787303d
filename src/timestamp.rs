//! Timestamps as the outputs hold them: UTC microseconds since the epoch,
//! read from the API's ISO-8601 text and written back as RFC 3339. The
//! common shapes are read and written with integer calendar arithmetic (the
//! hot path of a sync); chrono reads every other form and is the reference
//! the property tests hold the fast paths to.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Parses an ISO-8601 timestamp into UTC microseconds since the epoch.
/// Accepts RFC 3339 with any offset, and — leniently — a timestamp without
/// offset (read as UTC) or with a space instead of `T`. Anything else,
/// including values outside what microseconds can hold, is `None`.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    parse_strict_rfc3339(raw).or_else(|| parse_with_chrono(raw))
}

/// Every form [`parse_timestamp`] accepts, read by chrono.
fn parse_with_chrono(raw: &str) -> Option<i64> {
    let parsed = DateTime::parse_from_rfc3339(raw)
        .map(|dt| dt.with_timezone(&Utc))
        .or_else(|_| {
            DateTime::parse_from_rfc3339(&raw.replacen(' ', "T", 1))
                .map(|dt| dt.with_timezone(&Utc))
        })
        .or_else(|_| {
            NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f"))
                .map(|naive| naive.and_utc())
        })
        .ok()?;
    Some(parsed.timestamp_micros())
}

/// The shape almost every API timestamp has, `YYYY-MM-DDTHH:MM:SS`, an
/// optional fraction of 1-9 digits, then `Z` or `±HH:MM`, read with integer
/// arithmetic (a sync reads one per message). `None` for anything else,
/// valid or not: chrono decides those (a property test holds the two
/// equal wherever this one answers).
fn parse_strict_rfc3339(raw: &str) -> Option<i64> {
    let b = raw.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        b.get(from..to)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut end = 19;
    let mut micros = 0;
    if at(19, b'.') {
        let digits = b
            .get(20..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        end = 20 + digits;
        let nanos = num(20, end)? * 10i64.pow(9 - digits as u32);
        micros = nanos / 1_000;
    }
    let offset = match b.get(end..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(end + 1, end + 3)?, num(end + 4, end + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'-' {
                -(h * 3600 + m * 60)
            } else {
                h * 3600 + m * 60
            }
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`), the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Appends `micros` as [`format_micros`] does, in quotes, without an
/// allocation for the common years 0000-9999 (a sync formats one per
/// message). Returns `false`, appending nothing, when it has no RFC 3339
/// form.
pub fn write_rfc3339(out: &mut Vec<u8>, micros: i64) -> bool {
    // Years 0000-9999, the only ones RFC 3339 can write with four digits.
    const FIRST: i64 = -62_167_219_200_000_000;
    const END: i64 = 253_402_300_800_000_000;
    if !(FIRST..END).contains(&micros) {
        return match format_micros(micros) {
            Some(text) => {
                out.push(b'"');
                out.extend_from_slice(text.as_bytes());
                out.push(b'"');
                true
            }
            None => false,
        };
    }
    let (days, micros_of_day) = (
        micros.div_euclid(86_400_000_000),
        micros.rem_euclid(86_400_000_000),
    );
    let (year, month, day) = civil_from_days(days);
    let seconds = (micros_of_day / 1_000_000) as u32;
    let fraction = (micros_of_day % 1_000_000) as u32;
    let year = year as u32;
    let [y0, y1] = two_digits(year / 100);
    let [y2, y3] = two_digits(year % 100);
    let [mo0, mo1] = two_digits(month);
    let [d0, d1] = two_digits(day);
    let [h0, h1] = two_digits(seconds / 3600);
    let [mi0, mi1] = two_digits(seconds / 60 % 60);
    let [s0, s1] = two_digits(seconds % 60);
    // One append for the fixed part, not one per field.
    out.extend_from_slice(&[
        b'"', y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0,
        s1,
    ]);
    // chrono's `SecondsFormat::AutoSi`: as many digits as the value needs,
    // in steps of three.
    if fraction == 0 {
        out.extend_from_slice(b"Z\"");
    } else if fraction.is_multiple_of(1_000) {
        let millis = fraction / 1_000;
        let [a, b] = two_digits(millis / 10);
        out.extend_from_slice(&[b'.', a, b, b'0' + (millis % 10) as u8, b'Z', b'"']);
    } else {
        let [a, b] = two_digits(fraction / 10_000);
        let [c, d] = two_digits(fraction / 100 % 100);
        let [e, f] = two_digits(fraction % 100);
        out.extend_from_slice(&[b'.', a, b, c, d, e, f, b'Z', b'"']);
    }
    true
}

/// The two last decimal digits of `value`.
fn two_digits(value: u32) -> [u8; 2] {
    [b'0' + (value / 10 % 10) as u8, b'0' + (value % 10) as u8]
}

/// The proleptic Gregorian (year, month, day) of a day count from
/// 1970-01-01 (H. Hinnant's `civil_from_days`): integer arithmetic only.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats UTC microseconds as RFC 3339 (`2025-01-15T12:00:00Z`, with a
/// fraction only when there is one).
pub fn format_micros(micros: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|dt| dt.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The time encoded in an X snowflake ID (a message's, when the API gave
/// no `created_at`), in milliseconds since the epoch: `(id >> 22)` plus
/// X's epoch, 2010-11-04T01:42:54.657Z.
pub fn snowflake_millis(id: &str) -> Option<i64> {
    let id: u64 = id.parse().ok()?;
    i64::try_from(id >> 22).ok()?.checked_add(1_288_834_974_657)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_utc_micros() {
        let utc = parse_timestamp("2025-01-15T12:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2025-01-15T14:00:00+02:00"), Some(utc));
        assert_eq!(parse_timestamp("2025-01-15T12:00:00.000Z"), Some(utc));
        assert_eq!(parse_timestamp("2025-01-15T12:00:00"), Some(utc));
        assert_eq!(parse_timestamp("2025-01-15 12:00:00"), Some(utc));
        assert_eq!(format_micros(utc).unwrap(), "2025-01-15T12:00:00Z");
        let frac = parse_timestamp("2025-01-15T12:00:00.123456789Z").unwrap();
        assert_eq!(format_micros(frac).unwrap(), "2025-01-15T12:00:00.123456Z");
    }

    #[test]
    fn timestamps_are_written_as_chrono_formats_them() {
        let edges = [
            0,
            1,
            999,
            1_000,
            1_000_000,
            -1,
            -1_000_001,
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
            253_402_300_800_000_000, // 10000-01-01: chrono's own form
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // before year 0
            i64::MIN,
            i64::MAX,
        ];
        for micros in edges {
            let mut out = Vec::new();
            let written = write_rfc3339(&mut out, micros);
            let expected = format_micros(micros).map(|t| format!("\"{t}\""));
            assert_eq!(
                written.then(|| String::from_utf8(out).unwrap()),
                expected,
                "{micros}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_timestamp_is_written_as_chrono_formats_it(micros in proptest::prelude::any::<i64>()) {
            let mut out = Vec::new();
            let written = write_rfc3339(&mut out, micros);
            let expected = format_micros(micros).map(|t| format!("\"{t}\""));
            proptest::prop_assert_eq!(written.then(|| String::from_utf8(out).unwrap()), expected);
        }

        #[test]
        fn common_timestamps_are_written_as_chrono_formats_them(
            micros in -62_167_219_200_000_000i64..253_402_300_800_000_000,
            unit in proptest::sample::select(vec![1i64, 1_000, 1_000_000]),
        ) {
            let micros = micros / unit * unit;
            let mut out = Vec::new();
            proptest::prop_assert!(write_rfc3339(&mut out, micros));
            proptest::prop_assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("\"{}\"", format_micros(micros).unwrap())
            );
        }

        #[test]
        fn strict_timestamps_are_read_as_chrono_reads_them(
            raw in "[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,11})?(Z|z|[+-][0-2][0-9]:[0-6][0-9])",
        ) {
            if let Some(micros) = parse_strict_rfc3339(&raw) {
                proptest::prop_assert_eq!(Some(micros), parse_with_chrono(&raw), "{}", raw);
            }
            proptest::prop_assert_eq!(parse_timestamp(&raw), parse_with_chrono(&raw));
        }

        #[test]
        fn written_timestamps_read_back(micros in -62_167_219_200_000_000i64..253_402_300_800_000_000) {
            let mut out = Vec::new();
            proptest::prop_assert!(write_rfc3339(&mut out, micros));
            let text = String::from_utf8(out).unwrap();
            let inner = text.trim_matches('"');
            proptest::prop_assert_eq!(parse_strict_rfc3339(inner), Some(micros));
        }
    }
}
