//! The pool's write side: creating and deleting prebuilds for the reconciler, carrying out
//! housekeeping, persisting a preset's hard-limit status, and resetting a preset.
//!
//! Every function runs inside the caller's write transaction and re-reads the rows it
//! decides on, so a plan made from an older snapshot never deletes a workspace a user
//! claimed meanwhile.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::domain::event::Event;
use crate::domain::{BuildReason, PREBUILDS_USER_ID, Transition};
use crate::store::audit::{self, Actor, Entry};
use crate::store::builds::{self, BuildError, BuildRequest, QueuedBuild};
use crate::store::workspaces::{self, CreateWorkspaceError, NewWorkspace};
use crate::store::{StoreError, WriteTx, notifications, presets, templates};

/// Creates one prebuild of `preset_id` (owned by the prebuilds user, a `start` build on
/// the active version with the preset's parameters). `None` when the preset is no longer
/// active.
pub fn create_prebuild(
    tx: &mut WriteTx<'_>,
    preset_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<QueuedBuild>, BuildError> {
    let Some(preset) = presets::preset_row(tx, preset_id)? else { return Ok(None) };
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
    workspaces::mark_deleted(tx, workspace_id, now)?;
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
    let Some((status, notified_at)) = presets::hard_limit_state(tx, preset_id)? else {
        return Ok(false);
    };
    let wanted = if hard_limited { "hard_limited" } else { "healthy" };
    if status != wanted {
        presets::set_prebuild_status(tx, preset_id, wanted)?;
    }
    if !hard_limited || notified_at.is_some() {
        return Ok(false);
    }
    let Some(preset) = presets::preset_row(tx, preset_id)? else { return Ok(false) };
    presets::mark_hard_limit_notified(tx, preset_id, now)?;
    notifications::queue(
        tx,
        &notifications::NewNotification {
            kind: "preset.hard_limited",
            user_id: None,
            organization_id: &preset.organization_id,
            template_id: &preset.template_id,
            payload: json!({ "preset_id": preset_id }),
        },
        now,
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
    #[error("no preset {0:?} (an id, or TEMPLATE/PRESET on the template's active version)")]
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
    pub preset_id: String,
    pub deletes_queued: usize,
    pub previous_status: String,
}

/// Deletes the preset's failed prebuilds (taking them out of the hard-limit window) and
/// clears its stored status, in one transaction.
pub fn reset_preset(
    tx: &mut WriteTx<'_>,
    reference: &str,
    organization: Option<&str>,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<ResetReport, ResetError> {
    let unknown = || ResetError::UnknownPreset(reference.to_owned());
    let preset_id = &presets::resolve(tx, reference, organization)?.ok_or_else(unknown)?;
    let previous_status = presets::hard_limit_state(tx, preset_id)?
        .map(|(status, _)| status)
        .ok_or_else(|| ResetError::UnknownPreset(preset_id.to_owned()))?;
    let failed = presets::failed_prebuilds(tx, preset_id)?;
    let mut deletes_queued = 0;
    for workspace_id in &failed {
        if delete_prebuild(tx, workspace_id, now)?.is_some() {
            deletes_queued += 1;
        }
    }
    presets::clear_hard_limit(tx, preset_id)?;
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
    Ok(ResetReport { preset_id: preset_id.clone(), deletes_queued, previous_status })
}
