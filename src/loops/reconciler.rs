//! The prebuild reconciler loop: each cycle reads the pools and brings every preset to its
//! desired size.
//!
//! Until the reconciler issue lands, a cycle reads the fleet counts the planner will work
//! from and reports them; it makes no changes.

use crate::loops::{LoopCtx, LoopError, Now, TickReport};
use crate::store::fleet;

pub async fn tick(ctx: &LoopCtx, now: Now) -> Result<TickReport, LoopError> {
    let counts = ctx
        .store
        .read(fleet::counts)
        .await
        .map_err(|source| LoopError::Store { loop_name: "reconciler", source })?;
    tracing::debug!(
        %now,
        presets = counts.prebuild_presets,
        prebuilds = counts.prebuilds,
        "reconcile cycle read the pools"
    );
    Ok(TickReport { examined: counts.prebuild_presets, actions: 0 })
}
