//! The daemon's configuration: built-in defaults, then one TOML file, then `WORKSPACED_*`
//! environment variables (`WORKSPACED_<SECTION>__<KEY>`), merged by figment into `Config`.
//!
//! Owns loading, typed defaults and validation. Every error names the key, the value where
//! there is one, and the source (file path or environment variable). It must not touch the
//! database or start anything: a config is checked completely before it is used.

pub mod duration;
pub mod templates;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::Transition;
use crate::planner::snapshot::{Fraction, GcBasis};
use duration::HumanDuration;

/// The config file used when `--config` is not given and this file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/workspaced/workspaced.toml";

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "WORKSPACED_";

/// The whole configuration. Every section and key has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub outbox: OutboxConfig,
    pub reconciler: ReconcilerConfig,
    pub lifecycle: LifecycleConfig,
    pub gc: GcConfig,
    pub retention: RetentionConfig,
    pub provisioner: ProvisionerConfig,
    pub api: ApiConfig,
    /// Webhooks (`[[webhooks]]`): events POSTed, signed, to HTTP receivers.
    pub webhooks: Vec<WebhookConfig>,
    /// Templates and presets (`[[templates]]`), applied to the database on start and on
    /// every reload.
    pub templates: Vec<templates::TemplateConfig>,
}

/// How long history is kept (`[retention]`): nothing the daemon writes grows without
/// bound. Rows are pruned in bounded batches by a periodic task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Time between pruning runs.
    pub interval: HumanDuration,
    /// Rows deleted per statement (each batch is its own short write transaction).
    pub batch_size: u32,
    /// Delivered outbox events (the event stream's replay window).
    pub events: HumanDuration,
    /// Logs, timings and resources of finished jobs.
    pub job_logs: HumanDuration,
    /// The audit log.
    pub audit_log: HumanDuration,
    /// Sent or failed notifications and delivered or dead webhook deliveries.
    pub deliveries: HumanDuration,
    /// Deleted workspaces' rows and build history.
    pub deleted_workspaces: HumanDuration,
    /// Failed prebuilds beyond the newest few of each preset are deleted after this.
    pub failed_prebuilds: HumanDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval: HumanDuration::from_secs(600),
            batch_size: 1000,
            events: HumanDuration::from_secs(7 * 86_400),
            job_logs: HumanDuration::from_secs(30 * 86_400),
            audit_log: HumanDuration::from_secs(365 * 86_400),
            deliveries: HumanDuration::from_secs(30 * 86_400),
            deleted_workspaces: HumanDuration::from_secs(90 * 86_400),
            failed_prebuilds: HumanDuration::from_secs(86_400),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP server (`/healthz`, `/readyz`, `/metrics`, the API). Port 0
    /// picks a free port; the daemon logs the address it bound.
    pub listen: SocketAddr,
    /// How long shutdown waits for requests and loops to finish before giving up.
    pub shutdown_grace: HumanDuration,
    /// A loop iteration running longer than this counts as stuck: the systemd watchdog is
    /// no longer pinged (so systemd restarts the service) and it shows in
    /// `workspaced_loop_heartbeat_age_seconds`.
    pub loop_stall_timeout: HumanDuration,
    /// A connection that has not sent a complete request head within this time (a new
    /// one, an idle keep-alive one, or one sending a byte a second) is closed.
    pub header_read_timeout: HumanDuration,
    /// Open connections at most; more are closed at once. Keep it well below the file
    /// descriptor limit (the unit sets LimitNOFILE=65536).
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2118)),
            shutdown_grace: HumanDuration::from_secs(8),
            loop_stall_timeout: HumanDuration::from_secs(300),
            header_read_timeout: HumanDuration::from_secs(10),
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Holds the database (`workspaced.db`) and the local backend's workspace directories.
    /// A relative path is relative to the daemon's working directory.
    pub data_dir: PathBuf,
    /// SQLite `synchronous` pragma. `full` survives power loss; `normal` is faster.
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout: HumanDuration,
    /// Read-only connections kept open for queries.
    pub read_connections: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            synchronous: Synchronous::Full,
            busy_timeout: HumanDuration::from_secs(5),
            read_connections: 4,
        }
    }
}

impl StorageConfig {
    /// The SQLite file inside `data_dir`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("workspaced.db")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `workspaced=debug,info`). `RUST_LOG`, when set, wins.
    pub level: String,
    /// `text` for people and journald, `json` for log shippers.
    pub format: LogFormat,
    pub file: LogFileConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
            file: LogFileConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// An optional rolling log file, written by a non-blocking background writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFileConfig {
    /// Directory for `workspaced.<date>.log` files; empty = no log file (stdout only).
    pub directory: PathBuf,
    pub rotation: LogRotation,
    /// How many rotated files to keep; older ones are removed.
    pub max_files: usize,
}

impl Default for LogFileConfig {
    fn default() -> Self {
        LogFileConfig { directory: PathBuf::new(), rotation: LogRotation::Daily, max_files: 7 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// The publisher wakes at once after a commit of this process; this poll also picks up
    /// events written by other processes (CLI commands) and retries after errors.
    pub poll_interval: HumanDuration,
    /// Events read and published per batch.
    pub batch_size: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { poll_interval: HumanDuration::from_secs(5), batch_size: 256 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerConfig {
    /// Time between reconcile cycles; the first one runs one interval after start.
    pub interval: HumanDuration,
    /// Upper bound for any preset's (or schedule's) prebuild instances.
    pub max_instances_per_preset: u32,
    /// Prebuild creates queued but not started, at most, over all presets: a cycle
    /// queues only what fits, so a big pool fills at the runner's pace instead of
    /// queueing thousands of jobs (which a lowered count would then have to cancel).
    pub max_queued_creates: u32,
    /// Backoff after failed prebuild builds: this long per failure in the lookback window.
    pub backoff_interval: HumanDuration,
    /// How far back failed prebuild builds count for the backoff.
    pub backoff_lookback: HumanDuration,
    /// A preset whose newest N prebuild builds all failed gets no more; 0 disables.
    pub failure_hard_limit: u32,
    /// Stop reconcile cycles (claims go on).
    pub paused: bool,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            interval: HumanDuration::from_secs(60),
            max_instances_per_preset: 100,
            max_queued_creates: 32,
            backoff_interval: HumanDuration::from_secs(60),
            backoff_lookback: HumanDuration::from_secs(3600),
            failure_hard_limit: 3,
            paused: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Time between lifecycle ticks.
    pub interval: HumanDuration,
    /// Workspaces processed at once in a tick.
    pub concurrency: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig { interval: HumanDuration::from_secs(60), concurrency: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Whether the garbage collector runs at all.
    pub enabled: bool,
    /// Time between GC runs.
    pub interval: HumanDuration,
    /// Age after which a workspace is deleted.
    pub ttl: HumanDuration,
    /// What the age is measured from: `last_activity` or `creation`.
    pub basis: GcBasis,
    /// A workspace is warned this long before it is deleted.
    pub warn_before: HumanDuration,
    /// Activity this recent protects a workspace.
    pub active_grace: HumanDuration,
    /// A run that would delete more than this fraction of all workspaces deletes none.
    pub max_delete_fraction: Fraction,
    /// A run that would delete more than this many workspaces deletes none.
    pub max_deletions_per_run: u64,
    /// Judge and report, but warn and delete nothing.
    pub dry_run: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: false,
            interval: HumanDuration::from_secs(30 * 60),
            ttl: HumanDuration::from_secs(336 * 3600),
            basis: GcBasis::LastActivity,
            warn_before: HumanDuration::from_secs(24 * 3600),
            active_grace: HumanDuration::from_secs(15 * 60),
            max_delete_fraction: Fraction::from_decimal(25, 2),
            max_deletions_per_run: 100,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// The event stream sends a comment this often so proxies keep it open.
    pub events_keepalive: HumanDuration,
    /// Requests per second one token may make on average (429 with Retry-After past it).
    pub rate_limit: u32,
    /// Requests one token may make at once before the rate applies.
    pub rate_burst: u32,
    /// Open streams (event stream, log follows) per token.
    pub max_streams_per_token: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1 << 20,
            events_keepalive: HumanDuration::from_secs(15),
            rate_limit: 50,
            rate_burst: 200,
            max_streams_per_token: 8,
        }
    }
}

/// One webhook receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name; deliveries and the dead-letter list are kept per name.
    pub name: String,
    /// `http://host:port/path` (plain HTTP; put a TLS-terminating relay in front for
    /// remote receivers).
    pub url: String,
    /// Event kinds to send (`build.failed`, or a family: `build.*`); empty = all.
    #[serde(default)]
    pub events: Vec<String>,
    /// HMAC-SHA256 key for the `X-Workspaced-Signature` header.
    pub secret: String,
    /// Attempts before a delivery becomes a dead letter.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles with every further attempt.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// One attempt fails after this long.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
}

fn default_max_attempts() -> u32 {
    8
}

fn default_initial_backoff() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl WebhookConfig {
    /// Whether events of `kind` go to this webhook.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty()
            || self.events.iter().any(|filter| match filter.strip_suffix(".*") {
                Some(family) => kind.split_once('.').is_some_and(|(prefix, _)| prefix == family),
                None => filter == kind,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionerConfig {
    /// Jobs run at the same time.
    pub concurrency: usize,
    /// A job still running after this is stopped and fails.
    pub job_timeout: HumanDuration,
    /// Time a stopped backend gets between SIGTERM and SIGKILL.
    pub kill_grace: HumanDuration,
    /// Largest fraction of the workers prebuild jobs may hold (at least one worker).
    pub prebuild_share: f64,
    /// Log bytes kept per job; output past it is dropped with one notice.
    pub max_log_bytes: u64,
    /// How often idle workers look for jobs enqueued by other processes.
    pub poll_interval: HumanDuration,
    /// How often jobs left running by a dead process are failed.
    pub orphan_check_interval: HumanDuration,
    pub local: LocalBackendConfig,
    /// External provisioners by profile name (`[provisioner.exec.NAME]`).
    pub exec: BTreeMap<String, ExecBackendConfig>,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            concurrency: 4,
            job_timeout: HumanDuration::from_secs(30 * 60),
            kill_grace: HumanDuration::from_secs(5),
            prebuild_share: 0.5,
            max_log_bytes: 1 << 20,
            poll_interval: HumanDuration::from_secs(1),
            orphan_check_interval: HumanDuration::from_secs(60),
            local: LocalBackendConfig::default(),
            exec: BTreeMap::new(),
        }
    }
}

impl ProvisionerConfig {
    /// How many workers prebuild jobs may hold at once.
    pub fn max_prebuild_jobs(&self) -> usize {
        // Truncation is intended: the share is a ceiling, and at least one worker builds
        // prebuilds so a pool can fill on a one-worker host.
        ((self.concurrency as f64 * self.prebuild_share) as usize).max(1)
    }

    /// Workers that take a pending prebuild job before anyone else's: one when there are
    /// two or more workers (the rest serve people first), none on a one-worker host.
    pub fn reserved_prebuild_jobs(&self) -> usize {
        usize::from(self.concurrency >= 2).min(self.max_prebuild_jobs())
    }
}

/// The built-in backend: a directory per workspace under `<data_dir>/workspaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalBackendConfig {
    /// How long each build takes (a stand-in for real provisioning work).
    pub build_duration: HumanDuration,
    /// Transitions that fail on purpose, for demos and tests (e.g. `["start"]`).
    pub fail_transitions: Vec<Transition>,
}

impl Default for LocalBackendConfig {
    fn default() -> Self {
        LocalBackendConfig {
            build_duration: HumanDuration::from_secs(1),
            fail_transitions: Vec::new(),
        }
    }
}

/// An external provisioner executable speaking the JSON-lines protocol
/// (docs/provisioner-protocol.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBackendConfig {
    pub command: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default: the daemon's.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// Bytes of stdout (and, separately, stderr) accepted per job.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
}

fn default_max_output_bytes() -> u64 {
    16 << 20
}

/// Where the config came from: a file (maybe none) plus the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The TOML file, or `None` for built-in defaults plus environment only.
    pub file: Option<PathBuf>,
}

impl ConfigSource {
    /// `--config PATH` when given; otherwise the default path if it exists; otherwise none.
    pub fn resolve(explicit: Option<&Path>) -> ConfigSource {
        match explicit {
            Some(path) => ConfigSource { file: Some(path.to_path_buf()) },
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_PATH);
                ConfigSource { file: default.exists().then_some(default) }
            }
        }
    }

    /// Names the source for messages: the file path or "built-in defaults".
    pub fn describe(&self) -> String {
        match &self.file {
            Some(path) => path.display().to_string(),
            None => "built-in defaults".to_owned(),
        }
    }
}

/// A config that cannot be used. `source` is the file path or the environment variable,
/// `key` the dotted key path (`server.listen`), `reason` what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    /// The line of the key in the file, when the file has it.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ": line {line}")?;
        }
        match &self.key {
            Some(key) => write!(f, ": key `{key}`: {}", self.reason),
            None => write!(f, ": {}", self.reason),
        }
    }
}

impl ConfigError {
    pub fn metric_label(&self) -> &'static str {
        if self.key.is_some() { "invalid_value" } else { "unreadable" }
    }

    fn in_file(path: &Path, key: Option<&str>, reason: impl Into<String>) -> Self {
        ConfigError {
            source_name: path.display().to_string(),
            line: None,
            key: key.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// Loads and validates the configuration from `source` and the process environment.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    let mut text = None;
    if let Some(path) = &source.file {
        // figment silently skips a missing file; an operator who named a file wants it.
        text = Some(std::fs::read_to_string(path).map_err(|error| {
            ConfigError::in_file(path, None, format!("cannot read config file: {error}"))
        })?);
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(env_provider());
    let with_line = |mut error: ConfigError| {
        if error.line.is_none()
            && let (Some(text), Some(key), Some(path)) = (&text, &error.key, &source.file)
            && error.source_name == path.display().to_string()
        {
            error.line = line_of(text, key);
        }
        error
    };
    let config: Config =
        figment.extract().map_err(|error| with_line(from_figment(source, error)))?;
    config.validate(source).map_err(with_line)?;
    Ok(config)
}

/// `WORKSPACED_SERVER__LISTEN=…` → `server.listen`. `WORKSPACED_CONFIG` names the file
/// itself (read by the CLI), so it is not a key.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__")
}

fn from_figment(source: &ConfigSource, error: figment::Error) -> ConfigError {
    // figment chains several errors; the first is the one to fix first.
    let error = error.into_iter().next().unwrap_or_else(|| figment::Error::from("unknown error"));
    let path = error.path.clone();
    let key = (!path.is_empty()).then(|| key_path(&path));
    let source_name = match &error.metadata {
        Some(metadata) => match &metadata.source {
            Some(figment::Source::File(file)) => file.display().to_string(),
            _ if metadata.name.contains("environment") => match &key {
                Some(_) => format!(
                    "environment variable {ENV_PREFIX}{}",
                    path.iter().map(|part| part.to_uppercase()).collect::<Vec<_>>().join("__")
                ),
                None => "environment".to_owned(),
            },
            _ => source.describe(),
        },
        None => source.describe(),
    };
    let reason = match &error.kind {
        figment::error::Kind::UnknownField(field, _) => format!("unknown key `{field}`"),
        kind => one_line(&kind.to_string()),
    };
    ConfigError { source_name, line: None, key, reason }
}

/// `["templates", "0", "name"]` → `templates[0].name`.
fn key_path(parts: &[String]) -> String {
    let mut key = String::new();
    for part in parts {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// The line of `key` (`templates[0].presets[1].name`) in the TOML `text`, or of the
/// deepest part of it that exists.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    let mut span = None;
    for segment in key.split('.') {
        let (name, indexes) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            let table = item.as_table_like()?;
            let (key, value) = match table.get_key_value(name) {
                Some(found) => found,
                None => break,
            };
            span = key.span().or_else(|| value.span()).or(span);
            item = value;
        }
        for index in indexes.split(['[', ']']).filter(|part| !part.is_empty()) {
            let index: usize = index.parse().ok()?;
            let Some(next) = item.get(index) else { break };
            span = next.span().or(span);
            item = next;
        }
    }
    let offset = span?.start;
    Some(text.get(..offset)?.matches('\n').count() + 1)
}

/// Folds a multi-line message (TOML parse errors draw the offending line with a caret)
/// into one line: the snippet is dropped, the position and the explanation are kept.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains('|'))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// The planner settings this config stands for (planner.md §1 `settings`).
    pub fn planner_settings(&self) -> crate::planner::snapshot::Settings {
        use crate::planner::snapshot::{GcSettings, ReconcilerSettings, Settings};
        let reconciler = &self.reconciler;
        let gc = &self.gc;
        Settings {
            reconciler: ReconcilerSettings {
                backoff_interval_s: reconciler.backoff_interval.as_secs(),
                backoff_lookback_s: reconciler.backoff_lookback.as_secs(),
                failure_hard_limit: u64::from(reconciler.failure_hard_limit),
                paused: reconciler.paused,
            },
            gc: gc.enabled.then(|| GcSettings {
                enabled: true,
                ttl_s: gc.ttl.as_secs(),
                basis: gc.basis,
                warn_before_s: gc.warn_before.as_secs(),
                active_grace_s: gc.active_grace.as_secs(),
                max_delete_fraction: gc.max_delete_fraction,
                max_deletions_per_run: gc.max_deletions_per_run,
            }),
        }
    }

    /// Checks what types cannot: ranges and relations between keys.
    fn validate(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: String| ConfigError {
            source_name: source.describe(),
            line: None,
            key: Some(key.to_owned()),
            reason,
        };
        let at_least_one_second = [
            ("reconciler.interval", self.reconciler.interval),
            ("lifecycle.interval", self.lifecycle.interval),
            ("gc.interval", self.gc.interval),
            ("retention.interval", self.retention.interval),
            ("outbox.poll_interval", self.outbox.poll_interval),
            ("provisioner.job_timeout", self.provisioner.job_timeout),
            ("provisioner.poll_interval", self.provisioner.poll_interval),
            ("provisioner.orphan_check_interval", self.provisioner.orphan_check_interval),
        ];
        for (key, value) in at_least_one_second {
            if value.as_secs() < 1 {
                return Err(fail(key, format!("{value} is too short; use at least 1s")));
            }
        }
        if !(1..=100_000).contains(&self.retention.batch_size) {
            return Err(fail(
                "retention.batch_size",
                format!("{} is out of range; use 1 to 100000", self.retention.batch_size),
            ));
        }
        let retention = &self.retention;
        for (key, value) in [
            ("retention.events", retention.events),
            ("retention.job_logs", retention.job_logs),
            ("retention.audit_log", retention.audit_log),
            ("retention.deliveries", retention.deliveries),
            ("retention.deleted_workspaces", retention.deleted_workspaces),
            ("retention.failed_prebuilds", retention.failed_prebuilds),
        ] {
            if value.as_secs() < 3_600 {
                return Err(fail(key, format!("{value} is too short; keep history at least 1h")));
            }
        }
        if self.gc.ttl.as_secs() < templates::MIN_GC_TTL_SECS {
            return Err(fail("gc.ttl", templates::gc_ttl_too_short(self.gc.ttl)));
        }
        if self.server.loop_stall_timeout.as_secs() < 1 {
            return Err(fail("server.loop_stall_timeout", "must be at least 1s".to_owned()));
        }
        if self.server.header_read_timeout.as_secs() < 1 {
            return Err(fail("server.header_read_timeout", "must be at least 1s".to_owned()));
        }
        if !(16..=1_000_000).contains(&self.server.max_connections) {
            return Err(fail(
                "server.max_connections",
                format!("{} is out of range; use 16 to 1000000", self.server.max_connections),
            ));
        }
        if self.server.shutdown_grace.as_secs() < 1 {
            return Err(fail("server.shutdown_grace", "must be at least 1s".to_owned()));
        }
        if !(1..=64).contains(&self.storage.read_connections) {
            return Err(fail(
                "storage.read_connections",
                format!("{} is out of range; use 1 to 64", self.storage.read_connections),
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(fail("storage.data_dir", "must not be empty".to_owned()));
        }
        if !(1..=10_000).contains(&self.outbox.batch_size) {
            return Err(fail(
                "outbox.batch_size",
                format!("{} is out of range; use 1 to 10000", self.outbox.batch_size),
            ));
        }
        if !(1..=256).contains(&self.lifecycle.concurrency) {
            return Err(fail(
                "lifecycle.concurrency",
                format!("{} is out of range; use 1 to 256", self.lifecycle.concurrency),
            ));
        }
        let provisioner = &self.provisioner;
        if !(1..=256).contains(&provisioner.concurrency) {
            return Err(fail(
                "provisioner.concurrency",
                format!("{} is out of range; use 1 to 256", provisioner.concurrency),
            ));
        }
        if !(provisioner.prebuild_share > 0.0 && provisioner.prebuild_share <= 1.0) {
            return Err(fail(
                "provisioner.prebuild_share",
                format!(
                    "{} is out of range; use a fraction above 0 and at most 1",
                    provisioner.prebuild_share
                ),
            ));
        }
        if provisioner.max_log_bytes < 1024 {
            return Err(fail("provisioner.max_log_bytes", "must be at least 1024".to_owned()));
        }
        for (name, exec) in &provisioner.exec {
            let key = |field: &str| format!("provisioner.exec.{name}.{field}");
            if name == "local" || name.is_empty() {
                return Err(fail(
                    &format!("provisioner.exec.{name}"),
                    "this name is reserved for the built-in backend".to_owned(),
                ));
            }
            if exec.command.as_os_str().is_empty() {
                return Err(fail(&key("command"), "must not be empty".to_owned()));
            }
            if exec.max_output_bytes < 1024 {
                return Err(fail(&key("max_output_bytes"), "must be at least 1024".to_owned()));
            }
        }
        if !(1..=10_000).contains(&self.reconciler.max_queued_creates) {
            return Err(fail(
                "reconciler.max_queued_creates",
                format!("{} is out of range; use 1 to 10000", self.reconciler.max_queued_creates),
            ));
        }
        let max_instances = self.reconciler.max_instances_per_preset;
        if max_instances > 10_000 {
            return Err(fail(
                "reconciler.max_instances_per_preset",
                format!("{max_instances} is out of range; use at most 10000"),
            ));
        }
        let exec_profiles = self.provisioner.exec.keys().cloned().collect();
        templates::validate(&self.templates, &exec_profiles, max_instances)
            .map_err(|problem| fail(&problem.key, problem.reason))?;
        if !(1024..=(64 << 20)).contains(&self.api.max_body_bytes) {
            return Err(fail(
                "api.max_body_bytes",
                format!("{} is out of range; use 1024 to 67108864", self.api.max_body_bytes),
            ));
        }
        if !(1..=100_000).contains(&self.api.rate_limit) {
            return Err(fail(
                "api.rate_limit",
                format!(
                    "{} is out of range; use 1 to 100000 requests per second",
                    self.api.rate_limit
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.api.rate_burst) {
            return Err(fail(
                "api.rate_burst",
                format!("{} is out of range; use 1 to 1000000", self.api.rate_burst),
            ));
        }
        if !(1..=1024).contains(&self.api.max_streams_per_token) {
            return Err(fail(
                "api.max_streams_per_token",
                format!("{} is out of range; use 1 to 1024", self.api.max_streams_per_token),
            ));
        }
        if self.api.events_keepalive.as_secs() < 1 {
            return Err(fail("api.events_keepalive", "must be at least 1s".to_owned()));
        }
        let mut webhook_names = std::collections::BTreeSet::new();
        for (index, webhook) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("webhooks[{index}].{field}");
            if let Err(reason) = crate::webhooks::validate(webhook) {
                return Err(fail(&key(reason.field), reason.reason));
            }
            if !webhook_names.insert(webhook.name.as_str()) {
                return Err(fail(
                    &key("name"),
                    format!("duplicate webhook name {:?}", webhook.name),
                ));
            }
        }
        if self.log.file.max_files == 0 {
            return Err(fail("log.file.max_files", "must be at least 1".to_owned()));
        }
        if let Err(error) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(fail("log.level", format!("invalid filter {:?}: {error}", self.log.level)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workspaced.toml");
        std::fs::write(&path, toml).unwrap();
        load(&ConfigSource { file: Some(path) })
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(load_str("").unwrap(), Config::default());
    }

    #[test]
    fn durations_and_addresses_are_parsed() {
        let config = load_str(
            "[server]\nlisten = \"0.0.0.0:9000\"\n[reconciler]\ninterval = \"2m30s\"\n[gc]\ninterval = \"1d\"\n",
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.reconciler.interval.as_secs(), 150);
        assert_eq!(config.gc.interval.as_secs(), 86_400);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_path_and_file() {
        let error = load_str("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("server.lisen"));
        assert!(error.source_name.ends_with("workspaced.toml"), "{error}");
        assert!(error.to_string().contains("unknown key `lisen`"), "{error}");
    }

    #[test]
    fn a_bad_duration_names_key_and_value() {
        let error = load_str("[lifecycle]\ninterval = \"5 minutes\"\n").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("lifecycle.interval"));
        assert!(error.reason.contains("5 minutes"), "{error}");
    }

    #[test]
    fn a_zero_interval_is_rejected() {
        let error = load_str("[gc]\ninterval = \"0s\"\n").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("gc.interval"));
    }

    #[test]
    fn durations_past_one_hundred_years_are_rejected_with_the_key() {
        for (toml, key) in [
            (
                "[[templates]]\nname = \"t\"\ndefault_ttl = \"100000000d\"\n",
                "templates[0].default_ttl",
            ),
            ("[gc]\ninterval = \"100000000d\"\n", "gc.interval"),
            ("[reconciler]\nbackoff_lookback = \"36501d\"\n", "reconciler.backoff_lookback"),
            ("[gc]\nttl = \"100000000d\"\n", "gc.ttl"),
        ] {
            let error = load_str(toml).unwrap_err();
            assert_eq!(error.key.as_deref(), Some(key), "{error}");
            assert!(error.reason.contains("100 years"), "{error}");
        }
        assert!(load_str("[gc]\ninterval = \"36500d\"\n").is_ok());
    }

    #[test]
    fn a_gc_ttl_below_an_hour_is_rejected() {
        let error = load_str("[gc]\nttl = \"0s\"\n").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("gc.ttl"), "{error}");
        let error =
            load_str("[[templates]]\nname = \"t\"\n[templates.gc]\nttl = \"59m\"\n").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("templates[0].gc.ttl"), "{error}");
        assert!(load_str("[gc]\nttl = \"1h\"\nwarn_before = \"30m\"\n").is_ok());
    }

    #[test]
    fn a_bad_enum_value_lists_the_choices() {
        let error = load_str("[storage]\nsynchronous = \"sometimes\"\n").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("storage.synchronous"));
        assert!(error.reason.contains("sometimes") && error.reason.contains("full"), "{error}");
    }

    #[test]
    fn template_problems_name_the_key_path_and_line() {
        let toml = r#"
[[templates]]
name = "go"
  [[templates.parameters]]
  name = "cpu"
  type = "number"
  default = "2"
  [[templates.presets]]
  name = "small"
  parameters = { cpu = "2" }
  [[templates.presets]]
  name = "big"
  parameters = { cpu = "many" }
"#;
        let error = load_str(toml).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("templates[0].presets[1].parameters.cpu"));
        assert_eq!(error.line, Some(13), "{error}");
        assert!(error.reason.contains("is not a number"), "{error}");
    }

    #[test]
    fn unknown_keys_inside_templates_are_located() {
        let toml = "[[templates]]\nname = \"go\"\n\n[[templates]]\nname = \"py\"\nprovisoner = \"local\"\n";
        let error = load_str(toml).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("templates[1].provisoner"), "{error}");
        assert_eq!(error.line, Some(6), "{error}");
    }

    #[test]
    fn schedules_are_checked_for_zone_cron_overlap_and_caps() {
        let base = |prebuilds: &str| {
            format!(
                "[[templates]]\nname = \"go\"\n[[templates.presets]]\nname = \"p\"\n[templates.presets.prebuilds]\n{prebuilds}"
            )
        };
        let key = |prebuilds: &str| load_str(&base(prebuilds)).unwrap_err().key.unwrap();
        assert_eq!(
            key("instances = 1\ntimezone = \"Mars/Base\"\n"),
            "templates[0].presets[0].prebuilds.timezone"
        );
        assert_eq!(
            key(
                "instances = 1\ntimezone = \"UTC\"\n[[templates.presets.prebuilds.schedule]]\ncron = \"0 8 * * *\"\ninstances = 2\n"
            ),
            "templates[0].presets[0].prebuilds.schedule[0].cron"
        );
        assert_eq!(
            key(
                "instances = 1\ntimezone = \"UTC\"\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 8-12 * * *\"\ninstances = 2\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 12-18 * * *\"\ninstances = 2\n"
            ),
            "templates[0].presets[0].prebuilds.schedule"
        );
        assert_eq!(key("instances = 101\n"), "templates[0].presets[0].prebuilds.instances");
        assert_eq!(key("instances = -1\n"), "templates[0].presets[0].prebuilds.instances");
        assert_eq!(
            key(
                "instances = 1\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 8 * * *\"\ninstances = 2\n"
            ),
            "templates[0].presets[0].prebuilds.timezone"
        );
        let ok = base(
            "instances = 1\ntimezone = \"Europe/Berlin\"\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 8-18 * * 1-5\"\ninstances = 3\n",
        );
        assert_eq!(
            load_str(&ok).unwrap().templates[0].presets[0].prebuilds.as_ref().unwrap().schedule[0]
                .instances,
            3
        );
    }

    #[test]
    fn duplicate_names_and_unknown_provisioners_are_rejected() {
        let key = |toml: &str| load_str(toml).unwrap_err().key.unwrap();
        assert_eq!(
            key("[[templates]]\nname = \"a\"\n[[templates]]\nname = \"a\"\n"),
            "templates[1].name"
        );
        assert_eq!(
            key("[[templates]]\nname = \"a\"\nprovisioner = \"docker\"\n"),
            "templates[0].provisioner"
        );
        assert_eq!(
            key(
                "[[templates]]\nname = \"a\"\n[[templates.presets]]\nname = \"p\"\nparameters = { ram = \"1\" }\n"
            ),
            "templates[0].presets[0].parameters.ram"
        );
        assert_eq!(
            key("[[templates]]\nname = \"a\"\nautostart_days = [\"funday\"]\n"),
            "templates[0].autostart_days"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_not_the_defaults() {
        let error =
            load(&ConfigSource { file: Some(PathBuf::from("/nonexistent/workspaced.toml")) })
                .unwrap_err();
        assert!(error.to_string().starts_with("/nonexistent/workspaced.toml: cannot read"));
    }
}
