//! The built-in `container` backend: a workspace is one container `wsd-<id>` and one
//! named volume `wsd-<id>-home` on Docker or Podman (through its Docker-compatible API).
//!
//! `start` creates what is missing, starts the container and waits for the readiness
//! probe; `stop` stops the container and keeps both objects; `delete` removes both and is
//! idempotent. Objects are found by name and checked by label, never guessed. A start
//! whose spec changed (new template version, other parameters) recreates the container,
//! keeps the volume, and reports the recreate as a resource replacement. A claim changes
//! only the identity (owner, name): it is written to `$HOME/.workspaced/identity` in the
//! running container, which is never recreated for it.

pub mod connections;
pub mod engine;
pub mod orphans;
pub mod probe;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::container::{
    ContainerBackendConfig, ContainerSpec, Identity, Placeholders, expand, parse_memory,
    parse_spec, uses_identity,
};
use crate::domain::job::SuccessReport;
use crate::domain::{Agent, App, LogLevel, LogLine, Replacement, Resource, Transition};
use crate::provisioner::protocol::JobRequest;
use crate::provisioner::{Backend, BoxFuture, JobIo, ProvisionerError};
use engine::{
    Engine, EngineError, INSTALLATION, MANAGED, SPEC, SPEC_HASH, TEMPLATE_VERSION, WORKSPACE_ID,
};

pub use crate::config::container::CONTAINER_BACKEND;

pub struct ContainerBackend {
    config: ContainerBackendConfig,
    kill_grace: Duration,
    job_timeout: Duration,
    /// The `io.workspaced.installation` label of every object it creates.
    installation: String,
}

/// How long before the job timeout a start stops waiting for its probe.
const PROBE_MARGIN: Duration = Duration::from_secs(2);

impl ContainerBackend {
    pub fn new(
        config: ContainerBackendConfig,
        kill_grace: Duration,
        job_timeout: Duration,
        installation: String,
    ) -> Self {
        ContainerBackend { config, kill_grace, job_timeout, installation }
    }
}

impl Backend for ContainerBackend {
    fn run<'a>(
        &'a self,
        request: &'a JobRequest,
        io: JobIo,
    ) -> BoxFuture<'a, Result<SuccessReport, ProvisionerError>> {
        Box::pin(async move {
            let cancel = io.cancel.clone();
            tokio::select! {
                () = cancel.cancelled() => Err(ProvisionerError::Canceled),
                result = self.build(request, &io) => result,
            }
        })
    }
}

impl From<EngineError> for ProvisionerError {
    fn from(error: EngineError) -> Self {
        ProvisionerError::Engine(error.to_string())
    }
}

/// The create-time description of a container: what the spec hash covers.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Canonical {
    pub image: String,
    pub command: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub home: String,
    pub ports: BTreeMap<String, u16>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub host_address: String,
}

impl Canonical {
    /// The spec with this workspace's placeholders expanded.
    pub fn new(
        spec: &ContainerSpec,
        values: &Placeholders,
        host_address: &str,
    ) -> Result<Canonical, String> {
        // Variables that use the identity go to $HOME/.workspaced/env, not the spec.
        let mut env: BTreeMap<String, String> = spec
            .env
            .iter()
            .filter(|(_, value)| !uses_identity(value))
            .map(|(name, value)| (name.clone(), expand(value, values)))
            .collect();
        env.insert("HOME".to_owned(), spec.home.clone());
        env.insert("WORKSPACED_WORKSPACE_ID".to_owned(), values.workspace_id.clone());
        Ok(Canonical {
            image: spec.image.clone(),
            command: spec.command.iter().map(|word| expand(word, values)).collect(),
            entrypoint: spec.entrypoint.clone(),
            env,
            home: spec.home.clone(),
            ports: spec.ports.clone(),
            memory: spec.memory.as_deref().map(parse_memory).transpose()?,
            nano_cpus: spec.cpus.map(|cpus| (cpus * 1e9) as i64),
            pids_limit: spec.pids_limit,
            labels: spec.labels.clone(),
            host_address: host_address.to_owned(),
        })
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.json().as_bytes());
        digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect()
    }

    /// The top-level keys whose values differ from `old` (all of them when `old` is not
    /// a spec this version understands).
    pub fn changed_keys(&self, old: &str) -> Vec<String> {
        let new = serde_json::to_value(self).unwrap_or_default();
        let old: serde_json::Value = serde_json::from_str(old).unwrap_or_default();
        let Some(new) = new.as_object() else { return Vec::new() };
        new.iter()
            .filter(|(key, value)| old.get(key.as_str()) != Some(value))
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn labels(
        &self,
        workspace_id: &str,
        version_id: &str,
        installation: &str,
    ) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        labels.insert(MANAGED.to_owned(), "true".to_owned());
        labels.insert(INSTALLATION.to_owned(), installation.to_owned());
        labels.insert(WORKSPACE_ID.to_owned(), workspace_id.to_owned());
        labels.insert(TEMPLATE_VERSION.to_owned(), version_id.to_owned());
        labels
    }

    fn create_body(
        &self,
        workspace_id: &str,
        version_id: &str,
        installation: &str,
    ) -> ContainerCreateBody {
        let mut labels = self.labels(workspace_id, version_id, installation);
        labels.insert(SPEC_HASH.to_owned(), self.hash());
        labels.insert(SPEC.to_owned(), self.json());
        let port_key = |port: &u16| format!("{port}/tcp");
        let bindings = self
            .ports
            .values()
            .map(|port| {
                let binding = PortBinding {
                    host_ip: Some(self.host_address.clone()),
                    host_port: Some(String::new()),
                };
                (port_key(port), Some(vec![binding]))
            })
            .collect();
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            entrypoint: self.entrypoint.clone(),
            env: Some(self.env.iter().map(|(name, value)| format!("{name}={value}")).collect()),
            working_dir: Some(self.home.clone()),
            labels: Some(labels),
            exposed_ports: Some(self.ports.values().map(port_key).collect()),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{}", engine::volume_name(workspace_id), self.home)]),
                port_bindings: Some(bindings),
                memory: self.memory,
                nano_cpus: self.nano_cpus,
                pids_limit: self.pids_limit,
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// `$HOME/.workspaced/identity` (the values a claim changes, as shell assignments) and
/// `$HOME/.workspaced/env` (`export` lines of the env variables that use them, expanded
/// with this start's identity) as a tar archive to unpack at the home directory.
pub fn identity_archive(
    request: &JobRequest,
    spec: &ContainerSpec,
    values: &Placeholders,
) -> std::io::Result<Vec<u8>> {
    let quote = |value: &str| format!("'{}'", value.replace('\'', r"'\''"));
    let workspace = &request.workspace;
    let text = format!(
        "WORKSPACE_ID={}\nWORKSPACE_NAME={}\nWORKSPACE_OWNER={}\nWORKSPACE_OWNER_ID={}\nWORKSPACE_ORGANIZATION={}\n",
        quote(&workspace.id),
        quote(&workspace.name),
        quote(&workspace.owner_name),
        quote(&workspace.owner_id),
        quote(&workspace.organization_name),
    );
    let mut archive = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    archive.append_data(&mut dir, ".workspaced/", std::io::empty())?;
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(text.len() as u64);
    archive.append_data(&mut file, ".workspaced/identity", text.as_bytes())?;
    let exports: String = spec
        .env
        .iter()
        .filter(|(_, value)| uses_identity(value))
        .map(|(name, value)| format!("export {name}={}\n", quote(&expand(value, values))))
        .collect();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(exports.len() as u64);
    archive.append_data(&mut file, ".workspaced/env", exports.as_bytes())?;
    archive.into_inner()
}

impl ContainerBackend {
    async fn build(
        &self,
        request: &JobRequest,
        io: &JobIo,
    ) -> Result<SuccessReport, ProvisionerError> {
        // The probe gives up just before the job timeout, so the build fails with the
        // probe's last error rather than a bare timeout.
        let deadline =
            Instant::now() + self.job_timeout.saturating_sub(PROBE_MARGIN).max(PROBE_MARGIN);
        let log = |level, output: String| {
            let logs = io.logs.clone();
            async move {
                let _ = logs.send(LogLine::new(level, "apply", output)).await;
            }
        };
        let engine = Engine::connect(&self.config).await?;
        let id = &request.workspace.id;
        let name = engine::container_name(id);
        let volume = engine::volume_name(id);
        match request.transition {
            Transition::Stop => {
                let grace = i32::try_from(self.kill_grace.as_secs()).unwrap_or(i32::MAX);
                engine.stop(&name, grace).await?;
                log(LogLevel::Info, format!("container {name} stopped; volume {volume} kept"))
                    .await;
                Ok(SuccessReport { state: request.state.clone(), ..SuccessReport::default() })
            }
            Transition::Delete => {
                engine.remove_container(&name).await?;
                engine.remove_volume(&volume).await?;
                log(LogLevel::Info, format!("container {name} and volume {volume} removed")).await;
                Ok(SuccessReport::default())
            }
            Transition::Start => self.start(request, &engine, &log, deadline).await,
        }
    }

    async fn start<F, Fut>(
        &self,
        request: &JobRequest,
        engine: &Engine,
        log: &F,
        deadline: Instant,
    ) -> Result<SuccessReport, ProvisionerError>
    where
        F: Fn(LogLevel, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let config = request.config.as_object().cloned().unwrap_or_default();
        let spec = parse_spec(&config).map_err(|problem| {
            ProvisionerError::Reported(format!("provisioner_config.{problem}"))
        })?;
        let values = Placeholders {
            workspace_id: request.workspace.id.clone(),
            template_name: request.template.name.clone(),
            template_version: request.template.version_name.clone(),
            parameters: request.parameters.clone(),
            identity: None,
        };
        let canonical = Canonical::new(&spec, &values, &self.config.host_address)
            .map_err(ProvisionerError::Reported)?;
        let id = &request.workspace.id;
        let name = engine::container_name(id);
        let volume = engine::volume_name(id);
        let version = &request.template.version_id;
        let mut replacements = Vec::new();

        if engine.ensure_image(&canonical.image).await? {
            log(LogLevel::Info, format!("pulled image {}", canonical.image)).await;
        }
        engine.ensure_volume(&volume, canonical.labels(id, version, &self.installation)).await?;
        let existing = engine.inspect(&name).await?;
        if let Some(found) = &existing
            && found.labels.get(WORKSPACE_ID) != Some(id)
        {
            return Err(ProvisionerError::Engine(format!(
                "a container named {name} exists that workspaced did not create for this workspace"
            )));
        }
        let hash = canonical.hash();
        let reuse =
            existing.as_ref().is_some_and(|found| found.labels.get(SPEC_HASH) == Some(&hash));
        if existing.is_some() && !reuse {
            let old = existing
                .as_ref()
                .and_then(|found| found.labels.get(SPEC))
                .cloned()
                .unwrap_or_default();
            let paths = canonical.changed_keys(&old);
            log(
                LogLevel::Warn,
                format!("container {name} is recreated: its spec changed ({})", paths.join(", ")),
            )
            .await;
            engine.remove_container(&name).await?;
            replacements.push(Replacement { resource: "container".to_owned(), paths });
        }
        if !reuse {
            engine.create(&name, canonical.create_body(id, version, &self.installation)).await?;
            log(LogLevel::Info, format!("created container {name} from {}", canonical.image)).await;
        }
        let personal = Placeholders {
            identity: Some(Identity {
                workspace_name: request.workspace.name.clone(),
                owner_name: request.workspace.owner_name.clone(),
                owner_id: request.workspace.owner_id.clone(),
            }),
            ..values.clone()
        };
        let identity = identity_archive(request, &spec, &personal).map_err(|source| {
            ProvisionerError::Io { what: "cannot build the identity file".to_owned(), source }
        })?;
        engine.upload(&name, &spec.home, identity).await?;
        engine.start(&name).await?;
        let info = engine.inspect(&name).await?.ok_or_else(|| {
            ProvisionerError::Engine(format!("container {name} vanished after its start"))
        })?;
        if !info.running {
            return Err(ProvisionerError::Engine(format!(
                "container {name} is {} right after its start",
                info.status
            )));
        }
        let addresses = probe::addresses(&spec, &info);
        if let Some(ready) = &spec.ready {
            let every = probe::start_interval(ready);
            let started = Instant::now();
            let mut logged = None;
            loop {
                match probe::check_once(engine, &name, ready, &addresses).await {
                    Ok(()) => break,
                    Err(error) if Instant::now() + every >= deadline => {
                        return Err(ProvisionerError::ProbeFailed(error));
                    }
                    Err(error) => {
                        // Each new reason once in the build log, not every second.
                        if logged.as_ref() != Some(&error) {
                            log(
                                LogLevel::Info,
                                format!("waiting for the readiness probe: {error}"),
                            )
                            .await;
                            logged = Some(error);
                        }
                        tokio::time::sleep(every).await;
                    }
                }
            }
            log(
                LogLevel::Info,
                format!("readiness probe passed after {:.1}s", started.elapsed().as_secs_f64()),
            )
            .await;
        }
        let apps = addresses
            .iter()
            .map(|(port, address)| App {
                name: port.clone(),
                url: format!("http://{address}/"),
                share: spec.apps.get(port).map(|app| app.share).unwrap_or_default(),
            })
            .collect::<Vec<_>>();
        let mut apps = apps;
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        let state =
            serde_json::json!({ "container_id": info.id, "container": name, "volume": volume });
        Ok(SuccessReport {
            state: Some(state.to_string()),
            resources: vec![Resource {
                name: name.clone(),
                kind: "container".to_owned(),
                agents: vec![Agent { name: "main".to_owned(), ready: true }],
            }],
            replacements,
            timings: Vec::new(),
            apps,
            probed: spec.ready.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(json: serde_json::Value) -> Canonical {
        let spec = parse_spec(json.as_object().unwrap()).unwrap();
        let values = Placeholders { workspace_id: "w1".into(), ..Placeholders::default() };
        Canonical::new(&spec, &values, "127.0.0.1").unwrap()
    }

    #[test]
    fn the_hash_follows_the_spec_and_names_what_changed() {
        let a = canonical(serde_json::json!({ "image": "i:1", "ports": { "web": 80 } }));
        let b = canonical(serde_json::json!({ "image": "i:2", "ports": { "web": 80 } }));
        assert_eq!(
            a.hash(),
            canonical(serde_json::json!({ "image": "i:1", "ports": { "web": 80 } })).hash()
        );
        assert_ne!(a.hash(), b.hash());
        assert_eq!(b.changed_keys(&a.json()), ["image"]);
        let body = a.create_body("w1", "v1", "i1");
        let labels = body.labels.unwrap();
        assert_eq!(labels[MANAGED], "true");
        assert_eq!(labels[WORKSPACE_ID], "w1");
        assert_eq!(labels[SPEC_HASH], a.hash());
        assert_eq!(labels[INSTALLATION], "i1");
        assert_eq!(body.host_config.unwrap().binds.unwrap(), ["wsd-w1-home:/home/workspace"]);
    }
}
