//! The one I/O seam of the engine: every byte the engine reads or writes goes through
//! [`Storage`] and [`StorageFile`], so tests can substitute a crash-simulating backend
//! ([`MemStorage`]) and a fault-injecting one ([`FaultyStorage`]).
//!
//! Invariants of the contract (what the engine assumes, see `docs/engine-format.md`):
//! - [`StorageFile::write_at`] writes all of its buffer or fails; it never changes the bytes
//!   outside `pos..pos + buf.len()` except to extend the file with zeros.
//! - After [`StorageFile::sync_data`] or [`StorageFile::sync_all`] returns `Ok`, the file's
//!   contents survive a crash; before, any part of the unsynced writes may be lost or torn.
//! - A directory entry (a file created, renamed or removed) survives a crash only after
//!   [`Storage::sync_dir`] of its directory.
//!
//! [`MemStorage`] implements exactly these rules and nothing kinder, so a test that passes
//! on it does not rely on a filesystem being generous.

mod faulty;
mod mem;

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub use faulty::FaultyStorage;
pub use mem::MemStorage;

/// A filesystem: opens files and changes directories.
///
/// Implementations are shared between threads (`Arc<dyn Storage>`); every method may be
/// called concurrently.
pub trait Storage: Send + Sync + Debug + 'static {
    /// Opens the file at `path` for reading and writing, creating it (empty) if `create` and
    /// it does not exist. Never truncates. A missing file without `create`, or a missing
    /// parent directory, is [`io::ErrorKind::NotFound`].
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates `path` and any missing parents. The new entries are durable only after
    /// [`Storage::sync_dir`] of each parent (see [`create_dir_durable`]).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries of the directory `path`, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Removes the file at `path` (durable after [`Storage::sync_dir`] of its directory).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes the directory `path` and everything under it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames the file `from` to `to`, atomically replacing `to` if it exists (durable after
    /// [`Storage::sync_dir`] of both directories).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of the directory `path` durable (files and directories created,
    /// renamed or removed in it).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
}

/// An open file. Reads and writes are positional, so one handle is shared between threads
/// without a cursor to race on.
pub trait StorageFile: Send + Sync + Debug {
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads into `buf` from `pos`; returns how many bytes were read, fewer than `buf.len()`
    /// only at the end of the file. See [`read_exact_at`].
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`, extending the file (with zeros before `pos`) if needed.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's contents and metadata (its length) durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
}

/// Fills `buf` from `pos`, or fails with [`io::ErrorKind::UnexpectedEof`] if the file ends
/// first.
pub fn read_exact_at(file: &dyn StorageFile, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, pos) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ends before byte {}", pos + buf.len() as u64),
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the whole file.
pub fn read_all(file: &dyn StorageFile) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.len()?).map_err(io::Error::other)?;
    let mut buf = vec![0; len];
    read_exact_at(file, &mut buf, 0)?;
    Ok(buf)
}

/// Creates the directory `path` and its missing parents, and makes each new entry durable
/// (a `sync_dir` of the parent of every directory it created).
pub fn create_dir_durable(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    let mut missing: Vec<&Path> = Vec::new();
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() || storage.exists(dir)? {
            break;
        }
        missing.push(dir);
    }
    if missing.is_empty() {
        return Ok(());
    }
    storage.create_dir_all(path)?;
    for dir in missing.iter().rev() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            storage.sync_dir(parent)?;
        }
    }
    Ok(())
}

/// The real filesystem, through `std::fs` and positional I/O (`pread`/`pwrite`).
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

impl FileStorage {
    /// The real filesystem.
    pub fn new() -> Self {
        Self
    }
}

impl Storage for FileStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(DiskFile { file }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
}

/// A file of [`FileStorage`].
#[derive(Debug)]
struct DiskFile {
    file: std::fs::File,
}

impl StorageFile for DiskFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.file.write_all_at(buf, pos)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every implementation keeps, run on each.
    fn check_basic_contract(storage: &dyn Storage, root: &Path) {
        let dir = root.join("a/b");
        create_dir_durable(storage, &dir).unwrap();
        assert!(storage.exists(&dir).unwrap(), "the directory was created");
        let path = dir.join("f");
        assert!(
            storage.open(&path, false).is_err(),
            "opening a missing file without create fails"
        );
        let f = storage.open(&path, true).unwrap();
        assert_eq!(f.len().unwrap(), 0, "a new file is empty");
        f.write_at(b"world", 6).unwrap();
        f.write_at(b"hello", 0).unwrap();
        let mut buf = [0xAA; 11];
        read_exact_at(f.as_ref(), &mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello\0world", "a gap before a write reads as zeros");
        let mut long = [0; 20];
        let err = read_exact_at(f.as_ref(), &mut long, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "short file");
        f.set_len(3).unwrap();
        assert_eq!(read_all(f.as_ref()).unwrap(), b"hel", "set_len truncates");
        f.sync_all().unwrap();
        storage.rename(&path, &dir.join("g")).unwrap();
        storage.sync_dir(&dir).unwrap();
        assert_eq!(storage.list_dir(&dir).unwrap(), vec!["g".to_string()]);
        let g = storage.open(&dir.join("g"), false).unwrap();
        assert_eq!(
            read_all(g.as_ref()).unwrap(),
            b"hel",
            "rename keeps the bytes"
        );
        storage.remove_file(&dir.join("g")).unwrap();
        assert!(storage.list_dir(&dir).unwrap().is_empty(), "file removed");
        storage.remove_dir_all(&root.join("a")).unwrap();
        assert!(!storage.exists(&dir).unwrap(), "tree removed");
    }

    #[test]
    fn file_storage_keeps_the_storage_contract() {
        let tmp = tempfile::tempdir().unwrap();
        check_basic_contract(&FileStorage::new(), tmp.path());
    }

    #[test]
    fn mem_storage_keeps_the_storage_contract() {
        check_basic_contract(&MemStorage::new(), Path::new("/root"));
    }

    #[test]
    fn faulty_storage_without_faults_keeps_the_storage_contract() {
        check_basic_contract(&FaultyStorage::new(MemStorage::new()), Path::new("/root"));
    }
}
