//! The `exec` backend: runs an operator-supplied executable per job, writes the request as
//! one JSON line on its stdin and reads JSON-lines messages from its stdout
//! (docs/provisioner-protocol.md).
//!
//! Owns the child process's whole life: it runs in its own process group, so stopping it
//! (cancel or timeout: SIGTERM, `kill_grace`, then SIGKILL) also stops whatever it
//! started, and the group is killed when the job ends for any reason. Every way a child
//! can misbehave ends the job with an error that says which: non-zero exit, malformed
//! JSON, no `complete`, output over `max_output_bytes`.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::ExecBackendConfig;
use crate::domain::job::SuccessReport;
use crate::domain::{App, LogLevel, LogLine, Replacement, Resource};
use crate::provisioner::protocol::{JobRequest, Message};
use crate::provisioner::{Backend, BoxFuture, JobIo, ProvisionerError};

pub struct ExecBackend {
    config: ExecBackendConfig,
    kill_grace: Duration,
}

/// What stdout said.
/// A `complete` message: state, resources, apps, error.
type Complete = (Option<String>, Vec<Resource>, Vec<App>, Option<String>);

#[derive(Default)]
struct Collected {
    complete: Option<Complete>,
    replacements: Vec<Replacement>,
    timings: Vec<crate::domain::Timing>,
}

/// Kills the child's process group when dropped, so nothing it started outlives the job.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.0 {
            // ESRCH (the group is gone) is the expected case after a normal exit.
            let _ = killpg(group, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

impl ExecBackend {
    pub fn new(config: ExecBackendConfig, kill_grace: Duration) -> Self {
        ExecBackend { config, kill_grace }
    }

    async fn execute(
        &self,
        request: &JobRequest,
        mut io: JobIo,
    ) -> Result<SuccessReport, ProvisionerError> {
        let command_name = self.config.command.display().to_string();
        let mut command = Command::new(&self.config.command);
        command
            .args(&self.config.args)
            // systemd's notify socket and watchdog are the daemon's, never a provisioner's.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(&self.config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.config.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|source| ProvisionerError::Spawn { command: command_name.clone(), source })?;
        let leader = child.id().and_then(|pid| i32::try_from(pid).ok());
        let group = GroupGuard(leader.map(Pid::from_raw));
        if let (Some(pid), Some(report)) = (leader, io.process_group.take())
            && let Some(started) = crate::provisioner::process::start_time(pid)
        {
            let _ = report.send((pid, started));
        }
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ProvisionerError::Io {
                what: format!("{command_name}: missing stdio pipes"),
                source: std::io::Error::other("pipe not captured"),
            });
        };
        let mut payload = serde_json::to_vec(request).map_err(|error| ProvisionerError::Io {
            what: "cannot encode the request".to_owned(),
            source: std::io::Error::other(error),
        })?;
        payload.push(b'\n');
        let limit = self.config.max_output_bytes;

        let write_request = async move {
            // A provisioner may exit without reading its request; that is its business.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        };
        let outcome = {
            let work = async {
                let read_stdout = async {
                    let result = read_messages(BufReader::new(stdout), limit, &io).await;
                    if result.is_err() {
                        // Malformed or oversized output: stop it now, not when it exits.
                        group.signal(Signal::SIGKILL);
                    }
                    result
                };
                let main = async {
                    let ((), collected) = tokio::join!(write_request, read_stdout);
                    let collected = collected?;
                    // stdout is closed; the process may still run (it closed stdout early).
                    let status = child.wait().await.map_err(|source| ProvisionerError::Io {
                        what: format!("cannot wait for {command_name}"),
                        source,
                    })?;
                    // Whatever it left running in its group would keep stderr open.
                    group.signal(Signal::SIGKILL);
                    Ok((collected, status))
                };
                tokio::join!(main, read_stderr(BufReader::new(stderr), limit, &io))
            };
            tokio::select! {
                result = work => Some(result),
                () = io.cancel.cancelled() => None,
            }
        };
        let Some((result, last_stderr)) = outcome else {
            self.stop(&mut child, &group).await;
            return Err(ProvisionerError::Canceled);
        };
        let (collected, status) = match result {
            Ok(done) => done,
            Err(error) => {
                let _ = child.wait().await;
                return Err(error);
            }
        };
        let reported_error = collected.complete.as_ref().and_then(|(_, _, _, error)| error.clone());
        if !status.success() {
            let status = match status.code() {
                Some(code) => format!("status {code}"),
                None => format!("{status}"),
            };
            return Err(ProvisionerError::ExitStatus {
                status,
                detail: reported_error.or(last_stderr),
            });
        }
        let Some((state, resources, apps, error)) = collected.complete else {
            return Err(ProvisionerError::NoComplete);
        };
        if let Some(error) = error {
            return Err(ProvisionerError::Reported(error));
        }
        Ok(SuccessReport {
            state,
            resources,
            replacements: collected.replacements,
            timings: collected.timings,
            apps,
            probed: false,
        })
    }

    /// SIGTERM to the group, `kill_grace` to exit, then SIGKILL.
    async fn stop(&self, child: &mut Child, group: &GroupGuard) {
        group.signal(Signal::SIGTERM);
        if tokio::time::timeout(self.kill_grace, child.wait()).await.is_err() {
            group.signal(Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

impl Backend for ExecBackend {
    fn run<'a>(
        &'a self,
        request: &'a JobRequest,
        io: JobIo,
    ) -> BoxFuture<'a, Result<SuccessReport, ProvisionerError>> {
        Box::pin(self.execute(request, io))
    }
}

/// Reads one line of at most `remaining` bytes (plus its newline); `None` at end of input.
/// Errs with `OutputTooLarge` when the line would pass the limit.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    remaining: &mut u64,
    limit: u64,
) -> Result<Option<Vec<u8>>, ProvisionerError> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(remaining.saturating_add(1))
        .read_until(b'\n', &mut line)
        .await
        .map_err(|source| ProvisionerError::Io {
            what: "cannot read provisioner output".to_owned(),
            source,
        })?;
    if read == 0 {
        return Ok(None);
    }
    if read as u64 > *remaining {
        return Err(ProvisionerError::OutputTooLarge { limit });
    }
    *remaining -= read as u64;
    Ok(Some(line))
}

async fn read_messages<R: AsyncBufRead + Unpin>(
    mut reader: R,
    limit: u64,
    io: &JobIo,
) -> Result<Collected, ProvisionerError> {
    let mut remaining = limit;
    let mut collected = Collected::default();
    let mut line_number = 0;
    while let Some(line) = read_line(&mut reader, &mut remaining, limit).await? {
        line_number += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let message: Message = serde_json::from_str(text).map_err(|error| {
            ProvisionerError::Malformed { line: line_number, reason: error.to_string() }
        })?;
        match message {
            Message::Log { level, stage, output } => {
                let _ = io.logs.send(LogLine { level, stage, output }).await;
            }
            timing @ Message::Timing { .. } => collected.timings.extend(timing.into_timing()),
            Message::Replacement { resource, paths } => {
                collected.replacements.push(Replacement { resource, paths })
            }
            Message::Complete { state, resources, apps, error } => {
                if collected.complete.is_some() {
                    return Err(ProvisionerError::Malformed {
                        line: line_number,
                        reason: "a second \"complete\" message".to_owned(),
                    });
                }
                collected.complete = Some((state, resources, apps, error));
            }
        }
    }
    Ok(collected)
}

/// Forwards stderr as warn-level log lines (stage "stderr") up to `limit` bytes and
/// returns the last line, which usually says why a provisioner failed.
async fn read_stderr<R: AsyncBufRead + Unpin>(
    mut reader: R,
    limit: u64,
    io: &JobIo,
) -> Option<String> {
    let mut remaining = limit;
    let mut last = None;
    loop {
        match read_line(&mut reader, &mut remaining, limit).await {
            Ok(Some(line)) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if text.is_empty() {
                    continue;
                }
                let _ = io.logs.send(LogLine::new(LogLevel::Warn, "stderr", text.clone())).await;
                last = Some(text);
            }
            Ok(None) => return last,
            Err(_) => {
                let _ = io
                    .logs
                    .send(LogLine::new(
                        LogLevel::Warn,
                        "stderr",
                        format!("stderr past {limit} bytes is dropped"),
                    ))
                    .await;
                // Keep draining so the child never blocks on a full pipe.
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut reader, &mut sink).await;
                return last;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs the real stdout reader over `bytes`: it must end with a result, never a panic,
    /// whatever a provisioner prints.
    fn read(bytes: &[u8], limit: u64) -> Result<usize, ProvisionerError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let (logs, mut received) = tokio::sync::mpsc::channel(16);
            let io = JobIo {
                logs,
                cancel: tokio_util::sync::CancellationToken::new(),
                process_group: None,
            };
            let drain = tokio::spawn(async move { while received.recv().await.is_some() {} });
            let collected = read_messages(BufReader::new(bytes), limit, &io).await;
            drop(io);
            drain.await.unwrap();
            collected.map(|collected| collected.timings.len() + collected.replacements.len())
        })
    }

    fn messages() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop::sample::select(vec![
            "{\"type\":\"log\",\"output\":\"x\"}\n",
            "{\"type\":\"complete\",\"state\":null,\"resources\":[],\"error\":null}\n",
            "{\"type\":\"timing\",\"stage\":\"s\",\"started_at\":\"2025-06-02T12:00:00Z\",\"ended_at\":\"2025-06-02T11:00:00Z\"}\n",
            "{\"type\":\"replacement\",\"resource\":\"r\",\"paths\":[\"a\"]}\n",
            "{\"type\":\"log\",\"level\":\"loud\"}\n",
            "{\"type\":",
            "\n",
            "\u{0}\u{ff}",
            "{\"type\":\"complete\",\"resources\":[{\"name\":1}]}\n",
        ]);
        (prop::collection::vec(pieces, 0..12), prop::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(pieces, noise)| {
                let mut bytes: Vec<u8> = pieces.concat().into_bytes();
                bytes.extend(noise);
                bytes
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_exec_protocol_reader_never_panics(bytes in messages(), limit in 16u64..4096) {
            let _ = read(&bytes, limit);
        }

        #[test]
        fn arbitrary_bytes_are_an_error_or_a_result_never_a_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..2048)
        ) {
            let _ = read(&bytes, 1024);
        }
    }
}
