//! The garbage collector's run: judge the due workspaces (`planner::gc`), then warn or
//! delete each in its own write transaction that re-judges the re-read row; sweep local
//! workspace directories that belong to no live workspace. A failure on one workspace is
//! logged, counted and retried next run; the run goes on. Dry runs write nothing.
//!
//! Deletes go through the provisioner (a `delete` build), so the backend removes what the
//! workspace holds.

#[cfg(feature = "containers")]
pub mod containers;
pub mod tick;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::json;

use crate::store::notifications::NewNotification;

use crate::config::Config;
use crate::domain::event::Event;
use crate::domain::{BuildReason, JobStatus, Transition};
use crate::planner::gc::{Policy, apply_safety_valve, due_bound, judge};
use crate::planner::plan::{GcAction, GcActionKind};
use crate::planner::snapshot::{GcBasis, GcSettings, Template, Workspace, rfc3339};
use crate::store::audit::{self, Actor, Entry};
use crate::store::builds::{self, BuildError, BuildRequest};
use crate::store::{Store, StoreError, WriteTx, snapshot};

/// One judged workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub workspace: Workspace,
    pub basis: GcBasis,
    pub action: GcAction,
}

/// What a run would do: the judged due workspaces and the orphaned directories.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunPlan {
    pub judged: Vec<Judged>,
    pub safety_valve_tripped: bool,
    /// Live user workspaces; counted only when the run has deletes to weigh (else 0).
    pub population: u64,
    pub orphans: Vec<PathBuf>,
    /// Labelled containers and volumes of no live workspace (`gc::containers`).
    pub engine_orphans: Vec<EngineOrphan>,
}

pub use crate::domain::EngineOrphan;

/// Reads the candidates and judges them at `now` under `settings` (read-only).
pub fn plan_run(
    conn: &Connection,
    settings: &GcSettings,
    data_dir: &Path,
    now: DateTime<Utc>,
) -> Result<RunPlan, StoreError> {
    let templates = snapshot::read_templates(conn)?;
    let bound = due_bound(settings, &templates, now);
    let mut bases = snapshot::GcBases::default();
    let policies = templates
        .iter()
        .map(|template| Policy::for_template(settings, Some(template)))
        .chain(std::iter::once(Policy::for_template(settings, None)));
    for policy in policies.filter(|policy| policy.enabled) {
        match policy.basis {
            GcBasis::LastActivity => bases.last_activity = true,
            GcBasis::Creation => bases.creation = true,
        }
    }
    let (workspaces, builds) = snapshot::gc_candidates(conn, bound, bases)?;
    let templates: HashMap<&str, &Template> =
        templates.iter().map(|template| (template.id.as_str(), template)).collect();
    let in_progress: HashSet<&str> = builds
        .iter()
        .filter(|build| matches!(build.job_status, JobStatus::Pending | JobStatus::Running))
        .map(|build| build.workspace_id.as_str())
        .collect();
    let mut judged = Vec::new();
    for workspace in &workspaces {
        let policy =
            Policy::for_template(settings, templates.get(workspace.template_id.as_str()).copied());
        if let Some(action) =
            judge(workspace, &policy, in_progress.contains(workspace.id.as_str()), now)
        {
            judged.push(Judged { workspace: workspace.clone(), basis: policy.basis, action });
        }
    }
    let mut actions: Vec<GcAction> = judged.iter().map(|judged| judged.action.clone()).collect();
    // The population matters only to the safety valve, which only weighs deletes.
    let deletes = actions.iter().any(|action| action.action == GcActionKind::Delete);
    let population = if deletes { snapshot::count_user_workspaces(conn)? } else { 0 };
    let tripped = apply_safety_valve(&mut actions, population, settings);
    for (judged, action) in judged.iter_mut().zip(actions) {
        judged.action = action;
    }
    let orphans = orphans(conn, data_dir)?;
    Ok(RunPlan {
        judged,
        safety_valve_tripped: tripped,
        population,
        orphans,
        engine_orphans: Vec::new(),
    })
}

/// Directories under `<data_dir>/workspaces` named after no live workspace.
fn orphans(conn: &Connection, data_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let root = crate::provisioner::local::workspaces_root(data_dir);
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(Vec::new()) };
    let live = crate::store::workspaces::live_ids(conn)?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter(|entry| !live.contains(entry.file_name().to_string_lossy().as_ref()))
        .map(|entry| entry.path())
        .collect();
    found.sort();
    Ok(found)
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunReport {
    pub candidates: u64,
    pub warned: u64,
    pub deleted: u64,
    pub skipped: BTreeMap<&'static str, u64>,
    pub failures: u64,
    pub orphans_removed: u64,
    pub safety_valve_tripped: bool,
    pub dry_run: bool,
}

/// Runs the GC once at `now`: plan, then act (unless `dry_run`).
pub async fn run(
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<RunReport, StoreError> {
    let Some(settings) = config.planner_settings().gc else { return Ok(RunReport::default()) };
    let data_dir = config.storage.data_dir.clone();
    let plan = {
        let settings = settings.clone();
        store.read(move |conn| plan_run(conn, &settings, &data_dir, now)).await?
    };
    #[cfg(feature = "containers")]
    let plan = {
        let mut plan = plan;
        if containers::wanted(config) {
            match containers::find(store, config).await {
                Ok(found) => plan.engine_orphans = found,
                Err(error) => {
                    tracing::warn!(%error, "cannot list the container engine's objects; orphans are swept next run")
                }
            }
        }
        plan
    };
    execute(store, config, &plan, now).await
}

/// Carries out `plan` (made by `plan_run` at `now`): each action re-judged in its own
/// transaction, each orphan re-checked before it is removed.
pub async fn execute(
    store: &Store,
    config: &Config,
    plan: &RunPlan,
    now: DateTime<Utc>,
) -> Result<RunReport, StoreError> {
    let Some(settings) = config.planner_settings().gc else { return Ok(RunReport::default()) };
    let dry_run = config.gc.dry_run;
    let mut report = RunReport {
        candidates: plan.judged.len() as u64,
        safety_valve_tripped: plan.safety_valve_tripped,
        dry_run,
        ..RunReport::default()
    };
    if plan.safety_valve_tripped {
        tracing::error!(
            population = plan.population,
            "gc safety valve tripped: this run would delete too many workspaces; deleting none (check the clock and gc.ttl)"
        );
    }
    for judged in &plan.judged {
        let id = judged.workspace.id.clone();
        let kind = judged.action.action;
        if let Some(reason) = judged.action.reason {
            *report.skipped.entry(reason.as_str()).or_default() += 1;
            continue;
        }
        if dry_run {
            tracing::info!(workspace_id = %id, action = ?kind, age_s = judged.action.age_s, "gc dry run: would act");
            continue;
        }
        let settings = settings.clone();
        let result = store.write(move |tx| act(tx, &id, kind, &settings, now)).await;
        match result {
            Ok(true) if kind == GcActionKind::Warn => report.warned += 1,
            Ok(true) => report.deleted += 1,
            Ok(false) => {}
            Err(error) => {
                report.failures += 1;
                tracing::error!(workspace_id = %judged.workspace.id, error = %crate::error::error_chain(&error), "gc action failed; retried next run");
            }
        }
    }
    for orphan in &plan.orphans {
        if dry_run {
            tracing::info!(path = %orphan.display(), "gc dry run: would remove orphaned workspace directory");
            continue;
        }
        // Re-check with a fresh read: the plan's read may predate a workspace created since,
        // whose directory the listing then saw.
        let name = orphan.file_name().map(|name| name.to_string_lossy().into_owned());
        let live = match name {
            Some(id) => store
                .read(move |conn| crate::store::workspaces::is_live(conn, &id))
                .await
                .unwrap_or(true),
            None => true,
        };
        if live {
            tracing::info!(path = %orphan.display(), "directory belongs to a live workspace after all; kept");
            continue;
        }
        match tokio::fs::remove_dir_all(orphan).await {
            Ok(()) => {
                report.orphans_removed += 1;
                audit_orphan_removal(
                    store,
                    "directory",
                    orphan.display().to_string(),
                    json!({}),
                    now,
                )
                .await;
                tracing::info!(path = %orphan.display(), "removed orphaned workspace directory");
            }
            Err(error) => {
                report.failures += 1;
                tracing::error!(path = %orphan.display(), error = %error, "cannot remove orphaned workspace directory; retried next run");
            }
        }
    }
    for orphan in &plan.engine_orphans {
        if dry_run {
            tracing::info!(kind = orphan.kind, name = %orphan.name, "gc dry run: would remove orphaned engine object");
        }
    }
    #[cfg(feature = "containers")]
    if !dry_run {
        let (removed, failures) =
            containers::remove(store, config, &plan.engine_orphans, now).await;
        report.orphans_removed += removed;
        report.failures += failures;
    }
    Ok(report)
}

/// Records an orphan's removal in the audit log (`gc.orphan_removed`); a failure to record
/// is logged, the removal stands.
pub async fn audit_orphan_removal(
    store: &Store,
    kind: &'static str,
    name: String,
    details: serde_json::Value,
    now: DateTime<Utc>,
) {
    let recorded = store
        .write(move |tx| {
            audit::record(
                tx,
                &Actor::system("gc"),
                &Entry {
                    action: "gc.orphan_removed",
                    resource_type: kind,
                    resource_id: &name,
                    organization_id: None,
                    details,
                },
                now,
            )
        })
        .await;
    if let Err(error) = recorded {
        tracing::warn!(error = %crate::error::error_chain(&error), "cannot audit an orphan removal");
    }
}

/// Re-judges one workspace inside the transaction and warns or deletes it if the same
/// judgement still holds. Returns whether it acted.
fn act(
    tx: &mut WriteTx<'_>,
    workspace_id: &str,
    kind: GcActionKind,
    settings: &GcSettings,
    now: DateTime<Utc>,
) -> Result<bool, BuildError> {
    let Some((workspace, latest, template)) = snapshot::one(tx, workspace_id)? else {
        return Ok(false);
    };
    if workspace.owner.is_prebuilds() {
        return Ok(false);
    }
    let policy = Policy::for_template(settings, Some(&template));
    let in_progress = latest
        .as_ref()
        .is_some_and(|build| matches!(build.job_status, JobStatus::Pending | JobStatus::Running));
    let Some(action) = judge(&workspace, &policy, in_progress, now) else { return Ok(false) };
    if action.action != kind {
        return Ok(false);
    }
    let owner_id = workspace.owner.user_id().to_owned();
    let actor = Actor::system("gc");
    match kind {
        GcActionKind::Warn => {
            let deletes_at =
                action.deletes_at.map(|time| rfc3339::format(&time)).unwrap_or_default();
            crate::store::workspaces::mark_gc_warned(tx, workspace_id, now)?;
            crate::store::notifications::queue(
                tx,
                &NewNotification {
                    kind: "gc.warning",
                    user_id: Some(&owner_id),
                    organization_id: &template.organization_id,
                    template_id: &template.id,
                    payload: json!({ "workspace_id": workspace_id, "deletes_at": deletes_at }),
                },
                now,
            )?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "gc.warned",
                    resource_type: "workspace",
                    resource_id: workspace_id,
                    organization_id: Some(&template.organization_id),
                    details: json!({ "deletes_at": deletes_at, "age_s": action.age_s }),
                },
                now,
            )?;
            tx.emit(
                &Event::GcWarning {
                    workspace_id: workspace_id.to_owned(),
                    organization_id: template.organization_id.clone(),
                    owner_id,
                    deletes_at,
                },
                now,
            )?;
        }
        GcActionKind::Delete => {
            builds::enqueue(
                tx,
                &BuildRequest::new(workspace_id, Transition::Delete, BuildReason::Gc, &owner_id),
                now,
            )?;
            audit::record(
                tx,
                &actor,
                &Entry {
                    action: "gc.deleted",
                    resource_type: "workspace",
                    resource_id: workspace_id,
                    organization_id: Some(&template.organization_id),
                    details: json!({ "age_s": action.age_s }),
                },
                now,
            )?;
            tx.emit(
                &Event::GcDeleted {
                    workspace_id: workspace_id.to_owned(),
                    organization_id: template.organization_id.clone(),
                    owner_id,
                    age_s: action.age_s,
                },
                now,
            )?;
        }
        GcActionKind::Skip => return Ok(false),
    }
    Ok(true)
}
