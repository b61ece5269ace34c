//! Pruning history (`[retention]`): the SQL that deletes old rows in bounded batches.
//!
//! Owns what may be deleted and what must stay: delivered outbox events no webhook still
//! needs (never the newest, so ids keep counting), finished deliveries and
//! notifications, the audit log, finished jobs' logs and timings, and every row of a
//! workspace deleted long ago. Each function deletes at most `batch` rows of one kind and
//! returns how many it deleted; the caller runs each in its own short write transaction
//! and repeats while a batch comes back full, so no transaction holds the writer long.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::store::time::to_millis;
use crate::store::{CachedStatements, StoreError};

/// Delivered events created before `before`, that no webhook has yet to read (its cursor
/// is behind them) or still references (a pending or kept delivery).
pub fn outbox(
    conn: &Connection,
    before: DateTime<Utc>,
    webhooks: &[String],
    batch: u32,
) -> Result<usize, StoreError> {
    // The lowest cursor of the configured webhooks bounds what may go.
    let mut bound: i64 =
        conn.query_row_cached("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |row| row.get(0))?;
    for webhook in webhooks {
        let cursor: Option<i64> = rusqlite::OptionalExtension::optional(conn.query_row_cached(
            "SELECT last_event_id FROM webhook_cursors WHERE webhook = ?1",
            [webhook],
            |row| row.get(0),
        ))?;
        // A webhook without a cursor yet starts at the end: it needs nothing older.
        if let Some(cursor) = cursor {
            bound = bound.min(cursor + 1);
        }
    }
    Ok(conn.execute_cached(
        "DELETE FROM outbox WHERE id IN (
            SELECT o.id FROM outbox o
             WHERE o.id < ?1 AND o.delivered_at IS NOT NULL AND o.created_at < ?2
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = o.id)
             ORDER BY o.id LIMIT ?3)",
        params![bound, to_millis(before), batch],
    )?)
}

/// The oldest event still in the outbox (`None`: it is empty).
pub fn oldest_event(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row_cached("SELECT MIN(id) FROM outbox", [], |row| row.get(0))?)
}

/// Delivered or dead webhook deliveries last touched before `before`, and every pending
/// delivery and cursor of a webhook that is no longer configured.
pub fn deliveries(
    conn: &Connection,
    before: DateTime<Utc>,
    webhooks: &[String],
    batch: u32,
) -> Result<usize, StoreError> {
    let finished = conn.execute_cached(
        "DELETE FROM webhook_deliveries WHERE id IN (
            SELECT id FROM webhook_deliveries
             WHERE status <> 'pending' AND updated_at < ?1 ORDER BY updated_at LIMIT ?2)",
        params![to_millis(before), batch],
    )?;
    let configured = serde_json::to_string(webhooks).map_err(StoreError::Encode)?;
    let removed = conn.execute_cached(
        "DELETE FROM webhook_deliveries WHERE id IN (
            SELECT id FROM webhook_deliveries
             WHERE webhook NOT IN (SELECT value FROM json_each(?1)) LIMIT ?2)",
        params![configured, batch],
    )?;
    conn.execute_cached(
        "DELETE FROM webhook_cursors WHERE webhook NOT IN (SELECT value FROM json_each(?1))",
        [configured],
    )?;
    Ok(finished + removed)
}

/// Sent or failed notifications created before `before`.
pub fn notifications(
    conn: &Connection,
    before: DateTime<Utc>,
    batch: u32,
) -> Result<usize, StoreError> {
    Ok(conn.execute_cached(
        "DELETE FROM notifications WHERE id IN (
            SELECT id FROM notifications
             WHERE status <> 'pending' AND created_at < ?1 ORDER BY created_at LIMIT ?2)",
        params![to_millis(before), batch],
    )?)
}

/// Audit entries older than `before`.
pub fn audit_log(
    conn: &Connection,
    before: DateTime<Utc>,
    batch: u32,
) -> Result<usize, StoreError> {
    Ok(conn.execute_cached(
        "DELETE FROM audit_log WHERE id IN (
            SELECT id FROM audit_log WHERE time < ?1 ORDER BY time LIMIT ?2)",
        params![to_millis(before), batch],
    )?)
}

/// Log lines and timings of jobs that finished before `before`. The job rows stay (builds
/// reference them); their `log_bytes` goes to 0. At most `batch` jobs per call.
pub fn job_logs(conn: &Connection, before: DateTime<Utc>, batch: u32) -> Result<usize, StoreError> {
    let jobs: Vec<String> = {
        let mut statement = conn.prepare_cached(
            "SELECT id FROM provisioner_jobs
              WHERE log_bytes > 0 AND completed_at IS NOT NULL AND completed_at < ?1
              ORDER BY completed_at LIMIT ?2",
        )?;
        let rows = statement.query_map(params![to_millis(before), batch], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for job in &jobs {
        conn.execute_cached("DELETE FROM provisioner_job_logs WHERE job_id = ?1", [job])?;
        conn.execute_cached("DELETE FROM provisioner_job_timings WHERE job_id = ?1", [job])?;
        conn.execute_cached("UPDATE provisioner_jobs SET log_bytes = 0 WHERE id = ?1", [job])?;
    }
    Ok(jobs.len())
}

/// Every row of workspaces deleted before `before`: parameters, logs, timings,
/// resources, replacements, builds, jobs, then the workspace. At most `batch`
/// workspaces per call.
pub fn deleted_workspaces(
    conn: &Connection,
    before: DateTime<Utc>,
    batch: u32,
) -> Result<usize, StoreError> {
    let workspaces: Vec<String> = {
        let mut statement = conn.prepare_cached(
            "SELECT id FROM workspaces WHERE deleted = 1 AND updated_at < ?1
              ORDER BY updated_at LIMIT ?2",
        )?;
        let rows = statement.query_map(params![to_millis(before), batch], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for workspace in &workspaces {
        let jobs = "SELECT job_id FROM workspace_builds WHERE workspace_id = ?1";
        for sql in [
            "DELETE FROM workspace_build_parameters
              WHERE build_id IN (SELECT id FROM workspace_builds WHERE workspace_id = ?1)",
            &format!("DELETE FROM provisioner_job_logs WHERE job_id IN ({jobs})"),
            &format!("DELETE FROM provisioner_job_timings WHERE job_id IN ({jobs})"),
            &format!("DELETE FROM workspace_resources WHERE job_id IN ({jobs})"),
            "DELETE FROM resource_replacements WHERE workspace_id = ?1",
        ] {
            conn.execute_cached(sql, [workspace])?;
        }
        let job_ids: Vec<String> = {
            let mut statement = conn.prepare_cached(jobs)?;
            let rows = statement.query_map([workspace], |row| row.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        conn.execute_cached("DELETE FROM workspace_builds WHERE workspace_id = ?1", [workspace])?;
        for job in &job_ids {
            conn.execute_cached("DELETE FROM provisioner_jobs WHERE id = ?1", [job])?;
        }
        conn.execute_cached("DELETE FROM workspaces WHERE id = ?1", [workspace])?;
    }
    Ok(workspaces.len())
}
