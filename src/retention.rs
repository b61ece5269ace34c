//! The retention task: every `retention.interval`, prunes history older than
//! `[retention]` allows (`store::retention`), so the database stops growing once the
//! daemon has run longer than the longest retention.
//!
//! Owns the pacing: each batch is its own short write transaction (loops, claims and jobs
//! get the writer in between), a kind is pruned until a batch comes back short, and one
//! run does at most `MAX_BATCHES` batches of each kind (a backlog shrinks over a few runs).
//! A failing kind is logged and counted; the other kinds go on.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::time;
use crate::error::error_chain;
use crate::store::{Store, StoreError, retention};

/// Batches of one kind in one run, at most.
pub const MAX_BATCHES: usize = 100;

/// Rows pruned per kind by one run.
pub type RetentionReport = BTreeMap<&'static str, u64>;

/// One pruning run at `now`.
pub async fn run(store: &Store, config: &Config, now: DateTime<Utc>) -> RetentionReport {
    let policy = &config.retention;
    let batch = policy.batch_size;
    let webhooks: Vec<String> =
        config.webhooks.iter().map(|webhook| webhook.name.clone()).collect();
    let cutoff = |keep: crate::config::duration::HumanDuration| time::before(now, keep.as_secs());
    let (events, logs, audit, deliveries, workspaces) = (
        cutoff(policy.events),
        cutoff(policy.job_logs),
        cutoff(policy.audit_log),
        cutoff(policy.deliveries),
        cutoff(policy.deleted_workspaces),
    );
    type Prune = Box<dyn Fn(&rusqlite::Connection) -> Result<usize, StoreError> + Send + Sync>;
    let kinds: Vec<(&'static str, Prune)> = vec![
        // Deliveries first: they hold outbox rows.
        ("deliveries", {
            let webhooks = webhooks.clone();
            Box::new(move |conn| retention::deliveries(conn, deliveries, &webhooks, batch))
        }),
        ("notifications", Box::new(move |conn| retention::notifications(conn, deliveries, batch))),
        ("events", Box::new(move |conn| retention::outbox(conn, events, &webhooks, batch))),
        ("audit_log", Box::new(move |conn| retention::audit_log(conn, audit, batch))),
        ("job_logs", Box::new(move |conn| retention::job_logs(conn, logs, batch))),
        (
            "deleted_workspaces",
            Box::new(move |conn| retention::deleted_workspaces(conn, workspaces, batch)),
        ),
    ];
    let mut report = RetentionReport::new();
    for (kind, prune) in kinds {
        let prune = Arc::new(prune);
        let mut pruned = 0u64;
        for _ in 0..MAX_BATCHES {
            let step = Arc::clone(&prune);
            match store.write(move |tx| step(tx)).await {
                Ok(count) => {
                    pruned += count as u64;
                    if count < batch as usize {
                        break;
                    }
                }
                Err(error) => {
                    tracing::error!(kind, error = %error_chain(&error), "pruning history failed; retried next run");
                    break;
                }
            }
        }
        report.insert(kind, pruned);
    }
    report
}

/// Runs `run` every `retention.interval` until `shutdown`; the first run one interval
/// after start.
pub async fn task(
    store: Store,
    clock: Arc<dyn Clock>,
    config: watch::Receiver<Arc<Config>>,
    pruned: prometheus::IntCounterVec,
    shutdown: CancellationToken,
) {
    loop {
        let interval = config.borrow().retention.interval.as_duration();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let current = Arc::clone(&config.borrow());
        let report = run(&store, &current, clock.now()).await;
        for (kind, count) in &report {
            pruned.with_label_values(&[kind]).inc_by(*count);
        }
        if report.values().any(|count| *count > 0) {
            tracing::info!(pruned = ?report, "history pruned ([retention])");
        }
    }
}
