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
    let payload = serde_json::to_string(event).map_err(StoreError::Encode)?;
    conn.execute_cached(
        "INSERT INTO outbox (kind, payload, organization_id, owner_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![event.kind(), payload, event.organization_id(), event.owner_id(), to_millis(now)],
    )?;
    Ok(conn.last_insert_rowid())
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
        let event = serde_json::from_str(&payload).map_err(|source| StoreError::Corrupt {
            what: format!("outbox row {id}"),
            reason: source.to_string(),
        })?;
        let created_at = from_millis(created_at).ok_or_else(|| StoreError::Corrupt {
            what: format!("outbox row {id}"),
            reason: format!("created_at {created_at} is out of range"),
        })?;
        events.push(PublishedEvent { id, created_at, event });
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
