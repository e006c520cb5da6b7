//! The data directory (`docs/engine-format.md`, "Directory layout"): its lock, its `FORMAT`,
//! the catalog, and where every log lives.
//!
//! Invariants:
//! - While a [`DataDir`] opened with `real_lock` lives, it holds an exclusive advisory lock
//!   (`flock`) on `DATA/LOCK`; a second open, from this process or another, fails with
//!   [`Error::InUse`]. The lock dies with the process, so a crash never leaves it stale. (The
//!   lock is the one piece of I/O that bypasses [`Storage`]: locking is not something a
//!   crash-simulating backend can model, and in-memory storage is private to its process.)
//! - `FORMAT` and the catalog are only ever replaced atomically ([`write_atomic`]): a reader
//!   sees the old or the new bytes, never a mix, before and after a crash.
//! - Paths built here are only from names matching `[a-z0-9_-]{1,48}`, so a name can never
//!   escape its directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::io::{create_dir_durable, read_all, Storage};
use crate::segment::FORMAT_VERSION;

/// First line of `FORMAT`.
const FORMAT_MAGIC: &str = "sluice-engine";
/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the format file.
pub const FORMAT_FILE: &str = "FORMAT";
/// Name of the catalog file.
pub const CATALOG_FILE: &str = "catalog";
/// Longest topic or subscription name.
pub const MAX_NAME_LEN: usize = 48;

/// Replaces the file at `path` with `bytes` atomically: write `<path>.tmp`, `sync_all`,
/// rename over `path`, `sync_all` of the directory. After a crash the file holds the old or
/// the new bytes; once this returns, the new ones.
pub fn write_atomic(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let at = |what: &str, p: &Path| format!("{what} {}", p.display());
    let file = storage.open(&tmp, true).context(|| at("create", &tmp))?;
    file.set_len(0).context(|| at("truncate", &tmp))?;
    file.write_at(bytes, 0).context(|| at("write", &tmp))?;
    file.sync_all().context(|| at("fsync", &tmp))?;
    drop(file);
    storage
        .rename(&tmp, path)
        .context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    storage.sync_dir(dir).context(|| at("fsync directory", dir))
}

/// Checks a topic or subscription name: `[a-z0-9_-]{1,48}`.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(ok_char) {
        return Err(Error::Invalid {
            what,
            reason: format!("`{name}`: 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_` and `-`"),
        });
    }
    Ok(())
}

/// An open data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    /// Held for the lock; `None` for in-memory storage.
    _lock: Option<File>,
}

impl DataDir {
    /// Opens the data directory at `path`, creating it if absent. With `real_lock` (use it
    /// with [`crate::io::FileStorage`]), takes the exclusive lock on `LOCK` and writes this
    /// process's pid into it; without (in-memory storage), takes no lock.
    ///
    /// Fails with [`Error::InUse`] if another engine holds the lock, [`Error::Format`] if the
    /// directory is of another format version, [`Error::NotDataDir`] if it is not empty but
    /// not a Sluice data directory.
    pub fn open(
        storage: Arc<dyn Storage>,
        path: impl Into<PathBuf>,
        real_lock: bool,
    ) -> Result<Self> {
        let path = path.into();
        create_dir_durable(storage.as_ref(), &path)
            .context(|| format!("create {}", path.display()))?;
        let lock = if real_lock { Some(lock(&path)?) } else { None };
        let dir = Self {
            storage,
            path,
            _lock: lock,
        };
        dir.check_format()?;
        Ok(dir)
    }

    fn check_format(&self) -> Result<()> {
        let format = self.path.join(FORMAT_FILE);
        match self.read(&format)? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let mut lines = text.lines();
                if lines.next() != Some(FORMAT_MAGIC) {
                    return Err(Error::NotDataDir {
                        dir: self.path.clone(),
                        reason: format!("its FORMAT file does not start with `{FORMAT_MAGIC}`"),
                    });
                }
                let line = lines.next().unwrap_or("");
                let found = line.strip_prefix("format ").unwrap_or(line).trim();
                if found != FORMAT_VERSION.to_string() {
                    return Err(Error::Format {
                        found: found.to_string(),
                        expected: FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None => {
                let names = self
                    .storage
                    .list_dir(&self.path)
                    .context(|| format!("list {}", self.path.display()))?;
                let ours = [LOCK_FILE, "FORMAT.tmp"];
                if let Some(other) = names.iter().find(|n| !ours.contains(&n.as_str())) {
                    return Err(Error::NotDataDir {
                        dir: self.path.clone(),
                        reason: format!("it has no FORMAT file but holds `{other}`"),
                    });
                }
                let content = format!("{FORMAT_MAGIC}\nformat {FORMAT_VERSION}\n");
                write_atomic(self.storage.as_ref(), &format, content.as_bytes())
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The storage it lives on.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The whole file at `path`, or `None` if it does not exist.
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let at = |what: &str| format!("{what} {}", path.display());
        match self.storage.open(path, false) {
            Ok(file) => read_all(file.as_ref()).map(Some).context(|| at("read")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(at("open"), e)),
        }
    }

    /// Replaces the file at `path` atomically; see [`write_atomic`].
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        write_atomic(self.storage.as_ref(), path, bytes)
    }

    /// The catalog's bytes, or `None` before the first [`DataDir::store_catalog`].
    pub fn load_catalog(&self) -> Result<Option<Vec<u8>>> {
        self.read(&self.path.join(CATALOG_FILE))
    }

    /// Replaces the catalog atomically; durable when this returns.
    pub fn store_catalog(&self, bytes: &[u8]) -> Result<()> {
        self.write_atomic(&self.path.join(CATALOG_FILE), bytes)
    }

    /// `DATA/topics/<topic>`: the topic's log.
    pub fn topic_dir(&self, topic: &str) -> Result<PathBuf> {
        check_name("topic name", topic)?;
        Ok(self.path.join("topics").join(topic))
    }

    /// `DATA/subscriptions/<subscription>`.
    pub fn subscription_dir(&self, subscription: &str) -> Result<PathBuf> {
        check_name("subscription name", subscription)?;
        Ok(self.path.join("subscriptions").join(subscription))
    }

    /// `DATA/subscriptions/<subscription>/journal`: the state journal.
    pub fn journal_dir(&self, subscription: &str) -> Result<PathBuf> {
        Ok(self.subscription_dir(subscription)?.join("journal"))
    }

    /// `DATA/subscriptions/<subscription>/dlq`: the dead-letter log.
    pub fn dlq_dir(&self, subscription: &str) -> Result<PathBuf> {
        Ok(self.subscription_dir(subscription)?.join("dlq"))
    }

    /// `DATA/subscriptions/<subscription>/checkpoint`.
    pub fn checkpoint_path(&self, subscription: &str) -> Result<PathBuf> {
        Ok(self.subscription_dir(subscription)?.join("checkpoint"))
    }

    /// `DATA/kv`: the keyed store (job status, cancellations, schedules).
    pub fn kv_dir(&self) -> PathBuf {
        self.path.join("kv")
    }

    /// `DATA/kv/journal`: the keyed store's journal.
    pub fn kv_journal_dir(&self) -> PathBuf {
        self.kv_dir().join("journal")
    }

    /// `DATA/kv/checkpoint`: the keyed store's checkpoint.
    pub fn kv_checkpoint_path(&self) -> PathBuf {
        self.kv_dir().join("checkpoint")
    }

    /// Removes a directory of this data directory (a deleted topic or subscription) and
    /// makes the removal durable. Missing is fine.
    pub fn remove_dir(&self, dir: &Path) -> Result<()> {
        if !dir.starts_with(&self.path) || dir == self.path {
            return Err(Error::Invalid {
                what: "directory",
                reason: format!("{} is not inside {}", dir.display(), self.path.display()),
            });
        }
        match self.storage.remove_dir_all(dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(Error::io(format!("remove {}", dir.display()), e))
            }
            _ => {}
        }
        let parent = dir.parent().unwrap_or(&self.path);
        self.storage
            .sync_dir(parent)
            .context(|| format!("fsync directory {}", parent.display()))
    }
}

/// Takes the exclusive lock on `DATA/LOCK` and writes our pid into it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let at = |what: &str| format!("{what} {}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .context(|| at("open"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(Error::InUse {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        Err(TryLockError::Error(e)) => return Err(Error::io(at("lock"), e)),
    }
    file.set_len(0).context(|| at("truncate"))?;
    writeln!(file, "{}", std::process::id()).context(|| at("write"))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FaultyStorage, FileStorage, MemStorage};

    fn real(path: &Path) -> Result<DataDir> {
        DataDir::open(Arc::new(FileStorage::new()), path, true)
    }

    #[test]
    fn a_second_open_of_a_locked_directory_in_the_same_process_is_in_use_with_our_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let first = real(&data).unwrap();
        let err = real(&data).unwrap_err();
        match &err {
            Error::InUse { dir, pid } => {
                assert_eq!(dir, &data);
                assert_eq!(
                    *pid,
                    Some(std::process::id()),
                    "the holder's pid is read back"
                );
            }
            other => panic!("expected InUse, got {other}"),
        }
        assert!(
            err.to_string().contains("run `sluice serve --data"),
            "the message says how to share: {err}"
        );
        drop(first);
        real(&data).expect("the lock is released when the first engine closes");
    }

    #[test]
    fn a_new_directory_gets_a_format_file_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        drop(real(&data).unwrap());
        let format = std::fs::read_to_string(data.join(FORMAT_FILE)).unwrap();
        assert_eq!(format, "sluice-engine\nformat 1\n");
        drop(real(&data).expect("reopens"));
    }

    #[test]
    fn a_directory_of_another_format_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FORMAT_FILE), "sluice-engine\nformat 2\n").unwrap();
        let err = real(tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "format 2 found; this build of Sluice reads format 1"
        );
    }

    #[test]
    fn a_non_empty_directory_without_format_is_not_taken_over() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let err = real(tmp.path()).unwrap_err();
        assert!(
            matches!(err, Error::NotDataDir { ref reason, .. } if reason.contains("notes.txt")),
            "{err}"
        );
        std::fs::write(tmp.path().join(FORMAT_FILE), "other-program\n").unwrap();
        assert!(matches!(real(tmp.path()), Err(Error::NotDataDir { .. })));
    }

    #[test]
    fn the_catalog_is_replaced_atomically_and_survives_a_crash() {
        let storage = Arc::new(FaultyStorage::new(MemStorage::new()));
        let dir = DataDir::open(storage.clone(), "/data", false).unwrap();
        assert_eq!(dir.load_catalog().unwrap(), None, "no catalog yet");
        dir.store_catalog(b"{\"version\":1}").unwrap();
        storage.inner().crash();
        let dir = DataDir::open(storage.clone(), "/data", false).unwrap();
        assert_eq!(
            dir.load_catalog().unwrap().as_deref(),
            Some(&b"{\"version\":1}"[..]),
            "a stored catalog is durable"
        );
        // The rename is not made durable: after a crash the old catalog is back.
        storage.fail_nth_sync(2);
        assert!(
            dir.store_catalog(b"new").is_err(),
            "the directory sync fails"
        );
        storage.inner().crash();
        let dir = DataDir::open(storage.clone(), "/data", false).unwrap();
        assert_eq!(
            dir.load_catalog().unwrap().as_deref(),
            Some(&b"{\"version\":1}"[..]),
            "old or new, never a mix: here the old"
        );
    }

    #[test]
    fn paths_are_built_only_from_valid_names() {
        let dir = DataDir::open(Arc::new(MemStorage::new()), "/data", false).unwrap();
        assert_eq!(
            dir.topic_dir("orders").unwrap(),
            Path::new("/data/topics/orders")
        );
        assert_eq!(
            dir.checkpoint_path("billing").unwrap(),
            Path::new("/data/subscriptions/billing/checkpoint")
        );
        assert_eq!(
            dir.dlq_dir("billing").unwrap(),
            Path::new("/data/subscriptions/billing/dlq")
        );
        for bad in ["", "../etc", "Orders", "a/b", &"x".repeat(49)] {
            assert!(dir.topic_dir(bad).is_err(), "`{bad}` must be refused");
        }
    }

    #[test]
    fn removing_a_topic_directory_is_durable() {
        let storage = Arc::new(MemStorage::new());
        let dir = DataDir::open(storage.clone(), "/data", false).unwrap();
        let topic = dir.topic_dir("orders").unwrap();
        create_dir_durable(storage.as_ref(), &topic).unwrap();
        dir.remove_dir(&topic).unwrap();
        storage.crash();
        assert!(
            !storage.exists(&topic).unwrap(),
            "the removal survives a crash"
        );
        assert!(
            dir.remove_dir(Path::new("/etc")).is_err(),
            "only inside DATA"
        );
    }
}
