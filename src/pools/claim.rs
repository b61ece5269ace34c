//! Claims: a user's request for a workspace from a preset is served by the oldest ready,
//! unexpired prebuild on the active version (handed over in the same write transaction),
//! or by a new workspace and build. Claims are serialized by the one writer, so a prebuild
//! is never claimed twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::event::Event;
use crate::domain::{BuildReason, Transition};
use crate::planner::schedule::CronSchedule;
use crate::store::audit::{self, Actor, Entry};
use crate::store::builds::{self, BuildError, BuildRequest, QueuedBuild};
use crate::store::presets::{self, Transfer};
use crate::store::time::to_millis;
use crate::store::workspaces::{self, CreateWorkspaceError, NewWorkspace};
use crate::store::{StoreError, WriteTx, templates};

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
    let (organization_id, version_id) = presets::active_template(tx, &request.template_id)?
        .ok_or_else(|| ClaimError::UnknownTemplate(request.template_id.clone()))?;
    let preset_id = match &request.preset_id {
        Some(id) => {
            let on_version = presets::is_on_version(tx, id, &version_id)?;
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
        let to = Transfer {
            user_id: &request.user_id,
            name: &request.name,
            autostart_schedule: request.autostart_schedule.as_deref(),
            ttl_s: request.ttl_s,
        };
        let transferred = match presets::transfer_prebuild(tx, &workspace_id, &to, now) {
            Ok(transferred) => transferred,
            Err(CreateWorkspaceError::Store(error)) => return Err(ClaimError::Store(error)),
            Err(taken) => return Err(ClaimError::NameTaken(taken)),
        };
        if transferred {
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
    let ids = presets::version_presets(tx, version_id)?;
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

/// The oldest ready, unexpired, running prebuild of the preset on `version_id`.
fn ready_prebuild(
    tx: &WriteTx<'_>,
    preset_id: &str,
    version_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    let ttl_s =
        presets::preset_row(tx, preset_id)?.and_then(|preset| preset.ttl_s).filter(|ttl| *ttl > 0);
    let oldest_allowed = ttl_s
        .map_or(i64::MIN, |ttl| to_millis(now).saturating_sub(crate::domain::time::millis(ttl)));
    presets::ready_prebuild(tx, preset_id, version_id, oldest_allowed)
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
