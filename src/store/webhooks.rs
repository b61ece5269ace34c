//! Webhook deliveries: per-webhook cursors over the outbox, delivery rows with their
//! attempts, and the API's listing. The worker (`events::webhooks`) decides what to send
//! and when; this is its SQL.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::store::time::{from_millis, to_millis};
use crate::store::{CachedStatements, StoreError};

/// A delivery row as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub webhook: String,
    pub event_id: i64,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub updated_at: String,
}

/// Deliveries, newest first, filtered by status when given.
pub fn deliveries(
    conn: &Connection,
    status: Option<&str>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT d.id, d.webhook, d.event_id, o.kind, d.status, d.attempts, d.next_attempt_at,
                d.last_status, d.last_error, d.updated_at
           FROM webhook_deliveries d JOIN outbox o ON o.id = d.event_id
          WHERE ?1 IS NULL OR d.status = ?1
          ORDER BY d.id DESC LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![status, limit], |row| {
        let status: String = row.get(4)?;
        let next: i64 = row.get(6)?;
        Ok(Delivery {
            id: row.get(0)?,
            webhook: row.get(1)?,
            event_id: row.get(2)?,
            kind: row.get(3)?,
            next_attempt_at: (status == "pending")
                .then(|| from_millis(next).map(|time| time.to_rfc3339()))
                .flatten(),
            status,
            attempts: row.get(5)?,
            last_status: row.get(7)?,
            last_error: row.get(8)?,
            updated_at: from_millis(row.get(9)?).map(|time| time.to_rfc3339()).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Where a webhook's cursor stands (the last outbox id it looked at); `None`: new webhook.
pub fn cursor(conn: &Connection, webhook: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT last_event_id FROM webhook_cursors WHERE webhook = ?1",
            [webhook],
            |row| row.get(0),
        )
        .optional()?)
}

/// A new webhook's cursor starts after the newest event: it gets events from now on.
pub fn start_cursor_at_the_end(conn: &Connection, webhook: &str) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO webhook_cursors (webhook, last_event_id)
         SELECT ?1, COALESCE(MAX(id), 0) FROM outbox",
        [webhook],
    )?;
    Ok(())
}

/// Up to `limit` committed events after `cursor`: (id, kind), oldest first.
pub fn events_after(
    conn: &Connection,
    cursor: i64,
    limit: usize,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT id, kind FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![cursor, limit], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Queues one delivery, due now; 0 when it already exists.
pub fn queue_delivery(
    conn: &Connection,
    webhook: &str,
    event_id: i64,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    Ok(conn.execute_cached(
        "INSERT OR IGNORE INTO webhook_deliveries (webhook, event_id, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?3, ?3)",
        params![webhook, event_id, to_millis(now)],
    )?)
}

pub fn move_cursor(conn: &Connection, webhook: &str, last_event_id: i64) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE webhook_cursors SET last_event_id = ?2 WHERE webhook = ?1",
        params![webhook, last_event_id],
    )?;
    Ok(())
}

/// A due delivery with what to send.
pub struct Due {
    pub id: i64,
    pub webhook: String,
    pub event_id: i64,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: u32,
}

/// Pending deliveries due at `now`, the longest-waiting first.
pub fn due(conn: &Connection, now: DateTime<Utc>, limit: usize) -> Result<Vec<Due>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT d.id, d.webhook, d.event_id, o.kind, o.payload, o.created_at, d.attempts
           FROM webhook_deliveries d JOIN outbox o ON o.id = d.event_id
          WHERE d.status = 'pending' AND d.next_attempt_at <= ?1
          ORDER BY d.next_attempt_at, d.id LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![to_millis(now), limit], |row| {
        Ok(Due {
            id: row.get(0)?,
            webhook: row.get(1)?,
            event_id: row.get(2)?,
            kind: row.get(3)?,
            payload: row.get(4)?,
            created_at: row.get(5)?,
            attempts: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many deliveries wait.
pub fn pending_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'",
        [],
        |row| row.get(0),
    )?)
}

/// Moves a delivery's next attempt to `at` (ms), without counting an attempt.
pub fn postpone(conn: &Connection, delivery_id: i64, at: i64) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE webhook_deliveries SET next_attempt_at = ?2 WHERE id = ?1",
        params![delivery_id, at],
    )?;
    Ok(())
}

/// The outcome of one attempt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord<'a> {
    pub delivery_id: i64,
    /// `pending`, `delivered` or `dead`.
    pub status: &'a str,
    pub attempts: u32,
    /// Milliseconds.
    pub next_attempt_at: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<&'a str>,
}

pub fn record_attempt(
    conn: &Connection,
    attempt: &AttemptRecord<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE webhook_deliveries
            SET status = ?2, attempts = ?3, next_attempt_at = ?4, last_status = ?5,
                last_error = ?6, updated_at = ?7
          WHERE id = ?1",
        params![
            attempt.delivery_id,
            attempt.status,
            attempt.attempts,
            attempt.next_attempt_at,
            attempt.last_status,
            attempt.last_error,
            to_millis(now)
        ],
    )?;
    Ok(())
}
