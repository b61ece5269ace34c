//! The lifecycle's SQL: finding the workspaces that may be due (one indexed query whose
//! cost follows the number of due workspaces), keeping `next_start_at` current, marking a
//! workspace dormant, and recording activity (`report_activity`, with its source).
//!
//! Decisions are not made here: candidates are re-judged by `planner::lifecycle` inside
//! the executor's write transaction.

use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::activity::ActivitySource;
use crate::domain::{PREBUILDS_USER_ID, TextEnum};
use crate::planner::deadlines::deadline_on_activity;
use crate::planner::deadlines::{self, AutostartInputs};
use crate::store::StoreError;
use crate::store::builds;
use crate::store::time::{from_millis, to_millis};

/// Ids of live, non-prebuild workspaces that may need a transition at `tick`: past their
/// deadline, owner suspended while started, autostart due, failed start past the failure
/// TTL, inactive past time-til-dormant, or dormant past `deleting_at`. A superset: the
/// executor re-checks each. (`CROSS JOIN` fixes the join order: SQLite then walks the few
/// suspended users and dormancy templates and looks their workspaces up by index, instead
/// of scanning the fleet. `UNION ALL`, deduplicated here: a `UNION` is planned as a merge
/// that reads each branch in id order, which made one branch walk the whole table.)
const CANDIDATES: &str = "SELECT id FROM workspaces
          WHERE deleted = 0 AND latest_deadline IS NOT NULL AND latest_deadline <= ?1 AND owner_id <> ?2
         UNION ALL
         SELECT w.id FROM users u CROSS JOIN workspaces w ON w.owner_id = u.id
          WHERE u.status = 'suspended' AND w.deleted = 0 AND w.latest_transition = 'start'
         UNION ALL
         SELECT id FROM workspaces
          WHERE deleted = 0 AND next_start_at IS NOT NULL AND next_start_at <= ?1
         UNION ALL
         SELECT w.id FROM workspaces w JOIN templates t ON t.id = w.template_id
          WHERE w.deleted = 0 AND w.latest_job_status = 'failed' AND t.failure_ttl_s > 0
            AND w.latest_job_completed_at < ?1 - t.failure_ttl_s * 1000
         UNION ALL
         SELECT w.id FROM templates t CROSS JOIN workspaces w ON w.template_id = t.id
          WHERE t.time_til_dormant_s > 0 AND w.deleted = 0 AND w.dormant_at IS NULL
            AND w.last_used_at < ?1 - t.time_til_dormant_s * 1000 AND w.owner_id <> ?2
         UNION ALL
         SELECT id FROM workspaces
          WHERE deleted = 0 AND deleting_at IS NOT NULL AND deleting_at < ?1";

/// The ids `CANDIDATES` finds at `tick`, each once, in id order.
pub fn candidates(conn: &Connection, tick: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare_cached(CANDIDATES)?;
    let rows =
        statement.query_map(params![to_millis(tick), PREBUILDS_USER_ID], |row| row.get(0))?;
    let mut ids: Vec<String> = rows.collect::<Result<_, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Recomputes when the workspace's autostart next fires: only for a stopped (not failed)
/// user workspace with a valid schedule on a template that allows autostart.
pub fn refresh_next_start(conn: &Connection, workspace_id: &str) -> Result<(), StoreError> {
    /// What the next autostart depends on.
    struct Inputs {
        schedule: Option<String>,
        owner: String,
        transition: Option<String>,
        status: Option<String>,
        since: Option<i64>,
        enabled: bool,
        days: u8,
    }
    let inputs = conn
        .query_row_cached(
            "SELECT w.autostart_schedule, w.owner_id, w.latest_transition, w.latest_job_status,
                    w.latest_build_created_at, t.autostart_enabled, t.autostart_days
               FROM workspaces w JOIN templates t ON t.id = w.template_id
              WHERE w.id = ?1 AND w.deleted = 0",
            [workspace_id],
            |row| {
                Ok(Inputs {
                    schedule: row.get(0)?,
                    owner: row.get(1)?,
                    transition: row.get(2)?,
                    status: row.get(3)?,
                    since: row.get(4)?,
                    enabled: row.get(5)?,
                    days: row.get(6)?,
                })
            },
        )
        .optional()?;
    let next = inputs.and_then(|inputs| {
        deadlines::next_start_at(&AutostartInputs {
            schedule: inputs.schedule.as_deref(),
            is_prebuild: inputs.owner == PREBUILDS_USER_ID,
            template_allows_autostart: inputs.enabled,
            allowed_days: inputs.days,
            latest_transition: inputs.transition.as_deref().and_then(|text| text.parse().ok()),
            latest_status: inputs.status.as_deref().and_then(|text| text.parse().ok()),
            latest_created_at: inputs.since.and_then(from_millis),
        })
    });
    // Only when it changed: most builds leave it as it was (NULL), and an unchanged write
    // still costs a row rewrite.
    conn.execute_cached(
        "UPDATE workspaces SET next_start_at = ?2 WHERE id = ?1 AND next_start_at IS NOT ?2",
        params![workspace_id, next.map(to_millis)],
    )?;
    Ok(())
}

/// `refresh_next_start` for every live workspace with a schedule (on `template_id`, or
/// all): after a template's autostart options change, and at start.
pub fn refresh_next_start_all(
    conn: &Connection,
    template_id: Option<&str>,
) -> Result<usize, StoreError> {
    let ids: Vec<String> = {
        let mut statement = conn.prepare_cached(
            "SELECT id FROM workspaces
              WHERE deleted = 0 AND autostart_schedule IS NOT NULL AND (?1 IS NULL OR template_id = ?1)",
        )?;
        let rows = statement.query_map([template_id], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for id in &ids {
        refresh_next_start(conn, id)?;
    }
    Ok(ids.len())
}

/// Marks a workspace dormant at `now`, to be deleted `autodelete_s` later (0 = never).
pub fn mark_dormant(
    conn: &Connection,
    workspace_id: &str,
    now: DateTime<Utc>,
    autodelete_s: u64,
) -> Result<(), StoreError> {
    let deleting_at = (autodelete_s > 0).then(|| crate::domain::time::after(now, autodelete_s));
    conn.execute_cached(
        "UPDATE workspaces SET dormant_at = ?2, deleting_at = ?3, updated_at = ?2 WHERE id = ?1",
        params![workspace_id, to_millis(now), deleting_at.map(to_millis)],
    )?;
    Ok(())
}

/// What activity on a live workspace needs: `last_used_at` (ms), its TTL (or the
/// template's default, seconds).
pub fn activity_inputs(
    conn: &Connection,
    workspace_id: &str,
) -> Result<Option<(i64, i64)>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT w.last_used_at, COALESCE(w.ttl_s, t.default_ttl_s)
               FROM workspaces w JOIN templates t ON t.id = w.template_id
              WHERE w.id = ?1 AND w.deleted = 0",
            [workspace_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

/// Activity reports closer together than this are coalesced into one write.
pub const ACTIVITY_COALESCE_S: i64 = 60;

/// What an activity report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Recorded; `deadline_extended` when the autostop deadline moved.
    Recorded {
        deadline_extended: bool,
    },
    /// Within a minute of the last recorded activity: nothing written.
    Coalesced,
    NotFound,
}

/// Records activity on a workspace: `last_used_at = now` and what reported it (at most
/// one write per minute),
/// and a started workspace whose deadline is closer than its TTL gets the deadline moved
/// to now + TTL, never past the build's max deadline.
pub fn report_activity(
    conn: &Connection,
    workspace_id: &str,
    now: DateTime<Utc>,
    source: ActivitySource,
) -> Result<Activity, StoreError> {
    let Some((last_used_at, ttl)) = activity_inputs(conn, workspace_id)? else {
        return Ok(Activity::NotFound);
    };
    if to_millis(now) - last_used_at < ACTIVITY_COALESCE_S * 1000 {
        return Ok(Activity::Coalesced);
    }
    touch(conn, workspace_id, now, source)?;
    let mut deadline_extended = false;
    if let Some(latest) = builds::latest(conn, workspace_id)?
        && latest.transition == crate::domain::Transition::Start
        && latest.job_status == crate::domain::JobStatus::Succeeded
        && let Some(deadline) = latest.deadline
    {
        let max_deadline = max_deadline(conn, &latest.build_id)?;
        if let Some(bumped) = deadline_on_activity(now, deadline, ttl, max_deadline) {
            move_deadline(conn, &latest.build_id, bumped, now)?;
            builds::refresh_latest(conn, workspace_id)?;
            deadline_extended = true;
        }
    }
    Ok(Activity::Recorded { deadline_extended })
}

/// `last_used_at = now`, reported by `source`.
fn touch(
    conn: &Connection,
    workspace_id: &str,
    now: DateTime<Utc>,
    source: ActivitySource,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE workspaces SET last_used_at = ?2, last_used_source = ?3 WHERE id = ?1",
        params![workspace_id, to_millis(now), source.as_str()],
    )?;
    Ok(())
}

/// A build's max deadline (schema: `workspace_builds.max_deadline`).
pub fn max_deadline(
    conn: &Connection,
    build_id: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let max: Option<i64> = conn.query_row_cached(
        "SELECT max_deadline FROM workspace_builds WHERE id = ?1",
        [build_id],
        |row| row.get(0),
    )?;
    Ok(max.and_then(from_millis))
}

/// Moves a build's deadline (activity); the caller refreshes the latest-build summary.
pub fn move_deadline(
    conn: &Connection,
    build_id: &str,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE workspace_builds SET deadline = ?2, updated_at = ?3 WHERE id = ?1",
        params![build_id, to_millis(deadline), to_millis(now)],
    )?;
    Ok(())
}

/// Sets (or clears) a live workspace's autostart schedule; `false` when there is none.
pub fn set_schedule(
    conn: &Connection,
    workspace_id: &str,
    schedule: Option<&str>,
) -> Result<bool, StoreError> {
    let changed = conn.execute_cached(
        "UPDATE workspaces SET autostart_schedule = ?2 WHERE id = ?1 AND deleted = 0",
        params![workspace_id, schedule],
    )?;
    Ok(changed > 0)
}

/// Sets (or clears: the template's `default_ttl` applies) a live workspace's TTL, used
/// from its next start; `false` when there is none.
pub fn set_ttl(
    conn: &Connection,
    workspace_id: &str,
    ttl_s: Option<i64>,
) -> Result<bool, StoreError> {
    let changed = conn.execute_cached(
        "UPDATE workspaces SET ttl_s = ?2 WHERE id = ?1 AND deleted = 0",
        params![workspace_id, ttl_s],
    )?;
    Ok(changed > 0)
}

#[cfg(test)]
mod plan_tests {
    /// The bundled SQLite's plan of the candidate query: every branch looks its rows up
    /// by the index that makes its cost follow what is due (a `UNION` was planned as a
    /// merge that walked the whole primary key for failed starts).
    #[test]
    fn every_candidate_branch_uses_its_index() {
        let plan = crate::store::tests::query_plan(super::CANDIDATES, (0i64, "p"));
        for index in [
            "workspaces_live_deadline",
            "workspaces_live_owner_template",
            "workspaces_live_next_start",
            "workspaces_live_failed_start",
            "workspaces_live_template_last_used",
            "workspaces_live_deleting",
        ] {
            assert!(plan.iter().any(|step| step.contains(index)), "{index} unused: {plan:#?}");
        }
        for step in &plan {
            let scans_workspaces = step.starts_with("SCAN w") && !step.contains("workspaces_live_");
            assert!(!scans_workspaces, "a fleet scan: {step} in {plan:#?}");
            assert!(!step.contains("TEMP B-TREE"), "a sort: {step} in {plan:#?}");
        }
    }
}
