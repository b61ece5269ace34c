//! The job runner: N workers take the most urgent pending job (people, then the lifecycle,
//! then prebuilds; oldest first within a class), run it on its backend, stream its logs
//! into SQLite in batches and complete it in one transaction with the build's effects.
//!
//! Owns job timeouts (cancel, kill grace, fail), cancellation (pending: at once; running:
//! the backend is stopped), the prebuild share (prebuild jobs never hold more than
//! `max_prebuild_jobs` workers) and orphan recovery (jobs a dead process left running are
//! failed at start and periodically). It decides nothing about *which* builds exist.

use crate::domain::TextEnum;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod logs;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::job::{AcquiredJob, CompletedJob, JobOutcome};
use crate::domain::{JobPriority, JobStatus, LogLevel, LogLine};
use crate::error::error_chain;
use crate::metrics::ProvisionerMetrics;
use crate::provisioner::protocol::JobRequest;
use crate::provisioner::{JobIo, ProvisionerError, backend_for};
use crate::store::jobs::{self, CancelResult};
use crate::store::{Store, StoreError};

/// Runs provisioner jobs. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: ProvisionerMetrics,
    config: watch::Receiver<Arc<Config>>,
    data_dir: PathBuf,
    /// This installation's id (`store::installation_id`), for backends that label objects.
    installation: String,
    /// Prefix of this process's worker ids; jobs held by other prefixes are orphans.
    instance_id: String,
    running_prebuilds: AtomicUsize,
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Workers inside `run_one`, from before they acquire a job until its completion is
    /// written (or given up): a running job of a worker not in here is an orphan.
    busy: Mutex<HashSet<String>>,
}

/// Marks a worker busy for as long as it lives.
struct BusyWorker<'a> {
    inner: &'a Inner,
    worker_id: String,
}

impl Drop for BusyWorker<'_> {
    fn drop(&mut self) {
        self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.worker_id);
    }
}

/// Delays between attempts of a job's completion write; after the last one the job is
/// failed in a minimal transaction.
const COMPLETION_RETRIES: [Duration; 3] =
    [Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(3)];

/// Releases a prebuild slot when the job ends.
struct PrebuildSlot<'a>(&'a AtomicUsize);

impl Drop for PrebuildSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runner {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        metrics: ProvisionerMetrics,
        config: watch::Receiver<Arc<Config>>,
        installation: String,
    ) -> Runner {
        let data_dir = config.borrow().storage.data_dir.clone();
        Runner {
            inner: Arc::new(Inner {
                store,
                clock,
                metrics,
                config,
                data_dir,
                installation,
                instance_id: uuid::Uuid::new_v4().to_string(),
                running_prebuilds: AtomicUsize::new(0),
                running: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Marks `interrupted` the running jobs no worker of this process holds: at start
    /// (`all`: every running job, since this process runs none yet; what is left of their
    /// exec provisioners is killed) and periodically (a job whose completion could not be
    /// written). An interrupted job is not a failure of its template.
    pub async fn recover_orphans(&self, all: bool) -> Result<Vec<CompletedJob>, StoreError> {
        let now = self.inner.clock.now();
        let inner = Arc::clone(&self.inner);
        let orphans = self
            .inner
            .store
            .write(move |tx| {
                // Read inside the write transaction: no worker can acquire a job meanwhile,
                // and a worker registers itself busy before it tries.
                let live = (!all)
                    .then(|| inner.busy.lock().unwrap_or_else(PoisonError::into_inner).clone());
                jobs::interrupt_orphans(tx, live.as_ref(), now)
            })
            .await?;
        let mut interrupted = Vec::with_capacity(orphans.len());
        for orphan in orphans {
            let job = orphan.job;
            self.inner.metrics.orphans_recovered.inc();
            self.record_finished(&job, None);
            let killed = orphan.process_group.is_some_and(|(group, started)| {
                crate::provisioner::process::kill_recorded_group(group, started)
            });
            tracing::warn!(
                job_id = %job.build.job_id,
                workspace_id = %job.build.workspace_id,
                transition = %job.build.transition,
                provisioner_killed = killed,
                "job was left running without a worker; marked interrupted"
            );
            interrupted.push(job);
        }
        Ok(interrupted)
    }

    /// Starts `provisioner.concurrency` workers and the periodic orphan check on `tracker`.
    /// When `stop` fires no worker takes another job; running jobs go on until `abort`
    /// fires, which stops their backends and records them `interrupted`.
    pub fn spawn(&self, tracker: &TaskTracker, stop: CancellationToken, abort: CancellationToken) {
        let concurrency = self.inner.config.borrow().provisioner.concurrency;
        for index in 0..concurrency {
            let worker_id = format!("{}/worker-{index}", self.inner.instance_id);
            tracker.spawn(self.clone().work(worker_id, stop.clone(), abort.clone()));
        }
        tracker.spawn(self.clone().check_orphans(stop));
    }

    /// Jobs this process is running now.
    pub fn running_jobs(&self) -> usize {
        self.lock_running().len()
    }

    async fn work(self, worker_id: String, stop: CancellationToken, abort: CancellationToken) {
        loop {
            if stop.is_cancelled() {
                break;
            }
            let poll = self.inner.config.borrow().provisioner.poll_interval.as_duration();
            match self.run_one(&worker_id, &abort).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(worker = %worker_id, error = %error_chain(&error), "job runner failed; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.inner.store.jobs_notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn check_orphans(self, shutdown: CancellationToken) {
        loop {
            let period = self.inner.config.borrow().provisioner.orphan_check_interval.as_duration();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(error) = self.recover_orphans(false).await {
                tracing::error!(error = %error_chain(&error), "orphaned job check failed");
            }
        }
    }

    /// Takes and runs one job, if there is one this worker may take. Tests call it to run
    /// jobs deterministically.
    pub async fn run_one(
        &self,
        worker_id: &str,
        shutdown: &CancellationToken,
    ) -> Result<Option<CompletedJob>, StoreError> {
        self.inner.busy.lock().unwrap_or_else(PoisonError::into_inner).insert(worker_id.to_owned());
        let _busy = BusyWorker { inner: &self.inner, worker_id: worker_id.to_owned() };
        let config = Arc::clone(&self.inner.config.borrow());
        let max_prebuild = config.provisioner.max_prebuild_jobs();
        // Reserve a prebuild slot before asking, so two workers cannot both take the last one.
        let before = self.inner.running_prebuilds.fetch_add(1, Ordering::AcqRel);
        let reserved = before < max_prebuild;
        // With two workers or more, one is the pool's while it has work: people's builds
        // go first everywhere else, but a backlog of them never stops the pool refilling.
        let prefer_prebuild = reserved && before < config.provisioner.reserved_prebuild_jobs();
        if !reserved {
            self.inner.running_prebuilds.fetch_sub(1, Ordering::AcqRel);
        }
        let now = self.inner.clock.now();
        let worker = worker_id.to_owned();
        let acquired = self
            .inner
            .store
            .write(move |tx| jobs::acquire_with(tx, &worker, reserved, prefer_prebuild, now))
            .await;
        let job = match acquired {
            Ok(Some(job)) => job,
            other => {
                if reserved {
                    self.inner.running_prebuilds.fetch_sub(1, Ordering::AcqRel);
                }
                self.update_pending().await;
                return other.map(|_| None);
            }
        };
        let _slot = if reserved && job.priority == JobPriority::Prebuild {
            Some(PrebuildSlot(&self.inner.running_prebuilds))
        } else {
            if reserved {
                self.inner.running_prebuilds.fetch_sub(1, Ordering::AcqRel);
            }
            None
        };
        // More jobs may be waiting: let another idle worker look.
        self.inner.store.wake_job_runner();
        self.update_pending().await;

        let token = shutdown.child_token();
        self.lock_running().insert(job.job_id.clone(), token.clone());
        self.inner.metrics.running.inc();
        let started = tokio::time::Instant::now();
        tracing::info!(
            job_id = %job.job_id,
            workspace_id = %job.build.workspace_id,
            workspace = %job.workspace_name,
            owner = %job.owner_name,
            template = %job.template_name,
            transition = %job.build.transition,
            reason = %job.build.reason,
            backend = %job.backend,
            "job started"
        );
        let outcome = self.execute(&job, &config, token, shutdown).await;
        self.inner.metrics.running.dec();
        self.lock_running().remove(&job.job_id);

        let final_line = match &outcome {
            JobOutcome::Succeeded(_) => LogLine::new(LogLevel::Info, "done", "build succeeded"),
            JobOutcome::Failed { error, .. } => {
                LogLine::new(LogLevel::Error, "done", format!("build failed: {error}"))
            }
            JobOutcome::Canceled { reason } => {
                LogLine::new(LogLevel::Warn, "done", format!("build canceled: {reason}"))
            }
            JobOutcome::Interrupted { reason } => {
                LogLine::new(LogLevel::Warn, "done", format!("build interrupted: {reason}"))
            }
        };
        let failure = match &outcome {
            JobOutcome::Failed { error, .. } => error.clone(),
            _ => String::new(),
        };
        let cap = config.provisioner.max_log_bytes;
        let completed = self.write_completion(&job.job_id, final_line, outcome, cap).await?;
        if let Some(completed) = &completed {
            self.record_finished(completed, Some(started.elapsed()));
            logs::finished(&job, completed, &failure);
        }
        Ok(completed)
    }

    /// Writes the job's completion, retrying (the disk may be full for a moment, another
    /// process may hold the lock, the write may even panic); when every attempt failed, the
    /// job is failed in a minimal transaction so it never stays `running`.
    async fn write_completion(
        &self,
        job_id: &str,
        final_line: LogLine,
        outcome: JobOutcome,
        cap: u64,
    ) -> Result<Option<CompletedJob>, StoreError> {
        let mut last_error = None;
        for delay in std::iter::once(Duration::ZERO).chain(COMPLETION_RETRIES) {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let (id, line, outcome) = (job_id.to_owned(), final_line.clone(), outcome.clone());
            let now = self.inner.clock.now();
            let written = self
                .inner
                .store
                .write(move |tx| {
                    // The closing line may pass the cap: it says how the job ended.
                    jobs::append_logs(tx, &id, &[line], cap.saturating_add(4096), now)?;
                    jobs::complete(tx, &id, &outcome, now)
                })
                .await;
            match written {
                Ok(completed) => return Ok(completed),
                Err(error) => {
                    tracing::warn!(job_id, error = %error_chain(&error), "cannot record the job's completion; retrying");
                    last_error = Some(error);
                }
            }
        }
        let reason = format!(
            "the job's completion could not be recorded: {}",
            last_error.as_ref().map(|error| error_chain(error)).unwrap_or_default()
        );
        let (id, now) = (job_id.to_owned(), self.inner.clock.now());
        let failed =
            self.inner.store.write(move |tx| jobs::fail_minimal(tx, &id, &reason, now)).await;
        match failed {
            Ok(_) => tracing::error!(job_id, "job failed: its completion could not be recorded"),
            // The periodic orphan check marks it interrupted once this worker lets go.
            Err(error) => {
                tracing::error!(job_id, error = %error_chain(&error), "cannot fail the job either; the orphan check will")
            }
        }
        Err(last_error
            .unwrap_or(StoreError::GroupCommit { reason: "completion not written".to_owned() }))
    }

    async fn execute(
        &self,
        job: &AcquiredJob,
        config: &Config,
        token: CancellationToken,
        shutdown: &CancellationToken,
    ) -> JobOutcome {
        let backend = match backend_for(
            &job.backend,
            &config.provisioner,
            &self.inner.data_dir,
            &self.inner.clock,
            &self.inner.installation,
        ) {
            Ok(backend) => backend,
            Err(error) => return failed(&error),
        };
        let request = JobRequest::from_job(job);
        let (logs, log_lines) = mpsc::channel(256);
        let (process_group, reported_group) = tokio::sync::oneshot::channel();
        let record_group = async {
            if let Ok(group) = reported_group.await {
                let id = job.job_id.clone();
                let written = self
                    .inner
                    .store
                    .write(move |tx| jobs::set_process_group(tx, &id, Some(group)))
                    .await;
                if let Err(error) = written {
                    tracing::warn!(error = %error_chain(&error), "cannot record the provisioner's process group");
                }
            }
        };
        let pump = self.pump_logs(job.job_id.clone(), log_lines, config.provisioner.max_log_bytes);
        let timeout = config.provisioner.job_timeout.as_duration();
        let finished = CancellationToken::new();
        let run = async {
            let io = JobIo { logs, cancel: token.clone(), process_group: Some(process_group) };
            let run = backend.run(&request, io);
            tokio::pin!(run);
            let outcome = tokio::select! {
                result = &mut run => (result, false),
                () = tokio::time::sleep(timeout) => {
                    // The backend stops its work (gracefully, then forcibly) and returns.
                    token.cancel();
                    (run.await, true)
                }
            };
            finished.cancel();
            outcome
        };
        // A cancel request may have come before this job's token was registered, or from
        // another process: watch the job's status too.
        let poll = config.provisioner.poll_interval.as_duration();
        let watch = async {
            loop {
                let id = job.job_id.clone();
                if let Ok(Some((JobStatus::Canceling, _))) =
                    self.inner.store.read(move |conn| jobs::status(conn, &id)).await
                {
                    token.cancel();
                    return;
                }
                tokio::select! {
                    () = finished.cancelled() => return,
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(poll) => {}
                }
            }
        };
        let ((result, timed_out), (), (), ()) = tokio::join!(run, pump, watch, record_group);
        match result {
            Ok(report) => JobOutcome::Succeeded(report),
            Err(_) if timed_out => {
                self.inner.metrics.timeouts.inc();
                failed(&ProvisionerError::TimedOut(timeout))
            }
            Err(ProvisionerError::Canceled) if shutdown.is_cancelled() => {
                JobOutcome::Interrupted { reason: "the daemon shut down during the job".to_owned() }
            }
            Err(ProvisionerError::Canceled) => {
                JobOutcome::Canceled { reason: "canceled by request".to_owned() }
            }
            Err(error) => failed(&error),
        }
    }

    /// Cancels a job: a pending one at once, a running one by stopping its backend.
    pub async fn cancel(&self, job_id: &str) -> Result<CancelResult, StoreError> {
        self.cancel_recorded(job_id, |_, _| Ok(())).await
    }

    /// `cancel`, with `record` run in the same transaction as the request (an audit entry
    /// commits with the cancel or not at all).
    pub async fn cancel_recorded<F>(
        &self,
        job_id: &str,
        record: F,
    ) -> Result<CancelResult, StoreError>
    where
        F: FnOnce(&mut crate::store::WriteTx<'_>, &CancelResult) -> Result<(), StoreError>
            + Send
            + 'static,
    {
        let now = self.inner.clock.now();
        let id = job_id.to_owned();
        let result = self
            .inner
            .store
            .write(move |tx| {
                let result = jobs::request_cancel(tx, &id, now)?;
                record(tx, &result)?;
                Ok::<_, StoreError>(result)
            })
            .await?;
        if result == CancelResult::Canceling
            && let Some(token) = self.lock_running().get(job_id)
        {
            token.cancel();
        }
        if let CancelResult::Canceled(job) = &result {
            self.record_finished(job, None);
        }
        Ok(result)
    }

    fn record_finished(&self, job: &CompletedJob, elapsed: Option<Duration>) {
        let metrics = &self.inner.metrics;
        let transition = job.build.transition.as_str();
        metrics.jobs.with_label_values(&[&job.backend, transition, job.status.as_str()]).inc();
        if let Some(elapsed) = elapsed {
            metrics
                .duration
                .with_label_values(&[&job.backend, transition])
                .observe(elapsed.as_secs_f64());
        }
        if let Some(labels) = &job.preset_labels {
            metrics
                .resource_replacements
                .with_label_values(&[
                    &labels.organization_name,
                    &labels.template_name,
                    &labels.preset_name,
                ])
                .inc_by(job.replacements.len() as u64);
        }
    }

    async fn update_pending(&self) {
        match self.inner.store.read(jobs::pending_summary).await {
            Ok((pending, oldest)) => {
                self.inner.metrics.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
                self.inner.metrics.oldest_pending.set(oldest.map_or(0, |ms| ms / 1000));
            }
            Err(error) => tracing::warn!(error = %error_chain(&error), "cannot count pending jobs"),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.inner.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn failed(error: &ProvisionerError) -> JobOutcome {
    JobOutcome::Failed { error: error_chain(error), code: error.metric_label().to_owned() }
}
