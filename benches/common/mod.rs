//! What the benches that drive the real daemon binary share: start it, get an owner token,
//! talk HTTP to it, wait.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_workspaced");

/// Sleeps without `thread::sleep` (banned in this repo: waits are timeouts on a channel).
pub fn pause(duration: Duration) {
    let (_never, wait) = std::sync::mpsc::channel::<()>();
    let _ = wait.recv_timeout(duration);
}

/// One request on its own connection: the status and the JSON body (`Null` if none).
pub fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.get(9..12).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `workspaced serve` on `config` (which must log JSON and listen on port 0) and the address
/// it serves on; killed on drop.
pub struct Daemon(Child, pub SocketAddr);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(config: &Path) -> Daemon {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the daemon exited").unwrap();
        let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if value["fields"]["message"] == "http server listening" {
            break value["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Daemon(child, addr)
}

/// Migrates the database of `config` and creates an owner token for user `bench`.
pub fn owner_token(config: &Path) -> String {
    let migrated = Command::new(BIN).args(["migrate", "--config"]).arg(config).output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let token = Command::new(BIN)
        .args(["token", "create", "--user", "bench", "--role", "owner", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    assert!(!token.is_empty(), "token create printed no token");
    token
}
