//! GC benchmark (`cargo bench --bench gc`): candidate selection (indexed query + judging)
//! over a real SQLite file of 100,000 user workspaces, against the bare SQL SELECT of the
//! same rows, in the same run. Prints medians; target (issue: garbage collector): under
//! 50 ms and within 3x of the bare SELECT.

// Printing the figures is this program's whole job.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::params;

use workspaced::config::Config;
use workspaced::domain::DEFAULT_ORGANIZATION_ID;
use workspaced::store::{Store, StoreError, StoreOptions};

const RUNS: usize = 11;
const TOTAL: usize = 100_000;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-02T12:00:00Z")
        .map(|time| time.to_utc())
        .unwrap_or_default()
}

/// `TOTAL` user workspaces, `due` of them idle for 20 days, the rest used an hour ago.
fn seed(store: &Store, due: usize) -> Result<(), StoreError> {
    store.write_blocking(|tx| {
        let now = now().timestamp_millis();
        tx.execute_batch(
            "INSERT INTO users (id, username, created_at, updated_at) VALUES ('u', 'u', 0, 0);
             INSERT INTO templates (id, organization_id, name, created_at, updated_at)
               VALUES ('t', '00000000-0000-0000-0000-000000000001', 't', 0, 0);",
        )?;
        let mut insert = tx.prepare(
            "INSERT INTO workspaces (id, organization_id, owner_id, template_id, name, created_at, updated_at,
                last_used_at, latest_build_number, latest_transition, latest_job_status,
                latest_template_version_id, latest_initiator_id, latest_build_created_at, latest_job_completed_at)
             VALUES (?1, ?2, 'u', 't', ?1, ?3, ?3, ?4, 1, 'stop', 'succeeded', 'v', 'u', ?3, ?3)",
        )?;
        for n in 0..TOTAL {
            let last_used = if n < due { now - 20 * 86_400_000 } else { now - 3_600_000 };
            insert.execute(params![format!("w{n:06}"), DEFAULT_ORGANIZATION_ID, now - 30 * 86_400_000, last_used])?;
        }
        Ok(())
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
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
    let mut config = Config::default();
    config.gc.enabled = true;
    let settings = config.planner_settings().gc.ok_or("gc settings")?;
    println!(
        "gc candidate selection over {TOTAL} workspaces (creation 30 d ago, ttl 14 d), medians of {RUNS} runs:"
    );
    for due in [1_000, 10_000] {
        let dir = tempfile::tempdir()?;
        let (store, _) = Store::open(StoreOptions::at(dir.path().join("bench.db")))?;
        seed(&store, due)?;
        let bound = workspaced::planner::gc::due_bound(&settings, &[], now());
        let (bare, rows) = time(|| {
            store.read_blocking(|conn| {
                // The same rows and columns the candidate query reads, fetched without
                // conversion.
                let mut statement = conn.prepare_cached(
                    "SELECT id, template_id, owner_id = 'p', owner_id, created_at, last_used_at, agents_ready,
                            dormant_at, deleting_at, autostart_schedule, automatic_updates, protected,
                            gc_warned_at, latest_build_number, latest_transition, latest_job_status,
                            latest_template_version_id, latest_preset_id, latest_initiator_id = 'p',
                            latest_build_created_at, latest_job_completed_at, latest_deadline
                       FROM workspaces WHERE deleted = 0 AND owner_id <> 'p' AND last_used_at < ?1",
                )?;
                let mut rows = statement.query([bound.timestamp_millis()])?;
                let mut count = 0;
                while let Some(row) = rows.next()? {
                    for column in 0..22 {
                        let _ = row.get_ref(column)?;
                    }
                    count += 1;
                }
                Ok(count)
            })
        });
        let data_dir = dir.path().to_path_buf();
        let (selection, plan) = time(|| {
            store.read_blocking(|conn| workspaced::gc::plan_run(conn, &settings, &data_dir, now()))
        });
        let plan = plan?;
        println!(
            "  {due:>6} due: bare SELECT ({} rows) {bare:>9.2?}, candidate selection + judging ({} judged) {selection:>9.2?} = {:.1}x",
            rows?,
            plan.judged.len(),
            selection.as_secs_f64() / bare.as_secs_f64()
        );
    }
    Ok(())
}
