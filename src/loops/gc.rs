//! The garbage collector loop: warns about, then deletes, workspaces past their TTL.
//!
//! Until the GC issue lands, a run counts the workspaces it would judge (none while
//! `[gc] enabled = false`) and reports them; it deletes nothing.

use crate::loops::{LoopCtx, LoopError, Now, TickReport};
use crate::store::fleet;

pub async fn tick(ctx: &LoopCtx, now: Now) -> Result<TickReport, LoopError> {
    let enabled = ctx.config.borrow().gc.enabled;
    if !enabled {
        tracing::debug!(%now, "gc run skipped: [gc] enabled = false");
        return Ok(TickReport::default());
    }
    let counts = ctx
        .store
        .read(fleet::counts)
        .await
        .map_err(|source| LoopError::Store { loop_name: "gc", source })?;
    tracing::debug!(%now, workspaces = counts.user_workspaces, "gc run read the fleet");
    Ok(TickReport { examined: counts.user_workspaces, actions: 0 })
}
