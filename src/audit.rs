//! The body-free audit trail under `audit/`: one manifest per run, a rows
//! file of the message IDs the run wrote, a hash chain linking the runs, and
//! `SHA256SUMS` for checking with coreutils alone.
//!
//! Layout:
//! - `audit/runs/<run>.manifest.json`: what the run fetched and wrote, with
//!   the digest of the previous run's manifest (the chain);
//! - `audit/runs/<run>.rows.jsonl`: one line per record the run wrote
//!   (`record_type`, `user_id`: the conversation or recipient,
//!   `message_id`), with a Merkle root over them in the manifest, so a single
//!   message can be proven written without revealing the others;
//! - `audit/runs/<run>.pages.jsonl`: one line per history page fetched;
//! - `audit/runs/<run>.sha256`: the files the run added (its manifest and
//!   everything the manifest lists but the handoff segments), in the format
//!   `sha256sum -c` reads;
//! - `audit/chain.jsonl`: one line per run: its manifest's path and SHA-256
//!   and the previous one's. Removing, editing, inserting or reordering a
//!   run breaks a link (a bucket keeps one object per line);
//! - `SHA256SUMS`: the digests of the files that change (the handoff file
//!   and the checkpoint). With the runs' checksum files, every output file
//!   is checkable with coreutils from the output folder, and no run
//!   rewrites a file that grows with the history.
//!
//! Nothing here ever holds a message body: manifests carry IDs, cursors,
//! statuses, endpoints, media references, counts, credits and digests.
//!
//! With `XQUIK_DM_AUDIT_KEY` set, each manifest also carries an HMAC-SHA256
//! over its canonical bytes (the manifest without its `signature`, as
//! compact JSON with sorted keys).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Range;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::erasure::record::Erasure;
use crate::error::{Error, Result};
use crate::records::json_str;
use crate::sinks::{WrittenFile, sha256_hex};
use crate::storage::{Backend, Expect, Journal, NewObject, file_name};

/// Folder of the manifests and rows files.
pub const RUNS_DIR: &str = "audit/runs";
/// The chain file.
pub const CHAIN: &str = "audit/chain.jsonl";
/// The coreutils checksum file of the files that change (the handoff
/// file, the chain, the checkpoint).
pub const SUMS: &str = "SHA256SUMS";
/// Suffix of a run's own checksum file, `audit/runs/<run>.sha256`: the
/// files it added, in `sha256sum -c` format.
pub const RUN_SUMS_SUFFIX: &str = ".sha256";
/// The suffix of a run's detached manifest signature: the manifest's name
/// and [`crate::sshsig::SIG_SUFFIX`].
pub const SIGNATURE_SUFFIX: &str = ".manifest.json.sig";
/// Environment variable holding the optional manifest signing key.
pub const AUDIT_KEY_ENV: &str = "XQUIK_DM_AUDIT_KEY";
/// Manifest format tag.
pub const MANIFEST_FORMAT: &str = "xquik-dm-manifest/1";

/// The manifest signing key (from `XQUIK_DM_AUDIT_KEY`); redacted in `Debug`.
#[derive(Clone)]
pub struct AuditKey(pub Vec<u8>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// A streaming Merkle tree (RFC 6962 shape: leaf `H(0x00 || data)`, node
/// `H(0x01 || left || right)`), in O(log n) memory.
#[derive(Debug, Default, Clone)]
pub struct Merkle {
    stack: Vec<(u32, [u8; 32])>,
    leaves: u64,
}

impl Merkle {
    /// Adds a leaf.
    pub fn push(&mut self, data: &[u8]) {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(data);
        let mut node: [u8; 32] = h.finalize().into();
        let mut level = 0;
        while let Some(&(top_level, top)) = self.stack.last() {
            if top_level != level {
                break;
            }
            self.stack.pop();
            node = Self::node(&top, &node);
            level += 1;
        }
        self.stack.push((level, node));
        self.leaves += 1;
    }

    fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(left);
        h.update(right);
        h.finalize().into()
    }

    /// The root, hex; `None` for no leaves.
    pub fn root(&self) -> Option<String> {
        let mut iter = self.stack.iter().rev();
        let mut acc = iter.next()?.1;
        for (_, left) in iter {
            acc = Self::node(left, &acc);
        }
        Some(hex::encode(acc))
    }

    /// Leaves added.
    pub fn len(&self) -> u64 {
        self.leaves
    }

    /// Whether no leaf was added.
    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }
}

/// One line of a rows file. Field names are the handoff record's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// `history` or `send`.
    pub record_type: String,
    /// The conversation (history) or recipient (send).
    pub user_id: String,
    /// The message ID.
    pub message_id: String,
}

/// A body-free JSON Lines file of a run, written as the run goes: the rows
/// file (the IDs it wrote, with a Merkle root) or the page log (every
/// request it made). Streamed out so that memory stays flat however many
/// messages and pages a run handles.
pub struct AuditLog {
    key: String,
    sink: LogSink,
    hasher: Sha256,
    merkle: Option<Merkle>,
    lines: u64,
    bytes: u64,
    line: Vec<u8>,
}

/// Where a log's lines go: a new object (the rows file, which the next run
/// rebuilds from the JSONL if this one is killed), or a journal whose
/// lines outlive a killed run (the page log; see [`repair_runs`]).
enum LogSink {
    Object(Box<dyn NewObject>),
    Journal(Box<dyn Journal>),
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("key", &self.key)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

/// An audit log file as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogInfo {
    /// Path relative to the output folder.
    pub path: String,
    /// SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lines.
    pub rows: u64,
    /// Merkle root over the lines (without their newline); null when empty
    /// or not kept (the page log).
    pub merkle_root: Option<String>,
}

/// The kinds of audit log a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// `<run>.rows.jsonl`: the IDs of the records written, Merkle-rooted.
    Rows,
    /// `<run>.pages.jsonl`: every history page fetched.
    Pages,
}

impl LogKind {
    /// The file name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            LogKind::Rows => ".rows.jsonl",
            LogKind::Pages => ".pages.jsonl",
        }
    }
}

impl AuditLog {
    /// Starts the `kind` log of `run_id`.
    pub fn create(storage: &dyn Backend, run_id: &str, kind: LogKind) -> Result<AuditLog> {
        let key = format!("{RUNS_DIR}/{run_id}{}", kind.suffix());
        let sink = match kind {
            LogKind::Rows => LogSink::Object(storage.create(&key)?),
            LogKind::Pages => LogSink::Journal(storage.journal(&key)?),
        };
        Ok(AuditLog {
            key,
            sink,
            hasher: Sha256::new(),
            merkle: (kind == LogKind::Rows).then(Merkle::default),
            lines: 0,
            bytes: 0,
            line: Vec::with_capacity(256),
        })
    }

    /// Appends one record as a line.
    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record)
            .map_err(|e| Error::io(&self.key, e.into()))?;
        self.push_line()
    }

    /// Adds one record's IDs to a rows file: the line [`AuditRow`]
    /// serializes as, written without serde since a sync writes one per
    /// message (a test holds the two equal).
    pub fn push_row(&mut self, record_type: &str, user_id: &str, message_id: &str) -> Result<()> {
        self.line.clear();
        self.line.extend_from_slice(br#"{"record_type":"#);
        json_str(&mut self.line, record_type);
        self.line.extend_from_slice(br#","user_id":"#);
        json_str(&mut self.line, user_id);
        self.line.extend_from_slice(br#","message_id":"#);
        json_str(&mut self.line, message_id);
        self.line.push(b'}');
        self.push_line()
    }

    /// Appends `self.line` (without its newline yet) to the log.
    fn push_line(&mut self) -> Result<()> {
        if let Some(merkle) = &mut self.merkle {
            merkle.push(&self.line);
        }
        self.line.push(b'\n');
        match &mut self.sink {
            LogSink::Object(object) => object
                .write_all(&self.line)
                .map_err(|e| Error::io(&self.key, e))?,
            // A page log line goes out at once: if the run is killed, the
            // next run finds every request it made and seals them.
            LogSink::Journal(journal) => journal.append(&self.line)?,
        }
        self.hasher.update(&self.line);
        self.bytes += self.line.len() as u64;
        self.lines += 1;
        Ok(())
    }

    /// Makes a journal's lines so far durable (at each commit).
    pub fn sync(&mut self) -> Result<()> {
        match &mut self.sink {
            LogSink::Journal(journal) => journal.sync(),
            LogSink::Object(_) => Ok(()),
        }
    }

    /// Makes the file durable under its final name.
    pub fn finish(self) -> Result<LogInfo> {
        match self.sink {
            LogSink::Object(object) => object.finish()?,
            LogSink::Journal(journal) => journal.finish()?,
        }
        Ok(LogInfo {
            path: self.key,
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
            rows: self.lines,
            merkle_root: self.merkle.and_then(|m| m.root()),
        })
    }
}

/// How far the manifests cover the append-only outputs, cumulatively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// JSONL bytes covered by this and earlier manifests' segments.
    pub jsonl_bytes: u64,
    /// Parquet files (in checkpoint order) listed by this and earlier manifests.
    pub parquet_files: u64,
}

/// What a `compact` run swapped: sealed Parquet files of closed date
/// partitions, merged into fewer files with the same rows in the same
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// The files removed, as the manifests of the runs that wrote them
    /// list them.
    pub removed: Vec<RemovedFile>,
    /// The files written in their place.
    pub added: Vec<WrittenFile>,
}

/// A file a compaction removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedFile {
    /// The run whose manifest lists it.
    pub run_id: String,
    /// The file, as that manifest lists it.
    #[serde(flatten)]
    pub file: WrittenFile,
}

/// An HMAC over a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Always `HMAC-SHA256`.
    pub algorithm: String,
    /// Hex MAC over the canonical bytes.
    pub value: String,
}

/// A run's manifest. The command-specific parts (`options`,
/// `conversations`, `pages`, `sends`, `counts`) are JSON values built by the
/// command; this module only needs the parts it checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The run's ID.
    pub run_id: String,
    /// `sync` or `send`.
    pub command: String,
    /// xquik-dm version.
    pub tool_version: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    pub finished_at: String,
    /// SHA-256 of the previous run's manifest; null for the first run.
    pub previous_manifest_sha256: Option<String>,
    /// The run's exit status.
    pub exit_code: u8,
    /// Options the run used (no secrets).
    pub options: serde_json::Value,
    /// Per-conversation outcomes.
    #[serde(default)]
    pub conversations: serde_json::Value,
    /// The page log: every history page fetched (endpoint, cursor in,
    /// `next_cursor`, `has_next_page`, `messages_count`, status, attempts,
    /// waits), one JSON line each, in a file bound by its digest.
    pub page_log: LogInfo,
    /// Every send.
    #[serde(default)]
    pub sends: serde_json::Value,
    /// Credits by endpoint.
    pub credits: BTreeMap<String, u64>,
    /// Counters (messages, duplicates, retries, ...).
    pub counts: serde_json::Value,
    /// What the run repaired when it started.
    #[serde(default)]
    pub repair: serde_json::Value,
    /// Every file or appended segment written since the previous manifest.
    pub files: Vec<WrittenFile>,
    /// The run's rows file.
    pub audit_rows: LogInfo,
    /// Cumulative coverage after this run.
    pub coverage: Coverage,
    /// Page logs of runs killed before sealing, taken over by this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<RecoveredLog>,
    /// For a `compact` run: the Parquet files it merged away and the ones
    /// it wrote in their place (also in `files`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<Compaction>,
    /// The Delta commits of this run, by table (`messages`, `sends`): each
    /// pinned by its version and the SHA-256 of the commit file's bytes.
    /// Empty for a run that changed no table (and in manifests written
    /// before the tables were Delta tables).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delta: BTreeMap<String, DeltaEntry>,
    /// For an erasure run (`forget`, retention, undo): what it erased and
    /// why; its Parquet rewrite is in `compaction`, its handoff file's new
    /// generation a segment at offset 0 in `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<Erasure>,
    /// The SSH key that signs this manifest, when one was set: its
    /// signature is `<manifest>.sig` (see [`crate::sshsig`]). Recorded
    /// here so that the signed bytes name their signer, and a signature
    /// removed along with its chain entry's digest is still missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
    /// HMAC, when a key was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A Delta commit file, pinned: its table version and the SHA-256 of its
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCommit {
    /// The table version the commit produced.
    pub version: u64,
    /// SHA-256 (hex) of the commit file's bytes.
    pub sha256: String,
}

/// What a run did to one Delta table: its own commit, and the commits of
/// killed runs it reverted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaEntry {
    /// The version of the run's own commit, which adds the files its
    /// manifest lists (and removes what its compaction removed); absent
    /// when it changed nothing in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// SHA-256 (hex) of that commit file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Commits of runs killed after their commit and before their chain
    /// entry, found when this run opened the output, and the commit that
    /// restored the table to what the chain held (see `store/recover.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<DeltaRevert>,
}

impl DeltaEntry {
    /// The run's own commit, pinned.
    pub fn commit(&self) -> Option<DeltaCommit> {
        Some(DeltaCommit {
            version: self.version?,
            sha256: self.sha256.clone()?,
        })
    }
}

/// The commits a run reverted in one table, and its restoring commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRevert {
    /// The killed runs' commits, oldest first.
    pub commits: Vec<DeltaCommit>,
    /// The commit that brought the table back to the snapshot the chain
    /// accounts for (the version before the first of `commits`).
    pub restore: DeltaCommit,
}

/// Who signs a manifest with an SSH key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    /// The public key's SHA-256 fingerprint (`SHA256:...`).
    pub fingerprint: String,
    /// The SSHSIG namespace, [`crate::sshsig::NAMESPACE`].
    pub namespace: String,
}

impl Manifest {
    /// The bytes an HMAC covers: the manifest without its signature, as
    /// compact JSON with sorted keys.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>> {
        let mut value =
            serde_json::to_value(self).map_err(|e| Error::io("<manifest>", e.into()))?;
        if let Some(map) = value.as_object_mut() {
            map.remove("signature");
        }
        // serde_json's map keeps keys sorted, so this is canonical.
        serde_json::to_vec(&value).map_err(|e| Error::io("<manifest>", e.into()))
    }

    /// Signs the manifest with `key`.
    pub fn sign(&mut self, key: &[u8]) -> Result<()> {
        self.signature = None;
        let mac = hmac_hex(key, &self.canonical_bytes()?);
        self.signature = Some(Signature {
            algorithm: "HMAC-SHA256".into(),
            value: mac,
        });
        Ok(())
    }

    /// Whether the signature matches `key`; `None` when unsigned.
    pub fn check_signature(&self, key: &[u8]) -> Result<Option<bool>> {
        let Some(sig) = &self.signature else {
            return Ok(None);
        };
        let expected = hmac_hex(key, &self.canonical_bytes()?);
        Ok(Some(
            sig.algorithm == "HMAC-SHA256"
                && constant_time_eq(sig.value.as_bytes(), expected.as_bytes()),
        ))
    }
}

fn hmac_hex(key: &[u8], bytes: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    match hmac::Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(bytes);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One line of `audit/chain.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    /// 1 for the first run.
    pub seq: u64,
    /// The run.
    pub run_id: String,
    /// Manifest path, relative to the output folder.
    pub manifest: String,
    /// SHA-256 of the manifest file.
    pub sha256: String,
    /// SHA-256 of the previous manifest; null for the first.
    pub previous_sha256: Option<String>,
    /// SHA-256 of the manifest's SSH signature, when it is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_sha256: Option<String>,
}

/// Reads the chain. A last line without its newline (a torn append) is
/// reported separately so the caller can cut it.
pub fn read_chain(storage: &dyn Backend) -> Result<(Vec<ChainEntry>, Option<u64>)> {
    parse_chain(storage, storage.chain_read(None)?)
}

/// Reads the end of the chain: the entries from sequence number `from` on
/// (at least the last one), and like [`read_chain`] where a torn last line
/// starts. Reads only as much as those entries take, so what a run reads
/// of the chain does not grow with the runs before it.
pub fn read_chain_tail(storage: &dyn Backend, from: u64) -> Result<(Vec<ChainEntry>, Option<u64>)> {
    let (mut entries, torn) = parse_chain(storage, storage.chain_read(Some(from))?)?;
    let keep = match from {
        0 => entries.len().saturating_sub(1),
        _ => entries
            .iter()
            .position(|e| e.seq >= from)
            .unwrap_or(entries.len().saturating_sub(1)),
    };
    entries.drain(..keep);
    Ok((entries, torn))
}

/// The chain from the entry whose manifest digest is `head` on (that entry
/// first), read back from the end only as far as it lies: what checking
/// the runs after a verified head needs, in time proportional to them.
/// `None` when the chain does not hold `head`.
pub fn read_chain_from(
    storage: &dyn Backend,
    head: &str,
) -> Result<(Option<Vec<ChainEntry>>, Option<u64>)> {
    let (last, torn) = read_chain_tail(storage, 0)?;
    let Some(last_seq) = last.last().map(|e| e.seq) else {
        return Ok((None, torn));
    };
    let mut back = 16u64;
    loop {
        let from = last_seq.saturating_sub(back).max(1);
        let (mut entries, torn) = read_chain_tail(storage, from)?;
        if let Some(at) = entries.iter().position(|e| e.sha256 == head) {
            entries.drain(..at);
            return Ok((Some(entries), torn));
        }
        if from == 1 {
            // Read whole, in case sequence numbers were changed.
            let (mut entries, torn) = read_chain(storage)?;
            let at = entries.iter().position(|e| e.sha256 == head);
            return Ok((
                at.map(|at| {
                    entries.drain(..at);
                    entries
                }),
                torn,
            ));
        }
        back = back.saturating_mul(4);
    }
}

/// The entries of chain lines; a last line without its newline (a torn
/// append) is reported by where it starts, for the caller to cut.
fn parse_chain(
    storage: &dyn Backend,
    read: Option<crate::storage::ChainBytes>,
) -> Result<(Vec<ChainEntry>, Option<u64>)> {
    let Some(read) = read else {
        return Ok((Vec::new(), None));
    };
    let mut entries = Vec::new();
    let mut good_len = read.start;
    for line in read.bytes.split_inclusive(|b| *b == b'\n') {
        if line.last() != Some(&b'\n') {
            return Ok((entries, Some(good_len)));
        }
        let entry: ChainEntry = serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
            .map_err(|e| Error::Corrupt {
                path: storage.describe(CHAIN),
                reason: format!(
                    "a line is not a chain entry ({})",
                    crate::error::json_error_category(&e)
                ),
            })?;
        entries.push(entry);
        good_len += line.len() as u64;
    }
    Ok((entries, None))
}

/// Seals a run into the audit trail, each step durable before the next:
/// its checksum file `audit/runs/<run>.sha256` (the manifest and every
/// file it lists but the handoff segments, in `sha256sum -c` format), the
/// manifest (create-only), then its chain entry. Returns that entry.
pub fn append_run(
    storage: &dyn Backend,
    manifest: &Manifest,
    previous: Option<&ChainEntry>,
) -> Result<ChainEntry> {
    append_signed_run(storage, manifest, previous, None)
}

/// [`append_run`], with the manifest signed by `key` when one is given:
/// its detached signature `<manifest>.sig` is written first, so that the
/// checksum file and the chain entry that name it never name a file that
/// is not there.
pub fn append_signed_run(
    storage: &dyn Backend,
    manifest: &Manifest,
    previous: Option<&ChainEntry>,
    key: Option<&crate::sshsig::SigningKey>,
) -> Result<ChainEntry> {
    let rel = manifest_key(&manifest.run_id);
    let mut bytes = serde_json::to_vec_pretty(manifest).map_err(|e| Error::io(&rel, e.into()))?;
    bytes.push(b'\n');
    let sha256 = sha256_hex(&bytes);
    let sig_rel = signature_key(&manifest.run_id);
    let signature = match key {
        Some(key) => {
            let sig = key.sign(&bytes, &sig_rel)?;
            // Durable before the checksum file and the chain entry that
            // name it: a kill from here on leaves an unchained `.sig`,
            // which the next run removes with the run's other files.
            storage.put_new(&sig_rel, &sig)?;
            Some(sha256_hex(&sig))
        }
        None => None,
    };
    let signed = signature.as_deref().map(|d| (sig_rel.as_str(), d));
    storage.put_new(
        &run_sums_key(&manifest.run_id),
        &run_sums(manifest, &rel, &sha256, signed),
    )?;
    storage.put_new(&rel, &bytes)?;
    let entry = ChainEntry {
        seq: previous.map_or(1, |p| p.seq.saturating_add(1)),
        run_id: manifest.run_id.clone(),
        manifest: rel,
        sha256,
        previous_sha256: previous.map(|p| p.sha256.clone()),
        signature_sha256: signature,
    };
    let mut line = serde_json::to_vec(&entry).map_err(|e| Error::io(CHAIN, e.into()))?;
    line.push(b'\n');
    storage.chain_append(entry.seq, &line)?;
    Ok(entry)
}

/// The checksum file of the run `run_id`.
pub fn run_sums_key(run_id: &str) -> String {
    format!("{RUNS_DIR}/{run_id}{RUN_SUMS_SUFFIX}")
}

/// The manifest of the run `run_id`.
pub fn manifest_key(run_id: &str) -> String {
    format!("{RUNS_DIR}/{run_id}.manifest.json")
}

/// The detached SSH signature of the run `run_id`'s manifest.
pub fn signature_key(run_id: &str) -> String {
    format!("{RUNS_DIR}/{run_id}{SIGNATURE_SUFFIX}")
}

/// The lines of a run's checksum file: every whole file its manifest
/// names (the manifest itself as `manifest_key` with `manifest_sha256`,
/// and its `signature` with its digest when signed), sorted by path.
fn run_sums(
    manifest: &Manifest,
    manifest_key: &str,
    manifest_sha256: &str,
    signature: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut files: Vec<(&str, &str)> = vec![(manifest_key, manifest_sha256)];
    files.extend(signature);
    let logs = [&manifest.audit_rows, &manifest.page_log]
        .into_iter()
        .chain(manifest.recovered.iter().map(|r| &r.log));
    files.extend(logs.map(|l| (l.path.as_str(), l.sha256.as_str())));
    files.extend(
        manifest
            .files
            .iter()
            .filter(|f| f.offset.is_none())
            .map(|f| (f.path.as_str(), f.sha256.as_str())),
    );
    files.sort_unstable();
    sums_lines(files)
}

/// `<sha256>  <path>` lines, as `sha256sum` writes them.
pub fn sums_lines<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = String::new();
    for (path, sha256) in files {
        out.push_str(sha256);
        out.push_str("  ");
        out.push_str(path);
        out.push('\n');
    }
    out.into_bytes()
}

/// The Parquet files the manifests of `chain` list now: every file a run
/// listed, but those a later compaction merged away. Reads every manifest:
/// for the rare repairs that cannot go by the checkpoint.
pub fn listed_parquet(storage: &dyn Backend, chain: &[ChainEntry]) -> Result<Vec<WrittenFile>> {
    let mut parquet = Vec::new();
    let mut removed = std::collections::HashSet::new();
    for entry in chain {
        let (manifest, _) = read_manifest(storage, &entry.manifest)?;
        // Names carry run IDs: a removed file never comes back.
        removed.extend(
            manifest
                .compaction
                .iter()
                .flat_map(|c| &c.removed)
                .map(|r| r.file.path.clone()),
        );
        parquet.extend(manifest.files.into_iter().filter(|f| f.offset.is_none()));
    }
    parquet.retain(|f| !removed.contains(&f.path));
    Ok(parquet)
}

/// Finishes a sealed compaction: every checksum file that lists a file it
/// removed is rewritten without it, then the files go. Safe to repeat: a
/// compaction killed after its manifest was chained (from then on its new
/// files are the listed ones) and before its checkpoint followed is
/// finished by the next run.
pub fn finish_compaction(storage: &dyn Backend, compaction: &Compaction) -> Result<()> {
    let mut by_run: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for removed in &compaction.removed {
        by_run
            .entry(removed.run_id.as_str())
            .or_default()
            .insert(removed.file.path.as_str());
    }
    for (run, paths) in by_run {
        let key = run_sums_key(run);
        let Some(stored) = storage.get(&key)? else {
            continue;
        };
        let lines: Vec<&[u8]> = stored
            .bytes
            .split_inclusive(|b| *b == b'\n')
            .filter(|line| {
                let text = String::from_utf8_lossy(line);
                let path = text.trim_end().split_once("  ").map_or("", |(_, p)| p);
                !paths.contains(path)
            })
            .collect();
        if lines.len() < stored.bytes.split_inclusive(|b| *b == b'\n').count() {
            storage.replace(&key, &lines.concat(), Expect::Any)?;
        }
    }
    for removed in &compaction.removed {
        storage.delete(&removed.file.path)?;
    }
    Ok(())
}

/// A page log that a run killed before sealing left behind, taken into a
/// later run's manifest so that the pages it fetched and the credits they
/// cost are accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredLog {
    /// The run that made the requests and never sealed.
    pub run_id: String,
    /// The log, renamed `<sealing run>.recovered.<run_id>.pages.jsonl`.
    pub log: LogInfo,
    /// Credits its requests spent, by endpoint.
    pub credits: BTreeMap<String, u64>,
}

/// What [`repair_runs`] found.
#[derive(Debug, Default)]
pub struct AuditRepair {
    /// Relative paths removed (files of runs the chain does not hold).
    pub removed: Vec<String>,
    /// Page logs of killed runs, now named after `run_id`.
    pub recovered: Vec<RecoveredLog>,
}

/// The run a file under `audit/runs/` belongs to (its name up to the first
/// dot, a temporary file's leading dot aside), and whether it is a page log.
fn audit_file_owner(name: &str) -> (&str, bool) {
    let bare = name.strip_prefix('.').unwrap_or(name);
    let bare = bare.strip_suffix(".tmp").unwrap_or(bare);
    let owner = bare.split('.').next().unwrap_or_default();
    // A journal kept in pieces names each `<log>.<20-digit offset>`.
    let log = match bare.rsplit_once('.') {
        Some((log, offset)) if offset.len() == 20 && offset.bytes().all(|b| b.is_ascii_digit()) => {
            log
        }
        _ => bare,
    };
    (owner, log.ends_with(LogKind::Pages.suffix()))
}

/// Cuts a torn last chain line (`torn_at`, from [`read_chain_tail`]).
pub fn cut_torn_chain(storage: &dyn Backend, torn_at: Option<u64>) -> Result<()> {
    match torn_at {
        Some(len) => storage.chain_cut(len),
        None => Ok(()),
    }
}

/// Cleans up after the runs `runs`, which claimed the output but are not
/// in the chain (killed while running or sealing), looking only at the
/// names those runs give their audit files: their page logs are kept,
/// renamed after `run_id` (the run now opening) and returned for its
/// manifest; their manifests, signatures, rows files (rebuilt from the
/// JSONL) and checksum files are removed.
pub fn repair_runs(storage: &dyn Backend, runs: &[String], run_id: &str) -> Result<AuditRepair> {
    let mut candidates = Vec::new();
    for run in runs {
        for suffix in [
            ".manifest.json",
            SIGNATURE_SUFFIX,
            LogKind::Rows.suffix(),
            RUN_SUMS_SUFFIX,
        ] {
            candidates.push(format!("{RUNS_DIR}/{run}{suffix}"));
        }
        let pages = format!("{RUNS_DIR}/{run}{}", LogKind::Pages.suffix());
        candidates.extend(storage.journal_pieces(&pages)?);
        candidates.push(pages);
        // A log an earlier killed run recovered from this one.
        for other in runs {
            candidates.push(format!(
                "{RUNS_DIR}/{other}.recovered.{run}{}",
                LogKind::Pages.suffix()
            ));
        }
    }
    let mut present = Vec::new();
    for key in candidates {
        if storage.size(&key)?.is_some() {
            present.push(key);
        }
    }
    clean_runs(storage, present, &Default::default(), run_id)
}

/// [`repair_runs`] for an output whose checkpoint does not name the runs
/// to clean up after (format 1): every file under `audit/runs/` of a run
/// the chain does not hold is one. Reads the whole chain and lists the
/// folder; only files named like a run's files are touched.
pub fn repair_all(storage: &dyn Backend, run_id: &str) -> Result<AuditRepair> {
    let (chain, _) = read_chain(storage)?;
    let known: std::collections::HashSet<String> = chain.iter().map(|e| e.run_id.clone()).collect();
    let keys = storage
        .list(&format!("{RUNS_DIR}/"))?
        .into_iter()
        .map(|l| l.key)
        .collect();
    clean_runs(storage, keys, &known, run_id)
}

/// What [`repair_runs`] and [`repair_all`] share: of `keys`, the files of
/// runs not in `known`, sorted into page logs (recovered) and the rest
/// (removed).
fn clean_runs(
    storage: &dyn Backend,
    keys: Vec<String>,
    known: &std::collections::HashSet<String>,
    run_id: &str,
) -> Result<AuditRepair> {
    let mut repair = AuditRepair::default();
    // Page logs of runs the chain does not hold, by the run that made them
    // (a journal may be kept in several pieces, named in order).
    let mut page_logs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in keys {
        let name = file_name(&key).to_owned();
        let (mut owner, mut page_log) = audit_file_owner(&name);
        if let Some(journal) = journal_of(&key) {
            (owner, page_log) = audit_file_owner(journal);
        }
        let ours = name.ends_with(".json")
            || name.ends_with(".jsonl")
            || name.ends_with(RUN_SUMS_SUFFIX)
            || name.ends_with(SIGNATURE_SUFFIX)
            || crate::storage::is_temporary(&name);
        if known.contains(owner) || !ours {
            continue;
        }
        if page_log {
            // A log recovered before (by a run that was killed in turn)
            // keeps the name of the run that made its requests.
            let origin = name
                .split_once(".recovered.")
                .map_or(owner, |(_, rest)| rest.split('.').next().unwrap_or(owner));
            page_logs.entry(origin.to_owned()).or_default().push(key);
            continue;
        }
        storage.delete(&key)?;
        repair.removed.push(key);
    }
    for (origin, pieces) in page_logs {
        match recover_page_log(storage, &origin, &pieces, run_id)? {
            Some(log) => repair.recovered.push(log),
            None => repair.removed.extend(pieces.iter().cloned()),
        }
        for piece in &pieces {
            storage.delete(piece)?;
        }
    }
    Ok(repair)
}

/// The journal a piece kept under `state/journal/<journal name>/` belongs
/// to (see [`Backend::journal_pieces`]).
fn journal_of(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix(crate::storage::JOURNAL_DIR)?
        .strip_prefix('/')?;
    rest.split_once('/').map(|(journal, _)| journal)
}

/// Writes the page log of the killed run `origin`, kept in `pieces`, as a
/// new object of the run `run_id`, cut to its last complete line, and
/// accounts for its credits. `None` when it holds no complete line.
fn recover_page_log(
    storage: &dyn Backend,
    origin: &str,
    pieces: &[String],
    run_id: &str,
) -> Result<Option<RecoveredLog>> {
    // A whole copy — recovered before, or published by the run itself —
    // holds the whole log: the pieces it came from are removed only once it
    // is durable, so a run killed between the two leaves both, and the copy
    // alone is read. Otherwise the journal's pieces, in order.
    let copy = pieces
        .iter()
        .find(|p| p.contains(".recovered."))
        .or_else(|| pieces.iter().find(|p| !file_name(p).starts_with('.')));
    let mut bytes = Vec::new();
    for piece in copy
        .into_iter()
        .chain(pieces.iter().filter(|_| copy.is_none()))
    {
        if let Some(stored) = storage.get(piece)? {
            bytes.extend_from_slice(&stored.bytes);
        }
    }
    let good = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if good == 0 {
        return Ok(None);
    }
    bytes.truncate(good);
    let mut credits: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows = 0u64;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        rows += 1;
        // A line that does not parse still counts as a request; it just
        // adds no credits it cannot name.
        if let Ok(request) = serde_json::from_slice::<RequestCost>(line) {
            let spent = request.credits();
            if spent > 0 {
                *credits.entry(request.endpoint).or_default() += spent;
            }
        }
    }
    let rel = format!(
        "{RUNS_DIR}/{run_id}.recovered.{origin}{}",
        LogKind::Pages.suffix()
    );
    storage.put_new(&rel, &bytes)?;
    Ok(Some(RecoveredLog {
        run_id: origin.to_owned(),
        log: LogInfo {
            path: rel,
            sha256: sha256_hex(&bytes),
            bytes: good as u64,
            rows,
            merkle_root: None,
        },
        credits,
    }))
}

/// What a page-log line says a request cost: an explicit `credits`, or for
/// a history page served with 2xx, one credit per message returned.
#[derive(Deserialize)]
struct RequestCost {
    endpoint: String,
    #[serde(default)]
    status: u16,
    #[serde(default)]
    messages_count: u64,
    #[serde(default)]
    credits: Option<u64>,
}

impl RequestCost {
    fn credits(&self) -> u64 {
        match self.credits {
            Some(c) => c,
            None if (200..300).contains(&self.status)
                && self.endpoint == crate::api::Endpoint::History.as_str() =>
            {
                self.messages_count
            }
            None => 0,
        }
    }
}

/// Reads a manifest file.
pub fn read_manifest(storage: &dyn Backend, rel: &str) -> Result<(Manifest, Vec<u8>)> {
    let bytes = storage
        .get(rel)?
        .ok_or_else(|| {
            Error::io(
                storage.describe(rel),
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            )
        })?
        .bytes;
    let manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: storage.describe(rel),
        reason: format!("not a manifest ({})", crate::error::json_error_category(&e)),
    })?;
    Ok((manifest, bytes))
}

/// SHA-256 and size of a whole object, streamed.
pub fn digest(storage: &dyn Backend, key: &str) -> Result<(String, u64)> {
    let reader = storage.reader(key, None)?;
    digest_reader(reader).map_err(|e| Error::io(storage.describe(key), e))
}

/// SHA-256 and size of bytes `range` of the handoff file, streamed.
pub fn handoff_digest(storage: &dyn Backend, range: Range<u64>) -> Result<(String, u64)> {
    let reader = storage.handoff_reader(range)?;
    digest_reader(reader)
        .map_err(|e| Error::io(storage.describe(crate::sinks::jsonl::FILE_NAME), e))
}

/// SHA-256 and size of everything `reader` yields.
pub fn digest_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        total += n as u64;
    }
}

/// Rewrites `SHA256SUMS` atomically: one `<sha256>  <path>` line per file
/// (paths relative to the output root, sorted), in the format
/// `sha256sum -c` reads. `known` holds digests already computed (Parquet
/// files, manifests), keyed by relative path; the rest is hashed here.
pub fn write_sums(
    storage: &dyn Backend,
    files: &[String],
    known: &BTreeMap<String, String>,
) -> Result<()> {
    let mut sorted: Vec<&String> = files.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut digests = Vec::new();
    for rel in sorted {
        let digest = match known.get(rel) {
            Some(d) => d.clone(),
            None => digest(storage, rel)?.0,
        };
        digests.push((rel.as_str(), digest));
    }
    let lines = sums_lines(digests.iter().map(|(p, d)| (*p, d.as_str())));
    storage.replace(SUMS, &lines, Expect::Any)?;
    Ok(())
}

/// Parses a checksum file (`SHA256SUMS`, or a run's) into (digest, path)
/// pairs.
pub fn read_sums(storage: &dyn Backend, key: &str) -> Result<Vec<(String, String)>> {
    let Some(stored) = storage.get(key)? else {
        return Err(Error::io(
            storage.describe(key),
            std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
        ));
    };
    let mut sums = Vec::new();
    for line in stored
        .bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let line = String::from_utf8_lossy(line);
        let Some((digest, rel)) = line.split_once("  ") else {
            return Err(Error::Corrupt {
                path: storage.describe(key),
                reason: "a line is not '<sha256>  <path>'".into(),
            });
        };
        sums.push((digest.to_owned(), rel.to_owned()));
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(data: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(data);
        h.finalize().into()
    }

    /// RFC 6962's recursive definition, as the reference.
    fn reference_root(leaves: &[&[u8]]) -> [u8; 32] {
        if leaves.len() == 1 {
            return leaf(leaves[0]);
        }
        let mut k = 1;
        while k * 2 < leaves.len() {
            k *= 2;
        }
        Merkle::node(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
    }

    #[test]
    fn streaming_merkle_matches_the_recursive_definition() {
        let data: Vec<Vec<u8>> = (0..37u32)
            .map(|i| format!("row {i}").into_bytes())
            .collect();
        for n in 1..=data.len() {
            let mut m = Merkle::default();
            for d in &data[..n] {
                m.push(d);
            }
            let refs: Vec<&[u8]> = data[..n].iter().map(Vec::as_slice).collect();
            assert_eq!(
                m.root().unwrap(),
                hex::encode(reference_root(&refs)),
                "{n} leaves"
            );
        }
        assert_eq!(Merkle::default().root(), None);
    }

    #[test]
    fn rows_file_lines_are_audit_rows_as_serde_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::local::LocalDir::new(dir.path());
        let mut log = AuditLog::create(&storage, "r1", LogKind::Rows).unwrap();
        let rows = [
            ("history", "42", "1900000000000000001"),
            ("send", "7", "odd \"id\" \\ \u{1}"),
        ];
        for (record_type, user_id, message_id) in rows {
            log.push_row(record_type, user_id, message_id).unwrap();
        }
        let info = log.finish().unwrap();
        let mut expected = Vec::new();
        for (record_type, user_id, message_id) in rows {
            let row = AuditRow {
                record_type: record_type.into(),
                user_id: user_id.into(),
                message_id: message_id.into(),
            };
            serde_json::to_writer(&mut expected, &row).unwrap();
            expected.push(b'\n');
        }
        assert_eq!(
            std::fs::read(dir.path().join(&info.path)).unwrap(),
            expected
        );
    }

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            run_id: "r1".into(),
            command: "sync".into(),
            tool_version: "0.1.0".into(),
            started_at: "2026-11-26T00:00:00Z".into(),
            finished_at: "2026-11-26T00:00:01Z".into(),
            previous_manifest_sha256: None,
            exit_code: 0,
            options: serde_json::json!({"concurrency": 8}),
            conversations: serde_json::json!([]),
            sends: serde_json::json!([]),
            credits: BTreeMap::new(),
            counts: serde_json::json!({}),
            repair: serde_json::json!({}),
            files: vec![],
            audit_rows: LogInfo {
                path: "audit/runs/r1.rows.jsonl".into(),
                sha256: "00".into(),
                bytes: 0,
                rows: 0,
                merkle_root: None,
            },
            page_log: LogInfo {
                path: "audit/runs/r1.pages.jsonl".into(),
                sha256: "00".into(),
                bytes: 0,
                rows: 0,
                merkle_root: None,
            },
            coverage: Coverage::default(),
            recovered: Vec::new(),
            compaction: None,
            delta: BTreeMap::new(),
            erasure: None,
            signer: None,
            signature: None,
        }
    }

    /// From a verified head, only the chain's end is read: entries from
    /// the head on, however long the chain before it.
    #[test]
    fn the_chain_is_read_from_a_head_without_its_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let counting = crate::storage::counting::Counting::new(std::sync::Arc::new(
            crate::storage::local::LocalDir::new(dir.path()),
        ));
        let mut previous: Option<ChainEntry> = None;
        let mut entries = Vec::new();
        for i in 0..300 {
            let mut m = manifest();
            m.run_id = format!("r{i}");
            m.audit_rows.path = format!("audit/runs/r{i}.rows.jsonl");
            m.page_log.path = format!("audit/runs/r{i}.pages.jsonl");
            let entry = append_run(&counting, &m, previous.as_ref()).unwrap();
            entries.push(entry.clone());
            previous = Some(entry);
        }
        counting.take();
        let (from, torn) = read_chain_from(&counting, &entries[290].sha256).unwrap();
        assert_eq!(torn, None);
        assert_eq!(from.unwrap(), entries[290..].to_vec());
        let read = counting.take().read;
        let whole = std::fs::metadata(dir.path().join(CHAIN)).unwrap().len();
        assert!(read * 4 < whole, "read {read} of {whole} bytes");
        let (missing, _) = read_chain_from(&counting, "00").unwrap();
        assert_eq!(missing, None);
    }

    #[test]
    fn signatures_catch_any_change() {
        let mut m = manifest();
        assert_eq!(m.check_signature(b"k").unwrap(), None);
        m.sign(b"secret").unwrap();
        assert_eq!(m.check_signature(b"secret").unwrap(), Some(true));
        assert_eq!(m.check_signature(b"other").unwrap(), Some(false));
        m.exit_code = 4;
        assert_eq!(m.check_signature(b"secret").unwrap(), Some(false));
    }

    #[test]
    fn a_torn_chain_line_and_orphan_manifests_are_repaired() {
        use std::fs::{self, OpenOptions};
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let storage = crate::storage::local::LocalDir::new(out);
        let first = append_run(&storage, &manifest(), None).unwrap();
        let mut m2 = manifest();
        m2.run_id = "r2".into();
        append_run(&storage, &m2, Some(&first)).unwrap();
        // Tear the second line, and leave an orphan rows file.
        let chain = out.join(CHAIN);
        let len = fs::metadata(&chain).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&chain)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        fs::write(out.join(RUNS_DIR).join("r3.rows.jsonl"), b"").unwrap();
        // r3 was killed while fetching: two pages logged, a third torn.
        let page = |n: u64| {
            format!(
                "{{\"endpoint\":\"GET /x/dm/{{userId}}/history\",\"status\":200,\"messages_count\":{n}}}\n"
            )
        };
        let lookup = "{\"endpoint\":\"GET /x/users/{id}\",\"status\":200,\"credits\":1}\n";
        let logged = format!("{}{}{lookup}", page(100), page(7));
        fs::write(
            out.join(RUNS_DIR).join(".r3.pages.jsonl.tmp"),
            format!("{logged}{{\"endpoint\":\"GET /x/d"),
        )
        .unwrap();
        // A user's own file is not the tool's to remove.
        fs::write(out.join(RUNS_DIR).join("notes.txt"), b"mine").unwrap();
        // The listing repair (a format 1 checkpoint names no runs).
        let repair = |run: &str| {
            let (_, torn) = read_chain_tail(&storage, 0).unwrap();
            cut_torn_chain(&storage, torn).unwrap();
            repair_all(&storage, run).unwrap()
        };
        let repaired = repair("r4");
        let removed = repaired.removed;
        let entries = vec![first];
        assert_eq!(read_chain(&storage).unwrap(), (entries.clone(), None));
        assert_eq!(
            removed
                .iter()
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>(),
            [
                "audit/runs/r2.manifest.json",
                "audit/runs/r2.sha256",
                "audit/runs/r3.rows.jsonl"
            ]
            .into()
        );
        assert!(out.join(RUNS_DIR).join("notes.txt").exists());
        let [recovered] = repaired.recovered.as_slice() else {
            panic!("{:?}", repaired.recovered)
        };
        assert_eq!(recovered.run_id, "r3");
        assert_eq!(recovered.log.path, "audit/runs/r4.recovered.r3.pages.jsonl");
        assert_eq!(recovered.log.rows, 3);
        assert_eq!(recovered.log.sha256, sha256_hex(logged.as_bytes()));
        assert_eq!(
            fs::read_to_string(out.join(&recovered.log.path)).unwrap(),
            logged
        );
        assert_eq!(
            recovered.credits,
            BTreeMap::from([
                ("GET /x/dm/{userId}/history".to_owned(), 107),
                ("GET /x/users/{id}".to_owned(), 1)
            ])
        );
        // r4 is killed in turn, and so is r5 after writing its copy but
        // before removing r4's: r6 reads one copy, not both.
        let again = repair("r5");
        assert_eq!(
            again.recovered[0].log.path,
            "audit/runs/r5.recovered.r3.pages.jsonl"
        );
        fs::write(out.join(&recovered.log.path), &logged).unwrap();
        let again = repair("r6");
        assert_eq!(again.recovered.len(), 1);
        assert_eq!(again.recovered[0].log.rows, 3);
        assert_eq!(again.recovered[0].run_id, "r3");
        assert_eq!(
            again.recovered[0].log.path,
            "audit/runs/r6.recovered.r3.pages.jsonl"
        );
        assert_eq!(again.recovered[0].credits, recovered.credits);

        // r7 was killed between publishing its log and removing its
        // temporary: both hold the same lines, counted once. r8 kept its
        // log in pieces (as in a bucket): they are joined in order.
        fs::write(out.join(RUNS_DIR).join("r7.pages.jsonl"), page(5)).unwrap();
        fs::write(out.join(RUNS_DIR).join(".r7.pages.jsonl.tmp"), page(5)).unwrap();
        let piece = |offset: u64| format!(".r8.pages.jsonl.{offset:020}.tmp");
        fs::write(out.join(RUNS_DIR).join(piece(0)), page(1)).unwrap();
        fs::write(out.join(RUNS_DIR).join(piece(70)), page(2)).unwrap();
        let last = repair("r9");
        let by_run: BTreeMap<&str, &RecoveredLog> = last
            .recovered
            .iter()
            .map(|r| (r.run_id.as_str(), r))
            .collect();
        let history = |r: &RecoveredLog| r.credits["GET /x/dm/{userId}/history"];
        assert_eq!(history(by_run["r7"]), 5);
        assert_eq!(by_run["r7"].log.rows, 1);
        assert_eq!(history(by_run["r8"]), 3);
        assert_eq!(by_run["r8"].log.rows, 2);
        assert!(
            storage
                .list("audit/runs/")
                .unwrap()
                .iter()
                .all(|l| !l.key.ends_with(".tmp"))
        );
        assert_eq!(read_chain(&storage).unwrap(), (entries, None));
    }
}
