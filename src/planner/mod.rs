//! Pure decisions: given a snapshot (which carries `now`) and its settings, what should
//! happen. The reconciler, lifecycle and GC planners and the cron dialect live here.
//!
//! Invariant (checked by `tests/it/tidy.rs`): nothing under `planner` imports tokio,
//! rusqlite, hyper, kube or `crate::store`, or reads a clock. Time is a parameter.

pub mod deadlines;
pub mod gc;
pub mod health;
pub mod housekeeping;
pub mod lifecycle;
pub mod plan;
pub mod reconcile;
pub mod schedule;
pub mod snapshot;

use plan::Plan;
use snapshot::{Index, Snapshot};

/// Everything the next reconcile, lifecycle and GC runs would do, at `snapshot.now`.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let index = Index::new(snapshot);
    Plan {
        now: snapshot.now,
        reconciler: reconcile::plan(&index),
        lifecycle: lifecycle::plan(&index),
        gc: gc::plan(&index),
    }
}

#[cfg(test)]
mod tests;
