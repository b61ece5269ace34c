//! The container backend's settings: `[provisioner.container]` (which engine, where ports
//! are published) and the workspace description a template gives in `provisioner_config`
//! when it says `provisioner = "container"` (image, command, env, home volume, ports,
//! limits, labels, readiness probe), with its validation and placeholder expansion.
//!
//! Pure: parsing, checking and expanding; talking to the engine is
//! `provisioner::container`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::config::duration::HumanDuration;

/// The backend name a template selects (`provisioner = "container"`).
pub const CONTAINER_BACKEND: &str = "container";

/// `[provisioner.container]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerBackendConfig {
    /// `"auto"` (the first of /var/run/docker.sock, /run/podman/podman.sock,
    /// $XDG_RUNTIME_DIR/podman/podman.sock that exists) or `"unix:///path/to.sock"`.
    pub socket: String,
    /// The host address published ports bind to, and the host of app URLs.
    pub host_address: String,
    /// How long one engine request may take.
    pub request_timeout: HumanDuration,
}

impl Default for ContainerBackendConfig {
    fn default() -> Self {
        ContainerBackendConfig {
            socket: "auto".to_owned(),
            host_address: "127.0.0.1".to_owned(),
            request_timeout: HumanDuration::from_secs(120),
        }
    }
}

impl ContainerBackendConfig {
    /// Checks the section; `(key, reason)` on a problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.socket != "auto" {
            let path = self.socket.strip_prefix("unix://").unwrap_or("");
            if !path.starts_with('/') {
                return Err((
                    "provisioner.container.socket",
                    format!("{:?} is not \"auto\" or unix:///absolute/path", self.socket),
                ));
            }
        }
        if self.host_address.parse::<std::net::IpAddr>().is_err() {
            return Err((
                "provisioner.container.host_address",
                format!("{:?} is not an IP address", self.host_address),
            ));
        }
        let timeout = self.request_timeout.as_secs();
        if !(1..=3600).contains(&timeout) {
            return Err((
                "provisioner.container.request_timeout",
                format!("{} is out of range; use 1s to 1h", self.request_timeout),
            ));
        }
        Ok(())
    }

    /// The socket paths `auto` tries, in order.
    pub fn candidate_sockets(&self, xdg_runtime_dir: Option<&str>) -> Vec<String> {
        if let Some(path) = self.socket.strip_prefix("unix://") {
            return vec![path.to_owned()];
        }
        let mut paths =
            vec!["/var/run/docker.sock".to_owned(), "/run/podman/podman.sock".to_owned()];
        if let Some(dir) = xdg_runtime_dir.filter(|dir| !dir.is_empty()) {
            paths.push(format!("{dir}/podman/podman.sock"));
        }
        paths
    }
}

/// A template's workspace as a container (`provisioner_config` of a `container` template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// The image, e.g. `"localhost/workspace:1"`; pulled when missing and the engine can.
    pub image: String,
    /// Replaces the image's command (placeholders allowed).
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables (placeholders allowed in values).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the workspace's home volume is mounted (also `$HOME`).
    #[serde(default = "default_home")]
    pub home: String,
    /// Named container ports (TCP) to publish on the host address; each becomes an app.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Per-app settings, keyed by a port name: `apps.web.share = "authenticated"`.
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
    /// Report established TCP connections to the container's ports (ones that bypass
    /// the app proxy: SSH, an IDE) as activity with source `backend`, at the health
    /// monitor's interval.
    #[serde(default)]
    pub connection_activity: bool,
    /// Memory limit: bytes, or a number with k, m or g (binary units), e.g. `"512m"`.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. 1.5.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Process limit.
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// Extra labels on the container and the volume (not `io.workspaced.*`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The readiness probe; absent = ready once the container runs.
    #[serde(default)]
    pub ready: Option<ProbeSpec>,
}

/// How an app (a published port) is offered through the app proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// `owner` (default) or `authenticated` (any logged-in user of the organization).
    #[serde(default)]
    pub share: crate::domain::AppShare,
}

/// How workspaced checks that a workspace answers (it runs the probe itself: engine
/// HEALTHCHECKs do not run under Podman without systemd).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// An HTTP URL that must answer 2xx or 3xx; `{port.NAME}` is the published address
    /// of a port, e.g. `"http://{port.web}/healthz"`.
    #[serde(default)]
    pub http: Option<String>,
    /// A port name whose published address must accept a TCP connection.
    #[serde(default)]
    pub tcp: Option<String>,
    /// A command run inside the container that must exit 0.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// Failures in this time after a start do not count.
    #[serde(default)]
    pub start_period: HumanDuration,
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive failures that make the workspace unhealthy (or fail its start build).
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
}

/// Which check a probe runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    Http(String),
    Tcp(String),
    Exec(Vec<String>),
}

impl ProbeSpec {
    /// The one check the probe declares (validation made sure there is exactly one).
    pub fn check(&self) -> Option<ProbeCheck> {
        match (&self.http, &self.tcp, &self.exec) {
            (Some(url), None, None) => Some(ProbeCheck::Http(url.clone())),
            (None, Some(port), None) => Some(ProbeCheck::Tcp(port.clone())),
            (None, None, Some(command)) => Some(ProbeCheck::Exec(command.clone())),
            _ => None,
        }
    }
}

fn default_home() -> String {
    "/home/workspace".to_owned()
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(3)
}

fn default_threshold() -> u32 {
    3
}

/// The placeholders of one workspace. The identity a claim changes (name, owner) is kept
/// apart: a value that uses it is never part of the container's spec (it would force a
/// recreate on every claim); the backend writes such env variables to
/// `$HOME/.workspaced/env` at every start instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placeholders {
    pub workspace_id: String,
    pub template_name: String,
    pub template_version: String,
    pub parameters: BTreeMap<String, String>,
    /// `None` while expanding the container spec: identity placeholders stay as written.
    pub identity: Option<Identity>,
}

/// What a claim changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub workspace_name: String,
    pub owner_name: String,
    pub owner_id: String,
}

/// Whether a checked value uses `{workspace.name}`, `{owner.name}` or `{owner.id}`.
pub fn uses_identity(text: &str) -> bool {
    placeholder_names(text).is_ok_and(|names| names.iter().any(|name| CLAIM_CHANGES.contains(name)))
}

/// A problem in a spec: the key below `provisioner_config` and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SpecProblem {
    pub key: String,
    pub reason: String,
}

fn problem(key: impl Into<String>, reason: impl Into<String>) -> SpecProblem {
    SpecProblem { key: key.into(), reason: reason.into() }
}

/// Reads a spec from a template's `provisioner_config` (the key is reported by path).
pub fn parse_spec(
    config: &serde_json::Map<String, serde_json::Value>,
) -> Result<ContainerSpec, SpecProblem> {
    let value = serde_json::Value::Object(config.clone());
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let key = if path == "." { String::new() } else { path };
        problem(key, error.into_inner().to_string())
    })
}

/// Checks a parsed spec against the template's parameter names.
pub fn check_spec(spec: &ContainerSpec, parameters: &BTreeSet<String>) -> Result<(), SpecProblem> {
    if spec.image.trim().is_empty() {
        return Err(problem("image", "must not be empty"));
    }
    for (index, word) in spec.command.iter().enumerate() {
        check_placeholders(word, parameters, false)
            .map_err(|reason| problem(format!("command[{index}]"), reason))?;
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains('=') {
            return Err(problem(format!("env.{name}"), "is not a variable name"));
        }
        check_placeholders(value, parameters, true)
            .map_err(|reason| problem(format!("env.{name}"), reason))?;
    }
    if !spec.home.starts_with('/') || spec.home == "/" {
        return Err(problem(
            "home",
            format!("{:?} is not an absolute directory below /", spec.home),
        ));
    }
    for (name, port) in &spec.ports {
        if !is_name(name) {
            return Err(problem(
                format!("ports.{name}"),
                "a port name is lowercase letters, digits and -",
            ));
        }
        if *port == 0 {
            return Err(problem(format!("ports.{name}"), "0 is not a port"));
        }
    }
    if let Some(name) = spec.apps.keys().find(|name| !spec.ports.contains_key(*name)) {
        return Err(problem(format!("apps.{name}"), format!("{name:?} names no entry of ports")));
    }
    if let Some(memory) = &spec.memory {
        parse_memory(memory).map_err(|reason| problem("memory", reason))?;
    }
    if let Some(cpus) = spec.cpus
        && !(cpus > 0.0 && cpus <= 1024.0)
    {
        return Err(problem(
            "cpus",
            format!("{cpus} is out of range; use more than 0 and at most 1024"),
        ));
    }
    if let Some(pids) = spec.pids_limit
        && pids < 1
    {
        return Err(problem("pids_limit", format!("{pids} is out of range; use at least 1")));
    }
    if let Some(key) = spec.labels.keys().find(|key| key.starts_with("io.workspaced.")) {
        return Err(problem(
            format!("labels.{key}"),
            "io.workspaced.* labels are the daemon's own",
        ));
    }
    if let Some(probe) = &spec.ready {
        check_probe(probe, spec).map_err(|(key, reason)| problem(format!("ready{key}"), reason))?;
    }
    Ok(())
}

fn check_probe(probe: &ProbeSpec, spec: &ContainerSpec) -> Result<(), (String, String)> {
    let Some(check) = probe.check() else {
        return Err((String::new(), "declare exactly one of http, tcp or exec".to_owned()));
    };
    match check {
        ProbeCheck::Http(url) => {
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| (".http".to_owned(), format!("{url:?} is not an http:// URL")))?;
            for name in port_references(rest) {
                if !spec.ports.contains_key(name) {
                    return Err((
                        ".http".to_owned(),
                        format!("{{port.{name}}} names no entry of ports"),
                    ));
                }
            }
        }
        ProbeCheck::Tcp(port) => {
            if !spec.ports.contains_key(&port) {
                return Err((".tcp".to_owned(), format!("{port:?} names no entry of ports")));
            }
        }
        ProbeCheck::Exec(command) => {
            if command.is_empty() {
                return Err((".exec".to_owned(), "must name a command".to_owned()));
            }
        }
    }
    let within = |key: &str, value: HumanDuration, min: u64, max: u64| {
        if (min..=max).contains(&value.as_secs()) {
            Ok(())
        } else {
            Err((key.to_owned(), format!("{value} is out of range; use {min}s to {max}s")))
        }
    };
    within(".interval", probe.interval, 1, 3600)?;
    within(".timeout", probe.timeout, 1, 600)?;
    within(".start_period", probe.start_period, 0, 86_400)?;
    if !(1..=100).contains(&probe.failure_threshold) {
        return Err((
            ".failure_threshold".to_owned(),
            format!("{} is out of range; use 1 to 100", probe.failure_threshold),
        ));
    }
    Ok(())
}

/// The names in `{port.NAME}` references of `text`.
pub fn port_references(text: &str) -> impl Iterator<Item = &str> {
    text.split("{port.").skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

const PLACEHOLDERS: [&str; 3] = ["workspace.id", "template.name", "template.version"];
const CLAIM_CHANGES: [&str; 3] = ["workspace.name", "owner.name", "owner.id"];

/// Checks the `{…}` placeholders of one value; `{{` is a literal brace.
fn check_placeholders(
    text: &str,
    parameters: &BTreeSet<String>,
    identity_allowed: bool,
) -> Result<(), String> {
    for name in placeholder_names(text)? {
        if PLACEHOLDERS.contains(&name) {
            continue;
        }
        if let Some(parameter) = name.strip_prefix("param.") {
            if parameters.contains(parameter) {
                continue;
            }
            return Err(format!("{{{name}}} names no parameter of the template"));
        }
        if CLAIM_CHANGES.contains(&name) {
            if identity_allowed {
                continue;
            }
            return Err(format!(
                "{{{name}}} changes when a prebuild is claimed and would force a new container; \
                 use it in env (written to $HOME/.workspaced/env) or read $HOME/.workspaced/identity"
            ));
        }
        return Err(format!(
            "unknown placeholder {{{name}}}; use {}, or {{param.NAME}}",
            PLACEHOLDERS.map(|name| format!("{{{name}}}")).join(", ")
        ));
    }
    Ok(())
}

fn placeholder_names(text: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(['{', '}']) {
        let (brace, after) = (&rest[start..start + 1], &rest[start + 1..]);
        if after.starts_with(brace) {
            rest = &after[1..];
            continue;
        }
        if brace == "}" {
            return Err(format!("{text:?} has an unmatched }}; write }}}} for a literal one"));
        }
        let end = after.find('}').ok_or_else(|| format!("{text:?} has an unclosed {{"))?;
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// Expands the placeholders of a checked value.
pub fn expand(text: &str, values: &Placeholders) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(['{', '}']) {
        out.push_str(&rest[..start]);
        let (brace, after) = (&rest[start..start + 1], &rest[start + 1..]);
        if after.starts_with(brace) || brace == "}" {
            out.push_str(brace);
            rest = after.strip_prefix(brace).unwrap_or(after);
            continue;
        }
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        match name {
            "workspace.id" => out.push_str(&values.workspace_id),
            "template.name" => out.push_str(&values.template_name),
            "template.version" => out.push_str(&values.template_version),
            "workspace.name" | "owner.name" | "owner.id" if values.identity.is_some() => {
                let identity = values.identity.as_ref().map(|identity| match name {
                    "workspace.name" => &identity.workspace_name,
                    "owner.name" => &identity.owner_name,
                    _ => &identity.owner_id,
                });
                out.push_str(identity.map_or("", String::as_str));
            }
            _ => match name.strip_prefix("param.").and_then(|name| values.parameters.get(name)) {
                Some(value) => out.push_str(value),
                None => {
                    let _ = write!(out, "{{{name}}}");
                }
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `"512m"` → 536870912.
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((index, _)) => text.split_at(index),
        None => (text, ""),
    };
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?} has an unknown unit; use a number with k, m or g")),
    };
    let value: i64 = digits.parse().map_err(|_| format!("{text:?} is not a size like \"512m\""))?;
    let bytes = value.checked_mul(1 << shift).filter(|bytes| *bytes <= 1 << 50);
    match bytes {
        Some(bytes) if bytes >= 6 << 20 => Ok(bytes),
        Some(_) => Err(format!("{text:?} is below the engines' minimum of 6m")),
        None => Err(format!("{text:?} is too large; use at most 1024t")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<ContainerSpec, SpecProblem> {
        let map = json.as_object().cloned().unwrap_or_default();
        let spec = parse_spec(&map)?;
        check_spec(&spec, &BTreeSet::from(["size".to_owned()]))?;
        Ok(spec)
    }

    #[test]
    fn a_full_spec_parses_and_expands() {
        let spec = spec(serde_json::json!({
            "image": "localhost/ws:1",
            "command": ["httpd", "-p", "8080", "--id={workspace.id}"],
            "env": { "SIZE": "{param.size}", "BRACES": "{{literal}}" },
            "ports": { "web": 8080 },
            "memory": "512m",
            "ready": { "http": "http://{port.web}/healthz", "interval": "2s" },
        }))
        .unwrap();
        assert_eq!(spec.home, "/home/workspace");
        let values = Placeholders {
            workspace_id: "w1".into(),
            parameters: BTreeMap::from([("size".to_owned(), "large".to_owned())]),
            ..Placeholders::default()
        };
        assert_eq!(expand(&spec.command[3], &values), "--id=w1");
        assert_eq!(expand(&spec.env["SIZE"], &values), "large");
        assert_eq!(expand(&spec.env["BRACES"], &values), "{literal}");
        assert!(
            uses_identity("hi {owner.name}") && !uses_identity("{workspace.id} {{owner.name}}")
        );
        let claimed = Placeholders {
            identity: Some(Identity { owner_name: "ana".into(), ..Identity::default() }),
            ..values.clone()
        };
        assert_eq!(expand("hi {owner.name}", &claimed), "hi ana");
        assert_eq!(expand("hi {owner.name}", &values), "hi {owner.name}");
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(
            spec.ready.and_then(|probe| probe.check()),
            Some(ProbeCheck::Http("http://{port.web}/healthz".into()))
        );
    }

    #[test]
    fn problems_name_the_key() {
        let cases = [
            (serde_json::json!({}), "", "missing field `image`"),
            (serde_json::json!({"image": "i", "ports": {"web": "x"}}), "ports.web", "invalid type"),
            (
                serde_json::json!({"image": "i", "command": ["--as={owner.name}"]}),
                "command[0]",
                "claimed",
            ),
            (
                serde_json::json!({"image": "i", "env": {"A": "{param.nope}"}}),
                "env.A",
                "no parameter",
            ),
            (serde_json::json!({"image": "i", "command": ["{oops"]}), "command[0]", "unclosed"),
            (serde_json::json!({"image": "i", "memory": "12q"}), "memory", "unknown unit"),
            (
                serde_json::json!({"image": "i", "ready": {"tcp": "ssh"}}),
                "ready.tcp",
                "names no entry",
            ),
            (serde_json::json!({"image": "i", "ready": {}}), "ready", "exactly one"),
            (
                serde_json::json!({"image": "i", "ports": {"web": 80}, "apps": {"ide": {}}}),
                "apps.ide",
                "names no entry of ports",
            ),
            (
                serde_json::json!({"image": "i", "ports": {"web": 80}, "apps": {"web": {"share": "public"}}}),
                "apps.web.share",
                "unknown variant",
            ),
            (
                serde_json::json!({"image": "i", "labels": {"io.workspaced.x": "1"}}),
                "labels.io.workspaced.x",
                "daemon's own",
            ),
            (serde_json::json!({"image": "i", "colour": "red"}), "colour", "unknown field"),
        ];
        for (json, key, reason) in cases {
            let error = spec(json.clone()).unwrap_err();
            assert_eq!(error.key, key, "{json}: {error}");
            assert!(error.reason.contains(reason), "{json}: {error}");
        }
    }

    #[test]
    fn auto_tries_docker_then_podman_sockets() {
        let config = ContainerBackendConfig::default();
        assert_eq!(
            config.candidate_sockets(Some("/run/user/1000")),
            [
                "/var/run/docker.sock",
                "/run/podman/podman.sock",
                "/run/user/1000/podman/podman.sock"
            ]
        );
        let fixed = ContainerBackendConfig { socket: "unix:///tmp/p.sock".into(), ..config };
        assert_eq!(fixed.candidate_sockets(None), ["/tmp/p.sock"]);
        assert!(ContainerBackendConfig { socket: "tcp://x".into(), ..fixed }.check().is_err());
    }
}
