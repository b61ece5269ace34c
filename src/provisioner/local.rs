//! The built-in `local` backend: a directory per workspace under `<data_dir>/workspaces`,
//! created on start, kept on stop, removed on delete, with a `state.json` saying what the
//! workspace is. It is what the quick start runs on.
//!
//! Each build waits `build_duration` first (cancellable), standing in for real work, and
//! can be made to fail per transition (`fail_transitions`, in the config or in the
//! template version's provisioner config) for demos and tests.

use crate::domain::TextEnum;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::clock::Clock;
use crate::config::LocalBackendConfig;
use crate::domain::job::SuccessReport;
use crate::domain::{Agent, LogLevel, LogLine, Resource, Timing, Transition};
use crate::provisioner::protocol::JobRequest;
use crate::provisioner::{Backend, BoxFuture, JobIo, ProvisionerError};

/// Where the local backend keeps workspace directories.
pub fn workspaces_root(data_dir: &Path) -> PathBuf {
    data_dir.join("workspaces")
}

pub struct LocalBackend {
    root: PathBuf,
    config: LocalBackendConfig,
    clock: Arc<dyn Clock>,
}

impl LocalBackend {
    pub fn new(root: PathBuf, config: LocalBackendConfig, clock: Arc<dyn Clock>) -> Self {
        LocalBackend { root, config, clock }
    }

    /// The directory of one workspace.
    pub fn workspace_dir(&self, workspace_id: &str) -> PathBuf {
        self.root.join(workspace_id)
    }

    fn fails(&self, request: &JobRequest) -> bool {
        let in_template =
            request.config.get("fail_transitions").and_then(|value| value.as_array()).is_some_and(
                |list| list.iter().any(|item| item.as_str() == Some(request.transition.as_str())),
            );
        in_template || self.config.fail_transitions.contains(&request.transition)
    }

    async fn build(
        &self,
        request: &JobRequest,
        io: JobIo,
    ) -> Result<SuccessReport, ProvisionerError> {
        let log = |level, output: String| {
            let logs = io.logs.clone();
            async move {
                // A closed channel means the runner stopped listening; the build goes on.
                let _ = logs.send(LogLine::new(level, "apply", output)).await;
            }
        };
        let started_at = self.clock.now();
        log(
            LogLevel::Info,
            format!(
                "{} of workspace {} (build {})",
                request.transition, request.workspace.name, request.build_number
            ),
        )
        .await;
        tokio::select! {
            () = io.cancel.cancelled() => return Err(ProvisionerError::Canceled),
            () = tokio::time::sleep(self.config.build_duration.as_duration()) => {}
        }
        if self.fails(request) {
            log(LogLevel::Error, format!("{} fails on purpose", request.transition)).await;
            return Err(ProvisionerError::Injected { transition: request.transition });
        }
        let dir = self.workspace_dir(&request.workspace.id);
        let io_error = |what: String| move |source| ProvisionerError::Io { what, source };
        let mut resources = Vec::new();
        match request.transition {
            Transition::Start | Transition::Stop => {
                let status =
                    if request.transition == Transition::Start { "running" } else { "stopped" };
                tokio::fs::create_dir_all(dir.join("home"))
                    .await
                    .map_err(io_error(format!("cannot create {}", dir.display())))?;
                let state = json!({
                    "workspace_id": request.workspace.id,
                    "name": request.workspace.name,
                    "owner": request.workspace.owner_name,
                    "template": request.template.name,
                    "template_version": request.template.version_name,
                    "build_number": request.build_number,
                    "status": status,
                    "parameters": request.parameters,
                });
                let state_file = dir.join("state.json");
                tokio::fs::write(&state_file, format!("{state:#}\n"))
                    .await
                    .map_err(io_error(format!("cannot write {}", state_file.display())))?;
                log(LogLevel::Info, format!("workspace directory {} is {status}", dir.display()))
                    .await;
                if request.transition == Transition::Start {
                    resources.push(Resource {
                        name: "home".to_owned(),
                        kind: "local_directory".to_owned(),
                        agents: vec![Agent { name: "main".to_owned(), ready: true }],
                    });
                }
            }
            Transition::Delete => {
                match tokio::fs::remove_dir_all(&dir).await {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ProvisionerError::Io {
                            what: format!("cannot remove {}", dir.display()),
                            source,
                        });
                    }
                }
                log(LogLevel::Info, format!("workspace directory {} removed", dir.display())).await;
            }
        }
        let timing = Timing {
            stage: "apply".to_owned(),
            source: "local".to_owned(),
            action: request.transition.as_str().to_owned(),
            resource: "home".to_owned(),
            started_at,
            ended_at: self.clock.now(),
        };
        Ok(SuccessReport {
            state: Some(json!({ "directory": dir }).to_string()),
            resources,
            timings: vec![timing],
            ..SuccessReport::default()
        })
    }
}

impl Backend for LocalBackend {
    fn run<'a>(
        &'a self,
        request: &'a JobRequest,
        io: JobIo,
    ) -> BoxFuture<'a, Result<SuccessReport, ProvisionerError>> {
        Box::pin(self.build(request, io))
    }
}
