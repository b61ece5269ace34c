//! The JSON API over real HTTP on loopback: authentication, the role matrix as the
//! handlers apply it, every endpoint family, bad input, concurrent claims.

use std::time::Duration;

use serde_json::{Value, json};

use workspaced::auth::Role;
use workspaced::config::Config;
use workspaced::config::templates::TemplateConfig;
use workspaced::domain::DEFAULT_ORGANIZATION_ID;
use workspaced::loops::LoopKind;
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
                users::create_token(tx, &id, "short", Some(now + chrono::Duration::hours(1)), now)?.token,
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
    let names: Vec<&str> = listed["tokens"].as_array().unwrap().iter().map(|t| t["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["bob", "bob"], "{listed}");
    assert!(listed.to_string().find(&bob[40..]).is_none(), "a listing never shows a secret");
    // Members cannot issue tokens, nor revoke others'.
    assert_eq!(api.as_user(&bob).post("/api/v1/tokens", json!({ "user": "bob" })).await.0, 403);
    let alice_token_id = alice.trim_start_matches("wsd_").split_once('_').unwrap().0.to_owned();
    assert_eq!(api.as_user(&bob).call("DELETE", &format!("/api/v1/tokens/{alice_token_id}"), None).await.0, 404);
    let issued_id = issued["id"].as_str().unwrap();
    assert_eq!(api.as_user(&bob).call("DELETE", &format!("/api/v1/tokens/{issued_id}"), None).await.0, 200);
    let (status, body) = api.as_user(&bob).get("/api/v1/workspaces").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("token revoked")));
    assert_eq!(api.as_user(&bob_first).get("/api/v1/workspaces").await.0, 200);

    // Suspended users are refused.
    daemon
        .store
        .write(|tx| tx.execute("UPDATE users SET status = 'suspended' WHERE username = 'bob'", []).map_err(StoreError::from))
        .await
        .unwrap();
    assert_eq!(api.as_user(&bob_first).get("/api/v1/workspaces").await.0, 401);
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

    let (status, created) = alice.post("/api/v1/workspaces", json!({ "template": "dev", "name": "mine" })).await;
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
    assert_eq!(prebuilds["total"], 1, "one of two was claimed: {prebuilds}");
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
    assert!(theirs["entries"].as_array().unwrap().iter().all(|e| e["organization_id"] != DEFAULT_ORGANIZATION_ID));

    // Templates and organizations are filtered the same way.
    let names = |body: &Value, key: &str| -> Vec<String> {
        body[key].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
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
