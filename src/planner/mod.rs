//! Pure decisions: given a snapshot, a time and settings, what should happen. The
//! reconciler, lifecycle and GC planners and the cron dialect live here.
//!
//! Invariant (checked by `tests/it/tidy.rs`): nothing under `planner` imports tokio,
//! rusqlite, hyper, kube or `crate::store`, or reads a `Clock`. Time is a parameter.

pub mod schedule;
