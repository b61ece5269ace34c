//! A job's log stream into SQLite: lines are buffered and written in batches, so a chatty
//! build costs a few transactions a second, and a failed write loses lines, never the build.
//! Also the daemon's own log line about a finished job, with the names of what it built.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Runner;
use crate::domain::job::{AcquiredJob, CompletedJob};
use crate::domain::{JobStatus, LogLine};
use crate::error::error_chain;
use crate::store::jobs;

/// Lines buffered before a flush, and the longest a line waits in the buffer.
const LOG_BATCH_LINES: usize = 64;
const LOG_BATCH_WAIT: Duration = Duration::from_millis(200);

impl Runner {
    /// Writes log lines in batches (every `LOG_BATCH_LINES` lines or `LOG_BATCH_WAIT`)
    /// until the backend drops its sender.
    pub(super) async fn pump_logs(
        &self,
        job_id: String,
        mut lines: mpsc::Receiver<LogLine>,
        cap: u64,
    ) {
        let mut buffer = Vec::new();
        loop {
            let next = if buffer.is_empty() {
                lines.recv().await
            } else {
                match tokio::time::timeout(LOG_BATCH_WAIT, lines.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush_logs(&job_id, &mut buffer, cap).await;
                        continue;
                    }
                }
            };
            match next {
                Some(line) => {
                    buffer.push(line);
                    if buffer.len() >= LOG_BATCH_LINES {
                        self.flush_logs(&job_id, &mut buffer, cap).await;
                    }
                }
                None => {
                    self.flush_logs(&job_id, &mut buffer, cap).await;
                    return;
                }
            }
        }
    }

    async fn flush_logs(&self, job_id: &str, buffer: &mut Vec<LogLine>, cap: u64) {
        if buffer.is_empty() {
            return;
        }
        let lines = std::mem::take(buffer);
        let job_id = job_id.to_owned();
        let now = self.inner.clock.now();
        let result = self
            .inner
            .store
            .write(move |tx| jobs::append_logs(tx, &job_id, &lines, cap, now))
            .await;
        if let Err(error) = result {
            // Losing log lines must not fail the build itself.
            tracing::warn!(error = %error_chain(&error), "cannot store job log lines");
        }
    }
}

/// The daemon's log line about a finished job: names beside ids, a failure's error.
pub(super) fn finished(job: &AcquiredJob, completed: &CompletedJob, failure: &str) {
    let build = &completed.build;
    match completed.status {
        JobStatus::Failed => tracing::warn!(
            job_id = %build.job_id,
            workspace_id = %build.workspace_id,
            workspace = %job.workspace_name,
            owner = %job.owner_name,
            template = %job.template_name,
            transition = %build.transition,
            error = %failure,
            "job failed"
        ),
        status => tracing::info!(
            job_id = %build.job_id,
            workspace_id = %build.workspace_id,
            workspace = %job.workspace_name,
            owner = %job.owner_name,
            template = %job.template_name,
            transition = %build.transition,
            %status,
            "job finished"
        ),
    }
}
