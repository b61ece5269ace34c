//! A finished build's effects on its workspace: readiness, apps and health, the autostop
//! deadline, the job's timings and a claim's resource replacements.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::append_logs;
use crate::domain::event::Event;
use crate::domain::job::{AcquiredJob, SuccessReport};
use crate::domain::{LogLevel, LogLine, Replacement, Timing, Transition, agents_ready};
use crate::planner::deadlines::{TtlPolicy, start_deadlines};
use crate::store::time::to_millis;
use crate::store::{CachedStatements, StoreError, WriteTx};

pub(super) fn apply_success(
    tx: &mut WriteTx<'_>,
    job: &AcquiredJob,
    report: &SuccessReport,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now_ms = to_millis(now);
    let workspace_id = &job.build.workspace_id;
    match job.build.transition {
        Transition::Start => {
            let apps = match report.apps.as_slice() {
                [] => None,
                apps => Some(serde_json::to_string(apps).map_err(StoreError::Encode)?),
            };
            let health = report.probed.then_some("healthy");
            let since = report.probed.then_some(now_ms);
            tx.execute_cached(
                "UPDATE workspaces SET agents_ready = ?2, updated_at = ?3, apps = ?4, health = ?5,
                    health_error = NULL, health_since = ?6
                  WHERE id = ?1",
                params![workspace_id, agents_ready(&report.resources), now_ms, apps, health, since],
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
                "UPDATE workspaces SET agents_ready = NULL, updated_at = ?2, apps = NULL,
                    health = NULL, health_error = NULL, health_since = NULL
                  WHERE id = ?1",
                params![workspace_id, now_ms],
            )?;
        }
        Transition::Delete => {
            tx.execute_cached(
                "UPDATE workspaces SET deleted = 1, agents_ready = NULL, updated_at = ?2, apps = NULL,
                    health = NULL, health_error = NULL, health_since = NULL
                  WHERE id = ?1",
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

pub(super) fn insert_timings(
    tx: &WriteTx<'_>,
    job_id: &str,
    timings: &[Timing],
) -> Result<(), StoreError> {
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

pub(super) fn record_replacements(
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
