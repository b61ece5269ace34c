//! Workspaces: the SQL for creating and reading them.
//!
//! Owns workspace rows. State changes caused by builds (ready, deleted) are written by
//! `store::jobs` when a job completes, in the same transaction as the job's outcome.

use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::store::StoreError;
use crate::store::time::{from_millis, to_millis};

/// What a new workspace needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkspace {
    pub organization_id: String,
    pub owner_id: String,
    pub template_id: String,
    pub preset_id: Option<String>,
    pub name: String,
    pub autostart_schedule: Option<String>,
    pub ttl_s: Option<i64>,
    pub automatic_updates_always: bool,
}

/// A workspace row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub id: String,
    pub organization_id: String,
    pub owner_id: String,
    pub template_id: String,
    pub preset_id: Option<String>,
    pub name: String,
    pub autostart_schedule: Option<String>,
    pub ttl_s: Option<i64>,
    pub automatic_updates_always: bool,
    pub agents_ready: Option<bool>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub dormant_at: Option<DateTime<Utc>>,
    pub deleting_at: Option<DateTime<Utc>>,
    pub protected: bool,
    pub gc_warned_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateWorkspaceError {
    #[error("the owner already has a workspace named {name:?}")]
    NameTaken { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}
crate::has_store_error!(CreateWorkspaceError);

/// Inserts a workspace; `last_used_at` starts at `now`. Returns its id.
pub fn insert(
    conn: &Connection,
    new: &NewWorkspace,
    now: DateTime<Utc>,
) -> Result<String, CreateWorkspaceError> {
    let id = uuid::Uuid::new_v4().to_string();
    let result = conn.execute_cached(
        "INSERT INTO workspaces (id, organization_id, owner_id, template_id, preset_id, name,
            autostart_schedule, ttl_s, automatic_updates, created_at, updated_at, last_used_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?10)",
        params![
            id,
            new.organization_id,
            new.owner_id,
            new.template_id,
            new.preset_id,
            new.name,
            new.autostart_schedule,
            new.ttl_s,
            if new.automatic_updates_always { "always" } else { "never" },
            to_millis(now),
        ],
    );
    match result {
        Ok(_) => Ok(id),
        Err(rusqlite::Error::SqliteFailure(error, Some(message)))
            if error.code == ErrorCode::ConstraintViolation
                && message.contains("workspaces.name") =>
        {
            Err(CreateWorkspaceError::NameTaken { name: new.name.clone() })
        }
        Err(error) => Err(StoreError::from(error).into()),
    }
}

const COLUMNS: &str = "id, organization_id, owner_id, template_id, preset_id, name,
    autostart_schedule, ttl_s, automatic_updates, agents_ready, created_at, last_used_at,
    dormant_at, deleting_at, protected, gc_warned_at, deleted";

fn time(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let millis: i64 = row.get(index)?;
    from_millis(millis).ok_or(rusqlite::Error::IntegralValueOutOfRange(index, millis))
}

fn optional_time(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get::<_, Option<i64>>(index)? {
        Some(millis) => Ok(Some(
            from_millis(millis).ok_or(rusqlite::Error::IntegralValueOutOfRange(index, millis))?,
        )),
        None => Ok(None),
    }
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Workspace> {
    Ok(Workspace {
        id: row.get(0)?,
        organization_id: row.get(1)?,
        owner_id: row.get(2)?,
        template_id: row.get(3)?,
        preset_id: row.get(4)?,
        name: row.get(5)?,
        autostart_schedule: row.get(6)?,
        ttl_s: row.get(7)?,
        automatic_updates_always: row.get::<_, String>(8)? == "always",
        agents_ready: row.get(9)?,
        created_at: time(row, 10)?,
        last_used_at: time(row, 11)?,
        dormant_at: optional_time(row, 12)?,
        deleting_at: optional_time(row, 13)?,
        protected: row.get(14)?,
        gc_warned_at: optional_time(row, 15)?,
        deleted: row.get(16)?,
    })
}

/// The workspace with `id`, deleted or not.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Workspace>, StoreError> {
    Ok(conn
        .query_row_cached(
            &format!("SELECT {COLUMNS} FROM workspaces WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

/// Ids of every live workspace.
/// The apps a workspace's last start reported (none when it is not running).
pub fn apps(conn: &Connection, id: &str) -> Result<Vec<crate::domain::App>, StoreError> {
    let text: Option<String> = conn
        .query_row_cached("SELECT apps FROM workspaces WHERE id = ?1", [id], |row| row.get(0))
        .optional()?
        .flatten();
    // Written by the store from a typed list; an unreadable value shows as none.
    Ok(text.and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default())
}

pub fn live_ids(conn: &Connection) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut statement = conn.prepare_cached("SELECT id FROM workspaces WHERE deleted = 0")?;
    let rows = statement.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a live workspace has this id.
pub fn is_live(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = ?1 AND deleted = 0)",
        [id],
        |row| row.get(0),
    )?)
}

/// Protects a workspace from deletion (or lifts it).
pub fn set_protected(
    conn: &Connection,
    id: &str,
    protected: bool,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE workspaces SET protected = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, protected, to_millis(now)],
    )?;
    Ok(())
}

/// Records that the garbage collector warned the owner.
pub fn mark_gc_warned(conn: &Connection, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE workspaces SET gc_warned_at = ?2 WHERE id = ?1",
        params![id, to_millis(now)],
    )?;
    Ok(())
}

/// Marks a workspace deleted without a build (nothing was ever built for it).
pub fn mark_deleted(conn: &Connection, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE workspaces SET deleted = 1, updated_at = ?2 WHERE id = ?1",
        params![id, to_millis(now)],
    )?;
    Ok(())
}

/// The live workspace of `owner_id` named `name`.
pub fn get_by_name(
    conn: &Connection,
    owner_id: &str,
    name: &str,
) -> Result<Option<Workspace>, StoreError> {
    Ok(conn
        .query_row_cached(
            &format!(
                "SELECT {COLUMNS} FROM workspaces WHERE owner_id = ?1 AND name = ?2 AND deleted = 0"
            ),
            params![owner_id, name],
            from_row,
        )
        .optional()?)
}

/// Live workspaces, oldest first.
pub fn list_live(conn: &Connection) -> Result<Vec<Workspace>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM workspaces WHERE deleted = 0 ORDER BY created_at, id"
    ))?;
    let rows = statement.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
