//! The JSON API over real HTTP on loopback: authentication, the role matrix as the
//! handlers apply it, every endpoint family, bad input, concurrent claims.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use workspaced::auth::Role;
use workspaced::config::Config;
use workspaced::config::templates::TemplateConfig;
use workspaced::domain::DEFAULT_ORGANIZATION_ID;
use workspaced::domain::LoopKind;
use workspaced::store::{StoreError, templates, users};

use crate::client::Api;
use crate::helpers::TestDaemon;

pub fn template(name: &str, organization: &str, instances: u32) -> TemplateConfig {
    serde_json::from_value(json!({
        "name": name,
        "organization": organization,
        "presets": [
            { "name": "small", "prebuilds": { "instances": instances } },
            { "name": "plain" },
        ],
    }))
    .unwrap()
}

/// Creates `name` with `role` in `organization` (by name; created if missing) and returns
/// a token for it.
pub async fn user(daemon: &TestDaemon, name: &str, role: Role, organization: &str) -> String {
    let (name, organization, now) = (name.to_owned(), organization.to_owned(), daemon.clock_now());
    daemon
        .store
        .write(move |tx| {
            let id = match users::id_by_name(tx, &name)? {
                Some(id) => id,
                None => users::insert(tx, &name, now)?,
            };
            let org = templates::ensure_organization(tx, &organization, now)?;
            users::grant(tx, &id, &org, role, now)?;
            Ok::<_, StoreError>(users::create_token(tx, &id, "test", None, now)?.token)
        })
        .await
        .unwrap()
}

pub async fn api_daemon(adjust: impl FnOnce(&mut Config)) -> (TestDaemon, Api) {
    let daemon = TestDaemon::spawn_with(|config| {
        config.templates = vec![template("dev", "default", 2), template("ops", "other", 0)];
        adjust(config);
    })
    .await;
    let api = Api::new(daemon.addr, None);
    (daemon, api)
}

/// One reconcile cycle and every build it queued.
pub async fn fill_pools(daemon: &TestDaemon) {
    daemon.tick(LoopKind::Reconciler).await;
    daemon.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_checked_and_revocable() {
    let (daemon, api) = api_daemon(|_| {}).await;
    // No token, garbage, unknown id: 401 with a JSON error; probes stay open.
    let (status, headers, body) = api.raw("GET", "/api/v1/workspaces", None, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(body["error"].as_str().unwrap().contains("bearer token"), "{body}");
    assert_eq!(api.as_user("garbage").get("/api/v1/workspaces").await.0, 401);
    assert_eq!(api.as_user("wsd_0000_1111").get("/api/v1/workspaces").await.0, 401);
    assert_eq!(daemon.get("/metrics").await.0, 200);

    let alice = user(&daemon, "alice", Role::Member, "default").await;
    assert_eq!(api.as_user(&alice).get("/api/v1/workspaces").await.0, 200);
    // Right id, wrong secret.
    let (id, _) = alice.trim_start_matches("wsd_").split_once('_').unwrap();
    let forged = format!("wsd_{id}_{}", "0".repeat(64));
    assert_eq!(api.as_user(&forged).get("/api/v1/workspaces").await.0, 401);
    // Only the hash is stored.
    let secret = alice.rsplit('_').next().unwrap().to_owned();
    let stored = daemon.count(&format!("SELECT COUNT(*) FROM api_tokens WHERE hashed_secret = '{secret}' OR CAST(hashed_secret AS TEXT) LIKE '%{secret}%'")).await;
    assert_eq!(stored, 0);

    // An expired token.
    let now = daemon.clock_now();
    let expired = daemon
        .store
        .write(move |tx| {
            let id = users::id_by_name(tx, "alice")?.unwrap();
            Ok::<_, StoreError>(
                users::create_token(tx, &id, "short", Some(now + chrono::Duration::hours(1)), now)?
                    .token,
            )
        })
        .await
        .unwrap();
    assert_eq!(api.as_user(&expired).get("/api/v1/workspaces").await.0, 200);
    daemon.clock.advance(chrono::Duration::hours(2));
    let (status, body) = api.as_user(&expired).get("/api/v1/workspaces").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("token expired")));

    // The site owner issues a token for bob; bob sees and revokes only his own.
    let owner = user(&daemon, "root", Role::Owner, "default").await;
    let bob_first = user(&daemon, "bob", Role::Member, "default").await;
    let (status, issued) = api
        .as_user(&owner)
        .post("/api/v1/tokens", json!({ "user": "bob", "name": "laptop", "expires_in": "30d" }))
        .await;
    assert_eq!(status, 201, "{issued}");
    let bob = issued["token"].as_str().unwrap().to_owned();
    let (status, listed) = api.as_user(&bob).get("/api/v1/tokens").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "bob"], "{listed}");
    assert!(listed.to_string().find(&bob[40..]).is_none(), "a listing never shows a secret");
    // Members cannot issue tokens, nor revoke others'.
    assert_eq!(api.as_user(&bob).post("/api/v1/tokens", json!({ "user": "bob" })).await.0, 403);
    let alice_token_id = alice.trim_start_matches("wsd_").split_once('_').unwrap().0.to_owned();
    assert_eq!(
        api.as_user(&bob).call("DELETE", &format!("/api/v1/tokens/{alice_token_id}"), None).await.0,
        404
    );
    let issued_id = issued["id"].as_str().unwrap();
    assert_eq!(
        api.as_user(&bob).call("DELETE", &format!("/api/v1/tokens/{issued_id}"), None).await.0,
        200
    );
    let (status, body) = api.as_user(&bob).get("/api/v1/workspaces").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("token revoked")));
    assert_eq!(api.as_user(&bob_first).get("/api/v1/workspaces").await.0, 200);

    // Suspended users are refused.
    daemon
        .store
        .write(|tx| {
            tx.execute("UPDATE users SET status = 'suspended' WHERE username = 'bob'", [])
                .map_err(StoreError::from)
        })
        .await
        .unwrap();
    assert_eq!(api.as_user(&bob_first).get("/api/v1/workspaces").await.0, 401);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prebuild_claimed_between_authorization_and_write_is_not_deleted_or_stopped() {
    let (daemon, api) = api_daemon(|_| {}).await;
    fill_pools(&daemon).await;
    let admin = api.as_user(&user(&daemon, "tina", Role::TemplateAdmin, "default").await);
    let alice_id = {
        user(&daemon, "alice", Role::Member, "default").await;
        daemon
            .store
            .read(|conn| Ok::<_, StoreError>(users::id_by_name(conn, "alice")?.unwrap()))
            .await
            .unwrap()
    };
    let (_, prebuilds) = admin.get("/api/v1/workspaces?owner=prebuilds").await;
    let prebuild = prebuilds["workspaces"][0]["id"].as_str().unwrap().to_owned();
    let builds_before = daemon
        .count(&format!("SELECT COUNT(*) FROM workspace_builds WHERE workspace_id = '{prebuild}'"))
        .await;
    for (method, path) in [
        ("DELETE", format!("/api/v1/workspaces/{prebuild}")),
        ("POST", format!("/api/v1/workspaces/{prebuild}/stop")),
    ] {
        // The writer is held by a transaction that hands the prebuild to alice (a claim),
        // uncommitted while the admin's request reads and is authorized against the
        // prebuilds user; it commits just before the request's own write runs.
        let (held_tx, held) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let store = daemon.store.clone();
        let (workspace_id, owner) = (prebuild.clone(), alice_id.clone());
        let claim = std::thread::spawn(move || {
            store.write_blocking(move |tx| {
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                tx.execute(
                    "UPDATE workspaces SET owner_id = ?2 WHERE id = ?1",
                    [&workspace_id, &owner],
                )?;
                Ok::<_, StoreError>(())
            })
        });
        held.recv().unwrap();
        let body = (method == "POST").then(|| json!({}));
        let ((status, answer), ()) = tokio::join!(admin.call(method, &path, body), async {
            // Time for the request's authorization read (a slow machine can only make the
            // test fail with a 403/404 below, never pass without the re-check).
            tokio::time::sleep(Duration::from_millis(1500)).await;
            go.send(()).unwrap();
        });
        claim.join().unwrap().unwrap();
        assert_eq!(status, 409, "{method} {path}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("changed owner"), "{answer}");
        // Give it back to the pool for the next round.
        let workspace_id = prebuild.clone();
        daemon
            .store
            .write(move |tx| {
                tx.execute(
                    "UPDATE workspaces SET owner_id = ?2 WHERE id = ?1",
                    [workspace_id.as_str(), workspaced::domain::PREBUILDS_USER_ID],
                )?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    }
    let builds_after = daemon
        .count(&format!("SELECT COUNT(*) FROM workspace_builds WHERE workspace_id = '{prebuild}'"))
        .await;
    assert_eq!(builds_after, builds_before, "no build was queued for the claimed workspace");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_reads_changes_and_deletes_what() {
    let (daemon, api) = api_daemon(|_| {}).await;
    fill_pools(&daemon).await;
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let bob = api.as_user(&user(&daemon, "bob", Role::Member, "default").await);
    let admin = api.as_user(&user(&daemon, "tina", Role::TemplateAdmin, "default").await);
    let auditor = api.as_user(&user(&daemon, "audrey", Role::Auditor, "default").await);
    let outsider = api.as_user(&user(&daemon, "eve", Role::Owner, "other").await);

    let (status, created) =
        alice.post("/api/v1/workspaces", json!({ "template": "dev", "name": "mine" })).await;
    assert_eq!(status, 201, "{created}");
    // No preset named: the preset whose parameters match (here: `small`, no parameters)
    // is used, and it had a ready prebuild.
    assert_eq!(created["claimed"], true, "{created}");
    let id = created["workspace"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/workspaces/{id}");

    // Reads: owner, template admin and auditor of the org; not another member, not
    // another organization's owner (404, as if it did not exist).
    assert_eq!(alice.get(&path).await.0, 200);
    assert_eq!(admin.get(&path).await.0, 200);
    assert_eq!(auditor.get(&path).await.0, 200);
    assert_eq!(bob.get(&path).await.0, 404);
    assert_eq!(outsider.get(&path).await.0, 404);
    assert_eq!(bob.get("/api/v1/workspaces/no-such-id").await.0, 404);

    // Changes: readers without update get 403.
    assert_eq!(admin.post(&format!("{path}/stop"), json!({})).await.0, 403);
    assert_eq!(auditor.post(&format!("{path}/protect"), json!({})).await.0, 403);
    assert_eq!(bob.post(&format!("{path}/stop"), json!({})).await.0, 404);
    assert_eq!(admin.call("DELETE", &path, None).await.0, 403);

    // A template admin deletes prebuilt workspaces, a member cannot even see them.
    let (_, prebuilds) = admin.get("/api/v1/workspaces?owner=prebuilds").await;
    let prebuild = prebuilds["workspaces"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        prebuilds["workspaces"].as_array().unwrap().len(),
        1,
        "one of two was claimed: {prebuilds}"
    );
    assert_eq!(alice.get(&format!("/api/v1/workspaces/{prebuild}")).await.0, 404);
    assert_eq!(admin.call("DELETE", &format!("/api/v1/workspaces/{prebuild}"), None).await.0, 202);
    daemon.wait_idle().await;
    assert_eq!(alice.call("DELETE", &path, None).await.0, 202);

    // Audit: auditors read it (who, what, when, from where); members do not.
    let (status, audit) = auditor.get("/api/v1/audit?limit=50").await;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().unwrap();
    let create = entries.iter().find(|e| e["action"] == "workspace.create").unwrap();
    assert_eq!(create["actor"], "alice");
    assert_eq!(create["source_ip"], "127.0.0.1");
    assert_eq!(create["resource_id"], id.as_str());
    assert!(create["time"].as_str().is_some());
    assert!(entries.iter().any(|e| e["action"] == "workspace.delete" && e["actor"] == "tina"));
    assert_eq!(alice.get("/api/v1/audit").await.0, 403);
    // The other organization's owner sees only its own organization's entries.
    let (status, theirs) = outsider.get("/api/v1/audit").await;
    assert_eq!(status, 200);
    assert!(
        theirs["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["organization_id"] != DEFAULT_ORGANIZATION_ID)
    );

    // Templates and organizations are filtered the same way.
    let names = |body: &Value, key: &str| -> Vec<String> {
        body[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&outsider.get("/api/v1/templates").await.1, "templates"), ["ops"]);
    assert_eq!(names(&alice.get("/api/v1/templates").await.1, "templates"), ["dev"]);
    assert_eq!(outsider.get("/api/v1/templates/dev").await.0, 404);
    assert_eq!(names(&alice.get("/api/v1/organizations").await.1, "organizations"), ["default"]);
    // Deployment-wide: only the default organization's owner manages users.
    assert_eq!(outsider.get("/api/v1/users").await.0, 403);
    assert_eq!(admin.post("/api/v1/users", json!({ "username": "x" })).await.0, 403);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_claim_build_start_stop_protect_delete_and_show_logs() {
    let (daemon, api) = api_daemon(|config| {
        config.gc.enabled = true;
        // Long enough that "a second build while one is queued" is never a race.
        config.provisioner.local.build_duration =
            workspaced::config::duration::HumanDuration::from_secs(1);
    })
    .await;
    fill_pools(&daemon).await;
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let owner = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);

    // Pool status per preset.
    let (status, presets) = alice.get("/api/v1/templates/dev/presets").await;
    assert_eq!(status, 200, "{presets}");
    let small = &presets["presets"][0];
    assert_eq!(small["name"], "small");
    assert_eq!(small["pool"]["desired"], 2);
    assert_eq!(small["pool"]["running"], 2);
    assert_eq!(small["pool"]["eligible"], 2);
    assert_eq!(small["pool"]["in_progress"], 0);
    assert_eq!(small["pool"]["hard_limited"], false);
    assert_eq!(presets["presets"][1]["pool"], Value::Null, "no prebuilds for `plain`");
    let (status, versions) = alice.get("/api/v1/templates/dev/versions").await;
    assert_eq!((status, versions["versions"][0]["active"].as_bool()), (200, Some(true)));

    // With a preset that has ready prebuilds: a claim. Without any: a build.
    let (status, claimed) = alice
        .post(
            "/api/v1/workspaces",
            json!({ "template": "dev", "preset": "small", "name": "fast", "ttl_s": 3600 }),
        )
        .await;
    assert_eq!((status, &claimed["claimed"]), (201, &json!(true)), "{claimed}");
    assert_eq!(claimed["build"]["reason"], "claim");
    let (status, built) = alice
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "plain", "name": "slow" }))
        .await;
    assert_eq!((status, &built["claimed"]), (201, &json!(false)), "{built}");
    daemon.wait_idle().await;
    let slow = built["workspace"]["id"].as_str().unwrap().to_owned();
    let slow_path = format!("/api/v1/workspaces/{slow}");

    // List with filters.
    let (_, mine) =
        alice.get("/api/v1/workspaces?owner=me&status=running&template=dev&dormant=false").await;
    let names: HashSet<&str> = mine["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, HashSet::from(["fast", "slow"]), "{mine}");
    let (_, stopped) = alice.get("/api/v1/workspaces?status=stopped").await;
    assert_eq!(stopped["workspaces"], json!([]));
    assert_eq!(stopped["next"], Value::Null);

    // Stop, then start again: builds 2 and 3.
    let (status, stop) = alice.post(&format!("{slow_path}/stop"), json!({})).await;
    assert_eq!((status, &stop["build"]["build_number"]), (202, &json!(2)), "{stop}");
    // A second build while one is queued is refused.
    assert_eq!(alice.post(&format!("{slow_path}/start"), json!({})).await.0, 409);
    daemon.wait_idle().await;
    assert_eq!(alice.get(&slow_path).await.1["status"], "stopped");
    assert_eq!(alice.post(&format!("{slow_path}/start"), json!({})).await.0, 202);
    daemon.wait_idle().await;
    let (_, builds) = alice.get(&format!("{slow_path}/builds")).await;
    let transitions: Vec<&str> = builds["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["transition"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, ["start", "stop", "start"]);
    assert!(builds["builds"].as_array().unwrap().iter().all(|b| b["job_status"] == "succeeded"));

    // Logs: a finished build's lines, as a list and as a follow stream that ends.
    let (status, logs) = alice.get(&format!("{slow_path}/builds/3/logs")).await;
    assert_eq!(status, 200);
    let lines = logs["logs"].as_array().unwrap();
    assert!(!lines.is_empty(), "{logs}");
    let (status, mut follow) =
        alice.stream(&format!("{slow_path}/builds/3/logs?follow=true"), &[]).await;
    assert_eq!(status, 200);
    let mut followed = 0;
    while let Some(line) = follow.next_line(Duration::from_secs(10)).await {
        let line: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["output"], lines[followed]["output"]);
        followed += 1;
    }
    assert_eq!(followed, lines.len(), "the follow stream ends once the job is done");
    assert_eq!(alice.post(&format!("{slow_path}/builds/3/cancel"), json!({})).await.0, 409);
    assert_eq!(alice.get(&format!("{slow_path}/builds/9/logs")).await.0, 404);

    // Follow a build while it runs, and cancel it.
    let build_duration = |secs| {
        let mut config = daemon.ctx.config.borrow().as_ref().clone();
        config.provisioner.local.build_duration =
            workspaced::config::duration::HumanDuration::from_secs(secs);
        config
    };
    daemon.reloader.apply(build_duration(30)).await.unwrap();
    assert_eq!(alice.post(&format!("{slow_path}/stop"), json!({})).await.0, 202);
    let (_, mut follow) =
        alice.stream(&format!("{slow_path}/builds/4/logs?follow=true"), &[]).await;
    assert!(
        follow.next_line(Duration::from_secs(10)).await.is_some(),
        "a line while the build runs"
    );
    let (status, cancel) = alice.post(&format!("{slow_path}/builds/4/cancel"), json!({})).await;
    assert_eq!(status, 202, "{cancel}");
    while follow.next_line(Duration::from_secs(15)).await.is_some() {}
    daemon.wait_idle().await;
    assert_eq!(alice.get(&slow_path).await.1["status"], "canceled");
    daemon.reloader.apply(build_duration(0)).await.unwrap();

    // Protect: the delete is refused until unprotected.
    assert_eq!(alice.post(&format!("{slow_path}/protect"), json!({})).await.1["protected"], true);
    let (status, refused) = alice.call("DELETE", &slow_path, None).await;
    assert_eq!((status, refused["field"].as_str()), (409, Some("protected")), "{refused}");
    assert_eq!(alice.post(&format!("{slow_path}/unprotect"), json!({})).await.0, 200);

    // Activity is recorded (then coalesced within a minute), with its source.
    daemon.clock.advance(chrono::Duration::minutes(5));
    let (_, before) = alice.get(&slow_path).await;
    assert_eq!(before["last_used_source"], json!(null), "{before}");
    let (status, activity) = alice.post(&format!("{slow_path}/activity"), json!({})).await;
    assert_eq!((status, &activity["recorded"]), (200, &json!(true)));
    assert_eq!(alice.post(&format!("{slow_path}/activity"), json!({})).await.1["recorded"], false);
    let reports = |result: &str| {
        format!("workspaced_activity_reports_total{{result=\"{result}\",source=\"api\"}}")
    };
    assert_eq!(daemon.metric(&reports("recorded")).await, Some(1.0));
    assert_eq!(daemon.metric(&reports("coalesced")).await, Some(1.0));
    let (_, used) = alice.get(&slow_path).await;
    assert_eq!(used["last_used_source"], "api", "{used}");
    assert_eq!(
        used["last_used_at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| at.timestamp_millis()),
        Some(daemon.clock_now().timestamp_millis()),
        "{used}"
    );

    assert_eq!(alice.call("DELETE", &slow_path, None).await.0, 202);
    daemon.wait_idle().await;
    assert_eq!(alice.get(&slow_path).await.0, 404, "deleted workspaces are gone from the API");

    // The plan: the same document as `workspaced plan`; owners only.
    assert_eq!(alice.get("/api/v1/plan").await.0, 403);
    let (status, plan) = owner.get("/api/v1/plan").await;
    assert_eq!(status, 200);
    for key in ["now", "reconciler", "lifecycle", "gc"] {
        assert!(plan.get(key).is_some(), "plan lacks {key}: {plan}");
    }
    // GC run on demand.
    assert_eq!(alice.post("/api/v1/gc/run", json!({})).await.0, 403);
    let runs_before = daemon.metric("workspaced_gc_runs_total{result=\"ok\"}").await.unwrap_or(0.0);
    let (status, run) = owner.post("/api/v1/gc/run", json!({})).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        daemon.metric("workspaced_gc_runs_total{result=\"ok\"}").await,
        Some(runs_before + 1.0)
    );

    // Preset reset (template admins and owners).
    let preset_id = small["id"].as_str().unwrap();
    assert_eq!(alice.post(&format!("/api/v1/presets/{preset_id}/reset"), json!({})).await.0, 403);
    let (status, reset) =
        owner.post(&format!("/api/v1/presets/{preset_id}/reset"), json!({})).await;
    assert_eq!((status, &reset["previous_status"]), (200, &json!("healthy")), "{reset}");

    // Request metrics by route pattern.
    assert!(
        daemon
            .metric("workspaced_api_requests_total{code=\"201\",route=\"/workspaces\"}")
            .await
            .unwrap()
            >= 2.0
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_naming_the_field() {
    let (daemon, api) = api_daemon(|config| config.api.max_body_bytes = 4096).await;
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let owner = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);
    let post_raw = |body: &'static str| {
        let alice = alice.clone();
        async move { alice.raw("POST", "/api/v1/workspaces", Some(body.as_bytes().to_vec()), &[]).await }
    };
    let (status, _, body) = post_raw("{not json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some());
    let (status, _, body) = post_raw(r#"{"template": "dev", "name": "x", "ttl_s": "long"}"#).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("ttl_s")), "{body}");
    let (status, _, body) = post_raw(r#"{"template": "dev", "name": "x", "colour": "red"}"#).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("colour")), "{body}");
    let (status, _, body) = post_raw(r#"{"template": "dev"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("name"), "{body}");
    let (status, body) =
        alice.post("/api/v1/workspaces", json!({ "template": "dev", "name": "Bad Name" })).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("name")));
    let (status, body) =
        alice.post("/api/v1/workspaces", json!({ "template": "nope", "name": "x" })).await;
    assert_eq!((status, body["field"].as_str()), (404, Some("template")));
    let (status, body) = alice
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "huge", "name": "x" }))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("preset")));
    let (status, body) = alice
        .post(
            "/api/v1/workspaces",
            json!({ "template": "dev", "name": "x", "autostart_schedule": "every day" }),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("autostart_schedule")), "{body}");
    let (status, body) = owner
        .post("/api/v1/users", json!({ "username": "bob", "roles": [{ "role": "boss" }] }))
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("roles[0].role")), "{body}");
    let (status, body) = owner
        .post(
            "/api/v1/users",
            json!({ "username": "bob", "roles": [{ "organization": "mars", "role": "member" }] }),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("roles[0].organization")), "{body}");
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM users WHERE username = 'bob'").await,
        0,
        "nothing half-made"
    );
    assert_eq!(owner.post("/api/v1/users", json!({ "username": "bob" })).await.0, 201);
    let (status, body) = owner.post("/api/v1/users", json!({ "username": "bob" })).await;
    assert_eq!((status, body["field"].as_str()), (409, Some("username")));
    // Name taken: 409 naming the field.
    assert_eq!(
        alice
            .post(
                "/api/v1/workspaces",
                json!({ "template": "dev", "preset": "plain", "name": "x" })
            )
            .await
            .0,
        201
    );
    let (status, body) = alice
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "plain", "name": "x" }))
        .await;
    assert_eq!((status, body["field"].as_str()), (409, Some("name")));

    // Too large: 413, whether declared or streamed.
    let big = vec![b' '; 5000];
    let (status, _, body) = alice.raw("POST", "/api/v1/workspaces", Some(big), &[]).await;
    assert_eq!(status, 413, "{body}");
    // Unknown query parameters, bad values, unknown routes, wrong methods.
    let (status, body) = alice.get("/api/v1/workspaces?colour=red").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("colour")));
    let (status, body) = alice.get("/api/v1/workspaces?status=sleepy").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("status")));
    let (status, body) = alice.get("/api/v1/workspaces?dormant=maybe").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("dormant")));
    assert_eq!(alice.get("/api/v1/nothing-here").await.0, 404);
    let (status, headers, _) = alice.raw("PUT", "/api/v1/workspaces", None, &[]).await;
    assert_eq!((status, headers["allow"].to_str().unwrap()), (405, "GET, POST"));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_over_http_never_share_a_prebuild() {
    let (daemon, api) =
        api_daemon(|config| config.templates = vec![template("dev", "default", 12)]).await;
    fill_pools(&daemon).await;
    let token = user(&daemon, "alice", Role::Member, "default").await;
    let mut tasks = Vec::new();
    for client in 0..24 {
        let api = api.as_user(&token);
        tasks.push(tokio::spawn(async move {
            api.post(
                "/api/v1/workspaces",
                json!({ "template": "dev", "preset": "small", "name": format!("w{client}") }),
            )
            .await
        }));
    }
    let mut claimed = HashSet::new();
    let mut built = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 201, "{body}");
        if body["claimed"] == true {
            assert!(
                claimed.insert(body["workspace"]["id"].as_str().unwrap().to_owned()),
                "claimed twice: {body}"
            );
        } else {
            built += 1;
        }
    }
    assert_eq!((claimed.len(), built), (12, 12));
    assert_eq!(
        daemon.count("SELECT COUNT(DISTINCT workspace_id) FROM workspace_builds WHERE is_prebuild_claim = 1").await,
        12
    );
    assert_eq!(
        daemon.count("SELECT COUNT(*) FROM workspace_builds WHERE is_prebuild_claim = 1").await,
        12
    );
    daemon.shutdown().await;
}
