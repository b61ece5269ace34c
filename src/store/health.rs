//! Workspace health as the health monitor reads and writes it: the running workspaces
//! of a backend with their template version's settings, and one verdict per write that
//! re-checks the workspace is still at the build it probed.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::store::time::to_millis;
use crate::store::{CachedStatements, StoreError, WriteTx};

/// A running workspace of a backend, as the monitor probes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub workspace_id: String,
    pub template_name: String,
    pub build_number: i64,
    /// The template version's provisioner settings (JSON).
    pub provisioner_config: String,
    /// `healthy`, `unhealthy` or `None`.
    pub health: Option<String>,
    pub health_error: Option<String>,
    pub prebuild: bool,
    /// When its start build completed.
    pub started_at: Option<DateTime<Utc>>,
}

/// Live workspaces whose latest build is a succeeded `start` on a version of `backend`.
pub fn running(conn: &Connection, backend: &str) -> Result<Vec<Running>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT w.id, t.name, w.latest_build_number, v.provisioner_config, w.health,
                w.health_error, w.owner_id = ?2, w.latest_job_completed_at
           FROM workspaces w
           JOIN template_versions v ON v.id = w.latest_template_version_id
           JOIN templates t ON t.id = w.template_id
          WHERE w.deleted = 0 AND w.latest_transition = 'start'
            AND w.latest_job_status = 'succeeded' AND v.provisioner = ?1
          ORDER BY w.id",
    )?;
    let rows = statement.query_map(params![backend, crate::domain::PREBUILDS_USER_ID], |row| {
        Ok(Running {
            workspace_id: row.get(0)?,
            template_name: row.get(1)?,
            build_number: row.get(2)?,
            provisioner_config: row.get(3)?,
            health: row.get(4)?,
            health_error: row.get(5)?,
            prebuild: row.get(6)?,
            started_at: row.get::<_, Option<i64>>(7)?.and_then(crate::store::time::from_millis),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The verdict of a probe of build `build_number`. Writes only when the verdict or its
/// error changed, and only while that build is still the workspace's succeeded start
/// (a stop or delete in between wins). A healthy workspace is ready (claimable); an
/// unhealthy one is not. Returns whether a row changed.
pub fn set(
    tx: &WriteTx<'_>,
    workspace_id: &str,
    build_number: i64,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let health = if error.is_some() { "unhealthy" } else { "healthy" };
    let changed = tx.execute_cached(
        "UPDATE workspaces
            SET health_since = CASE WHEN health IS ?3 THEN health_since ELSE ?5 END,
                health = ?3, health_error = ?4, agents_ready = ?6, updated_at = ?5
          WHERE id = ?1 AND deleted = 0 AND latest_build_number = ?2
            AND latest_transition = 'start' AND latest_job_status = 'succeeded'
            AND (health IS NOT ?3 OR health_error IS NOT ?4)",
        params![workspace_id, build_number, health, error, to_millis(now), error.is_none()],
    )?;
    Ok(changed > 0)
}
