//! Plain domain data shared by the planner, the store and the API: fixed ids and the
//! vocabulary of the schema (transitions, job states, build reasons, priorities).
//!
//! No IO and no clock: values only. Each enum reads and writes the exact strings the
//! schema's CHECK constraints and the wire formats use.

pub mod activity;
pub mod event;
pub mod job;
pub mod parameters;
pub mod text;
pub mod time;

pub use text::{TextEnum, UnknownVariant};

use strum::{Display, EnumString, IntoStaticStr, VariantArray};

/// The organization every installation has (created by the first migration).
pub const DEFAULT_ORGANIZATION_ID: &str = "00000000-0000-0000-0000-000000000001";

/// The system user that owns every unclaimed prebuild (Coder uses the same id).
pub const PREBUILDS_USER_ID: &str = "c42fdf75-3097-471c-8c33-fb52454d81c0";

/// The name of the built-in provisioner backend (directories under the data dir).
pub const LOCAL_BACKEND: &str = "local";

/// Which background loop (the `loop` label value of its metrics and its log name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoopKind {
    Reconciler,
    Lifecycle,
    Gc,
}

impl LoopKind {
    pub const ALL: [LoopKind; 3] = [LoopKind::Reconciler, LoopKind::Lifecycle, LoopKind::Gc];

    /// The `loop` label value and log name.
    pub fn name(self) -> &'static str {
        match self {
            LoopKind::Reconciler => "reconciler",
            LoopKind::Lifecycle => "lifecycle",
            LoopKind::Gc => "gc",
        }
    }
}

/// SQLite's `synchronous` level (`[storage] synchronous`): `full` survives power loss,
/// `normal` is faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Off,
    Normal,
    Full,
    Extra,
}

impl Synchronous {
    pub fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// What a build does to its workspace.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum Transition {
    Start,
    Stop,
    Delete,
}

/// The state of a provisioner job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum JobStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Cancellation requested while running; the backend is being stopped.
    Canceling,
    Canceled,
    /// The daemon stopped during the job (crash, kill, restart or shutdown): neither a
    /// failure of the template nor a cancel. Planners see it as `canceled`.
    Interrupted,
}

impl JobStatus {
    /// Pending or running: the workspace is being built and gets no other build.
    pub fn is_in_progress(self) -> bool {
        matches!(self, JobStatus::Pending | JobStatus::Running)
    }

    /// Finished one way or another.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled | JobStatus::Interrupted
        )
    }

    /// The status as the planner contract names it: `interrupted` is not one of its
    /// values and reads as `canceled` (not running, not failed).
    pub fn for_planner(self) -> JobStatus {
        match self {
            JobStatus::Interrupted => JobStatus::Canceled,
            other => other,
        }
    }
}

/// Why a build exists.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum BuildReason {
    /// A person asked for it (API, CLI).
    Initiator,
    Autostart,
    Autostop,
    /// Dormancy stopped the workspace.
    Autolock,
    Failedstop,
    Autodelete,
    Gc,
    /// The reconciler creates or deletes a prebuild.
    Prebuild,
    /// A user claimed a prebuild.
    Claim,
}

impl BuildReason {
    /// Who waits for the job: people first, then the lifecycle, then the prebuild pool.
    pub fn priority(self) -> JobPriority {
        match self {
            BuildReason::Initiator | BuildReason::Claim => JobPriority::User,
            BuildReason::Autostart
            | BuildReason::Autostop
            | BuildReason::Autolock
            | BuildReason::Failedstop
            | BuildReason::Autodelete
            | BuildReason::Gc => JobPriority::Lifecycle,
            BuildReason::Prebuild => JobPriority::Prebuild,
        }
    }
}

/// Job classes in the order the runner serves them (lower first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobPriority {
    User = 0,
    Lifecycle = 1,
    Prebuild = 2,
}

impl JobPriority {
    pub fn as_i64(self) -> i64 {
        self as i64
    }

    pub fn from_i64(value: i64) -> Option<JobPriority> {
        match value {
            0 => Some(JobPriority::User),
            1 => Some(JobPriority::Lifecycle),
            2 => Some(JobPriority::Prebuild),
            _ => None,
        }
    }
}

/// Severity of a build log line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The type of a template parameter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum ParameterType {
    String,
    Number,
    Bool,
    #[strum(serialize = "list(string)")]
    ListString,
}

crate::text_enums! {
    Transition => "transition",
    JobStatus => "job status",
    BuildReason => "build reason",
    LogLevel => "log level",
    ParameterType => "parameter type",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_its_string() {
        for transition in Transition::ALL {
            assert_eq!(transition.as_str().parse::<Transition>(), Ok(*transition));
        }
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(*status));
        }
        for reason in BuildReason::ALL {
            assert_eq!(reason.as_str().parse::<BuildReason>(), Ok(*reason));
        }
        let error = "restart".parse::<Transition>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown transition \"restart\"; expected one of: start, stop, delete"
        );
    }

    #[test]
    fn the_strings_are_the_schemas_and_serde_uses_them() {
        let strings = |all: &[ParameterType]| all.iter().map(|v| v.as_str()).collect::<Vec<_>>();
        assert_eq!(strings(ParameterType::ALL), ["string", "number", "bool", "list(string)"]);
        assert_eq!(BuildReason::Failedstop.to_string(), "failedstop");
        assert_eq!(
            serde_json::to_string(&JobStatus::Canceling).ok().as_deref(),
            Some("\"canceling\"")
        );
        let error = serde_json::from_str::<LogLevel>("\"fatal\"").map(|_| ()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown log level \"fatal\"; expected one of: trace, debug, info, warn, error"
        );
        assert_eq!(LogLevel::parse("warn"), Some(LogLevel::Warn));
    }

    #[test]
    fn people_go_before_the_lifecycle_which_goes_before_prebuilds() {
        assert!(BuildReason::Claim.priority() < BuildReason::Autostop.priority());
        assert!(BuildReason::Gc.priority() < BuildReason::Prebuild.priority());
        assert_eq!(
            JobPriority::from_i64(JobPriority::Prebuild.as_i64()),
            Some(JobPriority::Prebuild)
        );
    }
}

/// A resource a successful build reports, with its agents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub agents: Vec<Agent>,
}

/// An agent inside a resource; a workspace is ready when all its agents are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    #[serde(default)]
    pub ready: bool,
}

/// Something a developer connects to in a workspace: a name and the URL it answers on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
    pub url: String,
    /// Who may use it through the app proxy (`owner` when absent).
    #[serde(default, skip_serializing_if = "AppShare::is_owner")]
    pub share: AppShare,
}

/// Who may use an app through the app proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppShare {
    /// Whoever may connect to the workspace: its owner, owners of its organization, a
    /// template admin for a prebuild. Never an auditor.
    #[default]
    Owner,
    /// Any logged-in user of the workspace's organization.
    Authenticated,
}

impl AppShare {
    pub fn is_owner(&self) -> bool {
        *self == AppShare::Owner
    }
}

/// A container-engine object workspaced created whose workspace is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOrphan {
    /// `container` or `volume`.
    pub kind: &'static str,
    pub name: String,
    /// From its label; `None` when the label is missing.
    pub workspace_id: Option<String>,
}

/// A resource that had to be replaced (for a claim: the prebuild was not fully reusable).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    pub resource: String,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// How long one stage of a build took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub stage: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub resource: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: chrono::DateTime<chrono::Utc>,
}

/// One line of build output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub stage: String,
    pub output: String,
}

impl LogLine {
    pub fn new(level: LogLevel, stage: &str, output: impl Into<String>) -> Self {
        LogLine { level, stage: stage.to_owned(), output: output.into() }
    }
}

/// The agents' readiness across resources: `None` without agents, else all ready.
pub fn agents_ready(resources: &[Resource]) -> Option<bool> {
    let mut agents = resources.iter().flat_map(|resource| &resource.agents).peekable();
    agents.peek()?;
    Some(agents.all(|agent| agent.ready))
}
