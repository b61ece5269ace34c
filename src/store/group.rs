//! Group commit: many small independent writes (claims over HTTP) share one
//! `BEGIN IMMEDIATE … COMMIT`, so one fsync serves many of them.
//!
//! Each write runs inside its own SAVEPOINT, so a failing write rolls back alone and the
//! others still commit; every write still sees all the writes before it, exactly as with
//! `Store::write`. No caller hears its result before the shared COMMIT succeeded; when the
//! COMMIT fails, every write of the group reports the failure. The group forms on its own:
//! callers queue their write and then take the writer; whoever holds it runs everything
//! queued so far. Under no load a group has one write and costs the same as `write`.

use std::sync::atomic::Ordering;

use rusqlite::TransactionBehavior;
use tokio::sync::oneshot;

use crate::store::{CachedStatements, Store, StoreError, WriteTx, lock};

/// Runs one queued write in the open transaction and returns how to report its result
/// once the fate of the transaction is known (`None` = committed). Handed `Err` when the
/// transaction could not begin: the write then reports that error without running.
pub(crate) type GroupedWrite = Box<
    dyn FnOnce(Result<&mut WriteTx<'_>, &StoreError>) -> Box<dyn FnOnce(Option<&StoreError>) + Send>
        + Send,
>;

/// At most this many writes share one transaction (bounds the latency of the first).
const MAX_GROUP: usize = 256;

impl Store {
    /// Like `write`, but may share its transaction with other `write_grouped` calls.
    /// `f` runs in a savepoint: `Err` undoes only its own changes.
    pub async fn write_grouped<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel::<Result<T, E>>();
        let waited = self.inner.options.busy_timeout;
        let write: GroupedWrite = Box::new(move |tx: Result<&mut WriteTx<'_>, &StoreError>| {
            let result = match tx {
                Ok(tx) => run_in_savepoint(tx, f),
                Err(error) => Err(E::from(shared_failure(error, waited))),
            };
            Box::new(move |commit_error: Option<&StoreError>| {
                let result = match (commit_error, result) {
                    (Some(error), Ok(_)) => Err(E::from(shared_failure(error, waited))),
                    (_, result) => result,
                };
                // The caller may have gone away (client disconnected): nothing to tell.
                let _ = sender.send(result);
            })
        });
        lock(&self.inner.group).push(write);
        // One flusher at a time: it keeps committing groups until the queue is empty, so
        // callers never pile up on the writer's lock.
        if !self.inner.group_flusher.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.flush_until_empty());
        }
        // The flusher runs our write and then its reporter; the channel is dropped without
        // a result only if a write panicked (see `FlusherGuard`).
        receiver.await.unwrap_or_else(|_| {
            Err(E::from(StoreError::GroupCommit {
                reason: "the grouped write was dropped".to_owned(),
            }))
        })
    }

    /// Commits groups until the queue is empty, then hands the flusher role back.
    fn flush_until_empty(&self) {
        let guard = FlusherGuard(self);
        loop {
            self.flush_group();
            if !lock(&self.inner.group).is_empty() {
                continue;
            }
            self.inner.group_flusher.store(false, Ordering::Release);
            // A write queued between the check and the store found the role taken and
            // started no flusher: take the role back for it, unless a new flusher did.
            if lock(&self.inner.group).is_empty()
                || self.inner.group_flusher.swap(true, Ordering::AcqRel)
            {
                break;
            }
        }
        std::mem::forget(guard);
    }

    /// Takes the writer, then runs up to `MAX_GROUP` queued writes in one transaction.
    fn flush_group(&self) {
        let (reporters, emitted, jobs_enqueued, committed) = {
            let mut conn = lock(&self.inner.writer);
            let writes: Vec<GroupedWrite> = {
                let mut queue = lock(&self.inner.group);
                let take = queue.len().min(MAX_GROUP);
                queue.drain(..take).collect()
            };
            if writes.is_empty() {
                return;
            }
            let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
                Ok(tx) => tx,
                Err(error) => {
                    // Every write queued now hears the failure at once: after one bounded
                    // wait (busy_timeout) the next group would only wait as long again.
                    let error = StoreError::from(error);
                    self.record_write_failure(&error);
                    tracing::warn!(error = %error, "cannot begin the grouped transaction");
                    let mut writes = writes;
                    writes.extend(lock(&self.inner.group).drain(..));
                    for write in writes {
                        write(Err(&error))(None);
                    }
                    return;
                }
            };
            let mut write_tx = WriteTx { tx, emitted: 0, jobs_enqueued: false };
            let reporters: Vec<_> =
                writes.into_iter().map(|write| write(Ok(&mut write_tx))).collect();
            let (emitted, jobs_enqueued) = (write_tx.emitted, write_tx.jobs_enqueued);
            (reporters, emitted, jobs_enqueued, write_tx.tx.commit().map_err(StoreError::from))
        };
        let error = committed.err();
        match &error {
            Some(error) => self.record_write_failure(error),
            None => self.record_write_success(),
        }
        for report in reporters {
            report(error.as_ref());
        }
        if error.is_none() {
            if emitted > 0 {
                self.inner.outbox_notify.notify_one();
            }
            if jobs_enqueued {
                self.wake_job_runner();
            }
        }
        // Writes queued while this group ran are flushed by their own callers' flushes.
    }
}

/// Only dropped when a write panicked inside the flusher: the queued writes are dropped
/// (their callers get an error instead of waiting forever) and the role is released.
struct FlusherGuard<'a>(&'a Store);

impl Drop for FlusherGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.inner.group).clear();
        self.0.inner.group_flusher.store(false, Ordering::Release);
    }
}

/// What each write of a group hears when the shared BEGIN or COMMIT failed: a lock held
/// elsewhere stays recognisable as one (503 with Retry-After), anything else carries the
/// whole cause chain.
fn shared_failure(error: &StoreError, waited: std::time::Duration) -> StoreError {
    if error.is_transient() {
        return StoreError::Exhausted { what: "write lock (another process holds it)", waited };
    }
    StoreError::GroupCommit { reason: crate::error::error_chain(error) }
}

fn run_in_savepoint<T, E, F>(tx: &mut WriteTx<'_>, f: F) -> Result<T, E>
where
    F: FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
    E: From<StoreError>,
{
    tx.execute_cached("SAVEPOINT grouped_write", []).map_err(|error| E::from(error.into()))?;
    let (emitted, jobs_enqueued) = (tx.emitted, tx.jobs_enqueued);
    let result = f(tx);
    let ended = if result.is_ok() {
        tx.execute_cached("RELEASE grouped_write", [])
    } else {
        // Undo this write only; its events and job wake-ups go with it.
        tx.emitted = emitted;
        tx.jobs_enqueued = jobs_enqueued;
        tx.execute_cached("ROLLBACK TO grouped_write", [])
            .and_then(|_| tx.execute_cached("RELEASE grouped_write", []))
    };
    match ended {
        Ok(_) => result,
        Err(error) => Err(E::from(error.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(StoreOptions::at(dir.path().join("db.sqlite"))).unwrap();
        store
            .write_blocking(|tx| {
                tx.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failing_write_rolls_back_alone_and_every_caller_hears_its_own_result() {
        let (_dir, store) = store();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .write_grouped(move |tx| {
                        tx.execute_cached("INSERT INTO t (v) VALUES (?1)", [format!("v{i}")])?;
                        if i % 10 == 0 {
                            // A second insert of the same value: this write fails after a
                            // change that must be undone.
                            tx.execute_cached("INSERT INTO t (v) VALUES (?1)", [format!("v{i}")])?;
                        }
                        Ok::<_, StoreError>(i)
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(value) => {
                    assert_eq!(value, i);
                    ok += 1;
                }
                Err(_) => assert_eq!(i % 10, 0),
            }
        }
        assert_eq!(ok, 180);
        let rows: i64 = store
            .read(|conn| Ok(conn.query_row_cached("SELECT COUNT(*) FROM t", [], |row| row.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, 180, "the failed writes' first inserts were rolled back");
    }
}
