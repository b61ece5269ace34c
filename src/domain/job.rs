//! A provisioner job as it crosses layers: what a backend is given (`AcquiredJob`), how it
//! ended (`JobOutcome`, with a build's `SuccessReport`), and what completing it changed
//! (`CompletedJob`). Plain data: the store fills and records them, the provisioner runs them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::domain::event::BuildRef;
use crate::domain::{App, JobPriority, JobStatus, Replacement, Resource, Timing};

/// Everything a backend needs to run a job (and the runner to report on it).
#[derive(Debug, Clone, PartialEq)]
pub struct AcquiredJob {
    pub job_id: String,
    pub priority: JobPriority,
    pub backend: String,
    pub build: BuildRef,
    pub workspace_name: String,
    pub owner_name: String,
    pub organization_name: String,
    pub template_id: String,
    pub template_name: String,
    pub template_version_id: String,
    pub template_version_name: String,
    pub provisioner_config: serde_json::Value,
    pub parameters: BTreeMap<String, String>,
    pub previous_parameters: BTreeMap<String, String>,
    /// The opaque state of the workspace's last successful build.
    pub previous_state: Option<String>,
    pub is_prebuild: bool,
    pub is_prebuild_claim: bool,
    pub preset_id: Option<String>,
    pub preset_name: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Succeeded(SuccessReport),
    Failed {
        error: String,
        code: String,
    },
    Canceled {
        reason: String,
    },
    /// The daemon stopped during the job (shutdown, or a crash found at the next start).
    Interrupted {
        reason: String,
    },
}

/// What a successful build reported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SuccessReport {
    pub state: Option<String>,
    pub resources: Vec<Resource>,
    pub replacements: Vec<Replacement>,
    pub timings: Vec<Timing>,
    /// What a developer connects to (a start's published ports).
    pub apps: Vec<App>,
    /// A readiness probe passed before the build succeeded: the workspace starts healthy.
    pub probed: bool,
}

/// A job that was completed by `complete`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedJob {
    pub build: BuildRef,
    pub status: JobStatus,
    pub backend: String,
    pub started_at: Option<DateTime<Utc>>,
    /// Replacements recorded for a prebuild claim, with the labels of the preset.
    pub replacements: Vec<Replacement>,
    pub preset_labels: Option<PresetLabels>,
}

/// Metric labels of a preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetLabels {
    pub organization_name: String,
    pub template_name: String,
    pub preset_name: String,
}
