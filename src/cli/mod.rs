//! The command line: `serve`, `migrate`, `check-config`, `version`. Each subcommand is a
//! plain function of its arguments.
//!
//! Owns argument parsing and the mapping of failures to exit codes (2 = bad config or
//! input, 1 = anything else). Messages go to stderr as one line (printed by `main`); logs
//! go to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod accounts;
mod bench;
mod pool;
mod remote;
mod table;
mod ws;

use crate::app::{App, AppError};
use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::config::{self, ConfigError, ConfigSource};
use crate::planner;
use crate::planner::snapshot::{Snapshot, SnapshotError, rfc3339};
use crate::pools::{self, ResetError};
use crate::signals::Signals;
use crate::store::snapshot as store_snapshot;
use crate::store::{Store, StoreError};
use crate::telemetry::{self, TelemetryError};

#[derive(Debug, Parser)]
#[command(name = "workspaced", version, about = "Keeps developer workspaces alive, warm and tidy")]
pub struct Cli {
    /// The TOML config file [default: /etc/workspaced/workspaced.toml when it exists,
    /// else built-in defaults]
    #[arg(long, global = true, env = "WORKSPACED_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP server, reconciler, lifecycle and GC loops.
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Validate the config and exit 0 (valid) or 2 (invalid).
    CheckConfig,
    /// Print the version.
    Version,
    /// Print what the next reconcile, lifecycle and GC runs would do, and why (JSON).
    Plan {
        /// Plan from this snapshot document instead of the live database.
        #[arg(long, value_name = "FILE")]
        snapshot: Option<PathBuf>,
        /// Plan at this time (RFC 3339) instead of the snapshot's or the current one.
        #[arg(long, value_name = "RFC3339")]
        now: Option<String>,
    },
    /// Snapshot documents of the live database.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Prebuild presets.
    #[command(subcommand)]
    Preset(PresetCommand),
    /// Garbage collector: `--dry-run` previews what a run would do (nothing is written).
    /// To run it now, send SIGUSR1 to the daemon (`systemctl kill -s USR1 workspaced`).
    Gc {
        #[arg(long)]
        dry_run: bool,
    },
    /// API users.
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Workspaces of the running daemon, over its API (token: WORKSPACED_TOKEN or --token-file).
    Ws {
        #[command(flatten)]
        api: ws::ApiArgs,
        #[command(subcommand)]
        command: ws::WsCommand,
    },
    /// Write the man pages (one per command) into a directory; the .deb ships them.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Fleet-scale benchmark: `seed` a data directory, `run` the measurements on it.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Prebuild pools of the running daemon, over its API.
    Pool {
        #[command(flatten)]
        api: ws::ApiArgs,
        #[command(subcommand)]
        command: pool::PoolCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (and grant it a role).
    Create {
        name: String,
        /// owner, template-admin, member or auditor.
        #[arg(long)]
        role: Option<String>,
        /// The organization the role is granted in.
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Suspend, reactivate, re-role or delete a user, over the running daemon's API.
    #[command(flatten)]
    Remote(accounts::UserRemote),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token and print it once (only its hash is stored). With --role, the user is
    /// created if missing and granted the role.
    Create {
        #[arg(long)]
        user: String,
        /// owner, template-admin, member or auditor.
        #[arg(long)]
        role: Option<String>,
        /// The organization the role is granted in.
        #[arg(long, default_value = "default")]
        org: String,
        /// Lifetime (`30d`, `12h`); without it the token lives until revoked.
        #[arg(long)]
        expires: Option<String>,
        /// A label shown by `token list`.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Print the live state as a snapshot document (edit it and feed it to `plan`).
    Export,
}

#[derive(Debug, Subcommand)]
pub enum PresetCommand {
    /// After fixing what made a preset's prebuilds fail: delete its failed prebuilds
    /// (taking them out of the hard-limit window) and clear its hard-limited status.
    Reset {
        /// `TEMPLATE/PRESET` (on the template's active version) or a preset id.
        preset: String,
        /// The template's organization (default: the default organization).
        #[arg(long)]
        org: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    #[error("cannot read snapshot {path}")]
    ReadSnapshot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("--now: invalid RFC3339 time {0:?}")]
    Now(String),
    #[error(transparent)]
    Reset(#[from] ResetError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Bench(bench::BenchError),
    #[error("cannot reach the daemon at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the daemon answered {status}: {message}{}", field.as_ref().map(|field| format!(" (field {field})")).unwrap_or_default())]
    Api { status: u16, message: String, field: Option<String> },
    #[error("build {number} ended {status}")]
    BuildEnded { number: i64, status: String },
    #[error(
        "`workspaced gc` only previews: add --dry-run; to run the GC now send SIGUSR1 to the daemon"
    )]
    GcNeedsDryRun,
}
crate::has_store_error!(CliError, App, Reset);

impl CliError {
    /// 2 for input the operator must fix (config, arguments, a request the API refused),
    /// 3 for a followed build that did not succeed, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { status, .. } if *status < 500 => 2,
            CliError::BuildEnded { .. } => 3,
            CliError::Config(_)
            | CliError::Telemetry(TelemetryError::Filter { .. })
            | CliError::ReadSnapshot { .. }
            | CliError::Snapshot(_)
            | CliError::Now(_)
            | CliError::Reset(ResetError::UnknownPreset(_))
            | CliError::Input(_)
            | CliError::GcNeedsDryRun => 2,
            _ => 1,
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    let source = ConfigSource::resolve(cli.config.as_deref());
    match cli.command {
        Command::Serve => serve(source),
        Command::Migrate => migrate(source),
        Command::CheckConfig => check_config(source),
        Command::Version => print(&format!("workspaced {}", env!("CARGO_PKG_VERSION"))),
        Command::Plan { snapshot, now } => plan(source, snapshot, now),
        Command::Snapshot(SnapshotCommand::Export) => {
            let snapshot = live_snapshot(&source, None)?;
            print_json(&snapshot)
        }
        Command::Preset(PresetCommand::Reset { preset, org }) => {
            preset_reset(source, &preset, org.as_deref())
        }
        Command::Gc { dry_run: true } => gc_preview(source),
        Command::Gc { dry_run: false } => Err(CliError::GcNeedsDryRun),
        Command::User(UserCommand::Create { name, role, org }) => {
            accounts::user_create(source, &name, role.as_deref(), &org)
        }
        Command::User(UserCommand::Remote(command)) => accounts::user(source, command),
        Command::Token(TokenCommand::Create { user, role, org, expires, name }) => {
            accounts::token_create(source, &user, role.as_deref(), &org, expires.as_deref(), &name)
        }
        Command::Token(TokenCommand::List { user }) => {
            accounts::token_list(source, user.as_deref())
        }
        Command::Token(TokenCommand::Revoke { id }) => accounts::token_revoke(source, &id),
        Command::Ws { api, command } => ws::run(source, &api, command),
        Command::Man { out } => man_pages(&out),
        Command::Pool { api, command: pool::PoolCommand::List } => pool::list(source, &api),
        Command::Bench(command) => bench::bench(command),
    }
}

/// The man pages of every command, generated from the CLI definition.
fn man_pages(out: &std::path::Path) -> Result<(), CliError> {
    let failed = |source| CliError::Input(format!("--out {}: {source}", out.display()));
    std::fs::create_dir_all(out).map_err(failed)?;
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(command, out).map_err(failed)?;
    print(&format!("man pages written to {}", out.display()))
}

pub(super) fn open_store(source: &ConfigSource) -> Result<Store, CliError> {
    let config = config::load(source)?;
    open_existing(&config)
}

/// Opens the config's database for writing, which must exist: only `serve` and `migrate`
/// create one, so a command run with the wrong config or from the wrong directory names
/// the path it tried instead of writing into a new empty database.
fn open_existing(config: &config::Config) -> Result<Store, CliError> {
    let options = crate::app::store_options(&config.storage);
    if !options.path.exists() {
        return Err(crate::store::StoreError::Missing { path: options.path }.into());
    }
    Ok(Store::open(options)?.0)
}

/// Prints what the next GC run would do, as a table.
fn gc_preview(source: ConfigSource) -> Result<(), CliError> {
    let mut config = config::load(&source)?;
    let store = Store::open_read_only(crate::app::store_options(&config.storage))?;
    let now = SystemClock.now();
    // The moment an operator wants the preview is before enabling the GC: preview it as
    // enabled, and say so.
    let disabled = !config.gc.enabled;
    config.gc.enabled = true;
    let Some(settings) = config.planner_settings().gc else {
        return print("gc has no settings to preview");
    };
    let data_dir = config.storage.data_dir.clone();
    let plan = store.read_blocking(|conn| crate::gc::plan_run(conn, &settings, &data_dir, now))?;
    let mut lines = Vec::new();
    if disabled {
        lines.push(
            "gc is disabled ([gc] enabled = false); once enabled, a run would do this:".to_owned(),
        );
    }
    lines.push(format!(
        "{:<38} {:<38} {:>10} {:<14} {:<8} {:<7} {}",
        "WORKSPACE", "OWNER", "AGE", "BASIS", "USED VIA", "ACTION", "REASON"
    ));
    // Owners by name: an operator reads names, not ids.
    let mut names = std::collections::HashMap::new();
    for judged in &plan.judged {
        let id = judged.workspace.owner.user_id().to_owned();
        if !names.contains_key(&id) {
            let user = store.read_blocking(|conn| crate::store::users::get(conn, &id))?;
            names.insert(id.clone(), user.map_or(id, |user| user.username));
        }
    }
    for judged in &plan.judged {
        let owner = judged.workspace.owner.user_id();
        let owner = names.get(owner).map_or(owner, String::as_str);
        let action = serde_json::to_value(judged.action.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let reason = judged.action.reason.map(|reason| reason.as_str()).unwrap_or("");
        let age = crate::config::duration::format_duration(std::time::Duration::from_secs(
            judged.action.age_s,
        ));
        // What last reported use: why a workspace counts as active (or not).
        let source = judged.workspace.last_used_source.map_or("-", |source| source.into());
        lines.push(format!(
            "{:<38} {:<38} {:>10} {:<14} {:<8} {:<7} {}",
            judged.workspace.id,
            owner,
            age,
            judged.basis.as_str(),
            source,
            action,
            reason
        ));
    }
    for orphan in &plan.orphans {
        lines.push(format!("orphaned directory (would be removed): {}", orphan.display()));
    }
    #[cfg(feature = "containers")]
    if crate::gc::containers::wanted(&config) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        match runtime.block_on(crate::gc::containers::find(&store, &config)) {
            Ok(found) => lines.extend(found.iter().map(|orphan| {
                format!("orphaned {} (would be removed): {}", orphan.kind, orphan.name)
            })),
            Err(error) => lines.push(format!("container engine not checked for orphans: {error}")),
        }
    }
    lines.push(format!(
        "{} due; safety valve {}",
        plan.judged.len(),
        if plan.safety_valve_tripped { "TRIPPED: this run would delete nothing" } else { "ok" }
    ));
    print(&lines.join("\n"))
}

fn parse_now(now: Option<String>) -> Result<Option<DateTime<Utc>>, CliError> {
    now.map(|text| rfc3339::parse(&text).map_err(|_| CliError::Now(text))).transpose()
}

fn plan(
    source: ConfigSource,
    snapshot: Option<PathBuf>,
    now: Option<String>,
) -> Result<(), CliError> {
    let now = parse_now(now)?;
    let Some(path) = snapshot else {
        // The live database: the plan with names beside ids, from the same read.
        let (store, now, settings) = live_store(&source, now)?;
        let plan = store.read_blocking(|conn| {
            let snapshot = store_snapshot::read(conn, now, settings)?;
            let mut plan =
                serde_json::to_value(planner::plan(&snapshot)).map_err(StoreError::Encode)?;
            crate::store::views::names::annotate(conn, &mut plan)?;
            Ok::<_, StoreError>(plan)
        })?;
        return print_json(&plan);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|source| CliError::ReadSnapshot { path, source })?;
    let mut snapshot = Snapshot::parse(&text)?;
    if let Some(now) = now {
        snapshot.now = now;
    }
    print_json(&planner::plan(&snapshot))
}

/// The live database as a snapshot, opened read-only, at `now` or the current time.
fn live_snapshot(source: &ConfigSource, now: Option<DateTime<Utc>>) -> Result<Snapshot, CliError> {
    let (store, now, settings) = live_store(source, now)?;
    Ok(store.read_blocking(|conn| store_snapshot::read(conn, now, settings))?)
}

/// The live database opened read-only, the time to plan at and the planner's settings.
fn live_store(
    source: &ConfigSource,
    now: Option<DateTime<Utc>>,
) -> Result<(Store, DateTime<Utc>, planner::snapshot::Settings), CliError> {
    let config = config::load(source)?;
    let store = Store::open_read_only(crate::app::store_options(&config.storage))?;
    let now = now.unwrap_or_else(|| SystemClock.now());
    Ok((store, now, config.planner_settings()))
}

fn preset_reset(source: ConfigSource, preset: &str, org: Option<&str>) -> Result<(), CliError> {
    let config = config::load(&source)?;
    let store = open_existing(&config)?;
    let now = SystemClock.now();
    let report = store.write_blocking(|tx| {
        pools::reset_preset(tx, preset, org, &crate::store::audit::Actor::system("cli"), now)
    })?;
    print(&format!(
        "preset {preset} ({}): {} failed prebuild(s) queued for deletion, status cleared (was {})",
        report.preset_id, report.deletes_queued, report.previous_status
    ))
}

pub(super) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| CliError::Stdout(std::io::Error::other(error)))?;
    print(&text)
}

fn serve(source: ConfigSource) -> Result<(), CliError> {
    let config = config::load(&source)?;
    let telemetry = telemetry::init(&config.log)?;
    let log_control = telemetry.control();
    tracing::info!(config = %source.describe(), version = env!("CARGO_PKG_VERSION"), "starting workspaced");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("workspaced")
        .build()
        .map_err(CliError::Runtime)?;
    let result = runtime.block_on(async move {
        // Before anything else: an early SIGHUP or SIGTERM must be handled, not fatal.
        let signals = Signals::register().map_err(CliError::Signals)?;
        let app = App::build(config, source, Arc::new(SystemClock))?
            .with_log_control(log_control)
            .with_notifier(crate::systemd::Notifier::from_env());
        let report = app.open_report();
        tracing::info!(
            addr = %app.local_addr(),
            database = %app.store().path().display(),
            created = report.created,
            schema_version = report.schema_version,
            applied_migrations = ?report.applied_migrations,
            "http server listening"
        );
        let shutdown = CancellationToken::new();
        let signal_task = tokio::spawn(signals.run(shutdown.clone(), app.reloader()));
        let result = app.run(shutdown.clone()).await;
        shutdown.cancel();
        let _ = signal_task.await;
        result.map_err(CliError::from)
    });
    // A blocking database call still running after the grace period is abandoned here.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(telemetry);
    result
}

fn migrate(source: ConfigSource) -> Result<(), CliError> {
    let config = config::load(&source)?;
    // Never migrate under a running daemon.
    let _lock = crate::store::lock::DataDirLock::acquire(&config.storage.data_dir)
        .map_err(AppError::from)?;
    let (store, report) = Store::open(crate::app::store_options(&config.storage))?;
    let applied = if report.applied_migrations.is_empty() {
        "nothing to apply".to_owned()
    } else {
        format!("applied {:?}", report.applied_migrations)
    };
    print(&format!(
        "database {}: schema version {} ({applied})",
        store.path().display(),
        report.schema_version
    ))
}

fn check_config(source: ConfigSource) -> Result<(), CliError> {
    config::load(&source)?;
    print(&format!("config OK: {}", source.describe()))
}

pub(super) fn print(line: &str) -> Result<(), CliError> {
    writeln!(std::io::stdout().lock(), "{line}").map_err(CliError::Stdout)
}
