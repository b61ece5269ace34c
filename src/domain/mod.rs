//! Plain domain data shared by the planner, the store and the API: fixed ids and the
//! vocabulary of the schema (transitions, job states, build reasons, priorities).
//!
//! No IO and no clock: values only. Each enum reads and writes the exact strings the
//! schema's CHECK constraints and the wire formats use.

pub mod event;
pub mod job;
pub mod parameters;
pub mod time;

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

/// An unknown string for one of the enums below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

/// Declares a fieldless enum with its one string form, `FromStr`, `Display` and serde.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(value: &str) -> Result<Self, UnknownVariant> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant {
                        what: $what,
                        value: value.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_enum! {
    /// What a build does to its workspace.
    Transition, "transition" {
        Start => "start",
        Stop => "stop",
        Delete => "delete",
    }
}

string_enum! {
    /// The state of a provisioner job.
    JobStatus, "job status" {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        /// Cancellation requested while running; the backend is being stopped.
        Canceling => "canceling",
        Canceled => "canceled",
        /// The daemon stopped during the job (crash, kill, restart or shutdown): neither a
        /// failure of the template nor a cancel. Planners see it as `canceled`.
        Interrupted => "interrupted",
    }
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

string_enum! {
    /// Why a build exists.
    BuildReason, "build reason" {
        /// A person asked for it (API, CLI).
        Initiator => "initiator",
        Autostart => "autostart",
        Autostop => "autostop",
        /// Dormancy stopped the workspace.
        Autolock => "autolock",
        Failedstop => "failedstop",
        Autodelete => "autodelete",
        Gc => "gc",
        /// The reconciler creates or deletes a prebuild.
        Prebuild => "prebuild",
        /// A user claimed a prebuild.
        Claim => "claim",
    }
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

string_enum! {
    /// Severity of a build log line.
    LogLevel, "log level" {
        Trace => "trace",
        Debug => "debug",
        Info => "info",
        Warn => "warn",
        Error => "error",
    }
}

string_enum! {
    /// The type of a template parameter.
    ParameterType, "parameter type" {
        String => "string",
        Number => "number",
        Bool => "bool",
        ListString => "list(string)",
    }
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
