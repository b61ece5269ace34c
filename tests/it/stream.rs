//! The event stream (SSE with Last-Event-ID resume, permission filtering, notifications)
//! and webhook delivery (signature, retry after a 500, dead letters) over real HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use workspaced::auth::Role;
use workspaced::config::WebhookConfig;
use workspaced::config::duration::HumanDuration;
use workspaced::store::StoreError;

use crate::api::{api_daemon, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_filters_by_permission_and_resumes_after_a_disconnect() {
    let (daemon, api) =
        api_daemon(|config| config.outbox.poll_interval = HumanDuration::from_secs(1)).await;
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let bob = api.as_user(&user(&daemon, "bob", Role::Member, "default").await);
    assert_eq!(api.stream("/api/v1/events", &[]).await.0, 401);

    let (status, mut alice_stream) = alice.stream("/api/v1/events", &[]).await;
    assert_eq!(status, 200);
    let (_, mut bob_stream) = bob.stream("/api/v1/events", &[]).await;

    let (_, created) = alice
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "plain", "name": "one" }))
        .await;
    let workspace_id = created["workspace"]["id"].as_str().unwrap().to_owned();
    let (first_id, kind, data) = alice_stream.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(kind, "workspace.created");
    assert_eq!(data["workspace_id"], workspace_id.as_str());
    // Names beside the ids, as of the commit.
    assert_eq!(data["names"]["workspace"], "one", "{data}");
    assert_eq!(data["names"]["owner"], "alice", "{data}");
    assert_eq!(data["names"]["template"], "dev", "{data}");
    assert_eq!(data["names"]["organization"], "default", "{data}");
    let (_, kind, data) = alice_stream.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(kind, "build.queued");
    assert_eq!(data["names"]["workspace"], "one", "{data}");
    daemon.wait_idle().await;
    let mut last_seen = first_id;
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("build.succeeded") {
        let (id, kind, _) = alice_stream.next_event(Duration::from_secs(10)).await.unwrap();
        assert!(id > last_seen, "ids increase");
        last_seen = id;
        kinds.push(kind);
    }
    assert_eq!(kinds, ["build.started", "build.succeeded"]);

    // Disconnect; more happens meanwhile.
    drop(alice_stream);
    assert_eq!(
        alice.post(&format!("/api/v1/workspaces/{workspace_id}/stop"), json!({})).await.0,
        202
    );
    daemon.wait_idle().await;
    // A notification for alice only (GC warnings are queued this way).
    let alice_id = daemon.count("SELECT rowid FROM users WHERE username = 'alice'").await;
    daemon
        .store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO notifications (kind, user_id, organization_id, payload, created_at)
                 SELECT 'gc.warning', id, '00000000-0000-0000-0000-000000000001', '{\"workspace_id\":\"x\"}', 0
                   FROM users WHERE rowid = ?1",
                [alice_id],
            )
            .map_err(StoreError::from)?;
            // No event emitted: the publisher's poll (1 s here) dispatches it.
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();

    // Resume from the last id seen: exactly the missed events, in order, no repeats.
    let last = last_seen.to_string();
    let (status, mut resumed) = alice.stream("/api/v1/events", &[("Last-Event-ID", &last)]).await;
    assert_eq!(status, 200);
    let mut missed = Vec::new();
    while missed.last().map(|(_, kind, _): &(i64, String, Value)| kind.as_str())
        != Some("notification")
    {
        let event = resumed.next_event(Duration::from_secs(15)).await.unwrap();
        assert!(event.0 > last_seen, "no event is sent twice");
        last_seen = event.0;
        missed.push(event);
    }
    let kinds: Vec<&str> = missed.iter().map(|(_, kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["build.queued", "build.started", "build.succeeded", "notification"]);
    assert_eq!(missed[3].2["notification"], "gc.warning");
    assert_eq!(daemon.count("SELECT COUNT(*) FROM notifications WHERE status = 'sent'").await, 1);

    // Bob saw none of alice's workspace events nor her notification: his first event is
    // his own.
    let (_, created) = bob
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "plain", "name": "bobs" }))
        .await;
    let (_, kind, data) = bob_stream.next_event(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (kind.as_str(), &data["workspace_id"]),
        ("workspace.created", &created["workspace"]["id"])
    );
    assert_eq!(daemon.metric("workspaced_api_event_streams").await, Some(2.0));
    daemon.shutdown().await;
}

/// A webhook receiver on loopback: answers each request with the next status of
/// `statuses` (the last one repeats) and records what it got.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(hyper::HeaderMap, Bytes)>>>,
}

async fn receiver(statuses: Vec<u16>) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (recorded, statuses) = (Arc::clone(&recorded), statuses.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (recorded, statuses) = (Arc::clone(&recorded), statuses.clone());
                    async move {
                        let headers = request.headers().clone();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let index = {
                            let mut recorded = recorded.lock().unwrap();
                            recorded.push((headers, body));
                            recorded.len() - 1
                        };
                        let status = statuses[index.min(statuses.len() - 1)];
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Receiver { addr, requests }
}

fn webhook(name: &str, addr: SocketAddr, events: &[&str], max_attempts: u32) -> WebhookConfig {
    WebhookConfig {
        name: name.to_owned(),
        url: format!("http://{addr}/hook"),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        secret: "a-long-shared-secret".to_owned(),
        max_attempts,
        initial_backoff: HumanDuration::from_secs(60),
        max_backoff: HumanDuration::from_secs(600),
        timeout: HumanDuration::from_secs(5),
    }
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_after_a_500_and_dead_lettered() {
    let flaky = receiver(vec![500, 200]).await;
    let broken = receiver(vec![503]).await;
    let (flaky_addr, broken_addr) = (flaky.addr, broken.addr);
    let (daemon, api) = api_daemon(move |config| {
        config.webhooks = vec![
            webhook("flaky", flaky_addr, &["workspace.created"], 5),
            webhook("broken", broken_addr, &["workspace.*"], 2),
        ];
    })
    .await;
    let alice = api.as_user(&user(&daemon, "alice", Role::Member, "default").await);
    let owner = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);
    // Let the worker register its cursors (a new webhook starts at the end of the outbox).
    let mut registered = 0;
    for _ in 0..100 {
        if registered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        registered = daemon.count("SELECT COUNT(*) FROM webhook_cursors").await;
    }
    assert_eq!(registered, 2);

    let (_, created) = alice
        .post(
            "/api/v1/workspaces",
            json!({ "template": "dev", "preset": "plain", "name": "hooked" }),
        )
        .await;
    let workspace_id = created["workspace"]["id"].as_str().unwrap().to_owned();

    // First attempt: 500.
    let requests = Arc::clone(&flaky.requests);
    wait_for("the first attempt", || (requests.lock().unwrap().len() == 1).then_some(())).await;
    let (headers, body) = flaky.requests.lock().unwrap()[0].clone();
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["kind"], "workspace.created");
    assert_eq!(payload["event"]["workspace_id"], workspace_id.as_str());
    assert_eq!(payload["event"]["names"]["workspace"], "hooked", "{payload}");
    assert_eq!(headers["x-workspaced-event"], "workspace.created");
    assert_eq!(headers["idempotency-key"].to_str().unwrap(), payload["id"].to_string());
    // The signature: HMAC-SHA256(secret, "<timestamp>.<body>"), checked independently.
    let timestamp = headers["x-workspaced-timestamp"].to_str().unwrap();
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"a-long-shared-secret").unwrap();
    hmac::Mac::update(&mut mac, format!("{timestamp}.").as_bytes());
    hmac::Mac::update(&mut mac, &body);
    let expected: String =
        hmac::Mac::finalize(mac).into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(headers["x-workspaced-signature"].to_str().unwrap(), format!("sha256={expected}"));

    // Nothing more until the backoff has passed; then the retry succeeds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(flaky.requests.lock().unwrap().len(), 1, "the retry waits for its backoff");
    daemon.clock.advance(chrono::Duration::seconds(61));
    wait_for("the retry", || (requests.lock().unwrap().len() == 2).then_some(())).await;
    let (retry_headers, retry_body) = flaky.requests.lock().unwrap()[1].clone();
    assert_eq!(
        retry_headers["idempotency-key"], headers["idempotency-key"],
        "same idempotency key"
    );
    assert_eq!(retry_body, body);
    let delivered = async {
        for _ in 0..100 {
            if daemon.count("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook = 'flaky' AND status = 'delivered'").await == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(delivered.await);
    assert_eq!(
        daemon
            .metric("workspaced_webhook_deliveries_total{result=\"retry\",webhook=\"flaky\"}")
            .await
            .map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        daemon
            .metric("workspaced_webhook_deliveries_total{result=\"delivered\",webhook=\"flaky\"}")
            .await,
        Some(1.0)
    );

    // The broken receiver: two attempts, then a dead letter visible in the API.
    daemon.clock.advance(chrono::Duration::seconds(61));
    let mut dead = Value::Null;
    for _ in 0..100 {
        let (status, body) = owner.get("/api/v1/webhooks/deliveries?status=dead").await;
        assert_eq!(status, 200);
        if !body["deliveries"].as_array().unwrap().is_empty() {
            dead = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = &dead["deliveries"][0];
    assert_eq!(
        (letter["webhook"].as_str(), letter["attempts"].as_u64()),
        (Some("broken"), Some(2)),
        "{dead}"
    );
    assert_eq!(letter["last_status"], 503);
    assert!(
        daemon
            .metric("workspaced_webhook_deliveries_total{result=\"dead\",webhook=\"broken\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // Every configured webhook has every result's series, at 0 until it happens.
    assert_eq!(
        daemon
            .metric("workspaced_webhook_deliveries_total{result=\"dead\",webhook=\"flaky\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(alice.get("/api/v1/webhooks/deliveries").await.0, 403);
    // The filter: `flaky` only wanted workspace.created, so it got exactly one event.
    assert!(
        flaky
            .requests
            .lock()
            .unwrap()
            .iter()
            .all(|(h, _)| h["x-workspaced-event"] == "workspace.created")
    );
    daemon.shutdown().await;
}
