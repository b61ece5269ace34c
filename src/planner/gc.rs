//! The garbage collector's decisions (planner.md §6): which workspaces are due, and for
//! each whether to warn, delete or skip (and why), with a safety valve that turns every
//! delete into a skip when a run would delete too much.
//!
//! Pure. Fixes the gaps of TTL-only collectors: age can be measured from last activity,
//! nobody is deleted without a warning `warn_before` earlier, and active, protected or
//! busy workspaces are never deleted.

use chrono::{DateTime, Duration, Utc};

use crate::domain::{JobStatus, time};
use crate::planner::plan::{GcAction, GcActionKind, GcPlan, GcSkipReason};
use crate::planner::snapshot::{GcBasis, GcSettings, Index, Template, Workspace};

/// GC policy for one workspace, with its template's overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enabled: bool,
    pub ttl_s: u64,
    pub basis: GcBasis,
    pub warn_before_s: u64,
    pub active_grace_s: u64,
}

impl Policy {
    pub fn for_template(settings: &GcSettings, template: Option<&Template>) -> Policy {
        let overrides = template.map(|template| &template.gc);
        Policy {
            enabled: settings.enabled && overrides.and_then(|gc| gc.enabled).unwrap_or(true),
            ttl_s: overrides.and_then(|gc| gc.ttl_s).unwrap_or(settings.ttl_s),
            basis: overrides.and_then(|gc| gc.basis).unwrap_or(settings.basis),
            warn_before_s: overrides
                .and_then(|gc| gc.warn_before_s)
                .unwrap_or(settings.warn_before_s),
            active_grace_s: overrides
                .and_then(|gc| gc.active_grace_s)
                .unwrap_or(settings.active_grace_s),
        }
    }
}

fn seconds(value: u64) -> Duration {
    time::span(value)
}

/// The GC plan; empty when `settings.gc` is absent or disabled.
pub fn plan(index: &Index<'_>) -> GcPlan {
    let snapshot = index.snapshot;
    let Some(settings) = snapshot.settings.gc.as_ref().filter(|settings| settings.enabled) else {
        return GcPlan::default();
    };
    let now = snapshot.now;
    let mut population = 0u64;
    let mut actions = Vec::new();
    for (position, workspace) in snapshot.workspaces.iter().enumerate() {
        if workspace.deleted || workspace.owner.is_prebuilds() {
            continue;
        }
        population += 1;
        let policy = Policy::for_template(
            settings,
            index.templates.get(workspace.template_id.as_str()).copied(),
        );
        let in_progress = index.latest(position).is_some_and(|build| {
            matches!(build.job_status, JobStatus::Pending | JobStatus::Running)
        });
        if let Some(action) = judge(workspace, &policy, in_progress, now) {
            actions.push(action);
        }
    }
    let tripped = apply_safety_valve(&mut actions, population, settings);
    GcPlan { safety_valve_tripped: tripped, actions }
}

/// The safety valve: with D deletes among P live user workspaces, if D > fraction × P
/// (exactly) or D > max_deletions_per_run, every delete becomes a `safety_valve` skip.
/// Returns whether it tripped.
pub fn apply_safety_valve(
    actions: &mut [GcAction],
    population: u64,
    settings: &GcSettings,
) -> bool {
    let deletes =
        actions.iter().filter(|action| action.action == GcActionKind::Delete).count() as u64;
    let tripped = settings.max_delete_fraction.is_exceeded_by(deletes, population)
        || deletes > settings.max_deletions_per_run;
    if tripped {
        for action in actions.iter_mut().filter(|action| action.action == GcActionKind::Delete) {
            action.action = GcActionKind::Skip;
            action.reason = Some(GcSkipReason::SafetyValve);
        }
    }
    tripped
}

/// The widest due bound over the global policy and every template override: a workspace
/// whose basis time is not before `now - min(ttl - warn_before)` cannot be due.
pub fn due_bound(
    settings: &GcSettings,
    templates: &[Template],
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let offset = |policy: Policy| seconds(policy.ttl_s) - seconds(policy.warn_before_s);
    let smallest = templates
        .iter()
        .map(|template| offset(Policy::for_template(settings, Some(template))))
        .chain(std::iter::once(offset(Policy::for_template(settings, None))))
        .min()
        .unwrap_or_default();
    time::add(now, -smallest)
}

/// The basis time the workspace's age is measured from.
pub fn basis_time(workspace: &Workspace, basis: GcBasis) -> DateTime<Utc> {
    match basis {
        GcBasis::LastActivity => workspace.last_used(),
        GcBasis::Creation => workspace.created_at,
    }
}

/// The action for one workspace, or `None` when it is not due (or exempt).
pub fn judge(
    workspace: &Workspace,
    policy: &Policy,
    in_progress: bool,
    now: DateTime<Utc>,
) -> Option<GcAction> {
    if !policy.enabled {
        return None;
    }
    let basis = basis_time(workspace, policy.basis);
    let age = now - basis;
    let ttl = seconds(policy.ttl_s);
    let warn_before = seconds(policy.warn_before_s);
    if age <= ttl - warn_before {
        return None;
    }
    let action = |kind, reason, deletes_at| GcAction {
        workspace_id: workspace.id.clone(),
        action: kind,
        reason,
        age_s: u64::try_from(age.num_seconds()).unwrap_or(0),
        deletes_at,
    };
    if workspace.protected {
        return Some(action(GcActionKind::Skip, Some(GcSkipReason::Protected), None));
    }
    if now - workspace.last_used() < seconds(policy.active_grace_s) {
        return Some(action(GcActionKind::Skip, Some(GcSkipReason::Active), None));
    }
    if in_progress {
        return Some(action(GcActionKind::Skip, Some(GcSkipReason::InProgress), None));
    }
    // A warning from before the current due period does not count.
    let due_since = time::add(basis, ttl - warn_before);
    let warned_at = workspace.gc_warned_at.filter(|warned| *warned >= due_since);
    let Some(warned_at) = warned_at else {
        return Some(action(GcActionKind::Warn, None, Some(time::add(now, warn_before))));
    };
    if age > ttl && now - warned_at >= warn_before {
        return Some(action(GcActionKind::Delete, None, None));
    }
    Some(action(
        GcActionKind::Skip,
        Some(GcSkipReason::WarnWindow),
        Some(time::add(warned_at, warn_before)),
    ))
}
