//! Prebuilt workspaces: creating and deleting them for the reconciler, claiming one for a
//! user, persisting a preset's hard-limit status, and resetting a preset.
//!
//! Owns the write-side re-checks: every function runs inside the caller's write
//! transaction and re-reads the rows it decides on, so a plan made from an older snapshot
//! never deletes a workspace a user claimed meanwhile, and a prebuild is never claimed
//! twice (claims are serialized by `BEGIN IMMEDIATE`).

use crate::store::CachedStatements;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde_json::json;

use crate::domain::event::Event;
use crate::domain::{BuildReason, PREBUILDS_USER_ID, Transition};
use crate::planner::schedule::CronSchedule;
use crate::store::audit::{self, Actor, Entry};
use crate::store::builds::{self, BuildError, BuildRequest, QueuedBuild};
use crate::store::time::to_millis;
use crate::store::workspaces::{self, CreateWorkspaceError, NewWorkspace};
use crate::store::{StoreError, WriteTx, templates};

/// A preset as the write side needs it.
struct PresetRow {
    template_id: String,
    organization_id: String,
    version_id: String,
    active: bool,
    ttl_s: Option<i64>,
}

fn preset_row(tx: &WriteTx<'_>, preset_id: &str) -> Result<Option<PresetRow>, StoreError> {
    Ok(tx
        .query_row_cached(
            "SELECT t.id, t.organization_id, p.template_version_id,
                    (t.active_version_id = p.template_version_id AND t.deleted = 0 AND t.deprecated = 0),
                    p.ttl_s
               FROM presets p
               JOIN template_versions v ON v.id = p.template_version_id
               JOIN templates t ON t.id = v.template_id
              WHERE p.id = ?1",
            [preset_id],
            |row| {
                Ok(PresetRow {
                    template_id: row.get(0)?,
                    organization_id: row.get(1)?,
                    version_id: row.get(2)?,
                    active: row.get(3)?,
                    ttl_s: row.get(4)?,
                })
            },
        )
        .optional()?)
}

/// Creates one prebuild of `preset_id` (owned by the prebuilds user, a `start` build on
/// the active version with the preset's parameters). `None` when the preset is no longer
/// active.
pub fn create_prebuild(
    tx: &mut WriteTx<'_>,
    preset_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<QueuedBuild>, BuildError> {
    let Some(preset) = preset_row(tx, preset_id)? else { return Ok(None) };
    if !preset.active {
        return Ok(None);
    }
    let parameters = templates::preset_parameters(tx, preset_id)?;
    let mut attempt = 0;
    let (workspace_id, name) = loop {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let new = NewWorkspace {
            organization_id: preset.organization_id.clone(),
            owner_id: PREBUILDS_USER_ID.to_owned(),
            template_id: preset.template_id.clone(),
            preset_id: Some(preset_id.to_owned()),
            name: format!("prebuild-{}", &suffix[..12]),
            autostart_schedule: None,
            ttl_s: None,
            automatic_updates_always: false,
        };
        match workspaces::insert(tx, &new, now) {
            Ok(id) => break (id, new.name),
            Err(CreateWorkspaceError::NameTaken { .. }) if attempt < 3 => attempt += 1,
            Err(CreateWorkspaceError::NameTaken { name }) => {
                return Err(BuildError::Store(StoreError::Corrupt {
                    what: "prebuild names".to_owned(),
                    reason: format!("{name} is taken"),
                }));
            }
            Err(CreateWorkspaceError::Store(error)) => return Err(error.into()),
        }
    };
    tx.emit(
        &Event::WorkspaceCreated {
            workspace_id: workspace_id.clone(),
            organization_id: preset.organization_id.clone(),
            owner_id: PREBUILDS_USER_ID.to_owned(),
            template_id: preset.template_id.clone(),
            name,
        },
        now,
    )?;
    let mut request = BuildRequest::new(
        &workspace_id,
        Transition::Start,
        BuildReason::Prebuild,
        PREBUILDS_USER_ID,
    );
    request.template_version_id = Some(preset.version_id);
    request.parameters = parameters;
    request.preset_id = Some(preset_id.to_owned());
    request.is_prebuild = true;
    builds::enqueue(tx, &request, now).map(Some)
}

/// Deletes one prebuild, unless it was claimed, deleted or is being built meanwhile.
pub fn delete_prebuild(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<QueuedBuild>, BuildError> {
    let Some(workspace) = workspaces::get(tx, workspace_id)? else { return Ok(None) };
    if workspace.deleted || workspace.owner_id != PREBUILDS_USER_ID {
        return Ok(None);
    }
    if let Some(latest) = builds::latest(tx, workspace_id)?
        && !latest.job_status.is_terminal()
    {
        return Ok(None);
    }
    let mut request = BuildRequest::new(
        workspace_id,
        Transition::Delete,
        BuildReason::Prebuild,
        PREBUILDS_USER_ID,
    );
    request.preset_id = workspace.preset_id.clone();
    request.is_prebuild = true;
    builds::enqueue(tx, &request, now).map(Some)
}

/// Carries out one housekeeping action (`planner::housekeeping`), re-checked here:
/// canceled and old failed prebuilds get a delete build; an unwanted create that still has
/// not started is canceled and its workspace removed in this transaction, with no backend
/// call (nothing was built). Returns whether anything was done.
pub fn clean_up(
    tx: &mut WriteTx<'_>,
    leftover: &crate::planner::housekeeping::Leftover,
    now: DateTime<Utc>,
) -> Result<bool, BuildError> {
    use crate::planner::housekeeping::LeftoverReason;
    match leftover.reason {
        LeftoverReason::Canceled | LeftoverReason::Failed => {
            Ok(delete_prebuild(tx, &leftover.workspace_id, now)?.is_some())
        }
        LeftoverReason::Unwanted => Ok(cancel_unstarted_create(tx, &leftover.workspace_id, now)?),
    }
}

/// Cancels a prebuild's first build if it is still pending and removes the workspace.
fn cancel_unstarted_create(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let Some(workspace) = workspaces::get(tx, workspace_id)? else { return Ok(false) };
    if workspace.deleted || workspace.owner_id != PREBUILDS_USER_ID {
        return Ok(false);
    }
    let Some(latest) = builds::latest(tx, workspace_id)? else { return Ok(false) };
    if latest.build_number != 1
        || latest.transition != Transition::Start
        || latest.job_status != crate::domain::JobStatus::Pending
    {
        return Ok(false);
    }
    let outcome = crate::store::jobs::JobOutcome::Canceled {
        reason: "the pool no longer wants this prebuild (desired count lowered)".to_owned(),
    };
    if crate::store::jobs::complete(tx, &latest.job_id, &outcome, now)?.is_none() {
        return Ok(false);
    }
    tx.execute_cached(
        "UPDATE workspaces SET deleted = 1, updated_at = ?2 WHERE id = ?1",
        params![workspace_id, to_millis(now)],
    )?;
    tx.emit(
        &Event::WorkspaceDeleted {
            workspace_id: workspace_id.to_owned(),
            organization_id: workspace.organization_id.clone(),
            owner_id: workspace.owner_id.clone(),
        },
        now,
    )?;
    Ok(true)
}

/// Persists whether a preset is hard-limited. The first time it becomes limited (since the
/// last reset) one `preset.hard_limited` notification is queued for template admins; the
/// return value says whether that happened.
pub fn sync_hard_limit(
    tx: &mut WriteTx<'_>,
    preset_id: &str,
    hard_limited: bool,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let current: Option<(String, Option<i64>)> = tx
        .query_row_cached(
            "SELECT prebuild_status, hard_limit_notified_at FROM presets WHERE id = ?1",
            [preset_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((status, notified_at)) = current else { return Ok(false) };
    let wanted = if hard_limited { "hard_limited" } else { "healthy" };
    if status != wanted {
        tx.execute_cached(
            "UPDATE presets SET prebuild_status = ?2 WHERE id = ?1",
            params![preset_id, wanted],
        )?;
    }
    if !hard_limited || notified_at.is_some() {
        return Ok(false);
    }
    let Some(preset) = preset_row(tx, preset_id)? else { return Ok(false) };
    tx.execute_cached(
        "UPDATE presets SET hard_limit_notified_at = ?2 WHERE id = ?1",
        params![preset_id, to_millis(now)],
    )?;
    tx.execute_cached(
        "INSERT INTO notifications (kind, organization_id, template_id, payload, created_at)
         VALUES ('preset.hard_limited', ?1, ?2, ?3, ?4)",
        params![
            preset.organization_id,
            preset.template_id,
            json!({ "preset_id": preset_id }).to_string(),
            to_millis(now)
        ],
    )?;
    tx.emit(
        &Event::PresetHardLimited {
            preset_id: preset_id.to_owned(),
            organization_id: preset.organization_id,
            template_id: preset.template_id,
        },
        now,
    )?;
    Ok(true)
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("no preset with id {0:?}")]
    UnknownPreset(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::has_store_error!(ResetError, Build);

/// What `reset_preset` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    pub deletes_queued: usize,
    pub previous_status: String,
}

/// Deletes the preset's failed prebuilds (taking them out of the hard-limit window) and
/// clears its stored status, in one transaction.
pub fn reset_preset(
    tx: &mut WriteTx<'_>,
    preset_id: &str,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<ResetReport, ResetError> {
    let previous_status: String = tx
        .query_row_cached("SELECT prebuild_status FROM presets WHERE id = ?1", [preset_id], |row| {
            row.get(0)
        })
        .optional()
        .map_err(StoreError::from)?
        .ok_or_else(|| ResetError::UnknownPreset(preset_id.to_owned()))?;
    let failed: Vec<String> = {
        let mut statement = tx
            .prepare(
                "SELECT w.id FROM workspaces w
                   JOIN workspace_builds b ON b.workspace_id = w.id
                    AND b.build_number = (SELECT MAX(build_number) FROM workspace_builds WHERE workspace_id = w.id)
                   JOIN provisioner_jobs j ON j.id = b.job_id
                  WHERE w.deleted = 0 AND w.owner_id = ?1 AND b.preset_id = ?2 AND j.status = 'failed'
                  ORDER BY w.created_at, w.id",
            )
            .map_err(StoreError::from)?;
        let rows = statement
            .query_map(params![PREBUILDS_USER_ID, preset_id], |row| row.get(0))
            .map_err(StoreError::from)?;
        rows.collect::<Result<_, _>>().map_err(StoreError::from)?
    };
    let mut deletes_queued = 0;
    for workspace_id in &failed {
        if delete_prebuild(tx, workspace_id, now)?.is_some() {
            deletes_queued += 1;
        }
    }
    tx.execute_cached(
        "UPDATE presets SET prebuild_status = 'healthy', hard_limit_notified_at = NULL WHERE id = ?1",
        [preset_id],
    )
    .map_err(StoreError::from)?;
    audit::record(
        tx,
        actor,
        &Entry {
            action: "preset.reset",
            resource_type: "preset",
            resource_id: preset_id,
            organization_id: None,
            details: json!({ "deletes_queued": deletes_queued, "previous_status": previous_status }),
        },
        now,
    )?;
    Ok(ResetReport { deletes_queued, previous_status })
}

/// A user's request for a workspace from a preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub user_id: String,
    pub template_id: String,
    /// The preset; `None`: the active version's preset whose parameters all match
    /// `parameters`, the one with the most parameters.
    pub preset_id: Option<String>,
    pub name: String,
    pub parameters: BTreeMap<String, String>,
    pub autostart_schedule: Option<String>,
    pub ttl_s: Option<i64>,
}

/// How a claim was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// A ready prebuild now belongs to the user; its `start` build is queued.
    Claimed { workspace_id: String, build: QueuedBuild },
    /// No ready prebuild: a normal workspace and build were created.
    Built { workspace_id: String, build: QueuedBuild },
}

impl ClaimOutcome {
    pub fn workspace_id(&self) -> &str {
        match self {
            ClaimOutcome::Claimed { workspace_id, .. }
            | ClaimOutcome::Built { workspace_id, .. } => workspace_id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("template {0:?} does not exist, is deleted or has no active version")]
    UnknownTemplate(String),
    #[error("preset {0:?} is not a preset of the template's active version")]
    UnknownPreset(String),
    #[error("autostart_schedule: {0}")]
    Schedule(String),
    #[error(transparent)]
    NameTaken(#[from] CreateWorkspaceError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::has_store_error!(ClaimError, Build, NameTaken);

/// Claims a ready, unexpired prebuild of the preset on the active version for the user
/// (ownership, name, activity, dormancy, schedule), or builds a new workspace.
pub fn claim(
    tx: &mut WriteTx<'_>,
    request: &ClaimRequest,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome, ClaimError> {
    if let Some(schedule) = &request.autostart_schedule {
        CronSchedule::parse_weekly(schedule)
            .map_err(|error| ClaimError::Schedule(error.to_string()))?;
    }
    let (organization_id, version_id): (String, String) = tx
        .query_row_cached(
            "SELECT organization_id, active_version_id FROM templates
              WHERE id = ?1 AND deleted = 0 AND active_version_id IS NOT NULL",
            [&request.template_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(StoreError::from)?
        .ok_or_else(|| ClaimError::UnknownTemplate(request.template_id.clone()))?;
    let preset_id = match &request.preset_id {
        Some(id) => {
            let on_version: bool = tx
                .query_row_cached(
                    "SELECT EXISTS (SELECT 1 FROM presets WHERE id = ?1 AND template_version_id = ?2)",
                    params![id, version_id],
                    |row| row.get(0),
                )
                .map_err(StoreError::from)?;
            if !on_version {
                return Err(ClaimError::UnknownPreset(id.clone()));
            }
            Some(id.clone())
        }
        None => matching_preset(tx, &version_id, &request.parameters)?,
    };
    let mut parameters = match &preset_id {
        Some(id) => templates::preset_parameters(tx, id)?,
        None => BTreeMap::new(),
    };
    parameters.extend(request.parameters.clone());

    if let Some(preset_id) = &preset_id
        && let Some(workspace_id) = ready_prebuild(tx, preset_id, &version_id, now)?
    {
        let changed = tx
            .execute_cached(
                "UPDATE workspaces SET owner_id = ?2, name = ?3, last_used_at = ?4, updated_at = ?4,
                        dormant_at = NULL, deleting_at = NULL, autostart_schedule = ?5, ttl_s = ?6
                  WHERE id = ?1 AND owner_id = ?7 AND deleted = 0",
                params![
                    workspace_id,
                    request.user_id,
                    request.name,
                    to_millis(now),
                    request.autostart_schedule,
                    request.ttl_s,
                    PREBUILDS_USER_ID,
                ],
            )
            .map_err(|error| match error {
                rusqlite::Error::SqliteFailure(failure, Some(message))
                    if failure.code == rusqlite::ErrorCode::ConstraintViolation && message.contains("workspaces.name") =>
                {
                    ClaimError::NameTaken(CreateWorkspaceError::NameTaken { name: request.name.clone() })
                }
                other => ClaimError::Store(other.into()),
            })?;
        if changed == 1 {
            let mut build_request = BuildRequest::new(
                &workspace_id,
                Transition::Start,
                BuildReason::Claim,
                &request.user_id,
            );
            build_request.template_version_id = Some(version_id);
            build_request.parameters = parameters;
            build_request.preset_id = Some(preset_id.clone());
            build_request.is_prebuild_claim = true;
            let build = builds::enqueue(tx, &build_request, now)?;
            tx.emit(
                &Event::WorkspaceClaimed {
                    workspace_id: workspace_id.clone(),
                    organization_id,
                    owner_id: request.user_id.clone(),
                    preset_id: preset_id.clone(),
                },
                now,
            )?;
            return Ok(ClaimOutcome::Claimed { workspace_id, build });
        }
    }

    let new = NewWorkspace {
        organization_id: organization_id.clone(),
        owner_id: request.user_id.clone(),
        template_id: request.template_id.clone(),
        preset_id: preset_id.clone(),
        name: request.name.clone(),
        autostart_schedule: request.autostart_schedule.clone(),
        ttl_s: request.ttl_s,
        automatic_updates_always: false,
    };
    let workspace_id = workspaces::insert(tx, &new, now)?;
    tx.emit(
        &Event::WorkspaceCreated {
            workspace_id: workspace_id.clone(),
            organization_id,
            owner_id: request.user_id.clone(),
            template_id: request.template_id.clone(),
            name: request.name.clone(),
        },
        now,
    )?;
    let mut build_request = BuildRequest::new(
        &workspace_id,
        Transition::Start,
        BuildReason::Initiator,
        &request.user_id,
    );
    build_request.template_version_id = Some(version_id);
    build_request.parameters = parameters;
    build_request.preset_id = preset_id;
    let build = builds::enqueue(tx, &build_request, now)?;
    Ok(ClaimOutcome::Built { workspace_id, build })
}

/// The preset of `version_id` whose parameters all equal the requested ones, preferring
/// the one with the most parameters (ties: the first declared).
fn matching_preset(
    tx: &WriteTx<'_>,
    version_id: &str,
    requested: &BTreeMap<String, String>,
) -> Result<Option<String>, StoreError> {
    let ids: Vec<String> = {
        let mut statement = tx.prepare_cached(
            "SELECT id FROM presets WHERE template_version_id = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = statement.query_map([version_id], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut best: Option<(usize, String)> = None;
    for id in ids {
        let parameters = templates::preset_parameters(tx, &id)?;
        let matches = parameters.iter().all(|(name, value)| requested.get(name) == Some(value));
        if matches && best.as_ref().is_none_or(|(count, _)| parameters.len() > *count) {
            best = Some((parameters.len(), id));
        }
    }
    Ok(best.map(|(_, id)| id))
}

/// The oldest ready, unexpired, running prebuild of the preset on `version_id`. Reads the
/// latest-build summary (schema V2) through the `workspaces_claimable` partial index
/// (schema V4), so a claim costs the same with 10 or 10,000 prebuilds in the pool.
fn ready_prebuild(
    tx: &WriteTx<'_>,
    preset_id: &str,
    version_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    let ttl_s = preset_row(tx, preset_id)?.and_then(|preset| preset.ttl_s).filter(|ttl| *ttl > 0);
    let oldest_allowed = ttl_s
        .map_or(i64::MIN, |ttl| to_millis(now).saturating_sub(crate::domain::time::millis(ttl)));
    let mut statement = tx.prepare_cached(CLAIMABLE)?;
    Ok(statement
        .query_row(params![PREBUILDS_USER_ID, preset_id, version_id, oldest_allowed], |row| {
            row.get(0)
        })
        .optional()?)
}

/// The claim query (`?1` = the prebuilds user); its literal terms match the partial index.
const CLAIMABLE: &str = "SELECT id FROM workspaces INDEXED BY workspaces_claimable
  WHERE owner_id = ?1 AND preset_id = ?2 AND deleted = 0 AND agents_ready = 1
    AND latest_transition = 'start' AND latest_job_status = 'succeeded'
    AND latest_template_version_id = ?3 AND created_at >= ?4
  ORDER BY created_at, id LIMIT 1";

/// Lifetime prebuild figures per preset name, from the database (so they survive
/// restarts): (organization, template, preset) → (created, failed, claimed). A claim is
/// one workspace: a claim build re-queued after an interruption does not count twice.
pub fn lifetime_counts(
    conn: &rusqlite::Connection,
) -> Result<Vec<crate::metrics::PresetTotals>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT o.name, t.name, p.name,
                SUM(b.is_prebuild AND b.transition = 'start' AND b.build_number = 1),
                SUM(b.is_prebuild AND b.transition = 'start' AND j.status = 'failed'),
                COUNT(DISTINCT CASE WHEN b.is_prebuild_claim THEN b.workspace_id END)
           FROM workspace_builds b
           JOIN provisioner_jobs j ON j.id = b.job_id
           JOIN presets p ON p.id = b.preset_id
           JOIN template_versions v ON v.id = p.template_version_id
           JOIN templates t ON t.id = v.template_id
           JOIN organizations o ON o.id = t.organization_id
          WHERE b.preset_id IS NOT NULL
          GROUP BY o.name, t.name, p.name",
    )?;
    let rows = statement.query_map([], |row| {
        let count = |index| row.get::<_, i64>(index).map(|value| u64::try_from(value).unwrap_or(0));
        Ok(((row.get(0)?, row.get(1)?, row.get(2)?), [count(3)?, count(4)?, count(5)?]))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `claim`, recorded in the audit log in the same transaction.
pub fn claim_audited(
    tx: &mut WriteTx<'_>,
    request: &ClaimRequest,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome, ClaimError> {
    let outcome = claim(tx, request, now)?;
    let (claimed, organization_id) = match &outcome {
        ClaimOutcome::Claimed { build, .. } => (true, build.build.organization_id.as_str()),
        ClaimOutcome::Built { build, .. } => (false, build.build.organization_id.as_str()),
    };
    audit::record(
        tx,
        actor,
        &Entry {
            action: "workspace.create",
            resource_type: "workspace",
            resource_id: outcome.workspace_id(),
            organization_id: Some(organization_id),
            details: json!({
                "name": request.name,
                "claimed_prebuild": claimed,
                "preset_id": request.preset_id,
            }),
        },
        now,
    )?;
    Ok(outcome)
}

/// Claims (or builds) a workspace in one write transaction (grouped with concurrent
/// claims, each in its own savepoint), records it in the audit log and observes the claim
/// latency. The result is known only after the commit.
pub async fn claim_workspace(
    store: &crate::store::Store,
    clock: &std::sync::Arc<dyn crate::clock::Clock>,
    metrics: &crate::metrics::PrebuildMetrics,
    request: ClaimRequest,
    actor: Actor,
) -> Result<ClaimOutcome, ClaimError> {
    let started = tokio::time::Instant::now();
    let now = clock.now();
    let outcome = store.write_grouped(move |tx| claim_audited(tx, &request, &actor, now)).await;
    if let Ok(ClaimOutcome::Claimed { .. }) = &outcome {
        metrics.claim_duration.observe(started.elapsed().as_secs_f64());
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claim_query_uses_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            crate::store::Store::open(crate::store::StoreOptions::at(dir.path().join("db")))
                .unwrap();
        let plan: Vec<String> = store
            .read_blocking(|conn| {
                let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {CLAIMABLE}"))?;
                let rows = statement.query_map(params!["u", "p", "v", 0], |row| row.get(3))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("workspaces_claimable")), "{plan:?}");
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "no sort: {plan:?}");
    }
}
