//! Provisioner jobs: acquiring the next job, recording its logs and timings, completing it
//! with the build's effects, cancelling it, and recovering jobs a dead process left
//! running.
//!
//! Owns the job state machine (pending → running → succeeded | failed | canceled, with
//! canceling in between) and the effects of a finished build on its workspace: a start
//! sets readiness and the autostop deadline, a stop clears readiness, a delete soft-deletes
//! the workspace (freeing its name). A failed or canceled job changes nothing but the job.

use crate::planner::deadlines::{TtlPolicy, start_deadlines};
use crate::store::CachedStatements;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::event::{BuildRef, Event};
use crate::domain::{
    JobPriority, JobStatus, LogLevel, LogLine, Replacement, Timing, Transition,
    agents_ready,
};
use crate::store::time::{from_millis, to_millis};
use crate::store::{StoreError, WriteTx, builds, parse_text};

pub use crate::domain::job::{AcquiredJob, CompletedJob, JobOutcome, PresetLabels, SuccessReport};

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

fn apply_success(
    tx: &mut WriteTx<'_>,
    job: &AcquiredJob,
    report: &SuccessReport,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now_ms = to_millis(now);
    let workspace_id = &job.build.workspace_id;
    match job.build.transition {
        Transition::Start => {
            tx.execute_cached(
                "UPDATE workspaces SET agents_ready = ?2, updated_at = ?3 WHERE id = ?1",
                params![workspace_id, agents_ready(&report.resources), now_ms],
            )?;
            for resource in &report.resources {
                let agents = serde_json::to_string(&resource.agents).map_err(StoreError::Encode)?;
                tx.execute_cached(
                    "INSERT INTO workspace_resources (job_id, name, type, agents, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![job.job_id, resource.name, resource.kind, agents, now_ms],
                )?;
            }
            if !job.is_prebuild {
                set_deadline(tx, job, now)?;
            }
        }
        Transition::Stop => {
            tx.execute_cached(
                "UPDATE workspaces SET agents_ready = NULL, updated_at = ?2 WHERE id = ?1",
                params![workspace_id, now_ms],
            )?;
        }
        Transition::Delete => {
            tx.execute_cached(
                "UPDATE workspaces SET deleted = 1, agents_ready = NULL, updated_at = ?2 WHERE id = ?1",
                params![workspace_id, now_ms],
            )?;
            tx.emit(
                &Event::WorkspaceDeleted {
                    workspace_id: workspace_id.clone(),
                    organization_id: job.build.organization_id.clone(),
                    owner_id: job.build.owner_id.clone(),
                },
                now,
            )?;
        }
    }
    Ok(())
}

/// Stores a started workspace's autostop deadlines (`planner::deadlines::start_deadlines`).
fn set_deadline(tx: &WriteTx<'_>, job: &AcquiredJob, now: DateTime<Utc>) -> Result<(), StoreError> {
    let policy = tx.query_row_cached(
        "SELECT w.ttl_s, t.default_ttl_s, t.max_ttl_s, t.autostop_enabled
           FROM workspaces w JOIN templates t ON t.id = w.template_id WHERE w.id = ?1",
        [&job.build.workspace_id],
        |row| {
            Ok(TtlPolicy {
                workspace_ttl_s: row.get(0)?,
                default_ttl_s: row.get(1)?,
                max_ttl_s: row.get(2)?,
                autostop_enabled: row.get(3)?,
            })
        },
    )?;
    let (deadline, max_deadline) = start_deadlines(&policy, now);
    tx.execute_cached(
        "UPDATE workspace_builds SET deadline = ?2, max_deadline = ?3 WHERE id = ?1",
        params![job.build.build_id, deadline.map(to_millis), max_deadline.map(to_millis)],
    )?;
    Ok(())
}

fn insert_timings(tx: &WriteTx<'_>, job_id: &str, timings: &[Timing]) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO provisioner_job_timings (job_id, stage, source, action, resource, started_at, ended_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for timing in timings {
        insert.execute(params![
            job_id,
            timing.stage,
            timing.source,
            timing.action,
            timing.resource,
            to_millis(timing.started_at),
            to_millis(timing.ended_at),
        ])?;
    }
    Ok(())
}

fn record_replacements(
    tx: &mut WriteTx<'_>,
    job: &AcquiredJob,
    replacements: &[Replacement],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now_ms = to_millis(now);
    for replacement in replacements {
        let paths = serde_json::to_string(&replacement.paths).map_err(StoreError::Encode)?;
        tx.execute_cached(
            "INSERT INTO resource_replacements (job_id, workspace_id, preset_id, resource, paths, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job.job_id, job.build.workspace_id, job.preset_id, replacement.resource, paths, now_ms],
        )?;
        tx.emit(
            &Event::ResourceReplaced {
                build: job.build.clone(),
                preset_id: job.preset_id.clone(),
                resource: replacement.resource.clone(),
                paths: replacement.paths.clone(),
            },
            now,
        )?;
    }
    let payload = serde_json::json!({
        "workspace_id": job.build.workspace_id,
        "template": job.template_name,
        "preset": job.preset_name,
        "replacements": replacements,
    });
    tx.execute_cached(
        "INSERT INTO notifications (kind, organization_id, template_id, payload, created_at)
         VALUES ('prebuild.resource_replaced', ?1, ?2, ?3, ?4)",
        params![job.build.organization_id, job.template_id, payload.to_string(), now_ms],
    )?;
    let lines: Vec<LogLine> = replacements
        .iter()
        .map(|replacement| {
            LogLine::new(
                LogLevel::Warn,
                "claim",
                format!(
                    "resource {} was replaced while claiming a prebuild (changed: {})",
                    replacement.resource,
                    replacement.paths.join(", ")
                ),
            )
        })
        .collect();
    append_logs(tx, &job.job_id, &lines, u64::MAX, now)?;
    Ok(())
}

/// What one stored log line costs against the cap beyond its text (row, time, level).
pub const LOG_LINE_OVERHEAD: usize = 32;

/// Appends log lines, keeping the job's total under `cap_bytes`: the line that would pass
/// the cap is replaced by one truncation notice and everything after it is dropped.
/// Returns how many lines were stored.
pub fn append_logs(
    conn: &Connection,
    job_id: &str,
    lines: &[LogLine],
    cap_bytes: u64,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let used: i64 = conn.query_row_cached(
        "SELECT log_bytes FROM provisioner_jobs WHERE id = ?1",
        [job_id],
        |row| row.get(0),
    )?;
    let mut used = u64::try_from(used).unwrap_or(0);
    if used >= cap_bytes {
        return Ok(0);
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO provisioner_job_logs (job_id, created_at, level, stage, output) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut stored = 0;
    for line in lines {
        // Every stored line costs its text, its stage and a row: empty lines are not free.
        let size = (line.output.len() + line.stage.len() + LOG_LINE_OVERHEAD) as u64;
        if used.saturating_add(size) > cap_bytes {
            insert.execute(params![
                job_id,
                to_millis(now),
                LogLevel::Warn.as_str(),
                line.stage,
                format!("log output truncated: the job's logs reached the {cap_bytes}-byte limit"),
            ])?;
            used = cap_bytes;
            stored += 1;
            break;
        }
        insert.execute(params![
            job_id,
            to_millis(now),
            line.level.as_str(),
            line.stage,
            line.output
        ])?;
        used += size;
        stored += 1;
    }
    conn.execute_cached(
        "UPDATE provisioner_jobs SET log_bytes = ?2 WHERE id = ?1",
        params![job_id, i64::try_from(used).unwrap_or(i64::MAX)],
    )?;
    Ok(stored)
}

/// A stored log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub level: LogLevel,
    pub stage: String,
    pub output: String,
}

/// A job's log lines in order.
pub fn logs(conn: &Connection, job_id: &str) -> Result<Vec<StoredLog>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, created_at, level, stage, output FROM provisioner_job_logs WHERE job_id = ?1 ORDER BY id",
    )?;
    let rows = statement.query_map([job_id], |row| {
        Ok(StoredLog {
            id: row.get(0)?,
            created_at: row.get::<_, i64>(1).map(|ms| from_millis(ms).unwrap_or_default())?,
            level: parse_text(row, 2)?,
            stage: row.get(3)?,
            output: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

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
