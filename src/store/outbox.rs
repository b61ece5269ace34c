//! The event outbox table: events are inserted inside the write transaction that makes the
//! change they describe, read back only once committed, and marked delivered by the
//! publisher.
//!
//! Owns the outbox SQL. It must not publish anything itself: only `events::Publisher`
//! talks to subscribers, and only about committed rows.

use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::domain::event::{Event, PublishedEvent};
use crate::store::StoreError;
use crate::store::time::{from_millis, to_millis};

/// Appends `event` to the outbox; call it only inside a write transaction
/// (`WriteTx::emit` does), so the event commits or rolls back with its change.
pub(crate) fn insert(
    conn: &Connection,
    event: &Event,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let mut payload = serde_json::to_value(event).map_err(StoreError::Encode)?;
    let names = names(conn, &payload)?;
    if let Some(object) = payload.as_object_mut()
        && !names.is_empty()
    {
        object.insert(NAMES_KEY.to_owned(), serde_json::Value::Object(names));
    }
    let payload = payload.to_string();
    conn.execute_cached(
        "INSERT INTO outbox (kind, payload, organization_id, owner_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![event.kind(), payload, event.organization_id(), event.owner_id(), to_millis(now)],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The payload key names are stored under, beside the event's own fields.
const NAMES_KEY: &str = "names";

/// The names of the workspace, owner, template, preset and organization an event's ids
/// name, looked up in the event's own transaction (indexed lookups by id).
fn names(
    conn: &Connection,
    payload: &serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
    let id = |key: &str| {
        payload[key].as_str().or_else(|| payload["build"][key].as_str()).map(str::to_owned)
    };
    let mut names = serde_json::Map::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            names.insert(key.to_owned(), serde_json::Value::String(value));
        }
    };
    let lookup = |sql: &str, id: &Option<String>| -> Result<Option<String>, StoreError> {
        let Some(id) = id else { return Ok(None) };
        Ok(rusqlite::OptionalExtension::optional(
            conn.query_row_cached(sql, [id], |row| row.get(0)),
        )?)
    };
    let workspace = id("workspace_id");
    put("workspace", lookup("SELECT name FROM workspaces WHERE id = ?1", &workspace)?);
    let owner = id("owner_id").or_else(|| id("user_id"));
    put("owner", lookup("SELECT username FROM users WHERE id = ?1", &owner)?);
    let template = id("template_id")
        .or(lookup("SELECT template_id FROM workspaces WHERE id = ?1", &workspace)?);
    put("template", lookup("SELECT name FROM templates WHERE id = ?1", &template)?);
    put("preset", lookup("SELECT name FROM presets WHERE id = ?1", &id("preset_id"))?);
    put(
        "organization",
        lookup("SELECT name FROM organizations WHERE id = ?1", &id("organization_id"))?,
    );
    Ok(names)
}

/// Committed events not yet delivered and after `after_id` (sent but not yet marked),
/// oldest first, at most `limit`.
pub fn undelivered(
    conn: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<PublishedEvent>, StoreError> {
    events(
        conn,
        "SELECT id, payload, created_at FROM outbox WHERE delivered_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2",
        after_id,
        limit,
    )
}

/// Committed events after `after_id`, delivered or not, oldest first, at most `limit`
/// (the event stream's replay after `Last-Event-ID`).
pub fn after(
    conn: &Connection,
    after_id: i64,
    limit: usize,
) -> Result<Vec<PublishedEvent>, StoreError> {
    events(
        conn,
        "SELECT id, payload, created_at FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        after_id,
        limit,
    )
}

/// The newest outbox id (0 when empty).
pub fn last_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row_cached("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |row| row.get(0))?)
}

fn events(
    conn: &Connection,
    sql: &str,
    after_id: i64,
    limit: usize,
) -> Result<Vec<PublishedEvent>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(rusqlite::params![after_id, limit], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
    })?;
    let mut events = Vec::new();
    for row in rows {
        let (id, payload, created_at) = row?;
        let corrupt =
            |reason: String| StoreError::Corrupt { what: format!("outbox row {id}"), reason };
        let mut value: serde_json::Value =
            serde_json::from_str(&payload).map_err(|source| corrupt(source.to_string()))?;
        let names = value
            .as_object_mut()
            .and_then(|object| object.remove(NAMES_KEY))
            .unwrap_or(serde_json::Value::Null);
        let event = serde_json::from_value(value).map_err(|source| corrupt(source.to_string()))?;
        let created_at = from_millis(created_at).ok_or_else(|| StoreError::Corrupt {
            what: format!("outbox row {id}"),
            reason: format!("created_at {created_at} is out of range"),
        })?;
        events.push(PublishedEvent { id, created_at, event, names });
    }
    Ok(events)
}

/// Marks the events with ids up to and including `last_id` as delivered.
pub fn mark_delivered_through(
    conn: &Connection,
    last_id: i64,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    Ok(conn.execute_cached(
        "UPDATE outbox SET delivered_at = ?1 WHERE delivered_at IS NULL AND id <= ?2",
        params![to_millis(now), last_id],
    )?)
}

/// How many committed events wait for delivery.
pub fn pending_count(conn: &Connection) -> Result<u64, StoreError> {
    let count: i64 = conn.query_row_cached(
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL",
        [],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}
