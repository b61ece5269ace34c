//! `Event`: what the daemon tells the outside world about a state change. A boundary type:
//! persisted in the outbox, sent over SSE and webhooks, so its serde shape is part of the
//! contract. Written by `WriteTx::emit` inside the transaction that makes the change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{BuildReason, Transition};

/// A state change the outside world may care about. `kind` is the serde tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Event {
    #[serde(rename = "workspace.created")]
    WorkspaceCreated {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        template_id: String,
        name: String,
    },
    #[serde(rename = "workspace.deleted")]
    WorkspaceDeleted { workspace_id: String, organization_id: String, owner_id: String },
    /// A user claimed a ready prebuild.
    #[serde(rename = "workspace.claimed")]
    WorkspaceClaimed {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        preset_id: String,
    },
    /// A preset's newest prebuild builds all failed: no more are created until
    /// `workspaced preset reset` (template admins are notified).
    #[serde(rename = "preset.hard_limited")]
    PresetHardLimited { preset_id: String, organization_id: String, template_id: String },
    #[serde(rename = "build.queued")]
    BuildQueued { build: BuildRef },
    #[serde(rename = "build.started")]
    BuildStarted { build: BuildRef },
    #[serde(rename = "build.succeeded")]
    BuildSucceeded { build: BuildRef },
    #[serde(rename = "build.failed")]
    BuildFailed { build: BuildRef, error: String },
    #[serde(rename = "build.canceled")]
    BuildCanceled { build: BuildRef },
    #[serde(rename = "build.interrupted")]
    BuildInterrupted { build: BuildRef, reason: String },
    /// A build that claimed a prebuild had to replace a resource: the template defeats
    /// the prebuild (template admins are notified).
    #[serde(rename = "prebuild.resource_replaced")]
    ResourceReplaced {
        build: BuildRef,
        preset_id: Option<String>,
        resource: String,
        paths: Vec<String>,
    },
    /// The lifecycle executor decided a transition (or dormancy) for a workspace.
    #[serde(rename = "lifecycle.transition")]
    LifecycleTransition {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        transition: Option<Transition>,
        reason: String,
        becomes_dormant: bool,
    },
    /// The GC will delete this workspace at `deletes_at` unless it is used.
    #[serde(rename = "gc.warning")]
    GcWarning {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        deletes_at: String,
    },
    /// The GC queued the deletion of a workspace past its TTL.
    #[serde(rename = "gc.deleted")]
    GcDeleted { workspace_id: String, organization_id: String, owner_id: String, age_s: u64 },
    #[serde(rename = "config.applied")]
    ConfigApplied { templates_changed: u32, versions_created: u32 },
    /// A notification for people: to one user (`user_id`, e.g. a GC warning to the
    /// owner) or to the template admins of an organization (`user_id` is `None`, e.g. a
    /// hard-limited preset or a resource replacement).
    #[serde(rename = "notification")]
    Notification {
        notification_id: i64,
        notification: String,
        organization_id: Option<String>,
        template_id: Option<String>,
        user_id: Option<String>,
        payload: serde_json::Value,
    },
}

/// Identifies a build in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRef {
    pub workspace_id: String,
    pub build_id: String,
    pub job_id: String,
    pub build_number: i64,
    pub transition: Transition,
    pub reason: BuildReason,
    pub organization_id: String,
    pub owner_id: String,
}

impl Event {
    /// The stable event kind, as stored in the outbox and used by filters.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::WorkspaceCreated { .. } => "workspace.created",
            Event::WorkspaceDeleted { .. } => "workspace.deleted",
            Event::WorkspaceClaimed { .. } => "workspace.claimed",
            Event::PresetHardLimited { .. } => "preset.hard_limited",
            Event::BuildQueued { .. } => "build.queued",
            Event::BuildStarted { .. } => "build.started",
            Event::BuildSucceeded { .. } => "build.succeeded",
            Event::BuildFailed { .. } => "build.failed",
            Event::BuildCanceled { .. } => "build.canceled",
            Event::BuildInterrupted { .. } => "build.interrupted",
            Event::ResourceReplaced { .. } => "prebuild.resource_replaced",
            Event::LifecycleTransition { .. } => "lifecycle.transition",
            Event::GcWarning { .. } => "gc.warning",
            Event::GcDeleted { .. } => "gc.deleted",
            Event::ConfigApplied { .. } => "config.applied",
            Event::Notification { .. } => "notification",
        }
    }

    /// Every kind, for validating filters.
    pub const KINDS: &'static [&'static str] = &[
        "workspace.created",
        "workspace.deleted",
        "workspace.claimed",
        "preset.hard_limited",
        "build.queued",
        "build.started",
        "build.succeeded",
        "build.failed",
        "build.canceled",
        "build.interrupted",
        "prebuild.resource_replaced",
        "lifecycle.transition",
        "gc.warning",
        "gc.deleted",
        "config.applied",
        "notification",
    ];

    fn build(&self) -> Option<&BuildRef> {
        match self {
            Event::BuildQueued { build }
            | Event::BuildStarted { build }
            | Event::BuildSucceeded { build }
            | Event::BuildFailed { build, .. }
            | Event::BuildCanceled { build }
            | Event::BuildInterrupted { build, .. }
            | Event::ResourceReplaced { build, .. } => Some(build),
            _ => None,
        }
    }

    /// The organization the event belongs to, for permission filtering; `None` = global.
    pub fn organization_id(&self) -> Option<&str> {
        match self {
            Event::WorkspaceCreated { organization_id, .. }
            | Event::WorkspaceDeleted { organization_id, .. }
            | Event::WorkspaceClaimed { organization_id, .. }
            | Event::PresetHardLimited { organization_id, .. }
            | Event::LifecycleTransition { organization_id, .. }
            | Event::GcWarning { organization_id, .. }
            | Event::GcDeleted { organization_id, .. } => Some(organization_id),
            Event::Notification { organization_id, .. } => organization_id.as_deref(),
            _ => self.build().map(|build| build.organization_id.as_str()),
        }
    }

    /// The user the event is about, for permission filtering; `None` = not user-specific.
    pub fn owner_id(&self) -> Option<&str> {
        match self {
            Event::WorkspaceCreated { owner_id, .. }
            | Event::WorkspaceDeleted { owner_id, .. }
            | Event::WorkspaceClaimed { owner_id, .. }
            | Event::LifecycleTransition { owner_id, .. }
            | Event::GcWarning { owner_id, .. }
            | Event::GcDeleted { owner_id, .. } => Some(owner_id),
            Event::Notification { user_id, .. } => user_id.as_deref(),
            _ => self.build().map(|build| build.owner_id.as_str()),
        }
    }
}

/// A committed event with its outbox id (monotonic, usable as an SSE event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub event: Event,
    /// Names of what the ids name, as of the commit (`{"workspace": …, "owner": …,
    /// "template": …, "preset": …, "organization": …}`, the known ones); `Null` for
    /// events written before names were recorded.
    pub names: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serde_tag_is_the_kind() {
        let event = Event::WorkspaceDeleted {
            workspace_id: "ws-1".into(),
            organization_id: "org".into(),
            owner_id: "u".into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], event.kind());
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }
}
