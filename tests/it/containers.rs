//! The container backend against a real engine: Podman's Docker-compatible API service,
//! started by the tests on a socket of their own, with the example image built offline
//! by `scripts/container-image`. No mock of the engine. When Podman cannot be had or
//! started, the tests fail and say why; they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::Api;
use crate::helpers::{DaemonProcess, binary_config, owner_token, run_binary, write_config};

/// The image the example config and these tests run (`scripts/container-image`).
pub const IMAGE: &str = "localhost/workspaced-web:1";

pub struct Podman {
    pub dir: PathBuf,
    pub socket: PathBuf,
}

static PODMAN: OnceLock<Result<Podman, String>> = OnceLock::new();

fn podman_setup() -> Result<Podman, String> {
    let found = Command::new("podman").arg("--version").output();
    if !found.is_ok_and(|output| output.status.success()) {
        return Err(
            "podman is missing: scripts/test installs it (apt-get install podman runc)".into()
        );
    }
    // scripts/test starts the service (scripts/podman-service) and names its socket.
    if let Ok(host) = std::env::var("WSD_TEST_CONTAINER_HOST")
        && let Some(path) = host.strip_prefix("unix://")
    {
        let socket = PathBuf::from(path);
        let dir = socket.parent().map(Path::to_path_buf).unwrap_or_default();
        if !ping(&socket) {
            return Err(format!("WSD_TEST_CONTAINER_HOST={host} does not answer"));
        }
        return Ok(Podman { dir, socket });
    }
    let dir = std::env::temp_dir().join(format!("wsd-podman-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    // The crun default cannot set rlimits in this sandbox kind; runc with cgroupfs and no
    // default ulimits works (../deps recipe, also in docs/containers.md).
    std::fs::write(dir.join("containers.conf"), "[containers]\ndefault_ulimits = []\n")
        .map_err(|error| error.to_string())?;
    let socket = dir.join("podman.sock");
    let log = std::fs::File::create(dir.join("service.log")).map_err(|error| error.to_string())?;
    // The service exits by itself after 10 idle minutes, so no engine outlives the tests long.
    Command::new("podman")
        .args(podman_flags())
        .args(["system", "service", "--time=600"])
        .arg(format!("unix://{}", socket.display()))
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|error| format!("cannot start podman system service: {error}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ping(&socket) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("service.log")).unwrap_or_default();
            return Err(format!(
                "podman's API service did not answer on {}: {log}",
                socket.display()
            ));
        }
        pause(Duration::from_millis(100));
    }
    let podman = Podman { dir, socket };
    let exists = podman.cli(&["image", "exists", IMAGE]);
    if !exists.status.success() {
        let built = Command::new(repo().join("scripts/container-image"))
            .arg(IMAGE)
            .env("CONTAINER_HOST", format!("unix://{}", podman.socket.display()))
            .output()
            .map_err(|error| format!("cannot run scripts/container-image: {error}"))?;
        if !built.status.success() {
            return Err(format!(
                "scripts/container-image failed: {}",
                String::from_utf8_lossy(&built.stderr)
            ));
        }
    }
    Ok(podman)
}

fn podman_flags() -> [&'static str; 4] {
    ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pause(duration: Duration) {
    let (_never, wait) = std::sync::mpsc::channel::<()>();
    let _ = wait.recv_timeout(duration);
}

fn ping(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
}

impl Podman {
    pub fn get() -> &'static Podman {
        match PODMAN.get_or_init(podman_setup) {
            Ok(podman) => podman,
            Err(reason) => panic!("no container engine for the container tests: {reason}"),
        }
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .args(podman_flags())
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .output()
            .unwrap()
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn exists(&self, kind: &str, name: &str) -> bool {
        let args: &[&str] = match kind {
            "container" => &["container", "exists", name],
            _ => &["volume", "exists", name],
        };
        self.cli(args).status.success()
    }

    /// The `.State.Status` of a container, or `None` when there is none.
    pub fn state(&self, name: &str) -> Option<String> {
        let output = self.cli(&["inspect", "--format", "{{.State.Status}}", name]);
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Removes every container and volume of these workspaces (a failed test's leftovers).
    pub fn clean(&self, workspace_ids: &[String]) {
        for id in workspace_ids {
            let _ = self.cli(&["rm", "-f", &format!("wsd-{id}")]);
            let _ = self.cli(&["volume", "rm", "-f", &format!("wsd-{id}-home")]);
        }
    }
}

/// A daemon config with one container template `web` (a busybox web server on a
/// published port, an HTTP readiness probe) and `extra` appended.
fn config(dir: &Path, template_extra: &str, extra: &str) -> String {
    let podman = Podman::get();
    format!(
        r#"{base}
[provisioner]
job_timeout = "60s"
[provisioner.container]
socket = "unix://{socket}"
{extra}
[[templates]]
name = "web"
provisioner = "container"
{template_extra}
"#,
        base = binary_config(dir),
        socket = podman.socket.display(),
    )
}

fn web_spec(probe: &str) -> String {
    format!(
        r#"[templates.provisioner_config]
image = "{IMAGE}"
command = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
ports = {{ web = 8080 }}
env = {{ GREETING = "hello {{workspace.id}}", OWNER_GREETING = "hi {{owner.name}}" }}
[templates.provisioner_config.ready]
{probe}
interval = "1s"
timeout = "2s"
failure_threshold = 3
"#
    )
}

pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Live workspaces of template `web` with their JSON, by a direct read of the file.
fn workspaces(dir: &Path, sql_filter: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(dir.join("data/workspaced.db")).unwrap();
    let sql = format!("SELECT id FROM workspaces WHERE deleted = 0 AND {sql_filter} ORDER BY id");
    let mut statement = conn.prepare(&sql).unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

async fn http_body(url: &str) -> Option<(u16, String)> {
    let uri: hyper::Uri = url.parse().ok()?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response =
        tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await.ok()?.ok()?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_real_containers_fills_a_claim_hands_out_a_url_and_stop_keeps_the_home() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        "{}\n[[templates.presets]]\nname = \"default\"\n[templates.presets.prebuilds]\ninstances = 2\n",
        web_spec(r#"http = "http://{port.web}/healthz""#)
    );
    let path = write_config(dir.path(), &config(dir.path(), &template, ""));
    let token = owner_token(&path);
    let daemon = DaemonProcess::start(&path);
    let api = Api::new(daemon.addr, Some(&token));

    // The pool fills with two running containers whose probe passed.
    let prebuilds = wait_for("two ready prebuilds", Duration::from_secs(90), async || {
        let ready = workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy'");
        (ready.len() == 2).then_some(ready)
    })
    .await;
    for id in &prebuilds {
        assert_eq!(podman.state(&format!("wsd-{id}")).as_deref(), Some("running"));
        assert!(podman.exists("volume", &format!("wsd-{id}-home")));
        let labels =
            podman.ok(&["inspect", "--format", "{{json .Config.Labels}}", &format!("wsd-{id}")]);
        let labels: Value = serde_json::from_str(&labels).unwrap();
        assert_eq!(labels["io.workspaced.managed"], "true");
        assert_eq!(labels["io.workspaced.workspace-id"], id.as_str());
        assert!(labels["io.workspaced.spec-hash"].as_str().is_some_and(|hash| hash.len() == 32));
    }

    // A claim answers with the prebuild's URL, which answers at once.
    let (status, claimed) = api
        .post(
            "/api/v1/workspaces",
            json!({ "template": "web", "preset": "default", "name": "mine" }),
        )
        .await;
    assert_eq!(status, 201, "{claimed}");
    assert_eq!(claimed["claimed"], true, "{claimed}");
    let id = claimed["workspace"]["id"].as_str().unwrap().to_owned();
    assert!(prebuilds.contains(&id));
    let url = claimed["workspace"]["apps"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("{claimed}"))
        .to_owned();
    assert_eq!(claimed["workspace"]["apps"][0]["name"], "web");
    let (code, body) = http_body(&url).await.expect("the app URL answers");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Your workspace answers."), "{body}");

    // The claim build finishes without recreating the container and writes the identity.
    let container = format!("wsd-{id}");
    let before = podman.ok(&["inspect", "--format", "{{.Id}}", &container]);
    wait_for("the claim build", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{id}")).await;
        (workspace["latest_build"]["job_status"] == "succeeded").then_some(())
    })
    .await;
    assert_eq!(podman.ok(&["inspect", "--format", "{{.Id}}", &container]), before, "no recreate");
    let identity = podman.ok(&["exec", &container, "cat", "/home/workspace/.workspaced/identity"]);
    assert!(identity.contains("WORKSPACE_NAME='mine'"), "{identity}");
    assert!(identity.contains("WORKSPACE_OWNER='root'"), "{identity}");
    // An env variable that uses the owner reaches the claimed workspace without a recreate.
    let exports = podman.ok(&["exec", &container, "cat", "/home/workspace/.workspaced/env"]);
    assert_eq!(exports, "export OWNER_GREETING='hi root'");
    let env = podman.ok(&["exec", &container, "sh", "-c", "echo $GREETING"]);
    assert_eq!(env, format!("hello {id}"));

    // Stop keeps container and volume; a file in the home survives stop and start.
    podman.ok(&["exec", &container, "sh", "-c", "echo kept > /home/workspace/note"]);
    let (status, body) = api.post(&format!("/api/v1/workspaces/{id}/stop"), json!({})).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    wait_for("the stop", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{id}")).await;
        (workspace["status"] == "stopped").then_some(())
    })
    .await;
    assert_eq!(podman.state(&container).as_deref(), Some("exited"));
    let (_, stopped) = api.get(&format!("/api/v1/workspaces/{id}")).await;
    assert_eq!(stopped["apps"], json!([]), "a stopped workspace has no apps: {stopped}");
    let (status, body) = api.post(&format!("/api/v1/workspaces/{id}/start"), json!({})).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    let started = wait_for("the start", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{id}")).await;
        (workspace["status"] == "running").then_some(workspace)
    })
    .await;
    assert_eq!(started["health"]["status"], "healthy", "{started}");
    assert_eq!(podman.ok(&["exec", &container, "cat", "/home/workspace/note"]), "kept");
    let url = started["apps"][0]["url"].as_str().unwrap();
    assert_eq!(http_body(url).await.map(|(code, _)| code), Some(200));

    // Delete removes both, and deleting again is no error.
    let (status, body) = api.call("DELETE", &format!("/api/v1/workspaces/{id}"), None).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    wait_for("the delete", Duration::from_secs(60), async || {
        (!podman.exists("container", &container)).then_some(())
    })
    .await;
    wait_for("the volume's removal", Duration::from_secs(30), async || {
        (!podman.exists("volume", &format!("{container}-home"))).then_some(())
    })
    .await;

    drop(daemon);
    let all = workspaces(dir.path(), "1 = 1");
    podman.clean(&all);
    podman.clean(&prebuilds);
}

async fn metric(daemon: &DaemonProcess, series: &str) -> Option<f64> {
    let (_, scrape) = crate::helpers::http_get(daemon.addr, "/metrics");
    crate::helpers::metric_value(&scrape, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_prebuild_container_is_unhealthy_unclaimable_and_replaced_after_the_grace() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        "{}\n[[templates.presets]]\nname = \"default\"\n[templates.presets.prebuilds]\ninstances = 1\n",
        web_spec(r#"http = "http://{port.web}/healthz""#)
    );
    let extra = "[reconciler]\nunhealthy_replace_after = \"4s\"\n";
    // binary_config already has a [reconciler] table: merge the key into it.
    let body = config(dir.path(), &template, "")
        .replace("[reconciler]\ninterval = \"1s\"\n", &format!("{extra}interval = \"1s\"\n"));
    let path = write_config(dir.path(), &body);
    let token = owner_token(&path);
    let daemon = DaemonProcess::start(&path);
    let api = Api::new(daemon.addr, Some(&token));
    let first = wait_for("a ready prebuild", Duration::from_secs(90), async || {
        workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy'").into_iter().next()
    })
    .await;

    podman.ok(&["kill", &format!("wsd-{first}")]);
    let sick = wait_for("the unhealthy verdict", Duration::from_secs(30), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{first}")).await;
        (workspace["health"]["status"] == "unhealthy").then_some(workspace)
    })
    .await;
    let error = sick["health"]["error"].as_str().unwrap();
    assert!(error.contains(&format!("container wsd-{first} is exited")), "{sick}");
    assert_eq!(
        metric(&daemon, "workspaced_workspaces_unhealthy{template_name=\"web\"}").await,
        Some(1.0)
    );
    // Not claimable: a create builds a new workspace instead of taking it.
    let (status, created) = api
        .post(
            "/api/v1/workspaces",
            json!({ "template": "web", "preset": "default", "name": "cold" }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["claimed"], false, "an unhealthy prebuild was claimed: {created}");
    let cold = created["workspace"]["id"].as_str().unwrap().to_owned();
    // A user's container stopped behind the daemon's back: unhealthy, and a start build
    // brings it back (same volume).
    wait_for("the cold workspace", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{cold}")).await;
        (workspace["health"]["status"] == "healthy").then_some(())
    })
    .await;
    podman.ok(&["exec", &format!("wsd-{cold}"), "sh", "-c", "echo mine > /home/workspace/note"]);
    podman.ok(&["stop", "-t", "1", &format!("wsd-{cold}")]);
    wait_for("the stopped container's verdict", Duration::from_secs(30), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{cold}")).await;
        (workspace["health"]["status"] == "unhealthy").then_some(())
    })
    .await;
    let (status, body) = api.post(&format!("/api/v1/workspaces/{cold}/start"), json!({})).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    wait_for("the start build", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{cold}")).await;
        (workspace["health"]["status"] == "healthy"
            && workspace["latest_build"]["build_number"] == 2)
            .then_some(())
    })
    .await;
    assert_eq!(podman.state(&format!("wsd-{cold}")).as_deref(), Some("running"));
    assert_eq!(podman.ok(&["exec", &format!("wsd-{cold}"), "cat", "/home/workspace/note"]), "mine");

    // After the grace the reconciler deletes it and a new one becomes ready.
    wait_for("the unhealthy prebuild's removal", Duration::from_secs(60), async || {
        (!podman.exists("container", &format!("wsd-{first}"))).then_some(())
    })
    .await;
    let replacement = wait_for("a healthy replacement", Duration::from_secs(90), async || {
        workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy' AND owner_id <> (SELECT id FROM users WHERE username = 'root')")
            .into_iter()
            .find(|id| id != &first)
    })
    .await;
    wait_for("the gauge back at 0", Duration::from_secs(30), async || {
        (metric(&daemon, "workspaced_workspaces_unhealthy{template_name=\"web\"}").await
            == Some(0.0))
        .then_some(())
    })
    .await;
    drop(daemon);
    podman.clean(&[first, replacement, cold]);
    podman.clean(&workspaces(dir.path(), "1 = 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_never_passes_and_a_missing_image_fail_the_build_with_the_reason() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        "{}\n[[templates]]\nname = \"no-image\"\nprovisioner = \"container\"\nprovisioner_config = {{ image = \"localhost/workspaced-no-such-image:1\" }}\n",
        web_spec("http = \"http://{port.web}/missing\"\nstart_period = \"0s\"")
            .replace("failure_threshold = 3", "failure_threshold = 2")
    );
    // The start waits for the probe until just before the job timeout.
    let body =
        config(dir.path(), &template, "").replace("job_timeout = \"60s\"", "job_timeout = \"6s\"");
    let path = write_config(dir.path(), &body);
    let token = owner_token(&path);
    let daemon = DaemonProcess::start(&path);
    let api = Api::new(daemon.addr, Some(&token));
    let mut ids = Vec::new();
    for (template, expected) in [
        ("web", "readiness probe failed: GET http://127.0.0.1:".to_owned()),
        ("no-image", "pull image localhost/workspaced-no-such-image:1".to_owned()),
    ] {
        let (status, created) =
            api.post("/api/v1/workspaces", json!({ "template": template, "name": template })).await;
        assert_eq!(status, 201, "{created}");
        let id = created["workspace"]["id"].as_str().unwrap().to_owned();
        ids.push(id.clone());
        let build = wait_for("the failed build", Duration::from_secs(60), async || {
            let (_, builds) = api.get(&format!("/api/v1/workspaces/{id}/builds")).await;
            let build = builds["builds"][0].clone();
            (build["job_status"] == "failed").then_some(build)
        })
        .await;
        let error = build["error"].as_str().unwrap_or_default();
        assert!(error.contains(&expected), "{template}: {build}");
        if template == "web" {
            assert!(error.contains("/missing answered 404"), "{build}");
        }
    }
    drop(daemon);
    podman.clean(&ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_containers_and_volumes_are_shown_by_a_dry_run_and_removed_by_a_gc_run() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let body = config(dir.path(), &web_spec(r#"tcp = "web""#), "")
        .replace("[gc]\ninterval = \"1s\"\n", "[gc]\nenabled = true\ninterval = \"1h\"\n");
    let path = write_config(dir.path(), &body);
    let token = owner_token(&path);
    let daemon = DaemonProcess::start(&path);
    let api = Api::new(daemon.addr, Some(&token));
    let (status, created) =
        api.post("/api/v1/workspaces", json!({ "template": "web", "name": "live" })).await;
    assert_eq!(status, 201, "{created}");
    let live = created["workspace"]["id"].as_str().unwrap().to_owned();
    wait_for("the live workspace", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{live}")).await;
        (workspace["status"] == "running").then_some(())
    })
    .await;
    // Objects with our labels and no workspace: what a crash between create and record,
    // or a database restored from an old backup, leaves behind.
    let ghost = format!("ghost-{}", std::process::id());
    let conn = rusqlite::Connection::open(dir.path().join("data/workspaced.db")).unwrap();
    let installation: String =
        conn.query_row("SELECT id FROM installation", [], |row| row.get(0)).unwrap();
    let create = |name: &str, workspace: &str, installation: &str, volume: bool| {
        let mut args: Vec<String> = if volume {
            vec!["volume".into(), "create".into()]
        } else {
            vec!["create".into(), "--name".into(), name.into()]
        };
        for label in [
            "io.workspaced.managed=true".to_owned(),
            format!("io.workspaced.workspace-id={workspace}"),
            format!("io.workspaced.installation={installation}"),
        ] {
            args.extend(["--label".to_owned(), label]);
        }
        if volume {
            args.push(name.to_owned());
        } else {
            args.extend([IMAGE.to_owned(), "sleep".to_owned(), "1000".to_owned()]);
        }
        podman.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    create(&format!("wsd-{ghost}-home"), &ghost, &installation, true);
    create(&format!("wsd-{ghost}"), &ghost, &installation, false);
    // Another installation's object on the same engine is none of this daemon's business.
    let foreign = format!("foreign-{}", std::process::id());
    create(&format!("wsd-{foreign}"), &foreign, "another-installation", false);

    let preview = run_binary(
        &["gc", "--dry-run", "--config", path.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{text} {}", String::from_utf8_lossy(&preview.stderr));
    assert!(
        text.contains(&format!("orphaned container (would be removed): wsd-{ghost}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("orphaned volume (would be removed): wsd-{ghost}-home")),
        "{text}"
    );
    assert!(!text.contains(&live), "a live workspace's objects are no orphans: {text}");
    assert!(!text.contains(&foreign), "another installation's objects are not ours: {text}");
    assert!(podman.exists("container", &format!("wsd-{ghost}")), "a dry run removes nothing");

    let (status, ran) = api.post("/api/v1/gc/run", json!({})).await;
    assert_eq!(status, 200, "{ran}");
    assert!(!podman.exists("container", &format!("wsd-{ghost}")));
    assert!(!podman.exists("volume", &format!("wsd-{ghost}-home")));
    assert_eq!(
        podman.state(&format!("wsd-{live}")).as_deref(),
        Some("running"),
        "the live one stays"
    );
    assert!(podman.exists("container", &format!("wsd-{foreign}")), "another installation's stays");
    let (_, audit) = api.get("/api/v1/audit?limit=100").await;
    assert!(audit.to_string().contains(&format!("wsd-{ghost}")), "{audit}");
    drop(daemon);
    podman.clean(&[live, ghost, foreign]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_and_restarted_leaves_running_workspaces_running_and_healthy() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let template = format!(
        "{}\n[[templates.presets]]\nname = \"default\"\n[templates.presets.prebuilds]\ninstances = 1\n",
        web_spec(r#"http = "http://{port.web}/""#)
    );
    let path = write_config(dir.path(), &config(dir.path(), &template, ""));
    let daemon = DaemonProcess::start(&path);
    let id = wait_for("a ready prebuild", Duration::from_secs(90), async || {
        workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy'").into_iter().next()
    })
    .await;
    let container = format!("wsd-{id}");
    let before = podman.ok(&["inspect", "--format", "{{.Id}}", &container]);
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(podman.state(&container).as_deref(), Some("running"), "the engine keeps it");

    let daemon = DaemonProcess::start(&path);
    // Several monitor ticks and reconcile cycles later nothing has changed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        podman.ok(&["inspect", "--format", "{{.Id}}", &container]),
        before,
        "same container"
    );
    assert_eq!(podman.state(&container).as_deref(), Some("running"));
    assert_eq!(workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy'"), [id]);
    assert_eq!(
        metric(&daemon, "workspaced_workspaces_unhealthy{template_name=\"web\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    drop(daemon);
    podman.clean(&workspaces(dir.path(), "1 = 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_containers_config_runs_a_pool_of_two_that_answer() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}", podman.socket.display());
    let data = dir.path().join("data");
    let daemon = DaemonProcess::start_with_env(
        &repo().join("config/containers.toml"),
        &[
            ("WORKSPACED_SERVER__LISTEN", "127.0.0.1:0"),
            ("WORKSPACED_STORAGE__DATA_DIR", data.to_str().unwrap()),
            ("WORKSPACED_LOG__FORMAT", "json"),
            ("WORKSPACED_RECONCILER__INTERVAL", "1s"),
            ("WORKSPACED_PROVISIONER__CONTAINER__SOCKET", &socket),
        ],
    );
    let ready = wait_for("two healthy prebuilds", Duration::from_secs(120), async || {
        let ids = workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy'");
        (ids.len() == 2).then_some(ids)
    })
    .await;
    let conn = rusqlite::Connection::open(data.join("workspaced.db")).unwrap();
    for id in &ready {
        let apps: String = conn
            .query_row("SELECT apps FROM workspaces WHERE id = ?1", [id], |row| row.get(0))
            .unwrap();
        let apps: Value = serde_json::from_str(&apps).unwrap();
        let url = apps[0]["url"].as_str().unwrap();
        assert_eq!(http_body(url).await.map(|(code, _)| code), Some(200), "{apps}");
        let memory =
            podman.ok(&["inspect", "--format", "{{.HostConfig.Memory}}", &format!("wsd-{id}")]);
        assert_eq!(memory, (256u64 << 20).to_string(), "the example's memory limit is applied");
    }
    drop(daemon);
    podman.clean(&workspaces(dir.path(), "1 = 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_parameters_change_the_spec_recreates_keeps_the_home_and_reports_it() {
    let podman = Podman::get();
    let dir = tempfile::tempdir().unwrap();
    // An exec probe this time, and a parameter that reaches the container's environment.
    let template = format!(
        "{}\n[[templates.parameters]]\nname = \"greeting\"\ndefault = \"hi\"\n\
         [[templates.presets]]\nname = \"default\"\n[templates.presets.prebuilds]\ninstances = 1\n",
        web_spec(r#"exec = ["test", "-f", "/www/healthz"]"#)
            .replace("GREETING = \"hello {workspace.id}\"", "GREETING = \"{param.greeting}\"")
    );
    let path = write_config(dir.path(), &config(dir.path(), &template, ""));
    let token = owner_token(&path);
    let daemon = DaemonProcess::start(&path);
    let api = Api::new(daemon.addr, Some(&token));
    let id = wait_for("a ready prebuild", Duration::from_secs(90), async || {
        workspaces(dir.path(), "agents_ready = 1 AND health = 'healthy'").into_iter().next()
    })
    .await;
    let container = format!("wsd-{id}");
    let before = podman.ok(&["inspect", "--format", "{{.Id}}", &container]);
    podman.ok(&["exec", &container, "sh", "-c", "echo from-the-prebuild > /home/workspace/note"]);

    let body = json!({ "template": "web", "preset": "default", "name": "mine", "parameters": { "greeting": "bye" } });
    let (status, claimed) = api.post("/api/v1/workspaces", body).await;
    assert_eq!((status, &claimed["claimed"]), (201, &json!(true)), "{claimed}");
    assert_eq!(claimed["workspace"]["id"], id.as_str());
    let workspace = wait_for("the claim build", Duration::from_secs(60), async || {
        let (_, workspace) = api.get(&format!("/api/v1/workspaces/{id}")).await;
        (workspace["latest_build"]["job_status"] == "succeeded").then_some(workspace)
    })
    .await;
    assert_ne!(podman.ok(&["inspect", "--format", "{{.Id}}", &container]), before, "recreated");
    assert_eq!(podman.ok(&["exec", &container, "sh", "-c", "echo $GREETING"]), "bye");
    assert_eq!(
        podman.ok(&["exec", &container, "cat", "/home/workspace/note"]),
        "from-the-prebuild"
    );
    assert_eq!(workspace["health"]["status"], "healthy", "{workspace}");
    let series = "workspaced_prebuilt_workspaces_resource_replacements_total{organization_name=\"default\",preset_name=\"default\",template_name=\"web\"}";
    assert_eq!(metric(&daemon, series).await, Some(1.0));
    let (_, builds) = api.get(&format!("/api/v1/workspaces/{id}/builds/2/logs")).await;
    assert!(builds.to_string().contains("is recreated: its spec changed (env)"), "{builds}");
    drop(daemon);
    podman.clean(&workspaces(dir.path(), "1 = 1"));
}

#[test]
fn a_bad_container_spec_is_refused_at_load_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[[templates]]\nname = \"web\"\nprovisioner = \"container\"\n[templates.provisioner_config]\nimage = \"{IMAGE}\"\nports = {{ web = 8080 }}\n[templates.provisioner_config.ready]\ntcp = \"ssh\"\n",
        binary_config(dir.path())
    );
    let path = write_config(dir.path(), &body);
    let checked = run_binary(
        &["check-config", "--config", path.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("templates[0].provisioner_config.ready.tcp"), "{stderr}");
    assert!(stderr.contains("\"ssh\" names no entry of ports"), "{stderr}");
}
