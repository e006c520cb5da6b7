//! [`FaultyStorage`]: wraps another [`Storage`] and makes chosen operations fail.
//!
//! It can also slow every sync down ([`FaultyStorage::set_sync_delay`]), so tests see the
//! batching a real disk's flush latency causes.
//!
//! Counting: a *write* is a [`StorageFile::write_at`]; a *sync* is a
//! [`StorageFile::sync_data`], [`StorageFile::sync_all`] or [`Storage::sync_dir`]. A failed
//! operation does nothing to the inner storage. Once [`FaultyStorage::break_after_fault`] is
//! set, the first injected fault breaks the storage: every later operation of any kind fails,
//! as a disk that went away would.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Storage, StorageFile};

/// A [`Storage`] that fails the N-th write or sync, or everything after a fault.
#[derive(Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    writes: AtomicU64,
    syncs: AtomicU64,
    /// Syncs started (counted before their delay; `syncs` after it).
    syncs_begun: AtomicU64,
    /// The write count (1-based) that fails; 0 = none.
    fail_write_at: AtomicU64,
    /// The sync count (1-based) that fails; 0 = none.
    fail_sync_at: AtomicU64,
    break_after_fault: AtomicBool,
    broken: AtomicBool,
    /// Latency added to every sync, in microseconds (to make a test's syncs slow like a disk's).
    sync_delay_us: AtomicU64,
}

impl Faults {
    fn check_broken(&self) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fault: the storage is broken"));
        }
        Ok(())
    }

    fn fire(&self, what: &str, count: u64) -> io::Error {
        if self.break_after_fault.load(Ordering::SeqCst) {
            self.broken.store(true, Ordering::SeqCst);
        }
        io::Error::other(format!("injected fault: {what} number {count} fails"))
    }

    fn write(&self) -> io::Result<()> {
        self.check_broken()?;
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_write_at.load(Ordering::SeqCst) {
            return Err(self.fire("write", n));
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.check_broken()?;
        self.syncs_begun.fetch_add(1, Ordering::SeqCst);
        let delay = self.sync_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_sync_at.load(Ordering::SeqCst) {
            return Err(self.fire("sync", n));
        }
        Ok(())
    }
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner`; nothing fails until told to.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// The wrapped storage (to [`crate::io::MemStorage::crash`] it, for instance).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Makes the `n`-th write from now fail (`1` = the next one).
    pub fn fail_nth_write(&self, n: u64) {
        let now = self.faults.writes.load(Ordering::SeqCst);
        self.faults.fail_write_at.store(now + n, Ordering::SeqCst);
    }

    /// Makes the `n`-th sync from now fail (`1` = the next one).
    pub fn fail_nth_sync(&self, n: u64) {
        let now = self.faults.syncs.load(Ordering::SeqCst);
        self.faults.fail_sync_at.store(now + n, Ordering::SeqCst);
    }

    /// Whether the first injected fault breaks the storage for good (every later operation,
    /// reads included, fails).
    pub fn break_after_fault(&self, yes: bool) {
        self.faults.break_after_fault.store(yes, Ordering::SeqCst);
    }

    /// Breaks the storage now: every later operation fails.
    pub fn break_now(&self) {
        self.faults.broken.store(true, Ordering::SeqCst);
    }

    /// Makes every sync take at least `delay` (a disk's flush latency), so concurrent
    /// writers pile up behind it as they would in production.
    pub fn set_sync_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.faults.sync_delay_us.store(micros, Ordering::SeqCst);
    }

    /// Writes attempted so far (failed ones included).
    pub fn writes(&self) -> u64 {
        self.faults.writes.load(Ordering::SeqCst)
    }

    /// Syncs attempted so far (failed ones included).
    pub fn syncs(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// Syncs started so far, finished or not (a sync counts in [`syncs`](Self::syncs) once
    /// its delay is over).
    pub fn syncs_begun(&self) -> u64 {
        self.faults.syncs_begun.load(Ordering::SeqCst)
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        self.faults.check_broken()?;
        Ok(Arc::new(FaultyFile {
            inner: self.inner.open(path, create)?,
            faults: self.faults.clone(),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.faults.check_broken()?;
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.faults.check_broken()?;
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults.check_broken()?;
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.faults.check_broken()?;
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check_broken()?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.faults.sync()?;
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.faults.check_broken()?;
        self.inner.exists(path)
    }
}

/// A file of a [`FaultyStorage`].
#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    faults: Arc<Faults>,
}

impl StorageFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.faults.check_broken()?;
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.faults.check_broken()?;
        self.inner.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.faults.write()?;
        self.inner.write_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check_broken()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.sync()?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.faults.sync()?;
        self.inner.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_all, MemStorage};
    use std::path::PathBuf;

    fn setup() -> (FaultyStorage<MemStorage>, Arc<dyn StorageFile>) {
        let storage = FaultyStorage::new(MemStorage::new());
        let dir = PathBuf::from("/d");
        storage.create_dir_all(&dir).unwrap();
        let file = storage.open(&dir.join("f"), true).unwrap();
        (storage, file)
    }

    #[test]
    fn the_nth_write_fails_and_leaves_the_file_untouched() {
        let (storage, file) = setup();
        storage.fail_nth_write(2);
        file.write_at(b"a", 0).unwrap();
        assert!(file.write_at(b"b", 1).is_err(), "the second write fails");
        file.write_at(b"c", 1).unwrap();
        assert_eq!(
            read_all(file.as_ref()).unwrap(),
            b"ac",
            "the failed write did nothing"
        );
        assert_eq!(storage.writes(), 3, "failed writes are counted");
    }

    #[test]
    fn the_nth_sync_fails_counting_file_and_directory_syncs() {
        let (storage, file) = setup();
        storage.fail_nth_sync(3);
        file.sync_data().unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        assert!(file.sync_all().is_err(), "the third sync fails");
        file.sync_all().unwrap();
        assert_eq!(storage.syncs(), 4);
    }

    #[test]
    fn after_a_fault_that_breaks_the_storage_every_operation_fails() {
        let (storage, file) = setup();
        storage.break_after_fault(true);
        storage.fail_nth_sync(1);
        assert!(file.sync_data().is_err(), "the injected fault");
        assert!(file.len().is_err(), "reads fail too once broken");
        assert!(file.write_at(b"x", 0).is_err(), "and writes");
        assert!(storage.list_dir(Path::new("/d")).is_err(), "and metadata");
    }
}
