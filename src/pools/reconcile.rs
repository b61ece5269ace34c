//! The prebuild reconciler loop: each cycle reads one snapshot, plans every preset
//! (`planner::reconcile`) and executes the actions in order: each delete and each create in
//! its own write transaction that re-checks what it acts on (`prebuilds`). One preset's
//! failure never stops the others. Then it refreshes the prebuild metrics.

use std::collections::HashMap;
use tracing::Instrument;

use crate::context::{LoopCtx, LoopError, Now, TickReport};
use crate::error::error_chain;
use crate::metrics::PoolFigures;
use crate::planner::plan::{PoolAction, PresetPlan};
use crate::planner::reconcile;
use crate::planner::snapshot::{Index, Preset, Snapshot};
use crate::pools;
use crate::store::builds::BuildError;
use crate::store::snapshot;

pub async fn tick(ctx: &LoopCtx, now: Now) -> Result<TickReport, LoopError> {
    let started = tokio::time::Instant::now();
    let settings = ctx.config.borrow().planner_settings();
    let store_error = |source| LoopError::Store { loop_name: "reconciler", source };
    let (snapshot, stored) = ctx
        .store
        .read(move |conn| {
            Ok((
                snapshot::read(conn, now, settings)?,
                crate::store::presets::hard_limit_states(conn)?,
            ))
        })
        .await
        .map_err(store_error)?;
    let index = Index::new(&snapshot);
    let plan = reconcile::plan(&index);
    let metrics = &ctx.metrics.prebuilds;
    metrics.paused.set(i64::from(plan.paused));
    if plan.paused {
        tracing::debug!("reconciliation is paused (reconciler.paused)");
        return Ok(TickReport::default());
    }
    let presets: HashMap<&str, &Preset> =
        snapshot.presets.iter().map(|preset| (preset.id.as_str(), preset)).collect();
    let mut actions = 0;
    // Creates this cycle may queue: the cap less what is already queued or building.
    let in_progress: u64 = plan.presets.iter().map(|preset| preset.state.starting).sum();
    let mut budget =
        u64::from(ctx.config.borrow().reconciler.max_queued_creates).saturating_sub(in_progress);
    for preset_plan in &plan.presets {
        let Some(preset) = presets.get(preset_plan.preset_id.as_str()) else { continue };
        // Every line about this preset names it: organization, template, preset.
        let template = index.templates.get(preset.template_id.as_str());
        let span = tracing::info_span!(
            "preset",
            organization = template.map_or("", |t| t.organization_name.as_str()),
            template = template.map_or("", |t| t.name.as_str()),
            preset = %preset.name,
        );
        if let Some(problem) = reconcile::schedule_problem(preset) {
            span.in_scope(|| tracing::warn!(preset_id = %preset.id, problem = %problem, "preset schedules ignored; using the base instances"));
        }
        let stored = stored.get(preset_plan.preset_id.as_str());
        match execute(ctx, preset_plan, stored, now, &mut budget).instrument(span.clone()).await {
            Ok(done) => actions += done,
            Err(error) => {
                metrics.preset_errors.inc();
                ctx.metrics.loops.errors.with_label_values(&["reconciler"]).inc();
                span.in_scope(|| tracing::error!(preset_id = %preset.id, error = %error_chain(&error), "reconciling preset failed; other presets go on"));
            }
        }
    }
    actions += clean_up(ctx, &index, &plan, now).await;
    update_gauges(ctx, &snapshot, &plan.presets);
    match ctx.store.read(crate::store::presets::lifetime_counts).await {
        Ok(totals) => metrics.sync_counters(&totals),
        Err(error) => tracing::warn!(error = %error_chain(&error), "cannot read prebuild totals"),
    }
    metrics.last_updated.set(now.timestamp());
    metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    Ok(TickReport { examined: plan.presets.len() as u64, actions })
}

/// The pool's housekeeping (`planner::housekeeping`): canceled and old failed prebuilds
/// deleted, unstarted creates beyond a lowered desired count canceled. Each in its own
/// transaction; a failure is logged and counted, and the rest go on.
async fn clean_up(
    ctx: &LoopCtx,
    index: &Index<'_>,
    plan: &crate::planner::plan::ReconcilerPlan,
    now: Now,
) -> u64 {
    let retention = {
        let config = ctx.config.borrow();
        crate::planner::housekeeping::Retention {
            // Never inside the backoff window: those failures still count there.
            failed_after_s: config
                .retention
                .failed_prebuilds
                .as_secs()
                .max(config.reconciler.backoff_lookback.as_secs()),
            keep_failed: usize::try_from(config.reconciler.failure_hard_limit)
                .unwrap_or(usize::MAX)
                .max(3),
        }
    };
    let mut done = 0;
    for leftover in crate::planner::housekeeping::leftovers(index, plan, retention, now) {
        let action = leftover.clone();
        match ctx.store.write(move |tx| pools::clean_up(tx, &action, now)).await {
            Ok(true) => {
                done += 1;
                tracing::info!(
                    workspace_id = %leftover.workspace_id,
                    preset_id = leftover.preset_id.as_deref().unwrap_or(""),
                    reason = leftover.reason.as_str(),
                    "prebuild cleaned up"
                );
            }
            Ok(false) => {}
            Err(error) => {
                ctx.metrics.prebuilds.preset_errors.inc();
                ctx.metrics.loops.errors.with_label_values(&["reconciler"]).inc();
                tracing::error!(workspace_id = %leftover.workspace_id, error = %error_chain(&error), "prebuild cleanup failed; retried next cycle");
            }
        }
    }
    done
}

/// Executes one preset's actions in order; returns how many builds were enqueued.
/// `stored` is the preset's pool status and whether its hard limit was notified, as read
/// with the snapshot: the status is written (and re-checked) only when the plan changes it.
async fn execute(
    ctx: &LoopCtx,
    plan: &PresetPlan,
    stored: Option<&(String, bool)>,
    now: Now,
    budget: &mut u64,
) -> Result<u64, BuildError> {
    let preset_id = plan.preset_id.clone();
    let limited = plan.hard_limited;
    let wanted = if limited { "hard_limited" } else { "healthy" };
    let unchanged =
        stored.is_some_and(|(status, notified)| status == wanted && (!limited || *notified));
    let newly_limited = if unchanged {
        false
    } else {
        let id = preset_id.clone();
        ctx.store.write(move |tx| pools::sync_hard_limit(tx, &id, limited, now)).await?
    };
    if plan.hard_limited {
        tracing::warn!(
            preset_id = %preset_id,
            notified = newly_limited,
            "preset is hard-limited: its newest prebuild builds all failed; no new prebuilds until `workspaced preset reset`"
        );
    }
    let mut enqueued = 0;
    for action in &plan.actions {
        match action {
            PoolAction::Backoff { until } => {
                tracing::info!(preset_id = %preset_id, until = %until, "prebuild creation backs off after failures");
            }
            PoolAction::Delete { reason, workspace_ids } => {
                for workspace_id in workspace_ids {
                    let id = workspace_id.clone();
                    let queued =
                        ctx.store.write(move |tx| pools::delete_prebuild(tx, &id, now)).await?;
                    match queued {
                        Some(_) => {
                            enqueued += 1;
                            tracing::info!(preset_id = %preset_id, workspace_id = %workspace_id, reason = ?reason, "prebuild delete queued");
                        }
                        None => tracing::info!(
                            preset_id = %preset_id,
                            workspace_id = %workspace_id,
                            "prebuild not deleted: it was claimed, deleted or is being built meanwhile"
                        ),
                    }
                }
            }
            PoolAction::Create { count } => {
                // Never more than the pool wants, whatever the arithmetic said, and never
                // more than the queue has room for (the rest come next cycles).
                let wanted = (*count).min(plan.state.desired);
                let count = wanted.min(*budget);
                if count < wanted {
                    tracing::info!(preset_id = %preset_id, queued = count, wanted, "prebuild creation paced (reconciler.max_queued_creates)");
                }
                for _ in 0..count {
                    *budget = budget.saturating_sub(1);
                    let id = preset_id.clone();
                    match ctx.store.write(move |tx| pools::create_prebuild(tx, &id, now)).await? {
                        Some(queued) => {
                            enqueued += 1;
                            tracing::info!(preset_id = %preset_id, workspace_id = %queued.build.workspace_id, "prebuild created");
                        }
                        None => {
                            tracing::info!(preset_id = %preset_id, "preset no longer active; creation stopped");
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(enqueued)
}

/// Gauges for presets on the active version of a live template; series of other presets
/// (outdated, deleted) disappear.
fn update_gauges(ctx: &LoopCtx, snapshot: &Snapshot, plans: &[PresetPlan]) {
    let metrics = &ctx.metrics.prebuilds;
    let mut figures = Vec::with_capacity(plans.len());
    let templates: HashMap<&str, _> =
        snapshot.templates.iter().map(|template| (template.id.as_str(), template)).collect();
    let presets: HashMap<&str, &Preset> =
        snapshot.presets.iter().map(|preset| (preset.id.as_str(), preset)).collect();
    for plan in plans {
        let Some(preset) = presets.get(plan.preset_id.as_str()) else { continue };
        let Some(template) = templates.get(preset.template_id.as_str()) else { continue };
        if template.deleted || template.active_version_id != preset.template_version_id {
            continue;
        }
        let labels =
            [template.organization_name.as_str(), template.name.as_str(), preset.name.as_str()];
        figures.push(PoolFigures {
            labels: labels.map(str::to_owned),
            desired: plan.state.desired,
            running: plan.state.actual,
            eligible: plan.state.eligible,
            hard_limited: plan.hard_limited,
        });
        // Counters start at 0 for every pooled preset, so `increase()` sees the first one.
        for counter in [&metrics.created, &metrics.failed, &metrics.claimed] {
            counter.with_label_values(&labels);
        }
        ctx.metrics.provisioner.resource_replacements.with_label_values(&labels);
    }
    // One swap: a scrape sees the previous cycle's set or this one, whole.
    metrics.pool.publish(&figures);
}
