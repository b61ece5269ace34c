//! systemd integration: the `sd_notify` protocol (READY, RELOADING, STOPPING, WATCHDOG,
//! STATUS) over `$NOTIFY_SOCKET`, and the watchdog that pings only while every loop is
//! alive.
//!
//! Owns the notify socket and the liveness rule. Without `$NOTIFY_SOCKET` (not started by
//! systemd, tests) every notification is a no-op. A loop is alive while its heartbeat is
//! fresh: the loop driver beats every second while it waits, and not while an iteration
//! runs, so an iteration stuck longer than `server.loop_stall_timeout` stops the pings and
//! systemd restarts the service (`WatchdogSec`, `Restart=on-failure`).

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::LoopKind;
use crate::metrics::LoopMetrics;

/// A connection to systemd's notify socket, if the service manager gave us one.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// No socket: every notification is dropped.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and
    /// `$WATCHDOG_USEC` / `$WATCHDOG_PID`, as systemd sets them.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = match path.strip_prefix('@') {
                Some(name) => abstract_address(name),
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok(),
            }?;
            match UnixDatagram::unbound() {
                Ok(socket) => Some((socket, address)),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot open a socket for systemd notifications");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        // A watchdog needs a socket to ping.
        let watchdog = socket.as_ref().and(watchdog);
        Notifier { socket, watchdog }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines); failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.socket
            && let Err(error) = socket.send_to_addr(state.as_bytes(), address)
        {
            tracing::warn!(error = %error, state, "cannot notify systemd");
        }
    }

    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=serving");
    }

    /// Before a reload; `ready` after it.
    pub fn reloading(&self) {
        let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|now| now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={monotonic}\nSTATUS=reloading the config"
        ));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    /// The watchdog timeout systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &str) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &str) -> Option<std::os::unix::net::SocketAddr> {
    None
}

/// Each loop's last heartbeat, in milliseconds since `base`.
#[derive(Debug, Clone)]
pub struct LoopHealth {
    base: Instant,
    beats: Arc<[AtomicU64; 3]>,
}

impl Default for LoopHealth {
    fn default() -> Self {
        LoopHealth { base: Instant::now(), beats: Arc::new([const { AtomicU64::new(0) }; 3]) }
    }
}

fn index(kind: LoopKind) -> usize {
    match kind {
        LoopKind::Reconciler => 0,
        LoopKind::Lifecycle => 1,
        LoopKind::Gc => 2,
    }
}

impl LoopHealth {
    /// The loop is alive (called by the loop driver while it waits).
    pub fn beat(&self, kind: LoopKind) {
        let millis = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.beats[index(kind)].store(millis, Ordering::Relaxed);
    }

    /// Time since each loop's last heartbeat.
    pub fn ages(&self) -> [(LoopKind, Duration); 3] {
        let now = self.base.elapsed();
        LoopKind::ALL.map(|kind| {
            let beat = Duration::from_millis(self.beats[index(kind)].load(Ordering::Relaxed));
            (kind, now.saturating_sub(beat))
        })
    }

    /// The loops whose heartbeat is older than `stall_after`.
    pub fn stalled(&self, stall_after: Duration) -> Vec<(LoopKind, Duration)> {
        self.ages().into_iter().filter(|(_, age)| *age > stall_after).collect()
    }
}

/// Exports heartbeat ages and, when systemd asked for a watchdog, pings it at half its
/// timeout — but only while no loop is stalled.
pub async fn watchdog(
    notifier: Arc<Notifier>,
    health: LoopHealth,
    config: tokio::sync::watch::Receiver<Arc<crate::config::Config>>,
    metrics: LoopMetrics,
    cancel: CancellationToken,
) {
    let period = notifier
        .watchdog()
        .map_or(Duration::from_secs(1), |timeout| (timeout / 2).min(Duration::from_secs(1)));
    let mut ticker = tokio::time::interval(period.max(Duration::from_millis(10)));
    let mut was_stalled = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (kind, age) in health.ages() {
            metrics.heartbeat_age.with_label_values(&[kind.name()]).set(age.as_secs_f64());
        }
        let stall_after = config.borrow().server.loop_stall_timeout.as_duration();
        let stalled = health.stalled(stall_after);
        if stalled.is_empty() {
            if was_stalled {
                tracing::info!("every loop is alive again; watchdog pings resumed");
            }
            was_stalled = false;
            if notifier.watchdog().is_some() {
                notifier.notify("WATCHDOG=1");
            }
        } else if !was_stalled {
            was_stalled = true;
            for (kind, age) in &stalled {
                tracing::error!(
                    r#loop = kind.name(),
                    stalled_for_s = age.as_secs(),
                    "loop stalled: an iteration has been running too long (server.loop_stall_timeout); withholding the systemd watchdog ping so the service is restarted"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_without_heartbeats_is_stalled_once_the_timeout_passes() {
        let health = LoopHealth::default();
        for kind in LoopKind::ALL {
            health.beat(kind);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        health.beat(LoopKind::Reconciler);
        health.beat(LoopKind::Gc);
        assert!(health.stalled(Duration::from_secs(60)).is_empty());
        tokio::time::advance(Duration::from_secs(40)).await;
        health.beat(LoopKind::Reconciler);
        health.beat(LoopKind::Gc);
        let stalled = health.stalled(Duration::from_secs(60));
        assert_eq!(stalled.len(), 1);
        assert_eq!(stalled[0].0, LoopKind::Lifecycle);
        assert_eq!(stalled[0].1, Duration::from_secs(70));
    }

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                std::os::unix::net::SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: None,
        };
        notifier.ready();
        let mut buffer = [0u8; 256];
        let size = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..size], b"READY=1\nSTATUS=serving");
    }
}
