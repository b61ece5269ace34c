//! The lifecycle loop: autostart, autostop, failed-stop, dormancy and auto-delete.
//!
//! Until the lifecycle issue lands, a tick counts the user workspaces it will examine and
//! reports them; it makes no changes. Unclaimed prebuilds are never its business.

use crate::loops::{LoopCtx, LoopError, Now, TickReport};
use crate::store::fleet;

pub async fn tick(ctx: &LoopCtx, now: Now) -> Result<TickReport, LoopError> {
    let counts = ctx
        .store
        .read(fleet::counts)
        .await
        .map_err(|source| LoopError::Store { loop_name: "lifecycle", source })?;
    tracing::debug!(%now, workspaces = counts.user_workspaces, "lifecycle tick read the fleet");
    Ok(TickReport { examined: counts.user_workspaces, actions: 0 })
}
