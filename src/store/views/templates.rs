//! The API's views of templates, their versions and presets.

use crate::store::CachedStatements;
use crate::store::StoreError;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::rfc3339;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateView {
    pub id: String,
    pub organization_id: String,
    pub organization: String,
    pub name: String,
    pub display_name: String,
    pub provisioner: String,
    pub active_version_id: Option<String>,
    pub deprecated: bool,
    pub default_ttl_s: i64,
    pub max_ttl_s: i64,
    pub autostart_enabled: bool,
    pub autostop_enabled: bool,
    pub failure_ttl_s: i64,
    pub time_til_dormant_s: i64,
    pub time_til_dormant_autodelete_s: i64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

const TEMPLATE_VIEW: &str =
    "SELECT t.id, t.organization_id, o.name, t.name, t.display_name, t.provisioner,
        t.active_version_id, t.deprecated, t.default_ttl_s, t.max_ttl_s, t.autostart_enabled,
        t.autostop_enabled, t.failure_ttl_s, t.time_til_dormant_s, t.time_til_dormant_autodelete_s,
        t.created_at, t.updated_at
   FROM templates t JOIN organizations o ON o.id = t.organization_id";

fn template_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateView> {
    Ok(TemplateView {
        id: row.get(0)?,
        organization_id: row.get(1)?,
        organization: row.get(2)?,
        name: row.get(3)?,
        display_name: row.get(4)?,
        provisioner: row.get(5)?,
        active_version_id: row.get(6)?,
        deprecated: row.get(7)?,
        default_ttl_s: row.get(8)?,
        max_ttl_s: row.get(9)?,
        autostart_enabled: row.get(10)?,
        autostop_enabled: row.get(11)?,
        failure_ttl_s: row.get(12)?,
        time_til_dormant_s: row.get(13)?,
        time_til_dormant_autodelete_s: row.get(14)?,
        created_at: rfc3339(row.get(15)?),
        updated_at: rfc3339(row.get(16)?),
    })
}

/// Live templates by organization and name.
pub fn templates(conn: &Connection) -> Result<Vec<TemplateView>, StoreError> {
    let mut statement = conn
        .prepare_cached(&format!("{TEMPLATE_VIEW} WHERE t.deleted = 0 ORDER BY o.name, t.name"))?;
    let rows = statement.query_map([], template_view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A live template by id, or by name in the organization `organization_id`.
pub fn template(
    conn: &Connection,
    id_or_name: &str,
    organization_id: &str,
) -> Result<Option<TemplateView>, StoreError> {
    Ok(conn
        .query_row_cached(
            &format!(
                "{TEMPLATE_VIEW} WHERE t.deleted = 0 AND (t.id = ?1 OR (t.name = ?1 AND t.organization_id = ?2))"
            ),
            params![id_or_name, organization_id],
            template_view,
        )
        .optional()?)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionView {
    pub id: String,
    pub name: String,
    pub content_hash: String,
    pub provisioner: String,
    pub active: bool,
    pub created_at: Option<String>,
}

/// A template's versions, newest first.
pub fn versions(conn: &Connection, template_id: &str) -> Result<Vec<VersionView>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT v.id, v.name, v.content_hash, v.provisioner, v.id = t.active_version_id, v.created_at
           FROM template_versions v JOIN templates t ON t.id = v.template_id
          WHERE v.template_id = ?1 ORDER BY v.created_at DESC, v.rowid DESC",
    )?;
    let rows = statement.query_map([template_id], |row| {
        Ok(VersionView {
            id: row.get(0)?,
            name: row.get(1)?,
            content_hash: row.get(2)?,
            provisioner: row.get(3)?,
            active: row.get(4)?,
            created_at: rfc3339(row.get(5)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A preset of a template version, with what the pool status needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresetRow {
    pub id: String,
    pub name: String,
    pub template_version_id: String,
    pub desired_instances: Option<i64>,
    pub ttl_s: Option<i64>,
    pub prebuild_status: String,
}

pub fn presets(conn: &Connection, version_id: &str) -> Result<Vec<PresetRow>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, name, template_version_id, desired_instances, ttl_s, prebuild_status
           FROM presets WHERE template_version_id = ?1 ORDER BY created_at, rowid",
    )?;
    let rows = statement.query_map([version_id], |row| {
        Ok(PresetRow {
            id: row.get(0)?,
            name: row.get(1)?,
            template_version_id: row.get(2)?,
            desired_instances: row.get(3)?,
            ttl_s: row.get(4)?,
            prebuild_status: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The organization and template of a preset (for authorization).
pub fn preset_owner(
    conn: &Connection,
    preset_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT t.organization_id, t.id FROM presets p
               JOIN template_versions v ON v.id = p.template_version_id
               JOIN templates t ON t.id = v.template_id WHERE p.id = ?1",
            [preset_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}
