//! The store's error: what failed (SQLite, the file, the schema, a full disk, a busy
//! lock), its metric label, whether retrying can help; and `HasStoreError`, which lets
//! `Store::write` see a storage failure inside a closure's own error type.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} is not a SQLite database (its header is not \"SQLite format 3\"); refusing to touch it"
    )]
    NotSqlite { path: PathBuf },
    #[error(
        "database {path} has schema version {database_version}, newer than this binary knows ({binary_version}); upgrade workspaced or restore a backup"
    )]
    TooNew { path: PathBuf, database_version: i64, binary_version: i64 },
    #[error("database {path} does not exist (start the daemon or run `workspaced migrate` first)")]
    Missing { path: PathBuf },
    #[error(
        "database {path} has schema version {database_version}, older than this binary's ({binary_version}); run `workspaced migrate`"
    )]
    TooOld { path: PathBuf, database_version: i64, binary_version: i64 },
    #[error("cannot create data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read database file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot migrate database {path}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: refinery::Error,
    },
    #[error("database query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot encode a row as JSON")]
    Encode(#[source] serde_json::Error),
    #[error("corrupt data in {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("a database task panicked or was cancelled")]
    Task(#[source] tokio::task::JoinError),
    #[error("the grouped transaction failed to commit: {reason}")]
    GroupCommit { reason: String },
    #[error("no {what} became free within {waited:?}; the database is overloaded")]
    Exhausted { what: &'static str, waited: Duration },
}

impl StoreError {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::NotSqlite { .. } => "not_sqlite",
            StoreError::TooNew { .. } => "too_new",
            StoreError::TooOld { .. } => "too_old",
            StoreError::Missing { .. } => "missing",
            StoreError::CreateDir { .. } | StoreError::ReadFile { .. } => "io",
            StoreError::Open { .. } => "open",
            StoreError::Migrate { .. } => "migrate",
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                "busy"
            }
            StoreError::Sqlite(_) => "sqlite",
            StoreError::Encode(_) => "encode",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Task(_) => "task",
            StoreError::GroupCommit { reason } if reason.contains("database is locked") => "busy",
            StoreError::GroupCommit { .. } => "group_commit",
            StoreError::Exhausted { .. } => "busy",
        }
    }

    /// Whether the failure is load or contention that goes away by itself (answer 503 with
    /// `Retry-After`, retry later), rather than a defect.
    pub fn is_transient(&self) -> bool {
        self.metric_label() == "busy"
    }

    /// Whether the failure says the database cannot take writes right now (full disk,
    /// read-only file, IO error, corruption, a lock held elsewhere), as opposed to a
    /// rejected statement. Such failures make `/readyz` answer 503 until a write succeeds.
    pub fn is_storage_failure(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                DiskFull
                    | ReadOnly
                    | SystemIoFailure
                    | DatabaseBusy
                    | DatabaseLocked
                    | CannotOpen
                    | DatabaseCorrupt
                    | NotADatabase
                    | OutOfMemory
            ),
            StoreError::Exhausted { .. } => true,
            StoreError::GroupCommit { reason } => reason.contains("database is locked"),
            _ => false,
        }
    }
}

/// Errors of the closures run by `Store::write`: the store looks inside them for storage
/// failures (a full disk fails the closure's INSERT before COMMIT is reached).
pub trait HasStoreError {
    fn store_error(&self) -> Option<&StoreError>;
}

impl HasStoreError for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

/// Implements `HasStoreError` for an error enum whose `Store` variant wraps a `StoreError`;
/// the variants listed after it wrap another `HasStoreError` error.
#[macro_export]
macro_rules! has_store_error {
    ($type:ty $(, $nested:ident)*) => {
        impl $crate::store::HasStoreError for $type {
            fn store_error(&self) -> Option<&$crate::store::StoreError> {
                match self {
                    Self::Store(error) => Some(error),
                    $(Self::$nested(error) => $crate::store::HasStoreError::store_error(error),)*
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
}
