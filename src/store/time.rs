//! Conversions between `DateTime<Utc>` and the schema's INTEGER milliseconds.
//!
//! Owns the one time encoding the database uses; no other module formats times for SQL.

use chrono::{DateTime, Utc};

/// Milliseconds since the Unix epoch, the schema's time encoding.
pub fn to_millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

/// The inverse of `to_millis`; `None` for values outside chrono's range (a corrupt row).
pub fn from_millis(millis: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip() {
        let time = DateTime::parse_from_rfc3339("2025-06-02T12:00:00.123Z").unwrap().to_utc();
        assert_eq!(from_millis(to_millis(time)), Some(time));
        assert_eq!(from_millis(i64::MAX), None);
    }
}
