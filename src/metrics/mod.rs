//! Prometheus metrics: one `Registry` owned by the app, the families registered once at
//! start, and the text exposition served at `/metrics`.
//!
//! Owns metric names, types, help texts and label sets (documented in `docs/metrics.md`).
//! Label values are bounded (loop names, error labels); never a workspace id or a message.

mod api;
mod health;
mod lifecycle;
mod loops;
mod pool;
mod prebuilds;
mod provisioner;
mod proxy;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use api::{ApiMetrics, WEBHOOK_RESULTS};
pub use health::HealthMetrics;
pub use lifecycle::{GcMetrics, LifecycleMetrics};
pub use loops::{ConfigMetrics, LoopMetrics, OutboxMetrics};
pub use pool::{PoolFigures, PoolGauges};
pub use prebuilds::PrebuildMetrics;
pub use provisioner::ProvisionerMetrics;
pub use proxy::{DIRECTIONS, ProxyMetrics};

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
    pub health: HealthMetrics,
    pub proxy: ProxyMetrics,
    /// Rows pruned by the retention task, by `kind`.
    pub retention_pruned: IntCounterVec,
}

/// A preset's series are labelled by its (organization, template, preset) names.
pub use crate::store::presets::{PresetKey, PresetTotals};

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

        let loops = LoopMetrics::register(&registry)?;
        let outbox = OutboxMetrics::register(&registry)?;
        let provisioner = ProvisionerMetrics::register(&registry)?;
        let config = ConfigMetrics::register(&registry)?;
        let prebuilds = PrebuildMetrics::register(&registry)?;
        let lifecycle = LifecycleMetrics::register(&registry)?;
        let gc = GcMetrics::register(&registry)?;
        let api = ApiMetrics::register(&registry)?;
        let health = HealthMetrics::register(&registry)?;
        let proxy = ProxyMetrics::register(&registry)?;
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
            health,
            proxy,
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
    fn labelled_counters_start_at_zero_so_increase_sees_their_first_increment() {
        let text = Metrics::new().unwrap().render().unwrap();
        let zero = |name: &str, labels: &[&str]| {
            text.lines().any(|line| {
                line.starts_with(&format!("{name}{{"))
                    && labels.iter().all(|label| line.contains(label))
                    && line.ends_with(" 0")
            })
        };
        // Webhook delivery series start per configured webhook, in the delivery worker
        // (tests/it/stream.rs checks them).
        assert!(
            zero(
                "workspaced_lifecycle_transitions_total",
                &["transition=\"stop\"", "reason=\"autostop\""]
            ),
            "{text}"
        );
        assert!(zero("workspaced_gc_skipped_total", &["reason=\"protected\""]), "{text}");
        assert!(zero("workspaced_gc_runs_total", &["result=\"ok\""]), "{text}");
    }

    #[test]
    fn two_instances_do_not_share_state() {
        let first = Metrics::new().unwrap();
        let second = Metrics::new().unwrap();
        first.outbox.published.inc();
        assert_eq!(second.outbox.published.get(), 0);
    }
}
