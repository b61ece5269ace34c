//! Figures of the health monitor (readiness probes of running container workspaces).

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct HealthMetrics {
    /// Running workspaces whose probe (or container) fails, by `template_name`.
    pub unhealthy: IntGaugeVec,
    /// Probe checks by `result` (pass, fail).
    pub probes: IntCounterVec,
    /// Labelled containers and volumes of no live workspace, at the last check.
    pub orphans: IntGauge,
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
        };
        for result in ["pass", "fail"] {
            health.probes.with_label_values(&[result]);
        }
        registry.register(Box::new(health.unhealthy.clone()))?;
        registry.register(Box::new(health.probes.clone()))?;
        registry.register(Box::new(health.orphans.clone()))?;
        Ok(health)
    }
}
