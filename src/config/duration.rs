//! Human-readable durations for the config file: `15s`, `30m`, `72h30m`, `14d`.
//!
//! Owns the pure parser and the `HumanDuration` newtype that config structs use. It must
//! not know about files or keys: the config loader adds those to the error.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration; expected something like \"15s\", \"72h30m\" or \"14d\"")]
    Empty,
    #[error(
        "invalid duration {0:?}; expected a number followed by d, h, m or s, e.g. \"15s\", \"72h30m\" or \"14d\""
    )]
    Syntax(String),
    #[error("unknown unit {unit:?} in duration {input:?}; use d, h, m or s")]
    UnknownUnit { input: String, unit: String },
    #[error("duration {0:?} is too large")]
    Overflow(String),
    #[error("duration {0:?} is longer than the longest allowed, 36500d (100 years)")]
    TooLong(String),
}

/// The longest duration any setting accepts: 100 years. Every date computed from a
/// setting (`now + ttl`, `now - lookback`) then stays far inside the calendar's range, and
/// a timer built from one never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `"15s"`, `"72h30m"`, `"336h"`, `"14d"`, or `"0"`. Whitespace between parts is not
/// allowed, so a typo like `"5 minutes"` is an error instead of a surprise.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u64 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Syntax(input.to_owned()));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(DurationError::Syntax(input.to_owned()));
        }
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit: u64 = match unit {
            "d" => 86_400,
            "h" => 3_600,
            "m" => 60,
            "s" => 1,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        let value: u64 = number.parse().map_err(|_| DurationError::Overflow(input.to_owned()))?;
        total = value
            .checked_mul(seconds_per_unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        rest = after;
    }
    let total = Duration::from_secs(total);
    if total > MAX_DURATION {
        return Err(DurationError::TooLong(input.to_owned()));
    }
    Ok(total)
}

/// Formats a whole-second duration the way the parser reads it back (`"1d2h3m4s"`).
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if seconds >= size {
            out.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    out
}

/// A `Duration` that reads and writes as a human string in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(seconds: u64) -> Self {
        HumanDuration(Duration::from_secs(seconds))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HumanDurationVisitor;

        impl Visitor<'_> for HumanDurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"15s\", \"72h30m\" or \"14d\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<HumanDuration, E> {
                parse_duration(value).map(HumanDuration).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(HumanDurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ok(input: &str, seconds: u64) {
        assert_eq!(parse_duration(input), Ok(Duration::from_secs(seconds)), "{input}");
    }

    #[test]
    fn accepts_every_unit_and_combinations() {
        check_ok("0", 0);
        check_ok("0s", 0);
        check_ok("15s", 15);
        check_ok("30m", 1_800);
        check_ok("336h", 1_209_600);
        check_ok("72h30m", 261_000);
        check_ok("14d", 1_209_600);
        check_ok("1d2h3m4s", 93_784);
    }

    #[test]
    fn rejects_malformed_input_with_the_reason() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(parse_duration("5 minutes"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("15"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("h"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("-5s"), Err(DurationError::Syntax(_))));
        assert!(matches!(parse_duration("1.5h"), Err(DurationError::Syntax(_))));
        assert_eq!(
            parse_duration("3w"),
            Err(DurationError::UnknownUnit { input: "3w".into(), unit: "w".into() })
        );
        assert!(matches!(parse_duration("99999999999999999999d"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse_duration("999999999999999999d"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn durations_are_bounded_at_one_hundred_years() {
        check_ok("36500d", 36_500 * 86_400);
        assert_eq!(parse_duration("36500d1s"), Err(DurationError::TooLong("36500d1s".into())));
        assert_eq!(parse_duration("100000000d"), Err(DurationError::TooLong("100000000d".into())));
    }

    #[test]
    fn formatting_round_trips() {
        for seconds in [0, 1, 59, 60, 3_600, 86_400, 93_784, 1_209_600] {
            let text = format_duration(Duration::from_secs(seconds));
            assert_eq!(parse_duration(&text), Ok(Duration::from_secs(seconds)), "{text}");
        }
    }
}
