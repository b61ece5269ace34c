//! Schema migrations, embedded from `migrations/` at build time and applied by refinery.
//!
//! Owns the answer to "which schema version does this file have, and may this binary
//! touch it?". A database written by a newer binary is refused before anything is written.

use rusqlite::{Connection, OptionalExtension};

refinery::embed_migrations!("migrations");

/// refinery's bookkeeping table.
pub const HISTORY_TABLE: &str = "refinery_schema_history";

/// The newest schema version this binary knows.
pub fn latest_known_version() -> i64 {
    migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0)
}

/// The newest schema version applied to this database; 0 for a fresh file.
pub fn applied_version(conn: &Connection) -> rusqlite::Result<i64> {
    let has_history: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [HISTORY_TABLE],
        |row| row.get(0),
    )?;
    if !has_history {
        return Ok(0);
    }
    let version: Option<i64> = conn
        .query_row(&format!("SELECT MAX(version) FROM {HISTORY_TABLE}"), [], |row| row.get(0))
        .optional()?
        .flatten();
    Ok(version.unwrap_or(0))
}

/// Applies every pending migration in one transaction (all or nothing) and returns the
/// versions it applied.
pub fn run(conn: &mut Connection) -> Result<Vec<i64>, refinery::Error> {
    let report = migrations::runner().set_grouped(true).run(conn)?;
    Ok(report.applied_migrations().iter().map(|m| i64::from(m.version())).collect())
}
