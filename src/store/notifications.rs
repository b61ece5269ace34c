//! Notifications for people (template admins, workspace owners): rows queued by the
//! transaction that found the reason, turned into `notification` events by the publisher
//! so they travel the same path as every other event (SSE stream, webhooks).
//!
//! Owns the notifications SQL. Dispatch marks a row sent in the same transaction that
//! writes its event to the outbox: a notification is sent exactly once into the outbox.

use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::domain::event::Event;
use crate::store::time::to_millis;
use crate::store::{StoreError, WriteTx};

/// Turns up to `limit` pending notifications into `notification` events; returns how many.
pub fn dispatch(
    tx: &mut WriteTx<'_>,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    type Row = (i64, String, Option<String>, Option<String>, Option<String>, String);
    let pending: Vec<Row> = {
        let mut statement = tx.prepare_cached(
            "SELECT id, kind, organization_id, template_id, user_id, payload
               FROM notifications WHERE status = 'pending' ORDER BY id LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map([limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, kind, organization_id, template_id, user_id, payload) in &pending {
        let payload = match serde_json::from_str(payload) {
            Ok(payload) => payload,
            Err(error) => {
                // One unreadable row is set aside loudly; it must not hold up the others
                // (every later notification, and with it the publisher, would wait forever).
                tracing::error!(notification_id = id, error = %error, "corrupt notification payload; marked failed");
                tx.execute_cached(
                    "UPDATE notifications SET status = 'failed', sent_at = ?2 WHERE id = ?1",
                    params![id, to_millis(now)],
                )?;
                continue;
            }
        };
        tx.emit(
            &Event::Notification {
                notification_id: *id,
                notification: kind.clone(),
                organization_id: organization_id.clone(),
                template_id: template_id.clone(),
                user_id: user_id.clone(),
                payload,
            },
            now,
        )?;
        tx.execute_cached(
            "UPDATE notifications SET status = 'sent', sent_at = ?2 WHERE id = ?1",
            params![id, to_millis(now)],
        )?;
    }
    Ok(pending.len())
}

/// A notification to queue: for template admins of `template_id`, and for `user_id`
/// when given (a workspace's owner).
pub struct NewNotification<'a> {
    pub kind: &'a str,
    pub user_id: Option<&'a str>,
    pub organization_id: &'a str,
    pub template_id: &'a str,
    pub payload: serde_json::Value,
}

pub fn queue(
    conn: &rusqlite::Connection,
    notification: &NewNotification<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO notifications (kind, user_id, organization_id, template_id, payload, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            notification.kind,
            notification.user_id,
            notification.organization_id,
            notification.template_id,
            notification.payload.to_string(),
            to_millis(now)
        ],
    )?;
    Ok(())
}

/// Whether any notification waits (a read, so an idle publisher never takes the writer).
pub fn has_pending(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM notifications WHERE status = 'pending')",
        [],
        |row| row.get(0),
    )?)
}
