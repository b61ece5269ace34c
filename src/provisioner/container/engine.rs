//! The container engine as workspaced uses it: one client for dockerd and Podman's
//! Docker-compatible API (bollard), the object names and labels of a workspace, and the
//! few calls the backend, the health monitor and the orphan sweep make. A missing object
//! is an answer (`None`, or done for a removal), not an error.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ExecConfig, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::config::container::ContainerBackendConfig;

/// Every object workspaced creates carries this label (`=true`).
pub const MANAGED: &str = "io.workspaced.managed";
pub const WORKSPACE_ID: &str = "io.workspaced.workspace-id";
pub const TEMPLATE_VERSION: &str = "io.workspaced.template-version";
pub const SPEC_HASH: &str = "io.workspaced.spec-hash";
/// The installation that created the object (`store::installation_id`): objects of another
/// installation on the same engine are never touched.
pub const INSTALLATION: &str = "io.workspaced.installation";
/// The canonical spec the container was created from (to name what a recreate changes).
pub const SPEC: &str = "io.workspaced.spec";

/// The container of a workspace.
pub fn container_name(workspace_id: &str) -> String {
    format!("wsd-{workspace_id}")
}

/// The home volume of a workspace.
pub fn volume_name(workspace_id: &str) -> String {
    format!("wsd-{workspace_id}-home")
}

/// An engine request that failed, with the engine's own message.
#[derive(Debug, thiserror::Error)]
#[error("container engine: {what}: {message}")]
pub struct EngineError {
    pub what: String,
    pub message: String,
}

fn engine_error(what: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let what = what.into();
    move |error| EngineError { what, message: message_of(&error) }
}

fn message_of(error: &BollardError) -> String {
    match error {
        BollardError::DockerResponseServerError { status_code, message } => {
            format!("{message} (HTTP {status_code})")
        }
        other => other.to_string(),
    }
}

fn status_of(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// What a container is doing, as far as workspaced cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub running: bool,
    /// The engine's status word (`running`, `exited`, `created`, …).
    pub status: String,
    pub labels: HashMap<String, String>,
    /// Published TCP ports: container port → `host:port`.
    pub published: HashMap<u16, String>,
    /// The main process on the host, while it runs (from an inspect; a listing has none).
    pub pid: Option<u32>,
}

/// A labelled object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The container or volume name.
    pub name: String,
    pub workspace_id: Option<String>,
}

/// A connected engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// The socket it was reached on (for messages).
    pub socket: String,
}

/// Engines already connected, by (socket setting, timeout): agreeing on the API version
/// costs a `/version` request, which Podman answers in ~0.4 s, so it is done once per
/// setting, not per job or health check. A client holds no connection open (one per
/// request), so an engine restart needs no reconnect.
static CONNECTED: std::sync::Mutex<Vec<((String, u64), Engine)>> =
    std::sync::Mutex::new(Vec::new());

impl Engine {
    /// The engine of `config`, connected once (see `CONNECTED`).
    pub async fn connect(config: &ContainerBackendConfig) -> Result<Engine, EngineError> {
        let key = (config.socket.clone(), config.request_timeout.as_secs());
        let cached = |engines: &[((String, u64), Engine)]| {
            engines.iter().find(|(known, _)| known == &key).map(|(_, engine)| engine.clone())
        };
        if let Some(engine) = CONNECTED.lock().ok().and_then(|engines| cached(&engines))
            && std::path::Path::new(&engine.socket).exists()
        {
            return Ok(engine);
        }
        let engine = Self::connect_new(config).await?;
        if let Ok(mut engines) = CONNECTED.lock() {
            engines.retain(|(known, _)| known != &key);
            engines.push((key, engine.clone()));
        }
        Ok(engine)
    }

    /// Connects to the configured socket (`auto`: the first that exists) and agrees on an
    /// API version with the engine.
    async fn connect_new(config: &ContainerBackendConfig) -> Result<Engine, EngineError> {
        let xdg = std::env::var("XDG_RUNTIME_DIR").ok();
        let candidates = config.candidate_sockets(xdg.as_deref());
        let Some(socket) =
            candidates.iter().find(|path| std::path::Path::new(path).exists()).cloned()
        else {
            return Err(EngineError {
                what: "connect".to_owned(),
                message: format!(
                    "no engine socket at {} ([provisioner.container] socket)",
                    candidates.join(", ")
                ),
            });
        };
        let timeout = config.request_timeout.as_secs();
        // The oldest API both engines serve (Podman 4 speaks 1.41); negotiation raises it.
        let version = bollard::ClientVersion { major_version: 1, minor_version: 41 };
        let docker = Docker::connect_with_unix(&socket, timeout, &version)
            .map_err(engine_error(format!("connect to {socket}")))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(engine_error(format!("connect to {socket}")))?;
        Ok(Engine { docker, socket })
    }

    /// The container, or `None` when there is none of that name.
    pub async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        match self.docker.inspect_container(name, None).await {
            Ok(response) => Ok(Some(info_of(response))),
            Err(error) if status_of(&error) == Some(404) => Ok(None),
            Err(error) => Err(engine_error(format!("inspect {name}"))(error)),
        }
    }

    /// Makes sure the image is there: pulls it when it is missing (where the engine can).
    pub async fn ensure_image(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(false),
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(engine_error(format!("inspect image {image}"))(error)),
        }
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            let step = step.map_err(engine_error(format!("pull image {image}")))?;
            if let Some(detail) = step.error_detail.and_then(|detail| detail.message) {
                return Err(EngineError { what: format!("pull image {image}"), message: detail });
            }
        }
        // Podman answers a failed pull with a 200 and an error line, dockerd with an
        // error status; either way the image must be there now.
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(error) => Err(engine_error(format!("pull image {image}"))(error)),
        }
    }

    pub async fn ensure_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), EngineError> {
        match self.docker.inspect_volume(name).await {
            Ok(_) => return Ok(()),
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(engine_error(format!("inspect volume {name}"))(error)),
        }
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map_err(engine_error(format!("create volume {name}")))?;
        Ok(())
    }

    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(engine_error(format!("create container {name}")))?;
        Ok(created.id)
    }

    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.start_container(name, None).await {
            // 304: already running.
            Err(error) if status_of(&error) == Some(304) => Ok(()),
            other => other.map_err(engine_error(format!("start container {name}"))),
        }
    }

    /// Stops the container (SIGTERM, then SIGKILL after `grace_secs`); a missing or
    /// stopped one is done.
    pub async fn stop(&self, name: &str, grace_secs: i32) -> Result<(), EngineError> {
        let options = StopContainerOptionsBuilder::new().t(grace_secs).build();
        match self.docker.stop_container(name, Some(options)).await {
            Err(error) if matches!(status_of(&error), Some(304 | 404)) => Ok(()),
            other => other.map_err(engine_error(format!("stop container {name}"))),
        }
    }

    /// Removes the container (forcibly); a missing one is done.
    pub async fn remove_container(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(false).build();
        match self.docker.remove_container(name, Some(options)).await {
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            other => other.map_err(engine_error(format!("remove container {name}"))),
        }
    }

    /// Removes the volume; a missing one is done.
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveVolumeOptionsBuilder::new().force(true).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            other => other.map_err(engine_error(format!("remove volume {name}"))),
        }
    }

    /// Unpacks a tar archive at `path` inside the container (running or not).
    pub async fn upload(&self, name: &str, path: &str, tar: Vec<u8>) -> Result<(), EngineError> {
        let options = UploadToContainerOptionsBuilder::new().path(path).build();
        self.docker
            .upload_to_container(name, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(engine_error(format!("copy into container {name}")))
    }

    /// Runs a command inside the running container; its exit code and (bounded) output.
    pub async fn exec(&self, name: &str, command: &[String]) -> Result<(i64, String), EngineError> {
        let config = ExecConfig {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let what = || format!("exec in container {name}");
        let exec = self.docker.create_exec(name, config).await.map_err(engine_error(what()))?;
        let mut output = String::new();
        if let bollard::exec::StartExecResults::Attached { output: mut stream, .. } =
            self.docker.start_exec(&exec.id, None).await.map_err(engine_error(what()))?
        {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(engine_error(what()))?;
                if output.len() < 4096 {
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
        }
        let inspected = self.docker.inspect_exec(&exec.id).await.map_err(engine_error(what()))?;
        output.truncate(output.floor_char_boundary(4096));
        Ok((inspected.exit_code.unwrap_or(-1), output))
    }

    /// Every container with workspaced's label, by name, with its state and ports: one
    /// request for all (what the health monitor reads each tick).
    pub async fn managed_containers(&self) -> Result<HashMap<String, ContainerInfo>, EngineError> {
        let filters = HashMap::from([("label", vec![format!("{MANAGED}=true")])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error("list containers"))?;
        let mut found = HashMap::new();
        for summary in summaries {
            let Some(name) = summary.names.as_ref().and_then(|names| names.first()) else {
                continue;
            };
            let name = name.trim_start_matches('/').to_owned();
            let status = summary.state.map(|state| state.to_string()).unwrap_or_default();
            let mut published = HashMap::new();
            for port in summary.ports.unwrap_or_default() {
                let tcp = port.typ.is_none_or(|typ| typ.to_string() == "tcp");
                if let (true, Some(public)) = (tcp, port.public_port) {
                    let host = port
                        .ip
                        .filter(|ip| !ip.is_empty() && ip != "0.0.0.0")
                        .unwrap_or_else(|| "127.0.0.1".to_owned());
                    published.insert(port.private_port, format!("{host}:{public}"));
                }
            }
            found.insert(
                name,
                ContainerInfo {
                    id: summary.id.unwrap_or_default(),
                    running: status == "running",
                    status,
                    labels: summary.labels.unwrap_or_default(),
                    published,
                    pid: None,
                },
            );
        }
        Ok(found)
    }

    /// Every container and volume of `installation`.
    pub async fn list_managed(
        &self,
        installation: &str,
    ) -> Result<(Vec<Managed>, Vec<Managed>), EngineError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{MANAGED}=true"), format!("{INSTALLATION}={installation}")],
        )]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error("list containers"))?
            .into_iter()
            .map(|summary| Managed {
                name: summary
                    .names
                    .and_then(|names| names.into_iter().next())
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .or(summary.id)
                    .unwrap_or_default(),
                workspace_id: summary.labels.and_then(|mut labels| labels.remove(WORKSPACE_ID)),
            })
            .collect();
        let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(engine_error("list volumes"))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|volume| Managed {
                workspace_id: volume.labels.get(WORKSPACE_ID).cloned(),
                name: volume.name,
            })
            .collect();
        Ok((containers, volumes))
    }
}

fn info_of(response: ContainerInspectResponse) -> ContainerInfo {
    let state = response.state.unwrap_or_default();
    let status = state.status.map(|status| status.to_string()).unwrap_or_default();
    let mut published = HashMap::new();
    for (port, bindings) in
        response.network_settings.and_then(|settings| settings.ports).unwrap_or_default()
    {
        let Some((number, "tcp")) = port.split_once('/') else { continue };
        let Ok(number) = number.parse::<u16>() else { continue };
        if let Some(binding) = bindings.unwrap_or_default().into_iter().next()
            && let Some(host_port) = binding.host_port.filter(|port| !port.is_empty())
        {
            let host = binding
                .host_ip
                .filter(|ip| !ip.is_empty() && ip != "0.0.0.0")
                .unwrap_or_else(|| "127.0.0.1".to_owned());
            published.insert(number, format!("{host}:{host_port}"));
        }
    }
    ContainerInfo {
        id: response.id.unwrap_or_default(),
        running: state.running.unwrap_or(false),
        status,
        labels: response.config.and_then(|config| config.labels).unwrap_or_default(),
        published,
        pid: state.pid.and_then(|pid| u32::try_from(pid).ok()).filter(|pid| *pid > 0),
    }
}
