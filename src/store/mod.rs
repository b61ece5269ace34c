//! The SQLite store: one writer connection for every state change, a small pool of
//! read-only connections for queries, both on a real file in WAL mode.
//!
//! Owns opening (file checks, pragmas, migrations) and the two access paths:
//! `Store::write` runs a closure in a `BEGIN IMMEDIATE` transaction on the single writer,
//! so writes are serialized and a closure that re-reads what it decides on sees the latest
//! committed state; `Store::read` runs a closure on a read-only connection. Both run on
//! tokio's blocking pool, never on the async executor. Events emitted in a write
//! transaction go to the outbox and wake the publisher only after commit.
//! Domain SQL lives in the submodules; this module knows no table but the outbox.

pub mod audit;
pub mod bench;
pub mod builds;
mod error;
pub mod group;
pub mod health;
pub mod invariants;
pub mod jobs;
pub mod lifecycle;
pub mod lock;
pub mod migrations;
pub mod notifications;
pub mod outbox;
pub mod presets;
pub mod retention;
pub mod snapshot;
pub mod templates;
pub mod time;
pub mod users;
pub mod views;
pub mod webhooks;
pub mod workspaces;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::Notify;

pub use error::{HasStoreError, StoreError};

use crate::domain::Synchronous;
use crate::domain::event::Event;

#[derive(Default)]
struct ReaderPool {
    idle: Vec<Connection>,
    opened: usize,
}

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The writer's recent history, for `/readyz` and for failing queued writes fast.
#[derive(Default)]
struct WriteHealth {
    /// Why the last write that touched the disk failed, until one succeeds.
    failing: Option<String>,
    /// When a write last gave up on a lock held by another process.
    last_busy: Option<std::time::Instant>,
    failures: u64,
}

/// Settings for opening the store (the daemon fills them from `[storage]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    pub read_connections: usize,
}

impl StoreOptions {
    /// Defaults for a database at `path`: the same as `[storage]`'s (tests, benches).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        StoreOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            read_connections: 4,
        }
    }
}

/// What `Store::open` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub created: bool,
    pub applied_migrations: Vec<i64>,
    pub schema_version: i64,
}

/// A cheap handle to the database, shared by the loops, the publisher and the HTTP layer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    options: StoreOptions,
    writer: Mutex<Connection>,
    /// Read-only connections: at most `read_connections` exist; a reader waits for a free
    /// one rather than opening (and re-reading the schema into) a throwaway connection.
    readers: Mutex<ReaderPool>,
    reader_freed: std::sync::Condvar,
    outbox_notify: Notify,
    jobs_notify: Notify,
    /// Writes waiting for the next grouped transaction (`write_grouped`).
    group: Mutex<Vec<group::GroupedWrite>>,
    /// True while a task flushes the group queue.
    group_flusher: std::sync::atomic::AtomicBool,
    health: Mutex<WriteHealth>,
}

/// A read-only connection on loan from the pool. Dropping it returns the connection; after
/// a panic the connection is closed instead (it may hold an open statement or read
/// transaction) and its slot freed, so the pool never shrinks.
struct ReaderGuard<'a> {
    conn: Option<Connection>,
    inner: &'a Inner,
}

impl ReaderGuard<'_> {
    fn conn(&self) -> &Connection {
        // Always `Some` until `drop`.
        self.conn.as_ref().unwrap_or_else(|| unreachable!("reader taken before drop"))
    }
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut pool = lock(&self.inner.readers);
        if std::thread::panicking() || !conn.is_autocommit() {
            pool.opened -= 1;
            drop(pool);
            drop(conn);
        } else {
            pool.idle.push(conn);
            drop(pool);
        }
        self.inner.reader_freed.notify_one();
    }
}

/// A write transaction (`BEGIN IMMEDIATE`). Derefs to the connection for queries; events
/// go through `emit` so they commit or roll back with the change.
pub struct WriteTx<'conn> {
    tx: rusqlite::Transaction<'conn>,
    emitted: usize,
    jobs_enqueued: bool,
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.tx
    }
}

impl WriteTx<'_> {
    /// Writes `event` to the outbox in this transaction.
    pub fn emit(&mut self, event: &Event, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let id = outbox::insert(&self.tx, event, now)?;
        self.emitted += 1;
        Ok(id)
    }

    /// Records that this transaction enqueued a provisioner job: the job runner is woken
    /// after commit.
    pub fn wake_job_runner(&mut self) {
        self.jobs_enqueued = true;
    }
}

impl Store {
    /// Opens (or creates) the database, checks it is ours and not from a newer binary, sets
    /// the pragmas and applies pending migrations. Nothing is written before the checks pass.
    pub fn open(options: StoreOptions) -> Result<(Store, OpenReport), StoreError> {
        let path = options.path.clone();
        let existed = check_existing_file(&path)?;
        if !existed && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::CreateDir { path: parent.to_path_buf(), source })?;
        }
        let open_error = |source| StoreError::Open { path: path.clone(), source };
        let mut writer = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        writer.busy_timeout(options.busy_timeout).map_err(open_error)?;
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        stable_plans(&writer).map_err(open_error)?;
        if existed {
            // Read-only looks before any pragma: switching to WAL would already write.
            let database_version = migrations::applied_version(&writer).map_err(open_error)?;
            let binary_version = migrations::latest_known_version();
            if database_version > binary_version {
                return Err(StoreError::TooNew { path, database_version, binary_version });
            }
            check_integrity(&writer, &path)?;
        }
        writer.pragma_update(None, "journal_mode", "WAL").map_err(open_error)?;
        writer
            .pragma_update(None, "synchronous", options.synchronous.pragma_value())
            .map_err(open_error)?;
        // Foreign keys stay off while migrations run: a migration that rebuilds a table
        // (the only way to change a CHECK in SQLite) must drop the old one while other
        // tables still reference it. Every reference is checked before they go back on.
        writer.pragma_update(None, "foreign_keys", "OFF").map_err(open_error)?;
        let applied_migrations = migrations::run(&mut writer)
            .map_err(|source| StoreError::Migrate { path: path.clone(), source })?;
        let dangling: i64 = writer
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| row.get(0))
            .map_err(open_error)?;
        if dangling > 0 {
            return Err(StoreError::Corrupt {
                what: format!("database {}", path.display()),
                reason: format!(
                    "{dangling} rows reference rows that do not exist (PRAGMA foreign_key_check); restore a backup"
                ),
            });
        }
        writer.pragma_update(None, "foreign_keys", "ON").map_err(open_error)?;
        let schema_version = migrations::applied_version(&writer).map_err(open_error)?;
        let store = Store::over(options, writer);
        Ok((store, OpenReport { created: !existed, applied_migrations, schema_version }))
    }

    /// Opens an existing database for reading only (`workspaced plan`, `snapshot export`):
    /// nothing is created, migrated or written. The schema must be exactly this binary's.
    pub fn open_read_only(options: StoreOptions) -> Result<Store, StoreError> {
        let path = options.path.clone();
        if !check_existing_file(&path)? {
            return Err(StoreError::Missing { path });
        }
        let open_error = |source| StoreError::Open { path: path.clone(), source };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        conn.busy_timeout(options.busy_timeout).map_err(open_error)?;
        let database_version = migrations::applied_version(&conn).map_err(open_error)?;
        let binary_version = migrations::latest_known_version();
        if database_version > binary_version {
            return Err(StoreError::TooNew { path, database_version, binary_version });
        }
        if database_version < binary_version {
            return Err(StoreError::TooOld { path, database_version, binary_version });
        }
        // Writes through this store fail: the connection is read-only.
        Ok(Store::over(options, conn))
    }

    /// A store whose writes go through `writer`.
    fn over(options: StoreOptions, writer: Connection) -> Store {
        Store {
            inner: Arc::new(Inner {
                options,
                writer: Mutex::new(writer),
                readers: Mutex::new(ReaderPool::default()),
                reader_freed: std::sync::Condvar::new(),
                outbox_notify: Notify::new(),
                jobs_notify: Notify::new(),
                group: Mutex::new(Vec::new()),
                group_flusher: std::sync::atomic::AtomicBool::new(false),
                health: Mutex::new(WriteHealth::default()),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.options.path
    }

    /// Why writes are failing, while they are: the last write that reached the disk
    /// failed with a storage failure and none has succeeded since. `/readyz` says this.
    pub fn write_failure(&self) -> Option<String> {
        lock(&self.inner.health).failing.clone()
    }

    /// Storage failures of writes since the store was opened.
    pub fn write_failures(&self) -> u64 {
        lock(&self.inner.health).failures
    }

    pub(crate) fn record_write_failure(&self, error: &StoreError) {
        if !error.is_storage_failure() {
            return;
        }
        let mut health = lock(&self.inner.health);
        health.failures += 1;
        health.failing = Some(crate::error::error_chain(error));
        if error.is_transient() && !matches!(error, StoreError::Exhausted { .. }) {
            health.last_busy = Some(std::time::Instant::now());
        }
    }

    pub(crate) fn record_write_success(&self) {
        let mut health = lock(&self.inner.health);
        health.failing = None;
        health.last_busy = None;
    }

    fn failed_write(&self, error: StoreError) -> StoreError {
        self.record_write_failure(&error);
        error
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction on the writer, on the blocking pool.
    /// `Ok` commits, `Err` rolls back. After a commit that emitted events the publisher
    /// is woken.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + HasStoreError + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_blocking(f))
            .await
            .map_err(|error| E::from(StoreError::Task(error)))?
    }

    /// `write` for threads that may block (CLI commands, tests, benches). Never call this
    /// from async code: it holds the thread until the writer is free.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, E>,
        E: From<StoreError> + HasStoreError,
    {
        let queued_at = std::time::Instant::now();
        let (value, emitted, jobs_enqueued) = {
            let mut conn = lock(&self.inner.writer);
            // A write that queued behind one that already waited out `busy_timeout` on a
            // lock held by another process fails at once: one bounded wait, not a chain.
            if lock(&self.inner.health).last_busy.is_some_and(|busy| busy >= queued_at) {
                return Err(E::from(StoreError::Exhausted {
                    what: "write lock (another process holds it)",
                    waited: self.inner.options.busy_timeout,
                }));
            }
            let changes_before = conn.total_changes();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|error| E::from(self.failed_write(StoreError::from(error))))?;
            let mut write_tx = WriteTx { tx, emitted: 0, jobs_enqueued: false };
            let value = match f(&mut write_tx) {
                Ok(value) => value,
                Err(error) => {
                    if let Some(store_error) = error.store_error() {
                        self.record_write_failure(store_error);
                    }
                    return Err(error);
                }
            };
            let WriteTx { tx, emitted, jobs_enqueued } = write_tx;
            let changed = tx.total_changes() != changes_before;
            tx.commit().map_err(|error| E::from(self.failed_write(error.into())))?;
            // Only a commit that wrote something proves the disk takes writes again.
            if changed {
                self.record_write_success();
            }
            (value, emitted, jobs_enqueued)
        };
        if emitted > 0 {
            self.inner.outbox_notify.notify_one();
        }
        if jobs_enqueued {
            self.wake_job_runner();
        }
        Ok(value)
    }

    /// Runs `f` on a read-only connection, on the blocking pool. Each call sees one
    /// consistent committed snapshot if `f` wraps its queries in a transaction.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(StoreError::Task)?
    }

    /// `read` for threads that may block.
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        let reader = self.take_reader()?;
        f(reader.conn())
    }

    /// An idle reader, a new one while fewer than `read_connections` exist, or the next one
    /// returned within `busy_timeout`; after that the caller hears `Exhausted` (HTTP 503)
    /// instead of queueing without end. The guard gives the connection back when dropped,
    /// also when the closure using it panics.
    fn take_reader(&self) -> Result<ReaderGuard<'_>, StoreError> {
        let waited = self.inner.options.busy_timeout;
        let deadline = std::time::Instant::now() + waited;
        let mut pool = lock(&self.inner.readers);
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(ReaderGuard { conn: Some(conn), inner: &self.inner });
            }
            if pool.opened < self.inner.options.read_connections.max(1) {
                pool.opened += 1;
                drop(pool);
                return match self.open_reader() {
                    Ok(conn) => Ok(ReaderGuard { conn: Some(conn), inner: &self.inner }),
                    Err(error) => {
                        lock(&self.inner.readers).opened -= 1;
                        self.inner.reader_freed.notify_one();
                        Err(error)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Exhausted { what: "read connection", waited });
            }
            pool = self
                .inner
                .reader_freed
                .wait_timeout(pool, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Resolves after a commit that emitted events (or at once if one happened since the
    /// last wait), so the publisher needs no busy polling.
    pub async fn outbox_notified(&self) {
        self.inner.outbox_notify.notified().await;
    }

    /// Resolves after a commit that enqueued a provisioner job (or at once if one happened
    /// since the last wait).
    pub async fn jobs_notified(&self) {
        self.inner.jobs_notify.notified().await;
    }

    /// Wakes one idle job worker (a worker that took a job wakes the next, so a burst of
    /// jobs spreads over the idle workers).
    pub fn wake_job_runner(&self) {
        self.inner.jobs_notify.notify_one();
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let path = &self.inner.options.path;
        let open_error = |source| StoreError::Open { path: path.clone(), source };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        conn.busy_timeout(self.inner.options.busy_timeout).map_err(open_error)?;
        conn.pragma_update(None, "query_only", "ON").map_err(open_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        stable_plans(&conn).map_err(open_error)?;
        Ok(conn)
    }
}

/// `execute` and `query_row` through the connection's prepared-statement cache: the hot
/// paths (claims, job updates, snapshots) run the same SQL thousands of times, and parsing
/// it each time cost more than running it.
/// The cheapest round trip through a connection (readiness probe).
pub fn ping(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row_cached("SELECT 1", [], |row| row.get(0))?)
}

/// This installation's id (chosen once by migration V7): the label value that marks the
/// container-engine objects of this installation.
pub fn installation_id(conn: &Connection) -> Result<String, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT id FROM installation ORDER BY created_at LIMIT 1",
        [],
        |row| row.get(0),
    )?)
}

pub trait CachedStatements {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Turns on SQLite's query planner stability guarantee. Without it, a cached statement
/// that was once re-prepared (after any schema change) is re-prepared on *every*
/// execution whenever one of its parameters is compared with a column that a partial
/// index's WHERE also names: SQLite re-plans for each new value. That re-parse cost more
/// than the claim itself (measured: benches/claims.rs). Our queries name partial-index
/// conditions with literals, so fixed plans lose nothing.
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Page cache per connection (negative = KiB): the default 2 MiB re-reads the hot
    // index pages of a fleet of thousands of workspaces from the OS on every claim.
    conn.pragma_update(None, "cache_size", -32 * 1024)
}

/// Statements kept prepared per connection (the default, 16, is smaller than one claim).
const STATEMENT_CACHE: usize = 256;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside a closure drops its Transaction, which rolls back, so the connection
    // behind a poisoned lock is still in a clean state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `PRAGMA quick_check` on an existing file before anything is written: a damaged
/// database is refused with SQLite's first findings instead of being written to (which
/// can spread the damage). Costs one pass over the file at start.
fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("database {}", path.display()),
        reason: format!(
            "{reason}; the file was not changed: restore a backup or repair it with the sqlite3 shell's .recover"
        ),
    };
    let findings: Vec<String> = (|| {
        let mut statement = conn.prepare("PRAGMA quick_check(5)")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })()
    .map_err(|error| corrupt(format!("integrity check failed: {error}")))?;
    if findings.len() == 1 && findings[0] == "ok" {
        return Ok(());
    }
    Err(corrupt(format!("integrity check found: {}", findings.join("; "))))
}

/// Returns whether a database file exists at `path`, after checking that a non-empty
/// file really is SQLite. Reads only.
fn check_existing_file(path: &Path) -> Result<bool, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(StoreError::ReadFile { path: path.to_path_buf(), source }),
    };
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    (&mut file)
        .take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(|source| StoreError::ReadFile { path: path.to_path_buf(), source })?;
    // SQLite treats an empty file as an empty database; anything else must carry the header.
    if !header.is_empty() && header.as_slice() != SQLITE_HEADER {
        return Err(StoreError::NotSqlite { path: path.to_path_buf() });
    }
    Ok(true)
}

#[cfg(test)]
mod tests;

/// Reads a TEXT column into one of the domain's string enums; a value the schema should
/// have prevented is reported as a conversion failure naming the column.
pub(crate) fn parse_text<T>(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(index)?;
    text.parse().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}
