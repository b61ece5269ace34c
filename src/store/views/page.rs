//! What the status page reads beyond the plan: the newest failed builds with their errors
//! (through the failed-jobs index, so the read costs its own rows).

use rusqlite::Connection;
use serde::Serialize;

use crate::store::StoreError;
use crate::store::time::from_millis;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedBuild {
    pub organization_id: String,
    pub owner_id: String,
    pub owner: String,
    pub workspace: String,
    pub template: String,
    pub build_number: i64,
    pub transition: String,
    pub error: String,
    pub completed_at: Option<String>,
}

/// The newest `limit` failed builds, newest first.
pub fn recent_failed_builds(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<FailedBuild>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT w.organization_id, w.owner_id, u.username, w.name, t.name, b.build_number,
                b.transition, COALESCE(j.error, ''), j.completed_at
           FROM provisioner_jobs j INDEXED BY provisioner_jobs_failed
           JOIN workspace_builds b ON b.job_id = j.id
           JOIN workspaces w ON w.id = b.workspace_id
           JOIN users u ON u.id = w.owner_id
           JOIN templates t ON t.id = w.template_id
          WHERE j.status = 'failed' AND j.completed_at IS NOT NULL
          ORDER BY j.completed_at DESC LIMIT ?1",
    )?;
    let rows = statement.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
        Ok(FailedBuild {
            organization_id: row.get(0)?,
            owner_id: row.get(1)?,
            owner: row.get(2)?,
            workspace: row.get(3)?,
            template: row.get(4)?,
            build_number: row.get(5)?,
            transition: row.get(6)?,
            error: row.get(7)?,
            completed_at: row
                .get::<_, Option<i64>>(8)?
                .and_then(from_millis)
                .map(|time| time.to_rfc3339()),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
