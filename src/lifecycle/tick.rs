//! The lifecycle loop: autostart, autostop, failed-start stop, dormancy and auto-delete.
//!
//! Each tick (judged at `now` truncated to the minute) finds the candidates with one
//! indexed query, then re-judges and acts on each in its own write transaction
//! (`crate::lifecycle::apply`), at most `lifecycle.concurrency` at once. An error on one
//! workspace is logged and counted; the others go on. Unclaimed prebuilds are never its
//! business.

use crate::domain::TextEnum;
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::context::{LoopCtx, LoopError, Now, TickReport};
use crate::error::error_chain;
use crate::lifecycle::{self, reason_name};
use crate::planner::lifecycle::tick as minute_tick;

pub async fn tick(ctx: &LoopCtx, now: Now) -> Result<TickReport, LoopError> {
    let tick = minute_tick(now);
    let candidates = ctx
        .store
        .read(move |conn| crate::store::lifecycle::candidates(conn, tick))
        .await
        .map_err(|source| LoopError::Store { loop_name: "lifecycle", source })?;
    let metrics = &ctx.metrics.lifecycle;
    metrics.last_candidates.set(i64::try_from(candidates.len()).unwrap_or(i64::MAX));
    let concurrency = ctx.config.borrow().lifecycle.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for workspace_id in candidates.iter().cloned() {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        let store = ctx.store.clone();
        tasks.spawn(async move {
            let id = workspace_id.clone();
            let result = store.write(move |tx| lifecycle::apply(tx, &id, now, tick)).await;
            drop(permit);
            (workspace_id, result)
        });
    }
    let mut counts: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    let mut errors = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((workspace_id, Ok(Some(decision)))) => {
                let transition =
                    decision.transition.map_or("none", |transition| transition.as_str());
                let reason = reason_name(decision.reason);
                metrics.transitions.with_label_values(&[transition, reason]).inc();
                *counts.entry((transition.to_owned(), reason)).or_default() += 1;
                tracing::info!(
                    workspace_id = %workspace_id,
                    transition,
                    reason,
                    becomes_dormant = decision.becomes_dormant,
                    "lifecycle transition"
                );
            }
            Ok((_, Ok(None))) => {}
            Ok((workspace_id, Err(error))) => {
                errors += 1;
                metrics.errors.inc();
                ctx.metrics.loops.errors.with_label_values(&["lifecycle"]).inc();
                tracing::error!(workspace_id = %workspace_id, error = %error_chain(&error), "lifecycle action failed; retried next tick");
            }
            Err(error) => {
                errors += 1;
                metrics.errors.inc();
                ctx.metrics.loops.errors.with_label_values(&["lifecycle"]).inc();
                tracing::error!(error = %error, "lifecycle task failed");
            }
        }
    }
    let actions: u64 = counts.values().sum();
    metrics.last_transitions.set(i64::try_from(actions).unwrap_or(i64::MAX));
    if actions > 0 || errors > 0 {
        tracing::info!(candidates = candidates.len(), actions, errors, by_kind = ?counts, %tick, "lifecycle tick");
    }
    Ok(TickReport { examined: candidates.len() as u64, actions })
}
