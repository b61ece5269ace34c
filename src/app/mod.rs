//! The application: builds every shared part once (listener, store, metrics, config
//! channel) and runs the tasks over them until shutdown.
//!
//! Owns start-up order and shutdown order. Start-up binds the listener *before* opening the
//! database, so a taken port never touches the file. Shutdown: mark not-ready, stop the
//! HTTP server and the loops (each finishes its current iteration), then let the publisher
//! deliver what was committed, all bounded by `server.shutdown_grace`. Meanwhile the runner
//! takes no new job and lets running ones finish for up to `provisioner.drain_timeout`;
//! what still runs then is stopped and recorded `interrupted`, and the next start
//! re-queues it (`resume_interrupted`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{self, Config, ConfigSource};
use crate::domain::LoopKind;
use crate::domain::event::PublishedEvent;
use crate::events::Publisher;
use crate::http::{self, HttpState};
use crate::loops::{self, LoopCtx};
use crate::metrics::{Metrics, MetricsError};
use crate::provisioner::runner::Runner;
use crate::store::{OpenReport, Store, StoreError, StoreOptions, jobs};
use crate::systemd::{LoopHealth, Notifier};
use crate::telemetry::LogControl;

mod reload;
use reload::apply_templates;
pub use reload::{ReloadError, Reloader};

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
    Lock(#[from] crate::store::lock::LockError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}
crate::has_store_error!(AppError);

impl AppError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AppError::Bind { .. } => "bind",
            AppError::Store(error) => error.metric_label(),
            AppError::Lock(_) => "lock",
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
    log: Option<LogControl>,
    gc_trigger: Arc<tokio::sync::Notify>,
    notifier: Arc<Notifier>,
    health: LoopHealth,
    /// Activity gate and the app proxy's upstream connections (shared by every loop ctx).
    activity: Arc<crate::activity::Tracker>,
    /// Whether the reconciler's first cycle runs at start (tests that drive cycles turn it off).
    initial_reconcile: bool,
    /// Held until the app is dropped (after shutdown).
    _lock: crate::store::lock::DataDirLock,
}

async fn resume_interrupted(
    store: &Store,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<crate::store::builds::Resumed>, AppError> {
    let resumed = store
        .write(move |tx| crate::store::builds::resume_interrupted(tx, now))
        .await
        .map_err(|error| match error {
            crate::store::builds::BuildError::Store(error) => AppError::Store(error),
            other => AppError::Store(StoreError::Corrupt {
                what: "an interrupted build".to_owned(),
                reason: other.to_string(),
            }),
        })?;
    for build in &resumed {
        tracing::info!(
            interrupted_job_id = %build.interrupted_job_id,
            workspace_id = %build.queued.workspace_id,
            transition = %build.queued.transition,
            cleaned_up = build.cleaned_up,
            "interrupted build re-queued"
        );
    }
    Ok(resumed)
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
        // One daemon per data directory, before the database is touched.
        let lock = crate::store::lock::DataDirLock::acquire(&config.storage.data_dir)?;
        let (store, open_report) = Store::open(store_options(&config.storage))?;
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
        let installation = store.read_blocking(crate::store::installation_id)?;
        let runner = Runner::new(
            store.clone(),
            Arc::clone(&clock),
            metrics.provisioner.clone(),
            config.subscribe(),
            installation,
        );
        Ok(App {
            listener,
            activity: Arc::new(crate::activity::Tracker::new()),
            local_addr,
            store,
            open_report,
            metrics,
            clock,
            config,
            source,
            events,
            runner,
            log: None,
            gc_trigger: Arc::new(tokio::sync::Notify::new()),
            notifier: Arc::new(Notifier::disabled()),
            health: LoopHealth::default(),
            initial_reconcile: true,
            _lock: lock,
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
            activity: Arc::clone(&self.activity),
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
        Reloader {
            source: self.source.clone(),
            config: self.config.clone(),
            store: self.store.clone(),
            clock: Arc::clone(&self.clock),
            metrics: self.metrics.config.clone(),
            log: self.log.clone(),
            gc_trigger: Arc::clone(&self.gc_trigger),
            notifier: Arc::clone(&self.notifier),
        }
    }

    /// Tells systemd about readiness, reloads and shutdown (`Type=notify`), and pings its
    /// watchdog while the loops are alive.
    pub fn with_notifier(mut self, notifier: Notifier) -> App {
        self.notifier = Arc::new(notifier);
        self
    }

    /// The reconciler waits one interval before its first cycle, as the other loops do:
    /// for tests that run every cycle themselves (`loops::run_once`).
    pub fn without_initial_reconcile(mut self) -> App {
        self.initial_reconcile = false;
        self
    }

    /// Lets reloads change the log level.
    pub fn with_log_control(mut self, log: LogControl) -> App {
        self.log = Some(log);
        self
    }

    /// Re-queues the builds a crash or shutdown interrupted (a user's start, a claim, a
    /// stop, a delete) and cleans up interrupted prebuild creates. Runs at start, before
    /// any worker; tests call it after simulating a crash.
    pub async fn resume_interrupted(&self) -> Result<Vec<crate::store::builds::Resumed>, AppError> {
        resume_interrupted(&self.store, self.clock.now()).await
    }

    /// Runs the HTTP server, the loops and the publisher until `shutdown` fires, then stops
    /// them in order.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let config = Arc::clone(&self.config.borrow());
        let grace = config.server.shutdown_grace.as_duration();
        let addr = self.local_addr;
        let http_ctx = self.loop_ctx();
        let ctx = self.loop_ctx();
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| AppError::Bind { addr, source })?;

        // The file's templates are the truth: apply them before anything acts on them.
        apply_templates(&self.store, &self.clock, &self.metrics.config, &config).await?;
        // Autostart times depend on cron evaluation done in Rust: recompute them all once
        // (rows from before schema V3, a time-zone database update), then keep them current.
        self.store.write(|tx| crate::store::lifecycle::refresh_next_start_all(tx, None)).await?;

        let workers = TaskTracker::new();
        let workers_cancel = CancellationToken::new();
        let http_state = Arc::new(HttpState {
            ctx: http_ctx,
            runner: self.runner.clone(),
            events: self.events.clone(),
            shutdown: workers_cancel.clone(),
            ready: false.into(),
            limits: http::limits::Limits::new(
                config.api.rate_limit,
                config.api.rate_burst,
                config.api.max_streams_per_token,
            ),
            tasks: workers.clone(),
            proxy: http::proxy::Upstream::new(Arc::clone(&self.activity)),
        });
        workers.spawn(http::serve(
            listener,
            Arc::clone(&http_state),
            workers.clone(),
            workers_cancel.clone(),
            grace,
        ));
        log_gc_configuration(&config);
        // Jobs a previous process left running can never finish: mark them interrupted
        // before any worker starts, then carry on with what they were doing.
        self.runner.recover_orphans(true).await?;
        resume_interrupted(&self.store, self.clock.now()).await?;
        // The runner drains on its own clock: running jobs may outlive `shutdown_grace`.
        let runner_tasks = TaskTracker::new();
        let runner_abort = CancellationToken::new();
        self.runner.spawn(&runner_tasks, workers_cancel.clone(), runner_abort.clone());
        // The reconciler's first cycle runs before the daemon reports ready, so pools start
        // filling (and their gauges exist) from the first second; then every loop runs
        // every interval.
        if self.initial_reconcile {
            let _ = loops::run_once(LoopKind::Reconciler, &ctx).await;
        }
        for kind in LoopKind::ALL {
            let wake = (kind == LoopKind::Gc).then(|| Arc::clone(&self.gc_trigger));
            workers.spawn(loops::run_every_or_when_woken(
                kind,
                ctx.clone(),
                workers_cancel.clone(),
                wake,
                self.health.clone(),
            ));
        }
        // Re-checks running container workspaces (readiness probes, vanished containers).
        #[cfg(feature = "containers")]
        workers.spawn(crate::health::Monitor::new(ctx.clone()).run(workers_cancel.clone()));
        workers.spawn(crate::retention::task(
            self.store.clone(),
            Arc::clone(&self.clock),
            self.config.subscribe(),
            self.metrics.retention_pruned.clone(),
            workers_cancel.clone(),
        ));

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

        workers.spawn(
            crate::events::webhooks::Worker {
                store: self.store.clone(),
                clock: Arc::clone(&self.clock),
                config: self.config.subscribe(),
                events: self.events.subscribe(),
                metrics: self.metrics.api.clone(),
            }
            .run(workers_cancel.clone()),
        );

        workers.spawn(crate::systemd::watchdog(
            Arc::clone(&self.notifier),
            self.health.clone(),
            self.config.subscribe(),
            self.metrics.loops.clone(),
            workers_cancel.clone(),
        ));

        http_state.ready.store(true, Ordering::Release);
        tracing::info!(addr = %addr, database = %self.store.path().display(), "workspaced is ready");
        self.notifier.ready();

        shutdown.cancelled().await;
        tracing::info!("shutting down");
        self.notifier.stopping();
        http_state.ready.store(false, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;

        workers_cancel.cancel();
        workers.close();
        runner_tasks.close();
        let drain = self.config.borrow().provisioner.drain_timeout.as_duration();
        let kill_grace = self.config.borrow().provisioner.kill_grace.as_duration();
        let stop_tasks = async {
            if tokio::time::timeout_at(deadline, workers.wait()).await.is_err() {
                tracing::warn!(
                    tasks = workers.len(),
                    "shutdown grace elapsed; abandoning unfinished tasks"
                );
            }
        };
        tokio::join!(
            stop_tasks,
            drain_jobs(&self.runner, &runner_tasks, &runner_abort, drain, kill_grace)
        );
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

/// Lets running jobs finish for up to `drain`; then stops the rest (their backends get
/// `kill_grace`), which records them `interrupted` for the next start to re-queue.
async fn drain_jobs(
    runner: &Runner,
    tasks: &TaskTracker,
    abort: &CancellationToken,
    drain: Duration,
    kill_grace: Duration,
) {
    let running = runner.running_jobs();
    if running > 0 {
        tracing::info!(jobs = running, drain_timeout = ?drain, "waiting for running jobs to finish");
    }
    if tokio::time::timeout(drain, tasks.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(
        jobs = runner.running_jobs(),
        "drain timeout elapsed; stopping the jobs still running (recorded interrupted, re-queued at the next start)"
    );
    abort.cancel();
    // Completion writes retry for a few seconds after the backend stops.
    let bound = kill_grace + Duration::from_secs(5);
    if tokio::time::timeout(bound, tasks.wait()).await.is_err() {
        tracing::warn!("jobs did not stop in time; the next start marks them interrupted");
    }
}

/// The GC's effective configuration, one line each, so an operator sees at start what it
/// will do.
/// The store's options from `[storage]`.
pub fn store_options(storage: &config::StorageConfig) -> StoreOptions {
    StoreOptions {
        path: storage.database_path(),
        synchronous: storage.synchronous,
        busy_timeout: storage.busy_timeout.as_duration(),
        read_connections: storage.read_connections,
    }
}

fn log_gc_configuration(config: &Config) {
    let gc = &config.gc;
    tracing::info!(enabled = gc.enabled, dry_run = gc.dry_run, "gc: switches");
    tracing::info!(data_dir = %config.storage.data_dir.display(), "gc: workspace directories swept for orphans");
    tracing::info!(interval = %gc.interval, "gc: run interval (SIGUSR1 runs it now)");
    tracing::info!(ttl = %gc.ttl, basis = gc.basis.as_str(), "gc: deletes workspaces older than the ttl");
    tracing::info!(warn_before = %gc.warn_before, active_grace = %gc.active_grace, "gc: warning window and activity grace");
    tracing::info!(
        max_delete_fraction = %gc.max_delete_fraction,
        max_deletions_per_run = gc.max_deletions_per_run,
        "gc: safety valve"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stores_own_defaults_are_the_storage_sections_defaults() {
        let storage = config::StorageConfig::default();
        assert_eq!(store_options(&storage), StoreOptions::at(storage.database_path()));
    }
}
