//! The output root as a local folder. Every file is private (0600 in 0700
//! folders) and durable before the commit protocol counts it: data is
//! fsynced, and so is the folder entry of every new file, folder and
//! rename. Immutable files are written under a temporary name in
//! `state/tmp/` and published by a hard link, which fails rather than
//! replace a file; mutable ones are replaced by rename. Keeping the
//! temporaries of immutable files out of the folders they are published
//! to means that cleaning up after a killed run never has to read a folder
//! that grows with the history (`parquet/…`, `audit/runs/`).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{
    Backend, ChainBytes, Expect, HandoffLog, Journal, Listed, Location, NewObject, Stored,
    is_temporary,
};
use crate::error::{Error, Result};

/// Mode of every file xquik-dm creates: private data.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder xquik-dm creates.
pub const DIR_MODE: u32 = 0o700;

/// The handoff file's name in a folder.
pub const HANDOFF: &str = "xquik-dm-handoff.jsonl";
/// The lock file.
const LOCK: &str = "state/lock";
/// The audit chain: one file, appended to.
const CHAIN: &str = "audit/chain.jsonl";

/// The sequence number of a chain line.
#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}
/// Where immutable files are written before they are published.
const STAGING: &str = "state/tmp";

/// A local output folder.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
    /// Where new immutable files are staged, when not in `root`'s own
    /// `state/tmp/` (see [`LocalDir::staging_in`]).
    staging: Option<PathBuf>,
}

impl LocalDir {
    /// The folder `root` (not created yet: see [`Backend::prepare`]).
    pub fn new(root: &Path) -> LocalDir {
        LocalDir {
            root: root.to_owned(),
            staging: None,
        }
    }

    /// This folder, staging its new immutable files in the `state/tmp/` of
    /// the folder `other` (inside it, so on the same file system): a
    /// sharded prefix, whose tables a shard writes into, stages them in the
    /// shard's own root, where the shard's sweep (under the shard's lock)
    /// removes what a killed run of that shard left, and never what
    /// another shard is writing.
    pub fn staging_in(mut self, other: &Path) -> LocalDir {
        self.staging = Some(other.join(STAGING));
        self
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The temporary file a new immutable `key` is written to: in
    /// `state/tmp/`, on the same file system as its final place (a hard
    /// link publishes it), named `.<key with / as ~>.<pid>.tmp`.
    fn staging(&self, key: &str) -> Result<PathBuf> {
        let dir = self.staging.clone().unwrap_or_else(|| self.path(STAGING));
        create_private_dir(&dir)?;
        Ok(dir.join(format!(
            ".{}.{}.tmp",
            key.replace('/', "~"),
            std::process::id()
        )))
    }
}

impl Backend for LocalDir {
    fn location(&self) -> Location {
        Location::Dir(self.root.clone())
    }

    fn describe(&self, key: &str) -> PathBuf {
        self.path(key)
    }

    fn prepare(&self) -> Result<()> {
        create_private_dir(&self.root).map_err(|e| {
            let why = match &e {
                Error::Io { source, .. } if self.root.exists() && !self.root.is_dir() => {
                    let _ = source;
                    "it exists and is not a folder".to_owned()
                }
                Error::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            Error::invalid(
                "--out",
                format!(
                    "{} is not usable as the output folder: {why}",
                    self.root.display()
                ),
            )
        })
    }

    fn lock(&self, _run_id: &str) -> Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        let path = self.path(LOCK);
        create_private_dir(path.parent().unwrap_or(&self.root))?;
        let file = open_private(
            &path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )?;
        // Released by the kernel when the process ends, however it ends. A
        // lock just released can still be held for an instant by a process
        // forked before its holder let go (the descriptor is shared until
        // that process execs): asked again for a moment before refusing.
        let mut attempts = 0;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Box::new(file)),
                Err(TryLockError::WouldBlock) if attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Locked {
                        path: self.root.clone(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }

    fn is_locked(&self) -> bool {
        match File::open(self.path(LOCK)) {
            Ok(file) => matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }

    fn get(&self, key: &str) -> Result<Option<Stored>> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(Stored {
                bytes,
                version: None,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>> {
        let path = self.path(key);
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        match range {
            None => Ok(Box::new(file)),
            Some(range) => {
                file.seek(SeekFrom::Start(range.start))
                    .map_err(|e| Error::io(&path, e))?;
                Ok(Box::new(file.take(range.end.saturating_sub(range.start))))
            }
        }
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut found = Vec::new();
        let mut stack = vec![self.path(prefix)];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let size = entry.metadata().map_err(|e| Error::io(&path, e))?.len();
                    found.push(Listed {
                        key: relative(&self.root, &path),
                        size,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn create(&self, key: &str) -> Result<Box<dyn NewObject>> {
        let target = self.path(key);
        create_private_dir(target.parent().unwrap_or(&self.root))?;
        let tmp = self.staging(key)?;
        let file = open_private(
            &tmp,
            OpenOptions::new().write(true).create(true).truncate(true),
        )?;
        Ok(Box::new(LocalNewFile {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            target,
        }))
    }

    fn replace(&self, key: &str, bytes: &[u8], expect: Expect<'_>) -> Result<Option<String>> {
        // The folder lock already keeps every other run out of a version
        // race; an object that must not exist yet is created create-only.
        let path = self.path(key);
        create_private_dir(path.parent().unwrap_or(&self.root))?;
        if expect == Expect::Missing {
            let tmp = self.staging(key)?;
            write_file(&tmp, bytes)?;
            return match publish(&tmp, &path) {
                Err(Error::Corrupt { path, .. }) => Err(Error::Conflict { path }),
                other => other.map(|()| None),
            };
        }
        write_atomic(&path, bytes)?;
        Ok(None)
    }

    fn chain_append(&self, _seq: u64, line: &[u8]) -> Result<()> {
        let path = self.path(CHAIN);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        create_private_dir(&dir)?;
        let existed = path.exists();
        let mut file = open_private(&path, OpenOptions::new().append(true).create(true))?;
        file.write_all(line)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        if !existed {
            fsync_dir(&dir)?;
        }
        Ok(())
    }

    fn chain_read(&self, from: Option<u64>) -> Result<Option<ChainBytes>> {
        let Some(size) = self.size(CHAIN)? else {
            return Ok(None);
        };
        let Some(from) = from else {
            return Ok(self.get(CHAIN)?.map(|s| ChainBytes {
                bytes: s.bytes,
                start: 0,
            }));
        };
        // A window at the end, widened until its first whole line is entry
        // `from` or earlier: a few kilobytes however long the chain is.
        let mut window = 4096u64;
        loop {
            let start = size.saturating_sub(window);
            let mut bytes = Vec::new();
            self.reader(CHAIN, Some(start..size))?
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(self.path(CHAIN), e))?;
            let skip = match start {
                0 => 0,
                _ => bytes
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |i| i + 1),
            };
            let first = bytes
                .get(skip..)
                .and_then(|rest| rest.split(|b| *b == b'\n').next())
                .and_then(|line| serde_json::from_slice::<Seq>(line).ok());
            let complete = bytes.get(skip..).is_some_and(|rest| rest.contains(&b'\n'));
            if start == 0 || first.is_some_and(|f| f.seq <= from.max(1) || (from == 0 && complete))
            {
                bytes.drain(..skip);
                return Ok(Some(ChainBytes {
                    bytes,
                    start: start + skip as u64,
                }));
            }
            window = window.saturating_mul(4);
        }
    }

    fn chain_cut(&self, len: u64) -> Result<()> {
        let path = self.path(CHAIN);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len).and_then(|()| f.sync_all()))
            .map_err(|e| Error::io(&path, e))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.path(from), self.path(to));
        let dir = to.parent().unwrap_or(&self.root).to_owned();
        create_private_dir(&dir)?;
        if to.exists() {
            return Err(Error::Corrupt {
                path: to,
                reason: "already exists: an immutable output is never replaced".into(),
            });
        }
        fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        fsync_dir(&dir)?;
        fsync_dir(from.parent().unwrap_or(&self.root))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn handoff(&self, _committed: u64) -> Result<Box<dyn HandoffLog>> {
        let path = self.path(HANDOFF);
        let existed = path.exists();
        let file = open_private(
            &path,
            OpenOptions::new().read(true).append(true).create(true),
        )?;
        if !existed {
            // A new file is an entry of its folder: without this, a power
            // cut could lose it under a checkpoint that counts its bytes.
            fsync_dir(&self.root)?;
        }
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        Ok(Box::new(LocalHandoff { file, path, len }))
    }

    fn handoff_reader(&self, range: Range<u64>) -> Result<Box<dyn Read + Send>> {
        self.reader(HANDOFF, Some(range))
    }

    fn handoff_len(&self) -> Result<u64> {
        Ok(self.size(HANDOFF)?.unwrap_or(0))
    }

    fn handoff_install(&self, staged: &str) -> Result<()> {
        let (from, to) = (self.path(staged), self.path(HANDOFF));
        if !from.exists() {
            return Ok(());
        }
        // One rename replaces the file atomically: a reader sees the old
        // generation or the new one, and the old one's blocks are freed
        // once no descriptor holds them.
        fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        fsync_dir(&self.root)
    }

    fn journal(&self, key: &str) -> Result<Box<dyn Journal>> {
        let target = self.path(key);
        create_private_dir(target.parent().unwrap_or(&self.root))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Named `.<key name>.tmp`, without a pid: the next run finds a
        // killed run's journal by its name.
        let tmp = target.with_file_name(format!(".{name}.tmp"));
        let file = open_private(
            &tmp,
            OpenOptions::new().write(true).create(true).truncate(true),
        )?;
        Ok(Box::new(LocalJournal { file, tmp, target }))
    }

    fn journal_pieces(&self, key: &str) -> Result<Vec<String>> {
        let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
        let tmp = format!("{dir}/.{name}.tmp");
        Ok(self.size(&tmp)?.map(|_| tmp).into_iter().collect())
    }

    fn sweep_temporaries(&self, names: &[&str]) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for dir in [self.root.clone(), self.path("state")] {
            removed.extend(remove_temporaries(&dir, names)?);
        }
        // Whatever is staged belongs to a run that no longer holds the lock.
        removed.extend(remove_temporaries(&self.path(STAGING), &[""])?);
        Ok(removed)
    }
}

/// A new immutable file: a temporary file, published by a hard link.
struct LocalNewFile {
    file: Option<std::io::BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
}

impl Write for LocalNewFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("already finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl NewObject for LocalNewFile {
    fn finish(mut self: Box<Self>) -> Result<()> {
        let Some(buffered) = self.file.take() else {
            return Ok(());
        };
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        publish(&self.tmp, &self.target)
    }
}

impl Drop for LocalNewFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Abandoned: nothing of it may stay.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The handoff file of a folder: one file, appended to.
#[derive(Debug)]
struct LocalHandoff {
    file: File,
    path: PathBuf,
    len: u64,
}

impl HandoffLog for LocalHandoff {
    fn len(&self) -> u64 {
        self.len
    }

    fn truncate(&mut self, len: u64) -> Result<u64> {
        let cut = self.len.saturating_sub(len);
        if cut > 0 {
            // Durably cut before anything is appended after it.
            self.file
                .set_len(len)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| Error::io(&self.path, e))?;
            self.len = len;
        }
        Ok(cut)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

/// A run's journal in a folder: a temporary file every line goes to at
/// once (a killed process loses none of it), published at the end.
#[derive(Debug)]
struct LocalJournal {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
}

impl Journal for LocalJournal {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(&self.tmp, e))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(self.file);
        publish(&self.tmp, &self.target)
    }
}

/// Creates `dir` and its missing parents with mode 0700, each made durable
/// in its parent (a new folder is an entry of its parent, and a power cut
/// could otherwise lose it under data the checkpoint already counts).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_private_dir(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fsync_dir(parent.unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Opens (creating with mode 0600) a file for writing.
fn open_private(path: &Path, options: &mut OpenOptions) -> Result<File> {
    options
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Flushes a folder's entries (a rename or a new file) to disk.
fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary
/// file beside it, fsync it, rename it over `path`, fsync the folder. A
/// crash at any instant leaves either the old or the new content.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_beside(path);
    write_file(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Moves the finished temporary file `tmp` to `target`, which must not
/// exist yet: an immutable output is written once and never replaced, so a
/// name already taken (a run ID used twice) is an error, not an overwrite.
/// The folder entry is made durable before this returns.
fn publish(tmp: &Path, target: &Path) -> Result<()> {
    let linked = fs::hard_link(tmp, target);
    if linked.is_err() {
        let _ = fs::remove_file(tmp);
    }
    linked.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Corrupt {
                path: target.to_owned(),
                reason: "already exists: an immutable output is never replaced".into(),
            }
        } else {
            Error::io(target, e)
        }
    })?;
    fs::remove_file(tmp).map_err(|e| Error::io(tmp, e))?;
    fsync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// `.<name>.<pid>.tmp` beside `path`: hidden, and named like every
/// temporary file of a run, so repair and verify recognise one left by a
/// killed run.
fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Creates (or truncates) `path` with `bytes`, fsynced.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = open_private(
        path,
        OpenOptions::new().write(true).create(true).truncate(true),
    )?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Removes the temporary files a killed run left directly in `dir` when
/// they are temporaries of one of `names` (`.<name>.<pid>.tmp`; the name
/// `""` stands for any): a file the tool did not write is never removed.
/// Returns their names.
fn remove_temporaries(dir: &Path, names: &[&str]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = names.iter().any(|n| {
            n.is_empty()
                || name
                    .strip_prefix('.')
                    .is_some_and(|rest| rest.starts_with(&format!("{n}.")))
        });
        if ours && is_temporary(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// `path` relative to `root`, `/`-separated.
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replace_is_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        store.replace("state.json", b"one", Expect::Any).unwrap();
        store.replace("state.json", b"two", Expect::Any).unwrap();
        assert_eq!(store.get("state.json").unwrap().unwrap().bytes, b"two");
        let mode = fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_private_dir(&nested).unwrap();
        let mode = fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_new_object_never_replaces_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        store.put_new("audit/run.manifest.json", b"first").unwrap();
        let err = store
            .put_new("audit/run.manifest.json", b"second")
            .unwrap_err();
        assert!(err.to_string().contains("never replaced"), "{err}");
        assert_eq!(
            store.get("audit/run.manifest.json").unwrap().unwrap().bytes,
            b"first"
        );
        assert_eq!(fs::read_dir(dir.path().join("audit")).unwrap().count(), 1);
        // An abandoned one leaves nothing.
        let mut abandoned = store.create("audit/other.json").unwrap();
        abandoned.write_all(b"half").unwrap();
        drop(abandoned);
        assert_eq!(store.list("audit/").unwrap().len(), 1);
    }

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        let first = store.lock("a").unwrap();
        assert!(store.is_locked());
        assert!(matches!(store.lock("b"), Err(Error::Locked { .. })));
        drop(first);
        assert!(store.lock("c").is_ok());
    }
}
