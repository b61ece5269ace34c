//! Engine objects with workspaced's label whose workspace is deleted or unknown: found
//! here (for the GC's sweep, its dry run and the health monitor's periodic count).

use crate::config::Config;
use crate::config::container::CONTAINER_BACKEND;
use crate::domain::EngineOrphan;
use crate::provisioner::container::engine::Engine;
use crate::store::Store;

/// Whether the engine is looked at: some template uses it, or a socket is configured.
pub fn wanted(config: &Config) -> bool {
    config.templates.iter().any(|template| template.provisioner == CONTAINER_BACKEND)
        || config.provisioner.container.socket != "auto"
}

/// Labelled containers and volumes whose workspace is not live.
pub async fn find(store: &Store, config: &Config) -> Result<Vec<EngineOrphan>, String> {
    let engine = Engine::connect(&config.provisioner.container).await.map_err(|e| e.to_string())?;
    let (installation, live) = store
        .read(|conn| {
            Ok((crate::store::installation_id(conn)?, crate::store::workspaces::live_ids(conn)?))
        })
        .await
        .map_err(|error: crate::store::StoreError| crate::error::error_chain(&error))?;
    // Only this installation's objects: another daemon's on the same engine are not ours.
    let (containers, volumes) =
        engine.list_managed(&installation).await.map_err(|e| e.to_string())?;
    let orphan =
        |workspace: &Option<String>| workspace.as_ref().is_none_or(|id| !live.contains(id));
    let mut found: Vec<EngineOrphan> = containers
        .into_iter()
        .filter(|object| orphan(&object.workspace_id))
        .map(|object| EngineOrphan {
            kind: "container",
            name: object.name,
            workspace_id: object.workspace_id,
        })
        .chain(volumes.into_iter().filter(|object| orphan(&object.workspace_id)).map(|object| {
            EngineOrphan { kind: "volume", name: object.name, workspace_id: object.workspace_id }
        }))
        .collect();
    // Containers first: a volume in use by a container cannot go before it.
    found.sort_by(|a, b| a.kind.cmp(b.kind).then_with(|| a.name.cmp(&b.name)));
    Ok(found)
}
