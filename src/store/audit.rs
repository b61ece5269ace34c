//! The audit log: who did what, to what, when and from where.
//!
//! Append-only SQL; entries are written in the same transaction as the change they record.

use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::store::StoreError;
use crate::store::time::to_millis;

/// Who acted: a user, or the daemon itself (the config, a loop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: Option<String>,
    pub name: String,
    pub source_ip: String,
}

impl Actor {
    /// The daemon acting on its own behalf (`config`, `reconciler`, `gc`, …).
    pub fn system(name: &str) -> Actor {
        Actor { user_id: None, name: name.to_owned(), source_ip: String::new() }
    }
}

/// One audit entry.
pub struct Entry<'a> {
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub organization_id: Option<&'a str>,
    pub details: serde_json::Value,
}

pub fn record(
    conn: &Connection,
    actor: &Actor,
    entry: &Entry<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO audit_log (time, actor_id, actor, action, resource_type, resource_id, organization_id, source_ip, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            to_millis(now),
            actor.user_id,
            actor.name,
            entry.action,
            entry.resource_type,
            entry.resource_id,
            entry.organization_id,
            actor.source_ip,
            entry.details.to_string(),
        ],
    )?;
    Ok(())
}
