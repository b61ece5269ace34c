//! Figures of the health monitor (readiness probes of running container workspaces).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct HealthMetrics {
    /// Running workspaces whose probe (or container) fails, by `template_name`.
    pub unhealthy: IntGaugeVec,
    /// Probe checks by `result` (pass, fail).
    pub probes: IntCounterVec,
    /// Labelled containers and volumes of no live workspace, at the last check.
    pub orphans: IntGauge,
    /// Time one monitor tick took (reading, checking the due workspaces, writing).
    pub tick_duration: Histogram,
}

impl HealthMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let health = HealthMetrics {
            unhealthy: IntGaugeVec::new(
                Opts::new(
                    "workspaced_workspaces_unhealthy",
                    "Running workspaces whose readiness probe fails or whose container is not running, by template.",
                ),
                &["template_name"],
            )?,
            probes: IntCounterVec::new(
                Opts::new(
                    "workspaced_health_probes_total",
                    "Readiness checks of running workspaces by the health monitor, by result (pass, fail).",
                ),
                &["result"],
            )?,
            orphans: IntGauge::new(
                "workspaced_container_orphans",
                "Containers and volumes with workspaced's label whose workspace is deleted or unknown (the GC removes them), at the last check.",
            )?,
            tick_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "workspaced_health_tick_duration_seconds",
                    "Time one health monitor tick took: reading the running workspaces, checking the due ones, storing changed verdicts.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
        };
        for result in ["pass", "fail"] {
            health.probes.with_label_values(&[result]);
        }
        registry.register(Box::new(health.unhealthy.clone()))?;
        registry.register(Box::new(health.probes.clone()))?;
        registry.register(Box::new(health.orphans.clone()))?;
        registry.register(Box::new(health.tick_duration.clone()))?;
        Ok(health)
    }
}
