//! Where rows go: the JSON Lines handoff file (`jsonl`), which doubles as
//! the run's write-ahead log, and Parquet (`parquet`), a compacted view that
//! can always be rebuilt from the committed JSONL. This module also owns
//! the file-system rules every output follows: private modes (files 0600,
//! folders 0700) and durable, atomic replacement.

pub mod jsonl;
pub mod parquet;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Mode of every file xquik-dm creates: private data.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every folder xquik-dm creates.
pub const DIR_MODE: u32 = 0o700;

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
pub fn open_private(path: &Path, options: &mut OpenOptions) -> Result<File> {
    options
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Flushes a folder's entries (a rename or a new file) to disk.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Replaces `path` with `bytes` atomically and durably: write a temporary
/// file beside it, fsync it, rename it over `path`, fsync the folder. A
/// crash at any instant leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_beside(path);
    write_file(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Moves the finished temporary file `tmp` to `target`, which must not
/// exist yet: an immutable output is written once and never replaced, so a
/// name already taken (a run ID used twice) is an error, not an overwrite.
/// The folder entry is made durable before this returns.
pub fn publish(tmp: &Path, target: &Path) -> Result<()> {
    fs::hard_link(tmp, target).map_err(|e| {
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

/// Writes `bytes` to the new file `path` durably, refusing to replace an
/// existing one (see [`publish`]).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_beside(path);
    let written = write_file(&tmp, bytes).and_then(|()| publish(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `.<name>.<pid>.tmp` beside `path`: hidden, and named like every
/// temporary file of a run, so repair and verify recognise one left by a
/// killed run.
fn temporary_beside(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.tmp", std::process::id()))
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

/// Whether a file name is a temporary file of a run: `.<name>.tmp`.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Removes the temporary files a killed run left directly in `dir` when
/// they are temporaries of one of `names` (`.<name>.<pid>.tmp`): a file
/// the tool did not write is never removed. Returns their names.
pub fn remove_temporaries(dir: &Path, names: &[&str]) -> Result<Vec<String>> {
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
            name.strip_prefix('.')
                .is_some_and(|rest| rest.starts_with(&format!("{n}.")))
        });
        if ours && is_temporary(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A writer that hashes and counts everything passing through it, so a
/// file's digest is known when it is closed without reading it back.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the hex digest and the byte count so far.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file one run wrote (or a segment it appended), for the audit manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenFile {
    /// Path relative to the output folder, `/`-separated.
    pub path: String,
    /// SHA-256 of the file (or of exactly the segment's bytes).
    pub sha256: String,
    /// Size in bytes (of the file or the segment).
    pub bytes: u64,
    /// Records in it.
    pub rows: u64,
    /// For an appended segment: where it starts in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// For an appended segment: its length (equal to `bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn publish_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("run.manifest.json");
        write_new(&target, b"first").unwrap();
        let err = write_new(&target, b"second").unwrap_err();
        assert!(err.to_string().contains("never replaced"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"first");
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
    fn hashing_writer_matches_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, digest, bytes) = w.finish();
        assert_eq!(bytes, 11);
        assert_eq!(digest, sha256_hex(&inner));
        assert_eq!(
            digest,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
