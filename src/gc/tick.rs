//! The garbage collector loop: every `gc.interval` (or at once on SIGUSR1), one run of
//! `crate::gc::run`, with its figures logged and exported.

use crate::context::{LoopCtx, LoopError, Now, TickReport};

pub async fn tick(ctx: &LoopCtx, now: Now) -> Result<TickReport, LoopError> {
    let config = std::sync::Arc::clone(&ctx.config.borrow());
    if !config.gc.enabled {
        tracing::debug!(%now, "gc run skipped: [gc] enabled = false");
        return Ok(TickReport::default());
    }
    let started = tokio::time::Instant::now();
    let metrics = &ctx.metrics.gc;
    let report = match crate::gc::run(&ctx.store, &config, now).await {
        Ok(report) => report,
        Err(source) => {
            metrics.runs.with_label_values(&["error"]).inc();
            return Err(LoopError::Store { loop_name: "gc", source });
        }
    };
    let result = if report.dry_run {
        "dry_run"
    } else if report.safety_valve_tripped {
        "safety_valve"
    } else if report.failures > 0 {
        "failures"
    } else {
        "ok"
    };
    metrics.runs.with_label_values(&[result]).inc();
    metrics.deleted.inc_by(report.deleted);
    metrics.warned.inc_by(report.warned);
    metrics.failures.inc_by(report.failures);
    // Every failed action counts as a loop error too, so WorkspacedLoopFailing sees a loop
    // whose iterations "succeed" while each of their actions fails.
    ctx.metrics.loops.errors.with_label_values(&["gc"]).inc_by(report.failures);
    metrics.orphans_removed.inc_by(report.orphans_removed);
    for (reason, count) in &report.skipped {
        metrics.skipped.with_label_values(&[reason]).inc_by(*count);
    }
    // Waiting for their deletion: the ones warned before and still in their window, and the
    // ones this run just warned (a dry run warns nobody).
    let waiting = report.skipped.get("warn_window").copied().unwrap_or(0) + report.warned;
    metrics.pending_deletions.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    metrics.safety_valve_tripped.set(i64::from(report.safety_valve_tripped));
    metrics.last_run.set(now.timestamp());
    metrics.duration.observe(started.elapsed().as_secs_f64());
    let next_run = crate::domain::time::after(now, config.gc.interval.as_secs());
    tracing::info!(
        candidates = report.candidates,
        warned = report.warned,
        deleted = report.deleted,
        skipped = ?report.skipped,
        failures = report.failures,
        orphans_removed = report.orphans_removed,
        dry_run = report.dry_run,
        elapsed_ms = started.elapsed().as_millis() as u64,
        next_run = %next_run,
        "gc run"
    );
    Ok(TickReport {
        examined: report.candidates,
        actions: report.warned + report.deleted + report.orphans_removed,
    })
}
