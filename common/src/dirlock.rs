//! One process per data directory, said up front.
//!
//! fjall locks its own database, but a second process that opens the same
//! directory learns only `Locked`, after it has parsed its config and bound
//! its ports, and the playground's directory has no such lock at all. Every
//! server binary and the playground therefore take [`DirLock`] first: an
//! OS advisory lock (flock on Unix) on `pact.pid` in the directory, with
//! the holder's pid written in it so that the refusal can name the process.
//!
//! The lock, not the file, is the truth: the kernel drops it when the
//! holder exits, however it exits, so a pid left in the file by a crashed
//! process never blocks anyone. The file is never removed (removing it
//! would let two processes lock two different inodes of the same name).
//! It is opened close-on-exec, so children (the playground's nodes) do not
//! inherit the parent's lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = "pact.pid";

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another process holds the lock; `pid` is what it wrote (None if it
    /// has not written it yet, or wrote something unreadable).
    #[error("data dir {} in use by {}", dir.display(), holder(*pid))]
    InUse { dir: PathBuf, pid: Option<u32> },
    /// The directory or its lock file could not be created or locked.
    #[error("cannot lock data dir {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "another process".to_string(),
    }
}

impl From<DirLockError> for std::io::Error {
    fn from(e: DirLockError) -> Self {
        let kind = match &e {
            DirLockError::InUse { .. } => std::io::ErrorKind::ResourceBusy,
            DirLockError::Io { source, .. } => source.kind(),
        };
        std::io::Error::new(kind, e)
    }
}

/// Held while the directory is in use; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    dir: PathBuf,
}

impl DirLock {
    /// Lock `dir` (created if missing) for this process, or say who holds
    /// it. Never waits.
    pub fn acquire(dir: &Path) -> Result<DirLock, DirLockError> {
        let io = |source| DirLockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(DirLockError::InUse {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let held = DirLock::acquire(&dir).expect("first lock");
        assert_eq!(held.dir(), dir);
        // A second open file description conflicts with the first, as a
        // second process would.
        match DirLock::acquire(&dir) {
            Err(e @ DirLockError::InUse { pid: Some(p), .. }) => {
                assert_eq!(p, std::process::id());
                let msg = e.to_string();
                assert!(msg.contains(&format!("in use by pid {p}")), "{msg}");
                assert!(msg.contains(&dir.display().to_string()), "{msg}");
                let io: std::io::Error = e.into();
                assert_eq!(io.kind(), std::io::ErrorKind::ResourceBusy);
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(held);
        DirLock::acquire(&dir).expect("lock after release");
    }

    #[test]
    fn a_stale_pid_file_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(LOCK_FILE), "999999999999\n").unwrap();
        let _held = DirLock::acquire(tmp.path()).expect("lock over a stale file");
        let text = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }

    #[test]
    fn a_path_that_cannot_be_a_directory_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        match DirLock::acquire(&file) {
            Err(DirLockError::Io { dir, .. }) => assert_eq!(dir, file),
            other => panic!("{other:?}"),
        }
    }
}
