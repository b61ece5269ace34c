//! Figures of the background loops, the outbox publisher and config loading.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Figures of the background loops, labelled `loop` = reconciler | lifecycle | gc.
#[derive(Clone)]
pub struct LoopMetrics {
    pub runs: IntCounterVec,
    pub errors: IntCounterVec,
    pub duration: HistogramVec,
    pub last_run: IntGaugeVec,
    pub last_success: IntGaugeVec,
    /// Seconds since the loop last showed it is alive (see `systemd::LoopHealth`).
    pub heartbeat_age: prometheus::GaugeVec,
}

impl LoopMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let loops = LoopMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "workspaced_loop_runs_total",
                    "Loop iterations run, failed ones included.",
                ),
                &["loop"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "workspaced_loop_errors_total",
                    "Loop iterations that ended in an error.",
                ),
                &["loop"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "workspaced_loop_duration_seconds",
                    "Time one loop iteration took, from reading the state to the last write.",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["loop"],
            )?,
            last_run: IntGaugeVec::new(
                Opts::new(
                    "workspaced_loop_last_run_timestamp_seconds",
                    "Unix time at which the loop's latest iteration started.",
                ),
                &["loop"],
            )?,
            last_success: IntGaugeVec::new(
                Opts::new(
                    "workspaced_loop_last_success_timestamp_seconds",
                    "Unix time at which the loop's latest successful iteration started.",
                ),
                &["loop"],
            )?,
            heartbeat_age: prometheus::GaugeVec::new(
                Opts::new(
                    "workspaced_loop_heartbeat_age_seconds",
                    "Seconds since the loop last showed it is alive; grows while an iteration runs, so a stuck loop shows here (and stops the systemd watchdog).",
                ),
                &["loop"],
            )?,
        };
        // Create every loop's series up front, so a scrape before the first iteration
        // already shows them (at zero) and alerts on absent series stay meaningful.
        for name in crate::domain::LoopKind::ALL.map(crate::domain::LoopKind::name) {
            loops.runs.with_label_values(&[name]);
            loops.errors.with_label_values(&[name]);
            loops.duration.with_label_values(&[name]);
            loops.heartbeat_age.with_label_values(&[name]);
        }
        registry.register(Box::new(loops.heartbeat_age.clone()))?;
        registry.register(Box::new(loops.runs.clone()))?;
        registry.register(Box::new(loops.errors.clone()))?;
        registry.register(Box::new(loops.duration.clone()))?;
        registry.register(Box::new(loops.last_run.clone()))?;
        registry.register(Box::new(loops.last_success.clone()))?;
        Ok(loops)
    }
}

/// Figures of the outbox publisher.
#[derive(Clone)]
pub struct OutboxMetrics {
    pub published: IntCounter,
    pub errors: IntCounter,
    pub pending: IntGauge,
    pub publish_lag: Histogram,
}

impl OutboxMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let outbox = OutboxMetrics {
            published: IntCounter::new(
                "workspaced_outbox_published_total",
                "Committed events handed to subscribers and marked delivered.",
            )?,
            errors: IntCounter::new(
                "workspaced_outbox_publish_errors_total",
                "Publisher wake-ups that failed to read or mark the outbox.",
            )?,
            pending: IntGauge::new(
                "workspaced_outbox_pending_events",
                "Committed events waiting for the publisher.",
            )?,
            publish_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "workspaced_outbox_publish_lag_seconds",
                    "Time from an event's commit to its publication.",
                )
                .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0]),
            )?,
        };
        registry.register(Box::new(outbox.published.clone()))?;
        registry.register(Box::new(outbox.errors.clone()))?;
        registry.register(Box::new(outbox.pending.clone()))?;
        registry.register(Box::new(outbox.publish_lag.clone()))?;
        Ok(outbox)
    }
}

/// Figures of config loading and reloading.
#[derive(Clone)]
pub struct ConfigMetrics {
    pub reload_failures: IntCounter,
    pub last_reload_success: IntGauge,
    pub templates: IntGauge,
}

impl ConfigMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let config = ConfigMetrics {
            reload_failures: IntCounter::new(
                "workspaced_config_reload_failures_total",
                "Config reloads (SIGHUP) rejected: the daemon kept running on the previous config.",
            )?,
            last_reload_success: IntGauge::new(
                "workspaced_config_last_reload_success_timestamp_seconds",
                "Unix time the config was last loaded and applied successfully (start or reload).",
            )?,
            templates: IntGauge::new(
                "workspaced_config_templates",
                "Live templates, as declared by [[templates]] in the config.",
            )?,
        };
        registry.register(Box::new(config.reload_failures.clone()))?;
        registry.register(Box::new(config.last_reload_success.clone()))?;
        registry.register(Box::new(config.templates.clone()))?;
        Ok(config)
    }
}
