//! The lifecycle decisions (planner.md §4, Coder's autobuild executor): autostop,
//! autostart, failed-start stop, dormancy and auto-delete, first match wins.
//!
//! Pure. Each rule is also a public predicate, so the executor's write transaction can
//! re-check the very rule the plan used against the row it re-read.

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::domain::{JobStatus, Transition};
use crate::planner::plan::{LifecycleDecision, LifecycleReason};
use crate::planner::schedule::{CronSchedule, weekday_in};
use crate::planner::snapshot::{
    AutomaticUpdates, Build, Index, OwnerStatus, Template, Weekday, Workspace,
};

/// A failed delete is retried by auto-delete only this long after it completed.
const FAILED_DELETE_RETRY: i64 = 24 * 3600;

/// The lifecycle's tick: `now` truncated to the minute.
pub fn tick(now: DateTime<Utc>) -> DateTime<Utc> {
    now.duration_trunc(Duration::minutes(1)).unwrap_or(now)
}

/// Decisions for every workspace that has one, in snapshot order.
pub fn plan(index: &Index<'_>) -> Vec<LifecycleDecision> {
    let snapshot = index.snapshot;
    let tick = tick(snapshot.now);
    snapshot
        .workspaces
        .iter()
        .enumerate()
        .filter_map(|(position, workspace)| {
            let latest = index.latest(position)?;
            let template = index.templates.get(workspace.template_id.as_str())?;
            decide(workspace, latest, template, tick)
        })
        .collect()
}

/// The first rule that applies to one workspace, or `None`.
pub fn decide(
    workspace: &Workspace,
    latest: &Build,
    template: &Template,
    tick: DateTime<Utc>,
) -> Option<LifecycleDecision> {
    if workspace.deleted
        || workspace.owner.is_prebuilds()
        || matches!(latest.job_status, JobStatus::Pending | JobStatus::Running)
    {
        return None;
    }
    let decision = |transition, reason, becomes_dormant, template_version_id| LifecycleDecision {
        workspace_id: workspace.id.clone(),
        transition,
        reason,
        becomes_dormant,
        template_version_id,
    };
    if autostop_due(workspace, latest, tick) {
        return Some(decision(Some(Transition::Stop), LifecycleReason::Autostop, false, None));
    }
    if autostart_due(workspace, latest, template, tick) {
        let version = if template.schedule.require_active_version
            || workspace.automatic_updates == AutomaticUpdates::Always
        {
            template.active_version_id.clone()
        } else {
            latest.template_version_id.clone()
        };
        return Some(decision(
            Some(Transition::Start),
            LifecycleReason::Autostart,
            false,
            Some(version),
        ));
    }
    if failed_stop_due(latest, template, tick) {
        return Some(decision(Some(Transition::Stop), LifecycleReason::Failedstop, false, None));
    }
    if dormancy_due(workspace, template, tick) {
        let transition = (latest.transition == Transition::Start).then_some(Transition::Stop);
        return Some(decision(transition, LifecycleReason::Dormancy, true, None));
    }
    if autodelete_due(workspace, latest, template, tick) {
        return Some(decision(Some(Transition::Delete), LifecycleReason::Autodelete, false, None));
    }
    None
}

fn seconds(value: u64) -> Duration {
    crate::domain::time::span(value)
}

/// Rule 1: a started workspace past its deadline, or whose owner is suspended.
pub fn autostop_due(workspace: &Workspace, latest: &Build, tick: DateTime<Utc>) -> bool {
    latest.job_status != JobStatus::Failed
        && workspace.dormant_at.is_none()
        && latest.transition == Transition::Start
        && (workspace.owner_status == OwnerStatus::Suspended
            || latest.deadline.is_some_and(|deadline| tick >= deadline))
}

/// Rule 2: a stopped workspace whose autostart schedule fired since its last build.
pub fn autostart_due(
    workspace: &Workspace,
    latest: &Build,
    template: &Template,
    tick: DateTime<Utc>,
) -> bool {
    if workspace.owner_status != OwnerStatus::Active
        || latest.job_status == JobStatus::Failed
        || workspace.dormant_at.is_some()
        || latest.transition != Transition::Stop
        || !template.schedule.autostart_enabled
    {
        return false;
    }
    let Some(schedule) = workspace.autostart_schedule.as_deref() else { return false };
    let Ok(schedule) = CronSchedule::parse_weekly(schedule) else { return false };
    next_allowed_autostart(&schedule, latest.created_at, &template.schedule.autostart_days)
        .is_some_and(|next| tick >= next)
}

/// The first firing after `since` on an allowed day, looking at most a week ahead.
pub fn next_allowed_autostart(
    schedule: &CronSchedule,
    since: DateTime<Utc>,
    days: &[Weekday],
) -> Option<DateTime<Utc>> {
    let week_later = crate::domain::time::after(since, 7 * 86_400);
    let mut next = schedule.next(since).ok()?;
    loop {
        let weekday = Weekday::from_sunday(weekday_in(next, schedule.zone()))?;
        if days.contains(&weekday) {
            return Some(next);
        }
        if next >= week_later {
            return None;
        }
        next = schedule.next(next).ok()?;
    }
}

/// Rule 3: a failed start that completed more than `failure_ttl` ago.
pub fn failed_stop_due(latest: &Build, template: &Template, tick: DateTime<Utc>) -> bool {
    let ttl = template.schedule.failure_ttl_s;
    ttl > 0
        && latest.transition == Transition::Start
        && latest.job_status == JobStatus::Failed
        && latest.job_completed_at.is_some_and(|completed| tick - completed > seconds(ttl))
}

/// Rule 4: inactive for longer than `time_til_dormant`.
pub fn dormancy_due(workspace: &Workspace, template: &Template, tick: DateTime<Utc>) -> bool {
    let ttl = template.schedule.time_til_dormant_s;
    workspace.dormant_at.is_none() && ttl > 0 && tick - workspace.last_used() > seconds(ttl)
}

/// Rule 5: dormant and past `deleting_at` (a failed delete is retried after 24 h).
pub fn autodelete_due(
    workspace: &Workspace,
    latest: &Build,
    template: &Template,
    tick: DateTime<Utc>,
) -> bool {
    if workspace.dormant_at.is_none() || template.schedule.time_til_dormant_autodelete_s == 0 {
        return false;
    }
    let Some(deleting_at) = workspace.deleting_at else { return false };
    if tick <= deleting_at {
        return false;
    }
    if latest.transition == Transition::Delete && latest.job_status == JobStatus::Failed {
        return latest
            .job_completed_at
            .is_some_and(|completed| tick - completed > Duration::seconds(FAILED_DELETE_RETRY));
    }
    true
}
