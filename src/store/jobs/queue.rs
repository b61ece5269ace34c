//! The job queue's other operations: status, pending counts, orphan recovery, process
//! groups, the minimal failure path, cancellation and replacement counts.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::complete;
use crate::domain::JobStatus;
use crate::domain::job::{CompletedJob, JobOutcome, PresetLabels};
use crate::store::time::to_millis;
use crate::store::{CachedStatements, StoreError, WriteTx, builds, parse_text};

/// A job's status and error.
pub fn status(
    conn: &Connection,
    job_id: &str,
) -> Result<Option<(JobStatus, Option<String>)>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT status, error FROM provisioner_jobs WHERE id = ?1",
            [job_id],
            |row| Ok((parse_text(row, 0)?, row.get(1)?)),
        )
        .optional()?)
}

/// Jobs waiting for a worker.
pub fn pending_count(conn: &Connection) -> Result<u64, StoreError> {
    Ok(pending_summary(conn)?.0)
}

/// Jobs waiting for a worker, and when the oldest of them was queued (ms; `None` = none).
pub fn pending_summary(conn: &Connection) -> Result<(u64, Option<i64>), StoreError> {
    let (count, oldest): (i64, Option<i64>) = conn.query_row_cached(
        "SELECT COUNT(*), MIN(created_at) FROM provisioner_jobs WHERE status = 'pending'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok((u64::try_from(count).unwrap_or(0), oldest))
}

/// The message an orphaned job is interrupted with.
pub const ORPHANED_ERROR: &str = "the daemon stopped during the job (crash, kill or restart)";

/// A running job found without a live worker, with the process group its exec
/// provisioner ran in (to kill what may still run).
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub job: CompletedJob,
    pub process_group: Option<(i32, u64)>,
}

/// Marks `interrupted` every running or canceling job whose worker is not in `live`
/// (`None`: every one, as at start, when this process runs none yet). Returns them.
pub fn interrupt_orphans(
    tx: &mut WriteTx<'_>,
    live: Option<&std::collections::HashSet<String>>,
    now: DateTime<Utc>,
) -> Result<Vec<Orphan>, StoreError> {
    let found: Vec<(String, Option<(i32, u64)>)> = {
        let mut statement = tx.prepare_cached(
            "SELECT id, worker_id, process_group, process_started FROM provisioner_jobs
              WHERE status IN ('running', 'canceling')",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<i32>>(2)?,
                row.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (id, worker, group, started) = row?;
            let held = match (live, worker) {
                (Some(live), Some(worker)) => live.contains(&worker),
                _ => false,
            };
            if !held {
                let group = group.zip(started.and_then(|s| u64::try_from(s).ok()));
                found.push((id, group));
            }
        }
        found
    };
    let outcome = JobOutcome::Interrupted { reason: ORPHANED_ERROR.to_owned() };
    let mut interrupted = Vec::new();
    for (id, process_group) in found {
        if let Some(job) = complete(tx, &id, &outcome, now)? {
            interrupted.push(Orphan { job, process_group });
        }
    }
    Ok(interrupted)
}

/// Records the process group an exec provisioner runs the job in, and the group leader's
/// start time (so a later recovery can tell it from a process that reused the id).
pub fn set_process_group(
    conn: &Connection,
    job_id: &str,
    process_group: Option<(i32, u64)>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE provisioner_jobs SET process_group = ?2, process_started = ?3 WHERE id = ?1",
        params![
            job_id,
            process_group.map(|(group, _)| group),
            process_group.map(|(_, started)| i64::try_from(started).unwrap_or(i64::MAX))
        ],
    )?;
    Ok(())
}

/// Fails a running job in the smallest transaction there is: the runner's completion
/// write failed (and its retries), so nothing of the outcome is applied; the job must not
/// stay `running` and block its workspace. Returns whether the job was still running.
pub fn fail_minimal(
    conn: &Connection,
    job_id: &str,
    error: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let changed = conn.execute_cached(
        "UPDATE provisioner_jobs SET status = 'failed', completed_at = ?2, updated_at = ?2,
                error = ?3, error_code = 'completion_failed'
          WHERE id = ?1 AND status IN ('running', 'canceling', 'pending')",
        params![job_id, to_millis(now), error],
    )?;
    if changed > 0 {
        let workspace_id: String = conn.query_row_cached(
            "SELECT workspace_id FROM workspace_builds WHERE job_id = ?1",
            [job_id],
            |row| row.get(0),
        )?;
        builds::refresh_latest(conn, &workspace_id)?;
    }
    Ok(changed > 0)
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelResult {
    /// The job was pending and is now canceled.
    Canceled(Box<CompletedJob>),
    /// The job is running; it is marked canceling and the runner stops its backend.
    Canceling,
    /// The job had already finished.
    AlreadyFinished(JobStatus),
    NotFound,
}

/// Requests cancellation of a job.
pub fn request_cancel(
    tx: &mut WriteTx<'_>,
    job_id: &str,
    now: DateTime<Utc>,
) -> Result<CancelResult, StoreError> {
    let Some((status, _)) = status(tx, job_id)? else { return Ok(CancelResult::NotFound) };
    match status {
        JobStatus::Pending => {
            let outcome = JobOutcome::Canceled { reason: "canceled before it started".to_owned() };
            Ok(match complete(tx, job_id, &outcome, now)? {
                Some(job) => CancelResult::Canceled(Box::new(job)),
                None => CancelResult::AlreadyFinished(status),
            })
        }
        JobStatus::Running | JobStatus::Canceling => {
            tx.execute_cached(
                "UPDATE provisioner_jobs SET status = 'canceling', canceled_at = COALESCE(canceled_at, ?2),
                        updated_at = ?2 WHERE id = ?1",
                params![job_id, to_millis(now)],
            )?;
            let workspace_id: String = tx.query_row_cached(
                "SELECT workspace_id FROM workspace_builds WHERE job_id = ?1",
                [job_id],
                |row| row.get(0),
            )?;
            builds::refresh_latest(tx, &workspace_id)?;
            Ok(CancelResult::Canceling)
        }
        finished => Ok(CancelResult::AlreadyFinished(finished)),
    }
}

/// Resource replacements recorded so far, per preset (to seed the counter at start, so it
/// survives restarts).
pub fn replacement_counts(conn: &Connection) -> Result<Vec<(PresetLabels, u64)>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT o.name, t.name, p.name, COUNT(*)
           FROM resource_replacements r
           JOIN presets p ON p.id = r.preset_id
           JOIN template_versions v ON v.id = p.template_version_id
           JOIN templates t ON t.id = v.template_id
           JOIN organizations o ON o.id = t.organization_id
          GROUP BY o.name, t.name, p.name",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            PresetLabels {
                organization_name: row.get(0)?,
                template_name: row.get(1)?,
                preset_name: row.get(2)?,
            },
            u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
