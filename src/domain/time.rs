//! Checked date arithmetic: the one place that moves an instant by a span of seconds.
//!
//! chrono's `DateTime + TimeDelta` panics when the result leaves its calendar, and
//! `TimeDelta::seconds` panics past ±i64::MAX ms. Every "now + ttl" and "now − lookback"
//! in the daemon (settings, snapshot documents, database rows) goes through `after` /
//! `before` / `span`, which saturate instead: at 9999-12-31T23:59:59Z and
//! 0001-01-01T00:00:00Z, dates every encoding we write (RFC 3339, INTEGER milliseconds)
//! still represents. Settings are bounded at 100 years, so saturation only ever meets a
//! hand-written snapshot or a corrupt row, and then means "never" / "since always".

use chrono::{DateTime, TimeDelta, Utc};

const LATEST_SECS: i64 = 253_402_300_799;
const EARLIEST_SECS: i64 = -62_135_596_800;
/// The distance between `earliest` and `latest`, in seconds.
const WIDEST_SECS: u64 = (LATEST_SECS - EARLIEST_SECS) as u64;

// Computed once, at compile time: the planners call these per workspace.
const LATEST: DateTime<Utc> = match DateTime::from_timestamp(LATEST_SECS, 0) {
    Some(latest) => latest,
    None => DateTime::<Utc>::MAX_UTC,
};
const EARLIEST: DateTime<Utc> = match DateTime::from_timestamp(EARLIEST_SECS, 0) {
    Some(earliest) => earliest,
    None => DateTime::<Utc>::MIN_UTC,
};

/// The latest instant any computation yields.
pub fn latest() -> DateTime<Utc> {
    LATEST
}

/// The earliest instant any computation yields.
pub fn earliest() -> DateTime<Utc> {
    EARLIEST
}

/// The span of `seconds` seconds, saturated at the distance between `earliest` and
/// `latest` (so comparisons with any span stay meaningful).
pub fn span(seconds: u64) -> TimeDelta {
    // In range by construction: WIDEST_SECS seconds fit TimeDelta many times over.
    TimeDelta::new(seconds.min(WIDEST_SECS) as i64, 0).unwrap_or(TimeDelta::MAX)
}

/// `span` for a signed number of seconds, saturated the same way in both directions.
pub fn signed_span(seconds: i64) -> TimeDelta {
    if seconds < 0 { -span(seconds.unsigned_abs()) } else { span(seconds.unsigned_abs()) }
}

/// `time + delta`, saturated at `earliest` and `latest`.
pub fn add(time: DateTime<Utc>, delta: TimeDelta) -> DateTime<Utc> {
    match time.checked_add_signed(delta) {
        Some(moved) => moved.clamp(earliest(), latest()),
        None if delta < TimeDelta::zero() => earliest(),
        None => latest(),
    }
}

/// `time + seconds`, saturated at `latest`.
pub fn after(time: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    add(time, span(seconds))
}

/// `time − seconds`, saturated at `earliest`.
pub fn before(time: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    add(time, -span(seconds))
}

/// `span(seconds) × times`, saturated like `span`.
pub fn span_times(seconds: u64, times: u64) -> TimeDelta {
    span(seconds.saturating_mul(times))
}

/// `after` for a signed number of seconds (negative values count as 0).
pub fn after_signed(time: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    after(time, u64::try_from(seconds).unwrap_or(0))
}

/// `seconds × 1000` as milliseconds for SQL comparisons, saturated.
pub fn millis(seconds: i64) -> i64 {
    seconds.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn ordinary_spans_are_exact() {
        let now = at("2025-06-02T12:00:00Z");
        assert_eq!(after(now, 3_600), at("2025-06-02T13:00:00Z"));
        assert_eq!(before(now, 86_400), at("2025-06-01T12:00:00Z"));
        assert_eq!(after_signed(now, -5), now);
        assert_eq!(span(60), TimeDelta::minutes(1));
        assert_eq!(add(now, signed_span(-60)), at("2025-06-02T11:59:00Z"));
        assert_eq!(span_times(60, 3), TimeDelta::minutes(3));
    }

    #[test]
    fn huge_spans_saturate_instead_of_panicking() {
        let now = at("2025-06-02T12:00:00Z");
        for seconds in [u64::MAX, i64::MAX as u64, 100_000_000 * 86_400] {
            assert_eq!(after(now, seconds), latest());
            assert_eq!(before(now, seconds), earliest());
            assert!(now - earliest() < span(seconds) || now - earliest() == span(seconds));
        }
        assert_eq!(after(latest(), 1), latest());
        assert_eq!(before(earliest(), 1), earliest());
        assert_eq!(millis(i64::MAX), i64::MAX);
        assert_eq!(after(DateTime::<Utc>::MAX_UTC, 1), latest());
        assert_eq!(add(DateTime::<Utc>::MIN_UTC, TimeDelta::MIN), earliest());
        assert_eq!(add(now, signed_span(i64::MIN)), earliest());
        assert_eq!(span_times(u64::MAX, u64::MAX), span(u64::MAX));
    }

    #[test]
    fn saturated_instants_survive_every_encoding() {
        assert_eq!(latest().to_rfc3339(), "9999-12-31T23:59:59+00:00");
        assert_eq!(DateTime::from_timestamp_millis(latest().timestamp_millis()), Some(latest()));
        assert_eq!(
            DateTime::from_timestamp_millis(earliest().timestamp_millis()),
            Some(earliest())
        );
    }
}
