//! Planner benchmarks (`cargo bench --bench planner`): builds a real SQLite file with
//! 10,000 presets and 100,000 workspaces and prints the median of repeated runs of
//!
//! - the bare SQL read of the same rows a reconcile cycle reads (no conversion),
//! - the snapshot read (typed rows) plus the full plan.
//!
//! Targets (issue: prebuild pools): snapshot read + plan under 250 ms on the CI machine.
//! Figures, not assertions: machine noise belongs in the report, not in a red build.

// Printing the figures is this program's whole job.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::params;

use workspaced::config::Config;
use workspaced::domain::{DEFAULT_ORGANIZATION_ID, PREBUILDS_USER_ID};
use workspaced::planner;
use workspaced::store::{Store, StoreError, StoreOptions, snapshot};

const TEMPLATES: usize = 1_000;
const PRESETS_PER_TEMPLATE: usize = 10;
const WORKSPACES: usize = 100_000;
const RUNS: usize = 11;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-02T12:00:00Z")
        .map(|time| time.to_utc())
        .unwrap_or_default()
}

fn seed(store: &Store) -> Result<(), StoreError> {
    store.write_blocking(|tx| {
        let base = now().timestamp_millis() - 3_600_000;
        let mut presets = Vec::new();
        for t in 0..TEMPLATES {
            let template = format!("t{t}");
            let version = format!("v{t}");
            tx.execute(
                "INSERT INTO templates (id, organization_id, name, created_at, updated_at) VALUES (?1, ?2, ?1, 0, 0)",
                params![template, DEFAULT_ORGANIZATION_ID],
            )?;
            tx.execute(
                "INSERT INTO template_versions (id, template_id, name, content_hash, provisioner, created_at)
                 VALUES (?1, ?2, 'v1', 'h', 'local', 0)",
                params![version, template],
            )?;
            tx.execute("UPDATE templates SET active_version_id = ?2 WHERE id = ?1", params![template, version])?;
            for p in 0..PRESETS_PER_TEMPLATE {
                let preset = format!("p{t}-{p}");
                tx.execute(
                    "INSERT INTO presets (id, template_version_id, name, desired_instances, ttl_s, created_at)
                     VALUES (?1, ?2, ?1, 10, 86400, 0)",
                    params![preset, version],
                )?;
                presets.push((template.clone(), version.clone(), preset));
            }
        }
        let user = "bench-user";
        tx.execute("INSERT INTO users (id, username, created_at, updated_at) VALUES (?1, ?1, 0, 0)", [user])?;
        let mut workspace = tx.prepare(
            "INSERT INTO workspaces (id, organization_id, owner_id, template_id, preset_id, name, agents_ready,
                created_at, updated_at, last_used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?1, 1, ?6, ?6, ?6)",
        )?;
        let mut job = tx.prepare(
            "INSERT INTO provisioner_jobs (id, status, backend, created_at, updated_at, completed_at)
             VALUES (?1, 'succeeded', 'local', ?2, ?2, ?2)",
        )?;
        let mut build = tx.prepare(
            "INSERT INTO workspace_builds (id, workspace_id, build_number, template_version_id, transition, reason,
                initiator_id, job_id, preset_id, is_prebuild, created_at, updated_at)
             VALUES (?1, ?2, 1, ?3, 'start', 'prebuild', ?4, ?1, ?5, 1, ?6, ?6)",
        )?;
        for n in 0..WORKSPACES {
            let (template, version, preset) = &presets[n % presets.len()];
            let id = format!("w{n}");
            // Nine in ten are prebuilds; the rest belong to a person.
            let owner = if n % 10 == 9 { user } else { PREBUILDS_USER_ID };
            let created = base + (n as i64 % 3_600_000);
            workspace.execute(params![id, DEFAULT_ORGANIZATION_ID, owner, template, preset, created])?;
            job.execute(params![id, created])?;
            build.execute(params![id, id, version, owner, preset, created])?;
        }
        // The store keeps the latest-build summary as it writes builds; this bulk seed
        // fills it in one statement, as migration V2 does.
        tx.execute_batch(
            "UPDATE workspaces SET (latest_build_number, latest_transition, latest_job_status,
                latest_template_version_id, latest_preset_id, latest_initiator_id, latest_build_created_at,
                latest_job_completed_at, latest_deadline) = (
                SELECT b.build_number, b.transition, j.status, b.template_version_id, b.preset_id,
                       b.initiator_id, b.created_at, j.completed_at, b.deadline
                  FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
                 WHERE b.workspace_id = workspaces.id ORDER BY b.build_number DESC LIMIT 1)",
        )?;
        Ok(())
    })
}

/// The rows a reconcile cycle reads, fetched without building any typed value.
fn bare_read(store: &Store) -> Result<usize, StoreError> {
    store.read_blocking(|conn| {
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
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Runs `f` RUNS times; returns the median time and the last result.
fn measure<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut samples = Vec::with_capacity(RUNS);
    let started = Instant::now();
    let mut last = f();
    samples.push(started.elapsed());
    for _ in 1..RUNS {
        let started = Instant::now();
        last = f();
        samples.push(started.elapsed());
    }
    (median(samples), last)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (store, _) = Store::open(StoreOptions::at(dir.path().join("bench.db")))?;
    let seeding = Instant::now();
    seed(&store)?;
    println!(
        "seeded {TEMPLATES} templates, {} presets, {WORKSPACES} workspaces in {:?}",
        TEMPLATES * PRESETS_PER_TEMPLATE,
        seeding.elapsed()
    );

    let settings = Config::default().planner_settings();
    let (bare, rows) = measure(|| bare_read(&store));
    let rows = rows?;
    let (read, snapshot) =
        measure(|| store.read_blocking(|conn| snapshot::read(conn, now(), settings.clone())));
    let snapshot = snapshot?;
    let (planning, plan) = measure(|| planner::plan(&snapshot));
    let (reconcile_only, _) = measure(|| {
        let index = planner::snapshot::Index::new(&snapshot);
        planner::reconcile::plan(&index)
    });
    let (total, _) = measure(|| {
        store
            .read_blocking(|conn| snapshot::read(conn, now(), settings.clone()))
            .map(|snapshot| planner::plan(&snapshot))
    });
    let creates: u64 = plan
        .reconciler
        .presets
        .iter()
        .flat_map(|preset| &preset.actions)
        .map(|action| match action {
            planner::plan::PoolAction::Create { count } => *count,
            _ => 0,
        })
        .sum();
    println!("medians of {RUNS} runs:");
    println!("  bare SQL read ({rows} rows):           {bare:>10.2?}");
    println!("  snapshot read (typed):                 {read:>10.2?}");
    println!("  plan (reconciler + lifecycle + gc):    {planning:>10.2?}");
    println!("  plan (reconciler only, as the loop):   {reconcile_only:>10.2?}");
    println!(
        "  snapshot read + plan:                  {total:>10.2?}   (target < 250 ms; {:.1}x the bare read)",
        total.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "  ({} presets planned, {creates} prebuilds to create)",
        plan.reconciler.presets.len()
    );
    Ok(())
}
