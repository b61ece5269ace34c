//! Claim benchmark (`cargo bench --bench claims`): the real daemon (SQLite file with
//! `synchronous = FULL`, local provisioner, HTTP on loopback) with a pool of 10,000 ready
//! prebuilds; 64 concurrent HTTP clients claim from it through `POST /api/v1/workspaces`.
//!
//! Prints, per round and as medians: claims/s, p50/p99 latency, and the rate of bare
//! single-row SQLite update transactions (`synchronous = FULL`, one at a time) on the same
//! filesystem in the same run. Checks (and fails loudly on) double claims.
//!
//! Targets (issue 8): ≥ 2,000 claims/s, p99 < 20 ms, and at least half the bare rate.
//! Figures, not assertions: machine noise belongs in the report, not in a red build.

// Printing the figures is this program's whole job.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use workspaced::app::App;
use workspaced::auth::Role;
use workspaced::clock::{Clock, SystemClock};
use workspaced::config::{Config, ConfigSource};
use workspaced::domain::{DEFAULT_ORGANIZATION_ID, PREBUILDS_USER_ID};
use workspaced::pools;
use workspaced::store::{StoreError, builds, users};

const POOL: usize = 10_000;
const CLIENTS: usize = 64;
const ROUNDS: usize = 3;
const CLAIMS_PER_ROUND: usize = 2_500;
/// Claims by direct calls (no HTTP): serial transactions, then grouped ones.
const DIRECT_CLAIMS: usize = 500;
const BARE_UPDATES: usize = 3_000;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

struct Round {
    rate: f64,
    p50: Duration,
    p99: Duration,
    claimed: Vec<String>,
}

async fn claim_round(addr: std::net::SocketAddr, token: &str, round: usize) -> Round {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (next, token) = (Arc::clone(&next), token.to_owned());
        tasks.push(tokio::spawn(async move {
            // One client (one keep-alive connection) per task.
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut latencies = Vec::new();
            let mut claimed = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= CLAIMS_PER_ROUND {
                    break;
                }
                let body =
                    format!(r#"{{"template":"bench","preset":"small","name":"r{round}-c{n}"}}"#);
                let request = hyper::Request::post(format!("http://{addr}/api/v1/workspaces"))
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let sent = Instant::now();
                let response = client.request(request).await.unwrap();
                let status = response.status();
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                latencies.push(sent.elapsed());
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&bytes));
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(value["claimed"], true, "the pool ran dry: {value}");
                claimed.push(value["workspace"]["id"].as_str().unwrap().to_owned());
            }
            (latencies, claimed)
        }));
    }
    let mut latencies = Vec::new();
    let mut claimed = Vec::new();
    for task in tasks {
        let (l, c) = task.await.unwrap();
        latencies.extend(l);
        claimed.extend(c);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Round {
        rate: CLAIMS_PER_ROUND as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        claimed,
    }
}

/// Bare single-row update transactions, one at a time, `synchronous = FULL`, WAL.
fn bare_rate(dir: &std::path::Path) -> f64 {
    let conn = Connection::open(dir.join("bare.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, owner TEXT, name TEXT)",
    )
    .unwrap();
    conn.execute("DELETE FROM t", []).unwrap();
    for id in 0..BARE_UPDATES {
        conn.execute("INSERT INTO t (id, owner, name) VALUES (?1, 'prebuilds', 'p')", [id as i64])
            .unwrap();
    }
    let started = Instant::now();
    for id in 0..BARE_UPDATES {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.execute(
            "UPDATE t SET owner = 'user', name = ?2 WHERE id = ?1",
            params![id as i64, format!("n{id}")],
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
    BARE_UPDATES as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = dir.path().join("data");
    config.reconciler.paused = true;
    // One token drives every client: the per-token rate limit is not what is measured.
    config.api.rate_limit = 100_000;
    config.api.rate_burst = 1_000_000;
    config.templates = vec![
        serde_json::from_value(serde_json::json!({
            "name": "bench",
            "presets": [{ "name": "small", "prebuilds": { "instances": POOL } }],
        }))
        .unwrap(),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let app = App::build(config, ConfigSource { file: None }, Arc::clone(&clock)).unwrap();
        let addr = app.local_addr();
        let store = app.store().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { app.run(shutdown).await.unwrap() }
        });
        // Templates are applied at start; wait for the preset.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = store
                .read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM presets", [], |row| row.get::<_, i64>(0))?))
                .await
                .unwrap();
            if ready > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "templates never applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let token = {
            let store = store.clone();
            let now = clock.now();
            tokio::task::spawn_blocking(move || seed_store(&store, now)).await.unwrap()
        };
        direct_claims(&store, &clock).await;
        println!("claims: pool {POOL} ready prebuilds, {CLIENTS} clients, {ROUNDS} rounds of {CLAIMS_PER_ROUND} claims, synchronous=FULL");
        let mut rates = Vec::new();
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut bare = Vec::new();
        let mut all_claimed = HashSet::new();
        for round in 0..ROUNDS {
            let result = claim_round(addr, &token, round).await;
            for id in &result.claimed {
                assert!(all_claimed.insert(id.clone()), "prebuild {id} was claimed twice");
            }
            let bare_dir = dir.path().to_path_buf();
            let bare_rate = tokio::task::spawn_blocking(move || bare_rate(&bare_dir)).await.unwrap();
            println!(
                "  round {round}: {:>7.0} claims/s  p50 {:>6.2} ms  p99 {:>6.2} ms  | bare update tx {:>7.0}/s",
                result.rate,
                result.p50.as_secs_f64() * 1e3,
                result.p99.as_secs_f64() * 1e3,
                bare_rate
            );
            rates.push(result.rate);
            p50s.push(result.p50.as_secs_f64() * 1e3);
            p99s.push(result.p99.as_secs_f64() * 1e3);
            bare.push(bare_rate);
        }
        let claims_in_db = store
            .read(|conn| {
                Ok(conn.query_row(
                    "SELECT COUNT(*), COUNT(DISTINCT workspace_id) FROM workspace_builds WHERE is_prebuild_claim = 1",
                    [],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                )?)
            })
            .await
            .unwrap();
        let expected = (ROUNDS * CLAIMS_PER_ROUND + 2 * DIRECT_CLAIMS) as i64;
        assert_eq!(claims_in_db, (expected, expected));
        let (rate, bare) = (median(rates), median(bare));
        println!(
            "claims: median {rate:.0} claims/s, p50 {:.2} ms, p99 {:.2} ms; bare update tx {bare:.0}/s; ratio {:.2}; double claims: 0 ({} distinct)",
            median(p50s),
            median(p99s),
            rate / bare,
            all_claimed.len()
        );
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    });
}

/// Fills the pool in one transaction: prebuilds created by the real code path, their
/// builds then marked succeeded and their agents ready (as a finished build would); plus
/// the claiming user and its token.
fn seed_store(store: &workspaced::store::Store, now: chrono::DateTime<chrono::Utc>) -> String {
    store
        .write_blocking(|tx| {
            let preset_id: String = tx.query_row(
                "SELECT p.id FROM presets p JOIN templates t ON t.active_version_id = p.template_version_id
                  WHERE t.name = 'bench' AND p.name = 'small'",
                [],
                |row| row.get(0),
            )?;
            for _ in 0..POOL {
                pools::create_prebuild(tx, &preset_id, now).map_err(|error| StoreError::Corrupt {
                    what: "seed".into(),
                    reason: error.to_string(),
                })?;
            }
            let ms = now.timestamp_millis();
            tx.execute(
                "UPDATE provisioner_jobs SET status = 'succeeded', started_at = ?1, completed_at = ?1, updated_at = ?1
                  WHERE status = 'pending'",
                [ms],
            )?;
            tx.execute("UPDATE workspaces SET agents_ready = 1 WHERE owner_id = ?1", [PREBUILDS_USER_ID])?;
            let ids: Vec<String> = {
                let mut statement = tx.prepare("SELECT id FROM workspaces WHERE owner_id = ?1")?;
                let rows = statement.query_map([PREBUILDS_USER_ID], |row| row.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in &ids {
                builds::refresh_latest(tx, id)?;
            }
            let user = users::insert(tx, "bench", now)?;
            users::grant(tx, &user, DEFAULT_ORGANIZATION_ID, Role::Member, now)?;
            Ok::<_, StoreError>(users::create_token(tx, &user, "bench", None, now)?.token)
        })
        .unwrap()
}

fn claim_request(user_id: &str, name: String) -> pools::ClaimRequest {
    pools::ClaimRequest {
        user_id: user_id.to_owned(),
        template_id: String::new(),
        preset_id: None,
        name,
        parameters: Default::default(),
        autostart_schedule: None,
        ttl_s: None,
    }
}

/// The claim transaction without HTTP: one at a time (one commit each), then 64 at once
/// through `write_grouped` (commits shared).
async fn direct_claims(store: &workspaced::store::Store, clock: &Arc<dyn Clock>) {
    let (user_id, template_id, preset_id) = store
        .read(|conn| {
            Ok(conn.query_row(
                "SELECT (SELECT id FROM users WHERE username = 'bench'), t.id, p.id
                   FROM templates t JOIN presets p ON p.template_version_id = t.active_version_id
                  WHERE t.name = 'bench'",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )?)
        })
        .await
        .unwrap();
    let request = |name: String| {
        let mut request = claim_request(&user_id, name);
        request.template_id = template_id.clone();
        request.preset_id = Some(preset_id.clone());
        request
    };
    let started = Instant::now();
    for n in 0..DIRECT_CLAIMS {
        let (request, now) = (request(format!("serial-{n}")), clock.now());
        store.write(move |tx| pools::claim(tx, &request, now)).await.unwrap();
    }
    let serial = DIRECT_CLAIMS as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..DIRECT_CLAIMS {
        let (store, request, now) = (store.clone(), request(format!("grouped-{n}")), clock.now());
        tasks.push(tokio::spawn(async move {
            store.write_grouped(move |tx| pools::claim(tx, &request, now)).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let grouped = DIRECT_CLAIMS as f64 / started.elapsed().as_secs_f64();
    println!(
        "claims (no HTTP): serial claim tx {serial:.0}/s; {DIRECT_CLAIMS} concurrent grouped {grouped:.0}/s"
    );
}
