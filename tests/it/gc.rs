//! The garbage collector end to end: a real daemon (in process) with a manual clock and
//! the local backend; warnings before deletes, both age bases, every skip, the safety
//! valve, a failing delete retried next run, dry runs, the orphan sweep; SIGUSR1 and the
//! dry-run preview with the real binary.

use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;

use workspaced::clock::Clock;
use workspaced::config::Config;
use workspaced::config::duration::HumanDuration;
use workspaced::config::templates::TemplateConfig;
use workspaced::domain::LoopKind;
use workspaced::domain::{BuildReason, DEFAULT_ORGANIZATION_ID, PREBUILDS_USER_ID, Transition};
use workspaced::store::{builds, workspaces};

use crate::helpers::{DaemonProcess, TestDaemon, binary_config, run_binary, write_config};

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn template(name: &str, extra: serde_json::Value) -> TemplateConfig {
    let mut value = serde_json::json!({ "name": name });
    value.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(value).unwrap()
}

/// GC on with a 10-day TTL, a 1-day warning, 15 min grace, and a valve that allows all.
fn gc_config(config: &mut Config) {
    config.gc.enabled = true;
    config.gc.ttl = HumanDuration::from_secs(10 * 86_400);
    config.gc.warn_before = HumanDuration::from_secs(86_400);
    config.gc.max_delete_fraction = workspaced::planner::snapshot::Fraction::from_decimal(1, 0);
}

async fn template_id(daemon: &TestDaemon, name: &str) -> String {
    let name = name.to_owned();
    daemon
        .store
        .read(move |conn| {
            Ok(conn.query_row("SELECT id FROM templates WHERE name = ?1", [&name], |r| r.get(0))?)
        })
        .await
        .unwrap()
}

/// A started user workspace created (and last used) at the clock's time.
async fn workspace(daemon: &TestDaemon, template: &str, name: &str, owner: &str) -> String {
    let new = workspaces::NewWorkspace {
        organization_id: DEFAULT_ORGANIZATION_ID.to_owned(),
        owner_id: owner.to_owned(),
        template_id: template_id(daemon, template).await,
        preset_id: None,
        name: name.to_owned(),
        autostart_schedule: None,
        ttl_s: None,
        automatic_updates_always: false,
    };
    let now = daemon.clock.now();
    let id = daemon.store.write(move |tx| workspaces::insert(tx, &new, now)).await.unwrap();
    let request = builds::BuildRequest::new(&id, Transition::Start, BuildReason::Initiator, owner);
    daemon.store.write(move |tx| builds::enqueue(tx, &request, now)).await.unwrap();
    daemon.wait_idle().await;
    id
}

async fn run_gc(daemon: &TestDaemon) -> u64 {
    let report = daemon.tick(LoopKind::Gc).await;
    daemon.wait_idle().await;
    report.actions
}

async fn deleted(daemon: &TestDaemon, id: &str) -> bool {
    let id = id.to_owned();
    daemon.store.read(move |c| workspaces::get(c, &id)).await.unwrap().unwrap().deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_is_warned_then_deleted_after_the_window_by_activity_or_creation() {
    let daemon = TestDaemon::spawn_with(|config| {
        gc_config(config);
        config.templates = vec![
            template("by-activity", serde_json::json!({})),
            template("by-creation", serde_json::json!({ "gc": { "basis": "creation" } })),
        ];
    })
    .await;
    daemon.clock.set(at("2025-06-01T00:00:00Z"));
    let owner = crate::fixtures::user(&daemon.store, "alice");
    let active = workspace(&daemon, "by-activity", "a", &owner).await;
    let created = workspace(&daemon, "by-creation", "c", &owner).await;
    // Both are used on day 5: that resets the activity age, not the creation age.
    daemon.clock.set(at("2025-06-05T00:00:00Z"));
    for id in [&active, &created] {
        daemon.report_activity(id).await;
    }
    // Day 9.5: the creation-based one is due (9.5 d > 10 d − 1 d) and is warned.
    daemon.clock.set(at("2025-06-10T12:00:00Z"));
    assert_eq!(run_gc(&daemon).await, 1);
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM notifications WHERE kind = 'gc.warning'").await,
        1
    );
    assert_eq!(
        daemon.metric("workspaced_gc_pending_deletions").await,
        Some(1.0),
        "the run that warns counts the warned workspace as waiting"
    );
    // Half a day later it is past its TTL but the warning is only 12 h old: not yet.
    daemon.clock.set(at("2025-06-11T00:00:00Z"));
    assert_eq!(run_gc(&daemon).await, 0);
    assert_eq!(daemon.metric("workspaced_gc_pending_deletions").await, Some(1.0));
    // A full day after the warning: deleted through the provisioner.
    daemon.clock.set(at("2025-06-11T12:00:00Z"));
    assert_eq!(run_gc(&daemon).await, 1);
    assert!(deleted(&daemon, &created).await);
    assert!(!daemon.dir.path().join("data/workspaces").join(&created).exists());
    assert!(!deleted(&daemon, &active).await, "activity on day 5 keeps it until day 15");
    assert_eq!(daemon.metric("workspaced_gc_deleted_total").await, Some(1.0));
    assert_eq!(daemon.metric("workspaced_gc_warned_total").await, Some(1.0));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_active_prebuild_and_busy_workspaces_are_skipped_and_dry_runs_write_nothing() {
    let daemon = TestDaemon::spawn_with(|config| {
        gc_config(config);
        config.gc.dry_run = true;
        config.templates = vec![template("t", serde_json::json!({}))];
    })
    .await;
    daemon.clock.set(at("2025-06-01T00:00:00Z"));
    let owner = crate::fixtures::user(&daemon.store, "bob");
    let protected = workspace(&daemon, "t", "protected", &owner).await;
    let plain = workspace(&daemon, "t", "plain", &owner).await;
    let prebuild = workspace(&daemon, "t", "prebuild", PREBUILDS_USER_ID).await;
    let id = protected.clone();
    daemon
        .store
        .write(move |tx| {
            tx.execute("UPDATE workspaces SET protected = 1 WHERE id = ?1", [&id])
                .map_err(workspaced::store::StoreError::from)
        })
        .await
        .unwrap();
    daemon.clock.set(at("2025-06-20T00:00:00Z"));
    // Dry run: judged, nothing written.
    assert_eq!(run_gc(&daemon).await, 0);
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM workspaces WHERE gc_warned_at IS NOT NULL").await,
        0
    );
    assert_eq!(daemon.metric("workspaced_gc_runs_total{result=\"dry_run\"}").await, Some(1.0));
    assert_eq!(daemon.metric("workspaced_gc_skipped_total{reason=\"protected\"}").await, Some(1.0));
    let _ = (plain, prebuild);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_valve_deletes_nothing_and_a_failed_delete_is_retried_next_run() {
    let daemon = TestDaemon::spawn_with(|config| {
        gc_config(config);
        config.templates = vec![
            template("ok", serde_json::json!({})),
            template(
                "stuck",
                serde_json::json!({ "provisioner_config": { "fail_transitions": ["delete"] } }),
            ),
        ];
    })
    .await;
    daemon.clock.set(at("2025-06-01T00:00:00Z"));
    let owner = crate::fixtures::user(&daemon.store, "carol");
    let ok = workspace(&daemon, "ok", "ok", &owner).await;
    let stuck = workspace(&daemon, "stuck", "stuck", &owner).await;
    let fresh = workspace(&daemon, "ok", "fresh", &owner).await;
    let id = fresh.clone();
    // Warn both old ones.
    daemon.clock.set(at("2025-06-10T12:00:00Z"));
    daemon.report_activity(&id).await;
    assert_eq!(run_gc(&daemon).await, 2);
    daemon.clock.set(at("2025-06-12T00:00:00Z"));
    // A valve of 0.5 of 3 workspaces allows 1 delete, not 2: tripped.
    let mut strict = Config::default();
    strict.storage.data_dir = daemon.dir.path().join("data");
    gc_config(&mut strict);
    strict.gc.max_delete_fraction = workspaced::planner::snapshot::Fraction::from_decimal(5, 1);
    strict.templates = vec![
        template("ok", serde_json::json!({})),
        template(
            "stuck",
            serde_json::json!({ "provisioner_config": { "fail_transitions": ["delete"] } }),
        ),
    ];
    daemon.reloader.apply(strict.clone()).await.unwrap();
    assert_eq!(run_gc(&daemon).await, 0);
    assert_eq!(daemon.metric("workspaced_gc_safety_valve_tripped").await, Some(1.0));
    assert!(!deleted(&daemon, &ok).await && !deleted(&daemon, &stuck).await);
    // With the valve open again: both deletes queued; the stuck one's backend fails.
    strict.gc.max_delete_fraction = workspaced::planner::snapshot::Fraction::from_decimal(1, 0);
    daemon.reloader.apply(strict).await.unwrap();
    assert_eq!(run_gc(&daemon).await, 2);
    assert!(deleted(&daemon, &ok).await);
    assert!(!deleted(&daemon, &stuck).await);
    // Next run: the failed one is tried again (and fails again), the run goes on.
    daemon.clock.set(at("2025-06-12T01:00:00Z"));
    assert_eq!(run_gc(&daemon).await, 1);
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM workspace_builds WHERE reason = 'gc' AND transition = 'delete'").await,
        3
    );
    assert!(!deleted(&daemon, &fresh).await);
    daemon.shutdown().await;
}

#[test]
fn sigusr1_runs_the_gc_now_and_the_dry_run_preview_lists_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let body = binary_config(dir.path())
        .replace("[gc]\ninterval = \"1s\"", "[gc]\nenabled = true\ninterval = \"1h\"");
    let config = write_config(dir.path(), &body);
    let daemon = DaemonProcess::start(&config);
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(15));
    // An orphaned directory: no workspace owns it.
    let orphan = dir.path().join("data/workspaces/not-a-workspace");
    std::fs::create_dir_all(&orphan).unwrap();
    let preview = run_binary(
        &["gc", "--dry-run", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    assert!(preview.status.success(), "{preview:?}");
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(text.contains("WORKSPACE") && text.contains("not-a-workspace"), "{text}");
    assert!(orphan.exists(), "a preview removes nothing");
    daemon.signal(Signal::SIGUSR1);
    daemon.wait_for_log("gc run", Duration::from_secs(15));
    assert!(!orphan.exists(), "the real run swept it");
    let audit: i64 = rusqlite::Connection::open(dir.path().join("data/workspaced.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM audit_log WHERE action = 'gc.orphan_removed'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(audit, 1);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_whose_workspace_appeared_after_the_plan_is_not_swept() {
    let daemon = TestDaemon::spawn_with(|config| {
        gc_config(config);
        config.templates = vec![template("go", serde_json::json!({}))];
    })
    .await;
    let config = Config {
        storage: workspaced::config::StorageConfig {
            data_dir: daemon.dir.path().join("data"),
            ..Default::default()
        },
        gc: daemon.ctx.config.borrow().gc.clone(),
        ..Config::default()
    };
    let settings = config.planner_settings().gc.unwrap();
    let data_dir = config.storage.data_dir.clone();
    let now = daemon.clock.now();
    // The plan is made first (its read predates the workspace)...
    let mut plan = daemon
        .store
        .read(move |conn| workspaced::gc::plan_run(conn, &settings, &data_dir, now))
        .await
        .unwrap();
    // ...then a workspace is created and builds its directory...
    let alice = crate::fixtures::user(&daemon.store, "alice");
    let id = workspace(&daemon, "go", "dev", &alice).await;
    let directory = daemon.dir.path().join("data/workspaces").join(&id);
    assert!(directory.exists(), "the start build made its directory");
    // ...and a listing that saw it (as a stale read would) does not delete it.
    plan.orphans.push(directory.clone());
    let report = workspaced::gc::execute(&daemon.store, &config, &plan, now).await.unwrap();
    assert_eq!(report.orphans_removed, 0);
    assert!(directory.exists(), "a live workspace's directory survives the sweep");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_previews_a_disabled_gc_as_enabled_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Disabled (the default), with a policy under which every workspace is due at once.
    let body = binary_config(dir.path()).replace(
        "[gc]\ninterval = \"1s\"",
        "[gc]\nenabled = false\nttl = \"1h\"\nwarn_before = \"1h\"\nactive_grace = \"0s\"\ninterval = \"1s\"",
    ) + "[[templates]]\nname = \"go\"\n";
    let config = write_config(dir.path(), &body);
    let token = crate::helpers::owner_token(&config);
    let daemon = DaemonProcess::start(&config);
    let api = crate::client::Api::new(daemon.addr, Some(&token));
    let (status, created) = api
        .post("/api/v1/workspaces", serde_json::json!({ "template": "go", "name": "dev" }))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["workspace"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let preview = run_binary(
        &["gc", "--dry-run", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{text}");
    assert!(
        text.starts_with(
            "gc is disabled ([gc] enabled = false); once enabled, a run would do this:"
        ),
        "{text}"
    );
    let row = text.lines().find(|line| line.starts_with(&id)).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("warn"), "{row}");
    assert!(row.split_whitespace().nth(1) == Some("root"), "the owner by name: {row}");
    // What last reported use (nothing since creation here): why it counts as (in)active.
    assert!(text.contains("USED VIA"), "{text}");
    assert_eq!(row.split_whitespace().nth(4), Some("-"), "no use reported: {row}");
    // Nothing was written: the disabled GC warned nobody.
    let warned: i64 = rusqlite::Connection::open(dir.path().join("data/workspaced.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM workspaces WHERE gc_warned_at IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(warned, 0);
    drop(daemon);
}
