//! Prebuild pool figures (Coder's families with the `workspaced_` prefix).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::PresetKey;
use super::PresetTotals;
use super::pool::PoolGauges;

/// Prebuild pool figures, labelled `organization_name`, `template_name`, `preset_name`
/// (Coder's families with the `workspaced_` prefix).
#[derive(Clone)]
pub struct PrebuildMetrics {
    pub created: IntCounterVec,
    pub failed: IntCounterVec,
    pub claimed: IntCounterVec,
    /// desired, running, eligible, hard-limited per preset: replaced whole each cycle.
    pub pool: PoolGauges,
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

impl PrebuildMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
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
            pool: PoolGauges::new()?,
            seen: Default::default(),
        };
        for collector in [
            Box::new(prebuilds.created.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(prebuilds.failed.clone()),
            Box::new(prebuilds.claimed.clone()),
            Box::new(prebuilds.pool.clone()),
            Box::new(prebuilds.last_updated.clone()),
            Box::new(prebuilds.paused.clone()),
            Box::new(prebuilds.reconcile_duration.clone()),
            Box::new(prebuilds.claim_duration.clone()),
            Box::new(prebuilds.preset_errors.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(prebuilds)
    }
}
