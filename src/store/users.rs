//! Users and their roles: the SQL.
//!
//! Owns user rows. The prebuilds system user is created by the first migration and is
//! never modified here.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;
use crate::store::time::to_millis;

/// Inserts an active user; returns its id.
pub fn insert(conn: &Connection, username: &str, now: DateTime<Utc>) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute(
        "INSERT INTO users (id, username, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        params![id, username, to_millis(now)],
    )?;
    Ok(id)
}

/// The id of the user named `username`.
pub fn id_by_name(conn: &Connection, username: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT id FROM users WHERE username = ?1", [username], |row| row.get(0))
        .optional()?)
}
