//! Snapshot replay: the state of a table at a version, from the newest
//! checkpoint at or before it plus the commit files after it (Delta
//! protocol, "Action Reconciliation").

use std::collections::BTreeMap;

use super::actions::{Action, Add, Metadata, Protocol, Remove};
use super::checkpoint::{self, Rows};
use super::log::Log;
use crate::error::{Error, Result};

/// The highest reader version this module implements.
pub(crate) const READER_VERSION: i32 = 1;

/// The state of a table at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The version.
    pub version: u64,
    /// The live data files, by path relative to the table root.
    pub files: BTreeMap<String, Add>,
    /// Tombstones (removed files), by path, of the commits replayed after
    /// the checkpoint the snapshot starts from: a reader needs none of the
    /// checkpoint's own (see [`super::Table::snapshot`]); the checkpoint
    /// writer reads those too, and keeps them within the deleted-file
    /// retention.
    pub removed: BTreeMap<String, Remove>,
    /// The protocol in force.
    pub protocol: Protocol,
    /// The table metadata in force.
    pub metadata: Metadata,
}

/// A snapshot being replayed: before version 0 it has no protocol yet.
#[derive(Debug, Default)]
struct Replay {
    version: Option<u64>,
    files: BTreeMap<String, Add>,
    removed: BTreeMap<String, Remove>,
    protocol: Option<Protocol>,
    metadata: Option<Metadata>,
}

impl Replay {
    /// Applies the actions of one version, in order; a later action on the
    /// same path wins.
    fn apply(&mut self, version: u64, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Add(add) => {
                    self.removed.remove(&add.path);
                    self.files.insert(add.path.clone(), add);
                }
                Action::Remove(remove) => {
                    self.files.remove(&remove.path);
                    self.removed.insert(remove.path.clone(), remove);
                }
                Action::Protocol(protocol) => self.protocol = Some(protocol),
                Action::Metadata(metadata) => self.metadata = Some(metadata),
                Action::CommitInfo(_) | Action::Other(_) => {}
            }
        }
        self.version = Some(version);
    }

    /// The snapshot, once a protocol and metadata were seen and the
    /// protocol is one this module can read.
    fn finish(self, log: &Log) -> Result<Option<Snapshot>> {
        let Some(version) = self.version else {
            return Ok(None);
        };
        let key = log.commit_key(version);
        let (Some(protocol), Some(metadata)) = (self.protocol, self.metadata) else {
            return Err(log.corrupt(
                &key,
                "the log has no protocol or metaData action up to here",
            ));
        };
        if protocol.min_reader_version > READER_VERSION {
            return Err(log.corrupt(
                &key,
                format!(
                    "the table needs Delta reader version {}; this tool reads version {READER_VERSION}",
                    protocol.min_reader_version
                ),
            ));
        }
        Ok(Some(Snapshot {
            version,
            files: self.files,
            removed: self.removed,
            protocol,
            metadata,
        }))
    }
}

impl Snapshot {
    /// The snapshot as the actions of a checkpoint: protocol, metaData,
    /// one `add` per live file, one `remove` per tombstone deleted after
    /// `tombstones_after` (milliseconds since the epoch).
    pub fn to_actions(&self, tombstones_after: i64) -> Vec<Action> {
        let mut actions = vec![
            Action::Protocol(self.protocol.clone()),
            Action::Metadata(self.metadata.clone()),
        ];
        actions.extend(self.files.values().cloned().map(Action::Add));
        actions.extend(
            self.removed
                .values()
                .filter(|r| r.deletion_timestamp > tombstones_after)
                .cloned()
                .map(Action::Remove),
        );
        actions
    }
}

/// Where a replay starts: the newest usable checkpoint at or before
/// `target` (any version when `None`), or the empty table before version 0;
/// of the checkpoint, its `rows`.
fn start(log: &Log, target: Option<u64>, rows: Rows) -> Result<Replay> {
    let hinted = log.last_checkpoint()?.map(|h| h.version);
    let from = match (hinted, target) {
        (Some(c), None) => Some(c),
        (Some(c), Some(t)) if c <= t => Some(c),
        // Time travel to before the newest checkpoint: the checkpoint of
        // the hundred the version is in, usually.
        (Some(_), Some(t)) if t >= 100 && log.has_checkpoint(t / 100 * 100)? => Some(t / 100 * 100),
        // No hint: a young table (or a hint lost to a kill) replays from
        // version 0 while that is there.
        (None, _) if log.has_commit(0)? => None,
        _ => {
            let listing = log.list()?;
            let usable = |c: &&u64| target.is_none_or(|t| **c <= t);
            listing.checkpoints.iter().rev().find(usable).copied()
        }
    };
    let mut replay = Replay::default();
    if let Some(c) = from {
        replay.apply(c, checkpoint::read_rows(log, c, rows)?);
    }
    Ok(replay)
}

/// The table at `target` (the latest when `None`); `None` when the table
/// has no log. Reads the checkpoint (its `rows`) and the commits after it
/// only.
pub(crate) fn load(log: &Log, target: Option<u64>, rows: Rows) -> Result<Option<Snapshot>> {
    let mut replay = start(log, target, rows)?;
    let mut next = replay.version.map_or(0, |v| v + 1);
    if replay.version.is_none() && !log.has_commit(0)? {
        return match target {
            None if log.list()?.commits.is_empty() => Ok(None),
            _ => Err(log.corrupt(
                &log.commit_key(0),
                "missing, and no checkpoint covers the versions asked for (cleaned up)",
            )),
        };
    }
    while target.is_none_or(|t| next <= t) {
        let Some((_, actions)) = log.read_commit(next)? else {
            match target {
                Some(t) => return Err(missing(log, next, t)),
                None => break,
            }
        };
        replay.apply(next, actions);
        next += 1;
    }
    replay.finish(log)
}

/// The error for a replay towards `target` that found no commit `next`:
/// bad input when the table never got that far, a damaged log when it did
/// (a commit deleted by hand, or cleaned up with no checkpoint after it).
fn missing(log: &Log, next: u64, target: u64) -> Error {
    match log.latest_version() {
        Ok(Some(latest)) if latest >= next => log.corrupt(
            &log.commit_key(next),
            format!("missing, though version {latest} exists: version {target} cannot be replayed"),
        ),
        Ok(latest) => Error::invalid(
            "version",
            format!(
                "the table {} has no version {target} (the latest is {})",
                log.root,
                latest.map_or_else(|| "none".to_owned(), |v| v.to_string())
            ),
        ),
        Err(e) => e,
    }
}
