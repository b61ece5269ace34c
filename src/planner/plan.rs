//! The plan document (planner.md §2): what the next reconcile, lifecycle and GC runs will
//! do, and why. Printed by `workspaced plan`, served by the API, executed by the loops.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::Transition;
use crate::planner::snapshot::rfc3339;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    #[serde(with = "rfc3339")]
    pub now: DateTime<Utc>,
    pub reconciler: ReconcilerPlan,
    pub lifecycle: Vec<LifecycleDecision>,
    pub gc: GcPlan,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcilerPlan {
    pub paused: bool,
    pub presets: Vec<PresetPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresetPlan {
    pub preset_id: String,
    pub active: bool,
    pub state: PresetState,
    #[serde(with = "rfc3339::option")]
    pub backoff_until: Option<DateTime<Utc>>,
    pub hard_limited: bool,
    pub actions: Vec<PoolAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PresetState {
    pub actual: u64,
    pub expired: u64,
    pub desired: u64,
    pub eligible: u64,
    pub extraneous: u64,
    pub starting: u64,
    pub stopping: u64,
    pub deleting: u64,
    /// Running prebuilds unhealthy past `unhealthy_replace_after_s` (not expired ones).
    #[serde(skip_serializing_if = "is_zero")]
    pub unhealthy: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    Expired,
    Extraneous,
    Inactive,
    /// Its readiness probe failed for longer than `unhealthy_replace_after_s`.
    Unhealthy,
}

/// One reconciler action, in execution order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolAction {
    Backoff {
        #[serde(with = "rfc3339")]
        until: DateTime<Utc>,
    },
    Delete {
        reason: DeleteReason,
        workspace_ids: Vec<String>,
    },
    Create {
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleReason {
    Autostart,
    Autostop,
    Failedstop,
    Dormancy,
    Autodelete,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleDecision {
    pub workspace_id: String,
    pub transition: Option<Transition>,
    pub reason: LifecycleReason,
    pub becomes_dormant: bool,
    /// For a `start`: the version to build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_version_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GcPlan {
    pub safety_valve_tripped: bool,
    pub actions: Vec<GcAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcActionKind {
    Warn,
    Delete,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcSkipReason {
    Protected,
    Active,
    InProgress,
    WarnWindow,
    SafetyValve,
}

impl GcSkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GcSkipReason::Protected => "protected",
            GcSkipReason::Active => "active",
            GcSkipReason::InProgress => "in_progress",
            GcSkipReason::WarnWindow => "warn_window",
            GcSkipReason::SafetyValve => "safety_valve",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GcAction {
    pub workspace_id: String,
    pub action: GcActionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<GcSkipReason>,
    pub age_s: u64,
    #[serde(skip_serializing_if = "Option::is_none", with = "rfc3339::option")]
    pub deletes_at: Option<DateTime<Utc>>,
}

/// One line for a serialized list of pool actions (`create 2, delete 1 (expired)`), `-`
/// for none: what the CLI's `pool list` and the status page show.
pub fn summarize_actions(actions: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let parts: Vec<String> = actions
        .as_array()
        .into_iter()
        .flatten()
        .map(|action| match action["type"].as_str() {
            Some("create") => format!("create {}", text(&action["count"])),
            Some("delete") => format!(
                "delete {} ({})",
                action["workspace_ids"].as_array().map_or(0, Vec::len),
                text(&action["reason"])
            ),
            Some("backoff") => format!("wait until {}", text(&action["until"])),
            _ => action.to_string(),
        })
        .collect();
    if parts.is_empty() { "-".to_owned() } else { parts.join(", ") }
}
