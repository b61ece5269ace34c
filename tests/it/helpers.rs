//! Shared test harness: an in-process daemon with a manual clock (`TestDaemon`), the real
//! binary as a child process (`DaemonProcess`), and a tiny HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use workspaced::app::App;
use workspaced::clock::ManualClock;
use workspaced::config::{Config, ConfigSource};
use workspaced::domain::LoopKind;
use workspaced::loops::{self, LoopCtx, TickReport};
use workspaced::store::Store;

pub const BIN: &str = env!("CARGO_BIN_EXE_workspaced");

/// The start of every test's manual clock.
pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-02T12:00:00Z").unwrap().to_utc()
}

/// A minimal HTTP/1.1 GET; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// Retries `probe` until it returns `Some` or `timeout` passes. Waits on a channel, not a
/// sleep, between attempts.
pub fn eventually<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let (_never, pause) = mpsc::channel::<()>();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        let _ = pause.recv_timeout(Duration::from_millis(50));
    }
}

/// The value of the first sample of `metric` (exact name and labels) in a scrape.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A daemon inside the test process: real store file, real HTTP on a free loopback port,
/// manual clock. Loops run on their (long) timers; tests call `tick` instead of waiting.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub store: Store,
    pub clock: Arc<ManualClock>,
    pub ctx: LoopCtx,
    pub runner: workspaced::provisioner::runner::Runner,
    pub reloader: workspaced::app::Reloader,
    pub metrics: workspaced::metrics::Metrics,
    pub app_events:
        tokio::sync::broadcast::Receiver<Arc<workspaced::domain::event::PublishedEvent>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestDaemon {
    pub async fn spawn() -> TestDaemon {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        Self::spawn_in(tempfile::tempdir().unwrap(), adjust).await
    }

    /// A daemon on `dir` (a restart: hand it the `dir` of one that was shut down).
    pub async fn spawn_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.storage.data_dir = dir.path().join("data");
        config.provisioner.local.build_duration =
            workspaced::config::duration::HumanDuration::from_secs(0);
        // Shutdown interrupts running jobs at once unless a test asks for a drain.
        config.provisioner.drain_timeout =
            workspaced::config::duration::HumanDuration::from_secs(0);
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(start_time()));
        // Tests run every reconcile cycle themselves (`tick`).
        let app = App::build(config, ConfigSource { file: None }, clock.clone())
            .unwrap()
            .without_initial_reconcile();
        let addr = app.local_addr();
        let store = app.store().clone();
        let ctx = app.loop_ctx();
        let runner = app.runner().clone();
        let reloader = app.reloader();
        let metrics = app.metrics().clone();
        let app_events = app.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { app.run(shutdown).await.unwrap() }
        });
        let daemon = TestDaemon {
            dir,
            addr,
            store,
            clock,
            ctx,
            runner,
            reloader,
            metrics,
            app_events,
            shutdown,
            task,
        };
        daemon.wait_ready().await;
        daemon
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let (addr, path) = (self.addr, path.to_owned());
        tokio::task::spawn_blocking(move || http_get(addr, &path)).await.unwrap()
    }

    async fn wait_ready(&self) {
        let addr = self.addr;
        tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(10), "/readyz", || {
                (http_get(addr, "/readyz").0 == 200).then_some(())
            })
        })
        .await
        .unwrap();
    }

    pub async fn tick(&self, kind: LoopKind) -> TickReport {
        loops::run_once(kind, &self.ctx).await.unwrap()
    }

    pub async fn shutdown(self) {
        self.shutdown_keeping_dir().await;
    }

    /// Shuts down and hands back the data directory, for a restart with `spawn_in`.
    pub async fn shutdown_keeping_dir(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.unwrap().unwrap();
        self.dir
    }
}

/// Writes a config file for the binary into `dir` and returns its path.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("workspaced.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// A config for the binary: temp data dir, free port, JSON logs, short intervals.
pub fn binary_config(dir: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n[log]\nformat = \"json\"\n\
         [reconciler]\ninterval = \"1s\"\n[lifecycle]\ninterval = \"1s\"\n[gc]\ninterval = \"1s\"\n",
        dir.join("data")
    )
}

/// Issues an owner token for user `root` with the CLI, against the config at `config`.
pub fn owner_token(config: &Path) -> String {
    // Only `serve` and `migrate` create a database.
    let migrated = run_binary(
        &["migrate", "--config", config.to_str().unwrap()],
        &[],
        Duration::from_secs(20),
    );
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let issued = run_binary(
        &[
            "token",
            "create",
            "--user",
            "root",
            "--role",
            "owner",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    );
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    String::from_utf8_lossy(&issued.stdout).trim().to_owned()
}

/// The `workspaced` binary running as a child process.
pub struct DaemonProcess {
    pub addr: SocketAddr,
    pid: Pid,
    exit: mpsc::Receiver<ExitStatus>,
    pub logs: mpsc::Receiver<serde_json::Value>,
}

impl DaemonProcess {
    /// Starts `workspaced serve --config CONFIG` and waits for its "listening" log line.
    pub fn start(config: &Path) -> DaemonProcess {
        Self::start_with_env(config, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> DaemonProcess {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child: Child = command.spawn().unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let stdout = child.stdout.take().unwrap();
        let (log_sender, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = log_sender.send(value);
                }
            }
        });
        let (exit_sender, exit) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_sender.send(status);
            }
        });
        let mut process = DaemonProcess { addr: "0.0.0.0:0".parse().unwrap(), pid, exit, logs };
        let line = process.wait_for_log("http server listening", Duration::from_secs(30));
        process.addr = line["fields"]["addr"].as_str().unwrap().parse().unwrap();
        process
    }

    /// Waits for a log line whose message is `message`.
    pub fn wait_for_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line["fields"]["message"] == message => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line {message:?} within {timeout:?}"),
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid, signal).unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        self.exit.recv_timeout(timeout).unwrap_or_else(|_| {
            let _ = kill(self.pid, Signal::SIGKILL);
            panic!("daemon did not exit within {timeout:?}")
        })
    }

    pub fn pid_for_tests(&self) -> i32 {
        self.pid.as_raw()
    }

    pub fn is_running(&self) -> bool {
        matches!(self.exit.try_recv(), Err(mpsc::TryRecvError::Empty))
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // Never leave a daemon behind when a test fails half-way.
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// Runs the binary to completion (killing it after `timeout`).
pub fn run_binary(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG").stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("workspaced {args:?} did not finish within {timeout:?}");
        }
    }
}

impl TestDaemon {
    pub fn clock_now(&self) -> DateTime<Utc> {
        use workspaced::clock::Clock;
        self.clock.now()
    }

    /// Reports activity on `workspace_id` at the clock's now, as the API does.
    pub async fn report_activity(
        &self,
        workspace_id: &str,
    ) -> workspaced::store::lifecycle::Activity {
        let (id, now) = (workspace_id.to_owned(), self.clock_now());
        self.store
            .write(move |tx| {
                workspaced::store::lifecycle::report_activity(
                    tx,
                    &id,
                    now,
                    workspaced::domain::activity::ActivitySource::Api,
                )
            })
            .await
            .unwrap()
    }
}

impl TestDaemon {
    /// Waits until no provisioner job is pending or running.
    pub async fn wait_idle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let busy: i64 = self
                .store
                .read(|conn| {
                    Ok(conn.query_row(
                        "SELECT COUNT(*) FROM provisioner_jobs WHERE status IN ('pending', 'running', 'canceling')",
                        [],
                        |row| row.get(0),
                    )?)
                })
                .await
                .unwrap();
            if busy == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{busy} jobs still busy after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a series in a scrape of /metrics.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, series)
    }

    /// Counts rows with a one-value SQL query.
    pub async fn count(&self, sql: &str) -> i64 {
        let sql = sql.to_owned();
        self.store.read(move |conn| Ok(conn.query_row(&sql, [], |row| row.get(0))?)).await.unwrap()
    }
}
