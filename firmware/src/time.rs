//! UTC timestamps in the one text form the format allows: `YYYY-MM-DDTHH:MM:SSZ`.
//!
//! Own civil-date arithmetic (no dependency): the format only needs years 1970–9999, whole seconds,
//! no time zones and no leap seconds, which keeps both directions exact and small.

use std::fmt;
use std::str::FromStr;

use crate::error::FormatError;

/// Seconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(u64);

/// 9999-12-31T23:59:59Z, the last instant with a four-digit year.
const MAX_UNIX: u64 = 253_402_300_799;
/// Days from 0000-03-01 (proleptic Gregorian, March-based years) to 1970-01-01.
const EPOCH_SHIFT_DAYS: u64 = 719_468;
const DAYS_PER_400Y: u64 = 146_097;

impl Timestamp {
    /// 9999-12-31T23:59:59Z: the largest value that has a text form.
    pub const MAX: Timestamp = Timestamp(MAX_UNIX);

    pub const fn from_unix(secs: u64) -> Self {
        Timestamp(secs)
    }

    pub fn unix(self) -> u64 {
        self.0
    }

    /// The system clock. For I/O shells only: cores take `now` as a parameter.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Timestamp(secs)
    }

    /// `None` on overflow or past [`Timestamp::MAX`] (such a value could not be written down).
    pub fn checked_add_secs(self, secs: u64) -> Option<Self> {
        self.0
            .checked_add(secs)
            .filter(|&t| t <= MAX_UNIX)
            .map(Timestamp)
    }

    /// Whether this value has a text form (years 1970–9999).
    pub fn is_representable(self) -> bool {
        self.0 <= MAX_UNIX
    }
}

/// Days since 1970-01-01 of a valid civil date with `year >= 1970`.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Count years from March so that the leap day is the last day of the (shifted) year.
    let y = if month <= 2 { year - 1 } else { year };
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let days_since_0000_03_01 = 365 * y + y / 4 - y / 100 + y / 400 + day_of_year;
    days_since_0000_03_01 - EPOCH_SHIFT_DAYS
}

/// (year, month, day) of `days` since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + EPOCH_SHIFT_DAYS;
    let era = z / DAYS_PER_400Y;
    let day_of_era = z % DAYS_PER_400Y;
    // Remove the extra leap days of the 4-, 100- and 400-year cycles to find the year in the era.
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524
        - day_of_era / (DAYS_PER_400Y - 1))
        / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d) = civil_from_days(self.0 / 86_400);
        let secs = self.0 % 86_400;
        let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

impl FromStr for Timestamp {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let err = || FormatError::Timestamp(s.chars().take(40).collect());
        let b = s.as_bytes();
        if b.len() != 20 {
            return Err(err());
        }
        let num = |range: std::ops::Range<usize>| -> Option<u64> {
            b[range].iter().try_fold(0u64, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
            })
        };
        let seps = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'Z'),
        ];
        if seps.iter().any(|&(i, c)| b[i] != c) {
            return Err(err());
        }
        let fields = (
            num(0..4),
            num(5..7),
            num(8..10),
            num(11..13),
            num(14..16),
            num(17..19),
        );
        let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = fields else {
            return Err(err());
        };
        if y < 1970
            || !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 59
        {
            return Err(err());
        }
        Ok(Timestamp(
            days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec,
        ))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.is_representable() {
            return Err(serde::ser::Error::custom(
                "timestamp after 9999-12-31T23:59:59Z",
            ));
        }
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (1_893_456_000, "2030-01-01T00:00:00Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (MAX_UNIX, "9999-12-31T23:59:59Z"),
        ];
        for (secs, text) in cases {
            let t = Timestamp::from_unix(secs);
            assert_eq!(t.to_string(), text);
            assert_eq!(text.parse::<Timestamp>().unwrap(), t, "{text}");
        }
    }

    #[test]
    fn every_day_round_trips() {
        // Every day from 1970 to past 2500 (covers 1600/2000-style and 2100-style century rules).
        let mut prev = None;
        for day in 0..(531 * 366) {
            let t = Timestamp::from_unix(day * 86_400 + 43_199);
            let text = t.to_string();
            assert_eq!(text.parse::<Timestamp>().unwrap(), t);
            assert!(prev.is_none_or(|p: String| p < text));
            prev = Some(text);
        }
    }

    #[test]
    fn strict_parse() {
        for bad in [
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00z",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01T00:00:00.0Z",
            "1969-12-31T23:59:59Z",
            "+024-01-01T00:00:00Z",
            "2024-1-01T00:00:00Z ",
            "",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        assert!(serde_json::to_string(&Timestamp::from_unix(MAX_UNIX + 1)).is_err());
        assert_eq!(Timestamp::MAX.checked_add_secs(1), None);
        assert_eq!(Timestamp::from_unix(u64::MAX).checked_add_secs(1), None);
        assert_eq!(
            Timestamp::from_unix(5).checked_add_secs(7),
            Some(Timestamp::from_unix(12))
        );
        // Display never panics, even far outside the text range.
        let _ = Timestamp::from_unix(u64::MAX).to_string();
    }
}
