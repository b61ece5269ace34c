//! What a loop iteration gets and gives back: the shared handles (`LoopCtx`), its report
//! and its error. Below the capabilities (pools, lifecycle, gc), which each own their
//! loop's iteration, and below `loops`, the driver that runs them.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use crate::activity::Tracker;
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::TextEnum;
use crate::domain::activity::ActivitySource;
use crate::metrics::Metrics;
use crate::store::lifecycle::{ACTIVITY_COALESCE_S, Activity};
use crate::store::{Store, StoreError};

/// Everything a loop iteration may use. Cheap to clone.
#[derive(Clone)]
pub struct LoopCtx {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// The live config; a reload sends a new value.
    pub config: watch::Receiver<Arc<Config>>,
    /// The activity gate and the app proxy's upstream connections.
    pub activity: Arc<Tracker>,
}

impl LoopCtx {
    /// Reports use of a workspace by `source` (`admit_activity`, then `record_activity`).
    pub async fn report_activity(
        &self,
        workspace_id: &str,
        source: ActivitySource,
    ) -> Option<Activity> {
        let now = self.admit_activity(workspace_id, source)?;
        self.record_activity(workspace_id, now, source).await
    }

    /// The in-memory gate: `Some(now)` when this report should be written (none for this
    /// workspace in the last minute on the daemon's clock); counted as `coalesced`
    /// otherwise. Cheap: callers on a hot path check it before they spawn the write.
    pub fn admit_activity(&self, workspace_id: &str, source: ActivitySource) -> Option<Now> {
        let now = self.clock.now();
        let window = TimeDelta::seconds(ACTIVITY_COALESCE_S);
        if self.activity.admit(workspace_id, now, window) {
            return Some(now);
        }
        self.metrics
            .proxy
            .activity_reports
            .with_label_values(&[source.as_str(), "coalesced"])
            .inc();
        None
    }

    /// Writes an admitted report: `last_used_at`, the source and the deadline bump, in
    /// `workspaced_activity_reports_total`. `None` when the write failed (logged; the
    /// gate lets the next use retry).
    pub async fn record_activity(
        &self,
        workspace_id: &str,
        now: Now,
        source: ActivitySource,
    ) -> Option<Activity> {
        let reports = &self.metrics.proxy.activity_reports;
        let id = workspace_id.to_owned();
        let written = self
            .store
            .write(move |tx| crate::store::lifecycle::report_activity(tx, &id, now, source))
            .await;
        match written {
            Ok(activity) => {
                let result = match activity {
                    Activity::Recorded { .. } => "recorded",
                    Activity::Coalesced | Activity::NotFound => "coalesced",
                };
                reports.with_label_values(&[source.as_str(), result]).inc();
                Some(activity)
            }
            Err(error) => {
                self.activity.forget(workspace_id);
                reports.with_label_values(&[source.as_str(), "failed"]).inc();
                tracing::warn!(workspace_id, source = source.as_str(), error = %crate::error::error_chain(&error), "cannot record workspace activity");
                None
            }
        }
    }
}

/// What one iteration saw and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickReport {
    /// Items the iteration looked at (presets, workspaces).
    pub examined: u64,
    /// Actions it took (builds enqueued, warnings sent).
    pub actions: u64,
}

/// Why an iteration failed. The loop logs it, counts it and goes on.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("{loop_name} iteration failed")]
    Store {
        loop_name: &'static str,
        #[source]
        source: StoreError,
    },
}

impl LoopError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            LoopError::Store { source, .. } => source.metric_label(),
        }
    }
}

/// `now` as the loops pass it on; kept as a type alias so signatures read clearly.
pub type Now = DateTime<Utc>;
