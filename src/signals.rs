//! Unix signals: SIGTERM and SIGINT start a graceful shutdown; SIGHUP reloads the config;
//! SIGUSR1 runs the garbage collector now.
//!
//! Owns signal registration only. Handlers are registered before the daemon reports
//! ready, so an early SIGHUP cannot kill it (SIGHUP's default action terminates).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::app::Reloader;
use crate::error::error_chain;

/// The registered signal streams.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    user1: Signal,
}

impl Signals {
    /// Registers the handlers; must run inside the tokio runtime.
    pub fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Handles signals until a termination signal arrives (then cancels `shutdown`) or
    /// `shutdown` is cancelled by someone else.
    pub async fn run(mut self, shutdown: CancellationToken, reloader: Reloader) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = self.terminate.recv() => {
                    tracing::info!(signal = "SIGTERM", "termination requested");
                    break;
                }
                _ = self.interrupt.recv() => {
                    tracing::info!(signal = "SIGINT", "termination requested");
                    break;
                }
                _ = self.user1.recv() => {
                    tracing::info!(signal = "SIGUSR1", "gc run requested");
                    reloader.trigger_gc();
                }
                _ = self.hangup.recv() => match reloader.reload().await {
                    Ok(_) => tracing::info!(signal = "SIGHUP", "config reloaded"),
                    Err(error) => tracing::error!(
                        signal = "SIGHUP",
                        error = %error_chain(&error),
                        "config reload failed; keeping the previous config"
                    ),
                },
            }
        }
        shutdown.cancel();
    }
}
