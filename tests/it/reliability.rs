//! What the daemon survives: hostile clients, failing storage, crashes. Each test here
//! reproduces a way the daemon used to go down or hang, and asserts it no longer does.

use std::io::{Read, Write};

use std::net::TcpStream;
use std::time::{Duration, Instant};

use workspaced::config::Config;
use workspaced::config::duration::HumanDuration;

use crate::helpers::TestDaemon;

/// Whether the server closed `stream` (a read sees EOF or a reset) within `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            // A 408 or error response before the close is fine: read on.
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_and_others_are_served_meanwhile() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let daemon = TestDaemon::spawn_with(|config| {
        config.server.header_read_timeout = HumanDuration::from_secs(2);
    })
    .await;
    let addr = daemon.addr;
    // 200 slowloris clients (a header byte every half second) and 50 that say nothing.
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let header = b"GET /healthz HTTP/1.1\r\nHost: x\r\n";
    for (round, byte) in header.iter().enumerate().take(4) {
        for stream in &mut slow {
            let _ = stream.write_all(&[*byte]).await;
        }
        // Everyone else is served while they dribble.
        assert_eq!(daemon.get("/healthz").await.0, 200, "round {round}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for stream in slow.iter_mut().chain(idle.iter_mut()) {
        let mut buffer = [0u8; 512];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a connection outlived the header read timeout");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(daemon.get("/healthz").await.0, 200);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once_and_counted() {
    let daemon = TestDaemon::spawn_with(|config| {
        config.server.max_connections = 16;
        config.server.header_read_timeout = HumanDuration::from_secs(30);
    })
    .await;
    let addr = daemon.addr;
    // The readiness probe's connection may still be closing on a loaded machine: start
    // from no open connection, or it takes one of the 16 slots.
    let open = daemon.metrics.api.connections.clone();
    tokio::task::spawn_blocking(move || {
        crate::helpers::eventually(Duration::from_secs(10), "no open connection", || {
            (open.get() == 0).then_some(())
        })
    })
    .await
    .unwrap();
    let held = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
        held
    })
    .await
    .unwrap();
    let open = daemon.metrics.api.connections.clone();
    tokio::task::spawn_blocking(move || {
        crate::helpers::eventually(Duration::from_secs(5), "16 accepted connections", || {
            (open.get() == 16).then_some(())
        })
    })
    .await
    .unwrap();
    let held = tokio::task::spawn_blocking(move || {
        let mut extra = TcpStream::connect(addr).unwrap();
        assert!(closed_by_server(&mut extra, Duration::from_secs(2)), "the 17th was kept");
        held
    })
    .await
    .unwrap();
    assert!(daemon.metrics.api.connections_refused.get() >= 1);
    drop(held);
    // Once they are gone, new connections are served again.
    let addr = daemon.addr;
    tokio::task::spawn_blocking(move || {
        crate::helpers::eventually(Duration::from_secs(5), "a free connection slot", || {
            try_healthz(addr).filter(|status| *status == 200)
        })
    })
    .await
    .unwrap();
    daemon.shutdown().await;
}

/// `GET /healthz` that reports a refused or reset connection as `None`.
fn try_healthz(addr: std::net::SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_keeps_reads_and_metrics_and_recovers() {
    use workspaced::store::StoreError;
    let daemon = TestDaemon::spawn().await;
    let store = daemon.store.clone();
    // The database may not grow (as on a full disk): the writer's page budget is what it
    // uses now.
    let pages: i64 = store
        .read(|conn| Ok(conn.query_row("PRAGMA page_count", [], |row| row.get(0))?))
        .await
        .unwrap();
    store
        .write_blocking(move |tx| {
            tx.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let fill = |store: &workspaced::store::Store| {
        store.write_blocking(|tx| {
            for i in 0..200 {
                tx.execute(
                    "INSERT INTO audit_log (time, actor, action, resource_type, resource_id)
                     VALUES (0, 'test', 'fill', 'x', ?1)",
                    [format!("{i}{}", "x".repeat(4000))],
                )?;
            }
            Ok::<_, StoreError>(())
        })
    };
    let error = fill(&store).unwrap_err();
    assert!(error.is_storage_failure(), "{error}");
    assert!(error.to_string().contains("full") || format!("{error:?}").contains("DiskFull"));

    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("database writes failing"), "{body}");
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let (status, scrape) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        crate::helpers::metric_value(&scrape, "workspaced_store_errors_total")
            .is_some_and(|count| count >= 1.0),
        "the failure is counted"
    );
    // Reads keep answering.
    let users: i64 = store
        .read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?))
        .await
        .unwrap();
    assert!(users >= 1);

    // Space comes back: the next write that reaches the disk clears the failure.
    store
        .write_blocking(|tx| {
            tx.query_row("PRAGMA max_page_count = 1073741823", [], |_| Ok(()))?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    fill(&store).unwrap();
    assert_eq!(daemon.get("/readyz").await.0, 200);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_held_by_another_process_costs_queued_writes_one_wait_not_a_chain() {
    use workspaced::store::StoreError;
    let daemon = TestDaemon::spawn_with(|config| {
        config.storage.busy_timeout = HumanDuration::from_secs(1);
    })
    .await;
    let store = daemon.store.clone();
    let path = store.path().to_path_buf();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        released.recv().unwrap();
        conn.execute_batch("COMMIT").unwrap();
    });
    is_locked.recv().unwrap();
    let started = Instant::now();
    let mut writes = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        writes.push(tokio::spawn(async move {
            store
                .write(move |tx| {
                    tx.execute(
                        "INSERT INTO audit_log (time, actor, action, resource_type, resource_id)
                         VALUES (0, 'test', 'w', 'x', ?1)",
                        [i.to_string()],
                    )?;
                    Ok::<_, StoreError>(())
                })
                .await
        }));
    }
    for write in writes {
        let error = write.await.unwrap().unwrap_err();
        assert!(error.is_transient(), "{error}");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(3500), "six queued writes waited {waited:?}");
    assert_eq!(daemon.get("/readyz").await.0, 503);
    release.send(()).unwrap();
    holder.join().unwrap();
    store
        .write(|tx| {
            tx.execute(
                "INSERT INTO audit_log (time, actor, action, resource_type) VALUES (0, 't', 'w', 'x')",
                [],
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert_eq!(daemon.get("/readyz").await.0, 200);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_owner_cannot_hand_workspaces_to_outsiders_or_probe_names() {
    use workspaced::auth::Role;
    let (daemon, api) = crate::api::api_daemon(|_| {}).await;
    let _alice = crate::api::user(&daemon, "alice", Role::Member, "default").await;
    let eve = api.as_user(&crate::api::user(&daemon, "eve", Role::Owner, "other").await);
    let before = daemon.count("SELECT COUNT(*) FROM workspaces").await;

    // alice is a user, but not of eve's organization: answered like a user who does not exist.
    let outsider = serde_json::json!({ "template": "ops", "organization": "other", "name": "x", "owner": "alice" });
    let nobody = serde_json::json!({ "template": "ops", "organization": "other", "name": "x", "owner": "nobody" });
    let (status, body) = eve.post("/api/v1/workspaces", outsider).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("owner")), "{body}");
    let (status_nobody, body_nobody) = eve.post("/api/v1/workspaces", nobody).await;
    assert_eq!(status_nobody, status);
    assert_eq!(
        body["error"].as_str().unwrap().replace("alice", "?"),
        body_nobody["error"].as_str().unwrap().replace("nobody", "?")
    );

    // An organization eve has no role in answers exactly like one that does not exist.
    let probe = |organization: &str| serde_json::json!({ "template": "dev", "organization": organization, "name": "y" });
    let existing = eve.post("/api/v1/workspaces", probe("default")).await;
    let missing = eve.post("/api/v1/workspaces", probe("no-such-org")).await;
    assert_eq!(existing, missing);
    assert_eq!(existing.0, 404);
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM workspaces").await,
        before,
        "nothing was created"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_pool_fills_at_the_runners_pace_and_a_smaller_one_cancels_unstarted_creates() {
    use workspaced::domain::LoopKind;
    use workspaced::domain::PREBUILDS_USER_ID;
    let pool = |instances: u32| vec![crate::api::template("dev", "default", instances)];
    let daemon = TestDaemon::spawn_with(|config| {
        config.templates = pool(50);
        config.reconciler.max_queued_creates = 8;
        config.provisioner.concurrency = 1;
        config.provisioner.local.build_duration = HumanDuration::from_secs(600);
    })
    .await;
    let in_progress = format!(
        "SELECT COUNT(*) FROM workspaces w JOIN workspace_builds b
           ON b.workspace_id = w.id AND b.build_number = w.latest_build_number
           JOIN provisioner_jobs j ON j.id = b.job_id
          WHERE w.deleted = 0 AND w.owner_id = '{PREBUILDS_USER_ID}' AND j.status IN ('pending', 'running')"
    );
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(daemon.count(&in_progress).await, 8, "50 wanted, 8 queued at most");
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(daemon.count(&in_progress).await, 8, "no more while the queue is full");

    // The pool shrinks (a new version): its unstarted creates are canceled, not built to
    // be deleted; the one building goes on.
    let mut smaller = Config::default();
    smaller.storage.data_dir = daemon.dir.path().join("data");
    smaller.templates = pool(1);
    smaller.reconciler.max_queued_creates = 8;
    smaller.provisioner.concurrency = 1;
    smaller.provisioner.local.build_duration = HumanDuration::from_secs(600);
    daemon.reloader.apply(smaller).await.unwrap();
    daemon.tick(LoopKind::Reconciler).await;
    let canceled = daemon
        .count(
            "SELECT COUNT(*) FROM provisioner_jobs WHERE status = 'canceled'
               AND error LIKE '%no longer wants%'",
        )
        .await;
    assert_eq!(canceled, 7);
    assert_eq!(
        daemon
            .count(&format!(
                "SELECT COUNT(*) FROM workspaces WHERE deleted = 1 AND owner_id = '{PREBUILDS_USER_ID}'"
            ))
            .await,
        7,
        "their workspaces are gone without a build"
    );
    // A canceled create is cleaned up by the next cycle.
    let running: String = daemon
        .store
        .read(|conn| {
            Ok(conn.query_row(
                "SELECT id FROM provisioner_jobs WHERE status = 'running'",
                [],
                |row| row.get(0),
            )?)
        })
        .await
        .unwrap();
    daemon.runner.cancel(&running).await.unwrap();
    crate::fixtures::finished(&daemon.store, &running).await;
    daemon.tick(LoopKind::Reconciler).await;
    let cleanup = daemon
        .count(
            "SELECT COUNT(*) FROM workspace_builds b JOIN workspaces w ON w.id = b.workspace_id
              WHERE b.transition = 'delete' AND w.latest_build_number = 2",
        )
        .await;
    assert_eq!(cleanup, 1, "the canceled prebuild gets a delete build");
    crate::fixtures::assert_latest_summaries_consistent(&daemon.store);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_pruned_in_batches_and_what_is_still_needed_stays() {
    use workspaced::auth::Role;
    use workspaced::domain::Transition;
    use workspaced::store::StoreError;
    let (daemon, api) = crate::api::api_daemon(|_| {}).await;
    let store = daemon.store.clone();
    let (template_id, _) = crate::fixtures::template(&store, "t", "local", &[]);
    let alice = crate::fixtures::user(&store, "alice");
    let kept = crate::fixtures::workspace(&store, &alice, &template_id, "kept");
    let kept_job = crate::fixtures::build(&store, &kept, Transition::Start, &alice).job_id;
    let gone = crate::fixtures::workspace(&store, &alice, &template_id, "gone");
    crate::fixtures::build(&store, &gone, Transition::Start, &alice);
    daemon.wait_idle().await;
    crate::fixtures::build(&store, &gone, Transition::Delete, &alice);
    daemon.wait_idle().await;
    store
        .write(|tx| {
            for i in 0..5 {
                tx.execute(
                    "INSERT INTO audit_log (time, actor, action, resource_type, resource_id)
                     VALUES (0, 'test', 'old', 'x', ?1)",
                    [i.to_string()],
                )?;
            }
            // A delivery for a webhook that is no longer configured.
            tx.execute(
                "INSERT INTO webhook_deliveries (webhook, event_id, next_attempt_at, created_at, updated_at)
                 VALUES ('removed', (SELECT MIN(id) FROM outbox), 0, 0, 0)",
                [],
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    // The publisher has delivered everything committed so far.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while daemon.count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "events stay undelivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events_before = daemon.count("SELECT COUNT(*) FROM outbox").await;
    assert!(daemon.count("SELECT COUNT(*) FROM provisioner_job_logs").await > 0);

    // A year and a half later, with batches of 2 rows.
    let mut config = Config::default();
    config.retention.batch_size = 2;
    let later = crate::helpers::start_time() + chrono::Duration::days(500);
    let report = workspaced::retention::run(&store, &config, later).await;
    assert!(report["audit_log"] >= 5, "{report:?}");
    assert_eq!(report["deleted_workspaces"], 1, "{report:?}");
    assert_eq!(daemon.count("SELECT COUNT(*) FROM audit_log WHERE action = 'old'").await, 0);
    assert_eq!(daemon.count("SELECT COUNT(*) FROM webhook_deliveries").await, 0);
    assert_eq!(daemon.count("SELECT COUNT(*) FROM provisioner_job_logs").await, 0);
    assert_eq!(
        daemon.count(&format!("SELECT COUNT(*) FROM workspaces WHERE id = '{gone}'")).await,
        0,
        "the deleted workspace's rows are gone"
    );
    assert_eq!(
        daemon
            .count(&format!("SELECT COUNT(*) FROM workspace_builds WHERE workspace_id = '{gone}'"))
            .await,
        0
    );
    // The live workspace keeps its builds and job (only the finished job's logs went).
    assert_eq!(
        crate::fixtures::status_now(&store, &kept_job),
        workspaced::domain::JobStatus::Succeeded
    );
    let events_after = daemon.count("SELECT COUNT(*) FROM outbox").await;
    assert_eq!(events_after, 1, "every delivered event but the newest ({events_before} before)");
    let dangling = daemon.count("SELECT COUNT(*) FROM pragma_foreign_key_check").await;
    assert_eq!(dangling, 0);
    assert_eq!(
        daemon
            .count("SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'")
            .await,
        0
    );

    // A client resuming from before the pruned range hears about the gap.
    let reader = api.as_user(&crate::api::user(&daemon, "root", Role::Owner, "default").await);
    let (status, mut stream) = reader.stream("/api/v1/events", &[("Last-Event-ID", "1")]).await;
    assert_eq!(status, 200);
    let mut saw_error = None;
    for _ in 0..10 {
        let Some(line) = stream.next_line(Duration::from_secs(5)).await else { break };
        if line == "event: error" {
            saw_error = stream.next_line(Duration::from_secs(5)).await;
            break;
        }
    }
    let data = saw_error.expect("an error event about the pruned range");
    assert!(data.contains("oldest_available_id") && data.contains("pruned"), "{data}");
    daemon.shutdown().await;
}

/// Writes `body` as the binary's config in `dir` and issues an owner token with the CLI.
fn config_with_owner_token(dir: &std::path::Path, body: &str) -> (std::path::PathBuf, String) {
    let config = crate::helpers::write_config(dir, body);
    let token = crate::helpers::owner_token(&config);
    (config, token)
}

/// A tiny xorshift generator: the crash loop's random points, reproducible from the
/// printed seed (`WSD_TEST_CRASH_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

/// `POST path` with a bearer token; the status, or `None` when the connection failed (the
/// daemon was killed meanwhile).
fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_daemon_killed_at_random_points_keeps_every_invariant() {
    use crate::helpers::DaemonProcess;
    use nix::sys::signal::Signal;
    use workspaced::clock::Clock;
    let rounds: usize =
        std::env::var("WSD_TEST_CRASH_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(25);
    let seed: u64 = std::env::var("WSD_TEST_CRASH_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 2_654_435_761 + 1);
    eprintln!("crash loop: {rounds} rounds, seed {seed}");
    let mut rng = Rng(seed.max(1));
    let dir = tempfile::tempdir().unwrap();
    let flaky = dir.path().join("flaky.sh");
    std::fs::write(
        &flaky,
        "#!/bin/sh\ncat >/dev/null\nr=$(od -An -N1 -tu1 /dev/urandom | tr -d ' ')\nsleep 0.$((r % 6))\n\
         if [ $((r % 2)) -eq 0 ]; then echo '{\"type\":\"complete\",\"state\":null,\"resources\":[],\"error\":\"flaky backend\"}'; exit 0; fi\n\
         echo '{\"type\":\"complete\",\"state\":null,\"resources\":[{\"name\":\"ws\",\"type\":\"box\",\"agents\":[{\"name\":\"main\",\"ready\":true}]}],\"error\":null}'\n",
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&flaky).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&flaky, permissions).unwrap();
    let body = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {data:?}\n[log]\nformat = \"json\"\n\
         [reconciler]\ninterval = \"1s\"\nbackoff_interval = \"1s\"\nfailure_hard_limit = 0\n\
         [lifecycle]\ninterval = \"1s\"\n[gc]\nenabled = true\ninterval = \"1s\"\n\
         [api]\nrate_limit = 100000\nrate_burst = 1000000\n\
         [provisioner]\nconcurrency = 4\norphan_check_interval = \"1s\"\n\
         [provisioner.exec.flaky]\ncommand = {flaky:?}\n\
         [[templates]]\nname = \"dev\"\nprovisioner = \"flaky\"\n  [[templates.presets]]\n  name = \"small\"\n    [templates.presets.prebuilds]\n    instances = 3\n",
        data = dir.path().join("data"),
    );
    let (config, token) = config_with_owner_token(dir.path(), &body);
    let database = dir.path().join("data/workspaced.db");
    let open = || {
        rusqlite::Connection::open_with_flags(&database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
    };
    let mut claims = 0;
    let started = Instant::now();
    for round in 0..=rounds {
        let restarted_at = workspaced::clock::SystemClock.now();
        let daemon = DaemonProcess::start(&config);
        daemon.wait_for_log("workspaced is ready", Duration::from_secs(20));
        let report = workspaced::store::invariants::check(&open(), Some(restarted_at)).unwrap();
        assert!(
            report.violations.is_empty(),
            "round {round} (seed {seed}): {:?}",
            report.violations
        );
        if round == rounds {
            // The last start runs on: committed events get published, pools settle.
            crate::helpers::eventually(Duration::from_secs(20), "every event published", || {
                let undelivered: i64 = open()
                    .query_row(
                        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND created_at < ?1",
                        [restarted_at.timestamp_millis()],
                        |row| row.get(0),
                    )
                    .unwrap();
                (undelivered == 0).then_some(())
            });
            let loaded = workspaced::config::load(&workspaced::config::ConfigSource {
                file: Some(config.clone()),
            })
            .unwrap();
            let now = workspaced::clock::SystemClock.now();
            let snapshot =
                workspaced::store::snapshot::read(&open(), now, loaded.planner_settings()).unwrap();
            let index = workspaced::planner::snapshot::Index::new(&snapshot);
            let plan = workspaced::planner::reconcile::plan(&index);
            let pools = workspaced::store::invariants::pool_violations(&plan);
            assert!(pools.is_empty(), "seed {seed}: {pools:?}");
            daemon.signal(Signal::SIGTERM);
            assert_eq!(daemon.wait_exit(Duration::from_secs(20)).code(), Some(0));
            break;
        }
        // Claims race the pools until the kill.
        let until = Instant::now() + rng.millis(300, 1500);
        let mut n = 0;
        while Instant::now() < until {
            let body =
                format!("{{\"template\":\"dev\",\"preset\":\"small\",\"name\":\"r{round}-{n}\"}}");
            if post(daemon.addr, "/api/v1/workspaces", &token, &body) == Some(201) {
                claims += 1;
            }
            n += 1;
        }
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit(Duration::from_secs(10));
        // Even right after the kill, before any recovery, the file is consistent.
        let report = workspaced::store::invariants::check(&open(), None).unwrap();
        assert!(
            report.violations.is_empty(),
            "after kill {round} (seed {seed}): {:?}",
            report.violations
        );
    }
    let interrupted: i64 = open()
        .query_row(
            "SELECT COUNT(*) FROM provisioner_jobs WHERE status = 'interrupted'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    eprintln!(
        "crash loop: {rounds} kills in {:.1}s, {claims} workspaces created over HTTP, {interrupted} jobs interrupted",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_rate_or_its_streams_gets_429_and_others_are_served() {
    use workspaced::auth::Role;
    let (daemon, api) = crate::api::api_daemon(|config| {
        config.api.rate_limit = 1;
        config.api.rate_burst = 5;
        config.api.max_streams_per_token = 2;
    })
    .await;
    let greedy = api.as_user(&crate::api::user(&daemon, "greedy", Role::Member, "default").await);
    let polite = api.as_user(&crate::api::user(&daemon, "polite", Role::Member, "default").await);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(greedy.get("/api/v1/workspaces").await.0);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|status| *status == 429), "{statuses:?}");
    let (status, headers, _) = greedy.raw("GET", "/api/v1/workspaces", None, &[]).await;
    assert_eq!(status, 429);
    assert!(
        headers["retry-after"].to_str().unwrap().parse::<u64>().is_ok_and(|wait| wait >= 1),
        "{headers:?}"
    );
    assert_eq!(polite.get("/api/v1/workspaces").await.0, 200, "other tokens are unaffected");

    let (first, _a) = polite.stream("/api/v1/events", &[]).await;
    let (second, _b) = polite.stream("/api/v1/events", &[]).await;
    let (third, _c) = polite.stream("/api/v1/events", &[]).await;
    assert_eq!((first, second, third), (200, 200, 429));
    drop(_a);
    // Closing one frees its slot (once the server notices the client left).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _stream) = polite.stream("/api/v1/events", &[]).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed stream's slot was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_lists_page_with_a_cursor_and_every_row_appears_once() {
    use std::collections::HashSet;
    use workspaced::auth::Role;
    let (daemon, api) = crate::api::api_daemon(|_| {}).await;
    let alice = api.as_user(&crate::api::user(&daemon, "alice", Role::Member, "default").await);
    let bob = api.as_user(&crate::api::user(&daemon, "bob", Role::Member, "default").await);
    for n in 0..7 {
        let body =
            serde_json::json!({ "template": "dev", "preset": "plain", "name": format!("w{n}") });
        assert_eq!(alice.post("/api/v1/workspaces", body).await.0, 201);
    }
    bob.post(
        "/api/v1/workspaces",
        serde_json::json!({ "template": "dev", "preset": "plain", "name": "b" }),
    )
    .await;
    let mut seen = HashSet::new();
    let mut pages = Vec::new();
    let mut path = "/api/v1/workspaces?owner=me&limit=3".to_owned();
    loop {
        let (status, page) = alice.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let names: Vec<String> = page["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .collect();
        pages.push(names.len());
        for name in names {
            assert!(seen.insert(name), "a row appeared twice");
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/workspaces?owner=me&limit=3&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(pages, [3, 3, 1]);
    // Without an owner filter, a member still sees only what the authorizer allows.
    let (_, all) = alice.get("/api/v1/workspaces?limit=1000").await;
    assert_eq!(all["workspaces"].as_array().unwrap().len(), 7);
    assert_eq!(alice.get("/api/v1/workspaces?after=garbage").await.0, 400);
    daemon.shutdown().await;
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?.trim().trim_end_matches(" kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

fn get_status(addr: std::net::SocketAddr, path: &str, token: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Writes `count` running workspaces of the preset `plain` of template `dev`, owned by
/// `root`, with their build, job and latest-build summary, as the store would have.
fn seed_fleet(database: &std::path::Path, count: usize) {
    let mut conn = rusqlite::Connection::open(database).unwrap();
    let tx = conn.transaction().unwrap();
    let (template, organization, version, preset): (String, String, String, String) = tx
        .query_row(
            "SELECT t.id, t.organization_id, t.active_version_id, p.id FROM templates t
               JOIN presets p ON p.template_version_id = t.active_version_id
              WHERE t.name = 'dev' AND p.name = 'plain' AND t.deleted = 0",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    let owner: String =
        tx.query_row("SELECT id FROM users WHERE username = 'root'", [], |row| row.get(0)).unwrap();
    let now = workspaced::clock::Clock::now(&workspaced::clock::SystemClock).timestamp_millis();
    {
        let mut workspace = tx
            .prepare(
                "INSERT INTO workspaces (id, organization_id, owner_id, template_id, preset_id, name,
                    agents_ready, created_at, updated_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7, ?7)",
            )
            .unwrap();
        let mut job = tx
            .prepare(
                "INSERT INTO provisioner_jobs (id, status, backend, created_at, updated_at, completed_at)
                 VALUES (?1, 'succeeded', 'local', ?2, ?2, ?2)",
            )
            .unwrap();
        let mut build = tx
            .prepare(
                "INSERT INTO workspace_builds (id, workspace_id, build_number, template_version_id,
                    transition, reason, initiator_id, job_id, preset_id, created_at, updated_at)
                 VALUES (?1, ?2, 1, ?3, 'start', 'initiator', ?4, ?5, ?6, ?7, ?7)",
            )
            .unwrap();
        for n in 0..count {
            let id = uuid::Uuid::new_v4().to_string();
            let (job_id, build_id) =
                (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
            let created = now - (n as i64 % 3_600_000);
            workspace
                .execute(rusqlite::params![
                    id,
                    organization,
                    owner,
                    template,
                    preset,
                    format!("fleet-{n}"),
                    created
                ])
                .unwrap();
            job.execute(rusqlite::params![job_id, created]).unwrap();
            build
                .execute(rusqlite::params![build_id, id, version, owner, job_id, preset, created])
                .unwrap();
        }
    }
    // The latest-build summary in one statement, as migration V2 fills it.
    tx.execute_batch(
        "UPDATE workspaces SET (latest_build_number, latest_transition, latest_job_status,
            latest_template_version_id, latest_preset_id, latest_initiator_id, latest_build_created_at,
            latest_job_completed_at, latest_deadline) = (
            SELECT b.build_number, b.transition, j.status, b.template_version_id, b.preset_id,
                   b.initiator_id, b.created_at, j.completed_at, b.deadline
              FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
             WHERE b.workspace_id = workspaces.id ORDER BY b.build_number DESC LIMIT 1)
          WHERE name LIKE 'fleet-%'",
    )
    .unwrap();
    tx.commit().unwrap();
    let report = workspaced::store::invariants::check(&conn, None).unwrap();
    assert!(report.violations.is_empty(), "the seed itself: {:?}", report.violations);
}

#[test]
fn a_soak_of_mixed_traffic_and_loops_has_no_errors_and_flat_memory() {
    use crate::helpers::DaemonProcess;
    use nix::sys::signal::Signal;
    let seconds: u64 =
        std::env::var("WSD_TEST_SOAK_SECS").ok().and_then(|n| n.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {data:?}\n[log]\nformat = \"json\"\n\
         [reconciler]\ninterval = \"1s\"\n[lifecycle]\ninterval = \"1s\"\n[gc]\nenabled = true\ninterval = \"2s\"\n\
         [retention]\ninterval = \"5s\"\n[api]\nrate_limit = 100000\nrate_burst = 1000000\n\
         [[templates]]\nname = \"dev\"\ndefault_ttl = \"1h\"\n  [[templates.presets]]\n  name = \"small\"\n    [templates.presets.prebuilds]\n    instances = 4\n  [[templates.presets]]\n  name = \"plain\"\n",
        data = dir.path().join("data"),
    );
    let (config, token) = config_with_owner_token(dir.path(), &body);
    // The manual benchmark-size run (`WSD_TEST_SOAK_FLEET=100000`): a first start writes the
    // templates, then the fleet is written straight into the file before the soak's start.
    let fleet: usize =
        std::env::var("WSD_TEST_SOAK_FLEET").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if fleet > 0 {
        let first = DaemonProcess::start(&config);
        first.wait_for_log("workspaced is ready", Duration::from_secs(20));
        first.signal(Signal::SIGTERM);
        assert_eq!(first.wait_exit(Duration::from_secs(20)).code(), Some(0));
        let seeded = Instant::now();
        seed_fleet(&dir.path().join("data/workspaced.db"), fleet);
        eprintln!("soak: seeded {fleet} running workspaces in {:?}", seeded.elapsed());
    }
    let starting = Instant::now();
    let daemon = DaemonProcess::start(&config);
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(120));
    eprintln!(
        "soak: ready {:?} after the start (quick check, migrations, recovery)",
        starting.elapsed()
    );
    let pid = daemon.pid_for_tests();
    let addr = daemon.addr;
    let started = Instant::now();
    let warm = Duration::from_secs((seconds / 6).max(5));
    let mut rss_start = None;
    let mut requests = 0u64;
    let mut unexpected = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        if rss_start.is_none() && started.elapsed() >= warm {
            rss_start = Some(rss_kib(pid));
        }
        n += 1;
        let name = format!("s{n}");
        // A claim (or a cold build), then reads of every kind, then a stop or a delete.
        // The fleet grows to 300 workspaces during the warm-up, then stays: memory must
        // then stay flat under the same traffic and loops.
        let mut statuses = Vec::new();
        if n <= 300 {
            let preset = if n.is_multiple_of(3) { "plain" } else { "small" };
            let created = post(
                addr,
                "/api/v1/workspaces",
                &token,
                &format!("{{\"template\":\"dev\",\"preset\":\"{preset}\",\"name\":\"{name}\"}}"),
            );
            statuses.push(("create", created, &[201u16, 409][..]));
        }
        for path in [
            "/api/v1/workspaces?limit=50",
            "/api/v1/templates/dev/presets",
            "/api/v1/audit?limit=20",
            "/metrics",
            "/readyz",
        ] {
            statuses.push((path, get_status(addr, path, &token), &[200u16][..]));
        }
        for (what, status, allowed) in statuses {
            requests += 1;
            if !status.is_some_and(|status| allowed.contains(&status)) {
                unexpected.push(format!("{what}: {status:?}"));
            }
        }
    }
    let rss_end = rss_kib(pid);
    let rss_start = rss_start.unwrap_or(rss_end);
    // The daemon logged no error the whole time.
    let mut errors = Vec::new();
    while let Ok(line) = daemon.logs.try_recv() {
        if line["level"] == "ERROR" {
            errors.push(line.to_string());
        }
    }
    eprintln!(
        "soak: {seconds}s, fleet {fleet} + 300, {requests} requests, RSS {rss_start} KiB after warm-up -> {rss_end} KiB at the end"
    );
    assert!(
        unexpected.is_empty(),
        "unexpected answers: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    assert!(errors.is_empty(), "errors logged: {:?}", &errors[..errors.len().min(5)]);
    assert!(
        rss_end <= rss_start + rss_start / 2 + 16 * 1024,
        "memory grew from {rss_start} KiB to {rss_end} KiB"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let conn = rusqlite::Connection::open(dir.path().join("data/workspaced.db")).unwrap();
    let report = workspaced::store::invariants::check(&conn, None).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_and_its_audit_entry_commit_together() {
    use workspaced::auth::Role;
    use workspaced::store::StoreError;
    let (daemon, api) = crate::api::api_daemon(|config| {
        config.provisioner.local.build_duration = HumanDuration::from_secs(600);
    })
    .await;
    let alice = api.as_user(&crate::api::user(&daemon, "alice", Role::Member, "default").await);
    let (status, created) = alice
        .post(
            "/api/v1/workspaces",
            serde_json::json!({ "template": "dev", "preset": "plain", "name": "slow" }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["workspace"]["id"].as_str().unwrap().to_owned();
    let job = created["build"]["job_id"].as_str().unwrap().to_owned();
    crate::fixtures::status_where(
        &daemon.store,
        &job,
        |s| s == workspaced::domain::JobStatus::Running,
        Duration::from_secs(10),
    )
    .await;
    // The audit log refuses writes: the cancel must not happen without its entry.
    daemon
        .store
        .write(|tx| {
            tx.execute_batch(
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log
                   BEGIN SELECT RAISE(ABORT, 'audit log unavailable (injected)'); END;",
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let (status, _) = alice
        .post(&format!("/api/v1/workspaces/{id}/builds/1/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, 500);
    assert_eq!(
        crate::fixtures::status_now(&daemon.store, &job),
        workspaced::domain::JobStatus::Running
    );
    daemon
        .store
        .write(|tx| {
            tx.execute_batch("DROP TRIGGER no_audit")?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let (status, body) = alice
        .post(&format!("/api/v1/workspaces/{id}/builds/1/cancel"), serde_json::json!({}))
        .await;
    assert_eq!((status, body["result"].as_str()), (202, Some("canceling")), "{body}");
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM audit_log WHERE action = 'build.cancel'").await,
        1
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_users_and_tokens_lists_are_bounded_and_page() {
    use workspaced::auth::Role;
    let (daemon, api) = crate::api::api_daemon(|_| {}).await;
    let root = api.as_user(&crate::api::user(&daemon, "root", Role::Owner, "default").await);
    for name in ["u1", "u2", "u3"] {
        crate::api::user(&daemon, name, Role::Member, "default").await;
    }
    let (_, created) = root
        .post(
            "/api/v1/workspaces",
            serde_json::json!({ "template": "dev", "preset": "plain", "name": "w" }),
        )
        .await;
    let id = created["workspace"]["id"].as_str().unwrap().to_owned();
    daemon.wait_idle().await;
    root.post(&format!("/api/v1/workspaces/{id}/stop"), serde_json::json!({})).await;
    daemon.wait_idle().await;
    root.post(&format!("/api/v1/workspaces/{id}/start"), serde_json::json!({})).await;
    daemon.wait_idle().await;
    let (_, page) = root.get(&format!("/api/v1/workspaces/{id}/builds?limit=2")).await;
    let numbers: Vec<i64> = page["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["build_number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2]);
    let next = page["next"].as_i64().unwrap();
    let (_, rest) =
        root.get(&format!("/api/v1/workspaces/{id}/builds?limit=2&before={next}")).await;
    assert_eq!(rest["builds"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next"], serde_json::Value::Null);

    let (_, users) = root.get("/api/v1/users?limit=2").await;
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["root", "u1"]);
    let (_, more) =
        root.get(&format!("/api/v1/users?limit=2&after={}", users["next"].as_str().unwrap())).await;
    let names: Vec<&str> =
        more["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["u2", "u3"]);
    let (_, tokens) = root.get("/api/v1/tokens?limit=2").await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(root.get("/api/v1/tokens?limit=100000").await.0, 400);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_activity_is_audited_once_per_write() {
    use workspaced::auth::Role;
    let (daemon, api) = crate::api::api_daemon(|_| {}).await;
    let alice = api.as_user(&crate::api::user(&daemon, "alice", Role::Member, "default").await);
    let (_, created) = alice
        .post(
            "/api/v1/workspaces",
            serde_json::json!({ "template": "dev", "preset": "plain", "name": "w" }),
        )
        .await;
    let id = created["workspace"]["id"].as_str().unwrap().to_owned();
    daemon.wait_idle().await;
    daemon.clock.advance(chrono::Duration::minutes(5));
    let (_, first) =
        alice.post(&format!("/api/v1/workspaces/{id}/activity"), serde_json::json!({})).await;
    let (_, second) =
        alice.post(&format!("/api/v1/workspaces/{id}/activity"), serde_json::json!({})).await;
    assert_eq!(
        (first["recorded"].as_bool(), second["recorded"].as_bool()),
        (Some(true), Some(false))
    );
    let audited = daemon
        .count("SELECT COUNT(*) FROM audit_log WHERE action = 'workspace.activity' AND actor = 'alice'")
        .await;
    assert_eq!(audited, 1, "the coalesced report wrote nothing, the recorded one is audited");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_while_another_process_holds_the_lock_is_a_503_with_retry_after() {
    use workspaced::auth::Role;
    let (daemon, api) = crate::api::api_daemon(|config| {
        config.storage.busy_timeout = HumanDuration::from_secs(1);
    })
    .await;
    let alice = api.as_user(&crate::api::user(&daemon, "alice", Role::Member, "default").await);
    let path = daemon.store.path().to_path_buf();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        released.recv().unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();
    let body = serde_json::json!({ "template": "dev", "preset": "plain", "name": "w" });
    let (status, headers, answer) = alice
        .raw("POST", "/api/v1/workspaces", Some(serde_json::to_vec(&body).unwrap()), &[])
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(headers.contains_key("retry-after"));
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(alice.post("/api/v1/workspaces", body).await.0, 201, "and it works again after");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_never_starve_builds_of_descriptors() {
    use workspaced::domain::{JobStatus, Transition};
    let daemon = TestDaemon::spawn_with(|config| {
        config.server.header_read_timeout = HumanDuration::from_secs(2);
    })
    .await;
    // The daemon raised this process's soft limit to the hard one; leave room for it.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let count = 10_000usize.min(usize::try_from(hard).unwrap_or(usize::MAX).saturating_sub(3_000));
    assert!(count >= 5_000, "the file limit here ({hard}) is too low for this test: raise it");
    let addr = daemon.addr;
    let flood = tokio::task::spawn_blocking(move || {
        (0..count).filter_map(|_| TcpStream::connect(addr).ok()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    eprintln!("idle flood: {} of {count} connections opened", flood.len());
    // Builds (files, directories, SQLite) still get their descriptors.
    let store = daemon.store.clone();
    let (template_id, _) = crate::fixtures::template(&store, "t", "local", &[]);
    let alice = crate::fixtures::user(&store, "alice");
    let ws = crate::fixtures::workspace(&store, &alice, &template_id, "dev");
    let job = crate::fixtures::build(&store, &ws, Transition::Start, &alice);
    assert_eq!(crate::fixtures::finished(&store, &job.job_id).await.0, JobStatus::Succeeded);
    assert!(daemon.metrics.api.connections.get() <= 1024, "the cap held");
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(15);
    while try_healthz(addr) != Some(200) {
        assert!(Instant::now() < deadline, "the daemon did not recover from the flood");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.shutdown().await;
}

/// A small tmpfs of the test's own, unmounted (lazily) when dropped. Needs root, as CI
/// and the development machines have; elsewhere the test fails saying so.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("`mount` is needed for the storage fault tests (util-linux)");
        assert!(status.success(), "mounting a tmpfs failed: the storage fault tests need root");
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The database files made immutable underneath the running daemon (`chattr +i`: on ext4
/// even the daemon's open descriptors can no longer write), and writable again on drop.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(paths: Vec<std::path::PathBuf>) -> Immutable {
        for path in &paths {
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(path)
                .status()
                .expect("`chattr` is needed for the read-only database test (e2fsprogs)");
            assert!(
                status.success(),
                "chattr +i {} failed: the read-only database test needs root and a file system \
                 with the immutable flag (ext4, xfs, btrfs) for its temporary directory",
                path.display()
            );
        }
        Immutable(paths)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::process::Command::new("chattr").arg("-i").arg(path).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_made_read_only_underneath_fails_writes_clearly_and_recovers() {
    use workspaced::store::StoreError;
    let daemon = TestDaemon::spawn().await;
    let store = daemon.store.clone();
    let write = |store: &workspaced::store::Store| {
        store.write_blocking(|tx| {
            tx.execute(
                "INSERT INTO audit_log (time, actor, action, resource_type, resource_id)
                 VALUES (0, 'test', 'probe', 'x', 'y')",
                [],
            )?;
            Ok::<_, StoreError>(())
        })
    };
    write(&store).unwrap();
    let database = daemon.dir.path().join("data/workspaced.db");
    let wal = daemon.dir.path().join("data/workspaced.db-wal");
    assert!(wal.exists(), "the store runs in WAL mode");
    let before = daemon.metric("workspaced_store_errors_total").await.unwrap_or(0.0);
    let read_only = Immutable::set(vec![database, wal]);
    let error = write(&store).expect_err("a write to an immutable database fails");
    assert!(error.is_storage_failure(), "{error:?}");
    let detail = format!("{error:?}");
    assert!(detail.contains("SystemIoFailure") || detail.contains("ReadOnly"), "{detail}");
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database writes failing"), "{body}");
    // Reads, liveness and metrics keep answering; the failure is counted.
    assert_eq!(daemon.get("/healthz").await.0, 200);
    let after = daemon.metric("workspaced_store_errors_total").await.unwrap_or(0.0);
    assert!(after > before, "store errors counted: {before} -> {after}");
    assert!(daemon.count("SELECT COUNT(*) FROM audit_log").await >= 1, "reads go on");
    // The operator makes it writable again: the next write succeeds and readiness returns.
    drop(read_only);
    write(&store).unwrap();
    assert_eq!(daemon.get("/readyz").await.0, 200);
    let report = store.read(|conn| workspaced::store::invariants::check(conn, None)).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_fails_writes_clearly_and_the_daemon_recovers_when_space_returns() {
    use workspaced::store::StoreError;
    let disk = SmallDisk::mount("8m");
    let data = disk.path.join("data");
    let daemon = TestDaemon::spawn_with(|config| config.storage.data_dir = data.clone()).await;
    let store = daemon.store.clone();
    let write = |store: &workspaced::store::Store| {
        store.write_blocking(|tx| {
            for i in 0..50 {
                tx.execute(
                    "INSERT INTO audit_log (time, actor, action, resource_type, resource_id)
                     VALUES (0, 'test', 'fill', 'x', ?1)",
                    [format!("{i}{}", "x".repeat(2000))],
                )?;
            }
            Ok::<_, StoreError>(())
        })
    };
    write(&store).unwrap();
    // Fill the disk to the last block.
    let filler = disk.path.join("filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    let mut failed = None;
    for _ in 0..20 {
        if let Err(error) = write(&store) {
            failed = Some(error);
            break;
        }
    }
    let error = failed.expect("a write on a full disk failed");
    assert!(error.is_storage_failure(), "{error:?}");
    let (status, body) = daemon.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database writes failing"), "{body}");
    assert_eq!(daemon.get("/healthz").await.0, 200);
    assert_eq!(daemon.get("/metrics").await.0, 200);
    // Space comes back.
    std::fs::remove_file(&filler).unwrap();
    write(&store).unwrap();
    assert_eq!(daemon.get("/readyz").await.0, 200);

    let report = store.read(|conn| workspaced::store::invariants::check(conn, None)).await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    daemon.shutdown().await;
}
