//! The lifecycle executor end to end: a real daemon (in process), a manual clock moved
//! through weekdays, deadlines, failures, dormancy and a DST change, the local backend
//! running the builds it enqueues.

use chrono::{DateTime, Utc};

use workspaced::clock::Clock;
use workspaced::config::templates::TemplateConfig;
use workspaced::domain::LoopKind;
use workspaced::domain::{BuildReason, JobStatus, PREBUILDS_USER_ID, Transition};
use workspaced::lifecycle;
use workspaced::store::builds;
use workspaced::store::lifecycle::Activity;
use workspaced::store::workspaces;

use crate::fixtures;
use crate::helpers::TestDaemon;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn template(options: serde_json::Value) -> TemplateConfig {
    let mut value = serde_json::json!({ "name": "dev" });
    value.as_object_mut().unwrap().extend(options.as_object().unwrap().clone());
    serde_json::from_value(value).unwrap()
}

async fn daemon_with(options: serde_json::Value, start: &str) -> TestDaemon {
    let template = template(options);
    let daemon = TestDaemon::spawn_with(move |config| config.templates = vec![template]).await;
    daemon.clock.set(at(start));
    daemon
}

async fn template_id(daemon: &TestDaemon) -> String {
    daemon
        .store
        .read(|conn| {
            Ok(conn.query_row("SELECT id FROM templates WHERE name = 'dev'", [], |r| r.get(0))?)
        })
        .await
        .unwrap()
}

/// A user workspace started (and optionally stopped) at the clock's time.
async fn workspace(daemon: &TestDaemon, name: &str, stop: bool) -> (String, String) {
    let template_id = template_id(daemon).await;
    let owner = fixtures::user(&daemon.store, &format!("{name}-owner"));
    let ws = workspace_now(daemon, &owner, &template_id, name).await;
    build_now(daemon, &ws, Transition::Start, &owner).await;
    if stop {
        build_now(daemon, &ws, Transition::Stop, &owner).await;
    }
    (ws, owner)
}

/// A workspace created at the clock's time.
async fn workspace_now(daemon: &TestDaemon, owner: &str, template_id: &str, name: &str) -> String {
    let new = workspaces::NewWorkspace {
        organization_id: workspaced::domain::DEFAULT_ORGANIZATION_ID.to_owned(),
        owner_id: owner.to_owned(),
        template_id: template_id.to_owned(),
        preset_id: None,
        name: name.to_owned(),
        autostart_schedule: None,
        ttl_s: None,
        automatic_updates_always: false,
    };
    let now = daemon.clock.now();
    daemon.store.write(move |tx| workspaces::insert(tx, &new, now)).await.unwrap()
}

async fn build_now(daemon: &TestDaemon, ws: &str, transition: Transition, owner: &str) {
    let request = builds::BuildRequest::new(ws, transition, BuildReason::Initiator, owner);
    let now = daemon.clock.now();
    daemon.store.write(move |tx| builds::enqueue(tx, &request, now)).await.unwrap();
    daemon.wait_idle().await;
}

async fn latest(daemon: &TestDaemon, ws: &str) -> builds::LatestBuild {
    let id = ws.to_owned();
    daemon.store.read(move |conn| builds::latest(conn, &id)).await.unwrap().unwrap()
}

/// One lifecycle tick, then whatever it enqueued.
async fn tick(daemon: &TestDaemon) -> u64 {
    let report = daemon.tick(LoopKind::Lifecycle).await;
    daemon.wait_idle().await;
    report.actions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostart_fires_on_allowed_weekdays_at_the_schedules_local_time() {
    // Friday 2025-06-06, 18:00 in Berlin.
    let weekdays = serde_json::json!({ "autostart_days": ["monday", "tuesday", "wednesday", "thursday", "friday"] });
    let daemon = daemon_with(weekdays, "2025-06-06T16:00:00Z").await;
    let (ws, _) = workspace(&daemon, "alice", true).await;
    let id = ws.clone();
    daemon
        .store
        .write(move |tx| {
            lifecycle::set_autostart_schedule(tx, &id, Some("CRON_TZ=Europe/Berlin 0 8 * * *"))
        })
        .await
        .unwrap();
    // Saturday 08:00 Berlin: not an allowed day.
    daemon.clock.set(at("2025-06-07T06:00:00Z"));
    assert_eq!(tick(&daemon).await, 0);
    // Monday 07:59 Berlin: not yet; 08:00: start.
    daemon.clock.set(at("2025-06-09T05:59:59Z"));
    assert_eq!(tick(&daemon).await, 0);
    daemon.clock.set(at("2025-06-09T06:00:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    let started = latest(&daemon, &ws).await;
    assert_eq!(
        (started.transition, started.reason, started.job_status),
        (Transition::Start, BuildReason::Autostart, JobStatus::Succeeded)
    );
    // Once started, nothing more.
    assert_eq!(tick(&daemon).await, 0);
    assert_eq!(
        daemon
            .metric(
                "workspaced_lifecycle_transitions_total{reason=\"autostart\",transition=\"start\"}"
            )
            .await,
        Some(1.0)
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_workspace_stops_at_its_deadline_and_activity_extends_it() {
    let daemon = daemon_with(
        serde_json::json!({ "default_ttl": "1h", "max_ttl": "3h" }),
        "2025-06-02T10:00:00Z",
    )
    .await;
    let (ws, _) = workspace(&daemon, "bob", false).await;
    let deadline = latest(&daemon, &ws).await.deadline.unwrap();
    assert_eq!(deadline, at("2025-06-02T11:00:00Z"));

    // Activity 30 s after the last is coalesced; at 10:50 it moves the deadline to 11:50.
    daemon.clock.set(at("2025-06-02T10:00:30Z"));
    let activity = daemon.report_activity(&ws).await;
    assert_eq!(activity, Activity::Coalesced);
    daemon.clock.set(at("2025-06-02T10:50:00Z"));
    let activity = daemon.report_activity(&ws).await;
    assert_eq!(activity, Activity::Recorded { deadline_extended: true });
    assert_eq!(latest(&daemon, &ws).await.deadline, Some(at("2025-06-02T11:50:00Z")));
    // Never past the max deadline (start + 3 h = 13:00).
    daemon.clock.set(at("2025-06-02T12:30:00Z"));
    daemon.report_activity(&ws).await;
    assert_eq!(latest(&daemon, &ws).await.deadline, Some(at("2025-06-02T13:00:00Z")));

    daemon.clock.set(at("2025-06-02T12:59:59Z"));
    assert_eq!(tick(&daemon).await, 0);
    daemon.clock.set(at("2025-06-02T13:00:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    let stopped = latest(&daemon, &ws).await;
    assert_eq!((stopped.transition, stopped.reason), (Transition::Stop, BuildReason::Autostop));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_is_stopped_after_the_failure_ttl() {
    let options = serde_json::json!({ "failure_ttl": "1h", "provisioner_config": { "fail_transitions": ["start"] } });
    let daemon = daemon_with(options, "2025-06-02T10:00:00Z").await;
    let (ws, _) = workspace(&daemon, "carol", false).await;
    assert_eq!(latest(&daemon, &ws).await.job_status, JobStatus::Failed);
    daemon.clock.set(at("2025-06-02T11:00:59Z"));
    assert_eq!(tick(&daemon).await, 0, "exactly the failure TTL is not past it");
    daemon.clock.set(at("2025-06-02T11:01:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    let stop = latest(&daemon, &ws).await;
    // Coder records it as an autostop.
    assert_eq!((stop.transition, stop.reason), (Transition::Stop, BuildReason::Autostop));
    assert_eq!(
        daemon
            .metric(
                "workspaced_lifecycle_transitions_total{reason=\"failedstop\",transition=\"stop\"}"
            )
            .await,
        Some(1.0)
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_workspace_becomes_dormant_then_is_deleted() {
    let options =
        serde_json::json!({ "time_til_dormant": "1h", "time_til_dormant_autodelete": "2h" });
    let daemon = daemon_with(options, "2025-06-02T10:00:00Z").await;
    let (ws, _) = workspace(&daemon, "dave", false).await;
    // A prebuild as old is never the lifecycle's business.
    let template_id = template_id(&daemon).await;
    let prebuild = workspace_now(&daemon, PREBUILDS_USER_ID, &template_id, "prebuild-x").await;
    let directory = daemon.dir.path().join("data/workspaces").join(&ws);
    assert!(directory.exists());

    daemon.clock.set(at("2025-06-02T11:01:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    let id = ws.clone();
    let row = daemon.store.read(move |c| workspaces::get(c, &id)).await.unwrap().unwrap();
    assert_eq!(row.dormant_at, Some(at("2025-06-02T11:01:00Z")));
    assert_eq!(row.deleting_at, Some(at("2025-06-02T13:01:00Z")));
    let stop = latest(&daemon, &ws).await;
    assert_eq!((stop.transition, stop.reason), (Transition::Stop, BuildReason::Autolock));

    daemon.clock.set(at("2025-06-02T13:01:00Z"));
    assert_eq!(tick(&daemon).await, 0, "deleting_at must be passed, not reached");
    daemon.clock.set(at("2025-06-02T13:02:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    let delete = latest(&daemon, &ws).await;
    assert_eq!(
        (delete.transition, delete.reason, delete.job_status),
        (Transition::Delete, BuildReason::Autodelete, JobStatus::Succeeded)
    );
    assert!(!directory.exists());
    let id = prebuild.clone();
    let untouched = daemon.store.read(move |c| workspaces::get(c, &id)).await.unwrap().unwrap();
    assert_eq!(untouched.dormant_at, None);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autostart_in_the_spring_forward_gap_runs_once() {
    // New York springs forward on Sunday 2025-03-09: 02:30 does not exist that day.
    let daemon = daemon_with(serde_json::json!({}), "2025-03-08T23:00:00Z").await;
    let (ws, owner) = workspace(&daemon, "erin", true).await;
    let id = ws.clone();
    daemon
        .store
        .write(move |tx| {
            lifecycle::set_autostart_schedule(tx, &id, Some("CRON_TZ=America/New_York 30 2 * * *"))
        })
        .await
        .unwrap();
    // 01:59 EST: not yet. 03:00 EDT (07:00Z), the first instant after the gap: start.
    daemon.clock.set(at("2025-03-09T06:59:00Z"));
    assert_eq!(tick(&daemon).await, 0);
    daemon.clock.set(at("2025-03-09T07:00:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    assert_eq!(latest(&daemon, &ws).await.reason, BuildReason::Autostart);
    // Stopped again at 07:05Z, it does not start a second time that day...
    daemon.clock.set(at("2025-03-09T07:05:00Z"));
    build_now(&daemon, &ws, Transition::Stop, &owner).await;
    for time in ["2025-03-09T07:30:00Z", "2025-03-09T12:00:00Z", "2025-03-10T06:29:00Z"] {
        daemon.clock.set(at(time));
        assert_eq!(tick(&daemon).await, 0, "{time}");
    }
    // ...but does the next day at 02:30 EDT (06:30Z).
    daemon.clock.set(at("2025-03-10T06:30:00Z"));
    assert_eq!(tick(&daemon).await, 1);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_autostart_schedule_is_rejected_naming_the_field() {
    let daemon = daemon_with(serde_json::json!({}), "2025-06-02T10:00:00Z").await;
    let (ws, _) = workspace(&daemon, "frank", true).await;
    for (schedule, field) in [
        ("0 9 * * 7", "day-of-week"),
        ("0 9 1 * *", "day-of-month"),
        ("CRON_TZ=Nowhere/City 0 9 * * *", "Nowhere/City"),
    ] {
        let id = ws.clone();
        let error = daemon
            .store
            .write(move |tx| lifecycle::set_autostart_schedule(tx, &id, Some(schedule)))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("autostart_schedule: ") && error.contains(field), "{error}");
    }
    daemon.shutdown().await;
}
