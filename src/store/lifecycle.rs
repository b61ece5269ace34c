//! The lifecycle's SQL: finding the workspaces that may be due (one indexed query whose
//! cost follows the number of due workspaces), keeping `next_start_at` current, marking a
//! workspace dormant, and recording activity.
//!
//! Decisions are not made here: candidates are re-judged by `planner::lifecycle` inside
//! the executor's write transaction.

use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::PREBUILDS_USER_ID;
use crate::planner::lifecycle::next_allowed_autostart;
use crate::planner::schedule::CronSchedule;
use crate::planner::snapshot::Weekday;
use crate::store::StoreError;
use crate::store::time::{from_millis, to_millis};

/// Ids of live, non-prebuild workspaces that may need a transition at `tick`: past their
/// deadline, owner suspended while started, autostart due, failed start past the failure
/// TTL, inactive past time-til-dormant, or dormant past `deleting_at`. A superset: the
/// executor re-checks each. (`CROSS JOIN` fixes the join order: SQLite then walks the few
/// suspended users and dormancy templates and looks their workspaces up by index, instead
/// of scanning the fleet.)
pub fn candidates(conn: &Connection, tick: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id FROM workspaces
          WHERE deleted = 0 AND latest_deadline IS NOT NULL AND latest_deadline <= ?1 AND owner_id <> ?2
         UNION
         SELECT w.id FROM users u CROSS JOIN workspaces w ON w.owner_id = u.id
          WHERE u.status = 'suspended' AND w.deleted = 0 AND w.latest_transition = 'start'
         UNION
         SELECT id FROM workspaces
          WHERE deleted = 0 AND next_start_at IS NOT NULL AND next_start_at <= ?1
         UNION
         SELECT w.id FROM workspaces w JOIN templates t ON t.id = w.template_id
          WHERE w.deleted = 0 AND w.latest_job_status = 'failed' AND t.failure_ttl_s > 0
            AND w.latest_job_completed_at < ?1 - t.failure_ttl_s * 1000
         UNION
         SELECT w.id FROM templates t CROSS JOIN workspaces w ON w.template_id = t.id
          WHERE t.time_til_dormant_s > 0 AND w.deleted = 0 AND w.dormant_at IS NULL
            AND w.last_used_at < ?1 - t.time_til_dormant_s * 1000 AND w.owner_id <> ?2
         UNION
         SELECT id FROM workspaces
          WHERE deleted = 0 AND deleting_at IS NOT NULL AND deleting_at < ?1",
    )?;
    let rows =
        statement.query_map(params![to_millis(tick), PREBUILDS_USER_ID], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
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
        if inputs.owner == PREBUILDS_USER_ID
            || !inputs.enabled
            || inputs.transition.as_deref() != Some("stop")
            || inputs.status.as_deref() == Some("failed")
        {
            return None;
        }
        let schedule = CronSchedule::parse_weekly(&inputs.schedule?).ok()?;
        let since = from_millis(inputs.since?)?;
        let days: Vec<Weekday> = Weekday::ALL
            .iter()
            .enumerate()
            .filter(|(bit, _)| inputs.days & (1 << bit) != 0)
            .map(|(_, day)| *day)
            .collect();
        next_allowed_autostart(&schedule, since, &days)
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
