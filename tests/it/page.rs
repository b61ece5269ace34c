//! The status page at `/`: login with an API token into an HttpOnly, SameSite=Strict
//! cookie, then pools, lifecycle, GC, failed builds and loops, each filtered by what the
//! viewer may read. Over raw HTTP, and in a real headless Chromium driven through the
//! DevTools protocol (log in through the form, see the pool, screenshot saved as an
//! artifact under target/artifacts/).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use workspaced::auth::Role;

use crate::api::{api_daemon, fill_pools, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_logs_in_with_a_token_cookie_and_shows_only_what_the_viewer_may_read() {
    let (daemon, api) = api_daemon(|_| {}).await;
    fill_pools(&daemon).await;
    let root = user(&daemon, "root", Role::Owner, "default").await;
    let outsider = user(&daemon, "olga", Role::Owner, "other").await;

    let (status, headers, _) = api.raw("GET", "/", None, &[]).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = text(&api, "/", None).await;
    assert!(page.contains("name=token") && !page.contains("<script"), "{page}");

    // A bad token: 401 and the form again, no cookie.
    let form = |token: &str| format!("token={token}");
    let (status, headers, _) = api
        .raw(
            "POST",
            "/login",
            Some(form("wsd_nope_nope").into_bytes()),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(status, 401);
    assert!(headers.get("set-cookie").is_none());
    // A good one: 303 to / with the session cookie.
    let (status, headers, _) = api
        .raw(
            "POST",
            "/login",
            Some(form(&root).into_bytes()),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/");
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();

    let page = text(&api, "/", Some(&session)).await;
    assert!(page.contains("Signed in as <b>root</b>"), "{page}");
    assert!(page.contains("<td>dev/small</td><td>2</td><td>2</td><td>2</td>"), "{page}");
    assert!(!page.contains("ops/small"), "another organization's pool: {page}");
    assert!(page.contains("<td>reconciler</td>"), "{page}");
    // The cookie works for the API too.
    let (status, _, _) = api.raw("GET", "/api/v1/workspaces", None, &[("cookie", &session)]).await;
    assert_eq!(status, 200);

    // Another organization's owner sees its own pool only.
    let other = format!("wsd_session={outsider}");
    let page = text(&api, "/", Some(&other)).await;
    assert!(page.contains("ops/small") && !page.contains("dev/small"), "{page}");
    // A revoked session shows the form with the reason.
    let (status, _, _) = api.raw("GET", "/", None, &[("cookie", "wsd_session=wsd_0_0")]).await;
    assert_eq!(status, 401);
    daemon.shutdown().await;
}

async fn text(api: &crate::client::Api, path: &str, cookie: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = cookie.map(|cookie| ("cookie", cookie)).into_iter().collect();
    let (_, _, body) = api.raw_text("GET", path, &headers).await;
    body
}

/// Chromium from `scripts/test` (Debian's `chromium`); the test fails when there is none.
fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser"] {
        if let Ok(output) = std::process::Command::new("which").arg(candidate).output()
            && output.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        }
    }
    panic!("chromium is not installed: scripts/test installs Debian's `chromium` package");
}

/// One DevTools call on a page's socket; its result.
async fn devtools<S>(socket: &mut S, id: &mut u64, method: &str, params: Value) -> Value
where
    S: futures_util::Sink<tokio_tungstenite::tungstenite::Message>
        + futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
    <S as futures_util::Sink<tokio_tungstenite::tungstenite::Message>>::Error: std::fmt::Debug,
{
    *id += 1;
    let request = json!({ "id": *id, "method": method, "params": params }).to_string();
    socket.send(tokio_tungstenite::tungstenite::Message::Text(request)).await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("chromium answers")
            .expect("the socket stays open")
            .unwrap();
        let Ok(text) = message.into_text() else { continue };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if value["id"] == *id {
            return value["result"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_chromium_logs_in_through_the_form_and_sees_the_pool() {
    let (daemon, _) = api_daemon(|_| {}).await;
    fill_pools(&daemon).await;
    let root = user(&daemon, "root", Role::Owner, "default").await;
    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new(chromium())
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--window-size=420,900")
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
    let mut stderr = tokio::io::BufReader::new(browser.stderr.take().unwrap());
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(stderr.read_line(&mut line).await.unwrap() > 0, "chromium exited");
            if let Some(url) = line.trim().strip_prefix("DevTools listening on ws://127.0.0.1:") {
                return url.split('/').next().unwrap().parse::<u16>().unwrap();
            }
        }
    })
    .await
    .expect("chromium starts its DevTools server");
    let devtools_api = crate::client::Api::new(format!("127.0.0.1:{port}").parse().unwrap(), None);
    let target = format!("/json/new?http://{}/", daemon.addr);
    let (status, _, page) = devtools_api.raw("PUT", &target, None, &[]).await;
    assert_eq!(status, 200, "{page}");
    let (mut socket, _) =
        tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap())
            .await
            .unwrap();
    let mut id = 0;
    let evaluate = |expression: &str| json!({ "expression": expression, "returnByValue": true });
    let body_text = "document.readyState === 'complete' ? document.body.innerText : ''";
    let mut seen = String::new();
    for _ in 0..100 {
        let result = devtools(&mut socket, &mut id, "Runtime.evaluate", evaluate(body_text)).await;
        seen = result["result"]["value"].as_str().unwrap_or_default().to_owned();
        if seen.contains("API token") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("API token"), "the login form: {seen}");
    let login = format!(
        "document.getElementById('token').value = {}; document.forms[0].submit(); true",
        json!(root)
    );
    devtools(&mut socket, &mut id, "Runtime.evaluate", evaluate(&login)).await;
    for _ in 0..100 {
        let result = devtools(&mut socket, &mut id, "Runtime.evaluate", evaluate(body_text)).await;
        seen = result["result"]["value"].as_str().unwrap_or_default().to_owned();
        if seen.contains("dev/small") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("Signed in as root"), "{seen}");
    assert!(seen.contains("dev/small"), "the pool after login: {seen}");
    // The cookie is HttpOnly: the page's scripts cannot read it.
    let cookie =
        devtools(&mut socket, &mut id, "Runtime.evaluate", evaluate("document.cookie")).await;
    assert_eq!(cookie["result"]["value"], "", "{cookie}");
    let shot =
        devtools(&mut socket, &mut id, "Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("status-page.png"), png).unwrap();
    let _ = browser.kill().await;
    daemon.shutdown().await;
}
