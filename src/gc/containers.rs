//! The GC's sweep of container-engine objects: containers and volumes with workspaced's
//! label whose workspace is deleted or unknown. A dry run lists them; a run removes each
//! after a fresh check that its workspace is still not live, and audits the removal.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::Config;
use crate::domain::EngineOrphan;
use crate::provisioner::container::engine::Engine;
use crate::store::Store;

pub use crate::provisioner::container::orphans::{find, wanted};

/// Removes the orphans; (removed, failures).
pub async fn remove(
    store: &Store,
    config: &Config,
    orphans: &[EngineOrphan],
    now: DateTime<Utc>,
) -> (u64, u64) {
    if orphans.is_empty() {
        return (0, 0);
    }
    let engine = match Engine::connect(&config.provisioner.container).await {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "cannot reach the container engine to remove orphans; retried next run");
            return (0, orphans.len() as u64);
        }
    };
    let (mut removed, mut failures) = (0, 0);
    for orphan in orphans {
        if let Some(id) = orphan.workspace_id.clone() {
            let live = store.read(move |conn| crate::store::workspaces::is_live(conn, &id)).await;
            if live.unwrap_or(true) {
                tracing::info!(kind = orphan.kind, name = %orphan.name, "belongs to a live workspace after all; kept");
                continue;
            }
        }
        let result = match orphan.kind {
            "container" => engine.remove_container(&orphan.name).await,
            _ => engine.remove_volume(&orphan.name).await,
        };
        if let Err(error) = result {
            failures += 1;
            tracing::error!(kind = orphan.kind, name = %orphan.name, %error, "cannot remove an orphaned engine object; retried next run");
            continue;
        }
        removed += 1;
        tracing::info!(kind = orphan.kind, name = %orphan.name, "removed orphaned {}", orphan.kind);
        let details = json!({ "workspace_id": orphan.workspace_id });
        crate::gc::audit_orphan_removal(store, orphan.kind, orphan.name.clone(), details, now)
            .await;
    }
    (removed, failures)
}
