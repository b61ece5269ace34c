//! Job logs: appended in batches under a per-job byte cap, read back in order.

use crate::domain::TextEnum;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use crate::domain::{LogLevel, LogLine};
use crate::store::time::{from_millis, to_millis};
use crate::store::{CachedStatements, StoreError, parse_text};

/// What one stored log line costs against the cap beyond its text (row, time, level).
pub const LOG_LINE_OVERHEAD: usize = 32;

/// Appends log lines, keeping the job's total under `cap_bytes`: the line that would pass
/// the cap is replaced by one truncation notice and everything after it is dropped.
/// Returns how many lines were stored.
pub fn append_logs(
    conn: &Connection,
    job_id: &str,
    lines: &[LogLine],
    cap_bytes: u64,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let used: i64 = conn.query_row_cached(
        "SELECT log_bytes FROM provisioner_jobs WHERE id = ?1",
        [job_id],
        |row| row.get(0),
    )?;
    let mut used = u64::try_from(used).unwrap_or(0);
    if used >= cap_bytes {
        return Ok(0);
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO provisioner_job_logs (job_id, created_at, level, stage, output) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut stored = 0;
    for line in lines {
        // Every stored line costs its text, its stage and a row: empty lines are not free.
        let size = (line.output.len() + line.stage.len() + LOG_LINE_OVERHEAD) as u64;
        if used.saturating_add(size) > cap_bytes {
            insert.execute(params![
                job_id,
                to_millis(now),
                LogLevel::Warn.as_str(),
                line.stage,
                format!("log output truncated: the job's logs reached the {cap_bytes}-byte limit"),
            ])?;
            used = cap_bytes;
            stored += 1;
            break;
        }
        insert.execute(params![
            job_id,
            to_millis(now),
            line.level.as_str(),
            line.stage,
            line.output
        ])?;
        used += size;
        stored += 1;
    }
    conn.execute_cached(
        "UPDATE provisioner_jobs SET log_bytes = ?2 WHERE id = ?1",
        params![job_id, i64::try_from(used).unwrap_or(i64::MAX)],
    )?;
    Ok(stored)
}

/// A stored log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub level: LogLevel,
    pub stage: String,
    pub output: String,
}

/// A job's log lines in order.
pub fn logs(conn: &Connection, job_id: &str) -> Result<Vec<StoredLog>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, created_at, level, stage, output FROM provisioner_job_logs WHERE job_id = ?1 ORDER BY id",
    )?;
    let rows = statement.query_map([job_id], |row| {
        Ok(StoredLog {
            id: row.get(0)?,
            created_at: row.get::<_, i64>(1).map(|ms| from_millis(ms).unwrap_or_default())?,
            level: parse_text(row, 2)?,
            stage: row.get(3)?,
            output: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
