//! Fleet-wide counts the loops report each tick.
//!
//! Read-only SQL; no decisions.

use rusqlite::{Connection, params};

use crate::domain::PREBUILDS_USER_ID;
use crate::store::StoreError;

/// How big the fleet is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetCounts {
    /// Presets with a prebuild pool on the active version of a live template.
    pub prebuild_presets: u64,
    /// Live workspaces owned by the prebuilds system user.
    pub prebuilds: u64,
    /// Live workspaces owned by people.
    pub user_workspaces: u64,
}

/// Counts the fleet in one read transaction, so the three figures agree.
pub fn counts(conn: &Connection) -> Result<FleetCounts, StoreError> {
    let row = conn.query_row(
        "SELECT
            (SELECT COUNT(*) FROM presets p
               JOIN templates t ON t.active_version_id = p.template_version_id
              WHERE p.desired_instances IS NOT NULL AND t.deleted = 0),
            (SELECT COUNT(*) FROM workspaces WHERE deleted = 0 AND owner_id = ?1),
            (SELECT COUNT(*) FROM workspaces WHERE deleted = 0 AND owner_id <> ?1)",
        params![PREBUILDS_USER_ID],
        |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)),
    )?;
    let to_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    Ok(FleetCounts {
        prebuild_presets: to_u64(row.0),
        prebuilds: to_u64(row.1),
        user_workspaces: to_u64(row.2),
    })
}
