//! Prebuilt-workspace pools: the reconcile loop's iteration (`reconcile`), its write side
//! (`write`: create, delete, housekeeping, hard limit, reset) and the claim path (`claim`).
//! The decisions come from `planner::reconcile` and `planner::housekeeping`; the SQL from
//! `store::presets`.

pub mod claim;
pub mod reconcile;
pub mod write;

pub use claim::{ClaimError, ClaimOutcome, ClaimRequest, claim, claim_audited, claim_workspace};
pub use write::{
    ResetError, ResetReport, clean_up, create_prebuild, delete_prebuild, reset_preset,
    sync_hard_limit,
};
