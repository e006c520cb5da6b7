//! [`MemStorage`]: an in-memory filesystem that loses exactly what a power cut may lose.
//!
//! Model: every file (inode) has its current bytes (`data`), its durable bytes, and the list
//! of operations since its last sync. Every directory entry exists in the current namespace
//! and, once its directory was synced, in the durable namespace. [`MemStorage::crash`]
//! replaces the current state by the durable one: a file keeps its durable bytes, a file or
//! directory whose entry was never synced (or whose parent's entry was not) disappears, a
//! rename or removal not followed by a directory sync is undone. Handles opened before a crash
//! fail afterwards, like the file descriptors of a dead process.
//! [`MemStorage::crash_torn`] keeps, per file, a random prefix of the unsynced operations, the
//! last one possibly torn.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Storage, StorageFile};

/// The in-memory, crash-simulating [`Storage`].
#[derive(Debug, Default)]
pub struct MemStorage {
    state: Mutex<Namespace>,
    /// Bumped by every crash; handles of an older generation fail.
    generation: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Namespace {
    files: BTreeMap<PathBuf, Arc<Inode>>,
    dirs: BTreeSet<PathBuf>,
    durable_files: BTreeMap<PathBuf, Arc<Inode>>,
    durable_dirs: BTreeSet<PathBuf>,
}

#[derive(Debug, Default)]
struct Inode {
    content: Mutex<Content>,
}

#[derive(Debug, Default, Clone)]
struct Content {
    data: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
}

/// An operation not yet synced, kept to replay a prefix of them in [`MemStorage::crash_torn`].
#[derive(Debug, Clone)]
enum Op {
    Write { pos: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Op {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Op::Write { pos, bytes } => write_into(data, bytes, *pos),
            Op::SetLen(len) => data.resize(*len as usize, 0),
        }
    }
}

fn write_into(data: &mut Vec<u8>, bytes: &[u8], pos: u64) {
    let pos = pos as usize;
    if data.len() < pos + bytes.len() {
        data.resize(pos + bytes.len(), 0);
    }
    data[pos..pos + bytes.len()].copy_from_slice(bytes);
}

/// A root has no parent whose entry could be lost.
fn is_root(path: &Path) -> bool {
    path.parent().is_none_or(|p| p.as_os_str().is_empty())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl Namespace {
    fn dir_exists(&self, path: &Path) -> bool {
        is_root(path) || self.dirs.contains(path)
    }

    /// Whether every ancestor directory of `path` is durable.
    fn ancestors_durable(&self, path: &Path) -> bool {
        path.ancestors()
            .skip(1)
            .all(|dir| is_root(dir) || self.durable_dirs.contains(dir))
    }
}

/// A small deterministic generator (SplitMix64), so a torn crash is reproducible by seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: usize) -> usize {
        (self.next() % (max as u64 + 1)) as usize
    }
}

impl MemStorage {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Namespace> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a power cut: every file reverts to its durable bytes and every directory
    /// entry not made durable by [`Storage::sync_dir`] is undone. Handles opened before fail.
    pub fn crash(&self) {
        self.crash_with(|content| content.durable.clone());
    }

    /// Like [`MemStorage::crash`], but each file keeps a random prefix (chosen by `seed`) of
    /// its unsynced writes, the last of which may be torn at any byte.
    pub fn crash_torn(&self, seed: u64) {
        let mut rng = SplitMix(seed);
        self.crash_with(|content| {
            let mut data = content.durable.clone();
            let keep = rng.up_to(content.unsynced.len());
            for op in &content.unsynced[..keep] {
                op.apply(&mut data);
            }
            if let Some(Op::Write { pos, bytes }) = content.unsynced.get(keep) {
                let torn = rng.up_to(bytes.len());
                write_into(&mut data, &bytes[..torn], *pos);
            }
            data
        });
    }

    fn crash_with(&self, mut surviving_bytes: impl FnMut(&Content) -> Vec<u8>) {
        let mut ns = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        let dirs: BTreeSet<PathBuf> = ns
            .durable_dirs
            .iter()
            .filter(|d| ns.ancestors_durable(d))
            .cloned()
            .collect();
        let files: BTreeMap<PathBuf, Arc<Inode>> = ns
            .durable_files
            .iter()
            .filter(|(p, _)| ns.ancestors_durable(p))
            .map(|(p, inode)| (p.clone(), inode.clone()))
            .collect();
        let mut seen = BTreeSet::new();
        for inode in files.values() {
            if seen.insert(Arc::as_ptr(inode)) {
                let mut content = inode.content.lock().unwrap_or_else(|e| e.into_inner());
                let bytes = surviving_bytes(&content);
                *content = Content {
                    data: bytes.clone(),
                    durable: bytes,
                    unsynced: Vec::new(),
                };
            }
        }
        ns.dirs = dirs.clone();
        ns.durable_dirs = dirs;
        ns.files = files.clone();
        ns.durable_files = files;
    }

    /// The current bytes of the file at `path` (for tests that flip bits or inspect).
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let ns = self.lock();
        let inode = ns.files.get(path)?;
        let content = inode.content.lock().unwrap_or_else(|e| e.into_inner());
        Some(content.data.clone())
    }

    /// Overwrites bytes of the file at `path` *durably*, as a bit flip at rest would: the
    /// change survives a crash. Returns whether the file exists.
    pub fn corrupt(&self, path: &Path, pos: u64, bytes: &[u8]) -> bool {
        let ns = self.lock();
        let Some(inode) = ns.files.get(path) else {
            return false;
        };
        let mut content = inode.content.lock().unwrap_or_else(|e| e.into_inner());
        write_into(&mut content.data, bytes, pos);
        write_into(&mut content.durable, bytes, pos);
        true
    }
}

impl Storage for MemStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut ns = self.lock();
        let inode = match ns.files.get(path) {
            Some(inode) => inode.clone(),
            None if !create => return Err(not_found(path)),
            None => {
                let parent = path.parent().unwrap_or(Path::new(""));
                if !ns.dir_exists(parent) {
                    return Err(not_found(parent));
                }
                if ns.dirs.contains(path) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} is a directory", path.display()),
                    ));
                }
                let inode = Arc::new(Inode::default());
                ns.files.insert(path.to_path_buf(), inode.clone());
                inode
            }
        };
        Ok(Arc::new(MemFile {
            inode,
            path: path.to_path_buf(),
            generation: self.generation.load(Ordering::SeqCst),
            current: self.generation.clone(),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut ns = self.lock();
        for dir in path.ancestors() {
            if ns.files.contains_key(dir) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file", dir.display()),
                ));
            }
            if !is_root(dir) {
                ns.dirs.insert(dir.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let ns = self.lock();
        if !ns.dir_exists(path) {
            return Err(not_found(path));
        }
        let children = ns.files.keys().chain(ns.dirs.iter());
        Ok(children
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.lock()
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut ns = self.lock();
        if !ns.dirs.contains(path) {
            return Err(not_found(path));
        }
        ns.files.retain(|p, _| !p.starts_with(path));
        ns.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut ns = self.lock();
        let parent = to.parent().unwrap_or(Path::new(""));
        if !ns.dir_exists(parent) {
            return Err(not_found(parent));
        }
        let inode = ns.files.remove(from).ok_or_else(|| not_found(from))?;
        ns.files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut ns = self.lock();
        if !ns.dir_exists(path) {
            return Err(not_found(path));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        ns.durable_files.retain(|p, _| !in_dir(p));
        let files: Vec<_> = ns
            .files
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        ns.durable_files.extend(files);
        // A child directory removed now takes its durable subtree with it.
        let gone: Vec<PathBuf> = ns
            .durable_dirs
            .iter()
            .filter(|d| in_dir(d) && !ns.dirs.contains(*d))
            .cloned()
            .collect();
        for dir in gone {
            ns.durable_dirs.retain(|p| !p.starts_with(&dir));
            ns.durable_files.retain(|p, _| !p.starts_with(&dir));
        }
        let dirs: Vec<PathBuf> = ns.dirs.iter().filter(|d| in_dir(d)).cloned().collect();
        ns.durable_dirs.extend(dirs);
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let ns = self.lock();
        Ok(ns.files.contains_key(path) || ns.dirs.contains(path) || is_root(path))
    }
}

/// A handle on a [`MemStorage`] file.
#[derive(Debug)]
struct MemFile {
    inode: Arc<Inode>,
    path: PathBuf,
    generation: u64,
    current: Arc<AtomicU64>,
}

impl MemFile {
    fn content(&self) -> io::Result<MutexGuard<'_, Content>> {
        // Checked under the inode's lock: a crash bumps the generation before it reverts the
        // inode (under the same lock), so no write of a dead handle can land after a crash.
        let content = self.inode.content.lock().unwrap_or_else(|e| e.into_inner());
        if self.current.load(Ordering::SeqCst) != self.generation {
            return Err(io::Error::other(format!(
                "{}: handle opened before a simulated crash",
                self.path.display()
            )));
        }
        Ok(content)
    }
}

impl StorageFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.content()?.data.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let content = self.content()?;
        let start = (pos as usize).min(content.data.len());
        let n = buf.len().min(content.data.len() - start);
        buf[..n].copy_from_slice(&content.data[start..start + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let mut content = self.content()?;
        write_into(&mut content.data, buf, pos);
        content.unsynced.push(Op::Write {
            pos,
            bytes: buf.to_vec(),
        });
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut content = self.content()?;
        content.data.resize(len as usize, 0);
        content.unsynced.push(Op::SetLen(len));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut content = self.content()?;
        content.durable = content.data.clone();
        content.unsynced.clear();
        Ok(())
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::read_all;

    fn setup() -> (MemStorage, PathBuf) {
        let storage = MemStorage::new();
        let dir = PathBuf::from("/data");
        crate::io::create_dir_durable(&storage, &dir).unwrap();
        (storage, dir)
    }

    fn bytes_after_crash(storage: &MemStorage, path: &Path) -> Option<Vec<u8>> {
        let file = storage.open(path, false).ok()?;
        Some(read_all(file.as_ref()).unwrap())
    }

    #[test]
    fn given_synced_and_unsynced_writes_when_crashing_then_only_synced_bytes_survive() {
        let (storage, dir) = setup();
        let path = dir.join("f");
        let f = storage.open(&path, true).unwrap();
        storage.sync_dir(&dir).unwrap();
        f.write_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"-lost", 7).unwrap();
        storage.crash();
        assert_eq!(
            bytes_after_crash(&storage, &path).as_deref(),
            Some(&b"durable"[..]),
            "the unsynced write must be gone"
        );
    }

    #[test]
    fn given_a_file_whose_directory_was_not_synced_when_crashing_then_it_disappears() {
        let (storage, dir) = setup();
        let path = dir.join("f");
        let f = storage.open(&path, true).unwrap();
        f.write_at(b"x", 0).unwrap();
        f.sync_all().unwrap();
        storage.crash();
        assert!(
            !storage.exists(&path).unwrap(),
            "a file's entry needs a sync of its directory"
        );
    }

    #[test]
    fn given_a_rename_without_directory_sync_when_crashing_then_the_old_name_comes_back() {
        let (storage, dir) = setup();
        let (tmp, target) = (dir.join("tmp"), dir.join("target"));
        let f = storage.open(&tmp, true).unwrap();
        f.write_at(b"new", 0).unwrap();
        f.sync_all().unwrap();
        storage.sync_dir(&dir).unwrap();
        storage.rename(&tmp, &target).unwrap();
        storage.crash();
        assert!(storage.exists(&tmp).unwrap(), "the rename was not durable");
        assert!(!storage.exists(&target).unwrap(), "the target never was");
        storage.rename(&tmp, &target).unwrap();
        storage.sync_dir(&dir).unwrap();
        storage.crash();
        assert_eq!(
            bytes_after_crash(&storage, &target).as_deref(),
            Some(&b"new"[..]),
            "a synced rename survives with the file's durable bytes"
        );
        assert!(!storage.exists(&tmp).unwrap(), "and the old name is gone");
    }

    #[test]
    fn given_a_new_directory_whose_parent_was_not_synced_when_crashing_then_its_files_vanish() {
        let (storage, dir) = setup();
        let sub = dir.join("sub");
        storage.create_dir_all(&sub).unwrap();
        let path = sub.join("f");
        storage.open(&path, true).unwrap().sync_all().unwrap();
        storage.sync_dir(&sub).unwrap();
        storage.crash();
        assert!(
            !storage.exists(&sub).unwrap(),
            "the directory entry was not synced"
        );
        assert!(!storage.exists(&path).unwrap(), "nor can its file survive");
    }

    #[test]
    fn handles_opened_before_a_crash_fail_afterwards() {
        let (storage, dir) = setup();
        let f = storage.open(&dir.join("f"), true).unwrap();
        storage.crash();
        assert!(
            f.write_at(b"x", 0).is_err(),
            "a dead process's handle is gone"
        );
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_writes() {
        for seed in 0..200 {
            let (storage, dir) = setup();
            let path = dir.join("f");
            let f = storage.open(&path, true).unwrap();
            storage.sync_dir(&dir).unwrap();
            f.write_at(&[1; 8], 0).unwrap();
            f.write_at(&[2; 8], 8).unwrap();
            f.write_at(&[3; 8], 16).unwrap();
            storage.crash_torn(seed);
            let bytes = bytes_after_crash(&storage, &path).unwrap();
            let expected: Vec<u8> = [[1u8; 8], [2; 8], [3; 8]].concat();
            assert!(
                expected.starts_with(&bytes),
                "seed {seed}: {bytes:?} must be a prefix of the writes in order"
            );
        }
    }

    #[test]
    fn corrupt_changes_survive_a_crash_like_a_bit_flip_at_rest() {
        let (storage, dir) = setup();
        let path = dir.join("f");
        let f = storage.open(&path, true).unwrap();
        storage.sync_dir(&dir).unwrap();
        f.write_at(b"abc", 0).unwrap();
        f.sync_data().unwrap();
        assert!(storage.corrupt(&path, 1, b"X"), "the file exists");
        storage.crash();
        assert_eq!(
            bytes_after_crash(&storage, &path).as_deref(),
            Some(&b"aXc"[..])
        );
    }
}
