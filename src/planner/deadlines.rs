//! The times the write side stores for the lifecycle to find later: a started workspace's
//! autostop deadline, its bump on activity, and when a stopped workspace's autostart next
//! fires (`next_start_at`). Pure: the store reads the inputs, calls these, and writes the
//! result in the same transaction.

use chrono::{DateTime, Utc};

use crate::domain::time::{after_signed, signed_span};
use crate::domain::{JobStatus, Transition};
use crate::planner::lifecycle::next_allowed_autostart;
use crate::planner::schedule::CronSchedule;
use crate::planner::snapshot::Weekday;

/// What a start's deadlines depend on: the workspace TTL (or the template's default), the
/// template's max TTL and whether it allows autostop. Seconds; 0 = none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    pub workspace_ttl_s: Option<i64>,
    pub default_ttl_s: i64,
    pub max_ttl_s: i64,
    pub autostop_enabled: bool,
}

/// `(deadline, max_deadline)` of a start that completed at `completed`: completion + TTL
/// when autostop is on, capped by completion + max TTL (which alone is the deadline when
/// there is no TTL). Set once; a later TTL change does not move them.
pub fn start_deadlines(
    policy: &TtlPolicy,
    completed: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let ttl = policy.workspace_ttl_s.unwrap_or(policy.default_ttl_s);
    let deadline = (policy.autostop_enabled && ttl > 0).then(|| after_signed(completed, ttl));
    let max_deadline = (policy.max_ttl_s > 0).then(|| after_signed(completed, policy.max_ttl_s));
    let deadline = match (deadline, max_deadline) {
        (Some(deadline), Some(max)) => Some(deadline.min(max)),
        (None, Some(max)) => Some(max),
        (deadline, None) => deadline,
    };
    (deadline, max_deadline)
}

/// The deadline activity at `now` moves a running workspace's deadline to: now + TTL,
/// never past the max deadline, and only when the current deadline is closer than one TTL
/// and the move is later. `None`: leave it.
pub fn deadline_on_activity(
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
    ttl_s: i64,
    max_deadline: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    if ttl_s <= 0 {
        return None;
    }
    let mut bumped = after_signed(now, ttl_s);
    if let Some(max) = max_deadline {
        bumped = bumped.min(max);
    }
    (deadline - now < signed_span(ttl_s) && bumped > deadline).then_some(bumped)
}

/// What the next autostart of a workspace depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutostartInputs<'a> {
    pub schedule: Option<&'a str>,
    pub is_prebuild: bool,
    pub template_allows_autostart: bool,
    /// Bit `n` set: autostart allowed on day `n` (0 = Sunday).
    pub allowed_days: u8,
    pub latest_transition: Option<Transition>,
    pub latest_status: Option<JobStatus>,
    pub latest_created_at: Option<DateTime<Utc>>,
}

/// When the autostart next fires: only for a stopped (not failed) user workspace with a
/// valid weekly schedule on a template that allows autostart; the first firing after the
/// stop on an allowed day.
pub fn next_start_at(inputs: &AutostartInputs<'_>) -> Option<DateTime<Utc>> {
    if inputs.is_prebuild
        || !inputs.template_allows_autostart
        || inputs.latest_transition != Some(Transition::Stop)
        || inputs.latest_status == Some(JobStatus::Failed)
    {
        return None;
    }
    let schedule = CronSchedule::parse_weekly(inputs.schedule?).ok()?;
    let days: Vec<Weekday> = Weekday::ALL
        .iter()
        .enumerate()
        .filter(|(bit, _)| inputs.allowed_days & (1 << bit) != 0)
        .map(|(_, day)| *day)
        .collect();
    next_allowed_autostart(&schedule, inputs.latest_created_at?, &days)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn a_start_gets_ttl_capped_by_max_ttl() {
        let now = at("2025-06-02T12:00:00Z");
        let policy = TtlPolicy {
            workspace_ttl_s: Some(3600),
            default_ttl_s: 60,
            max_ttl_s: 1800,
            autostop_enabled: true,
        };
        let half_hour = Some(at("2025-06-02T12:30:00Z"));
        assert_eq!(start_deadlines(&policy, now), (half_hour, half_hour));
        let off = TtlPolicy { autostop_enabled: false, max_ttl_s: 0, ..policy };
        assert_eq!(start_deadlines(&off, now), (None, None));
        let default = TtlPolicy { workspace_ttl_s: None, max_ttl_s: 0, ..policy };
        assert_eq!(start_deadlines(&default, now), (Some(at("2025-06-02T12:01:00Z")), None));
        let huge = TtlPolicy { workspace_ttl_s: Some(i64::MAX), max_ttl_s: 0, ..policy };
        assert!(start_deadlines(&huge, now).0.is_some(), "saturates, never panics");
    }

    #[test]
    fn activity_moves_a_close_deadline_up_to_the_max() {
        let now = at("2025-06-02T12:00:00Z");
        let close = at("2025-06-02T12:10:00Z");
        assert_eq!(deadline_on_activity(now, close, 3600, None), Some(at("2025-06-02T13:00:00Z")));
        let max = Some(at("2025-06-02T12:20:00Z"));
        assert_eq!(deadline_on_activity(now, close, 3600, max), max);
        assert_eq!(deadline_on_activity(now, close, 3600, Some(close)), None, "at the max");
        assert_eq!(deadline_on_activity(now, at("2025-06-02T14:00:00Z"), 3600, None), None);
        assert_eq!(deadline_on_activity(now, close, 0, None), None, "no TTL");
    }

    #[test]
    fn autostart_fires_only_for_a_stopped_user_workspace_on_an_allowed_day() {
        // 2025-06-02 is a Monday.
        let stopped = AutostartInputs {
            schedule: Some("CRON_TZ=UTC 0 9 * * *"),
            is_prebuild: false,
            template_allows_autostart: true,
            allowed_days: 0b111_1111,
            latest_transition: Some(Transition::Stop),
            latest_status: Some(JobStatus::Succeeded),
            latest_created_at: Some(at("2025-06-02T12:00:00Z")),
        };
        assert_eq!(next_start_at(&stopped), Some(at("2025-06-03T09:00:00Z")));
        let weekdays_but_tuesday = AutostartInputs { allowed_days: 0b111_1011, ..stopped.clone() };
        assert_eq!(next_start_at(&weekdays_but_tuesday), Some(at("2025-06-04T09:00:00Z")));
        for off in [
            AutostartInputs { is_prebuild: true, ..stopped.clone() },
            AutostartInputs { template_allows_autostart: false, ..stopped.clone() },
            AutostartInputs { latest_transition: Some(Transition::Start), ..stopped.clone() },
            AutostartInputs { latest_status: Some(JobStatus::Failed), ..stopped.clone() },
            AutostartInputs { schedule: Some("not cron"), ..stopped.clone() },
            AutostartInputs { allowed_days: 0, ..stopped.clone() },
        ] {
            assert_eq!(next_start_at(&off), None, "{off:?}");
        }
    }
}
