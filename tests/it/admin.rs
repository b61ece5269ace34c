//! Operations after creation, over real HTTP on loopback against an in-process daemon:
//! users suspended, reactivated, re-roled and deleted; a workspace's schedule, TTL and
//! deadline changed and its version updated; workspaces addressed as OWNER/NAME and
//! presets as TEMPLATE/PRESET. Each audited.

use serde_json::json;

use workspaced::auth::Role;
use workspaced::domain::LoopKind;

use crate::api::{api_daemon, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_suspended_reactivated_re_roled_and_deleted_and_the_lifecycle_sees_it() {
    let (daemon, api) = api_daemon(|_| {}).await;
    let root = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);
    let alice_token = user(&daemon, "alice", Role::Member, "default").await;
    let alice = api.as_user(&alice_token);
    let (status, created) = alice
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "plain", "name": "dev" }))
        .await;
    assert_eq!(status, 201, "{created}");
    daemon.wait_idle().await;
    // Addressed by owner and name.
    let (status, found) = root.get("/api/v1/workspaces/alice/dev").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["id"], created["workspace"]["id"]);
    assert_eq!(found["latest_build"]["job_status"], "succeeded", "{found}");

    // A member may not suspend anyone, nobody may suspend themselves.
    assert_eq!(alice.post("/api/v1/users/root/suspend", json!({})).await.0, 403);
    assert_eq!(root.post("/api/v1/users/root/suspend", json!({})).await.0, 409);
    let (status, body) = root.post("/api/v1/users/alice/suspend", json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("suspended")), "{body}");
    assert_eq!(alice.get("/api/v1/workspaces").await.0, 401, "a suspended user's token stops");
    // The lifecycle's "suspended owner" rule stops the started workspace.
    daemon.tick(LoopKind::Lifecycle).await;
    daemon.wait_idle().await;
    let (_, found) = root.get("/api/v1/workspaces/alice/dev").await;
    assert_eq!(found["latest_build"]["transition"], "stop", "{found}");
    assert_eq!(found["latest_build"]["job_status"], "succeeded", "{found}");
    let (status, body) = root.post("/api/v1/users/alice/activate", json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("active")), "{body}");
    assert_eq!(alice.get("/api/v1/workspaces").await.0, 200);

    // Roles: replaced per organization; an unknown role names the field.
    let (status, body) =
        root.call("PUT", "/api/v1/users/alice/roles", Some(json!({ "roles": ["auditor"] }))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["roles"][0]["role"], "auditor");
    assert_eq!(alice.post("/api/v1/workspaces/alice/dev/start", json!({})).await.0, 403);
    let (status, body) =
        root.call("PUT", "/api/v1/users/alice/roles", Some(json!({ "roles": ["boss"] }))).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "roles[0]", "{body}");

    // Delete: refused while the user owns workspaces, then done; the name is free again.
    let (status, body) = root.call("DELETE", "/api/v1/users/alice", None).await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("1 workspace"), "{body}");
    assert_eq!(root.call("DELETE", "/api/v1/workspaces/alice/dev", None).await.0, 202);
    daemon.wait_idle().await;
    assert_eq!(root.call("DELETE", "/api/v1/users/alice", None).await.0, 200);
    assert_eq!(root.get("/api/v1/users/alice").await.0, 404);
    assert_eq!(alice.get("/api/v1/workspaces").await.0, 401, "its tokens are revoked");
    let actions = daemon
        .count(
            "SELECT COUNT(*) FROM audit_log WHERE action IN
               ('user.suspended', 'user.activated', 'user.roles_changed', 'user.deleted')",
        )
        .await;
    assert_eq!(actions, 4);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_s_schedule_ttl_deadline_and_version_change_after_creation() {
    let (daemon, api) = api_daemon(|config| {
        config.templates[0].default_ttl =
            workspaced::config::duration::HumanDuration::from_secs(3600);
        config.templates[0].max_ttl =
            workspaced::config::duration::HumanDuration::from_secs(4 * 3600);
    })
    .await;
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let (status, created) = alice
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "plain", "name": "dev" }))
        .await;
    assert_eq!(status, 201, "{created}");
    daemon.wait_idle().await;

    // Schedule and TTL: set, validated, cleared with null, left alone when absent.
    let path = "/api/v1/workspaces/alice/dev/schedule";
    let (status, body) = alice
        .call(
            "PUT",
            path,
            Some(
                json!({ "autostart_schedule": "CRON_TZ=Europe/Berlin 0 8 * * 1-5", "ttl_s": 7200 }),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["autostart_schedule"], "CRON_TZ=Europe/Berlin 0 8 * * 1-5", "{body}");
    assert_eq!(body["ttl_s"], 7200);
    let (status, body) =
        alice.call("PUT", path, Some(json!({ "autostart_schedule": "every morning" }))).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "autostart_schedule", "{body}");
    let (_, body) = alice.call("PUT", path, Some(json!({ "ttl_s": null }))).await;
    assert_eq!(body["ttl_s"], serde_json::Value::Null, "{body}");
    assert_eq!(body["autostart_schedule"], "CRON_TZ=Europe/Berlin 0 8 * * 1-5");

    // Extend: later than now, never past the max_ttl cap (4 h after the start).
    let now = daemon.clock_now();
    let extend = |deadline: chrono::DateTime<chrono::Utc>| {
        let alice = alice.clone();
        async move {
            alice
                .post(
                    "/api/v1/workspaces/alice/dev/extend",
                    json!({ "deadline": deadline.to_rfc3339() }),
                )
                .await
        }
    };
    let (status, body) = extend(now + chrono::Duration::hours(3)).await;
    assert_eq!(status, 200, "{body}");
    let (_, found) = alice.get("/api/v1/workspaces/alice/dev").await;
    let deadline: chrono::DateTime<chrono::Utc> =
        found["latest_build"]["deadline"].as_str().unwrap().parse().unwrap();
    assert_eq!(deadline, now + chrono::Duration::hours(3));
    let (status, body) = extend(now + chrono::Duration::hours(5)).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("max_ttl"), "{body}");
    let (status, _) = extend(now - chrono::Duration::minutes(1)).await;
    assert_eq!(status, 400);

    // Update: only when a newer active version exists, as a start build of that version.
    assert_eq!(alice.post("/api/v1/workspaces/alice/dev/update", json!({})).await.0, 409);
    let mut config = (**daemon.ctx.config.borrow()).clone();
    config.templates[0].provisioner_config.insert("image".into(), json!("v2"));
    daemon.reloader.apply(config).await.unwrap();
    let (status, body) = alice.post("/api/v1/workspaces/alice/dev/update", json!({})).await;
    assert_eq!(status, 202, "{body}");
    daemon.wait_idle().await;
    let versions = daemon
        .count(&format!(
            "SELECT COUNT(*) FROM workspace_builds b JOIN templates t ON t.active_version_id = b.template_version_id
              WHERE b.workspace_id = '{}' AND b.transition = 'start'",
            created["workspace"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(versions, 1, "the update built the active version");
    let audited = daemon
        .count("SELECT COUNT(*) FROM audit_log WHERE action IN ('workspace.schedule', 'workspace.extend', 'workspace.update')")
        .await;
    assert_eq!(audited, 4);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_is_reset_by_template_and_name() {
    let (daemon, api) = api_daemon(|_| {}).await;
    let root = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);
    let (status, body) = root.post("/api/v1/presets/dev/small/reset", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous_status"], "healthy");
    assert_eq!(root.post("/api/v1/presets/dev/huge/reset", json!({})).await.0, 404);
    // `ops` lives in organization `other` (root owns that one too).
    user(&daemon, "root", Role::Owner, "other").await;
    assert_eq!(root.post("/api/v1/presets/ops/small/reset", json!({})).await.0, 404);
    let (status, _) =
        root.post("/api/v1/presets/ops/small/reset?organization=other", json!({})).await;
    assert_eq!(status, 200);
    daemon.shutdown().await;
}
