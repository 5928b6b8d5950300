//! The timestamp grammar of `docs/contract.md`:
//! `YYYY-MM-DDTHH:MM:SS`, an optional fraction of 1 to 9 digits (kept to the microsecond),
//! then `Z`, `±HH:MM`, or nothing (taken as UTC).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Parses a timestamp of `docs/contract.md`'s grammar into UTC, truncated to the microsecond.
/// The error says what is wrong, for the client.
pub fn parse_timestamp(s: &str) -> Result<OffsetDateTime, &'static str> {
    let b = s.as_bytes();
    const SHAPE: &str = "must look like YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]";
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(SHAPE);
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, &'static str> {
        let mut v = 0u32;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return Err(SHAPE);
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Ok(v)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut micros = 0u32;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return Err("fraction of a second must have 1 to 9 digits");
        }
        for k in 0..6 {
            let d = if k < digits {
                u32::from(b[start + k] - b'0')
            } else {
                0
            };
            micros = micros * 10 + d;
        }
        i = end;
    }
    let offset = match &b[i..] {
        [] | [b'Z'] => UtcOffset::UTC,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(SHAPE);
            }
            let h = (h1 - b'0') * 10 + (h2 - b'0');
            let m = (m1 - b'0') * 10 + (m2 - b'0');
            if h > 23 || m > 59 {
                return Err("offset must be between -23:59 and +23:59");
            }
            let (h, m) = (h as i8, m as i8);
            let (h, m) = if *sign == b'-' { (-h, -m) } else { (h, m) };
            UtcOffset::from_hms(h, m, 0).map_err(|_| "offset out of range")?
        }
        _ => return Err(SHAPE),
    };
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or("month out of range")?;
    let date =
        Date::from_calendar_date(year as i32, month, day as u8).map_err(|_| "no such date")?;
    let time = Time::from_hms_micro(hour as u8, minute as u8, second as u8, micros)
        .map_err(|_| "no such time of day")?;
    PrimitiveDateTime::new(date, time)
        .assume_offset(offset)
        .checked_to_offset(UtcOffset::UTC)
        .ok_or("out of range")
}

/// Formats a UTC instant as RFC 3339 with microseconds, e.g. `2026-01-02T03:04:05.123456Z`.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn accepts_the_grammar() {
        let cases = [
            ("2026-01-02T03:04:05", datetime!(2026-01-02 03:04:05 UTC)),
            ("2026-01-02T03:04:05Z", datetime!(2026-01-02 03:04:05 UTC)),
            (
                "2026-01-02T03:04:05.5Z",
                datetime!(2026-01-02 03:04:05.5 UTC),
            ),
            (
                "2026-01-02T03:04:05.123456789Z",
                datetime!(2026-01-02 03:04:05.123456 UTC),
            ),
            (
                "2026-01-02T03:04:05+02:00",
                datetime!(2026-01-02 01:04:05 UTC),
            ),
            (
                "2026-01-02T03:04:05-23:59",
                datetime!(2026-01-03 03:03:05 UTC),
            ),
            (
                "2026-01-02T00:30:00.000001+01:00",
                datetime!(2026-01-01 23:30:00.000001 UTC),
            ),
            ("2024-02-29T23:59:59Z", datetime!(2024-02-29 23:59:59 UTC)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_timestamp(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for s in [
            "",
            "2026-01-02",
            "2026-01-02 03:04:05Z",
            "2026-01-02t03:04:05Z",
            "2026-1-02T03:04:05Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05.1234567890Z",
            "2026-01-02T03:04:05+25:00",
            "2026-01-02T03:04:05+24:00",
            "2026-01-02T03:04:05+02:60",
            "2026-01-02T03:04:05+0200",
            "2026-01-02T03:04:05+02",
            "2026-01-02T03:04:05ZZ",
            "2026-13-02T03:04:05Z",
            "2026-02-30T03:04:05Z",
            "2023-02-29T03:04:05Z",
            "2026-01-02T24:00:00Z",
            "2026-01-02T03:60:05Z",
            "2026-01-02T03:04:60Z",
            "+026-01-02T03:04:05Z",
            "2026-01-02T03:04:05Z ",
            "２０２６-01-02T03:04:05Z",
            "9999-12-31T23:59:59-01:00",
        ] {
            assert!(parse_timestamp(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn formats_with_microseconds() {
        let t = parse_timestamp("2026-01-02T03:04:05.1234+01:00").unwrap();
        assert_eq!(format_timestamp(t), "2026-01-02T02:04:05.123400Z");
        assert_eq!(parse_timestamp(&format_timestamp(t)), Ok(t));
    }
}
