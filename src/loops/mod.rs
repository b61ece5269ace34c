//! The background loops (reconciler, lifecycle, garbage collector) and the one driver that
//! runs them: `run_every` waits for the loop's interval, runs one iteration with `run_once`,
//! records its figures and carries on whatever the iteration returned.
//!
//! Owns cadence, error counting and cancellation. An iteration is never interrupted:
//! cancellation only ends the *wait* between iterations, so in-flight transactions finish.
//! Each loop's `tick(ctx, now)` decides and acts; tests call `run_once` directly instead of
//! waiting for the timer.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::domain::LoopKind;
use crate::error::error_chain;
use crate::systemd::LoopHealth;

pub use crate::context::{LoopCtx, LoopError, Now, TickReport};

/// Runs one iteration of `kind` at the clock's current time and records its figures.
pub async fn run_once(kind: LoopKind, ctx: &LoopCtx) -> Result<TickReport, LoopError> {
    let name = kind.name();
    let now = ctx.clock.now();
    let started = Instant::now();
    let result = match kind {
        LoopKind::Reconciler => crate::pools::reconcile::tick(ctx, now).await,
        LoopKind::Lifecycle => crate::lifecycle::tick::tick(ctx, now).await,
        LoopKind::Gc => crate::gc::tick::tick(ctx, now).await,
    };
    let elapsed = started.elapsed();
    let metrics = &ctx.metrics.loops;
    metrics.runs.with_label_values(&[name]).inc();
    metrics.duration.with_label_values(&[name]).observe(elapsed.as_secs_f64());
    metrics.last_run.with_label_values(&[name]).set(now.timestamp());
    match &result {
        Ok(report) => {
            metrics.last_success.with_label_values(&[name]).set(now.timestamp());
            tracing::debug!(
                r#loop = name,
                examined = report.examined,
                actions = report.actions,
                elapsed_ms = elapsed.as_millis() as u64,
                "loop iteration done"
            );
        }
        Err(error) => {
            metrics.errors.with_label_values(&[name]).inc();
            tracing::error!(r#loop = name, error = %error_chain(error), "loop iteration failed");
        }
    }
    result
}

/// Runs `kind` every interval until `cancel` fires. The first iteration runs one interval
/// after start. A config reload that changes the interval restarts the timer.
pub async fn run_every(kind: LoopKind, ctx: LoopCtx, cancel: CancellationToken) {
    run_every_or_when_woken(kind, ctx, cancel, None, LoopHealth::default()).await;
}

/// `run_every`, plus an immediate iteration whenever `wake` is notified (SIGUSR1 for GC).
pub async fn run_every_or_when_woken(
    kind: LoopKind,
    ctx: LoopCtx,
    cancel: CancellationToken,
    wake: Option<Arc<tokio::sync::Notify>>,
    health: LoopHealth,
) {
    let mut config = ctx.config.clone();
    // Beats while waiting only: an iteration that hangs stops the beats (systemd watchdog).
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut period = config.borrow_and_update().interval(kind);
    let mut ticker = ticker(period);
    let mut watching_config = true;
    tracing::info!(r#loop = kind.name(), interval = ?period, "loop started");
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = heartbeat.tick() => health.beat(kind),
            _ = ticker.tick() => {
                // The iteration runs to completion even if shutdown starts meanwhile.
                let _ = run_once(kind, &ctx).await;
            }
            () = async {
                match &wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!(r#loop = kind.name(), "iteration requested");
                let _ = run_once(kind, &ctx).await;
            }
            changed = config.changed(), if watching_config => {
                if changed.is_err() {
                    // The app dropped the sender: no more reloads, keep the current period.
                    watching_config = false;
                    continue;
                }
                let new_period = config.borrow_and_update().interval(kind);
                if new_period != period {
                    tracing::info!(r#loop = kind.name(), interval = ?new_period, "loop interval changed");
                    period = new_period;
                    ticker = self::ticker(period);
                }
            }
        }
    }
    tracing::info!(r#loop = kind.name(), "loop stopped");
}

fn ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    // A slow iteration delays the next one instead of causing a burst of catch-up runs.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

#[cfg(test)]
mod tests;
