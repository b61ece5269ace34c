//! The invariants the daemon keeps across crashes, restarts and faults, checked in one
//! place (ARCHITECTURE.md lists them; the crash loop, the fault tests and the soak call
//! `check` after every step). Read-only: a list of violations, empty when all hold.
//!
//! Checked here: the file's integrity and its foreign keys; every build has its job; the
//! latest-build summary agrees with the builds; no workspace has two builds in progress;
//! no prebuild was claimed twice; no job is still `running` from before a restart; and,
//! right after a reconcile cycle, no preset has more running prebuilds than it wants plus
//! the creates that were already under way. Events committed but not yet published are
//! reported as a count (`Report::undelivered`), since "published at least once" is
//! eventual: the caller waits for it to reach zero.

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::store::StoreError;
use crate::store::time::to_millis;

/// What `check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub violations: Vec<String>,
    /// Committed outbox events not yet marked delivered.
    pub undelivered: i64,
}

/// Counts rows of `sql` (a `SELECT COUNT(*)`), naming the violation when there are any.
fn none(conn: &Connection, what: &str, sql: &str, out: &mut Vec<String>) -> Result<(), StoreError> {
    let count: i64 = conn.query_row(sql, [], |row| row.get(0))?;
    if count > 0 {
        out.push(format!("{what}: {count}"));
    }
    Ok(())
}

/// Checks every invariant. `restarted_at`: the moment the current process started (jobs
/// running since before it must have been recovered); `None` skips that check.
pub fn check(conn: &Connection, restarted_at: Option<DateTime<Utc>>) -> Result<Report, StoreError> {
    let mut violations = Vec::new();
    let integrity: Vec<String> = {
        let mut statement = conn.prepare("PRAGMA integrity_check(5)")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        rows.collect::<Result<_, _>>()?
    };
    if integrity != ["ok"] {
        violations.push(format!("integrity_check: {}", integrity.join("; ")));
    }
    none(
        conn,
        "rows with a dangling foreign key",
        "SELECT COUNT(*) FROM pragma_foreign_key_check",
        &mut violations,
    )?;
    none(
        conn,
        "builds without a job",
        "SELECT COUNT(*) FROM workspace_builds b LEFT JOIN provisioner_jobs j ON j.id = b.job_id
          WHERE j.id IS NULL",
        &mut violations,
    )?;
    none(
        conn,
        "workspaces whose latest-build summary disagrees with their builds",
        "SELECT COUNT(*) FROM workspaces w
           LEFT JOIN workspace_builds b ON b.workspace_id = w.id
            AND b.build_number = (SELECT MAX(build_number) FROM workspace_builds WHERE workspace_id = w.id)
           LEFT JOIN provisioner_jobs j ON j.id = b.job_id
          WHERE w.latest_build_number IS NOT b.build_number
             OR w.latest_transition IS NOT b.transition
             OR w.latest_job_status IS NOT (CASE j.status WHEN 'interrupted' THEN 'canceled' ELSE j.status END)
             OR w.latest_template_version_id IS NOT b.template_version_id
             OR w.latest_preset_id IS NOT b.preset_id
             OR w.latest_initiator_id IS NOT b.initiator_id
             OR w.latest_build_created_at IS NOT b.created_at
             OR w.latest_job_completed_at IS NOT j.completed_at
             OR w.latest_deadline IS NOT b.deadline",
        &mut violations,
    )?;
    none(
        conn,
        "workspaces with more than one build in progress",
        "SELECT COUNT(*) FROM (SELECT b.workspace_id FROM workspace_builds b
           JOIN provisioner_jobs j ON j.id = b.job_id
          WHERE j.status IN ('pending', 'running', 'canceling')
          GROUP BY b.workspace_id HAVING COUNT(*) > 1)",
        &mut violations,
    )?;
    none(
        conn,
        "prebuilds claimed more than once",
        // An interrupted claim build is re-queued as the same claim at start
        // (`builds::resume_interrupted`): only one that was not interrupted counts.
        "SELECT COUNT(*) FROM (SELECT b.workspace_id FROM workspace_builds b
           JOIN provisioner_jobs j ON j.id = b.job_id
          WHERE b.is_prebuild_claim = 1 AND j.status != 'interrupted'
          GROUP BY b.workspace_id HAVING COUNT(*) > 1)",
        &mut violations,
    )?;
    none(
        conn,
        "claimed workspaces still owned by the prebuilds user",
        &format!(
            "SELECT COUNT(*) FROM workspace_builds b JOIN workspaces w ON w.id = b.workspace_id
              WHERE b.is_prebuild_claim = 1 AND w.owner_id = '{}'",
            crate::domain::PREBUILDS_USER_ID
        ),
        &mut violations,
    )?;
    if let Some(restarted_at) = restarted_at {
        none(
            conn,
            "jobs still running from before the restart",
            &format!(
                "SELECT COUNT(*) FROM provisioner_jobs WHERE status IN ('running', 'canceling')
                  AND started_at < {}",
                to_millis(restarted_at)
            ),
            &mut violations,
        )?;
    }
    let undelivered: i64 =
        conn.query_row("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL", [], |row| {
            row.get(0)
        })?;
    Ok(Report { violations, undelivered })
}

/// After a reconcile cycle: presets (by id) whose running prebuilds exceed what they want
/// plus the creates already under way. `plan` is a fresh plan of the current state.
pub fn pool_violations(plan: &crate::planner::plan::ReconcilerPlan) -> Vec<String> {
    plan.presets
        .iter()
        // A preset in backoff deletes nothing until it ends (planner.md §3).
        .filter(|preset| preset.backoff_until.is_none())
        .filter(|preset| {
            let state = &preset.state;
            state.actual.saturating_sub(state.expired) > state.desired + state.starting
        })
        .map(|preset| {
            format!(
                "preset {} runs {} prebuilds (desired {}, starting {})",
                preset.preset_id, preset.state.actual, preset.state.desired, preset.state.starting
            )
        })
        .collect()
}
