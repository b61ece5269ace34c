//! App proxy overhead (`cargo bench --bench proxy`): the same small GET straight to a
//! workspace app and through the daemon's app proxy (`/@{owner}/{workspace}/apps/{app}/`),
//! over loopback, each on one keep-alive connection, interleaved so both see the same
//! machine noise. The real daemon binary, a workspace built by an exec provisioner that
//! reports the app's URL, and an app in this process (a keep-alive HTTP/1.1 server that
//! answers `ok`). Prints median, p90, p99 and max of one run.

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{http, owner_token, pause, start};

const WARM_UP: usize = 500;
const REQUESTS: usize = 5_000;

/// The workspace app: keep-alive HTTP/1.1, `200 ok` to every request, one thread per
/// connection.
fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    // Request line and headers up to the blank line (no bodies: GETs).
                    let mut got_any = false;
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" && got_any {
                            break;
                        }
                        got_any = true;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";
                    if writer.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive client connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    /// GET `path`; the status and the body length.
    fn get(&mut self, path: &str, token: &str) -> (u16, usize) {
        write!(
            self.writer,
            "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, length)
    }
}

fn summary(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<12} median {:>7.1} µs   p90 {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs   (n = {})",
        us(at(0.5)),
        us(at(0.9)),
        us(at(0.99)),
        us(samples[samples.len() - 1]),
        samples.len()
    );
    at(0.5)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let app = app();
    let provisioner = dir.path().join("provisioner.sh");
    let complete = json!({
        "type": "complete", "state": null, "error": null,
        "resources": [{ "name": "app", "type": "bench", "agents": [{ "name": "main", "ready": true }] }],
        "apps": [{ "name": "web", "url": format!("http://{app}/") }],
    });
    std::fs::write(&provisioner, format!("#!/bin/sh\ncat >/dev/null\necho '{complete}'\n"))
        .unwrap();
    std::fs::set_permissions(&provisioner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n[log]\nformat = \"json\"\n\
         [api]\nrate_limit = 100000\nrate_burst = 100000\n\
         [provisioner.exec.bench]\ncommand = {:?}\n\
         [[templates]]\nname = \"app\"\nprovisioner = \"bench\"\n",
        dir.path().join("data"),
        provisioner,
    );
    let path = dir.path().join("workspaced.toml");
    std::fs::write(&path, config).unwrap();
    let token = owner_token(&path);
    let daemon = start(&path);
    let addr = daemon.1;
    let (_, created) =
        http(addr, "POST", "/api/v1/workspaces", &token, r#"{"template":"app","name":"dev"}"#);
    let id = created["workspace"]["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(addr, "GET", &format!("/api/v1/workspaces/{id}"), &token, "").1["status"]
        != "running"
    {
        assert!(Instant::now() < deadline, "the workspace never ran");
        pause(Duration::from_millis(50));
    }

    let mut direct = Client::connect(app);
    let mut proxied = Client::connect(addr);
    let mut direct_times = Vec::with_capacity(REQUESTS);
    let mut proxied_times = Vec::with_capacity(REQUESTS);
    for n in 0..WARM_UP + REQUESTS {
        let started = Instant::now();
        assert_eq!(direct.get("/x", &token), (200, 2));
        let direct_took = started.elapsed();
        let started = Instant::now();
        assert_eq!(proxied.get("/@bench/dev/apps/web/x", &token), (200, 2));
        let proxied_took = started.elapsed();
        if n >= WARM_UP {
            direct_times.push(direct_took);
            proxied_times.push(proxied_took);
        }
    }
    println!("GET of a 2-byte body over loopback, one keep-alive connection each, interleaved:");
    let direct_median = summary("direct", &mut direct_times);
    let proxied_median = summary("via proxy", &mut proxied_times);
    println!(
        "proxy overhead (median): {:.1} µs per request",
        (proxied_median.as_secs_f64() - direct_median.as_secs_f64()) * 1e6
    );
}
