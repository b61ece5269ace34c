//! Figures of the job runner.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

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

impl ProvisionerMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
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
        Ok(provisioner)
    }
}
