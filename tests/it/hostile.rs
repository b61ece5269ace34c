//! Hostile input: property-based fuzzing of every parser that reads what an operator, a
//! snapshot author or a client wrote (config, cron dialect, snapshot documents), and the
//! API under malformed requests. Nothing may panic; bad input is an error naming it, and
//! changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use workspaced::auth::Role;
use workspaced::planner::schedule::CronSchedule;
use workspaced::planner::snapshot::Snapshot;

const EXAMPLE_CONFIG: &str = include_str!("../../config/workspaced.toml");
const EXAMPLE_SNAPSHOT: &str =
    include_str!("../fixtures/planner/06-backoff-counts-every-failure-in-window.json");

/// `text` with byte edits at positions drawn from `edits`: replace, insert or delete.
fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for (position, kind, byte) in edits {
        if bytes.is_empty() {
            bytes.push(*byte);
            continue;
        }
        let at = position % bytes.len();
        match kind % 3 {
            0 => bytes[at] = *byte,
            1 => bytes.insert(at, *byte),
            _ => {
                bytes.remove(at);
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    let byte = prop::sample::select(b"0123456789\"'[]{}=.,:-_ #\nazdhms\\\x00\xff".to_vec());
    prop::collection::vec((any::<usize>(), any::<u8>(), byte), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_mangled_config_file_is_an_error_with_a_key_or_a_valid_config(edits in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workspaced.toml");
        std::fs::write(&path, mutate(EXAMPLE_CONFIG, &edits)).unwrap();
        let source = workspaced::config::ConfigSource { file: Some(path) };
        if let Err(error) = workspaced::config::load(&source) {
            prop_assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn a_mangled_snapshot_is_an_error_with_a_path_or_plans(edits in edits()) {
        let case: serde_json::Value = serde_json::from_str(EXAMPLE_SNAPSHOT).unwrap();
        let text = case["snapshot"].to_string();
        let bytes = mutate(&text, &edits);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(snapshot) = Snapshot::parse(&text) {
            let _ = workspaced::planner::plan(&snapshot);
        }
    }

    #[test]
    fn any_cron_text_is_parsed_or_refused_never_a_panic(
        text in "(CRON_TZ=[A-Za-z/_]{0,20} )?[0-9*,/ LW#?A-Z-]{0,30}"
    ) {
        let parsed = [
            CronSchedule::parse_weekly(&text),
            CronSchedule::parse_time_range(&text, chrono_tz::Tz::UTC),
        ];
        for schedule in parsed.into_iter().flatten() {
            let start = chrono::DateTime::from_timestamp(1_748_865_600, 0).unwrap();
            let _ = schedule.next(start);
            let _ = schedule.contains(start);
        }
    }
}

/// Sends raw bytes as a request and returns the status code, if any answer came.
fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // The server may answer (413) and close before the whole body is sent: the write then
    // fails, and the answer is still there to read.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_right_status_and_change_nothing() {
    let (daemon, api) = crate::api::api_daemon(|_| {}).await;
    let token = crate::api::user(&daemon, "root", Role::Owner, "default").await;
    let root = api.as_user(&token);
    let before = daemon.count("SELECT (SELECT COUNT(*) FROM workspaces) + (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM api_tokens)").await;
    let addr = daemon.addr;
    let post = move |body: Vec<u8>| {
        let mut request = format!(
            "POST /api/v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend(body);
        raw_request(addr, &request)
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let statuses = tokio::task::spawn_blocking(move || {
        vec![
            ("100k-deep JSON", post(deep)),
            ("invalid UTF-8", post(b"{\"template\":\"\xff\xfe\",\"name\":\"x\"}".to_vec())),
            ("oversized", post(vec![b' '; 2 << 20])),
            ("odd name", post(br#"{"template":"dev","name":"../../etc/passwd"}"#.to_vec())),
            ("control characters", post(b"{\"template\":\"dev\",\"name\":\"a\\u0000b\"}".to_vec())),
        ]
    })
    .await
    .unwrap();
    for (what, status) in statuses {
        assert!(matches!(status, Some(400 | 413)), "{what}: {status:?}");
    }
    // 1,000 bad tokens: each refused, none of them admitted or recorded.
    let bad = tokio::task::spawn_blocking(move || {
        (0..1000)
            .filter(|n| {
                let request = format!(
                    "GET /api/v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wsd_{n}_nope\r\nConnection: close\r\n\r\n"
                );
                raw_request(addr, request.as_bytes()) == Some(401)
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(bad, 1000);
    let after = daemon.count("SELECT (SELECT COUNT(*) FROM workspaces) + (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM api_tokens)").await;
    assert_eq!(before, after, "nothing was written");
    // Token lifetimes are bounded, not a panic.
    for expires in ["100000000d", "3651d"] {
        let (status, body) =
            root.post("/api/v1/tokens", json!({ "user": "root", "expires_in": expires })).await;
        assert_eq!((status, body["field"].as_str()), (400, Some("expires_in")), "{body}");
    }
    assert_eq!(root.get("/api/v1/workspaces").await.0, 200, "the API still answers");
    assert_eq!(daemon.get("/healthz").await.0, 200);
    daemon.shutdown().await;
}

#[test]
fn the_cli_refuses_an_unbounded_token_lifetime_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        crate::helpers::write_config(dir.path(), &crate::helpers::binary_config(dir.path()));
    let output = crate::helpers::run_binary(
        &[
            "token",
            "create",
            "--user",
            "root",
            "--role",
            "owner",
            "--expires",
            "100000000d",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--expires"), "{stderr}");
}
