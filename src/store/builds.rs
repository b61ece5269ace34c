//! Workspace builds: enqueueing a build (with its provisioner job) and reading builds.
//!
//! Owns the rule that a workspace gets no new build while one is in progress, the choice
//! of template version (a delete or stop reuses the last build's version; a start uses the
//! requested one, else the last build's, else the template's active version) and the
//! parameter resolution through `domain::parameters`.

use crate::domain::TextEnum;
use crate::store::CachedStatements;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::event::{BuildRef, Event};
use crate::domain::parameters::{self, ParameterError};
use crate::domain::{BuildReason, JobStatus, Transition};
use crate::store::time::{from_millis, to_millis};
use crate::store::{StoreError, WriteTx, parse_text, templates, workspaces};

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub workspace_id: String,
    pub transition: Transition,
    pub reason: BuildReason,
    pub initiator_id: String,
    /// `None`: see the module comment.
    pub template_version_id: Option<String>,
    /// Values to set; the rest come from the previous build or the defaults.
    pub parameters: BTreeMap<String, String>,
    pub preset_id: Option<String>,
    pub is_prebuild: bool,
    pub is_prebuild_claim: bool,
}

impl BuildRequest {
    /// A request with no parameters, version or prebuild flags.
    pub fn new(
        workspace_id: &str,
        transition: Transition,
        reason: BuildReason,
        initiator_id: &str,
    ) -> Self {
        BuildRequest {
            workspace_id: workspace_id.to_owned(),
            transition,
            reason,
            initiator_id: initiator_id.to_owned(),
            template_version_id: None,
            parameters: BTreeMap::new(),
            preset_id: None,
            is_prebuild: false,
            is_prebuild_claim: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("workspace {0} does not exist")]
    WorkspaceNotFound(String),
    #[error("workspace {0} is deleted")]
    WorkspaceDeleted(String),
    #[error("workspace {workspace_id} already has a build in progress (job {job_id} is {status})")]
    InProgress { workspace_id: String, job_id: String, status: JobStatus },
    #[error("template {0} has no active version")]
    NoVersion(String),
    #[error(transparent)]
    Parameter(#[from] ParameterError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::has_store_error!(BuildError);

impl BuildError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            BuildError::WorkspaceNotFound(_) => "not_found",
            BuildError::WorkspaceDeleted(_) => "deleted",
            BuildError::InProgress { .. } => "in_progress",
            BuildError::NoVersion(_) => "no_version",
            BuildError::Parameter(_) => "parameter",
            BuildError::Store(error) => error.metric_label(),
        }
    }
}

/// A build that was enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBuild {
    pub build: BuildRef,
    pub template_version_id: String,
    pub parameters: BTreeMap<String, String>,
}

/// The latest build of a workspace and its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestBuild {
    pub build_id: String,
    pub build_number: i64,
    pub transition: Transition,
    pub reason: BuildReason,
    pub template_version_id: String,
    pub job_id: String,
    pub job_status: JobStatus,
    pub job_error: Option<String>,
    pub job_completed_at: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub preset_id: Option<String>,
}

/// The workspace's highest-numbered build.
pub fn latest(conn: &Connection, workspace_id: &str) -> Result<Option<LatestBuild>, StoreError> {
    let row = conn
        .query_row_cached(
            "SELECT b.id, b.build_number, b.transition, b.reason, b.template_version_id, b.job_id,
                    j.status, j.error, j.completed_at, b.deadline, b.preset_id
               FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
              WHERE b.workspace_id = ?1 ORDER BY b.build_number DESC LIMIT 1",
            [workspace_id],
            |row| {
                Ok(LatestBuild {
                    build_id: row.get(0)?,
                    build_number: row.get(1)?,
                    transition: parse_text(row, 2)?,
                    reason: parse_text(row, 3)?,
                    template_version_id: row.get(4)?,
                    job_id: row.get(5)?,
                    job_status: parse_text(row, 6)?,
                    job_error: row.get(7)?,
                    job_completed_at: row.get::<_, Option<i64>>(8)?.and_then(from_millis),
                    deadline: row.get::<_, Option<i64>>(9)?.and_then(from_millis),
                    preset_id: row.get(10)?,
                })
            },
        )
        .optional()?;
    Ok(row)
}

/// The parameter values of a build.
pub fn parameters(
    conn: &Connection,
    build_id: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let mut statement = conn
        .prepare_cached("SELECT name, value FROM workspace_build_parameters WHERE build_id = ?1")?;
    let rows = statement.query_map([build_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Enqueues a build and its pending job in the caller's transaction and emits
/// `build.queued`. Fails, writing nothing, if a build is in progress.
pub fn enqueue(
    tx: &mut WriteTx<'_>,
    request: &BuildRequest,
    now: DateTime<Utc>,
) -> Result<QueuedBuild, BuildError> {
    let workspace = workspaces::get(tx, &request.workspace_id)?
        .ok_or_else(|| BuildError::WorkspaceNotFound(request.workspace_id.clone()))?;
    if workspace.deleted {
        return Err(BuildError::WorkspaceDeleted(workspace.id));
    }
    let latest = latest(tx, &workspace.id)?;
    if let Some(latest) = &latest
        && !latest.job_status.is_terminal()
    {
        return Err(BuildError::InProgress {
            workspace_id: workspace.id,
            job_id: latest.job_id.clone(),
            status: latest.job_status,
        });
    }
    let version_id = match (&request.template_version_id, &latest, request.transition) {
        (Some(version), _, _) => version.clone(),
        (None, Some(latest), _) => latest.template_version_id.clone(),
        (None, None, _) => templates::active_version(tx, &workspace.template_id)?
            .ok_or_else(|| BuildError::NoVersion(workspace.template_id.clone()))?,
    };
    let previous = match &latest {
        Some(latest) => parameters(tx, &latest.build_id)?,
        None => BTreeMap::new(),
    };
    let values = if request.transition == Transition::Delete && request.parameters.is_empty() {
        // A delete tears down what exists: it repeats the last values verbatim.
        previous
    } else {
        let specs = templates::version_parameters(tx, &version_id)?;
        parameters::resolve(&specs, &previous, &request.parameters)?
    };
    let (provisioner,): (String,) = tx
        .query_row_cached(
            "SELECT provisioner FROM template_versions WHERE id = ?1",
            [&version_id],
            |row| Ok((row.get(0)?,)),
        )
        .map_err(StoreError::from)?;

    let job_id = uuid::Uuid::new_v4().to_string();
    let build_id = uuid::Uuid::new_v4().to_string();
    let build_number = latest.as_ref().map_or(1, |latest| latest.build_number + 1);
    let now_ms = to_millis(now);
    tx.execute_cached(
        "INSERT INTO provisioner_jobs (id, priority, status, backend, created_at, updated_at)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?4)",
        params![job_id, request.reason.priority().as_i64(), provisioner, now_ms],
    )
    .map_err(StoreError::from)?;
    tx.execute_cached(
        "INSERT INTO workspace_builds (id, workspace_id, build_number, template_version_id, transition,
            reason, initiator_id, job_id, preset_id, is_prebuild, is_prebuild_claim, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
        params![
            build_id,
            workspace.id,
            build_number,
            version_id,
            request.transition.as_str(),
            request.reason.as_str(),
            request.initiator_id,
            job_id,
            request.preset_id,
            request.is_prebuild,
            request.is_prebuild_claim,
            now_ms,
        ],
    )
    .map_err(StoreError::from)?;
    {
        let mut insert = tx
            .prepare_cached("INSERT INTO workspace_build_parameters (build_id, name, value) VALUES (?1, ?2, ?3)")
            .map_err(StoreError::from)?;
        for (name, value) in &values {
            insert.execute(params![build_id, name, value]).map_err(StoreError::from)?;
        }
    }
    let build = BuildRef {
        workspace_id: workspace.id,
        build_id,
        job_id,
        build_number,
        transition: request.transition,
        reason: request.reason,
        organization_id: workspace.organization_id,
        owner_id: workspace.owner_id,
    };
    refresh_latest(tx, &build.workspace_id)?;
    tx.emit(&Event::BuildQueued { build: build.clone() }, now)?;
    tx.wake_job_runner();
    Ok(QueuedBuild { build, template_version_id: version_id, parameters: values })
}

/// Recomputes the workspace's latest-build summary (schema V2) from its builds and jobs,
/// and with it when its autostart next fires (schema V3). Called in the same transaction
/// as every change of a build or its job.
pub fn refresh_latest(conn: &Connection, workspace_id: &str) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE workspaces SET (
            latest_build_number, latest_transition, latest_job_status, latest_template_version_id,
            latest_preset_id, latest_initiator_id, latest_build_created_at, latest_job_completed_at,
            latest_deadline
         ) = (
            SELECT b.build_number, b.transition,
                   CASE j.status WHEN 'interrupted' THEN 'canceled' ELSE j.status END,
                   b.template_version_id, b.preset_id,
                   b.initiator_id, b.created_at, j.completed_at, b.deadline
              FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
             WHERE b.workspace_id = ?1
             ORDER BY b.build_number DESC LIMIT 1
         )
         WHERE id = ?1",
        [workspace_id],
    )?;
    crate::store::lifecycle::refresh_next_start(conn, workspace_id)
}

/// What start-up did with a build the previous process left interrupted.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    pub interrupted_job_id: String,
    pub queued: BuildRef,
    /// A prebuild's interrupted create is cleaned up (deleted), not retried: the
    /// reconciler builds a fresh one if the pool still wants it.
    pub cleaned_up: bool,
}

/// Re-queues every interrupted build that is still its workspace's latest: the same
/// transition on the same version with the same parameters, reason and initiator; an
/// interrupted prebuild create becomes a delete instead. Idempotent (the new build is the
/// latest one afterwards), so a crash in between only repeats the look.
pub fn resume_interrupted(
    tx: &mut WriteTx<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<Resumed>, BuildError> {
    struct Interrupted {
        job_id: String,
        build_id: String,
        workspace_id: String,
        transition: Transition,
        reason: BuildReason,
        initiator_id: String,
        version_id: String,
        preset_id: Option<String>,
        is_prebuild: bool,
        is_prebuild_claim: bool,
        owner_id: String,
    }
    let found: Vec<Interrupted> = {
        let mut statement = tx
            .prepare_cached(
                "SELECT j.id, b.id, b.workspace_id, b.transition, b.reason, b.initiator_id,
                        b.template_version_id, b.preset_id, b.is_prebuild, b.is_prebuild_claim,
                        w.owner_id
                   FROM provisioner_jobs j
                   JOIN workspace_builds b ON b.job_id = j.id
                   JOIN workspaces w ON w.id = b.workspace_id
                  WHERE j.status = 'interrupted' AND w.deleted = 0
                    AND b.build_number = w.latest_build_number
                  ORDER BY j.created_at, j.id",
            )
            .map_err(StoreError::from)?;
        let rows = statement
            .query_map([], |row| {
                Ok(Interrupted {
                    job_id: row.get(0)?,
                    build_id: row.get(1)?,
                    workspace_id: row.get(2)?,
                    transition: crate::store::parse_text(row, 3)?,
                    reason: crate::store::parse_text(row, 4)?,
                    initiator_id: row.get(5)?,
                    version_id: row.get(6)?,
                    preset_id: row.get(7)?,
                    is_prebuild: row.get(8)?,
                    is_prebuild_claim: row.get(9)?,
                    owner_id: row.get(10)?,
                })
            })
            .map_err(StoreError::from)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::from)?
    };
    let mut resumed = Vec::with_capacity(found.len());
    for build in found {
        let prebuild_create = build.transition == Transition::Start
            && build.is_prebuild
            && build.owner_id == crate::domain::PREBUILDS_USER_ID;
        let request = if prebuild_create {
            BuildRequest {
                template_version_id: Some(build.version_id),
                preset_id: build.preset_id,
                is_prebuild: true,
                ..BuildRequest::new(
                    &build.workspace_id,
                    Transition::Delete,
                    BuildReason::Prebuild,
                    crate::domain::PREBUILDS_USER_ID,
                )
            }
        } else {
            BuildRequest {
                template_version_id: Some(build.version_id),
                parameters: parameters(tx, &build.build_id)?,
                preset_id: build.preset_id,
                is_prebuild: build.is_prebuild,
                is_prebuild_claim: build.is_prebuild_claim,
                ..BuildRequest::new(
                    &build.workspace_id,
                    build.transition,
                    build.reason,
                    &build.initiator_id,
                )
            }
        };
        // One build that cannot be re-queued (its version's parameters changed, say) is
        // logged and left as it is; it must not keep the others, or the daemon, down.
        tx.execute_cached("SAVEPOINT resume_interrupted", []).map_err(StoreError::from)?;
        match enqueue(tx, &request, now) {
            Ok(queued) => {
                tx.execute_cached("RELEASE resume_interrupted", []).map_err(StoreError::from)?;
                resumed.push(Resumed {
                    interrupted_job_id: build.job_id,
                    queued: queued.build,
                    cleaned_up: prebuild_create,
                });
            }
            Err(BuildError::Store(error)) => return Err(BuildError::Store(error)),
            Err(error) => {
                tx.execute_batch("ROLLBACK TO resume_interrupted; RELEASE resume_interrupted")
                    .map_err(StoreError::from)?;
                tracing::warn!(
                    job_id = %build.job_id,
                    workspace_id = %build.workspace_id,
                    error = %error,
                    "cannot re-queue an interrupted build; left as it is"
                );
            }
        }
    }
    Ok(resumed)
}
