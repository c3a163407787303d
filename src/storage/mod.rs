//! Where the outputs live: the seam between the commit protocol
//! ([`crate::store`], [`crate::audit`], [`crate::checkpoint`]) and the medium
//! it runs on. The protocol — what is durable when, how a killed run is
//! repaired, the checkpoint as the commit record, the chain — is written
//! once against [`Backend`]; a backend only knows how to keep objects:
//!
//! - [`local::LocalDir`]: a folder on a POSIX file system (private modes,
//!   fsync of files and of their folder entries, create-only publication by
//!   hard link, an `flock` on `state/lock`);
//! - [`object::ObjectStore`]: an S3, GCS or Azure bucket prefix, through
//!   the `object_store` crate (create-only puts, compare-and-swap by ETag,
//!   a lease object for the lock).
//!
//! Keys are paths relative to the output root, `/`-separated, exactly as in
//! a folder (`state/checkpoint.json`, `parquet/messages/...`). The one
//! exception is the handoff file, which object storage cannot append to; it
//! is a [`HandoffLog`], which a backend keeps as one file or as immutable
//! segments whose concatenation is that file.
//!
//! [`shared_tables::SharedTables`] wraps a shard's root so that its Delta
//! tables are the prefix's, shared with the other shards.

pub mod counting;
pub mod local;
pub mod object;
pub mod shared_tables;

use std::fmt::Debug;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A shared handle on an output root.
pub type Storage = Arc<dyn Backend>;

/// Where outputs go, as the command line names it: a folder, or a bucket
/// URL (`s3://`, `gs://`, `az://`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(into = "String")]
pub enum Location {
    /// A local folder.
    Dir(PathBuf),
    /// A bucket and prefix.
    Url(url::Url),
}

impl Location {
    /// Reads `--out`: a URL with a scheme of two or more letters is a
    /// bucket, anything else a folder (`C:` style drive letters do not
    /// occur on the platforms this runs on, but one letter is never a
    /// scheme).
    pub fn parse(text: &str) -> Location {
        match url::Url::parse(text) {
            Ok(url) if url.scheme().len() >= 2 && text.contains("://") => Location::Url(url),
            _ => Location::Dir(PathBuf::from(text)),
        }
    }

    /// The backend of the location (nothing is created or checked yet:
    /// see [`Backend::prepare`]).
    pub fn open(&self) -> Result<Storage> {
        match self {
            Location::Dir(dir) => Ok(Arc::new(local::LocalDir::new(dir))),
            Location::Url(url) => Ok(Arc::new(object::ObjectStore::from_url(url)?)),
        }
    }

    /// [`Location::open`], but a folder stages its new files in the folder
    /// `staging`'s staging folder (a bucket stages nothing): a sharded
    /// prefix opened for a shard ([`shared_tables`]).
    pub fn open_staged_in(&self, staging: &Location) -> Result<Storage> {
        match (self, staging) {
            (Location::Dir(dir), Location::Dir(other)) => {
                Ok(Arc::new(local::LocalDir::new(dir).staging_in(other)))
            }
            _ => self.open(),
        }
    }

    /// The location of the folder or prefix `sub` inside this one.
    pub fn join(&self, sub: &str) -> Location {
        match self {
            Location::Dir(dir) => Location::Dir(dir.join(sub)),
            Location::Url(url) => {
                let mut url = url.clone();
                let path = format!("{}/{sub}", url.path().trim_end_matches('/'));
                url.set_path(&path);
                Location::Url(url)
            }
        }
    }

    /// The folder or prefix this one is in, and this one's name in it;
    /// `None` at the top.
    pub fn split_last(&self) -> Option<(Location, String)> {
        match self {
            Location::Dir(dir) => {
                let name = dir.file_name()?.to_str()?.to_owned();
                let parent = dir.parent()?;
                let parent = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_owned()
                };
                Some((Location::Dir(parent), name))
            }
            Location::Url(url) => {
                let path = url.path().trim_end_matches('/');
                let (parent, name) = path.rsplit_once('/')?;
                if name.is_empty() {
                    return None;
                }
                let mut up = url.clone();
                up.set_path(parent);
                Some((Location::Url(up), name.to_owned()))
            }
        }
    }

    /// Refuses (bad input, naming `field`) a folder that does not exist:
    /// for commands that read an output, which must not create one.
    pub fn require_existing(&self, field: &'static str) -> Result<()> {
        match self {
            Location::Dir(dir) if !dir.is_dir() => Err(Error::invalid(
                field,
                format!("{} is not a folder", dir.display()),
            )),
            _ => Ok(()),
        }
    }

    /// The folder, when it is one.
    pub fn as_dir(&self) -> Option<&std::path::Path> {
        match self {
            Location::Dir(dir) => Some(dir),
            Location::Url(_) => None,
        }
    }
}

impl From<PathBuf> for Location {
    /// A path as given on the command line or in a job file: a bucket URL
    /// when it reads as one.
    fn from(path: PathBuf) -> Location {
        match path.to_str() {
            Some(text) if text.contains("://") => Location::parse(text),
            _ => Location::Dir(path),
        }
    }
}

impl From<&PathBuf> for Location {
    fn from(dir: &PathBuf) -> Location {
        Location::from(dir.clone())
    }
}

impl From<&std::path::Path> for Location {
    fn from(dir: &std::path::Path) -> Location {
        Location::Dir(dir.to_owned())
    }
}

impl From<Location> for String {
    fn from(location: Location) -> String {
        location.to_string()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::Url(url) => write!(f, "{url}"),
        }
    }
}

/// A small object read whole, with the version a compare-and-swap of it
/// must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its version (an ETag), when the backend has versions.
    pub version: Option<String>,
}

/// One object found by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An object being written. Nothing of it is visible until
/// [`NewObject::finish`] publishes it, create-only; dropping it unfinished
/// leaves nothing behind that a reader could take for the object.
pub trait NewObject: Write + Send {
    /// Makes it durable and visible under its key, which must be free.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// What a [`Backend::replace`] expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Anything: an unconditional replace (derived files).
    Any,
    /// No object yet.
    Missing,
    /// The version read before (compare-and-swap).
    Version(&'a str),
}

/// A run's journal (the page log): every line is kept as it comes, so that
/// the next run can recover a killed run's journal; it is published under
/// its key when the run ends.
pub trait Journal: Send + Debug {
    /// Appends complete lines.
    fn append(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes what was appended durable.
    fn sync(&mut self) -> Result<()>;
    /// Publishes the journal under its key, create-only.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// The handoff file as the commit protocol appends to it.
pub trait HandoffLog: Send + Debug {
    /// Bytes in it, committed or not.
    fn len(&self) -> u64;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Cuts it back to `len` bytes, durably (what a killed run left after
    /// its last commit). Returns the bytes cut.
    fn truncate(&mut self, len: u64) -> Result<u64>;
    /// Appends complete lines (not yet durable).
    fn append(&mut self, bytes: &[u8]) -> Result<()>;
    /// Makes everything appended durable.
    fn sync(&mut self) -> Result<()>;
}

/// An output root: a folder or a bucket prefix.
pub trait Backend: Send + Sync + Debug {
    /// The root as the user named it, for messages.
    fn location(&self) -> Location;
    /// A key as the user would recognise it in a message.
    fn describe(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.location()))
    }
    /// Makes the root usable (creates the folder; checks the bucket is
    /// there and writable). Bad input (exit 2) when it is not.
    fn prepare(&self) -> Result<()>;
    /// Takes the root's lock for one run, or says that another run holds
    /// it ([`Error::Locked`]). Released when the guard drops.
    fn lock(&self, run_id: &str) -> Result<Box<dyn Debug + Send + Sync>>;
    /// Whether a run holds the lock now.
    fn is_locked(&self) -> bool;
    /// A small object, whole; `None` when missing.
    fn get(&self, key: &str) -> Result<Option<Stored>>;
    /// A streaming reader of an object (or of `range` of it).
    fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>>;
    /// An object's size; `None` when missing.
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix` (a folder, ending in
    /// `/`), sorted by key. A folder's temporary files are included; the
    /// caller decides what they are.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>>;
    /// Starts a new immutable object.
    fn create(&self, key: &str) -> Result<Box<dyn NewObject>>;
    /// Writes a new immutable object whole.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut object = self.create(key)?;
        object
            .write_all(bytes)
            .map_err(|e| Error::io(self.describe(key), e))?;
        object.finish()
    }
    /// Replaces a small mutable object atomically, if it is as `expect`
    /// says (compare-and-swap where the backend has versions; a folder's
    /// lock already keeps other runs out); a lost race is
    /// [`Error::Conflict`]. Returns the new version.
    fn replace(&self, key: &str, bytes: &[u8], expect: Expect<'_>) -> Result<Option<String>>;
    /// Appends the line of the audit chain's entry `seq` (see
    /// [`crate::audit`]), durably; create-only where the backend can.
    fn chain_append(&self, seq: u64, line: &[u8]) -> Result<()>;
    /// Lines of the audit chain: all of them (`from` = `None`), or enough
    /// of its end to hold the entries from `from` on and at least the last
    /// one. `None` when there is no chain.
    fn chain_read(&self, from: Option<u64>) -> Result<Option<ChainBytes>>;
    /// Cuts a torn last line: the chain keeps its first `len` bytes.
    fn chain_cut(&self, len: u64) -> Result<()>;
    /// Moves an object to a new key, which must be free.
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Removes an object; a missing one is fine.
    fn delete(&self, key: &str) -> Result<()>;
    /// Opens the handoff file for appending; `committed` is the length the
    /// checkpoint commits, which a backend that keeps the file in segments
    /// trusts instead of listing them (only what a killed run appended
    /// after it can follow it).
    fn handoff(&self, committed: u64) -> Result<Box<dyn HandoffLog>>;
    /// A streaming reader of `range` of the handoff file.
    fn handoff_reader(&self, range: Range<u64>) -> Result<Box<dyn Read + Send>>;
    /// The handoff file's length.
    fn handoff_len(&self) -> Result<u64>;
    /// Replaces the handoff file by the object `staged` (its new
    /// generation, written with [`Backend::create`]) and deletes every byte
    /// of the old one (every old segment in a bucket); `staged` goes too.
    /// Safe to repeat until `staged` is gone, and a no-op after: a repair
    /// finishes an install that was killed half way.
    fn handoff_install(&self, staged: &str) -> Result<()>;
    /// Starts the journal that will be published as `key`.
    fn journal(&self, key: &str) -> Result<Box<dyn Journal>>;
    /// The pieces a journal of `key` that was never finished left (a
    /// killed run's), in order.
    fn journal_pieces(&self, key: &str) -> Result<Vec<String>>;
    /// Removes the temporary files a killed run left of the objects named
    /// `names` at the root and in `state/`. Returns what was removed.
    fn sweep_temporaries(&self, names: &[&str]) -> Result<Vec<String>>;
    /// The folder, under each Delta table's root, that holds this root's
    /// data files when the root shares its tables with other roots (a shard
    /// of a prefix with one table per prefix: `shard-K`, see
    /// [`shared_tables`]); `None` when the tables are the root's own.
    fn table_part(&self) -> Option<&str> {
        None
    }
}

/// Lines of the audit chain as read by [`Backend::chain_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBytes {
    /// Whole lines (the last one may be torn: no newline).
    pub bytes: Vec<u8>,
    /// Where they start in the chain.
    pub start: u64,
}

/// Where a backend that cannot append keeps the pieces of a run's journal.
pub const JOURNAL_DIR: &str = "state/journal";

/// Whether a file name is a temporary file of a run: `.<name>.tmp`.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// The last segment of a key.
pub fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
