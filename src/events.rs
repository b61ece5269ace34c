//! Events: what the daemon tells the outside world about state changes, and the publisher
//! task that delivers them.
//!
//! `Event` is a boundary type (persisted in the outbox, later sent over SSE and webhooks),
//! so its serde shape is part of the contract. Events are written by `WriteTx::emit` inside
//! the transaction that makes the change; the `Publisher` reads only committed outbox rows,
//! hands them to subscribers and marks them delivered. Nothing here writes domain state.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::{BuildReason, Transition};
use crate::metrics::OutboxMetrics;
use crate::store::{Store, StoreError, notifications, outbox};

/// A state change the outside world may care about. `kind` is the serde tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Event {
    #[serde(rename = "workspace.created")]
    WorkspaceCreated {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        template_id: String,
        name: String,
    },
    #[serde(rename = "workspace.deleted")]
    WorkspaceDeleted { workspace_id: String, organization_id: String, owner_id: String },
    /// A user claimed a ready prebuild.
    #[serde(rename = "workspace.claimed")]
    WorkspaceClaimed {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        preset_id: String,
    },
    /// A preset's newest prebuild builds all failed: no more are created until
    /// `workspaced preset reset` (template admins are notified).
    #[serde(rename = "preset.hard_limited")]
    PresetHardLimited { preset_id: String, organization_id: String, template_id: String },
    #[serde(rename = "build.queued")]
    BuildQueued { build: BuildRef },
    #[serde(rename = "build.started")]
    BuildStarted { build: BuildRef },
    #[serde(rename = "build.succeeded")]
    BuildSucceeded { build: BuildRef },
    #[serde(rename = "build.failed")]
    BuildFailed { build: BuildRef, error: String },
    #[serde(rename = "build.canceled")]
    BuildCanceled { build: BuildRef },
    #[serde(rename = "build.interrupted")]
    BuildInterrupted { build: BuildRef, reason: String },
    /// A build that claimed a prebuild had to replace a resource: the template defeats
    /// the prebuild (template admins are notified).
    #[serde(rename = "prebuild.resource_replaced")]
    ResourceReplaced {
        build: BuildRef,
        preset_id: Option<String>,
        resource: String,
        paths: Vec<String>,
    },
    /// The lifecycle executor decided a transition (or dormancy) for a workspace.
    #[serde(rename = "lifecycle.transition")]
    LifecycleTransition {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        transition: Option<Transition>,
        reason: String,
        becomes_dormant: bool,
    },
    /// The GC will delete this workspace at `deletes_at` unless it is used.
    #[serde(rename = "gc.warning")]
    GcWarning {
        workspace_id: String,
        organization_id: String,
        owner_id: String,
        deletes_at: String,
    },
    /// The GC queued the deletion of a workspace past its TTL.
    #[serde(rename = "gc.deleted")]
    GcDeleted { workspace_id: String, organization_id: String, owner_id: String, age_s: u64 },
    #[serde(rename = "config.applied")]
    ConfigApplied { templates_changed: u32, versions_created: u32 },
    /// A notification for people: to one user (`user_id`, e.g. a GC warning to the
    /// owner) or to the template admins of an organization (`user_id` is `None`, e.g. a
    /// hard-limited preset or a resource replacement).
    #[serde(rename = "notification")]
    Notification {
        notification_id: i64,
        notification: String,
        organization_id: Option<String>,
        template_id: Option<String>,
        user_id: Option<String>,
        payload: serde_json::Value,
    },
}

/// Identifies a build in events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRef {
    pub workspace_id: String,
    pub build_id: String,
    pub job_id: String,
    pub build_number: i64,
    pub transition: Transition,
    pub reason: BuildReason,
    pub organization_id: String,
    pub owner_id: String,
}

impl Event {
    /// The stable event kind, as stored in the outbox and used by filters.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::WorkspaceCreated { .. } => "workspace.created",
            Event::WorkspaceDeleted { .. } => "workspace.deleted",
            Event::WorkspaceClaimed { .. } => "workspace.claimed",
            Event::PresetHardLimited { .. } => "preset.hard_limited",
            Event::BuildQueued { .. } => "build.queued",
            Event::BuildStarted { .. } => "build.started",
            Event::BuildSucceeded { .. } => "build.succeeded",
            Event::BuildFailed { .. } => "build.failed",
            Event::BuildCanceled { .. } => "build.canceled",
            Event::BuildInterrupted { .. } => "build.interrupted",
            Event::ResourceReplaced { .. } => "prebuild.resource_replaced",
            Event::LifecycleTransition { .. } => "lifecycle.transition",
            Event::GcWarning { .. } => "gc.warning",
            Event::GcDeleted { .. } => "gc.deleted",
            Event::ConfigApplied { .. } => "config.applied",
            Event::Notification { .. } => "notification",
        }
    }

    /// Every kind, for validating filters.
    pub const KINDS: &'static [&'static str] = &[
        "workspace.created",
        "workspace.deleted",
        "workspace.claimed",
        "preset.hard_limited",
        "build.queued",
        "build.started",
        "build.succeeded",
        "build.failed",
        "build.canceled",
        "build.interrupted",
        "prebuild.resource_replaced",
        "lifecycle.transition",
        "gc.warning",
        "gc.deleted",
        "config.applied",
        "notification",
    ];

    fn build(&self) -> Option<&BuildRef> {
        match self {
            Event::BuildQueued { build }
            | Event::BuildStarted { build }
            | Event::BuildSucceeded { build }
            | Event::BuildFailed { build, .. }
            | Event::BuildCanceled { build }
            | Event::BuildInterrupted { build, .. }
            | Event::ResourceReplaced { build, .. } => Some(build),
            _ => None,
        }
    }

    /// The organization the event belongs to, for permission filtering; `None` = global.
    pub fn organization_id(&self) -> Option<&str> {
        match self {
            Event::WorkspaceCreated { organization_id, .. }
            | Event::WorkspaceDeleted { organization_id, .. }
            | Event::WorkspaceClaimed { organization_id, .. }
            | Event::PresetHardLimited { organization_id, .. }
            | Event::LifecycleTransition { organization_id, .. }
            | Event::GcWarning { organization_id, .. }
            | Event::GcDeleted { organization_id, .. } => Some(organization_id),
            Event::Notification { organization_id, .. } => organization_id.as_deref(),
            _ => self.build().map(|build| build.organization_id.as_str()),
        }
    }

    /// The user the event is about, for permission filtering; `None` = not user-specific.
    pub fn owner_id(&self) -> Option<&str> {
        match self {
            Event::WorkspaceCreated { owner_id, .. }
            | Event::WorkspaceDeleted { owner_id, .. }
            | Event::WorkspaceClaimed { owner_id, .. }
            | Event::LifecycleTransition { owner_id, .. }
            | Event::GcWarning { owner_id, .. }
            | Event::GcDeleted { owner_id, .. } => Some(owner_id),
            Event::Notification { user_id, .. } => user_id.as_deref(),
            _ => self.build().map(|build| build.owner_id.as_str()),
        }
    }
}

/// A committed event with its outbox id (monotonic, usable as an SSE event id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub event: Event,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serde_tag_is_the_kind() {
        let event = Event::WorkspaceDeleted {
            workspace_id: "ws-1".into(),
            organization_id: "org".into(),
            owner_id: "u".into(),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], event.kind());
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }
}
