//! Writing a commit: the next version, create-only through the storage
//! seam, with optimistic concurrency (a version another writer took is
//! checked for a conflicting removal and the commit retried at the next
//! one), then the checkpoint and log cleanup that keep readers flat.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::actions::{Action, Add, CommitInfo, Metadata, Protocol, Remove};
use super::checkpoint;
use super::cleanup;
use super::log::{LastCheckpoint, Log};
use super::schema::{TableKind, schema_string};
use super::snapshot::{self, Snapshot};
use crate::error::{Error, Result};

/// The writer version this module implements (reader 1, writer 2: no
/// table features beyond `appendOnly` and invariants, which it never sets).
pub(crate) const WRITER_VERSION: i32 = 2;
/// A checkpoint every this many versions.
pub const CHECKPOINT_INTERVAL: u64 = 100;
/// Versions a commit may find taken before it gives up.
pub const MAX_ATTEMPTS: u32 = 100;

/// What one run changes in a table: one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Who and how (becomes `commitInfo`).
    pub info: CommitInfo,
    /// Files added.
    pub adds: Vec<Add>,
    /// Files removed.
    pub removes: Vec<Remove>,
}

/// A commit that was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The table version it produced.
    pub version: u64,
    /// SHA-256 (hex) of the commit file's bytes.
    pub sha256: String,
}

impl Change {
    /// The change that undoes this one (adds become removes and removes
    /// adds), made by `info`: the repair of a run whose commit the audit
    /// chain does not hold. A re-added file gets back the `add` (with its
    /// statistics) that `known`, the snapshot before the commit being
    /// undone, holds for it.
    pub fn inverse(&self, info: CommitInfo, known: Option<&Snapshot>) -> Change {
        let at = info.timestamp;
        let removes = self
            .adds
            .iter()
            .map(|a| a.to_remove(at, a.data_change))
            .collect();
        let adds = self
            .removes
            .iter()
            .map(|r| match known.and_then(|s| s.files.get(&r.path)) {
                Some(add) => Add {
                    modification_time: at,
                    data_change: r.data_change,
                    ..add.clone()
                },
                None => r.to_add(at, r.data_change),
            })
            .collect();
        Change {
            info,
            adds,
            removes,
        }
    }
}

/// The protocol and metadata of a new table of `kind`.
fn first_actions(kind: TableKind, now: i64) -> [Action; 2] {
    let protocol = Protocol {
        min_reader_version: snapshot::READER_VERSION,
        min_writer_version: WRITER_VERSION,
    };
    let metadata = Metadata {
        id: uuid_v4(),
        format: super::actions::Format::default(),
        schema_string: schema_string(kind),
        partition_columns: vec!["date".to_owned()],
        configuration: Default::default(),
        created_time: Some(now),
    };
    [Action::Protocol(protocol), Action::Metadata(metadata)]
}

/// A random (version 4) UUID for a table's `metaData.id`.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Only the table's identity: uniqueness, not secrecy, matters.
        b = fastrand::u128(..).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The bytes of the commit file of `change` at `version`: `commitInfo`
/// first (where readers look for it), then, for version 0, `protocol` and
/// `metaData`, then removes and adds. One action per line.
pub(crate) fn encode(kind: TableKind, change: &Change, version: u64, now: i64) -> Vec<u8> {
    let mut actions = vec![Action::CommitInfo(change.info.clone())];
    if version == 0 {
        actions.extend(first_actions(kind, now));
    }
    actions.extend(change.removes.iter().cloned().map(Action::Remove));
    actions.extend(change.adds.iter().cloned().map(Action::Add));
    let mut bytes = Vec::new();
    for action in &actions {
        bytes.extend_from_slice(action.to_json().to_string().as_bytes());
        bytes.push(b'\n');
    }
    bytes
}

/// Whether a commit that took the version first conflicts with `change`:
/// both remove a file (two compactions or erasures of the same files).
/// Blind appends never conflict.
fn check_winner(log: &Log, change: &Change, version: u64) -> Result<()> {
    if change.removes.is_empty() {
        return Ok(());
    }
    let ours: BTreeSet<&str> = change.removes.iter().map(|r| r.path.as_str()).collect();
    let Some((_, actions)) = log.read_commit(version)? else {
        return Ok(());
    };
    for action in actions {
        if let Action::Remove(r) = action
            && ours.contains(r.path.as_str())
        {
            return Err(Error::DeltaConflict {
                path: log.describe(&log.commit_key(version)),
                reason: format!(
                    "version {version}, committed concurrently, already removed {}: run again on the new state",
                    r.path
                ),
            });
        }
    }
    Ok(())
}

/// Writes `change` at the next free version (see the module doc).
pub(crate) fn commit(log: &Log, kind: TableKind, change: &Change, now: i64) -> Result<Committed> {
    let hint = log.last_checkpoint()?;
    let version = log.latest_after(hint.as_ref())?.map_or(0, |v| v + 1);
    commit_from(log, kind, change, version, hint.as_ref(), now)
}

/// Writes `change` at `version` or, when other writers took it since the
/// log was read, at the first free version after it.
pub(crate) fn commit_from(
    log: &Log,
    kind: TableKind,
    change: &Change,
    mut version: u64,
    hint: Option<&LastCheckpoint>,
    now: i64,
) -> Result<Committed> {
    for _ in 0..MAX_ATTEMPTS {
        let bytes = encode(kind, change, version, now);
        let key = log.commit_key(version);
        match log.put_new(&key, &bytes) {
            Ok(()) => {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                after_commit(log, version, change.removes.len(), hint, now);
                return Ok(Committed { version, sha256 });
            }
            // A folder reports a taken name as corrupt, a bucket as a
            // conflict: either way, someone else has this version.
            Err(Error::Conflict { .. } | Error::Corrupt { .. }) if log.has_commit(version)? => {
                check_winner(log, change, version)?;
                version += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::DeltaConflict {
        path: log.describe(&log.dir()),
        reason: format!(
            "{MAX_ATTEMPTS} versions in a row were taken by other writers while committing; run again"
        ),
    })
}

/// The checkpoint (and cleanup) a commit at `version` that removed
/// `removes` files owes: when it lands on a multiple of
/// [`CHECKPOINT_INTERVAL`], when the newest checkpoint is an interval or
/// more behind (one that a killed writer never wrote), or when it removed
/// an interval's worth of files or more (a day's compaction): every reader
/// until the next checkpoint would otherwise parse all those `remove`
/// actions, which costs more than reading the checkpoint, whose live files
/// the removal has just cut down. A failure here loses nothing (the commit
/// stands; the next commit tries again), so it is logged, not returned.
fn after_commit(log: &Log, version: u64, removes: usize, hint: Option<&LastCheckpoint>, now: i64) {
    let behind = version.saturating_sub(hint.map_or(0, |h| h.version));
    let interval = CHECKPOINT_INTERVAL;
    let owed = version.is_multiple_of(interval) || behind > interval || removes as u64 >= interval;
    if version == 0 || !owed {
        return;
    }
    if let Err(e) = checkpoint_and_clean(log, version, now) {
        tracing::warn!(table = %log.root, version, error = %e, "delta checkpoint not written; the next commit tries again");
    }
}

/// Writes the checkpoint of `version`, points `_last_checkpoint` at it and
/// cleans the log up.
pub(crate) fn checkpoint_and_clean(log: &Log, version: u64, now: i64) -> Result<()> {
    let Some(snapshot) = snapshot::load(log, Some(version), checkpoint::Rows::All)? else {
        return Ok(());
    };
    // A commit does not re-read the protocol (that costs the checkpoint's
    // read); the checkpoint does, and leaves a table that another writer
    // upgraded alone.
    if snapshot.protocol.min_writer_version > WRITER_VERSION {
        return Err(log.corrupt(
            &log.commit_key(version),
            format!(
                "the table needs Delta writer version {}; this tool writes version {WRITER_VERSION}",
                snapshot.protocol.min_writer_version
            ),
        ));
    }
    let config = &snapshot.metadata.configuration;
    let tombstones = cleanup::retention(
        config,
        "delta.deletedFileRetentionDuration",
        cleanup::DEFAULT_TOMBSTONE_RETENTION_MS,
    )
    .unwrap_or(i64::MAX);
    let actions = snapshot.to_actions(now.saturating_sub(tombstones));
    let size_in_bytes = checkpoint::write(log, version, &actions)?;
    let hint = LastCheckpoint {
        version,
        size: actions.len() as u64,
        size_in_bytes: Some(size_in_bytes),
        num_of_add_files: Some(snapshot.files.len() as u64),
        parts: None,
    };
    log.set_last_checkpoint(&hint)?;
    let retention = cleanup::retention(
        config,
        "delta.logRetentionDuration",
        cleanup::DEFAULT_LOG_RETENTION_MS,
    );
    if let Some(retention) = retention {
        cleanup::clean(log, version, now, retention)?;
    }
    Ok(())
}
