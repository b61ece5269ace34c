//! Provisioner backends: what turns a build into real effects on the host.
//!
//! Owns the `Backend` trait, the request every backend receives (`protocol::JobRequest`,
//! also the exec protocol's wire format), the error a failed backend reports, and the job
//! runner that feeds backends from the database. Backends know nothing about SQLite:
//! they get a request, a log channel and a cancellation token, and return a report.

#[cfg(feature = "containers")]
pub mod container;
pub mod exec;
pub mod local;
pub mod process;
pub mod protocol;
pub mod runner;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ProvisionerConfig;
use crate::domain::job::SuccessReport;
use crate::domain::{LogLine, Transition};
use protocol::JobRequest;

/// A boxed future, so backends can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use crate::domain::LOCAL_BACKEND;

/// What a backend gets besides the request.
pub struct JobIo {
    /// Build output; the runner batches it into the job's log.
    pub logs: mpsc::Sender<LogLine>,
    /// Fires when the job must stop (timeout, cancel request, shutdown). The backend stops
    /// its work (gracefully, then forcibly) and returns `ProvisionerError::Canceled`.
    pub cancel: CancellationToken,
    /// Where a backend that starts a process group reports it (group id, leader start
    /// time), so a crashed daemon's successor can kill what is left of it.
    pub process_group: Option<tokio::sync::oneshot::Sender<(i32, u64)>>,
}

/// Runs builds.
pub trait Backend: Send + Sync {
    fn run<'a>(
        &'a self,
        request: &'a JobRequest,
        io: JobIo,
    ) -> BoxFuture<'a, Result<SuccessReport, ProvisionerError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionerError {
    #[error("the job was canceled")]
    Canceled,
    #[error("{transition} failed on purpose (provisioner.local.fail_transitions)")]
    Injected { transition: Transition },
    #[error("unknown provisioner {0:?}: not \"local\" and no [provisioner.exec.{0}] profile")]
    UnknownBackend(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start provisioner {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("provisioner exited with {status}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    ExitStatus { status: String, detail: Option<String> },
    #[error("provisioner wrote malformed JSON on stdout line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("provisioner exited successfully without a \"complete\" message")]
    NoComplete,
    #[error("provisioner output exceeded the {limit}-byte limit (max_output_bytes); it was killed")]
    OutputTooLarge { limit: u64 },
    #[error("provisioner reported an error: {0}")]
    Reported(String),
    #[error("job timed out after {0:?}; the provisioner was stopped")]
    TimedOut(Duration),
    #[error("{0}")]
    Engine(String),
    #[error("readiness probe failed: {0}")]
    ProbeFailed(String),
    #[error("provisioner \"container\" is not in this build (cargo feature `containers`)")]
    NotBuilt,
}

impl ProvisionerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProvisionerError::Canceled => "canceled",
            ProvisionerError::Injected { .. } => "injected",
            ProvisionerError::UnknownBackend(_) => "unknown_backend",
            ProvisionerError::Io { .. } => "io",
            ProvisionerError::Spawn { .. } => "spawn",
            ProvisionerError::ExitStatus { .. } => "exit_status",
            ProvisionerError::Malformed { .. } => "malformed",
            ProvisionerError::NoComplete => "no_complete",
            ProvisionerError::OutputTooLarge { .. } => "output_too_large",
            ProvisionerError::Reported(_) => "reported",
            ProvisionerError::TimedOut(_) => "timeout",
            ProvisionerError::Engine(_) => "engine",
            ProvisionerError::ProbeFailed(_) => "probe",
            ProvisionerError::NotBuilt => "not_built",
        }
    }
}

/// The backend named `name` under the current config: `local`, or an exec profile.
pub fn backend_for(
    name: &str,
    config: &ProvisionerConfig,
    data_dir: &Path,
    clock: &Arc<dyn Clock>,
    installation: &str,
) -> Result<Box<dyn Backend>, ProvisionerError> {
    if name == LOCAL_BACKEND {
        return Ok(Box::new(local::LocalBackend::new(
            local::workspaces_root(data_dir),
            config.local.clone(),
            Arc::clone(clock),
        )));
    }
    if name == crate::config::container::CONTAINER_BACKEND {
        #[cfg(feature = "containers")]
        return Ok(Box::new(container::ContainerBackend::new(
            config.container.clone(),
            config.kill_grace.as_duration(),
            config.job_timeout.as_duration(),
            installation.to_owned(),
        )));
        #[cfg(not(feature = "containers"))]
        return Err(ProvisionerError::NotBuilt);
    }
    match config.exec.get(name) {
        Some(profile) => {
            Ok(Box::new(exec::ExecBackend::new(profile.clone(), config.kill_grace.as_duration())))
        }
        None => Err(ProvisionerError::UnknownBackend(name.to_owned())),
    }
}
