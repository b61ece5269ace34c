//! The app proxy against a real container workspace: the `proxy_app` example (HTTP with a
//! header echo, WebSocket echo) imported into Podman as an image of its own, a daemon on
//! the manual clock, real HTTP and WebSockets over loopback.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use workspaced::auth::Role;
use workspaced::config::templates::TemplateConfig;
use workspaced::domain::LoopKind;

use crate::api::user;
use crate::client::Api;
use crate::containers::{Podman, wait_for};
use crate::helpers::{TestDaemon, run_binary, write_config};

const APP_IMAGE: &str = "localhost/workspaced-proxy-app:1";

static IMAGE: OnceLock<Result<(), String>> = OnceLock::new();

/// `target/<profile>/examples/proxy_app`, built by `cargo test` and by `scripts/test`.
fn example_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).ok_or("no target directory")?;
    let binary = profile_dir.join("examples/proxy_app");
    if binary.is_file() {
        return Ok(binary);
    }
    Err(format!(
        "{} is missing: build it with `cargo build --example proxy_app` (scripts/test and a plain `cargo test` do)",
        binary.display()
    ))
}

/// An image with only the example binary and the shared libraries it links.
fn build_image(podman: &Podman) -> Result<(), String> {
    let binary = example_binary()?;
    let work = tempfile::tempdir().map_err(|error| error.to_string())?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("tmp")).map_err(|error| error.to_string())?;
    std::fs::copy(&binary, rootfs.join("app")).map_err(|error| error.to_string())?;
    let ldd = Command::new("ldd").arg(&binary).output().map_err(|error| format!("ldd: {error}"))?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or(line).split_whitespace().next().unwrap_or("");
        if !path.starts_with('/') {
            continue;
        }
        let target = rootfs.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).map_err(|error| error.to_string())?;
        std::fs::copy(path, &target).map_err(|error| format!("{path}: {error}"))?;
    }
    let tarball = work.path().join("rootfs.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .map_err(|error| format!("tar: {error}"))?;
    if !tar.status.success() {
        return Err(format!("tar: {}", String::from_utf8_lossy(&tar.stderr)));
    }
    let imported = podman.cli(&["import", tarball.to_str().unwrap(), APP_IMAGE]);
    if !imported.status.success() {
        return Err(format!("podman import: {}", String::from_utf8_lossy(&imported.stderr)));
    }
    Ok(())
}

fn app_image() -> &'static Podman {
    let podman = Podman::get();
    if let Err(reason) = IMAGE.get_or_init(|| build_image(podman)) {
        panic!("cannot build the proxy test image: {reason}");
    }
    podman
}

fn template(connection_activity: bool) -> TemplateConfig {
    serde_json::from_value(json!({
        "name": "app",
        "provisioner": "container",
        "default_ttl": "1h",
        "max_ttl": "8h",
        "provisioner_config": {
            "image": APP_IMAGE,
            "command": ["/app", "8080", "8081"],
            "ports": { "web": 8080, "shared": 8081 },
            "apps": { "shared": { "share": "authenticated" } },
            "connection_activity": connection_activity,
            "ready": { "http": "http://{port.web}/healthz", "interval": "1s", "timeout": "2s" },
        },
    }))
    .unwrap()
}

/// A daemon on the manual clock whose `app` template runs the proxy_app image.
async fn spawn(connection_activity: bool) -> (&'static Podman, TestDaemon) {
    let podman = app_image();
    let socket = format!("unix://{}", podman.socket.display());
    let daemon = TestDaemon::spawn_with(move |config| {
        config.provisioner.container.socket = socket;
        config.provisioner.job_timeout = workspaced::config::duration::HumanDuration::from_secs(60);
        config.templates = vec![template(connection_activity)];
    })
    .await;
    (podman, daemon)
}

/// Creates `dev` of the `app` template for `owner`; its id and the running workspace.
async fn run_dev(owner: &Api) -> (String, Value) {
    let (status, created) =
        owner.post("/api/v1/workspaces", json!({ "template": "app", "name": "dev" })).await;
    assert_eq!(status, 201, "{created}");
    let id = created["workspace"]["id"].as_str().unwrap().to_owned();
    let workspace = wait_for("the workspace to run", Duration::from_secs(90), async || {
        let (_, workspace) = owner.get(&format!("/api/v1/workspaces/{id}")).await;
        (workspace["status"] == "running").then_some(workspace)
    })
    .await;
    (id, workspace)
}

async fn last_used(api: &Api, id: &str) -> (Value, Value) {
    let (_, workspace) = api.get(&format!("/api/v1/workspaces/{id}")).await;
    (workspace["last_used_at"].clone(), workspace["last_used_source"].clone())
}

fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_proxy_admits_the_owner_counts_real_use_and_not_an_idle_websocket() {
    let (podman, daemon) = spawn(false).await;
    let api = Api::new(daemon.addr, None);
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let bob = api.as_user(&user(&daemon, "bob", Role::Member, "default").await);
    let auditor = api.as_user(&user(&daemon, "audrey", Role::Auditor, "default").await);
    let root = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);
    let revoked_token = user(&daemon, "rita", Role::Member, "default").await;

    let started_at = daemon.clock_now();
    let (id, workspace) = run_dev(&alice).await;
    assert_eq!(workspace["apps"][1]["name"], "web", "{workspace}");
    assert_eq!(workspace["apps"][0]["share"], "authenticated", "{workspace}");
    let app = "/@alice/dev/apps/web";

    // A path without the trailing slash is redirected to it.
    let (status, headers, _) = alice.raw("GET", app, None, &[]).await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], format!("{app}/"));

    // The owner gets through; the app sees no token, no login cookie, the prefix
    // stripped, and forwarding headers; the app cannot set the daemon's cookie.
    let (status, headers, echo) = alice
        .raw(
            "POST",
            &format!("{app}/some/path?q=1"),
            Some(b"hello".to_vec()),
            &[("cookie", "wsd_session=secret; theme=dark")],
        )
        .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["path"], "/some/path?q=1");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], 5);
    let seen = &echo["headers"];
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["cookie"], "theme=dark", "{seen}");
    assert_eq!(seen["x-forwarded-prefix"], app);
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    let cookies: Vec<&str> =
        headers.get_all("set-cookie").iter().map(|value| value.to_str().unwrap()).collect();
    assert_eq!(cookies, ["app_pref=dark; Path=/"]);

    // Who may: another member sees nothing (404), the auditor sees but may not connect
    // (403), the organization's owner connects, a revoked token is refused (401).
    assert_eq!(bob.raw("GET", &format!("{app}/"), None, &[]).await.0, 404);
    assert_eq!(auditor.raw("GET", &format!("{app}/"), None, &[]).await.0, 403);
    assert_eq!(root.raw("GET", &format!("{app}/"), None, &[]).await.0, 200);
    let rita = api.as_user(&revoked_token);
    let (_, tokens) = rita.get("/api/v1/tokens").await;
    let token_id = tokens["tokens"][0]["id"].as_str().unwrap_or_else(|| panic!("{tokens}"));
    let (status, body) = rita.call("DELETE", &format!("/api/v1/tokens/{token_id}"), None).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    assert_eq!(rita.raw("GET", &format!("{app}/"), None, &[]).await.0, 401);
    assert_eq!(api.raw("GET", &format!("{app}/"), None, &[]).await.0, 401, "no token");
    // The shared app admits any user of the organization.
    assert_eq!(bob.raw("GET", "/@alice/dev/apps/shared/", None, &[]).await.0, 200);
    // A page of another app may not ride the visitor's login cookie.
    let cross = [
        ("cookie", "wsd_session=TOKEN"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
        ("referer", "http://h/@bob/evil/apps/web/"),
    ];
    let alice_token = alice.token.clone().unwrap();
    let cross: Vec<(&str, String)> =
        cross.iter().map(|(name, value)| (*name, value.replace("TOKEN", &alice_token))).collect();
    let cross: Vec<(&str, &str)> = cross.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(api.raw("GET", &format!("{app}/"), None, &cross).await.0, 403);

    // Use through the proxy moves last_used_at (the manual clock) with source proxy and
    // pushes the deadline (start + 1 h → use + 1 h).
    daemon.clock.set(started_at + chrono::TimeDelta::minutes(50));
    assert_eq!(alice.raw("GET", &format!("{app}/"), None, &[]).await.0, 200);
    let used_at = rfc3339(daemon.clock_now());
    wait_for("the proxy's activity report", Duration::from_secs(10), async || {
        (last_used(&alice, &id).await == (json!(used_at), json!("proxy"))).then_some(())
    })
    .await;
    let (_, workspace) = alice.get(&format!("/api/v1/workspaces/{id}")).await;
    let deadline = rfc3339(daemon.clock_now() + chrono::TimeDelta::hours(1));
    assert_eq!(workspace["latest_build"]["deadline"], json!(deadline), "{workspace}");

    // A WebSocket echoes through the proxy; data on it is use.
    let mut request = format!("ws://{}{app}/ws", daemon.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {alice_token}").parse().unwrap());
    let (mut socket, response) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request))
            .await
            .expect("websocket handshake in time")
            .unwrap();
    assert_eq!(response.status(), 101);
    daemon.clock.set(started_at + chrono::TimeDelta::minutes(90));
    socket.send(Message::text("ping")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("ping"));
    let used_at = rfc3339(daemon.clock_now());
    wait_for("the websocket's activity report", Duration::from_secs(10), async || {
        (last_used(&alice, &id).await == (json!(used_at), json!("proxy"))).then_some(())
    })
    .await;
    assert_eq!(daemon.metric("workspaced_proxy_websockets").await, Some(1.0));

    // The GC dry run shows why the workspace counts as used.
    let dry_run_config = write_config(
        daemon.dir.path(),
        &format!(
            "[storage]\ndata_dir = {:?}\n[gc]\nenabled = false\nttl = \"1h\"\nbasis = \"last_activity\"\nwarn_before = \"1h\"\nactive_grace = \"0s\"\n\
             [[templates]]\nname = \"app\"\nprovisioner = \"container\"\n\
             [templates.provisioner_config]\nimage = {APP_IMAGE:?}\n",
            daemon.dir.path().join("data")
        ),
    );
    let preview = run_binary(
        &["gc", "--dry-run", "--config", dry_run_config.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{text}{}", String::from_utf8_lossy(&preview.stderr));
    let row = text.lines().find(|line| line.starts_with(&id)).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row.split_whitespace().nth(4), Some("proxy"), "{row}");

    // Open but idle: the socket does not keep the workspace from its autostop.
    daemon.clock.set(started_at + chrono::TimeDelta::minutes(151));
    daemon.tick(LoopKind::Lifecycle).await;
    let (_, workspace) = alice.get(&format!("/api/v1/workspaces/{id}")).await;
    assert_eq!(workspace["latest_build"]["transition"], "stop", "{workspace}");
    let autostops = daemon
        .count(&format!(
            "SELECT COUNT(*) FROM workspace_builds WHERE workspace_id = '{id}' AND transition = 'stop' AND reason = 'autostop'"
        ))
        .await;
    assert_eq!(autostops, 1);
    // Stopped: a clear 503 with the state, not a proxy error.
    wait_for("the stop", Duration::from_secs(60), async || {
        let (_, workspace) = alice.get(&format!("/api/v1/workspaces/{id}")).await;
        (workspace["status"] == "stopped").then_some(())
    })
    .await;
    let (status, _, body) = alice.raw("GET", &format!("{app}/"), None, &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "stopped", "{body}");
    assert!(body["error"].as_str().unwrap().contains("alice/dev is stopped"), "{body}");

    // The metrics counted it all.
    let ok = daemon.metric("workspaced_proxy_requests_total{app=\"web\",code=\"200\"}").await;
    assert_eq!(ok, Some(3.0), "owner POST, root GET, owner GET");
    let recorded = daemon
        .metric("workspaced_activity_reports_total{result=\"recorded\",source=\"proxy\"}")
        .await;
    assert!(recorded.is_some_and(|count| count >= 2.0), "{recorded:?}");
    let sent = daemon.metric("workspaced_proxy_bytes_total{direction=\"to_workspace\"}").await;
    assert!(sent.is_some_and(|bytes| bytes >= 5.0), "{sent:?}");
    drop(socket);
    daemon.shutdown().await;
    podman.clean(&[id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_connections_count_as_backend_activity_and_the_proxys_own_do_not() {
    let (podman, daemon) = spawn(true).await;
    let api = Api::new(daemon.addr, None);
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let started_at = daemon.clock_now();
    let (id, workspace) = run_dev(&alice).await;
    let direct = workspace["apps"][1]["url"].as_str().unwrap().trim_start_matches("http://");
    let direct = direct.trim_end_matches('/').to_owned();

    // Proxied use: source proxy. The proxy's pooled connection stays open inside the
    // container, and the health checks that follow do not mistake it for direct use.
    daemon.clock.set(started_at + chrono::TimeDelta::minutes(10));
    assert_eq!(alice.raw("GET", "/@alice/dev/apps/web/", None, &[]).await.0, 200);
    let proxied_at = rfc3339(daemon.clock_now());
    wait_for("the proxy's activity report", Duration::from_secs(10), async || {
        (last_used(&alice, &id).await == (json!(proxied_at), json!("proxy"))).then_some(())
    })
    .await;
    daemon.clock.set(started_at + chrono::TimeDelta::minutes(20));
    let probes = r#"workspaced_health_probes_total{result="pass"}"#;
    let before = daemon.metric(probes).await.unwrap_or(0.0);
    wait_for("three more health checks", Duration::from_secs(20), async || {
        (daemon.metric(probes).await.unwrap_or(0.0) >= before + 3.0).then_some(())
    })
    .await;
    assert_eq!(last_used(&alice, &id).await, (json!(proxied_at), json!("proxy")));

    // A connection straight to the published port (an IDE, SSH) is seen by the backend.
    let connection = tokio::net::TcpStream::connect(&direct).await.unwrap();
    let direct_at = rfc3339(daemon.clock_now());
    wait_for("the backend's activity report", Duration::from_secs(20), async || {
        (last_used(&alice, &id).await == (json!(direct_at), json!("backend"))).then_some(())
    })
    .await;
    let recorded = daemon
        .metric(r#"workspaced_activity_reports_total{result="recorded",source="backend"}"#)
        .await;
    assert_eq!(recorded, Some(1.0));
    drop(connection);
    daemon.shutdown().await;
    podman.clean(&[id]);
}
