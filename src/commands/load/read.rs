//! The reading side of `load`: which runs go together in one transaction,
//! and, for each transaction, the checked records and erased IDs on their
//! way to the database, read on a thread of their own (the storage reads
//! block) while the database side copies them in.
//!
//! Erasure runs rewrite the handoff file (a new generation, the erased
//! records left out), so the segments that earlier runs' manifests name no
//! longer exist as they were: only the newest generation, and the segments
//! appended after it, can be read. Hence the transactions:
//! - a run not yet loaded that precedes the last erasure which wrote a
//!   generation (its *carrier*) is loaded together with the runs up to that
//!   erasure, in one transaction: their records come from the carrier's
//!   segment (the generation: every record of the runs before it, minus
//!   every erased one), each run keeps its ledger row, and every erasure
//!   among them is applied;
//! - any other run is a transaction of its own: a sync or send run inserts
//!   the records of its segments; an erasure run deletes the records it
//!   erased and reads no segment (what it kept is in the database already).
//!
//! Every manifest is checked against its chain entry, and its Parquet files
//! where they still are; segments are hashed as they stream in and the
//! erased IDs are checked against their manifest (`erasure::erased_ids`).
//! A failed check ends the stream with [`Item::Failed`], and the database
//! side rolls the transaction back. A carrier that sealed but was killed
//! before it installed its generation (the file still the old one) stops
//! the load with that said, not as a damaged file: the next run of the tool
//! installs it. The erased IDs travel after all the records, one erasure
//! at a time ([`Outlets`]).

use std::io::BufRead;

use sha2::{Digest, Sha256};

use crate::audit::{self, AuditRow, ChainEntry, Manifest};
use crate::commands::verify::Failure;
use crate::erasure;
use crate::records::{HistoryRow, RecordType, SendRow};
use crate::sinks::{WrittenFile, sha256_hex};
use crate::storage::Storage;

/// One record of a transaction on its way to the database, the IDs an
/// erasure run erased, or the check that failed.
pub(super) enum Item {
    History(HistoryRow),
    Send(SendRow),
    /// The records the run at this index of the transaction erased.
    Erased(usize, Vec<AuditRow>),
    Failed(Failure),
}

pub(super) fn failure(path: &str, reason: String) -> Failure {
    Failure {
        path: path.to_owned(),
        reason,
    }
}

/// The position in `todo` of the last run that wrote a new generation of
/// the handoff file, if one did: the runs up to it are loaded from its
/// segment. Reads the manifests from the newest back to that run (a
/// manifest that cannot be read ends the search; the load stops there
/// with the reason anyway).
pub(super) fn last_generation(storage: &Storage, todo: &[ChainEntry]) -> Option<usize> {
    todo.iter().rposition(|entry| {
        audit::read_manifest(storage.as_ref(), &entry.manifest)
            .ok()
            .and_then(|(manifest, _)| manifest.erasure)
            .is_some_and(|e| e.handoff.is_some())
    })
}

/// Where the reading side sends a transaction: its records (`rows`), then,
/// once `rows` is closed, the erased IDs of each erasure run (`erased`, one
/// run at a time: its capacity is 1, so memory holds the IDs of at most
/// two erasures, however many the transaction applies). A failed check
/// goes to the channel of the phase it happened in.
pub(super) struct Outlets {
    pub rows: tokio::sync::mpsc::Sender<Item>,
    pub erased: tokio::sync::mpsc::Sender<Item>,
}

/// Streams the transaction of the runs `unit`: every manifest checked; the
/// records of the last run's segments when the unit is a group (the
/// carrier's generation) or a run that is not an erasure; then the erased
/// IDs of every erasure run. Memory holds a few thousand records, however
/// large the run.
pub(super) fn stream_unit(storage: &Storage, unit: &[ChainEntry], outlets: Outlets) {
    let Outlets { rows, erased } = outlets;
    let mut erasures = Vec::new();
    {
        let send = |item: Item| rows.blocking_send(item).is_ok();
        for (i, entry) in unit.iter().enumerate() {
            let manifest = match checked_manifest(storage, entry) {
                Ok(m) => m,
                Err(failed) => {
                    send(Item::Failed(failed));
                    return;
                }
            };
            let source = match unit.len() {
                1 => manifest.erasure.is_none(),
                n => i + 1 == n,
            };
            if source && let Some(failed) = install_pending(storage, &manifest) {
                send(Item::Failed(failed));
                return;
            }
            if source && !stream_segments(storage, entry, &manifest.files, &send) {
                return;
            }
            if manifest.erasure.is_some() {
                erasures.push((i, manifest));
            }
        }
    }
    // The records are all sent: closing their channel lets the database
    // side finish its inserts before the deletions begin.
    drop(rows);
    for (i, manifest) in erasures {
        let item = match erasure::erased_ids(storage, &manifest) {
            Ok(ids) => Item::Erased(i, ids),
            Err(e) => Item::Failed(failure(&manifest.audit_rows.path, e.to_string())),
        };
        let failed = matches!(item, Item::Failed(_));
        if erased.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// The failure to report when `manifest` is an erasure that sealed and was
/// killed before it replaced the handoff file by its new generation (its
/// staged generation is still there): the file holds the old generation
/// until the next run installs the new one, so this is not a damaged file.
fn install_pending(storage: &Storage, manifest: &Manifest) -> Option<Failure> {
    manifest.erasure.as_ref()?.handoff.as_ref()?;
    let staged = erasure::record::staged_key(&manifest.run_id);
    storage.size(&staged).ok()??;
    Some(failure(
        &staged,
        format!(
            "erasure {} sealed and was interrupted before it replaced the handoff file by its new generation: the next run of sync, send or forget finishes it; load again then",
            manifest.run_id
        ),
    ))
}

/// The run's manifest, checked against its chain entry, and its Parquet
/// files where they still are (a later compaction or erasure may have
/// replaced them; the rows come from the JSONL).
fn checked_manifest(storage: &Storage, entry: &ChainEntry) -> Result<Manifest, Failure> {
    let (manifest, bytes) = audit::read_manifest(storage.as_ref(), &entry.manifest)
        .map_err(|e| failure(&entry.manifest, e.to_string()))?;
    if sha256_hex(&bytes) != entry.sha256 {
        return Err(failure(
            &entry.manifest,
            "SHA-256 differs from its chain entry".into(),
        ));
    }
    for f in manifest.files.iter().filter(|f| f.offset.is_none()) {
        let checked = match storage.size(&f.path) {
            Ok(None) => continue,
            Ok(Some(_)) => audit::digest(storage.as_ref(), &f.path),
            Err(e) => Err(e),
        };
        let reason = match checked {
            Ok((sha, bytes)) if sha == f.sha256 && bytes == f.bytes => continue,
            Ok(_) => format!("SHA-256 differs from run {}'s manifest", entry.run_id),
            Err(e) => e.to_string(),
        };
        return Err(failure(&f.path, reason));
    }
    Ok(manifest)
}

/// Streams the records of the handoff segments among `files` through
/// `send`, hashing as it goes; a segment that does not match its size and
/// SHA-256 ends with [`Item::Failed`]. False when the stream ended (a
/// failure sent, or the database side gone).
fn stream_segments(
    storage: &Storage,
    entry: &ChainEntry,
    files: &[WrittenFile],
    send: &impl Fn(Item) -> bool,
) -> bool {
    for f in files.iter().filter(|f| f.offset.is_some()) {
        let (offset, length) = (f.offset.unwrap_or(0), f.length.unwrap_or(f.bytes));
        let reader = match storage.handoff_reader(offset..offset.saturating_add(length)) {
            Ok(r) => r,
            Err(e) => {
                send(Item::Failed(failure(&f.path, e.to_string())));
                return false;
            }
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
        let mut hasher = Sha256::new();
        let (mut read, mut line, mut n) = (0u64, Vec::new(), 0u64);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    send(Item::Failed(failure(&f.path, e.to_string())));
                    return false;
                }
            }
            hasher.update(&line);
            read += line.len() as u64;
            n += 1;
            let record = line.strip_suffix(b"\n").unwrap_or(&line);
            let item = parse_record(record).unwrap_or_else(|what| {
                Item::Failed(failure(
                    &f.path,
                    format!("record {n} of run {}'s segment is {what}", entry.run_id),
                ))
            });
            let failed = matches!(item, Item::Failed(_));
            if !send(item) || failed {
                return false;
            }
        }
        if read != length || hex::encode(hasher.finalize()) != f.sha256 {
            send(Item::Failed(failure(
                &f.path,
                format!(
                    "bytes {offset}..{} differ from run {}'s manifest",
                    offset + length,
                    entry.run_id
                ),
            )));
            return false;
        }
    }
    true
}

/// One JSONL record as the row it is.
fn parse_record(line: &[u8]) -> std::result::Result<Item, &'static str> {
    #[derive(serde::Deserialize)]
    struct Tag {
        record_type: RecordType,
    }
    let tag: Tag = serde_json::from_slice(line).map_err(|_| "not a record")?;
    match tag.record_type {
        RecordType::History => serde_json::from_slice(line)
            .map(Item::History)
            .map_err(|_| "not a history record"),
        RecordType::Send => serde_json::from_slice(line)
            .map(Item::Send)
            .map_err(|_| "not a send record"),
    }
}
