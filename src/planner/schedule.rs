//! The cron dialect (planner.md §5): parsing and validation of our five-field dialect with
//! an optional `CRON_TZ=<zone>` prefix, `next` firing times (evaluated by `croner` in the
//! zone, DST-aware), time-range membership for prebuild schedules, and the pairwise
//! overlap check of a preset's schedules.
//!
//! Pure: no clock, no IO. Fields are validated here before croner sees them, because
//! croner accepts more than the dialect (seconds, `L`, `W`, `#`, weekday 7, nicknames),
//! and are handed over in canonical numeric form, with `*`, `?` and `*/1` all written `*`
//! so croner's day-of-month/day-of-week rule (either may match when both are restricted)
//! sees exactly the fields the dialect counts as unrestricted.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

/// Why an expression was rejected; the message names the bad field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("empty cron expression")]
    Empty,
    #[error("unknown time zone {0:?} in CRON_TZ (use an IANA name such as Europe/Berlin)")]
    UnknownZone(String),
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    #[error("{field} field {value:?}: {reason}")]
    Field { field: &'static str, value: String, reason: String },
    #[error("{field} field must be \"*\" in a weekly schedule, found {value:?}")]
    NotWeekly { field: &'static str, value: String },
    #[error(
        "minute field must be \"*\" in a prebuild schedule (it selects whole hours), found {0:?}"
    )]
    NotTimeRange(String),
    #[error("cron evaluation failed: {0}")]
    Evaluation(String),
}

/// A parsed expression in its zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    zone: Tz,
    /// The five fields as written (after the prefix).
    fields: [String; 5],
    cron: croner::Cron,
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec { name: "minute", min: 0, max: 59, names: &[] },
    FieldSpec { name: "hour", min: 0, max: 23, names: &[] },
    FieldSpec { name: "day-of-month", min: 1, max: 31, names: &[] },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    },
    FieldSpec {
        name: "day-of-week",
        min: 0,
        max: 6,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    },
];

/// Whether a field counts as unrestricted for the day-of-month/day-of-week rule.
fn is_star(field: &str) -> bool {
    matches!(field, "*" | "?" | "*/1")
}

impl CronSchedule {
    /// Parses `[CRON_TZ=<zone> ]<5 fields>`; UTC when there is no prefix.
    pub fn parse(expression: &str) -> Result<CronSchedule, CronError> {
        Self::parse_in(expression, Tz::UTC)
    }

    /// Parses with `default_zone` for an expression without a `CRON_TZ=` prefix.
    pub fn parse_in(expression: &str, default_zone: Tz) -> Result<CronSchedule, CronError> {
        let mut parts: Vec<&str> = expression.split_whitespace().collect();
        if parts.is_empty() {
            return Err(CronError::Empty);
        }
        let mut zone = default_zone;
        if let Some(name) = parts[0].strip_prefix("CRON_TZ=") {
            zone = parse_zone(name)?;
            parts.remove(0);
        }
        if parts.len() != 5 {
            return Err(CronError::FieldCount(parts.len()));
        }
        let mut canonical = Vec::with_capacity(5);
        for (spec, raw) in FIELDS.iter().zip(&parts) {
            canonical.push(canonical_field(spec, raw)?);
        }
        let pattern = canonical.join(" ");
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(&pattern)
            .map_err(|error| CronError::Evaluation(error.to_string()))?;
        let fields = [0, 1, 2, 3, 4].map(|index| parts[index].to_owned());
        Ok(CronSchedule { zone, fields, cron })
    }

    /// A weekly schedule (autostart, §5.1): day-of-month and month must be `*`.
    pub fn parse_weekly(expression: &str) -> Result<CronSchedule, CronError> {
        let schedule = Self::parse(expression)?;
        for (index, field) in [(2, "day-of-month"), (3, "month")] {
            if schedule.fields[index] != "*" {
                return Err(CronError::NotWeekly { field, value: schedule.fields[index].clone() });
            }
        }
        Ok(schedule)
    }

    /// A time range (prebuild schedules, §5.3) evaluated in `zone` unless the expression
    /// names its own: the minute field must be `*`.
    pub fn parse_time_range(expression: &str, zone: Tz) -> Result<CronSchedule, CronError> {
        let schedule = Self::parse_in(expression, zone)?;
        if schedule.fields[0] != "*" {
            return Err(CronError::NotTimeRange(schedule.fields[0].clone()));
        }
        Ok(schedule)
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The earliest matching whole minute strictly after `after`, in the schedule's zone
    /// (§5.2). A time that falls into a spring-forward gap fires at the first instant after
    /// the gap; a repeated fall-back hour fires once.
    pub fn next(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .map(|next| next.with_timezone(&Utc))
            .map_err(|error| CronError::Evaluation(error.to_string()))
    }

    /// Whether `now`'s minute, in the schedule's zone, matches (§5.3).
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.zone);
        let minute = local.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(local);
        self.cron.is_time_matching(&minute).unwrap_or(false)
    }
}

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Self, CronError> {
        Self::parse(expression)
    }
}

/// An IANA zone name; `Local` is rejected (a daemon's local zone is an accident).
pub fn parse_zone(name: &str) -> Result<Tz, CronError> {
    if name.eq_ignore_ascii_case("local") {
        return Err(CronError::UnknownZone(name.to_owned()));
    }
    name.parse::<Tz>().map_err(|_| CronError::UnknownZone(name.to_owned()))
}

/// Validates one field and writes it in croner's numeric syntax.
fn canonical_field(spec: &FieldSpec, raw: &str) -> Result<String, CronError> {
    let fail =
        |reason: String| CronError::Field { field: spec.name, value: raw.to_owned(), reason };
    if is_star(raw) {
        return Ok("*".to_owned());
    }
    let mut items = Vec::new();
    for item in raw.split(',') {
        if item.is_empty() {
            return Err(fail("empty list item".to_owned()));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().map_err(|_| fail(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(fail("step must be at least 1".to_owned()));
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (value(spec, low).map_err(fail)?, value(spec, high).map_err(fail)?);
            if low > high {
                return Err(fail(format!("range {low}-{high} runs backwards")));
            }
            (low, high)
        } else {
            let low = value(spec, range).map_err(fail)?;
            // `5/15` means 5 through the maximum in steps of 15, as in robfig/cron.
            if step.is_some() { (low, spec.max) } else { (low, low) }
        };
        items.push(match step {
            Some(step) => format!("{low}-{high}/{step}"),
            None if low == high => low.to_string(),
            None => format!("{low}-{high}"),
        });
    }
    Ok(items.join(","))
}

/// One number or name of a field, within its bounds.
fn value(spec: &FieldSpec, text: &str) -> Result<u32, String> {
    if let Some(position) = spec.names.iter().position(|name| name.eq_ignore_ascii_case(text)) {
        // Month names count from 1, weekday names from 0 (Sunday).
        return Ok(position as u32 + spec.min);
    }
    let number: u32 = text.parse().map_err(|_| {
        if spec.names.is_empty() {
            format!("{text:?} is not a number")
        } else {
            format!("{text:?} is not a number or a name ({})", spec.names.join(", "))
        }
    })?;
    if number < spec.min || number > spec.max {
        return Err(format!("{number} is out of range {}-{}", spec.min, spec.max));
    }
    Ok(number)
}

/// Parses one field for the overlap check: `*`, unsigned integers, `a-b` with a ≤ b and
/// comma lists of those; no steps, no names.
fn overlap_set(raw: &str, max: u32) -> Result<Option<u64>, String> {
    if raw == "*" {
        return Ok(None);
    }
    let mut set = 0u64;
    for item in raw.split(',') {
        let (low, high) = match item.split_once('-') {
            Some((low, high)) => (number(low, max)?, number(high, max)?),
            None => {
                let value = number(item, max)?;
                (value, value)
            }
        };
        if low > high {
            return Err(format!("range {low}-{high} runs backwards"));
        }
        for value in low..=high {
            set |= 1 << value;
        }
    }
    Ok(Some(set))
}

fn number(text: &str, max: u32) -> Result<u32, String> {
    let value: u32 = text.parse().map_err(|_| format!("{text:?} is not an unsigned integer"))?;
    if value > max {
        return Err(format!("{value} is above {max}"));
    }
    Ok(value)
}

fn intersects(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a & b != 0,
        _ => true,
    }
}

/// Whether two prebuild schedules overlap (§5.4), or why one cannot be parsed for the
/// check. Fields are compared month, days, hours, stopping at the first disjoint one; a
/// later field is not parsed then.
pub fn schedules_overlap(first: &str, second: &str) -> Result<bool, String> {
    let split = |spec: &str| -> Result<Vec<String>, String> {
        let parts: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
        if parts.len() != 5 {
            return Err(format!("{spec:?} must have exactly 5 fields, found {}", parts.len()));
        }
        Ok(parts)
    };
    let (a, b) = (split(first)?, split(second)?);
    let months = |parts: &[String]| overlap_set(&parts[3], 12);
    if !intersects(months(&a)?, months(&b)?) {
        return Ok(false);
    }
    // Both day fields are parsed whenever days are compared. `None` = `*`.
    let days = |parts: &[String]| -> Result<(Option<u64>, Option<u64>), String> {
        Ok((overlap_set(&parts[2], 31)?, overlap_set(&parts[4], 6)?))
    };
    let ((dom_a, dow_a), (dom_b, dow_b)) = (days(&a)?, days(&b)?);
    let days_intersect = if dom_a.is_none() || dom_b.is_none() {
        intersects(dow_a, dow_b)
    } else if dow_a.is_none() || dow_b.is_none() {
        intersects(dom_a, dom_b)
    } else {
        intersects(dom_a, dom_b) || intersects(dow_a, dow_b)
    };
    if !days_intersect {
        return Ok(false);
    }
    let hours = |parts: &[String]| overlap_set(&parts[1], 23);
    Ok(intersects(hours(&a)?, hours(&b)?))
}

/// Checks every pair of a preset's schedules; `Err` names the first problem (an overlap
/// or a schedule the check cannot parse). One schedule alone never overlaps.
pub fn check_no_overlap(schedules: &[&str]) -> Result<(), String> {
    for (index, first) in schedules.iter().enumerate() {
        for second in &schedules[index + 1..] {
            if schedules_overlap(first, second)? {
                return Err(format!("schedules {first:?} and {second:?} overlap"));
            }
        }
    }
    Ok(())
}

/// The weekday of `time` in `zone`, Sunday = 0.
pub fn weekday_in(time: DateTime<Utc>, zone: Tz) -> u32 {
    time.with_timezone(&zone).weekday().num_days_from_sunday()
}

#[cfg(test)]
mod tests;
