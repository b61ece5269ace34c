//! The lifecycle executor's write side: for one candidate workspace, inside one write
//! transaction, re-read it (with its latest build and template), re-decide with the
//! planner's own rule, and act: enqueue the build, mark it dormant. Also autostart schedule
//! changes, which move the lifecycle's inputs (activity is `store::lifecycle::report_activity`:
//! the API, the app proxy and the health monitor all report it).
//!
//! The decision lives in `planner::lifecycle::decide`; this module only makes it so.

pub mod tick;

use chrono::{DateTime, Utc};

use crate::domain::event::Event;
use crate::domain::{BuildReason, Transition};
use crate::planner::lifecycle;
use crate::planner::plan::{LifecycleDecision, LifecycleReason};
use crate::planner::schedule::CronSchedule;
use crate::store::builds::{self, BuildError, BuildRequest};
use crate::store::lifecycle as store_lifecycle;
use crate::store::{StoreError, WriteTx, snapshot};

/// Re-judges one workspace at `tick` and carries out the decision; `None` when nothing is
/// due any more (the candidate query is a superset; state may have changed since).
pub fn apply(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    now: DateTime<Utc>,
    tick: DateTime<Utc>,
) -> Result<Option<LifecycleDecision>, BuildError> {
    let Some((workspace, Some(latest), template)) = snapshot::one(tx, workspace_id)? else {
        return Ok(None);
    };
    let Some(decision) = lifecycle::decide(&workspace, &latest, &template, tick) else {
        return Ok(None);
    };
    if decision.becomes_dormant {
        crate::store::lifecycle::mark_dormant(
            tx,
            workspace_id,
            now,
            template.schedule.time_til_dormant_autodelete_s,
        )?;
    }
    if let Some(transition) = decision.transition {
        let reason = match decision.reason {
            LifecycleReason::Autostart => BuildReason::Autostart,
            // Coder records a failed-start stop as an autostop; so do we.
            LifecycleReason::Autostop | LifecycleReason::Failedstop => BuildReason::Autostop,
            LifecycleReason::Dormancy => BuildReason::Autolock,
            LifecycleReason::Autodelete => BuildReason::Autodelete,
        };
        let initiator = workspace.owner.user_id().to_owned();
        let mut request = BuildRequest::new(workspace_id, transition, reason, &initiator);
        if transition == Transition::Start {
            request.template_version_id = decision.template_version_id.clone();
        }
        builds::enqueue(tx, &request, now)?;
    }
    tx.emit(
        &Event::LifecycleTransition {
            workspace_id: workspace_id.to_owned(),
            organization_id: template.organization_id.clone(),
            owner_id: workspace.owner.user_id().to_owned(),
            transition: decision.transition,
            reason: reason_name(decision.reason).to_owned(),
            becomes_dormant: decision.becomes_dormant,
        },
        now,
    )?;
    Ok(Some(decision))
}

/// The reason as planner.md names it.
pub fn reason_name(reason: LifecycleReason) -> &'static str {
    match reason {
        LifecycleReason::Autostart => "autostart",
        LifecycleReason::Autostop => "autostop",
        LifecycleReason::Failedstop => "failedstop",
        LifecycleReason::Dormancy => "dormancy",
        LifecycleReason::Autodelete => "autodelete",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("autostart_schedule: {0}")]
    Invalid(String),
    #[error("workspace {0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::has_store_error!(ScheduleError);

/// Sets (or clears) a workspace's autostart schedule; it must be a valid weekly cron.
pub fn set_autostart_schedule(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    schedule: Option<&str>,
) -> Result<(), ScheduleError> {
    if let Some(schedule) = schedule {
        CronSchedule::parse_weekly(schedule)
            .map_err(|error| ScheduleError::Invalid(error.to_string()))?;
    }
    if !store_lifecycle::set_schedule(tx, workspace_id, schedule)? {
        return Err(ScheduleError::NotFound(workspace_id.to_owned()));
    }
    crate::store::lifecycle::refresh_next_start(tx, workspace_id)?;
    Ok(())
}

/// Sets (or clears) a workspace's TTL: the autostop delay of its next starts. 0 = never.
pub fn set_ttl(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    ttl_s: Option<i64>,
) -> Result<(), ScheduleError> {
    if ttl_s.is_some_and(|ttl| ttl < 0) {
        return Err(ScheduleError::Invalid("ttl_s must be 0 or more seconds".to_owned()));
    }
    if !store_lifecycle::set_ttl(tx, workspace_id, ttl_s)? {
        return Err(ScheduleError::NotFound(workspace_id.to_owned()));
    }
    Ok(())
}

/// Why a deadline cannot move.
#[derive(Debug, thiserror::Error)]
pub enum ExtendError {
    #[error("the workspace is not running (its latest build is not a successful start)")]
    NotRunning,
    #[error("the workspace has no autostop deadline to extend")]
    NoDeadline,
    #[error("{requested} is not in the future")]
    InThePast { requested: DateTime<Utc> },
    #[error("{requested} is past the template's max_ttl cap ({max})")]
    PastMax { requested: DateTime<Utc>, max: DateTime<Utc> },
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::has_store_error!(ExtendError);

/// Moves a running workspace's autostop deadline to `deadline` (earlier or later), never
/// past the cap its start got from the template's `max_ttl`. Returns the previous one.
pub fn extend_deadline(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ExtendError> {
    let latest = builds::latest(tx, workspace_id)?.ok_or(ExtendError::NotRunning)?;
    if latest.transition != Transition::Start
        || latest.job_status != crate::domain::JobStatus::Succeeded
    {
        return Err(ExtendError::NotRunning);
    }
    let previous = latest.deadline.ok_or(ExtendError::NoDeadline)?;
    if deadline <= now {
        return Err(ExtendError::InThePast { requested: deadline });
    }
    if let Some(max) = store_lifecycle::max_deadline(tx, &latest.build_id)?
        && deadline > max
    {
        return Err(ExtendError::PastMax { requested: deadline, max });
    }
    store_lifecycle::move_deadline(tx, &latest.build_id, deadline, now)?;
    builds::refresh_latest(tx, workspace_id)?;
    Ok(previous)
}
