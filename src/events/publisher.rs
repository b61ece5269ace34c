//! The publisher task: reads only committed outbox rows, hands them to in-process
//! subscribers (SSE streams, the webhook worker) and marks them delivered. Nothing here
//! writes domain state.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::event::PublishedEvent;
use crate::metrics::OutboxMetrics;
use crate::store::{Store, StoreError, notifications, outbox};

/// Delivers committed outbox rows to in-process subscribers, oldest first, and marks them
/// delivered. Delivery is at-least-once: a crash between sending and marking re-sends.
/// Marking is a write (with its fsync), so under a stream of commits it is done at most
/// every `MARK_INTERVAL` (and at every idle drain and on shutdown); the publisher remembers
/// what it sent meanwhile, so nothing is sent twice by one process.
pub struct Publisher {
    store: Store,
    clock: Arc<dyn Clock>,
    sender: broadcast::Sender<Arc<PublishedEvent>>,
    metrics: OutboxMetrics,
    batch_size: usize,
    /// (sent through this id, marked delivered through this id, when last marked).
    progress: std::sync::Mutex<(i64, i64, Option<tokio::time::Instant>)>,
}

/// The longest sent events stay unmarked while commits keep coming.
const MARK_INTERVAL: Duration = Duration::from_millis(250);

impl Publisher {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        sender: broadcast::Sender<Arc<PublishedEvent>>,
        metrics: OutboxMetrics,
        batch_size: usize,
    ) -> Self {
        Publisher {
            store,
            clock,
            sender,
            metrics,
            batch_size,
            progress: std::sync::Mutex::new((0, 0, None)),
        }
    }

    /// Publishes every committed, undelivered event; returns how many.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut published = 0;
        // Notifications become events first, so they go out in this drain.
        let batch_size = self.batch_size;
        let now = self.clock.now();
        let has_pending = self.store.read(notifications::has_pending).await?;
        if has_pending {
            self.store.write(move |tx| notifications::dispatch(tx, batch_size, now)).await?;
        }
        loop {
            let batch_size = self.batch_size;
            let after = self.progress().0;
            let batch =
                self.store.read(move |conn| outbox::undelivered(conn, after, batch_size)).await?;
            let Some(last) = batch.last() else { break };
            let last_id = last.id;
            let count = batch.len();
            let now = self.clock.now();
            for event in batch {
                let lag = (now - event.created_at).to_std().unwrap_or_default();
                self.metrics.publish_lag.observe(lag.as_secs_f64());
                // No subscriber is not an error: the event is still delivered to everyone
                // who listens (nobody), and durable consumers read the outbox themselves.
                let _ = self.sender.send(Arc::new(event));
            }
            self.with_progress(|progress| progress.0 = last_id);
            self.metrics.published.inc_by(count as u64);
            published += count;
            if count < self.batch_size {
                break;
            }
        }
        self.mark(published == 0).await?;
        let pending = self.store.read(outbox::pending_count).await?;
        self.metrics.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        Ok(published)
    }

    fn progress(&self) -> (i64, i64, Option<tokio::time::Instant>) {
        *self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_progress(&self, f: impl FnOnce(&mut (i64, i64, Option<tokio::time::Instant>))) {
        f(&mut self.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Marks what was sent as delivered: when `force`d (idle, shutdown) or when the last
    /// mark is older than `MARK_INTERVAL`.
    async fn mark(&self, force: bool) -> Result<(), StoreError> {
        let (sent, marked, marked_at) = self.progress();
        let due = force || marked_at.is_none_or(|at| at.elapsed() >= MARK_INTERVAL);
        if sent <= marked || !due {
            return Ok(());
        }
        let now = self.clock.now();
        self.store.write(move |tx| outbox::mark_delivered_through(tx, sent, now)).await?;
        self.with_progress(|progress| {
            progress.1 = sent;
            progress.2 = Some(tokio::time::Instant::now());
        });
        Ok(())
    }

    /// Drains after every local commit that emitted events (`Store::outbox_notified`), every
    /// `poll_interval` (events written by other processes), and once more on shutdown.
    pub async fn run(self, cancel: CancellationToken, poll_interval: Duration) {
        let store = self.store.clone();
        loop {
            if let Err(error) = self.drain().await {
                self.metrics.errors.inc();
                tracing::error!(error = %error, "outbox publish failed; retrying on the next wake-up");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = store.outbox_notified() => {}
                () = tokio::time::sleep(poll_interval) => {}
            }
        }
        let last = async {
            self.drain().await?;
            self.mark(true).await
        };
        if let Err(error) = last.await {
            self.metrics.errors.inc();
            tracing::error!(error = %error, "final outbox publish on shutdown failed; events stay queued");
        }
    }
}
