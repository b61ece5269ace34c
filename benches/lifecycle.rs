//! Lifecycle benchmark (`cargo bench --bench lifecycle`): one tick's candidate query plus
//! the decisions for each candidate, over a real SQLite file, for several fleet sizes and
//! numbers of due workspaces. Prints medians; the target (issue: lifecycle executor) is
//! under 20 ms with 100,000 workspaces of which 100 are due, growing with the due count,
//! not the fleet.

// Printing the figures is this program's whole job.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::params;

use workspaced::domain::DEFAULT_ORGANIZATION_ID;
use workspaced::planner::lifecycle;
use workspaced::store::{Store, StoreError, StoreOptions, lifecycle as store_lifecycle, snapshot};

const RUNS: usize = 11;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-02T12:00:00Z")
        .map(|time| time.to_utc())
        .unwrap_or_default()
}

/// `total` started user workspaces with autostop deadlines, `due` of them passed.
fn seed(store: &Store, total: usize, due: usize) -> Result<(), StoreError> {
    store.write_blocking(|tx| {
        let now = now().timestamp_millis();
        tx.execute_batch(
            "INSERT INTO users (id, username, created_at, updated_at) VALUES ('u', 'u', 0, 0);
             INSERT INTO templates (id, organization_id, name, created_at, updated_at, default_ttl_s)
               VALUES ('t', '00000000-0000-0000-0000-000000000001', 't', 0, 0, 3600);
             INSERT INTO template_versions (id, template_id, name, content_hash, provisioner, created_at)
               VALUES ('v', 't', 'v1', 'h', 'local', 0);
             UPDATE templates SET active_version_id = 'v';",
        )?;
        let mut insert = tx.prepare(
            "INSERT INTO workspaces (id, organization_id, owner_id, template_id, name, created_at, updated_at,
                last_used_at, latest_build_number, latest_transition, latest_job_status,
                latest_template_version_id, latest_initiator_id, latest_build_created_at,
                latest_job_completed_at, latest_deadline)
             VALUES (?1, ?2, 'u', 't', ?1, ?3, ?3, ?3, 1, 'start', 'succeeded', 'v', 'u', ?3, ?3, ?4)",
        )?;
        for n in 0..total {
            let deadline = if n < due { now - 60_000 } else { now + 3_600_000 };
            insert.execute(params![format!("w{n:06}"), DEFAULT_ORGANIZATION_ID, now - 600_000, deadline])?;
        }
        Ok(())
    })
}

/// The candidate query and the decision for each candidate, read-only.
fn tick(store: &Store) -> Result<(usize, usize), StoreError> {
    let tick = lifecycle::tick(now());
    store.read_blocking(|conn| {
        let candidates = store_lifecycle::candidates(conn, tick)?;
        let mut decided = 0;
        for id in &candidates {
            if let Some((workspace, Some(build), template)) = snapshot::one(conn, id)?
                && lifecycle::decide(&workspace, &build, &template, tick).is_some()
            {
                decided += 1;
            }
        }
        Ok((candidates.len(), decided))
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("lifecycle tick (candidate query + decisions), medians of {RUNS} runs:");
    for (total, due) in [(10_000, 100), (100_000, 100), (100_000, 1_000), (100_000, 10_000)] {
        let dir = tempfile::tempdir()?;
        let (store, _) = Store::open(StoreOptions::at(dir.path().join("bench.db")))?;
        seed(&store, total, due)?;
        let mut samples = Vec::with_capacity(RUNS);
        let mut counts = (0, 0);
        for _ in 0..RUNS {
            let started = Instant::now();
            counts = tick(&store)?;
            samples.push(started.elapsed());
        }
        assert_eq!(counts, (due, due), "every due workspace is found and decided");
        println!("  {total:>7} workspaces, {due:>6} due: {:>10.2?}", median(samples));
    }
    Ok(())
}
