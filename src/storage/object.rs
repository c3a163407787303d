//! The output root as a bucket prefix (`s3://`, `gs://`, `az://`), through
//! the `object_store` crate. Credentials and endpoint come from each
//! provider's standard environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`,
//! ...).
//!
//! How the commit protocol's needs are met where nothing can be appended to
//! or renamed:
//! - new immutable objects are written create-only (`If-None-Match: *`); a
//!   large one goes up as a multipart upload, which becomes visible only
//!   when completed (S3 offers no create-only completion through this
//!   crate, so the key's freedom is checked first; keys carry run IDs that
//!   are checked unique);
//! - the checkpoint is replaced by compare-and-swap on its ETag: a run that
//!   was not the last to commit cannot commit over another's work;
//! - the handoff file is a series of immutable segments
//!   `xquik-dm-handoff/part-<start offset, 20 digits>.jsonl`, one per
//!   commit, whose concatenation in name order is the file a folder holds;
//! - a run's page log is kept as pieces
//!   (`state/journal/<name>/.<offset>.tmp`), one per commit, and published
//!   whole when the run ends;
//! - the lock is a lease object, `state/lease.json`, created create-only,
//!   renewed while the run lives, and taken over once expired (or at once
//!   when its holder was a process on this host that is gone).
//!
//! The crate is asynchronous; the protocol runs on blocking threads. Every
//! call is run on one small runtime of this module's own and waited for,
//! so that it works the same from any thread.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::future::Future;
use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, MultipartUpload, ObjectStore as Bucket, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, UpdateVersion,
};

use super::{
    Backend, ChainBytes, Expect, HandoffLog, Journal, Listed, Location, NewObject, Stored,
};
use crate::error::{Error, Result};

/// Objects up to this size are written with one create-only put; larger
/// ones as a multipart upload of parts this large (S3's smallest part).
const PART_BYTES: usize = 5 << 20;
/// Multipart parts in flight at once, besides the one being filled: the
/// upload overlaps the encoding, and memory stays at two parts per file.
const PARTS_IN_FLIGHT: usize = 1;
/// The handoff file's segments.
pub const HANDOFF_DIR: &str = "xquik-dm-handoff";
/// The lease object.
const LEASE: &str = "state/lease.json";

/// How long a lease holds without renewal.
fn lease_ttl() -> Duration {
    Duration::from_secs(60)
}

/// The runtime every bucket call runs on.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("xquik-dm-storage")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::io("<storage runtime>", std::io::Error::other(e.clone())))
}

/// Runs `f` on the storage runtime and waits for it, from any thread
/// (also from inside another runtime: only this thread waits).
fn block<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| Error::io("<storage runtime>", std::io::Error::other("task failed")))
}

/// A handoff segment: its start offset, key and size.
type Segment = (u64, String, u64);

/// An object's version as the protocol carries it: the ETag and, where the
/// provider has one (a GCS generation), the version, joined by a newline
/// (which neither contains).
fn version_token(e_tag: Option<String>, version: Option<String>) -> Option<String> {
    match (e_tag, version) {
        (None, None) => None,
        (e_tag, version) => Some(format!(
            "{}\n{}",
            e_tag.unwrap_or_default(),
            version.unwrap_or_default()
        )),
    }
}

fn update_version(token: &str) -> UpdateVersion {
    let (e_tag, version) = token.split_once('\n').unwrap_or((token, ""));
    UpdateVersion {
        e_tag: (!e_tag.is_empty()).then(|| e_tag.to_owned()),
        version: (!version.is_empty()).then(|| version.to_owned()),
    }
}

/// A bucket prefix.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    url: url::Url,
    bucket: Arc<dyn Bucket>,
    prefix: String,
}

impl ObjectStore {
    /// The store for `url`, configured from the provider's environment.
    /// A scheme that is not a bucket, or a configuration that does not
    /// build (no bucket name, unknown options), is bad input.
    pub fn from_url(url: &url::Url) -> Result<ObjectStore> {
        ObjectStore::with_options(url, &[])
    }

    /// The store for `url`, configured from the provider's environment and
    /// then `options` (the crate's configuration keys, e.g.
    /// `aws_endpoint`): for callers that must not touch the process
    /// environment.
    pub fn with_options(url: &url::Url, options: &[(&str, &str)]) -> Result<ObjectStore> {
        use std::str::FromStr;
        // The bucket client is built on the same rustls as the API client;
        // its provider must be installed first (a no-op when it is).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad = |reason: String| Error::invalid("--out", format!("{url}: {reason}"));
        let unknown = |key: &str| bad(format!("unknown storage option {key:?}"));
        // Each provider's builder: its environment, then `options`, then
        // the URL (bucket and prefix).
        macro_rules! build {
            ($builder:ty, $key:ty) => {{
                let mut builder = <$builder>::from_env();
                for (key, value) in options {
                    let key = <$key>::from_str(key).map_err(|_| unknown(key))?;
                    builder = builder.with_config(key, *value);
                }
                builder
                    .with_url(url.as_str())
                    .build()
                    .map(|b| Arc::new(b) as Arc<dyn Bucket>)
            }};
        }
        let built: std::result::Result<Arc<dyn Bucket>, object_store::Error> = match url.scheme() {
            "s3" | "s3a" => build!(
                object_store::aws::AmazonS3Builder,
                object_store::aws::AmazonS3ConfigKey
            ),
            "gs" => build!(
                object_store::gcp::GoogleCloudStorageBuilder,
                object_store::gcp::GoogleConfigKey
            ),
            "az" | "azure" | "abfs" | "abfss" => build!(
                object_store::azure::MicrosoftAzureBuilder,
                object_store::azure::AzureConfigKey
            ),
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}: use a folder path, s3://, gs:// or az://"
                )));
            }
        };
        let bucket = built.map_err(|e| bad(format!("cannot use this bucket: {}", short(&e))))?;
        let prefix = url.path().trim_matches('/').to_owned();
        Ok(ObjectStore {
            url: url.clone(),
            bucket,
            prefix,
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, path: &ObjectPath) -> String {
        let full = path.as_ref();
        match full.strip_prefix(&self.prefix) {
            Some(rest) if !self.prefix.is_empty() => rest.trim_start_matches('/').to_owned(),
            _ => full.to_owned(),
        }
    }

    /// An error of a call on `key`, in the tool's terms.
    fn error(&self, key: &str, e: object_store::Error) -> Error {
        let path = self.describe(key);
        match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => Error::Conflict { path },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::Storage {
                path,
                reason: format!(
                    "access refused ({}): check the credentials and that they may read and write this prefix",
                    short(&e)
                ),
            },
            other => Error::io(path, std::io::Error::other(short(&other))),
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Option<String>> {
        self.put_bytes(key, Bytes::from(bytes), mode)
    }

    fn put_bytes(&self, key: &str, bytes: Bytes, mode: PutMode) -> Result<Option<String>> {
        let (bucket, path) = (self.bucket.clone(), self.path(key));
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        block(async move {
            bucket
                .put_opts(&path, PutPayload::from(bytes), options)
                .await
        })?
        .map(|r| r.e_tag)
        .map_err(|e| self.error(key, e))
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<Listed>> {
        let (bucket, path) = (self.bucket.clone(), self.path(prefix.trim_end_matches('/')));
        let metas = block(async move {
            let mut stream = bucket.list(Some(&path));
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                found.push(meta?);
            }
            Ok::<_, object_store::Error>(found)
        })?
        .map_err(|e| self.error(prefix, e))?;
        let mut listed: Vec<Listed> = metas
            .iter()
            .map(|m| Listed {
                key: self.key_of(&m.location),
                size: m.size,
            })
            .collect();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// The handoff file's segments, in order.
    fn segments(&self) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        for listed in self.list_keys(&format!("{HANDOFF_DIR}/"))? {
            let name = super::file_name(&listed.key);
            let Some(offset) = segment_offset(name) else {
                continue;
            };
            segments.push((offset, listed.key, listed.size));
        }
        segments.sort();
        Ok(segments)
    }

    /// The segments that tile the file from byte 0, and its length. A gap
    /// or an overlap is damage: refused, naming the segment.
    fn tiled_segments(&self) -> Result<(Vec<Segment>, u64)> {
        let segments = self.segments()?;
        let mut end = 0u64;
        for (offset, key, size) in &segments {
            if *offset != end {
                return Err(Error::Corrupt {
                    path: self.describe(key),
                    reason: format!(
                        "the handoff segments end at byte {end} but the next starts at {offset}: restore the missing segment from backup"
                    ),
                });
            }
            end += size;
        }
        Ok((segments, end))
    }
}

/// Where the audit chain's entries are kept, one object each.
const CHAIN_DIR: &str = "audit/chain";
/// The chain as one object, as an earlier version kept it (read only).
const LEGACY_CHAIN: &str = "audit/chain.jsonl";

/// The key of the chain entry `seq`.
fn chain_key(seq: u64) -> String {
    format!("{CHAIN_DIR}/{seq:020}.jsonl")
}

/// The key of the segment that starts at `offset`.
fn segment_key(offset: u64) -> String {
    format!("{HANDOFF_DIR}/part-{offset:020}.jsonl")
}

/// The start offset a segment's name gives: exactly
/// `part-<20 digits>.jsonl`, nothing else.
pub fn segment_offset(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("part-")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The first line of an object_store error (they carry whole URLs and
/// response bodies; neither is a secret, but one line reads better).
fn short(e: &object_store::Error) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

impl Backend for ObjectStore {
    fn location(&self) -> Location {
        Location::Url(self.url.clone())
    }

    fn prepare(&self) -> Result<()> {
        // Listing the prefix proves the bucket is there and the credentials
        // work, before any API request is made; the lease then proves that
        // writes are allowed.
        let (bucket, path) = (self.bucket.clone(), self.path(""));
        let prefix = (!self.prefix.is_empty()).then_some(path);
        let missing = || {
            Error::invalid(
                "--out",
                format!(
                    "{}: the bucket does not exist (create it, or fix the name)",
                    self.url
                ),
            )
        };
        match block(async move { bucket.list_with_delimiter(prefix.as_ref()).await })? {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Err(missing()),
            // A listing finds a missing prefix empty: a 404 is the bucket
            // (S3 NoSuchBucket, Azure ContainerNotFound, GCS 404).
            Err(e) if e.to_string().contains("404 Not Found") => Err(missing()),
            // No key in the environment: the crate then asks the instance
            // metadata service, which is not there.
            Err(e) if e.to_string().contains("/latest/") => Err(Error::invalid(
                "--out",
                format!(
                    "{}: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where an instance role or web identity provides them)",
                    self.url
                ),
            )),
            Err(e) => match self.error("", e) {
                Error::Io { source, .. } => Err(Error::invalid(
                    "--out",
                    format!(
                        "{} is not usable: {source} (check the bucket name, the endpoint and the credentials in the environment)",
                        self.url
                    ),
                )),
                other => Err(other),
            },
        }
    }

    fn lock(&self, run_id: &str) -> Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        Lease::take(self, run_id).map(|l| Box::new(l) as Box<dyn std::fmt::Debug + Send + Sync>)
    }

    fn is_locked(&self) -> bool {
        matches!(self.get(LEASE), Ok(Some(stored)) if LeaseRecord::parse(&stored.bytes).is_some_and(|r| r.live()))
    }

    fn get(&self, key: &str) -> Result<Option<Stored>> {
        let (bucket, path) = (self.bucket.clone(), self.path(key));
        let got = block(async move {
            let result = bucket.get_opts(&path, GetOptions::default()).await?;
            let version = version_token(result.meta.e_tag.clone(), result.meta.version.clone());
            Ok::<_, object_store::Error>((result.bytes().await?, version))
        })?;
        match got {
            Ok((bytes, version)) => Ok(Some(Stored {
                bytes: bytes.to_vec(),
                version,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>> {
        if range.as_ref().is_some_and(|r| r.is_empty()) {
            return Ok(Box::new(std::io::empty()));
        }
        Ok(Box::new(ObjectReader::open(self, key, range)?))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let (bucket, path) = (self.bucket.clone(), self.path(key));
        match block(async move { bucket.head(&path).await })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.list_keys(prefix)
    }

    fn create(&self, key: &str) -> Result<Box<dyn NewObject>> {
        Ok(Box::new(NewBucketObject {
            store: self.clone(),
            key: key.to_owned(),
            buffer: Vec::new(),
            upload: None,
            finished: false,
        }))
    }

    fn replace(&self, key: &str, bytes: &[u8], expect: Expect<'_>) -> Result<Option<String>> {
        let mode = match expect {
            Expect::Any => PutMode::Overwrite,
            Expect::Missing => PutMode::Create,
            Expect::Version(v) => PutMode::Update(update_version(v)),
        };
        self.put(key, bytes.to_vec(), mode)
    }

    fn chain_append(&self, seq: u64, line: &[u8]) -> Result<()> {
        // One object per entry, create-only: nothing is rewritten as the
        // chain grows, and two runs can never both append entry `seq`.
        self.put(&chain_key(seq), line.to_vec(), PutMode::Create)
            .map(|_| ())
    }

    fn chain_read(&self, from: Option<u64>) -> Result<Option<ChainBytes>> {
        if let Some(from) = from.filter(|f| *f > 0) {
            // The entries from `from` on, one by one until the first that
            // is missing: two requests for a run that finds the chain as
            // its checkpoint left it.
            let mut bytes = Vec::new();
            for seq in from.. {
                match self.get(&chain_key(seq))? {
                    Some(stored) => bytes.extend_from_slice(&stored.bytes),
                    None => break,
                }
            }
            if !bytes.is_empty() {
                return Ok(Some(ChainBytes { bytes, start: 0 }));
            }
        }
        // All of it: a chain written whole by an earlier version, then the
        // entries, fetched a few at a time.
        let mut bytes = self.get(LEGACY_CHAIN)?.map(|s| s.bytes).unwrap_or_default();
        let keys: Vec<String> = self
            .list_keys(&format!("{CHAIN_DIR}/"))?
            .into_iter()
            .map(|l| l.key)
            .collect();
        let found = !keys.is_empty() || !bytes.is_empty();
        let (bucket, paths) = (
            self.bucket.clone(),
            keys.iter().map(|k| self.path(k)).collect::<Vec<_>>(),
        );
        let parts = block(async move {
            futures_util::stream::iter(paths)
                .map(|path| {
                    let bucket = bucket.clone();
                    async move { bucket.get(&path).await?.bytes().await }
                })
                .buffered(16)
                .collect::<Vec<_>>()
                .await
        })?;
        for (key, part) in keys.iter().zip(parts) {
            bytes.extend_from_slice(&part.map_err(|e| self.error(key, e))?);
        }
        Ok(found.then_some(ChainBytes { bytes, start: 0 }))
    }

    fn chain_cut(&self, _len: u64) -> Result<()> {
        // Every entry is put whole: there is never a torn line to cut.
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        if self.size(to)?.is_some() {
            return Err(Error::Conflict {
                path: self.describe(to),
            });
        }
        let (bucket, a, b) = (self.bucket.clone(), self.path(from), self.path(to));
        block(async move { bucket.copy(&a, &b).await })?.map_err(|e| self.error(to, e))?;
        self.delete(from)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (bucket, path) = (self.bucket.clone(), self.path(key));
        match block(async move { bucket.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    fn handoff(&self, committed: u64) -> Result<Box<dyn HandoffLog>> {
        // Each commit puts one segment and then the checkpoint: past the
        // committed length there can be only the segment of a commit that
        // did not complete, which starts there. No listing needed.
        let stray = segment_key(committed);
        let size = self.size(&stray)?;
        Ok(Box::new(BucketHandoff {
            store: self.clone(),
            segments: size.map(|_| (committed, stray)).into_iter().collect(),
            committed: committed + size.unwrap_or(0),
            pending: Vec::new(),
        }))
    }

    fn handoff_reader(&self, range: Range<u64>) -> Result<Box<dyn Read + Send>> {
        let (segments, _) = self.tiled_segments()?;
        let mut parts = Vec::new();
        for (offset, key, size) in segments {
            let (start, end) = (offset.max(range.start), (offset + size).min(range.end));
            if start < end {
                parts.push((key, start - offset..end - offset));
            }
        }
        Ok(Box::new(SegmentReader {
            store: self.clone(),
            parts: parts.into_iter().collect(),
            current: None,
        }))
    }

    fn handoff_install(&self, staged: &str) -> Result<()> {
        let Some(size) = self.size(staged)? else {
            return Ok(());
        };
        // Every old segment goes before the new generation is put at
        // offset 0; until `staged` is deleted (last), a repeat starts over.
        for (_, key, _) in self.segments()? {
            self.delete(&key)?;
        }
        if size > 0 {
            let (bucket, a, b) = (
                self.bucket.clone(),
                self.path(staged),
                self.path(&segment_key(0)),
            );
            block(async move { bucket.copy(&a, &b).await })?
                .map_err(|e| self.error(&segment_key(0), e))?;
        }
        self.delete(staged)
    }

    fn handoff_len(&self) -> Result<u64> {
        Ok(self.tiled_segments()?.1)
    }

    fn journal(&self, key: &str) -> Result<Box<dyn Journal>> {
        Ok(Box::new(BucketJournal {
            store: self.clone(),
            key: key.to_owned(),
            all: Vec::new(),
            synced: 0,
            pieces: Vec::new(),
        }))
    }

    fn journal_pieces(&self, key: &str) -> Result<Vec<String>> {
        let dir = format!("{}/{}/", super::JOURNAL_DIR, super::file_name(key));
        Ok(self.list_keys(&dir)?.into_iter().map(|l| l.key).collect())
    }

    fn sweep_temporaries(&self, _names: &[&str]) -> Result<Vec<String>> {
        // Puts are atomic: a bucket has no temporary files to sweep. (An
        // unfinished multipart upload is invisible; a bucket lifecycle rule
        // for incomplete uploads reclaims its parts.)
        Ok(Vec::new())
    }
}

/// A streaming reader of one object: each chunk is pulled from the
/// response stream on the storage runtime while the reading thread waits
/// (as it would for a file), so memory holds one chunk at a time.
struct ObjectReader {
    stream: Option<futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>>,
    current: Bytes,
    key: String,
}

impl ObjectReader {
    fn open(store: &ObjectStore, key: &str, range: Option<Range<u64>>) -> Result<ObjectReader> {
        let (bucket, path) = (store.bucket.clone(), store.path(key));
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = block(async move { bucket.get_opts(&path, options).await })?
            .map_err(|e| store.error(key, e))?;
        Ok(ObjectReader {
            stream: Some(result.into_stream()),
            current: Bytes::new(),
            key: key.to_owned(),
        })
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            let Some(mut stream) = self.stream.take() else {
                return Ok(0);
            };
            let (stream, chunk) = block(async move {
                let chunk = stream.next().await;
                (stream, chunk)
            })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            match chunk {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.stream = Some(stream);
                }
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "{}: {}",
                        self.key,
                        short(&e)
                    )));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), self.current.get(..n)) {
            to.copy_from_slice(from);
        }
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Reads a range of the handoff file across its segments.
struct SegmentReader {
    store: ObjectStore,
    parts: std::collections::VecDeque<(String, Range<u64>)>,
    current: Option<ObjectReader>,
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(reader) = &mut self.current {
                let n = reader.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.current = None;
            }
            let Some((key, range)) = self.parts.pop_front() else {
                return Ok(0);
            };
            let reader = ObjectReader::open(&self.store, &key, Some(range))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.current = Some(reader);
        }
    }
}

/// A new immutable object being written to a bucket.
struct NewBucketObject {
    store: ObjectStore,
    key: String,
    buffer: Vec<u8>,
    upload: Option<Upload>,
    finished: bool,
}

/// A multipart upload under way, with its parts in flight.
struct Upload {
    upload: Box<dyn MultipartUpload>,
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
}

impl NewBucketObject {
    /// Sends the buffer as the next part (starting the upload first).
    fn send_part(&mut self) -> std::io::Result<()> {
        let io = |e: Error| std::io::Error::other(e.to_string());
        if self.upload.is_none() {
            // Completion cannot be made create-only here: check the key is
            // free before the first byte goes up.
            if self.store.size(&self.key).map_err(io)?.is_some() {
                return Err(io(Error::Conflict {
                    path: self.store.describe(&self.key),
                }));
            }
            let (bucket, path) = (self.store.bucket.clone(), self.store.path(&self.key));
            let upload = block(async move { bucket.put_multipart(&path).await })
                .map_err(io)?
                .map_err(|e| io(self.store.error(&self.key, e)))?;
            self.upload = Some(Upload {
                upload,
                in_flight: Default::default(),
            });
        }
        let Some(upload) = self.upload.as_mut() else {
            return Ok(());
        };
        let part = PutPayload::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(PART_BYTES),
        ));
        let future = upload.upload.put_part(part);
        upload
            .in_flight
            .push_back(runtime().map_err(io)?.spawn(future));
        while upload.in_flight.len() > PARTS_IN_FLIGHT {
            if let Some(handle) = upload.in_flight.pop_front() {
                wait_part(handle).map_err(io)?;
            }
        }
        Ok(())
    }
}

fn wait_part(handle: tokio::task::JoinHandle<object_store::Result<()>>) -> Result<()> {
    block(handle)?
        .map_err(|e| Error::io("<upload>", std::io::Error::other(e)))?
        .map_err(|e| Error::io("<upload>", std::io::Error::other(short(&e))))
}

impl std::io::Write for NewBucketObject {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= PART_BYTES {
            self.send_part()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl NewObject for NewBucketObject {
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        let Some(mut upload) = self.upload.take() else {
            // Small: one create-only put.
            let bytes = std::mem::take(&mut self.buffer);
            return self
                .store
                .put(&self.key, bytes, PutMode::Create)
                .map(|_| ());
        };
        if !self.buffer.is_empty() {
            self.upload = Some(upload);
            self.send_part()
                .map_err(|e| Error::io(self.store.describe(&self.key), e))?;
            let Some(back) = self.upload.take() else {
                return Ok(());
            };
            upload = back;
        }
        let waited: Result<()> = upload.in_flight.drain(..).try_for_each(wait_part);
        if let Err(e) = waited {
            let mut parts = upload.upload;
            let _ = block(async move { parts.abort().await });
            return Err(e);
        }
        let mut parts = upload.upload;
        let completed = block(async move {
            let result = parts.complete().await;
            if result.is_err() {
                // Its parts are not kept (nor billed) for nothing.
                let _ = parts.abort().await;
            }
            result
        })?;
        completed
            .map(|_| ())
            .map_err(|e| self.store.error(&self.key, e))
    }
}

impl Drop for NewBucketObject {
    fn drop(&mut self) {
        if !self.finished
            && let Some(upload) = self.upload.take()
        {
            // Abandoned: abort the upload so that its parts are not kept.
            let mut parts = upload.upload;
            let _ = block(async move { parts.abort().await });
        }
    }
}

/// The handoff file in a bucket: one immutable segment per commit.
#[derive(Debug)]
struct BucketHandoff {
    store: ObjectStore,
    segments: Vec<(u64, String)>,
    committed: u64,
    pending: Vec<u8>,
}

impl HandoffLog for BucketHandoff {
    fn len(&self) -> u64 {
        self.committed + self.pending.len() as u64
    }

    fn truncate(&mut self, len: u64) -> Result<u64> {
        let before = self.len();
        self.pending.clear();
        // Segments a killed run wrote after its last commit are removed,
        // newest first, so that a crash halfway leaves a prefix.
        while let Some((offset, key)) = self.segments.last().cloned() {
            if offset < len {
                break;
            }
            self.store.delete(&key)?;
            self.segments.pop();
            self.committed = offset;
        }
        if self.committed != len {
            return Err(Error::Corrupt {
                path: self.store.describe(HANDOFF_DIR),
                reason: format!(
                    "the checkpoint commits {len} bytes, which is not where a segment ends: restore the bucket from backup"
                ),
            });
        }
        Ok(before - self.committed)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let key = segment_key(self.committed);
        let bytes = Bytes::from(std::mem::take(&mut self.pending));
        match self.store.put_bytes(&key, bytes.clone(), PutMode::Create) {
            Ok(_) => {}
            // A put that was applied but whose answer was lost, then
            // retried into "exists": the object is ours if it holds
            // exactly these bytes.
            Err(Error::Conflict { .. })
                if self
                    .store
                    .get(&key)?
                    .is_some_and(|s| s.bytes.as_slice() == bytes.as_ref()) => {}
            Err(e) => {
                // Kept for the caller to see they are not durable.
                self.pending = bytes.to_vec();
                return Err(e);
            }
        }
        self.segments.push((self.committed, key));
        self.committed += bytes.len() as u64;
        Ok(())
    }
}

/// A run's journal in a bucket: a piece per commit, published whole at the
/// end. Its lines are held in memory until then (a page log is about 100
/// bytes per page).
#[derive(Debug)]
struct BucketJournal {
    store: ObjectStore,
    key: String,
    all: Vec<u8>,
    synced: usize,
    pieces: Vec<String>,
}

impl Journal for BucketJournal {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.all.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.synced == self.all.len() {
            return Ok(());
        }
        let piece = format!(
            "{}/{}/.{:020}.tmp",
            super::JOURNAL_DIR,
            super::file_name(&self.key),
            self.synced
        );
        self.store.put(
            &piece,
            self.all.get(self.synced..).unwrap_or_default().to_vec(),
            PutMode::Create,
        )?;
        self.pieces.push(piece);
        self.synced = self.all.len();
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.store.put(&self.key, self.all, PutMode::Create)?;
        for piece in &self.pieces {
            self.store.delete(piece)?;
        }
        Ok(())
    }
}

/// What the lease object says.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    run_id: String,
    /// Where the holder runs: host name, kernel boot and PID namespace, so
    /// that its pid is probed only where that pid means the same process.
    host: String,
    #[serde(default)]
    boot: String,
    #[serde(default)]
    pid_ns: String,
    pid: u32,
    /// Unix seconds after which the lease no longer holds.
    expires: i64,
}

impl LeaseRecord {
    fn parse(bytes: &[u8]) -> Option<LeaseRecord> {
        serde_json::from_slice(bytes).ok()
    }

    fn new(run_id: &str) -> LeaseRecord {
        let (host, boot, pid_ns) = whereabouts();
        LeaseRecord {
            run_id: run_id.to_owned(),
            host,
            boot,
            pid_ns,
            pid: std::process::id(),
            expires: chrono::Utc::now().timestamp() + lease_ttl().as_secs() as i64,
        }
    }

    /// Whether it still holds: not expired, and not held by a process that
    /// is known to be gone (same host, boot and PID namespace, no such pid).
    fn live(&self) -> bool {
        if chrono::Utc::now().timestamp() >= self.expires {
            return false;
        }
        let (host, boot, pid_ns) = whereabouts();
        let comparable = !self.boot.is_empty()
            && !self.pid_ns.is_empty()
            && (self.host.as_str(), self.boot.as_str(), self.pid_ns.as_str())
                == (host.as_str(), boot.as_str(), pid_ns.as_str());
        if !comparable || self.pid == std::process::id() {
            return true;
        }
        // Signal 0 only asks whether the process exists.
        (unsafe { libc::kill(self.pid as libc::pid_t, 0) }) == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }

    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// This process's host name, kernel boot ID and PID namespace (empty where
/// they cannot be read: then no pid is ever probed).
fn whereabouts() -> (String, String, String) {
    let mut buf = [0u8; 256];
    // gethostname writes a NUL-terminated name into the buffer.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
    } else {
        String::new()
    };
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    (host, boot, pid_ns)
}

/// The lease a run holds on a prefix, renewed in the background while it
/// lives and removed when it is dropped.
#[derive(Debug)]
struct Lease {
    store: ObjectStore,
    run_id: String,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    fn take(store: &ObjectStore, run_id: &str) -> Result<Lease> {
        let mine = LeaseRecord::new(run_id);
        let version = match store.put(LEASE, mine.bytes(), PutMode::Create) {
            Ok(version) => version,
            Err(Error::Conflict { .. }) => {
                // Held, or left by a run that is gone: take it over only if
                // it no longer holds, and only if nobody else did first.
                let current = store.get(LEASE)?;
                let held = current
                    .as_ref()
                    .and_then(|s| LeaseRecord::parse(&s.bytes))
                    .is_some_and(|r| r.live());
                let version = current.as_ref().and_then(|s| s.version.clone());
                match (held, version) {
                    (false, Some(v)) => store
                        .replace(LEASE, &mine.bytes(), Expect::Version(&v))
                        .map_err(|_| Error::Locked {
                            path: store.describe(""),
                        })?,
                    _ => {
                        return Err(Error::Locked {
                            path: store.describe(""),
                        });
                    }
                }
            }
            Err(other) => return Err(other),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (store, run_id, stop) = (store.clone(), run_id.to_owned(), stop.clone());
            std::thread::Builder::new()
                .name("xquik-dm-lease".into())
                .spawn(move || renew(&store, &run_id, version, &stop))
                .ok()
        };
        Ok(Lease {
            store: store.clone(),
            run_id: run_id.to_owned(),
            stop,
            renewer,
        })
    }
}

/// Renews the lease every third of its life until told to stop, retrying a
/// failed renewal until the lease would expire. A lease lost anyway
/// (another run took it over) cannot lead to damage: that run's first act
/// is to commit the checkpoint it read, so this run's next commit fails
/// its compare-and-swap and stops.
fn renew(store: &ObjectStore, run_id: &str, mut version: Option<String>, stop: &AtomicBool) {
    let step = Duration::from_millis(200);
    let every = lease_ttl() / 3;
    let mut since = std::time::Instant::now();
    let mut renewed = since;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(step);
        if since.elapsed() < every {
            continue;
        }
        let expect = match &version {
            Some(v) => Expect::Version(v),
            None => Expect::Any,
        };
        match store.replace(LEASE, &LeaseRecord::new(run_id).bytes(), expect) {
            Ok(v) => {
                version = v;
                renewed = std::time::Instant::now();
                since = renewed;
            }
            Err(Error::Conflict { .. }) => {
                tracing::warn!("the lease on the output prefix was taken over by another run");
                return;
            }
            Err(e) if renewed.elapsed() < lease_ttl() => {
                tracing::warn!(error = %e, "could not renew the lease on the output prefix; retrying");
                since = std::time::Instant::now() - every + Duration::from_secs(2);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the lease on the output prefix expired");
                return;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        // Removed only while it is still ours.
        if let Ok(Some(stored)) = self.store.get(LEASE)
            && LeaseRecord::parse(&stored.bytes).is_some_and(|r| r.run_id == self.run_id)
        {
            let _ = self.store.delete(LEASE);
        }
    }
}
