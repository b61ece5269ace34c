//! Read models for the HTTP API: workspaces with their status, builds, templates with
//! versions and presets, audit entries. Plain queries, serialized as the
//! API's JSON; nothing here writes.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub mod names;
pub mod page;
mod templates;
pub use templates::*;

use crate::store::CachedStatements;

use crate::store::StoreError;
use crate::store::time::from_millis;

pub(crate) fn rfc3339(millis: Option<i64>) -> Option<String> {
    millis.and_then(from_millis).map(|time| time.to_rfc3339())
}

/// The status a workspace shows, from its latest build and job (Coder's vocabulary).
pub fn status(transition: Option<&str>, job_status: Option<&str>) -> &'static str {
    match (transition, job_status) {
        (None, _) | (_, None) => "pending",
        (_, Some("pending")) => "pending",
        (Some("start"), Some("running")) => "starting",
        (Some("stop"), Some("running")) => "stopping",
        (Some("delete"), Some("running")) => "deleting",
        (Some("start"), Some("succeeded")) => "running",
        (Some("stop"), Some("succeeded")) => "stopped",
        (Some("delete"), Some("succeeded")) => "deleted",
        (_, Some("failed")) => "failed",
        (_, Some("canceling")) => "canceling",
        (_, Some("canceled")) => "canceled",
        _ => "unknown",
    }
}

/// Every status `status` can return (validates the list filter).
pub const STATUSES: &[&str] = &[
    "pending",
    "starting",
    "running",
    "stopping",
    "stopped",
    "deleting",
    "deleted",
    "failed",
    "canceling",
    "canceled",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LatestBuildView {
    pub build_number: i64,
    pub transition: String,
    pub job_status: String,
    pub created_at: Option<String>,
    pub completed_at: Option<String>,
    pub deadline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub owner_id: String,
    pub owner: String,
    pub template_id: String,
    pub template: String,
    pub preset_id: Option<String>,
    pub status: &'static str,
    pub latest_build: Option<LatestBuildView>,
    pub autostart_schedule: Option<String>,
    pub ttl_s: Option<i64>,
    pub protected: bool,
    pub dormant_at: Option<String>,
    pub deleting_at: Option<String>,
    pub gc_warned_at: Option<String>,
    pub created_at: Option<String>,
    pub last_used_at: Option<String>,
    /// What reported `last_used_at` (`api`, `proxy`, `backend`); `None` = nothing since
    /// creation or the claim.
    pub last_used_source: Option<String>,
    pub deleted: bool,
    /// What a developer connects to; empty unless the workspace runs and reports apps.
    pub apps: Vec<crate::domain::App>,
    /// The readiness probe's verdict; `None` when nothing probes the workspace.
    pub health: Option<HealthView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthView {
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub error: Option<String>,
    /// When the status last changed.
    pub since: Option<String>,
}

const WORKSPACE_VIEW: &str =
    "SELECT w.id, w.name, w.organization_id, w.owner_id, u.username, w.template_id, t.name,
        w.preset_id, w.latest_build_number, w.latest_transition, w.latest_job_status,
        w.latest_build_created_at, w.latest_job_completed_at, w.latest_deadline,
        w.autostart_schedule, w.ttl_s, w.protected, w.dormant_at, w.deleting_at, w.gc_warned_at,
        w.created_at, w.last_used_at, w.deleted, w.apps, w.health, w.health_error,
        w.health_since, w.last_used_source
   FROM workspaces w JOIN users u ON u.id = w.owner_id JOIN templates t ON t.id = w.template_id";

fn workspace_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<WorkspaceView> {
    let transition: Option<String> = row.get(9)?;
    let job_status: Option<String> = row.get(10)?;
    let latest_build = match (row.get::<_, Option<i64>>(8)?, &transition, &job_status) {
        (Some(build_number), Some(transition), Some(job_status)) => Some(LatestBuildView {
            build_number,
            transition: transition.clone(),
            job_status: job_status.clone(),
            created_at: rfc3339(row.get(11)?),
            completed_at: rfc3339(row.get(12)?),
            deadline: rfc3339(row.get(13)?),
        }),
        _ => None,
    };
    Ok(WorkspaceView {
        id: row.get(0)?,
        name: row.get(1)?,
        organization_id: row.get(2)?,
        owner_id: row.get(3)?,
        owner: row.get(4)?,
        template_id: row.get(5)?,
        template: row.get(6)?,
        preset_id: row.get(7)?,
        status: status(transition.as_deref(), job_status.as_deref()),
        latest_build,
        autostart_schedule: row.get(14)?,
        ttl_s: row.get(15)?,
        protected: row.get(16)?,
        dormant_at: rfc3339(row.get(17)?),
        deleting_at: rfc3339(row.get(18)?),
        gc_warned_at: rfc3339(row.get(19)?),
        created_at: rfc3339(row.get(20)?),
        last_used_at: rfc3339(row.get(21)?),
        last_used_source: row.get(27)?,
        deleted: row.get(22)?,
        // Written by the store from a typed list; an unreadable value shows as none.
        apps: row
            .get::<_, Option<String>>(23)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        health: match row.get::<_, Option<String>>(24)? {
            Some(status) => {
                Some(HealthView { status, error: row.get(25)?, since: rfc3339(row.get(26)?) })
            }
            None => None,
        },
    })
}

/// One workspace, deleted or not.
pub fn workspace(conn: &Connection, id: &str) -> Result<Option<WorkspaceView>, StoreError> {
    Ok(conn
        .query_row_cached(&format!("{WORKSPACE_VIEW} WHERE w.id = ?1"), [id], workspace_view)
        .optional()?)
}

/// The live workspace `name` of the user `owner` (a username), for `OWNER/NAME` addressing.
pub fn workspace_by_name(
    conn: &Connection,
    owner: &str,
    name: &str,
) -> Result<Option<WorkspaceView>, StoreError> {
    Ok(conn
        .query_row_cached(
            &format!("{WORKSPACE_VIEW} WHERE u.username = ?1 AND w.name = ?2 AND w.deleted = 0"),
            [owner, name],
            workspace_view,
        )
        .optional()?)
}

/// List filters; `None` = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkspaceFilter {
    pub owner_id: Option<String>,
    pub template_id: Option<String>,
    pub dormant: Option<bool>,
}

fn workspaces_after_sql() -> String {
    format!(
        "{WORKSPACE_VIEW}
          WHERE w.deleted = 0 AND (?1 IS NULL OR w.owner_id = ?1) AND (?2 IS NULL OR w.template_id = ?2)
            AND (?3 IS NULL OR (w.dormant_at IS NOT NULL) = ?3)
            AND (?4 IS NULL OR (w.owner_id, w.name) > (?4, ?5))
          ORDER BY w.owner_id, w.name LIMIT ?6"
    )
}

/// Up to `limit` live workspaces matching `filter` after the keyset position `after`
/// (owner id, workspace name), in that order: the order of the live-name index, so a page
/// costs its own rows, never the whole fleet.
pub fn workspaces_after(
    conn: &Connection,
    filter: &WorkspaceFilter,
    after: Option<(&str, &str)>,
    limit: usize,
) -> Result<Vec<WorkspaceView>, StoreError> {
    let mut statement = conn.prepare_cached(&workspaces_after_sql())?;
    let (after_owner, after_name) = after.unzip();
    let rows = statement.query_map(
        params![
            filter.owner_id,
            filter.template_id,
            filter.dormant,
            after_owner,
            after_name,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        workspace_view,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildView {
    pub id: String,
    pub build_number: i64,
    pub transition: String,
    pub reason: String,
    pub initiator_id: String,
    pub template_version_id: String,
    pub preset_id: Option<String>,
    pub is_prebuild: bool,
    pub is_prebuild_claim: bool,
    pub job_id: String,
    pub job_status: String,
    pub error: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub deadline: Option<String>,
}

const BUILD_VIEW: &str =
    "SELECT b.id, b.build_number, b.transition, b.reason, b.initiator_id, b.template_version_id,
        b.preset_id, b.is_prebuild, b.is_prebuild_claim, b.job_id, j.status, j.error, b.created_at,
        j.started_at, j.completed_at, b.deadline
   FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id";

fn build_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<BuildView> {
    Ok(BuildView {
        id: row.get(0)?,
        build_number: row.get(1)?,
        transition: row.get(2)?,
        reason: row.get(3)?,
        initiator_id: row.get(4)?,
        template_version_id: row.get(5)?,
        preset_id: row.get(6)?,
        is_prebuild: row.get(7)?,
        is_prebuild_claim: row.get(8)?,
        job_id: row.get(9)?,
        job_status: row.get(10)?,
        error: row.get(11)?,
        created_at: rfc3339(row.get(12)?),
        started_at: rfc3339(row.get(13)?),
        completed_at: rfc3339(row.get(14)?),
        deadline: rfc3339(row.get(15)?),
    })
}

/// A workspace's builds, newest first.
pub fn builds(
    conn: &Connection,
    workspace_id: &str,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<BuildView>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{BUILD_VIEW} WHERE b.workspace_id = ?1 AND (?2 IS NULL OR b.build_number < ?2)
          ORDER BY b.build_number DESC LIMIT ?3"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![workspace_id, before, limit], build_view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One build of a workspace by number.
pub fn build(
    conn: &Connection,
    workspace_id: &str,
    number: i64,
) -> Result<Option<BuildView>, StoreError> {
    Ok(conn
        .query_row_cached(
            &format!("{BUILD_VIEW} WHERE b.workspace_id = ?1 AND b.build_number = ?2"),
            params![workspace_id, number],
            build_view,
        )
        .optional()?)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogView {
    pub id: i64,
    pub time: Option<String>,
    pub level: String,
    pub stage: String,
    pub output: String,
}

/// A job's log lines after `after_id`, at most `limit`.
pub fn logs_after(
    conn: &Connection,
    job_id: &str,
    after_id: i64,
    limit: usize,
) -> Result<Vec<LogView>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, created_at, level, stage, output FROM provisioner_job_logs
          WHERE job_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![job_id, after_id, limit], |row| {
        Ok(LogView {
            id: row.get(0)?,
            time: rfc3339(row.get(1)?),
            level: row.get(2)?,
            stage: row.get(3)?,
            output: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditView {
    pub id: i64,
    pub time: Option<String>,
    pub actor_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub organization_id: Option<String>,
    pub source_ip: String,
    pub details: serde_json::Value,
}

/// Audit entries, newest first, with id below `before`, in `organizations` (`None` = all).
pub fn audit(
    conn: &Connection,
    organizations: Option<&[String]>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditView>, StoreError> {
    let orgs_json = organizations.map(|orgs| serde_json::json!(orgs).to_string());
    let mut statement = conn.prepare_cached(
        "SELECT id, time, actor_id, actor, action, resource_type, resource_id, organization_id, source_ip, details
           FROM audit_log
          WHERE (?1 IS NULL OR organization_id IN (SELECT value FROM json_each(?1)))
            AND (?2 IS NULL OR id < ?2)
          ORDER BY id DESC LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![orgs_json, before, limit], |row| {
        let details: String = row.get(9)?;
        Ok(AuditView {
            id: row.get(0)?,
            time: rfc3339(row.get(1)?),
            actor_id: row.get(2)?,
            actor: row.get(3)?,
            action: row.get(4)?,
            resource_type: row.get(5)?,
            resource_id: row.get(6)?,
            organization_id: row.get(7)?,
            source_ip: row.get(8)?,
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_page_walks_the_live_name_index_without_sorting() {
        let none: Option<String> = None;
        let plan = crate::store::tests::query_plan(
            &workspaces_after_sql(),
            (none.clone(), none.clone(), none, Some("o"), Some("n"), 100),
        );
        assert!(plan.iter().any(|step| step.contains("workspaces_live_name")), "{plan:?}");
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "no sort: {plan:?}");
    }
}
