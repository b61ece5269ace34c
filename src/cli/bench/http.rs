//! The bench's side of HTTP and processes: `serve` as a child process (its address, its
//! RSS), a keep-alive HTTP/1.1 client, and the static server that gives `/metrics` its floor.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

fn io(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |error| BenchError::Run(format!("{what}: {error}"))
}

/// Waits without `thread::sleep` (a timeout on a channel nobody sends on).
pub fn pause(duration: Duration) {
    let (_never, wait) = std::sync::mpsc::channel::<()>();
    let _ = wait.recv_timeout(duration);
}

/// `workspaced serve` on the seeded config, listening on a free loopback port, logging
/// JSON (the address is read from its log), its reconciler every second, no API rate limit
/// in the way of the claim clients. Killed on drop.
pub struct Serve {
    child: Child,
    pub addr: SocketAddr,
}

impl Serve {
    pub fn start(config: &Path, data_dir: &Path) -> Result<Serve, BenchError> {
        let exe = std::env::current_exe().map_err(io("cannot find this executable"))?;
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .env("WORKSPACED_SERVER__LISTEN", "127.0.0.1:0")
            .env("WORKSPACED_STORAGE__DATA_DIR", data_dir)
            .env("WORKSPACED_LOG__FORMAT", "json")
            .env("WORKSPACED_LOG__LEVEL", "info")
            .env("WORKSPACED_RECONCILER__INTERVAL", "1s")
            .env("WORKSPACED_API__RATE_LIMIT", "100000")
            .env("WORKSPACED_API__RATE_BURST", "1000000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io("cannot start serve"))?;
        let stdout = child.stdout.take().ok_or_else(|| BenchError::Run("no stdout".into()))?;
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if value["fields"]["message"] == "http server listening"
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(value["fields"]["addr"].as_str().unwrap_or("").to_owned());
                }
            }
        });
        let mut serve = Serve { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let addr = receiver.recv_timeout(Duration::from_secs(300)).map_err(|_| {
            BenchError::Run("serve did not start listening within 5 minutes".into())
        })?;
        serve.addr = addr
            .parse()
            .map_err(|_| BenchError::Run(format!("serve logged a bad address {addr:?}")))?;
        Ok(serve)
    }

    /// (VmRSS, VmHWM) of the child in KiB.
    pub fn rss(&self) -> Result<(u64, u64), BenchError> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse().ok()
                })
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> Result<Connection, BenchError> {
        let stream = TcpStream::connect(addr).map_err(io("connect"))?;
        stream.set_nodelay(true).map_err(io("nodelay"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(io("timeout"))?;
        let reader = BufReader::new(stream.try_clone().map_err(io("clone"))?);
        Ok(Connection { reader, writer: stream })
    }

    /// The status and the body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &str,
    ) -> Result<(u16, String), BenchError> {
        write!(
            self.writer,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(io("send"))?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(io("read"))?;
        let status = line.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            if self.reader.read_line(&mut line).map_err(io("read"))? == 0 {
                return Err(BenchError::Run("the connection closed mid-response".into()));
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).map_err(io("read"))?;
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).map_err(io("read"))?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).map_err(io("read"))?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A GET on its own connection.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), BenchError> {
    Connection::open(addr)?.request("GET", path, "", "")
}

/// The median time to GET `body` from a static server over loopback, on new connections
/// as the scrapes were: the floor of a `/metrics` scrape of that size.
pub fn static_floor(body: &str, iterations: usize) -> Result<Duration, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let addr = listener.local_addr().map_err(io("bind"))?;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let served = iterations;
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(served).flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = (&stream).write_all(response.as_bytes());
        }
    });
    let mut samples = Vec::new();
    for _ in 0..iterations {
        let started = Instant::now();
        let (status, text) = get(addr, "/metrics")?;
        samples.push(started.elapsed());
        if status != 200 || text.len() != body.len() {
            return Err(BenchError::Run("the static server answered wrongly".into()));
        }
    }
    let _ = server.join();
    samples.sort();
    Ok(samples[samples.len() / 2])
}
