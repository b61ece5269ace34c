//! Container backend figures, against a real Podman (scripts/podman-service) and the real
//! daemon binary: `cargo bench --bench containers`.
//!
//! - claim → URL answering, for a warm prebuild (what pools are for), against
//! - create → start → probe → URL answering of the same workspace without a pool (cold);
//! - the health monitor with 50 running, probed workspaces (probe interval 1s): its tick
//!   time and the daemon's CPU over 30 s.
//!
//! Prints medians (and min/max) of one run; the machine's noise is in the spread.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{http, owner_token, pause, start};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GET `url` (http://host:port/...) until it answers 200.
fn until_answers(url: &str, deadline: Instant) {
    let address = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    loop {
        if let Ok(mut stream) = TcpStream::connect(&address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        pause(Duration::from_millis(5));
    }
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn count(db: &Path, filter: &str) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    let sql = format!("SELECT COUNT(*) FROM workspaces WHERE deleted = 0 AND {filter}");
    conn.query_row(&sql, [], |row| row.get::<_, i64>(0)).unwrap() as usize
}

fn wait_count(db: &Path, filter: &str, wanted: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while count(db, filter) < wanted {
        assert!(Instant::now() < deadline, "fewer than {wanted} workspaces where {filter}");
        pause(Duration::from_millis(200));
    }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<44} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   (n = {})",
        ms(&samples[samples.len() / 2]),
        ms(&samples[0]),
        ms(&samples[samples.len() - 1]),
        samples.len()
    );
}

fn spec(name: &str, pool: u32) -> String {
    let presets = if pool > 0 {
        format!(
            "[[templates.presets]]\nname = \"default\"\n[templates.presets.prebuilds]\ninstances = {pool}\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"
[[templates]]
name = "{name}"
provisioner = "container"
[templates.provisioner_config]
image = "localhost/workspaced-web:1"
command = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
ports = {{ web = 8080 }}
[templates.provisioner_config.ready]
http = "http://{{port.web}}/healthz"
interval = "1s"
{presets}"#
    )
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let service = Command::new(repo().join("scripts/podman-service"))
        .arg(dir.path().join("podman"))
        .output()
        .unwrap();
    assert!(service.status.success(), "{}", String::from_utf8_lossy(&service.stderr));
    let socket = String::from_utf8_lossy(&service.stdout).trim().to_owned();
    let db = dir.path().join("data/workspaced.db");
    let _cleanup = Cleanup(db.clone());
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n[log]\nformat = \"json\"\n\
         [reconciler]\ninterval = \"1s\"\n[api]\nrate_limit = 10000\nrate_burst = 10000\n\
         [provisioner]\nconcurrency = 4\njob_timeout = \"2m\"\n\
         [provisioner.container]\nsocket = \"{socket}\"\n{}{}{}",
        dir.path().join("data"),
        spec("warm", 5),
        spec("cold", 0),
        spec("fleet", 0),
    );
    let path = dir.path().join("workspaced.toml");
    std::fs::write(&path, &config).unwrap();
    let token = owner_token(&path);
    let daemon = start(&path);
    let addr = daemon.1;
    let mut ids = Vec::new();

    wait_count(&db, "agents_ready = 1 AND health = 'healthy'", 5, Duration::from_secs(180));
    let mut warm = Vec::new();
    for n in 0..5 {
        let started = Instant::now();
        let body = json!({ "template": "warm", "preset": "default", "name": format!("warm{n}") });
        let (status, created) = http(addr, "POST", "/api/v1/workspaces", &token, &body.to_string());
        assert_eq!((status, &created["claimed"]), (201, &json!(true)), "{created}");
        ids.push(created["workspace"]["id"].as_str().unwrap().to_owned());
        until_answers(
            created["workspace"]["apps"][0]["url"].as_str().unwrap(),
            started + Duration::from_secs(30),
        );
        warm.push(started.elapsed());
    }
    let mut cold = Vec::new();
    for n in 0..5 {
        let started = Instant::now();
        let body = json!({ "template": "cold", "name": format!("cold{n}") });
        let (status, created) = http(addr, "POST", "/api/v1/workspaces", &token, &body.to_string());
        assert_eq!((status, &created["claimed"]), (201, &json!(false)), "{created}");
        let id = created["workspace"]["id"].as_str().unwrap().to_owned();
        let deadline = started + Duration::from_secs(60);
        let url = loop {
            let (_, workspace) = http(addr, "GET", &format!("/api/v1/workspaces/{id}"), &token, "");
            if let Some(url) = workspace["apps"][0]["url"].as_str() {
                break url.to_owned();
            }
            assert!(Instant::now() < deadline, "cold start never finished: {workspace}");
            pause(Duration::from_millis(10));
        };
        until_answers(&url, deadline);
        cold.push(started.elapsed());
        ids.push(id);
    }
    summary("claim of a warm prebuild -> URL answers", warm);
    summary("cold create + start + probe -> URL answers", cold);

    // 50 running, probed workspaces (the 5 claimed, the 5 refilled prebuilds, 5 cold, 35 more).
    for n in 0..35 {
        let body = json!({ "template": "fleet", "name": format!("fleet{n}") });
        let (status, created) = http(addr, "POST", "/api/v1/workspaces", &token, &body.to_string());
        assert_eq!(status, 201, "{created}");
        ids.push(created["workspace"]["id"].as_str().unwrap().to_owned());
    }
    wait_count(&db, "health = 'healthy'", 50, Duration::from_secs(300));
    pause(Duration::from_secs(3));
    let read = || {
        (
            metric(addr, "process_cpu_seconds_total"),
            metric(addr, "workspaced_health_tick_duration_seconds_sum"),
            metric(addr, "workspaced_health_tick_duration_seconds_count"),
            metric(addr, "workspaced_health_probes_total{result=\"pass\"}"),
        )
    };
    let before = read();
    let window = Duration::from_secs(30);
    pause(window);
    let after = read();
    let ticks = after.2 - before.2;
    println!(
        "health monitor, 50 probed workspaces (1s interval): {:.0} checks/s, mean tick {:.1} ms, daemon CPU {:.1}% of one core",
        (after.3 - before.3) / window.as_secs_f64(),
        (after.1 - before.1) / ticks.max(1.0) * 1000.0,
        (after.0 - before.0) / window.as_secs_f64() * 100.0,
    );
    drop(daemon);
}

/// Removes every container and volume of the bench's workspaces, also after a panic.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(conn) = rusqlite::Connection::open(&self.0) else { return };
        let Ok(mut statement) = conn.prepare("SELECT id FROM workspaces") else { return };
        let ids: Vec<String> = statement
            .query_map([], |row| row.get(0))
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default();
        for id in ids {
            for (kind, name) in
                [("container", format!("wsd-{id}")), ("volume", format!("wsd-{id}-home"))]
            {
                let _ = Command::new("podman")
                    .args([
                        "--runtime",
                        "runc",
                        "--cgroup-manager",
                        "cgroupfs",
                        kind,
                        "rm",
                        "-f",
                        &name,
                    ])
                    .output();
            }
        }
    }
}
