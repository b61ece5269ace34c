//! The shape of the config: every section and key with its type and default. Serde
//! rejects unknown keys in every section; ranges and relations are `validate`'s job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::domain::Transition;
use crate::planner::snapshot::{Fraction, GcBasis};

use super::duration::HumanDuration;
use super::templates;

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
    pub synchronous: crate::domain::Synchronous,
    /// How long a connection waits for a lock held by another process.
    pub busy_timeout: HumanDuration,
    /// Read-only connections kept open for queries.
    pub read_connections: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            synchronous: crate::domain::Synchronous::Full,
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
    /// A prebuild whose readiness probe has failed this long is deleted and replaced.
    pub unhealthy_replace_after: HumanDuration,
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
            unhealthy_replace_after: HumanDuration::from_secs(
                crate::planner::snapshot::DEFAULT_UNHEALTHY_REPLACE_AFTER_S,
            ),
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
    /// On shutdown, how long running jobs may go on before they are stopped and recorded
    /// `interrupted` (re-queued at the next start). Keep `drain_timeout + kill_grace` below
    /// the unit's `TimeoutStopSec`.
    pub drain_timeout: HumanDuration,
    /// Largest fraction of the workers prebuild jobs may hold (at least one worker).
    pub prebuild_share: f64,
    /// Log bytes kept per job; output past it is dropped with one notice.
    pub max_log_bytes: u64,
    /// How often idle workers look for jobs enqueued by other processes.
    pub poll_interval: HumanDuration,
    /// How often jobs left running by a dead process are failed.
    pub orphan_check_interval: HumanDuration,
    pub local: LocalBackendConfig,
    /// The container backend (`provisioner = "container"` templates).
    pub container: crate::config::container::ContainerBackendConfig,
    /// External provisioners by profile name (`[provisioner.exec.NAME]`).
    pub exec: BTreeMap<String, ExecBackendConfig>,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            concurrency: 4,
            job_timeout: HumanDuration::from_secs(30 * 60),
            kill_grace: HumanDuration::from_secs(5),
            drain_timeout: HumanDuration::from_secs(20),
            prebuild_share: 0.5,
            max_log_bytes: 1 << 20,
            poll_interval: HumanDuration::from_secs(1),
            orphan_check_interval: HumanDuration::from_secs(60),
            local: LocalBackendConfig::default(),
            container: crate::config::container::ContainerBackendConfig::default(),
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

impl Config {
    /// Time between iterations of `kind`.
    pub fn interval(&self, kind: crate::domain::LoopKind) -> std::time::Duration {
        use crate::domain::LoopKind;
        match kind {
            LoopKind::Reconciler => self.reconciler.interval.as_duration(),
            LoopKind::Lifecycle => self.lifecycle.interval.as_duration(),
            LoopKind::Gc => self.gc.interval.as_duration(),
        }
    }

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
                unhealthy_replace_after_s: reconciler.unhealthy_replace_after.as_secs(),
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
}

#[cfg(test)]
impl WebhookConfig {
    /// A valid webhook for tests to change one field of.
    pub(crate) fn example() -> WebhookConfig {
        WebhookConfig {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![],
            secret: "0123456789abcdef".into(),
            max_attempts: 5,
            initial_backoff: super::duration::HumanDuration::from_secs(5),
            max_backoff: super::duration::HumanDuration::from_secs(60),
            timeout: super::duration::HumanDuration::from_secs(10),
        }
    }
}
