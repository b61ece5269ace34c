//! The prebuild reconciler's decisions (planner.md §3, Coder's semantics): per preset, how
//! many prebuilds exist, how many should, which to delete and how many to create, when to
//! back off after failures and when to stop trying (hard limit).
//!
//! Pure: a snapshot and its `now` in, a plan out.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{JobStatus, Transition};
use crate::planner::plan::{DeleteReason, PoolAction, PresetPlan, PresetState, ReconcilerPlan};
use crate::planner::schedule::{CronSchedule, check_no_overlap, parse_zone};
use crate::planner::snapshot::{Build, Index, Initiator, Preset, Template};

/// A running prebuild: owner `prebuilds`, latest build a succeeded `start`.
struct Running<'a> {
    id: &'a str,
    created_at: DateTime<Utc>,
    ready: bool,
    unhealthy_since: Option<DateTime<Utc>>,
}

/// The reconciler's plan for every preset with prebuilds, in snapshot order.
pub fn plan(index: &Index<'_>) -> ReconcilerPlan {
    let snapshot = index.snapshot;
    let settings = &snapshot.settings.reconciler;
    if settings.paused {
        return ReconcilerPlan { paused: true, presets: Vec::new() };
    }
    let now = snapshot.now;

    // One pass over the workspaces: running prebuilds per preset, in-progress builds per
    // build preset, and latest prebuild builds per preset (backoff and hard limit).
    let mut running: HashMap<&str, Vec<Running<'_>>> = HashMap::new();
    let mut in_progress: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    let mut latest_prebuild_builds: HashMap<&str, Vec<(&Build, &str)>> = HashMap::new();
    for (position, workspace) in snapshot.workspaces.iter().enumerate() {
        if workspace.deleted {
            continue;
        }
        let Some(latest) = index.latest(position) else { continue };
        let template = index.templates.get(workspace.template_id.as_str());
        if workspace.owner.is_prebuilds() {
            if latest.transition == Transition::Start && latest.job_status == JobStatus::Succeeded {
                // Its preset is that of its highest-numbered start build that has one.
                let preset = index.builds[position]
                    .iter()
                    .rev()
                    .filter(|build| build.transition == Transition::Start)
                    .find_map(|build| build.preset_id.as_deref());
                if let Some(preset) = preset {
                    running.entry(preset).or_default().push(Running {
                        id: &workspace.id,
                        created_at: workspace.created_at,
                        ready: workspace.agents_ready == Some(true),
                        unhealthy_since: workspace.unhealthy_since,
                    });
                }
            }
            if let Some(preset) = latest.preset_id.as_deref()
                && latest.transition == Transition::Start
                && template.is_some_and(|template| {
                    template.active_version_id == latest.template_version_id
                })
            {
                latest_prebuild_builds.entry(preset).or_default().push((latest, &workspace.id));
            }
        }
        let on_active_version = template
            .is_some_and(|template| template.active_version_id == latest.template_version_id);
        if latest.initiator == Initiator::Prebuilds
            && on_active_version
            && matches!(latest.job_status, JobStatus::Pending | JobStatus::Running)
            && let Some(preset) = latest.preset_id.as_deref()
        {
            let counts = in_progress.entry(preset).or_default();
            match latest.transition {
                Transition::Start => counts.0 += 1,
                Transition::Stop => counts.1 += 1,
                Transition::Delete => counts.2 += 1,
            }
        }
    }

    let presets = snapshot
        .presets
        .iter()
        .filter(|preset| preset.desired_instances.is_some())
        .filter_map(|preset| {
            let template = index.templates.get(preset.template_id.as_str())?;
            let empty = Vec::new();
            let pool = running.get(preset.id.as_str()).unwrap_or(&empty);
            let no_builds = Vec::new();
            let builds = latest_prebuild_builds.get(preset.id.as_str()).unwrap_or(&no_builds);
            let progress = in_progress.get(preset.id.as_str()).copied().unwrap_or_default();
            Some(plan_preset(preset, template, pool, builds, progress, now, settings))
        })
        .collect();
    ReconcilerPlan { paused: false, presets }
}

fn plan_preset(
    preset: &Preset,
    template: &Template,
    pool: &[Running<'_>],
    builds: &[(&Build, &str)],
    (starting, stopping, deleting): (u64, u64, u64),
    now: DateTime<Utc>,
    settings: &crate::planner::snapshot::ReconcilerSettings,
) -> PresetPlan {
    let active = preset.template_version_id == template.active_version_id
        && !template.deleted
        && !template.deprecated;
    let base = preset.desired_instances.unwrap_or(0);
    let ttl = preset.ttl_s.filter(|ttl| *ttl > 0).map(crate::domain::time::span);
    let is_expired =
        |prebuild: &Running<'_>| ttl.is_some_and(|ttl| now - prebuild.created_at > ttl);
    let replace_after = crate::domain::time::span(settings.unhealthy_replace_after_s);
    // Unhealthy past the grace (and not expired, which is reported as such).
    let is_sick = |prebuild: &Running<'_>| {
        !is_expired(prebuild)
            && prebuild.unhealthy_since.is_some_and(|since| now - since > replace_after)
    };
    let is_doomed = |prebuild: &Running<'_>| is_expired(prebuild) || is_sick(prebuild);

    let actual = pool.len() as u64;
    let expired = pool.iter().filter(|prebuild| is_expired(prebuild)).count() as u64;
    let unhealthy = pool.iter().filter(|prebuild| is_sick(prebuild)).count() as u64;
    let desired = if active { desired_instances(preset, now) } else { 0 };
    let eligible = if active {
        pool.iter().filter(|prebuild| !is_expired(prebuild) && prebuild.ready).count() as u64
    } else {
        0
    };
    let extraneous =
        if active { (actual - expired - unhealthy).saturating_sub(desired) } else { 0 };
    let state = PresetState {
        actual,
        expired,
        desired,
        eligible,
        extraneous,
        starting,
        stopping,
        deleting,
        unhealthy,
    };

    // Backoff and hard limit look at the latest builds of this preset's prebuilds, newest
    // first (ties: workspace id ascending).
    let mut candidates: Vec<&(&Build, &str)> = builds.iter().collect();
    candidates.sort_by(|a, b| b.0.created_at.cmp(&a.0.created_at).then_with(|| a.1.cmp(b.1)));
    let backoff_until = backoff_until(&candidates, template, base, now, settings);
    let hard_limited = hard_limited(&candidates, settings.failure_hard_limit);

    let mut actions = Vec::new();
    if let Some(until) = backoff_until {
        actions.push(PoolAction::Backoff { until });
        return PresetPlan {
            preset_id: preset.id.clone(),
            active,
            state,
            backoff_until,
            hard_limited,
            actions,
        };
    }
    let mut oldest_first: Vec<&Running<'_>> = pool.iter().collect();
    oldest_first.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(b.id)));
    if !active {
        // We deliberately differ from Coder: an inactive preset's expired prebuilds go too.
        let ids: Vec<String> = oldest_first.iter().map(|prebuild| prebuild.id.to_owned()).collect();
        if !ids.is_empty() {
            actions.push(PoolAction::Delete { reason: DeleteReason::Inactive, workspace_ids: ids });
        }
    } else {
        let expired_ids: Vec<String> = oldest_first
            .iter()
            .filter(|prebuild| is_expired(prebuild))
            .map(|prebuild| prebuild.id.to_owned())
            .collect();
        if !expired_ids.is_empty() {
            actions.push(PoolAction::Delete {
                reason: DeleteReason::Expired,
                workspace_ids: expired_ids,
            });
        }
        let sick_ids: Vec<String> = oldest_first
            .iter()
            .filter(|prebuild| is_sick(prebuild))
            .map(|prebuild| prebuild.id.to_owned())
            .collect();
        if !sick_ids.is_empty() {
            actions.push(PoolAction::Delete {
                reason: DeleteReason::Unhealthy,
                workspace_ids: sick_ids,
            });
        }
        let extraneous_ids: Vec<String> = oldest_first
            .iter()
            .filter(|prebuild| !is_doomed(prebuild))
            .take(usize::try_from(extraneous).unwrap_or(usize::MAX))
            .map(|prebuild| prebuild.id.to_owned())
            .collect();
        if !extraneous_ids.is_empty() {
            actions.push(PoolAction::Delete {
                reason: DeleteReason::Extraneous,
                workspace_ids: extraneous_ids,
            });
        }
        // In-progress stops and deletes lower nothing; in-progress starts count as coming.
        let create = desired.saturating_sub(actual - expired - unhealthy).saturating_sub(starting);
        if create > 0 && !hard_limited {
            actions.push(PoolAction::Create { count: create });
        }
    }
    PresetPlan { preset_id: preset.id.clone(), active, state, backoff_until, hard_limited, actions }
}

/// The instances wanted now: the first schedule whose time range contains `now`, else the
/// base value (§5.3). Scheduling is ignored altogether when the zone is empty or unknown,
/// or when the schedules overlap or cannot be checked for overlap; a schedule that is not
/// a valid time range is skipped on its own.
pub fn desired_instances(preset: &Preset, now: DateTime<Utc>) -> u64 {
    let base = preset.desired_instances.unwrap_or(0);
    if preset.schedules.is_empty() || preset.scheduling_timezone.is_empty() {
        return base;
    }
    let Ok(zone) = parse_zone(&preset.scheduling_timezone) else { return base };
    if preset.schedules.len() >= 2 {
        let crons: Vec<&str> =
            preset.schedules.iter().map(|schedule| schedule.cron.as_str()).collect();
        if check_no_overlap(&crons).is_err() {
            return base;
        }
    }
    for schedule in &preset.schedules {
        if let Ok(range) = CronSchedule::parse_time_range(&schedule.cron, zone)
            && range.contains(now)
        {
            return schedule.instances;
        }
    }
    base
}

/// Linear backoff: if a failure among the newest N (N = the base instances) lies in the
/// lookback window, wait `interval` per failure in the window after the newest such one.
fn backoff_until(
    candidates: &[&(&Build, &str)],
    template: &Template,
    base: u64,
    now: DateTime<Utc>,
    settings: &crate::planner::snapshot::ReconcilerSettings,
) -> Option<DateTime<Utc>> {
    if template.deleted {
        return None;
    }
    let window_start = crate::domain::time::before(now, settings.backoff_lookback_s);
    let in_window_failure =
        |build: &Build| build.job_status == JobStatus::Failed && build.created_at >= window_start;
    let top = usize::try_from(base).unwrap_or(usize::MAX);
    let last_failed = candidates
        .iter()
        .take(top)
        .map(|(build, _)| *build)
        .find(|build| in_window_failure(build))?;
    let failures = candidates.iter().filter(|(build, _)| in_window_failure(build)).count() as u64;
    let backoff = crate::domain::time::span_times(settings.backoff_interval_s, failures);
    let until = crate::domain::time::add(last_failed.created_at, backoff);
    (now <= until).then_some(until)
}

/// At least `limit` candidates and the newest `limit` all failed (deleted templates count).
fn hard_limited(candidates: &[&(&Build, &str)], limit: u64) -> bool {
    let Ok(limit) = usize::try_from(limit) else { return false };
    limit > 0
        && candidates.len() >= limit
        && candidates.iter().take(limit).all(|(build, _)| build.job_status == JobStatus::Failed)
}

/// Why a preset's schedules are being ignored (base instances used), if they are: the
/// operator should hear about it once per cycle.
pub fn schedule_problem(preset: &Preset) -> Option<String> {
    if preset.schedules.is_empty() {
        return None;
    }
    if preset.scheduling_timezone.is_empty() {
        return Some("schedules are set but scheduling_timezone is empty".to_owned());
    }
    if let Err(error) = parse_zone(&preset.scheduling_timezone) {
        return Some(error.to_string());
    }
    if preset.schedules.len() >= 2 {
        let crons: Vec<&str> =
            preset.schedules.iter().map(|schedule| schedule.cron.as_str()).collect();
        if let Err(reason) = check_no_overlap(&crons) {
            return Some(reason);
        }
    }
    None
}
