//! Builds planner snapshots from the database: the read side of every loop, of
//! `workspaced plan` and of `workspaced snapshot export`.
//!
//! Owns the queries, run in one read transaction so the snapshot is consistent. Exports
//! live workspaces (in storage order) with only the build the planners read: each
//! workspace's latest build, taken from the summary on the workspace row (schema V2). (The planner attributes a running prebuild to the preset of
//! its highest-numbered start build that names one; every build workspaced enqueues for a
//! prebuild names its preset, so for a running prebuild that is its latest build.) Also the
//! presets those builds name plus every prebuild preset of an active version, and all
//! templates. This is the reconciler's hot path: see benches/planner.rs.

use crate::store::CachedStatements;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::domain::PREBUILDS_USER_ID;
use crate::planner::schedule::CronSchedule;
use crate::planner::snapshot::{
    AutomaticUpdates, Build, Initiator, Owner, OwnerStatus, Preset, PresetSchedule, Settings,
    Snapshot, Template, TemplateGc, TemplateSchedule, Weekday, Workspace,
};
use crate::store::StoreError;
use crate::store::time::from_millis;

/// The workspace columns `map_workspace_rows` reads (with the latest-build summary);
/// `?1` is the prebuilds user's id.
const WORKSPACE_COLUMNS: &str = "SELECT id, template_id, owner_id = ?1, owner_id, created_at, last_used_at, agents_ready,
                dormant_at, deleting_at, autostart_schedule, automatic_updates, protected, gc_warned_at,
                latest_build_number, latest_transition, latest_job_status, latest_template_version_id,
                latest_preset_id, latest_initiator_id = ?1, latest_build_created_at,
                latest_job_completed_at, latest_deadline,
                CASE WHEN health = 'unhealthy' THEN health_since END, last_used_source
           FROM workspaces WHERE deleted = 0";

fn time(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let millis: i64 = row.get(index)?;
    from_millis(millis).ok_or(rusqlite::Error::IntegralValueOutOfRange(index, millis))
}

fn optional_time(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get::<_, Option<i64>>(index)? {
        Some(millis) => from_millis(millis)
            .map(Some)
            .ok_or(rusqlite::Error::IntegralValueOutOfRange(index, millis)),
        None => Ok(None),
    }
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Reads a consistent snapshot at `now` with `settings`.
pub fn read(
    conn: &Connection,
    now: DateTime<Utc>,
    settings: Settings,
) -> Result<Snapshot, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let templates = read_templates(&tx)?;
    let (workspaces, builds) = read_workspaces_and_builds(&tx)?;
    let referenced: HashSet<&str> =
        builds.iter().filter_map(|build| build.preset_id.as_deref()).collect();
    let active_versions: HashSet<&str> =
        templates.iter().map(|template| template.active_version_id.as_str()).collect();
    let presets = read_presets(&tx)?
        .into_iter()
        .filter(|preset| {
            referenced.contains(preset.id.as_str())
                || (preset.desired_instances.is_some()
                    && active_versions.contains(preset.template_version_id.as_str()))
        })
        .collect();
    tx.finish()?;
    Ok(Snapshot { now, settings, templates, presets, workspaces, builds })
}

/// What the reconciler needs to plan one template's pools: the template, its presets and
/// its prebuilds (the pool rules look at nothing else). The API's pool status reads this
/// instead of a whole-fleet snapshot, so its cost follows the template, not the fleet.
pub fn pool_snapshot(
    conn: &Connection,
    now: DateTime<Utc>,
    settings: Settings,
    template_id: &str,
) -> Result<Snapshot, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let templates = read_templates_where(&tx, Some(template_id))?;
    let (workspaces, builds) = {
        let sql = format!("{WORKSPACE_COLUMNS} AND owner_id = ?1 AND template_id = ?2");
        let mut statement = tx.prepare_cached(&sql)?;
        let rows = statement.query(rusqlite::params![PREBUILDS_USER_ID, template_id])?;
        map_workspace_rows(rows, &HashMap::new())?
    };
    let presets = read_presets_where(&tx, Some(template_id))?;
    tx.finish()?;
    Ok(Snapshot { now, settings, templates, presets, workspaces, builds })
}

/// Every template, deleted ones included.
pub fn read_templates(conn: &Connection) -> Result<Vec<Template>, StoreError> {
    read_templates_where(conn, None)
}

fn read_templates_where(
    conn: &Connection,
    only: Option<&str>,
) -> Result<Vec<Template>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT t.id, t.name, t.organization_id, o.name, COALESCE(t.active_version_id, ''), t.deleted,
                t.deprecated, t.autostart_enabled, t.autostop_enabled, t.autostart_days, t.default_ttl_s,
                t.failure_ttl_s, t.time_til_dormant_s, t.time_til_dormant_autodelete_s,
                t.require_active_version, t.gc_enabled, t.gc_ttl_s, t.gc_basis, t.gc_warn_before_s,
                t.gc_active_grace_s
           FROM templates t JOIN organizations o ON o.id = t.organization_id
          WHERE t.id = COALESCE(?1, t.id) ORDER BY t.created_at, t.id",
    )?;
    let rows = statement.query_map([only], |row| {
        let days: u8 = row.get(9)?;
        let gc_basis: Option<String> = row.get(17)?;
        Ok(Template {
            id: row.get(0)?,
            name: row.get(1)?,
            organization_id: row.get(2)?,
            organization_name: row.get(3)?,
            active_version_id: row.get(4)?,
            deleted: row.get(5)?,
            deprecated: row.get(6)?,
            schedule: TemplateSchedule {
                autostart_enabled: row.get(7)?,
                autostop_enabled: row.get(8)?,
                autostart_days: Weekday::ALL
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| days & (1 << bit) != 0)
                    .map(|(_, day)| *day)
                    .collect(),
                default_ttl_s: unsigned(row.get(10)?),
                failure_ttl_s: unsigned(row.get(11)?),
                time_til_dormant_s: unsigned(row.get(12)?),
                time_til_dormant_autodelete_s: unsigned(row.get(13)?),
                require_active_version: row.get(14)?,
            },
            gc: TemplateGc {
                enabled: row.get(15)?,
                ttl_s: row.get::<_, Option<i64>>(16)?.map(unsigned),
                basis: gc_basis.and_then(|basis| {
                    serde_json::from_value(serde_json::Value::String(basis)).ok()
                }),
                warn_before_s: row.get::<_, Option<i64>>(18)?.map(unsigned),
                active_grace_s: row.get::<_, Option<i64>>(19)?.map(unsigned),
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn read_presets(conn: &Connection) -> Result<Vec<Preset>, StoreError> {
    read_presets_where(conn, None)
}

fn read_presets_where(
    conn: &Connection,
    template: Option<&str>,
) -> Result<Vec<Preset>, StoreError> {
    let mut schedules: HashMap<String, Vec<PresetSchedule>> = HashMap::new();
    {
        // Two statements, so the whole-fleet read (every cycle) stays a plain scan.
        let mut statement = conn.prepare_cached(match template {
            None => {
                "SELECT preset_id, cron_expression, desired_instances FROM preset_prebuild_schedules
                  WHERE ?1 IS NULL ORDER BY id"
            }
            Some(_) => {
                "SELECT s.preset_id, s.cron_expression, s.desired_instances
                   FROM preset_prebuild_schedules s
                   JOIN presets p ON p.id = s.preset_id
                   JOIN template_versions v ON v.id = p.template_version_id
                  WHERE v.template_id = ?1 ORDER BY s.id"
            }
        })?;
        let rows = statement.query_map([template], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
        })?;
        for row in rows {
            let (preset, cron, instances) = row?;
            schedules
                .entry(preset)
                .or_default()
                .push(PresetSchedule { cron, instances: unsigned(instances) });
        }
    }
    let mut statement = conn.prepare_cached(
        "SELECT p.id, p.name, v.template_id, p.template_version_id, p.desired_instances, p.ttl_s,
                p.scheduling_timezone
           FROM presets p JOIN template_versions v ON v.id = p.template_version_id
          WHERE ?1 IS NULL OR v.template_id = ?1 ORDER BY p.created_at, p.id",
    )?;
    let rows = statement.query_map([template], |row| {
        Ok(Preset {
            id: row.get(0)?,
            name: row.get(1)?,
            template_id: row.get(2)?,
            template_version_id: row.get(3)?,
            desired_instances: row.get::<_, Option<i64>>(4)?.map(unsigned),
            ttl_s: row.get::<_, Option<i64>>(5)?.map(unsigned),
            scheduling_timezone: row.get(6)?,
            schedules: Vec::new(),
        })
    })?;
    let mut presets = Vec::new();
    for row in rows {
        let mut preset = row?;
        preset.schedules = schedules.remove(&preset.id).unwrap_or_default();
        presets.push(preset);
    }
    Ok(presets)
}

/// Live workspaces and, from their latest-build summary (schema V2), their latest builds,
/// in one scan.
fn read_workspaces_and_builds(
    conn: &Connection,
) -> Result<(Vec<Workspace>, Vec<Build>), StoreError> {
    workspace_rows(conn, None)
}

/// One live workspace with its latest build and its template, as the planner sees them:
/// what the lifecycle executor re-reads inside its write transaction.
pub fn one(
    conn: &Connection,
    workspace_id: &str,
) -> Result<Option<(Workspace, Option<Build>, Template)>, StoreError> {
    let (mut workspaces, mut builds) = workspace_rows(conn, Some(workspace_id))?;
    let Some(workspace) = workspaces.pop() else { return Ok(None) };
    let template = read_templates_where(conn, Some(&workspace.template_id))?.pop();
    Ok(template.map(|template| (workspace, builds.pop(), template)))
}

fn workspace_rows(
    conn: &Connection,
    only: Option<&str>,
) -> Result<(Vec<Workspace>, Vec<Build>), StoreError> {
    // Owners who are not active; for one workspace, just its owner, by key.
    let statuses: HashMap<String, OwnerStatus> = {
        let sql = match only {
            Some(_) => {
                "SELECT u.id, u.status FROM users u JOIN workspaces w ON w.owner_id = u.id
                  WHERE w.id = ?1 AND u.status <> 'active'"
            }
            None => "SELECT id, status FROM users WHERE status <> 'active' AND ?1 IS NULL",
        };
        let mut statement = conn.prepare_cached(sql)?;
        let rows = statement.query_map([only], |row| {
            let status = match row.get_ref(1)?.as_str()? {
                "suspended" => OwnerStatus::Suspended,
                "dormant" => OwnerStatus::Dormant,
                _ => OwnerStatus::Active,
            };
            Ok((row.get::<_, String>(0)?, status))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    // Two statements rather than `?2 IS NULL OR id = ?2`, so one workspace is found by key.
    let columns = WORKSPACE_COLUMNS;
    let sql = match only {
        Some(_) => format!("{columns} AND id = ?2"),
        None => format!("{columns} AND ?2 IS NULL"),
    };
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query(rusqlite::params![PREBUILDS_USER_ID, only])?;
    map_workspace_rows(rows, &statuses)
}

/// Live user workspaces whose last activity (or creation, per `bases`) is before `bound`
/// (GC candidates: the due ones are among them), with their latest builds.
pub fn gc_candidates(
    conn: &Connection,
    bound: DateTime<Utc>,
    bases: GcBases,
) -> Result<(Vec<Workspace>, Vec<Build>), StoreError> {
    let tx = conn.unchecked_transaction()?;
    let statuses = HashMap::new();
    let columns = format!("{WORKSPACE_COLUMNS} AND owner_id <> ?1");
    // Only the bases some policy uses: each branch is a range scan of its own index.
    let mut branches = Vec::new();
    if bases.last_activity {
        branches.push(format!("{columns} AND last_used_at < ?2"));
    }
    if bases.creation {
        branches.push(format!("{columns} AND created_at < ?2"));
    }
    if branches.is_empty() {
        drop(tx);
        return Ok((Vec::new(), Vec::new()));
    }
    let sql = branches.join(" UNION ");
    let mut statement = tx.prepare_cached(&sql)?;
    let rows = statement
        .query(rusqlite::params![PREBUILDS_USER_ID, crate::store::time::to_millis(bound)])?;
    let (workspaces, builds) = map_workspace_rows(rows, &statuses)?;
    drop(statement);
    tx.finish()?;
    Ok((workspaces, builds))
}

/// Live user workspaces (the safety valve's population): all live workspaces, counted on a
/// small covering index, minus the prebuilds, found by the owner index.
pub fn count_user_workspaces(conn: &Connection) -> Result<u64, StoreError> {
    let count: i64 = conn.query_row_cached(
        "SELECT (SELECT COUNT(*) FROM workspaces INDEXED BY workspaces_live_created WHERE deleted = 0)
              - (SELECT COUNT(*) FROM workspaces WHERE deleted = 0 AND owner_id = ?1)",
        [PREBUILDS_USER_ID],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Which age bases the GC policies in force use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcBases {
    pub last_activity: bool,
    pub creation: bool,
}

fn map_workspace_rows(
    mut rows: rusqlite::Rows<'_>,
    statuses: &HashMap<String, OwnerStatus>,
) -> Result<(Vec<Workspace>, Vec<Build>), StoreError> {
    let mut workspaces = Vec::new();
    let mut builds = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let prebuilds: bool = row.get(2)?;
        let owner = if prebuilds { Owner::Prebuilds } else { Owner::User(row.get(3)?) };
        let owner_status = match &owner {
            Owner::User(user) => statuses.get(user).copied().unwrap_or_default(),
            Owner::Prebuilds => OwnerStatus::Active,
        };
        let schedule: Option<String> = row.get(9)?;
        if let Some(build_number) = row.get::<_, Option<i64>>(13)? {
            builds.push(Build {
                workspace_id: id.clone(),
                build_number: unsigned(build_number),
                transition: enum_column(row, 14)?,
                job_status: enum_column(row, 15)?,
                template_version_id: row.get(16)?,
                preset_id: row.get(17)?,
                initiator: if row.get(18)? { Initiator::Prebuilds } else { Initiator::User },
                created_at: time(row, 19)?,
                job_completed_at: optional_time(row, 20)?,
                deadline: optional_time(row, 21)?,
            });
        }
        workspaces.push(Workspace {
            id,
            template_id: row.get(1)?,
            owner,
            owner_status,
            created_at: time(row, 4)?,
            last_used_at: Some(time(row, 5)?),
            deleted: false,
            agents_ready: row.get(6)?,
            dormant_at: optional_time(row, 7)?,
            deleting_at: optional_time(row, 8)?,
            // A schedule that is not a valid weekly cron cannot fire; the planner sees none.
            autostart_schedule: schedule
                .filter(|schedule| CronSchedule::parse_weekly(schedule).is_ok()),
            automatic_updates: if row.get_ref(10)?.as_str().map_err(rusqlite::Error::from)?
                == "always"
            {
                AutomaticUpdates::Always
            } else {
                AutomaticUpdates::Never
            },
            protected: row.get(11)?,
            gc_warned_at: optional_time(row, 12)?,
            unhealthy_since: optional_time(row, 22)?,
            // Written by the store from the enum (CHECK constraint); unreadable = unknown.
            last_used_source: row
                .get::<_, Option<String>>(23)?
                .and_then(|source| source.parse().ok()),
        });
    }
    Ok((workspaces, builds))
}

/// Parses a TEXT enum column without allocating.
fn enum_column<T>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text = row.get_ref(index)?.as_str()?;
    text.parse().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}
