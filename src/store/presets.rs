//! Presets and their prebuilds: the SQL the pool's write side and the claim path run
//! (`pools`). Every function runs on the caller's connection or write transaction, so the
//! re-checks the callers make see the same transaction's state.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::domain::PREBUILDS_USER_ID;
use crate::store::time::to_millis;
use crate::store::workspaces::CreateWorkspaceError;
use crate::store::{CachedStatements, StoreError};

/// The id of the preset `reference` names: `TEMPLATE/PRESET` (the preset of that name on
/// the live template's active version, in `organization` or the default one), or an id.
pub fn resolve(
    conn: &Connection,
    reference: &str,
    organization: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let Some((template, preset)) = reference.split_once('/') else {
        return Ok(Some(reference.to_owned()));
    };
    Ok(conn
        .query_row_cached(
            "SELECT p.id FROM presets p
               JOIN templates t ON t.active_version_id = p.template_version_id AND t.deleted = 0
               JOIN organizations o ON o.id = t.organization_id
              WHERE t.name = ?1 AND p.name = ?2
                AND (o.name = ?3 OR (?3 IS NULL AND o.id = ?4))",
            params![template, preset, organization, crate::domain::DEFAULT_ORGANIZATION_ID],
            |row| row.get(0),
        )
        .optional()?)
}

/// A preset as the write side needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetRow {
    pub template_id: String,
    pub organization_id: String,
    pub version_id: String,
    /// On the template's active version, and the template is neither deleted nor deprecated.
    pub active: bool,
    pub ttl_s: Option<i64>,
}

pub fn preset_row(conn: &Connection, preset_id: &str) -> Result<Option<PresetRow>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT t.id, t.organization_id, p.template_version_id,
                    (t.active_version_id = p.template_version_id AND t.deleted = 0 AND t.deprecated = 0),
                    p.ttl_s
               FROM presets p
               JOIN template_versions v ON v.id = p.template_version_id
               JOIN templates t ON t.id = v.template_id
              WHERE p.id = ?1",
            [preset_id],
            |row| {
                Ok(PresetRow {
                    template_id: row.get(0)?,
                    organization_id: row.get(1)?,
                    version_id: row.get(2)?,
                    active: row.get(3)?,
                    ttl_s: row.get(4)?,
                })
            },
        )
        .optional()?)
}

/// The stored pool status (`healthy` / `hard_limited`) and when the hard limit was last
/// notified; `None` for an unknown preset.
pub fn hard_limit_state(
    conn: &Connection,
    preset_id: &str,
) -> Result<Option<(String, Option<i64>)>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT prebuild_status, hard_limit_notified_at FROM presets WHERE id = ?1",
            [preset_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

pub fn set_prebuild_status(
    conn: &Connection,
    preset_id: &str,
    status: &str,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE presets SET prebuild_status = ?2 WHERE id = ?1",
        params![preset_id, status],
    )?;
    Ok(())
}

pub fn mark_hard_limit_notified(
    conn: &Connection,
    preset_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE presets SET hard_limit_notified_at = ?2 WHERE id = ?1",
        params![preset_id, to_millis(now)],
    )?;
    Ok(())
}

/// Back to `healthy`, with the next hard limit notified again (a reset).
pub fn clear_hard_limit(conn: &Connection, preset_id: &str) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE presets SET prebuild_status = 'healthy', hard_limit_notified_at = NULL WHERE id = ?1",
        [preset_id],
    )?;
    Ok(())
}

/// Live prebuilds of the preset whose latest build's job failed, oldest first.
pub fn failed_prebuilds(conn: &Connection, preset_id: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT w.id FROM workspaces w
           JOIN workspace_builds b ON b.workspace_id = w.id
            AND b.build_number = (SELECT MAX(build_number) FROM workspace_builds WHERE workspace_id = w.id)
           JOIN provisioner_jobs j ON j.id = b.job_id
          WHERE w.deleted = 0 AND w.owner_id = ?1 AND b.preset_id = ?2 AND j.status = 'failed'
          ORDER BY w.created_at, w.id",
    )?;
    let rows = statement.query_map(params![PREBUILDS_USER_ID, preset_id], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// (organization, active version) of a live template with an active version.
pub fn active_template(
    conn: &Connection,
    template_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT organization_id, active_version_id FROM templates
              WHERE id = ?1 AND deleted = 0 AND active_version_id IS NOT NULL",
            [template_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

pub fn is_on_version(
    conn: &Connection,
    preset_id: &str,
    version_id: &str,
) -> Result<bool, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT EXISTS (SELECT 1 FROM presets WHERE id = ?1 AND template_version_id = ?2)",
        params![preset_id, version_id],
        |row| row.get(0),
    )?)
}

/// The presets of a version in declaration order.
pub fn version_presets(conn: &Connection, version_id: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id FROM presets WHERE template_version_id = ?1 ORDER BY created_at, rowid",
    )?;
    let rows = statement.query_map([version_id], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The oldest ready, running prebuild of the preset on `version_id` created at or after
/// `oldest_allowed` (milliseconds). Reads the latest-build summary (schema V2) through the
/// `workspaces_claimable` partial index (schema V4), so a claim costs the same with 10 or
/// 10,000 prebuilds in the pool.
pub fn ready_prebuild(
    conn: &Connection,
    preset_id: &str,
    version_id: &str,
    oldest_allowed: i64,
) -> Result<Option<String>, StoreError> {
    let mut statement = conn.prepare_cached(CLAIMABLE)?;
    Ok(statement
        .query_row(params![PREBUILDS_USER_ID, preset_id, version_id, oldest_allowed], |row| {
            row.get(0)
        })
        .optional()?)
}

/// The claim query (`?1` = the prebuilds user); its literal terms match the partial index.
const CLAIMABLE: &str = "SELECT id FROM workspaces INDEXED BY workspaces_claimable
  WHERE owner_id = ?1 AND preset_id = ?2 AND deleted = 0 AND agents_ready = 1
    AND latest_transition = 'start' AND latest_job_status = 'succeeded'
    AND latest_template_version_id = ?3 AND created_at >= ?4
  ORDER BY created_at, id LIMIT 1";

/// Who a claimed prebuild now belongs to and how it is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer<'a> {
    pub user_id: &'a str,
    pub name: &'a str,
    pub autostart_schedule: Option<&'a str>,
    pub ttl_s: Option<i64>,
}

/// Hands a live prebuild to a user (activity now, not dormant, no deletion pending).
/// `Ok(false)` when it is no longer a live prebuild; `NameTaken` when the user already has
/// a workspace of that name.
pub fn transfer_prebuild(
    conn: &Connection,
    workspace_id: &str,
    to: &Transfer<'_>,
    now: DateTime<Utc>,
) -> Result<bool, CreateWorkspaceError> {
    let changed = conn
        .execute_cached(
            "UPDATE workspaces SET owner_id = ?2, name = ?3, last_used_at = ?4, last_used_source = NULL, updated_at = ?4,
                    dormant_at = NULL, deleting_at = NULL, autostart_schedule = ?5, ttl_s = ?6
              WHERE id = ?1 AND owner_id = ?7 AND deleted = 0",
            params![
                workspace_id,
                to.user_id,
                to.name,
                to_millis(now),
                to.autostart_schedule,
                to.ttl_s,
                PREBUILDS_USER_ID,
            ],
        )
        .map_err(|error| match error {
            rusqlite::Error::SqliteFailure(failure, Some(message))
                if failure.code == ErrorCode::ConstraintViolation
                    && message.contains("workspaces.name") =>
            {
                CreateWorkspaceError::NameTaken { name: to.name.to_owned() }
            }
            other => CreateWorkspaceError::Store(other.into()),
        })?;
    Ok(changed == 1)
}

/// (organization, template, preset) names.
pub type PresetKey = (String, String, String);

/// Lifetime figures of one preset: `[created, failed, claimed]`.
pub type PresetTotals = (PresetKey, [u64; 3]);

/// Lifetime prebuild figures per preset name, from `prebuild_totals` (schema V10: kept by
/// triggers in the transactions that create, fail and claim, so they survive restarts and
/// cost the same however long the build history is). A claim is one workspace: a claim
/// build re-queued after an interruption does not count twice.
pub fn lifetime_counts(conn: &Connection) -> Result<Vec<PresetTotals>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT o.name, t.name, p.name, SUM(x.created), SUM(x.failed), SUM(x.claimed)
           FROM prebuild_totals x
           JOIN presets p ON p.id = x.preset_id
           JOIN template_versions v ON v.id = p.template_version_id
           JOIN templates t ON t.id = v.template_id
           JOIN organizations o ON o.id = t.organization_id
          GROUP BY o.name, t.name, p.name",
    )?;
    let rows = statement.query_map([], |row| {
        let count = |index| row.get::<_, i64>(index).map(|value| u64::try_from(value).unwrap_or(0));
        Ok(((row.get(0)?, row.get(1)?, row.get(2)?), [count(3)?, count(4)?, count(5)?]))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every preset's stored pool status and whether its hard limit was notified: what the
/// reconciler compares its plan with, so it writes only what changed.
pub fn hard_limit_states(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, (String, bool)>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, prebuild_status, hard_limit_notified_at IS NOT NULL FROM presets",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_the_triggers_keep_are_a_recount_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            crate::store::Store::open(crate::store::StoreOptions::at(dir.path().join("db")))
                .unwrap();
        store
            .write_blocking(|tx| {
                tx.execute_batch(
                    "INSERT INTO users (id, username, created_at, updated_at) VALUES ('u', 'u', 0, 0);
                     INSERT INTO templates (id, organization_id, name, created_at, updated_at)
                          VALUES ('t', '00000000-0000-0000-0000-000000000001', 'dev', 0, 0);
                     INSERT INTO template_versions (id, template_id, name, content_hash, provisioner, created_at)
                          VALUES ('v', 't', 'v1', 'h', 'local', 0);
                     INSERT INTO presets (id, template_version_id, name, desired_instances, created_at)
                          VALUES ('p', 'v', 'small', 2, 0);
                     INSERT INTO workspaces (id, organization_id, owner_id, template_id, preset_id, name, created_at, updated_at, last_used_at)
                          VALUES ('w1', '00000000-0000-0000-0000-000000000001', 'u', 't', 'p', 'a', 0, 0, 0),
                                 ('w2', '00000000-0000-0000-0000-000000000001', 'u', 't', 'p', 'b', 0, 0, 0);
                     INSERT INTO provisioner_jobs (id, status, backend, created_at, updated_at)
                          VALUES ('j1', 'pending', 'local', 0, 0), ('j2', 'succeeded', 'local', 0, 0),
                                 ('j3', 'interrupted', 'local', 0, 0), ('j4', 'running', 'local', 0, 0);
                     INSERT INTO workspace_builds (id, workspace_id, build_number, template_version_id, transition,
                          reason, initiator_id, job_id, preset_id, is_prebuild, is_prebuild_claim, created_at, updated_at)
                          VALUES ('b1', 'w1', 1, 'v', 'start', 'prebuild', 'u', 'j1', 'p', 1, 0, 0, 0),
                                 ('b2', 'w2', 1, 'v', 'start', 'prebuild', 'u', 'j2', 'p', 1, 0, 0, 0),
                                 ('b3', 'w2', 2, 'v', 'start', 'claim', 'u', 'j3', 'p', 0, 1, 0, 0),
                                 ('b4', 'w2', 3, 'v', 'start', 'claim', 'u', 'j4', 'p', 0, 1, 0, 0);
                     UPDATE provisioner_jobs SET status = 'running' WHERE id = 'j1';
                     UPDATE provisioner_jobs SET status = 'failed' WHERE id IN ('j1', 'j4');
                     UPDATE provisioner_jobs SET status = 'failed' WHERE id = 'j1';",
                )?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let recount: [u64; 3] = store
            .read_blocking(|conn| {
                Ok(conn.query_row(
                    "SELECT SUM(b.is_prebuild AND b.transition = 'start' AND b.build_number = 1),
                            SUM(b.is_prebuild AND b.transition = 'start' AND j.status = 'failed'),
                            COUNT(DISTINCT CASE WHEN b.is_prebuild_claim THEN b.workspace_id END)
                       FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id",
                    [],
                    |row| {
                        let count = |i| row.get::<_, i64>(i).map(|n| n.unsigned_abs());
                        Ok([count(0)?, count(1)?, count(2)?])
                    },
                )?)
            })
            .unwrap();
        // Two created, the first one failed (once, however often its row is written), one
        // workspace claimed (its claim build re-queued; the failed claim is not a prebuild).
        assert_eq!(recount, [2, 1, 1]);
        let totals = store.read_blocking(lifetime_counts).unwrap();
        let key = ("default".to_owned(), "dev".to_owned(), "small".to_owned());
        assert_eq!(totals, vec![(key, recount)]);
    }

    #[test]
    fn the_claim_query_uses_its_index() {
        let plan = crate::store::tests::query_plan(CLAIMABLE, ("u", "p", "v", 0));
        assert!(plan.iter().any(|step| step.contains("workspaces_claimable")), "{plan:?}");
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "no sort: {plan:?}");
    }
}
