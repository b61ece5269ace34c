//! What `workspaced bench` needs from the database beyond the daemon's own queries: the
//! floor of a reconcile cycle (the same rows read without building any value) and a copy
//! of the database to run a writing iteration on more than once.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// Reads every row and column a reconcile cycle's snapshot reads, converting nothing;
/// returns the row count.
pub fn scan(conn: &Connection) -> Result<usize, StoreError> {
    let mut rows = 0;
    for sql in [
        "SELECT id, name, organization_id, active_version_id, deleted, deprecated FROM templates",
        "SELECT id, name, template_version_id, desired_instances, ttl_s, scheduling_timezone FROM presets",
        "SELECT id, template_id, owner_id, created_at, last_used_at, agents_ready, dormant_at, deleting_at,
                autostart_schedule, automatic_updates, protected, gc_warned_at, latest_build_number,
                latest_transition, latest_job_status, latest_template_version_id, latest_preset_id,
                latest_initiator_id, latest_build_created_at, latest_job_completed_at, latest_deadline
           FROM workspaces WHERE deleted = 0",
    ] {
        let mut statement = conn.prepare(sql)?;
        let columns = statement.column_count();
        let mut query = statement.query([])?;
        while let Some(row) = query.next()? {
            for column in 0..columns {
                let _ = row.get_ref(column)?;
            }
            rows += 1;
        }
    }
    Ok(rows)
}

/// A consistent copy of the database `db` at `to` (which must not exist), through a
/// connection of its own: `VACUUM INTO` cannot run inside the store's transactions.
pub fn copy(db: &Path, to: &Path) -> Result<(), StoreError> {
    let conn = Connection::open(db)?;
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])?;
    Ok(())
}
