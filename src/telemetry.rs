//! Logging: tracing to stdout (text for journald and people, or JSON), plus an optional
//! rolling file written by tracing-appender's non-blocking writer.
//!
//! Owns subscriber setup only. The returned guard must live as long as the process logs:
//! dropping it flushes the file writer.

use std::io::IsTerminal;
use std::path::PathBuf;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Keeps the file writer alive; drop it last.
#[must_use = "dropping the guard stops the log file writer"]
pub struct TelemetryGuard {
    _file: Option<WorkerGuard>,
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter_text = std::env::var("RUST_LOG").ok().filter(|value| !value.is_empty());
    let filter_text = filter_text.unwrap_or_else(|| config.level.clone());
    let filter = |text: &str| {
        EnvFilter::try_new(text)
            .map_err(|source| TelemetryError::Filter { filter: text.to_owned(), source })
    };

    let stdout = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().flatten_event(false).boxed(),
    };
    let stdout = stdout.with_filter(filter(&filter_text)?);

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
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter(&filter_text)?);
        (Some(layer), Some(guard))
    };

    tracing_subscriber::registry()
        .with(stdout)
        .with(file_layer)
        .try_init()
        .map_err(TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { _file: file_guard })
}
