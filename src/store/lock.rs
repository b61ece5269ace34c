//! The single-instance lock on the data directory: one daemon per database.
//!
//! Two daemons on one file would each treat the other's running jobs as orphans and fight
//! over the pool. `serve` (and `migrate`) take an exclusive `flock` on
//! `<data_dir>/workspaced.lock` before the database is opened and hold it until exit; the
//! file holds the holder's pid, so the refusal can name it. The kernel drops the lock when
//! the process dies, however it dies, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "workspaced.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another workspaced (pid {holder}); stop it first, or give this one its own storage.data_dir"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock data directory {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the life of the process; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (created if missing) or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io { dir: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "unknown".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        locked.set_len(0).map_err(io)?;
        locked.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(locked, "{}", std::process::id()).map_err(io)?;
        locked.flush().map_err(io)?;
        Ok(DataDirLock { _file: locked, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let error = DataDirLock::acquire(dir.path()).unwrap_err();
        let me = std::process::id().to_string();
        assert!(matches!(&error, LockError::Held { holder, .. } if *holder == me), "{error}");
        assert!(error.to_string().contains(&format!("pid {me}")), "{error}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
