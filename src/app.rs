//! The application: builds every shared part once (listener, store, metrics, config
//! channel) and runs the tasks over them until shutdown.
//!
//! Owns start-up order and shutdown order. Start-up binds the listener *before* opening the
//! database, so a taken port never touches the file. Shutdown: mark not-ready, stop the
//! HTTP server and the loops (each finishes its current iteration), then let the publisher
//! deliver what was committed, all bounded by `server.shutdown_grace`. Running provisioner
//! jobs are canceled on shutdown (their backends stopped) and recorded as canceled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{self, Config, ConfigError, ConfigSource};
use crate::events::{PublishedEvent, Publisher};
use crate::http::{self, HttpState};
use crate::loops::{self, LoopCtx, LoopKind};
use crate::metrics::{Metrics, MetricsError};
use crate::provisioner::runner::Runner;
use crate::store::{OpenReport, Store, StoreError, StoreOptions, jobs};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr} (server.listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

impl AppError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AppError::Bind { .. } => "bind",
            AppError::Store(error) => error.metric_label(),
            AppError::Metrics(_) => "metrics",
        }
    }
}

/// A built application, ready to `run`.
pub struct App {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    store: Store,
    open_report: OpenReport,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    config: watch::Sender<Arc<Config>>,
    source: ConfigSource,
    events: broadcast::Sender<Arc<PublishedEvent>>,
    runner: Runner,
}

impl App {
    /// Binds the listener, then opens and migrates the store.
    pub fn build(
        config: Config,
        source: ConfigSource,
        clock: Arc<dyn Clock>,
    ) -> Result<App, AppError> {
        let addr = config.server.listen;
        let bind_error = |source| AppError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (store, open_report) = Store::open(StoreOptions::from_config(&config.storage))?;
        let metrics = Metrics::new()?;
        // Counters that must survive restarts start from what the database recorded.
        for (labels, count) in store.read_blocking(jobs::replacement_counts)? {
            metrics
                .provisioner
                .resource_replacements
                .with_label_values(&[
                    &labels.organization_name,
                    &labels.template_name,
                    &labels.preset_name,
                ])
                .inc_by(count);
        }
        let (config, _) = watch::channel(Arc::new(config));
        let (events, _) = broadcast::channel(1024);
        let runner = Runner::new(
            store.clone(),
            Arc::clone(&clock),
            metrics.provisioner.clone(),
            config.subscribe(),
        );
        Ok(App {
            listener,
            local_addr,
            store,
            open_report,
            metrics,
            clock,
            config,
            source,
            events,
            runner,
        })
    }

    /// The address the HTTP server listens on (the real port when `listen` used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What a loop iteration gets; tests use it to call `loops::run_once` directly.
    pub fn loop_ctx(&self) -> LoopCtx {
        LoopCtx {
            store: self.store.clone(),
            clock: Arc::clone(&self.clock),
            metrics: self.metrics.clone(),
            config: self.config.subscribe(),
        }
    }

    /// The job runner (tests run jobs with `Runner::run_one`).
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Committed events, as the publisher delivers them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<PublishedEvent>> {
        self.events.subscribe()
    }

    /// A handle that re-reads the config source and applies it (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader { source: self.source.clone(), config: self.config.clone() }
    }

    /// Runs the HTTP server, the loops and the publisher until `shutdown` fires, then stops
    /// them in order.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let config = Arc::clone(&self.config.borrow());
        let grace = config.server.shutdown_grace.as_duration();
        let addr = self.local_addr;
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| AppError::Bind { addr, source })?;

        let workers = TaskTracker::new();
        let workers_cancel = CancellationToken::new();
        let http_state = Arc::new(HttpState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            ready: false.into(),
        });
        workers.spawn(http::serve(
            listener,
            Arc::clone(&http_state),
            workers.clone(),
            workers_cancel.clone(),
            grace,
        ));
        let ctx = LoopCtx {
            store: self.store.clone(),
            clock: Arc::clone(&self.clock),
            metrics: self.metrics.clone(),
            config: self.config.subscribe(),
        };
        for kind in LoopKind::ALL {
            workers.spawn(loops::run_every(kind, ctx.clone(), workers_cancel.clone()));
        }
        // Jobs a previous process left running can never finish: fail them before any
        // worker starts, so nothing hangs forever.
        self.runner.recover_orphans(true).await?;
        self.runner.spawn(&workers, workers_cancel.clone());

        let publisher_tasks = TaskTracker::new();
        let publisher_cancel = CancellationToken::new();
        let publisher = Publisher::new(
            self.store.clone(),
            Arc::clone(&self.clock),
            self.events.clone(),
            self.metrics.outbox.clone(),
            config.outbox.batch_size,
        );
        publisher_tasks.spawn(
            publisher.run(publisher_cancel.clone(), config.outbox.poll_interval.as_duration()),
        );

        http_state.ready.store(true, Ordering::Release);
        tracing::info!(addr = %addr, database = %self.store.path().display(), "workspaced is ready");

        shutdown.cancelled().await;
        tracing::info!("shutting down");
        http_state.ready.store(false, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;

        workers_cancel.cancel();
        workers.close();
        if tokio::time::timeout_at(deadline, workers.wait()).await.is_err() {
            tracing::warn!(
                tasks = workers.len(),
                "shutdown grace elapsed; abandoning unfinished tasks"
            );
        }
        // Loops may have committed events in their last iteration: publish them now.
        publisher_cancel.cancel();
        publisher_tasks.close();
        let publisher_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        if tokio::time::timeout_at(publisher_deadline, publisher_tasks.wait()).await.is_err() {
            tracing::warn!(
                "outbox publisher did not finish; undelivered events stay queued for the next start"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Re-reads the config and hands it to everything that watches it.
#[derive(Clone)]
pub struct Reloader {
    source: ConfigSource,
    config: watch::Sender<Arc<Config>>,
}

impl Reloader {
    /// Loads and validates the config; on success applies it, on failure keeps the old one.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let new = config::load(&self.source)?;
        let old = Arc::clone(&self.config.borrow());
        if new.server != old.server
            || new.storage != old.storage
            || new.log != old.log
            || new.provisioner.concurrency != old.provisioner.concurrency
        {
            tracing::warn!(
                "[server], [storage], [log] and provisioner.concurrency changes take effect only after a restart"
            );
        }
        self.config.send_replace(Arc::new(new));
        Ok(())
    }
}
