//! Config reloads (SIGHUP): re-read, validate, apply the templates in one transaction,
//! then hand the new config to everything that watches it; on any failure the old one
//! stays in force.

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{self, Config, ConfigError, ConfigSource};
use crate::metrics::ConfigMetrics;
use crate::store::{Store, StoreError};
use crate::systemd::Notifier;
use crate::telemetry::LogControl;
use crate::templates::{self, ApplyReport};

/// Re-reads the config, applies its templates and hands it to everything that watches it.
#[derive(Clone)]
pub struct Reloader {
    pub(super) source: ConfigSource,
    pub(super) config: watch::Sender<Arc<Config>>,
    pub(super) store: Store,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) metrics: ConfigMetrics,
    pub(super) log: Option<LogControl>,
    pub(super) gc_trigger: Arc<tokio::sync::Notify>,
    pub(super) notifier: Arc<Notifier>,
}

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot apply [[templates]] to the database")]
    Apply(#[source] StoreError),
}

impl Reloader {
    /// Asks the GC loop for an immediate run (SIGUSR1).
    pub fn trigger_gc(&self) {
        self.gc_trigger.notify_one();
    }

    /// Loads and validates the config, applies its templates in one transaction, then
    /// switches to it. On any failure nothing changes: the old config stays in force.
    pub async fn reload(&self) -> Result<ApplyReport, ReloadError> {
        self.notifier.reloading();
        let result = self.try_reload().await;
        if result.is_err() {
            self.metrics.reload_failures.inc();
        }
        // Running again either way: on the new config, or on the old one.
        self.notifier.ready();
        result
    }

    async fn try_reload(&self) -> Result<ApplyReport, ReloadError> {
        let new = config::load(&self.source)?;
        self.apply(new).await
    }

    /// Applies an already validated config (its templates, then everything else).
    pub async fn apply(&self, new: Config) -> Result<ApplyReport, ReloadError> {
        let report = apply_templates(&self.store, &self.clock, &self.metrics, &new)
            .await
            .map_err(ReloadError::Apply)?;
        let old = Arc::clone(&self.config.borrow());
        if new.server != old.server
            || new.storage != old.storage
            || new.log.format != old.log.format
            || new.log.file != old.log.file
            || new.provisioner.concurrency != old.provisioner.concurrency
        {
            tracing::warn!(
                "[server], [storage], log.format, [log.file] and provisioner.concurrency changes take effect only after a restart"
            );
        }
        if new.log.level != old.log.level
            && let Some(log) = &self.log
        {
            match log.set_level(&new.log.level) {
                Ok(true) => tracing::info!(level = %new.log.level, "log level changed"),
                Ok(false) => tracing::info!("RUST_LOG is set: it keeps overriding log.level"),
                Err(error) => {
                    tracing::warn!(error = %crate::error::error_chain(&error), "cannot change the log level")
                }
            }
        }
        self.config.send_replace(Arc::new(new));
        Ok(report)
    }
}

/// Applies `config`'s templates and records the outcome in the config metrics.
pub(super) async fn apply_templates(
    store: &Store,
    clock: &Arc<dyn Clock>,
    metrics: &ConfigMetrics,
    config: &Config,
) -> Result<ApplyReport, StoreError> {
    let desired = templates::desired(config);
    let count = desired.len();
    let now = clock.now();
    let report = store.write(move |tx| templates::apply(tx, &desired, now)).await?;
    metrics.templates.set(i64::try_from(count).unwrap_or(i64::MAX));
    metrics.last_reload_success.set(now.timestamp());
    if !report.is_empty() {
        tracing::info!(
            created = ?report.created,
            updated = ?report.updated,
            new_versions = ?report.versions_created,
            deleted = ?report.deleted,
            "templates applied"
        );
    }
    Ok(report)
}
