//! Names beside ids in a plan document (`workspaced plan`, `GET /plan`): the planner works
//! on ids only, so a plan of the live database gets each preset's organization, template
//! and preset names and each workspace's name, owner and last use (`last_used_at`,
//! `last_used_source`) here, one indexed lookup per id
//! the plan mentions. Ids the database does not know stay as they are.

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use crate::store::{CachedStatements, StoreError};

fn preset_names(conn: &Connection, id: &str) -> Result<Option<[String; 3]>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT o.name, t.name, p.name FROM presets p
               JOIN template_versions v ON v.id = p.template_version_id
               JOIN templates t ON t.id = v.template_id
               JOIN organizations o ON o.id = t.organization_id
              WHERE p.id = ?1",
            [id],
            |row| Ok([row.get(0)?, row.get(1)?, row.get(2)?]),
        )
        .optional()?)
}

struct WorkspaceNames {
    name: String,
    owner: String,
    last_used_at: Option<i64>,
    last_used_source: Option<String>,
}

fn workspace_names(conn: &Connection, id: &str) -> Result<Option<WorkspaceNames>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT w.name, u.username, w.last_used_at, w.last_used_source
               FROM workspaces w JOIN users u ON u.id = w.owner_id
              WHERE w.id = ?1",
            [id],
            |row| {
                Ok(WorkspaceNames {
                    name: row.get(0)?,
                    owner: row.get(1)?,
                    last_used_at: row.get(2)?,
                    last_used_source: row.get(3)?,
                })
            },
        )
        .optional()?)
}

/// A workspace's name and owner, and when it was last used and what reported it (why the
/// GC or dormancy sees it as active or not).
fn name_workspace(conn: &Connection, entry: &mut Value) -> Result<(), StoreError> {
    let Some(id) = entry["workspace_id"].as_str() else { return Ok(()) };
    if let Some(found) = workspace_names(conn, id)?
        && let Some(object) = entry.as_object_mut()
    {
        object.insert("workspace".into(), Value::String(found.name));
        object.insert("owner".into(), Value::String(found.owner));
        object.insert(
            "last_used_at".into(),
            super::rfc3339(found.last_used_at).map_or(Value::Null, Value::String),
        );
        object.insert(
            "last_used_source".into(),
            found.last_used_source.map_or(Value::Null, Value::String),
        );
    }
    Ok(())
}

/// Adds names to a serialized `Plan` in place.
pub fn annotate(conn: &Connection, plan: &mut Value) -> Result<(), StoreError> {
    if let Some(presets) = plan["reconciler"]["presets"].as_array_mut() {
        for preset in presets {
            let Some(id) = preset["preset_id"].as_str() else { continue };
            if let Some([organization, template, name]) = preset_names(conn, id)?
                && let Some(object) = preset.as_object_mut()
            {
                object.insert("organization".into(), Value::String(organization));
                object.insert("template".into(), Value::String(template));
                object.insert("preset".into(), Value::String(name));
            }
        }
    }
    if let Some(decisions) = plan["lifecycle"].as_array_mut() {
        for decision in decisions {
            name_workspace(conn, decision)?;
        }
    }
    if let Some(actions) = plan["gc"]["actions"].as_array_mut() {
        for action in actions {
            name_workspace(conn, action)?;
        }
    }
    Ok(())
}
