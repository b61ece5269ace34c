//! Prebuild pools end to end: a real daemon (in process), a manual clock, the local
//! backend, the reconciler driven tick by tick, and the metrics after each step.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use workspaced::clock::Clock;
use workspaced::config::Config;
use workspaced::config::templates::{
    ParameterConfig, PrebuildsConfig, PresetConfig, ScheduleConfig, TemplateConfig,
};
use workspaced::domain::LoopKind;
use workspaced::domain::{PREBUILDS_USER_ID, ParameterType};
use workspaced::pools::{self, ClaimOutcome, ClaimRequest};
use workspaced::store::audit::Actor;

use crate::helpers::TestDaemon;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn template(name: &str, instances: u32, cpu_default: &str) -> TemplateConfig {
    let mut template: TemplateConfig =
        serde_json::from_value(serde_json::json!({ "name": name })).unwrap();
    template.parameters = vec![ParameterConfig {
        name: "cpu".into(),
        kind: ParameterType::Number,
        default: Some(cpu_default.into()),
        mutable: true,
        options: Vec::new(),
        description: String::new(),
    }];
    template.presets = vec![PresetConfig {
        name: "small".into(),
        parameters: BTreeMap::from([("cpu".to_owned(), "2".to_owned())]),
        prebuilds: Some(PrebuildsConfig {
            instances,
            expiration: Some(workspaced::config::duration::HumanDuration::from_secs(3600)),
            timezone: "Europe/Berlin".into(),
            schedule: vec![ScheduleConfig {
                cron: "* 9-17 * * 1-5".into(),
                instances: instances + 1,
            }],
        }),
    }];
    template
}

const LABELS: &str = "{organization_name=\"default\",preset_name=\"small\",template_name=\"go\"}";

async fn gauge(daemon: &TestDaemon, family: &str) -> Option<f64> {
    daemon.metric(&format!("workspaced_prebuilt_workspaces_{family}{LABELS}")).await
}

async fn running_prebuilds(daemon: &TestDaemon) -> i64 {
    daemon
        .count(&format!(
            "SELECT COUNT(*) FROM workspaces w
               JOIN workspace_builds b ON b.workspace_id = w.id
                AND b.build_number = (SELECT MAX(build_number) FROM workspace_builds WHERE workspace_id = w.id)
               JOIN provisioner_jobs j ON j.id = b.job_id
              WHERE w.deleted = 0 AND w.owner_id = '{PREBUILDS_USER_ID}' AND b.transition = 'start'
                AND j.status = 'succeeded' AND w.agents_ready = 1"
        ))
        .await
}

/// One reconcile cycle, then all the builds it queued.
async fn cycle(daemon: &TestDaemon) -> u64 {
    let report = daemon.tick(LoopKind::Reconciler).await;
    daemon.wait_idle().await;
    report.actions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_fills_scales_with_its_schedule_replaces_expired_and_outdated_prebuilds() {
    let daemon =
        TestDaemon::spawn_with(|config| config.templates = vec![template("go", 2, "2")]).await;
    // Sunday noon in Berlin: outside the weekday schedule, so the base 2 instances.
    daemon.clock.set(at("2025-06-01T10:00:00Z"));

    assert_eq!(cycle(&daemon).await, 2);
    assert_eq!(running_prebuilds(&daemon).await, 2);
    // Filled: the next cycle does nothing.
    assert_eq!(cycle(&daemon).await, 0);
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(gauge(&daemon, "desired").await, Some(2.0));
    assert_eq!(gauge(&daemon, "running").await, Some(2.0));
    assert_eq!(gauge(&daemon, "eligible").await, Some(2.0));
    assert_eq!(
        daemon.metric(&format!("workspaced_prebuilt_workspaces_created_total{LABELS}")).await,
        Some(2.0)
    );
    assert_eq!(gauge(&daemon, "preset_hard_limited").await, Some(0.0));

    // Monday 10:30 in Berlin: the schedule asks for 3. (Less than the 1 h expiration later.)
    daemon.clock.set(at("2025-06-01T10:50:00Z") + Duration::days(1) - Duration::hours(2));
    assert_eq!(daemon.clock.now(), at("2025-06-02T08:50:00Z"));
    // The first two are older than an hour by now: replaced, plus one more for the schedule.
    assert_eq!(cycle(&daemon).await, 5);
    assert_eq!(running_prebuilds(&daemon).await, 3);
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(gauge(&daemon, "desired").await, Some(3.0));
    assert_eq!(gauge(&daemon, "running").await, Some(3.0));
    assert_eq!(
        daemon.metric(&format!("workspaced_prebuilt_workspaces_created_total{LABELS}")).await,
        Some(5.0)
    );

    // A template edit (parameter default) makes a new version: the old prebuilds are
    // outdated and replaced.
    let old_version = daemon.count("SELECT COUNT(*) FROM template_versions").await;
    let mut config = Config::default();
    config.storage.data_dir = daemon.dir.path().join("data");
    config.templates = vec![template("go", 2, "4")];
    daemon.reloader.apply(config).await.unwrap();
    assert_eq!(daemon.count("SELECT COUNT(*) FROM template_versions").await, old_version + 1);
    assert_eq!(cycle(&daemon).await, 6, "3 outdated deleted, 3 created on the new version");
    let on_active = daemon
        .count(&format!(
            "SELECT COUNT(*) FROM workspaces w JOIN presets p ON p.id = w.preset_id
               JOIN templates t ON t.active_version_id = p.template_version_id
              WHERE w.deleted = 0 AND w.owner_id = '{PREBUILDS_USER_ID}'"
        ))
        .await;
    assert_eq!(on_active, 3);
    assert_eq!(running_prebuilds(&daemon).await, 3);
    crate::fixtures::assert_latest_summaries_consistent(&daemon.store);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_takes_a_ready_prebuild_and_the_pool_refills() {
    let daemon =
        TestDaemon::spawn_with(|config| config.templates = vec![template("go", 2, "2")]).await;
    daemon.clock.set(at("2025-06-01T10:00:00Z"));
    cycle(&daemon).await;
    let template_id: String = daemon
        .store
        .read(|conn| {
            Ok(conn.query_row("SELECT id FROM templates WHERE name = 'go'", [], |r| r.get(0))?)
        })
        .await
        .unwrap();
    let alice = crate::fixtures::user(&daemon.store, "alice");
    let clock: Arc<dyn Clock> = daemon.clock.clone();
    let request = ClaimRequest {
        user_id: alice.clone(),
        template_id: template_id.clone(),
        preset_id: None,
        name: "mine".into(),
        parameters: BTreeMap::from([("cpu".to_owned(), "2".to_owned())]),
        autostart_schedule: Some("CRON_TZ=Europe/Berlin 0 8 * * 1-5".into()),
        ttl_s: Some(3600),
    };
    let outcome = pools::claim_workspace(
        &daemon.store,
        &clock,
        &daemon.metrics.prebuilds,
        request.clone(),
        Actor::system("test"),
    )
    .await
    .unwrap();
    let ClaimOutcome::Claimed { workspace_id, .. } = &outcome else {
        panic!("expected a claim, got {outcome:?}")
    };
    daemon.wait_idle().await;
    let id = workspace_id.clone();
    let claimed = daemon
        .store
        .read(move |c| workspaced::store::workspaces::get(c, &id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((claimed.owner_id.as_str(), claimed.name.as_str()), (alice.as_str(), "mine"));
    assert_eq!(claimed.autostart_schedule.as_deref(), Some("CRON_TZ=Europe/Berlin 0 8 * * 1-5"));
    assert_eq!(claimed.agents_ready, Some(true));
    // The claim build was flagged as such.
    assert_eq!(daemon.count("SELECT COUNT(*) FROM workspace_builds WHERE is_prebuild_claim = 1 AND reason = 'claim'").await, 1);

    // The pool refills; the counter comes from the database.
    assert_eq!(cycle(&daemon).await, 1);
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(
        daemon.metric(&format!("workspaced_prebuilt_workspaces_claimed_total{LABELS}")).await,
        Some(1.0)
    );
    assert_eq!(gauge(&daemon, "eligible").await, Some(2.0));
    assert!(
        daemon.metric("workspaced_prebuilt_workspaces_claim_duration_seconds_count").await.unwrap()
            >= 1.0
    );

    // Parameters that match no preset: a normal build.
    let mut other = request;
    other.name = "custom".into();
    other.parameters = BTreeMap::from([("cpu".to_owned(), "8".to_owned())]);
    let outcome = pools::claim_workspace(
        &daemon.store,
        &clock,
        &daemon.metrics.prebuilds,
        other,
        Actor::system("test"),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, ClaimOutcome::Built { .. }), "{outcome:?}");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_get_the_same_prebuild() {
    let daemon =
        TestDaemon::spawn_with(|config| config.templates = vec![template("go", 12, "2")]).await;
    daemon.clock.set(at("2025-06-01T10:00:00Z"));
    cycle(&daemon).await;
    assert_eq!(running_prebuilds(&daemon).await, 12);
    let template_id: String = daemon
        .store
        .read(|conn| {
            Ok(conn.query_row("SELECT id FROM templates WHERE name = 'go'", [], |r| r.get(0))?)
        })
        .await
        .unwrap();
    let users: Vec<String> =
        (0..6).map(|n| crate::fixtures::user(&daemon.store, &format!("user{n}"))).collect();
    let now = daemon.clock.now();
    let threads: Vec<_> = users
        .into_iter()
        .map(|user| {
            let store = daemon.store.clone();
            let template_id = template_id.clone();
            std::thread::spawn(move || {
                (0..4)
                    .map(|n| {
                        let request = ClaimRequest {
                            user_id: user.clone(),
                            template_id: template_id.clone(),
                            preset_id: None,
                            name: format!("w{n}"),
                            parameters: BTreeMap::from([("cpu".to_owned(), "2".to_owned())]),
                            autostart_schedule: None,
                            ttl_s: None,
                        };
                        store.write_blocking(|tx| pools::claim(tx, &request, now)).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<ClaimOutcome> =
        threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    let mut claimed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, ClaimOutcome::Claimed { .. }))
        .map(ClaimOutcome::workspace_id)
        .collect();
    assert_eq!(claimed.len(), 12, "every prebuild claimed once, the rest built");
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), 12, "a prebuild was claimed twice");
    assert_eq!(outcomes.len(), 24);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_preset_backs_off_then_hard_limits_until_reset() {
    let mut flaky = template("go", 2, "2");
    flaky.presets[0].prebuilds.as_mut().unwrap().schedule.clear();
    flaky.provisioner_config.insert("fail_transitions".into(), serde_json::json!(["start"]));
    let daemon = TestDaemon::spawn_with(|config| config.templates = vec![flaky.clone()]).await;
    daemon.clock.set(at("2025-06-01T10:00:00Z"));

    // Two creations fail.
    assert_eq!(cycle(&daemon).await, 2);
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM provisioner_jobs WHERE status = 'failed'").await,
        2
    );
    // Backoff: 2 failures × 60 s after the newest one; nothing is created meanwhile.
    daemon.clock.advance(Duration::seconds(120));
    assert_eq!(cycle(&daemon).await, 0, "backing off at now == until");
    let preset_id: String = daemon
        .store
        .read(|conn| Ok(conn.query_row("SELECT id FROM presets", [], |r| r.get(0))?))
        .await
        .unwrap();
    // Past the backoff it tries again, fails again: 4 failed, the newest 3 all failed.
    daemon.clock.advance(Duration::seconds(1));
    assert_eq!(cycle(&daemon).await, 2);
    daemon.clock.advance(Duration::hours(2));
    assert_eq!(cycle(&daemon).await, 0, "hard-limited: no more creation");
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM presets WHERE prebuild_status = 'hard_limited'").await,
        1
    );
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM notifications WHERE kind = 'preset.hard_limited'").await,
        1
    );
    assert_eq!(gauge(&daemon, "preset_hard_limited").await, Some(1.0));
    assert_eq!(
        daemon.metric(&format!("workspaced_prebuilt_workspaces_failed_total{LABELS}")).await,
        Some(4.0)
    );

    // The operator fixes the template and resets the preset.
    let mut fixed = flaky.clone();
    fixed.provisioner_config.clear();
    let mut config = Config::default();
    config.storage.data_dir = daemon.dir.path().join("data");
    config.templates = vec![fixed];
    daemon.reloader.apply(config).await.unwrap();
    // (The fix made a new version whose preset starts clean; reset the old one anyway.)
    let now = daemon.clock.now();
    let id = preset_id.clone();
    let report = daemon
        .store
        .write(move |tx| {
            pools::reset_preset(
                tx,
                &id,
                None,
                &workspaced::store::audit::Actor::system("test"),
                now,
            )
        })
        .await
        .unwrap();
    assert_eq!(report.deletes_queued, 4);
    assert_eq!(report.previous_status, "hard_limited");
    daemon.wait_idle().await;
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM presets WHERE prebuild_status = 'hard_limited'").await,
        0
    );
    assert_eq!(cycle(&daemon).await, 2);
    assert_eq!(running_prebuilds(&daemon).await, 2);
    daemon.tick(LoopKind::Reconciler).await;
    assert_eq!(gauge(&daemon, "preset_hard_limited").await, Some(0.0));
    crate::fixtures::assert_latest_summaries_consistent(&daemon.store);
    daemon.shutdown().await;
}
