//! Logging: tracing to stdout (text for journald and people, or JSON), plus an optional
//! rolling file written by tracing-appender's non-blocking writer.
//!
//! Owns subscriber setup only. The returned guard must live as long as the process logs:
//! dropping it flushes the file writer.

use std::io::IsTerminal;
use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat, LogRotation};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log.level: invalid filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("log.file.directory: cannot create {path}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log.file.directory: cannot open a log file in {path}")]
    File {
        path: PathBuf,
        #[source]
        source: tracing_appender::rolling::InitError,
    },
    #[error("cannot change the log level: {0}")]
    Reload(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the file writer alive; drop it last.
#[must_use = "dropping the guard stops the log file writer"]
pub struct TelemetryGuard {
    _file: Option<WorkerGuard>,
    control: LogControl,
}

impl TelemetryGuard {
    /// Changes the log level at run time (config reload).
    pub fn control(&self) -> LogControl {
        self.control.clone()
    }
}

/// Changes the active log filter without a restart.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it keeps winning over the config.
    pinned_by_env: bool,
}

impl LogControl {
    /// Applies `level` (a filter like `info` or `workspaced=debug,info`); returns false
    /// when `RUST_LOG` pins the level.
    pub fn set_level(&self, level: &str) -> Result<bool, TelemetryError> {
        if self.pinned_by_env {
            return Ok(false);
        }
        let filter = EnvFilter::try_new(level)
            .map_err(|source| TelemetryError::Filter { filter: level.to_owned(), source })?;
        self.handle.reload(filter).map_err(|error| TelemetryError::Reload(error.to_string()))?;
        Ok(true)
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) -> Result<TelemetryGuard, TelemetryError> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|value| !value.is_empty());
    let pinned_by_env = from_env.is_some();
    let filter_text = from_env.unwrap_or_else(|| config.level.clone());
    let filter = EnvFilter::try_new(&filter_text)
        .map_err(|source| TelemetryError::Filter { filter: filter_text.clone(), source })?;
    let (filter, handle) = reload::Layer::new(filter);

    let stdout = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(false).boxed(),
    };

    let (file_layer, file_guard) = if config.file.directory.as_os_str().is_empty() {
        (None, None)
    } else {
        let directory = &config.file.directory;
        std::fs::create_dir_all(directory)
            .map_err(|source| TelemetryError::Directory { path: directory.clone(), source })?;
        let rotation = match config.file.rotation {
            LogRotation::Hourly => Rotation::HOURLY,
            LogRotation::Daily => Rotation::DAILY,
            LogRotation::Never => Rotation::NEVER,
        };
        let appender = RollingFileAppender::builder()
            .rotation(rotation)
            .filename_prefix("workspaced")
            .filename_suffix("log")
            .max_log_files(config.file.max_files)
            .build(directory)
            .map_err(|source| TelemetryError::File { path: directory.clone(), source })?;
        let (writer, guard) = tracing_appender::non_blocking(appender);
        let layer = tracing_subscriber::fmt::layer().json().with_writer(writer);
        (Some(layer), Some(guard))
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(stdout)
        .with(file_layer)
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { _file: file_guard, control: LogControl { handle, pinned_by_env } })
}
