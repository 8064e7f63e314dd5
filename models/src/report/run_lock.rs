//! One process per run folder: an exclusive lock on `<folder>/.lock`, held for the life of the
//! process that trains into it.
//!
//! Without it two `ela train --out X` runs both exit 0 and leave one run's checkpoint beside the
//! other's metrics and config. The lock is an OS file lock (`flock` on Unix, `LockFileEx` on
//! Windows, through `std::fs::File::try_lock`), so it is released by the kernel when the process
//! ends in any way, `kill -9` included: a stale lock file never blocks the next run. The file
//! holds the owner's pid, only so that the error can name it; the lock itself is what counts.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use ela_core::{Error, Result};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// A held run-folder lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    // Kept open: closing the file would release the lock.
    _file: File,
    path: PathBuf,
    // The folder, when this process created it for the run (see `Drop`).
    created: Option<PathBuf>,
}

impl Drop for RunLock {
    /// A run that fails before writing anything (a missing --data file, a bad saved setting)
    /// must not leave a folder behind that holds only the lock: when this process created the
    /// folder and nothing else was written into it, both are removed.
    fn drop(&mut self) {
        let Some(dir) = &self.created else { return };
        let only_lock = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().all(|e| e.file_name() == LOCK_FILE))
            .unwrap_or(false);
        if only_lock {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl RunLock {
    /// Take the lock of `dir` (which must exist) without waiting. When another process holds
    /// it, the error names the folder, the holder's pid and what to do; `op` names the command.
    pub fn acquire(dir: &Path, op: &'static str) -> Result<RunLock> {
        Self::acquire_in(dir, op, false)
    }

    /// [`RunLock::acquire`] for a folder this process has just created (`created`): it is
    /// removed again on drop when nothing but the lock was written into it.
    pub fn acquire_in(dir: &Path, op: &'static str, created: bool) -> Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), msg: e.to_string() };
        // Not truncated on open: the holder's pid must stay readable until we own the lock.
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "another process".to_string(),
                    p => format!("process {p}"),
                };
                return Err(Error::invalid(
                    op,
                    format!(
                        "{} is in use by {holder}, which is training into it; wait for it to finish or choose \
                         another --out",
                        dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: record our pid for the next one that asks.
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id())).map_err(io)?;
        Ok(RunLock { _file: file, path, created: created.then(|| dir.to_path_buf()) })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
