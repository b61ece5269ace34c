//! The pool's housekeeping, beside the reconciler's plan (planner.md §3 leaves these
//! prebuilds alone; left there, they pile up for months on an unattended host):
//!
//! - a prebuild whose create was canceled or interrupted is deleted (it never became a
//!   workspace anyone can claim, and the reconciler builds a replacement beside it);
//! - failed prebuilds of a preset beyond the newest `keep_failed` (kept as evidence for the
//!   hard limit and for the operator) are deleted once they are older than the retention;
//! - when the desired count drops below what exists plus what is queued, the newest
//!   creates that have not started yet are canceled instead of being built and deleted;
//!   so are unstarted creates on an outdated version (a pool edit makes a new version).
//!
//! Pure: an index over a snapshot, the reconciler's plan and the retention in, actions
//! out. The write side re-checks each one in its transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{JobStatus, Transition, time};
use crate::planner::plan::ReconcilerPlan;
use crate::planner::snapshot::{Index, Initiator};

/// Why a prebuild is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeftoverReason {
    /// Its create was canceled or interrupted.
    Canceled,
    /// A failed create beyond the newest kept ones, past the retention.
    Failed,
    /// A create that has not started, beyond the preset's lowered desired count.
    Unwanted,
}

impl LeftoverReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftoverReason::Canceled => "canceled",
            LeftoverReason::Failed => "failed",
            LeftoverReason::Unwanted => "unwanted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub workspace_id: String,
    pub preset_id: Option<String>,
    pub reason: LeftoverReason,
}

/// How long failed prebuilds are kept, and how many of each preset always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub failed_after_s: u64,
    pub keep_failed: usize,
}

/// The cleanup actions for `now`, in snapshot order within each reason (canceled, failed,
/// then unwanted creates newest first).
pub fn leftovers(
    index: &Index<'_>,
    plan: &ReconcilerPlan,
    retention: Retention,
    now: DateTime<Utc>,
) -> Vec<Leftover> {
    let snapshot = index.snapshot;
    let mut canceled = Vec::new();
    let mut failed: HashMap<&str, Vec<(DateTime<Utc>, &str)>> = HashMap::new();
    let mut queued: HashMap<&str, Vec<(DateTime<Utc>, &str)>> = HashMap::new();
    let mut unwanted_outdated = Vec::new();
    for (position, workspace) in snapshot.workspaces.iter().enumerate() {
        if workspace.deleted || !workspace.owner.is_prebuilds() {
            continue;
        }
        let Some(latest) = index.latest(position) else { continue };
        if latest.transition != Transition::Start || latest.initiator != Initiator::Prebuilds {
            continue;
        }
        match latest.job_status {
            JobStatus::Canceled | JobStatus::Interrupted => canceled.push(Leftover {
                workspace_id: workspace.id.clone(),
                preset_id: latest.preset_id.clone(),
                reason: LeftoverReason::Canceled,
            }),
            JobStatus::Failed => {
                let finished = latest.job_completed_at.unwrap_or(latest.created_at);
                let preset = latest.preset_id.as_deref().unwrap_or("");
                failed.entry(preset).or_default().push((finished, &workspace.id));
            }
            JobStatus::Pending if latest.build_number == 1 => {
                let template = index.templates.get(workspace.template_id.as_str());
                let active = template.is_some_and(|template| {
                    !template.deleted
                        && !template.deprecated
                        && template.active_version_id == latest.template_version_id
                });
                if !active {
                    // Built only to be deleted as outdated: cancel it (Coder #20387).
                    unwanted_outdated.push(Leftover {
                        workspace_id: workspace.id.clone(),
                        preset_id: latest.preset_id.clone(),
                        reason: LeftoverReason::Unwanted,
                    });
                } else if let Some(preset) = latest.preset_id.as_deref() {
                    queued.entry(preset).or_default().push((latest.created_at, &workspace.id));
                }
            }
            _ => {}
        }
    }
    let mut out = canceled;
    let cutoff = time::before(now, retention.failed_after_s);
    let mut presets: Vec<_> = failed.into_iter().collect();
    presets.sort_by(|a, b| a.0.cmp(b.0));
    for (preset, mut builds) in presets {
        // Newest first; ties by id so the choice is stable.
        builds.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        for (finished, workspace_id) in builds.into_iter().skip(retention.keep_failed) {
            if finished < cutoff {
                out.push(Leftover {
                    workspace_id: workspace_id.to_owned(),
                    preset_id: (!preset.is_empty()).then(|| preset.to_owned()),
                    reason: LeftoverReason::Failed,
                });
            }
        }
    }
    for preset in &plan.presets {
        let state = &preset.state;
        let wanted = state.desired.saturating_sub(state.actual.saturating_sub(state.expired));
        let excess = state.starting.saturating_sub(wanted);
        if excess == 0 {
            continue;
        }
        let Some(mut creates) = queued.remove(preset.preset_id.as_str()) else { continue };
        creates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1)));
        for (_, workspace_id) in
            creates.into_iter().take(usize::try_from(excess).unwrap_or(usize::MAX))
        {
            out.push(Leftover {
                workspace_id: workspace_id.to_owned(),
                preset_id: Some(preset.preset_id.clone()),
                reason: LeftoverReason::Unwanted,
            });
        }
    }
    out.extend(unwanted_outdated);
    out
}
