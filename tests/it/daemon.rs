//! The in-process daemon: HTTP endpoints, loop ticks driven by the test, events wired from
//! the store to subscribers.

use std::time::Duration;

use workspaced::domain::LoopKind;
use workspaced::domain::PREBUILDS_USER_ID;
use workspaced::domain::event::Event;
use workspaced::store::StoreError;

use crate::helpers::{TestDaemon, metric_value};

#[tokio::test]
async fn health_readiness_and_metrics_answer_over_http() {
    let daemon = TestDaemon::spawn().await;
    assert_eq!(daemon.get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(daemon.get("/readyz").await.0, 200);
    let (status, body) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    // Series exist before the first iteration, at zero.
    assert_eq!(metric_value(&body, "workspaced_loop_runs_total{loop=\"gc\"}"), Some(0.0));
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_tick_reads_the_fleet_at_the_manual_clock_time() {
    let daemon = TestDaemon::spawn().await;
    // Two prebuilds and a user workspace need a template, a version and users.
    daemon
        .store
        .write(|tx| {
            tx.execute_batch(&format!(
                "INSERT INTO users (id, username, created_at, updated_at) VALUES ('u1', 'alice', 0, 0);
                 INSERT INTO templates (id, organization_id, name, created_at, updated_at)
                   VALUES ('t1', '00000000-0000-0000-0000-000000000001', 'go', 0, 0);
                 INSERT INTO template_versions (id, template_id, name, content_hash, provisioner, created_at)
                   VALUES ('v1', 't1', 'v1', 'h', 'local', 0);
                 UPDATE templates SET active_version_id = 'v1' WHERE id = 't1';
                 INSERT INTO presets (id, template_version_id, name, desired_instances, created_at)
                   VALUES ('p1', 'v1', 'small', 2, 0);
                 INSERT INTO workspaces (id, organization_id, owner_id, template_id, name, created_at, updated_at, last_used_at)
                   VALUES ('w1', '00000000-0000-0000-0000-000000000001', '{PREBUILDS_USER_ID}', 't1', 'prebuild-1', 0, 0, 0),
                          ('w2', '00000000-0000-0000-0000-000000000001', '{PREBUILDS_USER_ID}', 't1', 'prebuild-2', 0, 0, 0),
                          ('w3', '00000000-0000-0000-0000-000000000001', 'u1', 't1', 'mine', 0, 0, 0);"
            ))
            .map_err(StoreError::from)
        })
        .await
        .unwrap();
    // One preset with a pool; no user workspace is due for a lifecycle transition.
    assert_eq!(daemon.tick(LoopKind::Reconciler).await.examined, 1);
    assert_eq!(daemon.tick(LoopKind::Lifecycle).await.examined, 0);
    // GC is disabled by default and judges nothing.
    assert_eq!(daemon.tick(LoopKind::Gc).await.examined, 0);

    daemon.clock.advance(chrono::Duration::hours(1));
    daemon.tick(LoopKind::Lifecycle).await;
    let (_, body) = daemon.get("/metrics").await;
    assert_eq!(metric_value(&body, "workspaced_loop_runs_total{loop=\"lifecycle\"}"), Some(2.0));
    assert_eq!(
        metric_value(&body, "workspaced_loop_last_run_timestamp_seconds{loop=\"lifecycle\"}"),
        Some(daemon.clock_now().timestamp() as f64)
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn gc_enabled_in_config_judges_user_workspaces() {
    let daemon = TestDaemon::spawn_with(|config| config.gc.enabled = true).await;
    daemon
        .store
        .write(|tx| {
            tx.execute_batch(
                "INSERT INTO users (id, username, created_at, updated_at) VALUES ('u1', 'alice', 0, 0);
                 INSERT INTO templates (id, organization_id, name, created_at, updated_at)
                   VALUES ('t1', '00000000-0000-0000-0000-000000000001', 'go', 0, 0);
                 INSERT INTO workspaces (id, organization_id, owner_id, template_id, name, created_at, updated_at, last_used_at)
                   VALUES ('w3', '00000000-0000-0000-0000-000000000001', 'u1', 't1', 'mine', 0, 0, 0);",
            )
            .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(daemon.tick(LoopKind::Gc).await.examined, 1);
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_committed_event_reaches_subscribers_of_the_running_daemon() {
    let mut daemon = TestDaemon::spawn().await;
    let now = daemon.clock_now();
    let event = Event::ConfigApplied { templates_changed: 2, versions_created: 1 };
    let emitted = event.clone();
    daemon.store.write(move |tx| tx.emit(&emitted, now)).await.unwrap();
    // The publisher is woken by the commit, not by its (5 s) poll.
    let published = tokio::time::timeout(Duration::from_secs(2), daemon.app_events.recv())
        .await
        .expect("published within 2 s")
        .unwrap();
    assert_eq!(published.event, event);
    assert_eq!(published.created_at, now);
    daemon.shutdown().await;
}
