//! Figures of the lifecycle executor and the garbage collector.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Figures of the lifecycle executor.
#[derive(Clone)]
pub struct LifecycleMetrics {
    /// By `transition` (start, stop, delete, none) and `reason` (planner.md names).
    pub transitions: IntCounterVec,
    pub last_candidates: IntGauge,
    pub last_transitions: IntGauge,
    pub errors: IntCounter,
}

impl LifecycleMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
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
        // Every decision the planner can make, at 0 from the start (so `increase()` sees
        // the first one).
        for (transition, reason) in [
            ("start", "autostart"),
            ("stop", "autostop"),
            ("stop", "failedstop"),
            ("stop", "dormancy"),
            ("none", "dormancy"),
            ("delete", "autodelete"),
        ] {
            lifecycle.transitions.with_label_values(&[transition, reason]);
        }
        registry.register(Box::new(lifecycle.transitions.clone()))?;
        registry.register(Box::new(lifecycle.last_candidates.clone()))?;
        registry.register(Box::new(lifecycle.last_transitions.clone()))?;
        registry.register(Box::new(lifecycle.errors.clone()))?;
        Ok(lifecycle)
    }
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

impl GcMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
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
                "Backend resources (local directories, labelled containers and volumes) that belonged to no live workspace and were removed.",
            )?,
        };
        for result in ["ok", "failures", "safety_valve", "dry_run", "error"] {
            gc.runs.with_label_values(&[result]);
        }
        for reason in ["protected", "active", "in_progress", "warn_window", "safety_valve"] {
            gc.skipped.with_label_values(&[reason]);
        }
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
        Ok(gc)
    }
}
