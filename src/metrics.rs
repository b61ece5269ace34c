//! Prometheus metrics: one `Registry` owned by the app, the families registered once at
//! start, and the text exposition served at `/metrics`.
//!
//! Owns metric names, types, help texts and label sets (documented in `docs/metrics.md`).
//! Label values are bounded (loop names, error labels); never a workspace id or a message.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
#[error("cannot register metric families")]
pub struct MetricsError(#[source] pub prometheus::Error);

/// Every metric family of the daemon, registered in `registry`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub loops: LoopMetrics,
    pub outbox: OutboxMetrics,
    pub provisioner: ProvisionerMetrics,
    pub config: ConfigMetrics,
    pub prebuilds: PrebuildMetrics,
    pub lifecycle: LifecycleMetrics,
    pub gc: GcMetrics,
    pub api: ApiMetrics,
    /// Rows pruned by the retention task, by `kind`.
    pub retention_pruned: IntCounterVec,
}

/// Figures of the HTTP API, the event stream and webhook delivery.
#[derive(Clone)]
pub struct ApiMetrics {
    /// By `route` (the route pattern, bounded) and `code`.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub event_streams: IntGauge,
    /// By `result`: delivered, retry, dead.
    pub webhook_deliveries: IntCounterVec,
    pub webhook_pending: IntGauge,
    /// Connections closed at accept because `server.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Open HTTP connections.
    pub connections: IntGauge,
    /// Database writes that failed on the storage (full disk, read-only, IO, lock).
    pub store_errors: IntCounter,
}

/// Figures of the garbage collector.
#[derive(Clone)]
pub struct GcMetrics {
    /// By `result`: ok, failures, safety_valve, dry_run, error.
    pub runs: IntCounterVec,
    pub deleted: IntCounter,
    pub warned: IntCounter,
    pub skipped: IntCounterVec,
    pub failures: IntCounter,
    pub pending_deletions: IntGauge,
    pub safety_valve_tripped: IntGauge,
    pub last_run: IntGauge,
    pub duration: Histogram,
    pub orphans_removed: IntCounter,
}

/// Figures of the lifecycle executor.
#[derive(Clone)]
pub struct LifecycleMetrics {
    /// By `transition` (start, stop, delete, none) and `reason` (planner.md names).
    pub transitions: IntCounterVec,
    pub last_candidates: IntGauge,
    pub last_transitions: IntGauge,
    pub errors: IntCounter,
}

/// A preset's series are labelled by its (organization, template, preset) names.
pub use crate::store::presets::{PresetKey, PresetTotals};

/// Prebuild pool figures, labelled `organization_name`, `template_name`, `preset_name`
/// (Coder's families with the `workspaced_` prefix).
#[derive(Clone)]
pub struct PrebuildMetrics {
    pub created: IntCounterVec,
    pub failed: IntCounterVec,
    pub claimed: IntCounterVec,
    pub desired: IntGaugeVec,
    pub running: IntGaugeVec,
    pub eligible: IntGaugeVec,
    pub hard_limited: IntGaugeVec,
    pub last_updated: IntGauge,
    pub paused: IntGauge,
    pub reconcile_duration: Histogram,
    pub claim_duration: Histogram,
    pub preset_errors: IntCounter,
    /// The database totals the counters were last brought to, so they can be advanced by
    /// the difference (counters only go up; totals come from the database).
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PresetKey, [u64; 3]>>>,
}

impl PrebuildMetrics {
    /// Advances the lifetime counters to the database totals.
    pub fn sync_counters(&self, totals: &[PresetTotals]) {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (labels, counts) in totals {
            let previous = seen.entry(labels.clone()).or_insert([0; 3]);
            let values = [&labels.0[..], &labels.1[..], &labels.2[..]];
            for (index, counter) in
                [&self.created, &self.failed, &self.claimed].into_iter().enumerate()
            {
                let delta = counts[index].saturating_sub(previous[index]);
                // Touch the series even at zero, so every preset shows all three counters.
                counter.with_label_values(&values).inc_by(delta);
            }
            *previous = *counts;
        }
    }
}

/// Figures of config loading and reloading.
#[derive(Clone)]
pub struct ConfigMetrics {
    pub reload_failures: IntCounter,
    pub last_reload_success: IntGauge,
    pub templates: IntGauge,
}

/// Figures of the job runner.
#[derive(Clone)]
pub struct ProvisionerMetrics {
    pub jobs: IntCounterVec,
    pub duration: HistogramVec,
    pub pending: IntGauge,
    /// Unix time the oldest pending job was queued; 0 when none waits.
    pub oldest_pending: IntGauge,
    pub running: IntGauge,
    pub timeouts: IntCounter,
    pub orphans_recovered: IntCounter,
    pub resource_replacements: IntCounterVec,
}

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

/// Figures of the outbox publisher.
#[derive(Clone)]
pub struct OutboxMetrics {
    pub published: IntCounter,
    pub errors: IntCounter,
    pub pending: IntGauge,
    pub publish_lag: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        Self::build().map_err(MetricsError)
    }

    fn build() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("workspaced_build_info", "Always 1; the labels name the running build."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info))?;

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

        let provisioner = ProvisionerMetrics {
            jobs: IntCounterVec::new(
                Opts::new(
                    "workspaced_provisioner_jobs_total",
                    "Provisioner jobs finished, by backend, transition and final status.",
                ),
                &["backend", "transition", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "workspaced_provisioner_job_duration_seconds",
                    "Time from a job's start to its completion.",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
                &["backend", "transition"],
            )?,
            pending: IntGauge::new(
                "workspaced_provisioner_jobs_pending",
                "Jobs waiting for a worker.",
            )?,
            oldest_pending: IntGauge::new(
                "workspaced_provisioner_oldest_pending_job_timestamp_seconds",
                "Unix time at which the oldest job still waiting for a worker was queued; 0 when none waits.",
            )?,
            running: IntGauge::new("workspaced_provisioner_jobs_running", "Jobs running now.")?,
            timeouts: IntCounter::new(
                "workspaced_provisioner_job_timeouts_total",
                "Jobs stopped because they ran past provisioner.job_timeout.",
            )?,
            orphans_recovered: IntCounter::new(
                "workspaced_provisioner_orphaned_jobs_recovered_total",
                "Jobs left running by a previous process and marked failed.",
            )?,
            resource_replacements: IntCounterVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_resource_replacements_total",
                    "Resources replaced while claiming a prebuild (the template defeats its prebuilds).",
                ),
                &["organization_name", "template_name", "preset_name"],
            )?,
        };
        registry.register(Box::new(provisioner.jobs.clone()))?;
        registry.register(Box::new(provisioner.duration.clone()))?;
        registry.register(Box::new(provisioner.pending.clone()))?;
        registry.register(Box::new(provisioner.oldest_pending.clone()))?;
        registry.register(Box::new(provisioner.running.clone()))?;
        registry.register(Box::new(provisioner.timeouts.clone()))?;
        registry.register(Box::new(provisioner.orphans_recovered.clone()))?;
        registry.register(Box::new(provisioner.resource_replacements.clone()))?;

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

        let preset_labels = ["organization_name", "template_name", "preset_name"];
        let prebuilds = PrebuildMetrics {
            created: IntCounterVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_created_total",
                    "Prebuilt workspaces created to fill a preset's pool.",
                ),
                &preset_labels,
            )?,
            failed: IntCounterVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_failed_total",
                    "Prebuild builds that failed.",
                ),
                &preset_labels,
            )?,
            claimed: IntCounterVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_claimed_total",
                    "Prebuilt workspaces claimed by users.",
                ),
                &preset_labels,
            )?,
            desired: IntGaugeVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_desired",
                    "Prebuilt workspaces a preset should have now (schedules applied).",
                ),
                &preset_labels,
            )?,
            running: IntGaugeVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_running",
                    "Running prebuilt workspaces of a preset, expired ones included.",
                ),
                &preset_labels,
            )?,
            eligible: IntGaugeVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_eligible",
                    "Ready, unexpired prebuilt workspaces a user can claim now.",
                ),
                &preset_labels,
            )?,
            hard_limited: IntGaugeVec::new(
                Opts::new(
                    "workspaced_prebuilt_workspaces_preset_hard_limited",
                    "1 while a preset is hard-limited (its newest prebuild builds all failed); needs `workspaced preset reset`.",
                ),
                &preset_labels,
            )?,
            last_updated: IntGauge::new(
                "workspaced_prebuilt_workspaces_metrics_last_updated",
                "Unix time the prebuild gauges were last computed.",
            )?,
            paused: IntGauge::new(
                "workspaced_prebuilt_workspaces_reconciliation_paused",
                "1 while reconciler.paused is set.",
            )?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "workspaced_prebuilt_workspaces_reconcile_duration_seconds",
                    "Time one reconcile cycle took: snapshot, plan and actions.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            claim_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "workspaced_prebuilt_workspaces_claim_duration_seconds",
                    "Time one claim transaction took.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            )?,
            preset_errors: IntCounter::new(
                "workspaced_prebuilt_workspaces_reconcile_errors_total",
                "Preset actions that failed in a reconcile cycle (the cycle went on with the other presets).",
            )?,
            seen: Default::default(),
        };
        for collector in [
            Box::new(prebuilds.created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(prebuilds.failed.clone()),
            Box::new(prebuilds.claimed.clone()),
            Box::new(prebuilds.desired.clone()),
            Box::new(prebuilds.running.clone()),
            Box::new(prebuilds.eligible.clone()),
            Box::new(prebuilds.hard_limited.clone()),
            Box::new(prebuilds.last_updated.clone()),
            Box::new(prebuilds.paused.clone()),
            Box::new(prebuilds.reconcile_duration.clone()),
            Box::new(prebuilds.claim_duration.clone()),
            Box::new(prebuilds.preset_errors.clone()),
        ] {
            registry.register(collector)?;
        }

        let lifecycle = LifecycleMetrics {
            transitions: IntCounterVec::new(
                Opts::new(
                    "workspaced_lifecycle_transitions_total",
                    "Lifecycle decisions carried out, by transition (none = dormancy without a stop) and reason.",
                ),
                &["transition", "reason"],
            )?,
            last_candidates: IntGauge::new(
                "workspaced_lifecycle_last_tick_candidates",
                "Workspaces the latest lifecycle tick examined.",
            )?,
            last_transitions: IntGauge::new(
                "workspaced_lifecycle_last_tick_transitions",
                "Decisions the latest lifecycle tick carried out.",
            )?,
            errors: IntCounter::new(
                "workspaced_lifecycle_errors_total",
                "Workspaces the lifecycle failed to act on (retried next tick; the tick went on).",
            )?,
        };
        registry.register(Box::new(lifecycle.transitions.clone()))?;
        registry.register(Box::new(lifecycle.last_candidates.clone()))?;
        registry.register(Box::new(lifecycle.last_transitions.clone()))?;
        registry.register(Box::new(lifecycle.errors.clone()))?;

        let gc = GcMetrics {
            runs: IntCounterVec::new(
                Opts::new(
                    "workspaced_gc_runs_total",
                    "GC runs by result (ok, failures, safety_valve, dry_run, error).",
                ),
                &["result"],
            )?,
            deleted: IntCounter::new(
                "workspaced_gc_deleted_total",
                "Workspaces whose deletion the GC queued.",
            )?,
            warned: IntCounter::new("workspaced_gc_warned_total", "GC warnings sent to owners.")?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "workspaced_gc_skipped_total",
                    "Due workspaces the GC did not delete, by reason.",
                ),
                &["reason"],
            )?,
            failures: IntCounter::new(
                "workspaced_gc_failures_total",
                "GC actions that failed (retried next run; the run went on).",
            )?,
            pending_deletions: IntGauge::new(
                "workspaced_gc_pending_deletions",
                "Workspaces warned and waiting out their warning window.",
            )?,
            safety_valve_tripped: IntGauge::new(
                "workspaced_gc_safety_valve_tripped",
                "1 when the latest GC run deleted nothing because it would have deleted too much.",
            )?,
            last_run: IntGauge::new(
                "workspaced_gc_last_run_timestamp_seconds",
                "Unix time of the latest GC run.",
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new("workspaced_gc_run_duration_seconds", "Time one GC run took.")
                    .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            )?,
            orphans_removed: IntCounter::new(
                "workspaced_gc_orphans_removed_total",
                "Backend resources (local directories) that belonged to no live workspace and were removed.",
            )?,
        };
        for collector in [
            Box::new(gc.runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(gc.deleted.clone()),
            Box::new(gc.warned.clone()),
            Box::new(gc.skipped.clone()),
            Box::new(gc.failures.clone()),
            Box::new(gc.pending_deletions.clone()),
            Box::new(gc.safety_valve_tripped.clone()),
            Box::new(gc.last_run.clone()),
            Box::new(gc.duration.clone()),
            Box::new(gc.orphans_removed.clone()),
        ] {
            registry.register(collector)?;
        }

        let api = ApiMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "workspaced_api_requests_total",
                    "API requests by route pattern and status code.",
                ),
                &["route", "code"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "workspaced_api_request_duration_seconds",
                    "Time to the response head of an API request, by route pattern.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0]),
                &["route"],
            )?,
            event_streams: IntGauge::new(
                "workspaced_api_event_streams",
                "Clients connected to the event stream (/api/v1/events).",
            )?,
            webhook_deliveries: IntCounterVec::new(
                Opts::new(
                    "workspaced_webhook_deliveries_total",
                    "Webhook delivery attempts by result: delivered, retry (failed, will retry), dead (gave up).",
                ),
                &["result"],
            )?,
            webhook_pending: IntGauge::new(
                "workspaced_webhook_pending_deliveries",
                "Webhook deliveries waiting for their next attempt.",
            )?,
            connections_refused: IntCounter::new(
                "workspaced_http_connections_refused_total",
                "Connections closed at once because server.max_connections were open.",
            )?,
            connections: IntGauge::new("workspaced_http_connections", "Open HTTP connections.")?,
            store_errors: IntCounter::new(
                "workspaced_store_errors_total",
                "Database writes that failed on the storage: full disk, read-only file, I/O error, a lock held elsewhere.",
            )?,
        };
        for collector in [
            Box::new(api.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(api.request_duration.clone()),
            Box::new(api.event_streams.clone()),
            Box::new(api.webhook_deliveries.clone()),
            Box::new(api.webhook_pending.clone()),
            Box::new(api.connections_refused.clone()),
            Box::new(api.connections.clone()),
            Box::new(api.store_errors.clone()),
        ] {
            registry.register(collector)?;
        }

        let retention_pruned = IntCounterVec::new(
            Opts::new(
                "workspaced_retention_pruned_total",
                "History rows pruned by the retention task, by kind (events, deliveries, notifications, audit_log, job_logs, deleted_workspaces).",
            ),
            &["kind"],
        )?;
        for kind in
            ["events", "deliveries", "notifications", "audit_log", "job_logs", "deleted_workspaces"]
        {
            retention_pruned.with_label_values(&[kind]);
        }
        registry.register(Box::new(retention_pruned.clone()))?;

        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        Ok(Metrics {
            registry,
            loops,
            outbox,
            provisioner,
            config,
            prebuilds,
            lifecycle,
            gc,
            api,
            retention_pruned,
        })
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|error| prometheus::Error::Msg(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_help_text() {
        let metrics = Metrics::new().unwrap();
        metrics.loops.runs.with_label_values(&["gc"]).inc();
        let text = metrics.render().unwrap();
        assert!(text.contains("workspaced_build_info{version=\""), "{text}");
        assert!(text.contains("workspaced_loop_runs_total{loop=\"gc\"} 1"), "{text}");
        assert!(text.contains("# HELP workspaced_outbox_pending_events"), "{text}");
    }

    #[test]
    fn two_instances_do_not_share_state() {
        let first = Metrics::new().unwrap();
        let second = Metrics::new().unwrap();
        first.outbox.published.inc();
        assert_eq!(second.outbox.published.get(), 0);
    }
}
