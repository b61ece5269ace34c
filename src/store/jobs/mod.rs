//! Provisioner jobs: acquiring the next job, recording its logs and timings, completing it
//! with the build's effects, cancelling it, and recovering jobs a dead process left
//! running.
//!
//! Owns the job state machine (pending → running → succeeded | failed | canceled, with
//! canceling in between) and the effects of a finished build on its workspace: a start
//! sets readiness and the autostop deadline, a stop clears readiness, a delete soft-deletes
//! the workspace (freeing its name). A failed or canceled job changes nothing but the job.

use crate::store::CachedStatements;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::event::{BuildRef, Event};
use crate::domain::{JobPriority, JobStatus};
use crate::store::time::{from_millis, to_millis};
use crate::store::{StoreError, WriteTx, builds, parse_text};

mod effects;
mod logs;
mod queue;

pub use crate::domain::job::{AcquiredJob, CompletedJob, JobOutcome, PresetLabels, SuccessReport};
use effects::{apply_success, insert_timings, record_replacements};
pub use logs::{StoredLog, append_logs, logs};
pub use queue::{
    CancelResult, ORPHANED_ERROR, Orphan, fail_minimal, interrupt_orphans, pending_count,
    pending_summary, replacement_counts, request_cancel, set_process_group, status,
};

/// The most urgent pending job, oldest first within a class, marked running by
/// `worker_id`. Prebuild jobs are skipped when `allow_prebuild` is false.
pub fn acquire(
    tx: &mut WriteTx<'_>,
    worker_id: &str,
    allow_prebuild: bool,
    now: DateTime<Utc>,
) -> Result<Option<AcquiredJob>, StoreError> {
    acquire_with(tx, worker_id, allow_prebuild, false, now)
}

/// `acquire`, taking the oldest pending prebuild job first when `prefer_prebuild`: the
/// worker reserved for the pool, so a backlog of people's builds never starves it.
pub fn acquire_with(
    tx: &mut WriteTx<'_>,
    worker_id: &str,
    allow_prebuild: bool,
    prefer_prebuild: bool,
    now: DateTime<Utc>,
) -> Result<Option<AcquiredJob>, StoreError> {
    let max_priority = if allow_prebuild {
        JobPriority::Prebuild.as_i64()
    } else {
        JobPriority::Lifecycle.as_i64()
    };
    let preferred: Option<String> = if allow_prebuild && prefer_prebuild {
        tx.query_row_cached(
            "SELECT id FROM provisioner_jobs WHERE status = 'pending' AND priority = ?1
              ORDER BY priority, created_at, id LIMIT 1",
            [JobPriority::Prebuild.as_i64()],
            |row| row.get(0),
        )
        .optional()?
    } else {
        None
    };
    let job_id: Option<String> = match preferred {
        Some(id) => Some(id),
        None => tx
            .query_row_cached(
                "SELECT id FROM provisioner_jobs WHERE status = 'pending' AND priority <= ?1
                  ORDER BY priority, created_at, id LIMIT 1",
                [max_priority],
                |row| row.get(0),
            )
            .optional()?,
    };
    let Some(job_id) = job_id else { return Ok(None) };
    tx.execute_cached(
        "UPDATE provisioner_jobs SET status = 'running', worker_id = ?2, started_at = ?3, updated_at = ?3
          WHERE id = ?1 AND status = 'pending'",
        params![job_id, worker_id, to_millis(now)],
    )?;
    let job = match load(tx, &job_id) {
        Ok(job) => job,
        Err(StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(_, _, error))) => {
            // A row the schema should have prevented (a corrupt provisioner config, say):
            // this job fails loudly with the reason; the runner goes on with the others.
            let reason = format!("the job's stored data is corrupt: {error}");
            tracing::error!(job_id = %job_id, error = %reason, "job failed before it started");
            tx.execute_cached(
                "UPDATE provisioner_jobs SET status = 'failed', completed_at = ?2, updated_at = ?2,
                        error = ?3, error_code = 'corrupt' WHERE id = ?1",
                params![job_id, to_millis(now), reason],
            )?;
            let workspace_id: String = tx.query_row_cached(
                "SELECT workspace_id FROM workspace_builds WHERE job_id = ?1",
                [&job_id],
                |row| row.get(0),
            )?;
            builds::refresh_latest(tx, &workspace_id)?;
            tx.wake_job_runner();
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    builds::refresh_latest(tx, &job.build.workspace_id)?;
    tx.emit(&Event::BuildStarted { build: job.build.clone() }, now)?;
    Ok(Some(job))
}

fn load(conn: &Connection, job_id: &str) -> Result<AcquiredJob, StoreError> {
    let mut job = conn.query_row_cached(
        "SELECT j.id, j.priority, j.backend, b.workspace_id, b.id, b.build_number, b.transition,
                b.reason, w.organization_id, w.owner_id, w.name, u.username, o.name, t.id, t.name,
                v.id, v.name, v.provisioner_config, b.is_prebuild, b.is_prebuild_claim, b.preset_id,
                p.name, j.started_at
           FROM provisioner_jobs j
           JOIN workspace_builds b ON b.job_id = j.id
           JOIN workspaces w ON w.id = b.workspace_id
           JOIN users u ON u.id = w.owner_id
           JOIN organizations o ON o.id = w.organization_id
           JOIN template_versions v ON v.id = b.template_version_id
           JOIN templates t ON t.id = v.template_id
           LEFT JOIN presets p ON p.id = b.preset_id
          WHERE j.id = ?1",
        [job_id],
        |row| {
            let priority: i64 = row.get(1)?;
            let config: String = row.get(17)?;
            Ok(AcquiredJob {
                job_id: row.get(0)?,
                priority: JobPriority::from_i64(priority)
                    .ok_or(rusqlite::Error::IntegralValueOutOfRange(1, priority))?,
                backend: row.get(2)?,
                build: BuildRef {
                    workspace_id: row.get(3)?,
                    build_id: row.get(4)?,
                    job_id: row.get(0)?,
                    build_number: row.get(5)?,
                    transition: parse_text(row, 6)?,
                    reason: parse_text(row, 7)?,
                    organization_id: row.get(8)?,
                    owner_id: row.get(9)?,
                },
                workspace_name: row.get(10)?,
                owner_name: row.get(11)?,
                organization_name: row.get(12)?,
                template_id: row.get(13)?,
                template_name: row.get(14)?,
                template_version_id: row.get(15)?,
                template_version_name: row.get(16)?,
                provisioner_config: serde_json::from_str(&config).map_err(|error| {
                    rusqlite::Error::FromSqlConversionFailure(
                        17,
                        rusqlite::types::Type::Text,
                        Box::new(error),
                    )
                })?,
                parameters: BTreeMap::new(),
                previous_parameters: BTreeMap::new(),
                previous_state: None,
                is_prebuild: row.get(18)?,
                is_prebuild_claim: row.get(19)?,
                preset_id: row.get(20)?,
                preset_name: row.get(21)?,
                started_at: row
                    .get::<_, Option<i64>>(22)?
                    .and_then(from_millis)
                    .unwrap_or_default(),
            })
        },
    )?;
    job.parameters = builds::parameters(conn, &job.build.build_id)?;
    let previous: Option<(String, Option<Vec<u8>>, String)> = conn
        .query_row_cached(
            "SELECT b.id, b.provisioner_state, j.status FROM workspace_builds b
               JOIN provisioner_jobs j ON j.id = b.job_id
              WHERE b.workspace_id = ?1 AND b.build_number = ?2",
            params![job.build.workspace_id, job.build.build_number - 1],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    if let Some((previous_build, _, _)) = &previous {
        job.previous_parameters = builds::parameters(conn, previous_build)?;
    }
    let state: Option<Vec<u8>> = conn
        .query_row_cached(
            "SELECT b.provisioner_state FROM workspace_builds b
               JOIN provisioner_jobs j ON j.id = b.job_id
              WHERE b.workspace_id = ?1 AND b.build_number < ?2 AND j.status = 'succeeded'
              ORDER BY b.build_number DESC LIMIT 1",
            params![job.build.workspace_id, job.build.build_number],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    job.previous_state = state.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    Ok(job)
}

/// Finishes a running (or canceling) job with `outcome` and applies the build's effects.
/// Returns `None` when the job is not running any more (completed elsewhere).
pub fn complete(
    tx: &mut WriteTx<'_>,
    job_id: &str,
    outcome: &JobOutcome,
    now: DateTime<Utc>,
) -> Result<Option<CompletedJob>, StoreError> {
    let current: Option<(String, String, Option<i64>)> = tx
        .query_row_cached(
            "SELECT status, backend, started_at FROM provisioner_jobs WHERE id = ?1",
            [job_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((status, backend, started_at)) = current else { return Ok(None) };
    let status: JobStatus = status.parse().map_err(|error: crate::domain::UnknownVariant| {
        StoreError::Corrupt { what: format!("job {job_id}"), reason: error.to_string() }
    })?;
    if !matches!(status, JobStatus::Running | JobStatus::Canceling | JobStatus::Pending) {
        return Ok(None);
    }
    let job = load(tx, job_id)?;
    let now_ms = to_millis(now);
    let mut completed = CompletedJob {
        build: job.build.clone(),
        status: JobStatus::Succeeded,
        backend,
        started_at: started_at.and_then(from_millis),
        replacements: Vec::new(),
        preset_labels: None,
    };
    match outcome {
        JobOutcome::Succeeded(report) => {
            tx.execute_cached(
                "UPDATE provisioner_jobs SET status = 'succeeded', completed_at = ?2, updated_at = ?2, error = NULL
                  WHERE id = ?1",
                params![job_id, now_ms],
            )?;
            tx.execute_cached(
                "UPDATE workspace_builds SET provisioner_state = ?2, updated_at = ?3 WHERE id = ?1",
                params![
                    job.build.build_id,
                    report.state.as_ref().map(|state| state.as_bytes()),
                    now_ms
                ],
            )?;
            apply_success(tx, &job, report, now)?;
            insert_timings(tx, job_id, &report.timings)?;
            if job.is_prebuild_claim && !report.replacements.is_empty() {
                record_replacements(tx, &job, &report.replacements, now)?;
                completed.replacements = report.replacements.clone();
                completed.preset_labels = job.preset_name.clone().map(|preset_name| PresetLabels {
                    organization_name: job.organization_name.clone(),
                    template_name: job.template_name.clone(),
                    preset_name,
                });
            }
            tx.emit(&Event::BuildSucceeded { build: job.build.clone() }, now)?;
        }
        JobOutcome::Failed { error, code } => {
            tx.execute_cached(
                "UPDATE provisioner_jobs SET status = 'failed', completed_at = ?2, updated_at = ?2,
                        error = ?3, error_code = ?4 WHERE id = ?1",
                params![job_id, now_ms, error, code],
            )?;
            completed.status = JobStatus::Failed;
            tx.emit(&Event::BuildFailed { build: job.build.clone(), error: error.clone() }, now)?;
        }
        JobOutcome::Canceled { reason } => {
            tx.execute_cached(
                "UPDATE provisioner_jobs SET status = 'canceled', completed_at = ?2, updated_at = ?2,
                        canceled_at = COALESCE(canceled_at, ?2), error = ?3, error_code = 'canceled'
                  WHERE id = ?1",
                params![job_id, now_ms, reason],
            )?;
            completed.status = JobStatus::Canceled;
            tx.emit(&Event::BuildCanceled { build: job.build.clone() }, now)?;
        }
        JobOutcome::Interrupted { reason } => {
            tx.execute_cached(
                "UPDATE provisioner_jobs SET status = 'interrupted', completed_at = ?2, updated_at = ?2,
                        error = ?3, error_code = 'interrupted' WHERE id = ?1",
                params![job_id, now_ms, reason],
            )?;
            completed.status = JobStatus::Interrupted;
            tx.emit(
                &Event::BuildInterrupted { build: job.build.clone(), reason: reason.clone() },
                now,
            )?;
        }
    }
    builds::refresh_latest(tx, &job.build.workspace_id)?;
    Ok(Some(completed))
}
