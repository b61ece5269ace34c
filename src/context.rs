//! What a loop iteration gets and gives back: the shared handles (`LoopCtx`), its report
//! and its error. Below the capabilities (pools, lifecycle, gc), which each own their
//! loop's iteration, and below `loops`, the driver that runs them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Everything a loop iteration may use. Cheap to clone.
#[derive(Clone)]
pub struct LoopCtx {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// The live config; a reload sends a new value.
    pub config: watch::Receiver<Arc<Config>>,
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
