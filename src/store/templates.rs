//! Templates, their versions, parameters and presets: the SQL.
//!
//! Owns inserting and reading template rows. Deciding *what* to write (hashing a template's
//! content, diffing the config file against the database) is the templates-config code's
//! job, not this module's.

use crate::domain::TextEnum;
use crate::store::CachedStatements;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::domain::ParameterType;
use crate::domain::parameters::ParameterSpec;
use crate::store::time::to_millis;
use crate::store::{StoreError, parse_text};

/// Schedule options of a template: updated in place, never a new version. 0 = off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateOptions {
    pub default_ttl_s: i64,
    pub max_ttl_s: i64,
    pub autostart_enabled: bool,
    pub autostop_enabled: bool,
    /// Bit 0 = Sunday … bit 6 = Saturday.
    pub autostart_days: u8,
    pub failure_ttl_s: i64,
    pub time_til_dormant_s: i64,
    pub time_til_dormant_autodelete_s: i64,
    pub require_active_version: bool,
    pub display_name: String,
    pub deprecated: bool,
    /// GC overrides; `None` = the global `[gc]` value.
    pub gc_enabled: Option<bool>,
    pub gc_ttl_s: Option<i64>,
    pub gc_basis: Option<String>,
    pub gc_warn_before_s: Option<i64>,
    pub gc_active_grace_s: Option<i64>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        TemplateOptions {
            default_ttl_s: 0,
            max_ttl_s: 0,
            autostart_enabled: true,
            autostop_enabled: true,
            autostart_days: 0b111_1111,
            failure_ttl_s: 0,
            time_til_dormant_s: 0,
            time_til_dormant_autodelete_s: 0,
            require_active_version: false,
            display_name: String::new(),
            deprecated: false,
            gc_enabled: None,
            gc_ttl_s: None,
            gc_basis: None,
            gc_warn_before_s: None,
            gc_active_grace_s: None,
        }
    }
}

/// What a new template version holds.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionSpec {
    pub name: String,
    pub content_hash: String,
    pub provisioner: String,
    pub provisioner_config: serde_json::Value,
    pub parameters: Vec<ParameterSpec>,
}

/// Inserts a template without an active version; returns its id.
pub fn insert_template(
    conn: &Connection,
    organization_id: &str,
    name: &str,
    provisioner: &str,
    options: &TemplateOptions,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute_cached(
        "INSERT INTO templates (id, organization_id, name, provisioner, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, organization_id, name, provisioner, to_millis(now)],
    )?;
    update_options(conn, &id, options, now)?;
    Ok(id)
}

/// Updates a template's schedule options in place.
pub fn update_options(
    conn: &Connection,
    template_id: &str,
    options: &TemplateOptions,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE templates SET default_ttl_s = ?2, max_ttl_s = ?3, autostart_enabled = ?4,
            autostop_enabled = ?5, autostart_days = ?6, failure_ttl_s = ?7,
            time_til_dormant_s = ?8, time_til_dormant_autodelete_s = ?9,
            require_active_version = ?10, updated_at = ?11, display_name = ?12, deprecated = ?13,
            gc_enabled = ?14, gc_ttl_s = ?15, gc_basis = ?16, gc_warn_before_s = ?17,
            gc_active_grace_s = ?18
         WHERE id = ?1",
        params![
            template_id,
            options.default_ttl_s,
            options.max_ttl_s,
            options.autostart_enabled,
            options.autostop_enabled,
            options.autostart_days,
            options.failure_ttl_s,
            options.time_til_dormant_s,
            options.time_til_dormant_autodelete_s,
            options.require_active_version,
            to_millis(now),
            options.display_name,
            options.deprecated,
            options.gc_enabled,
            options.gc_ttl_s,
            options.gc_basis,
            options.gc_warn_before_s,
            options.gc_active_grace_s,
        ],
    )?;
    Ok(())
}

/// The schedule options stored for a template.
pub fn options(
    conn: &Connection,
    template_id: &str,
) -> Result<Option<TemplateOptions>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT default_ttl_s, max_ttl_s, autostart_enabled, autostop_enabled, autostart_days,
                    failure_ttl_s, time_til_dormant_s, time_til_dormant_autodelete_s,
                    require_active_version, display_name, deprecated, gc_enabled, gc_ttl_s,
                    gc_basis, gc_warn_before_s, gc_active_grace_s
               FROM templates WHERE id = ?1",
            [template_id],
            |row| {
                Ok(TemplateOptions {
                    default_ttl_s: row.get(0)?,
                    max_ttl_s: row.get(1)?,
                    autostart_enabled: row.get(2)?,
                    autostop_enabled: row.get(3)?,
                    autostart_days: row.get(4)?,
                    failure_ttl_s: row.get(5)?,
                    time_til_dormant_s: row.get(6)?,
                    time_til_dormant_autodelete_s: row.get(7)?,
                    require_active_version: row.get(8)?,
                    display_name: row.get(9)?,
                    deprecated: row.get(10)?,
                    gc_enabled: row.get(11)?,
                    gc_ttl_s: row.get(12)?,
                    gc_basis: row.get(13)?,
                    gc_warn_before_s: row.get(14)?,
                    gc_active_grace_s: row.get(15)?,
                })
            },
        )
        .optional()?)
}

/// A live template's id, active version and that version's content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTemplate {
    pub id: String,
    pub organization_id: String,
    pub organization_name: String,
    pub name: String,
    pub active_version_id: Option<String>,
    pub content_hash: Option<String>,
}

/// Every live (not deleted) template.
pub fn live(conn: &Connection) -> Result<Vec<LiveTemplate>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT t.id, t.organization_id, o.name, t.name, t.active_version_id, v.content_hash
           FROM templates t
           JOIN organizations o ON o.id = t.organization_id
           LEFT JOIN template_versions v ON v.id = t.active_version_id
          WHERE t.deleted = 0 ORDER BY o.name, t.name",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(LiveTemplate {
            id: row.get(0)?,
            organization_id: row.get(1)?,
            organization_name: row.get(2)?,
            name: row.get(3)?,
            active_version_id: row.get(4)?,
            content_hash: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Soft-deletes a template: its row and versions stay for history, its name is freed.
pub fn soft_delete(
    conn: &Connection,
    template_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE templates SET deleted = 1, updated_at = ?2 WHERE id = ?1",
        params![template_id, to_millis(now)],
    )?;
    Ok(())
}

/// How many versions a template has (to name the next one `v<n+1>`).
pub fn version_count(conn: &Connection, template_id: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT COUNT(*) FROM template_versions WHERE template_id = ?1",
        [template_id],
        |row| row.get(0),
    )?)
}

/// The id of the organization named `name`, created if missing.
pub fn ensure_organization(
    conn: &Connection,
    name: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    if let Some(id) = conn
        .query_row_cached("SELECT id FROM organizations WHERE name = ?1", [name], |row| row.get(0))
        .optional()?
    {
        return Ok(id);
    }
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute_cached(
        "INSERT INTO organizations (id, name, created_at) VALUES (?1, ?2, ?3)",
        params![id, name, to_millis(now)],
    )?;
    Ok(id)
}

/// Inserts a version with its parameters and makes it the template's active version.
pub fn insert_active_version(
    conn: &Connection,
    template_id: &str,
    spec: &VersionSpec,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let config = serde_json::to_string(&spec.provisioner_config).map_err(StoreError::Encode)?;
    conn.execute_cached(
        "INSERT INTO template_versions (id, template_id, name, content_hash, provisioner, provisioner_config, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, template_id, spec.name, spec.content_hash, spec.provisioner, config, to_millis(now)],
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO template_version_parameters
            (template_version_id, name, type, mutable, default_value, options, description, position)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (position, parameter) in spec.parameters.iter().enumerate() {
        let options = if parameter.options.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&parameter.options).map_err(StoreError::Encode)?)
        };
        insert.execute(params![
            id,
            parameter.name,
            parameter.kind.as_str(),
            parameter.mutable,
            parameter.default_value,
            options,
            parameter.description,
            position as i64,
        ])?;
    }
    conn.execute_cached(
        "UPDATE templates SET active_version_id = ?2, provisioner = ?3, updated_at = ?4 WHERE id = ?1",
        params![template_id, id, spec.provisioner, to_millis(now)],
    )?;
    Ok(id)
}

/// The parameters a version declares, in declaration order.
pub fn version_parameters(
    conn: &Connection,
    version_id: &str,
) -> Result<Vec<ParameterSpec>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT name, type, mutable, default_value, options, description
           FROM template_version_parameters WHERE template_version_id = ?1 ORDER BY position, name",
    )?;
    let rows = statement.query_map([version_id], |row| {
        Ok((
            row.get::<_, String>(0)?,
            parse_text::<ParameterType>(row, 1)?,
            row.get::<_, bool>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, Option<String>>(4)?,
            row.get::<_, String>(5)?,
        ))
    })?;
    let mut parameters = Vec::new();
    for row in rows {
        let (name, kind, mutable, default_value, options, description) = row?;
        let options: Vec<String> = match options {
            Some(json) => serde_json::from_str(&json).map_err(|error| StoreError::Corrupt {
                what: format!("options of parameter {name} of version {version_id}"),
                reason: error.to_string(),
            })?,
            None => Vec::new(),
        };
        parameters.push(ParameterSpec { name, kind, mutable, default_value, options, description });
    }
    Ok(parameters)
}

/// A preset of a version; `desired_instances` None = no prebuild pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetSpec {
    pub name: String,
    pub parameters: BTreeMap<String, String>,
    pub desired_instances: Option<i64>,
    pub ttl_s: Option<i64>,
    pub scheduling_timezone: String,
    /// (cron expression, instances)
    pub schedules: Vec<(String, i64)>,
}

/// Inserts a preset of `version_id`; returns its id.
pub fn insert_preset(
    conn: &Connection,
    version_id: &str,
    spec: &PresetSpec,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute_cached(
        "INSERT INTO presets (id, template_version_id, name, desired_instances, ttl_s, scheduling_timezone, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            version_id,
            spec.name,
            spec.desired_instances,
            spec.ttl_s,
            spec.scheduling_timezone,
            to_millis(now)
        ],
    )?;
    for (name, value) in &spec.parameters {
        conn.execute_cached(
            "INSERT INTO preset_parameters (preset_id, name, value) VALUES (?1, ?2, ?3)",
            params![id, name, value],
        )?;
    }
    insert_schedules(conn, &id, &spec.schedules)?;
    Ok(id)
}

fn insert_schedules(
    conn: &Connection,
    preset_id: &str,
    schedules: &[(String, i64)],
) -> Result<(), StoreError> {
    for (cron, instances) in schedules {
        conn.execute_cached(
            "INSERT INTO preset_prebuild_schedules (preset_id, cron_expression, desired_instances)
             VALUES (?1, ?2, ?3)",
            params![preset_id, cron, instances],
        )?;
    }
    Ok(())
}

/// A preset's parameter values.
pub fn preset_parameters(
    conn: &Connection,
    preset_id: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT name, value FROM preset_parameters WHERE preset_id = ?1")?;
    let rows = statement.query_map([preset_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The template's active version id, if the template exists and has one.
pub fn active_version(conn: &Connection, template_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT active_version_id FROM templates WHERE id = ?1",
            [template_id],
            |row| row.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// A preset of a version as stored: its id and what the config said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPreset {
    pub id: String,
    pub spec: PresetSpec,
}

/// Every preset of `version_id` with its parameters, pool settings and schedules.
pub fn version_presets(
    conn: &Connection,
    version_id: &str,
) -> Result<Vec<StoredPreset>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, name, desired_instances, ttl_s, scheduling_timezone FROM presets
          WHERE template_version_id = ?1 ORDER BY created_at, id",
    )?;
    let rows = statement.query_map([version_id], |row| {
        Ok(StoredPreset {
            id: row.get(0)?,
            spec: PresetSpec {
                name: row.get(1)?,
                parameters: BTreeMap::new(),
                desired_instances: row.get(2)?,
                ttl_s: row.get(3)?,
                scheduling_timezone: row.get(4)?,
                schedules: Vec::new(),
            },
        })
    })?;
    let mut presets = rows.collect::<Result<Vec<_>, _>>()?;
    let mut schedules = conn.prepare_cached(
        "SELECT cron_expression, desired_instances FROM preset_prebuild_schedules
          WHERE preset_id = ?1 ORDER BY id",
    )?;
    for preset in &mut presets {
        preset.spec.parameters = preset_parameters(conn, &preset.id)?;
        preset.spec.schedules = schedules
            .query_map([&preset.id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
    }
    Ok(presets)
}

/// Changes a preset's pool settings in place (instances, expiration, time zone, schedules):
/// its prebuilds stay. Its name and parameters are content and never change here.
pub fn update_pool(
    conn: &Connection,
    preset_id: &str,
    spec: &PresetSpec,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE presets SET desired_instances = ?2, ttl_s = ?3, scheduling_timezone = ?4 WHERE id = ?1",
        params![preset_id, spec.desired_instances, spec.ttl_s, spec.scheduling_timezone],
    )?;
    conn.execute_cached("DELETE FROM preset_prebuild_schedules WHERE preset_id = ?1", [preset_id])?;
    insert_schedules(conn, preset_id, &spec.schedules)?;
    Ok(())
}

/// Records a version's content hash (a hash written by an older scheme, recognised as the
/// same content, is rewritten instead of making a new version).
pub fn set_content_hash(conn: &Connection, version_id: &str, hash: &str) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE template_versions SET content_hash = ?2 WHERE id = ?1",
        params![version_id, hash],
    )?;
    Ok(())
}
