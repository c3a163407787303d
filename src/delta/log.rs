//! Reading a table's `_delta_log/`: file names, commit files, the listing,
//! `_last_checkpoint`, and finding the newest version without reading the
//! whole log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::actions::Action;
use crate::error::{Error, Result};
use crate::storage::{Expect, Storage, Stored, file_name, is_temporary};

/// Serialises this process's create-only puts of commit files: a folder
/// stages a new file under a name made of the key and the process ID, so
/// two threads of one process putting the same version would share it.
/// Other processes (shards) race through the create-only put itself.
static PUTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The log of one table: its storage and its root (relative to the output
/// root, e.g. `parquet/messages`).
#[derive(Debug, Clone)]
pub(crate) struct Log {
    /// The output root.
    pub storage: Storage,
    /// The table root.
    pub root: String,
}

/// `_last_checkpoint`: where the newest checkpoint is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LastCheckpoint {
    /// The checkpoint's version.
    pub version: u64,
    /// Actions in it.
    pub size: u64,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_in_bytes: Option<u64>,
    /// Live files in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_of_add_files: Option<u64>,
    /// Multi-part checkpoints (never written here; refused on read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u64>,
}

/// The files of a log, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// Versions with a commit file, ascending.
    pub commits: Vec<u64>,
    /// Versions with a single-file checkpoint, ascending.
    pub checkpoints: Vec<u64>,
}

/// The version a log file name holds, and whether it is a checkpoint:
/// `<v:020>.json` or `<v:020>.checkpoint.parquet`. Other names (CRC files,
/// multi-part or V2 checkpoints, temporaries) are `None`.
pub(crate) fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (digits, checkpoint) = if let Some(d) = name.strip_suffix(".checkpoint.parquet") {
        (d, true)
    } else {
        (name.strip_suffix(".json")?, false)
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|v| (v, checkpoint))
}

impl Log {
    /// The log folder's prefix, with its trailing `/`.
    pub fn dir(&self) -> String {
        format!("{}/_delta_log/", self.root)
    }

    /// The key of the commit file of `version`.
    pub fn commit_key(&self, version: u64) -> String {
        format!("{}{version:020}.json", self.dir())
    }

    /// The key of the checkpoint of `version`.
    pub fn checkpoint_key(&self, version: u64) -> String {
        format!("{}{version:020}.checkpoint.parquet", self.dir())
    }

    /// The key of `_last_checkpoint`.
    pub fn last_checkpoint_key(&self) -> String {
        format!("{}_last_checkpoint", self.dir())
    }

    /// A key as the user would recognise it, for errors.
    pub fn describe(&self, key: &str) -> PathBuf {
        self.storage.describe(key)
    }

    /// A malformed-log error naming `key`.
    pub fn corrupt(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.describe(key),
            reason: reason.into(),
        }
    }

    /// Every commit and checkpoint file present (one listing).
    pub fn list(&self) -> Result<Listing> {
        let mut listing = Listing::default();
        for listed in self.storage.list(&self.dir())? {
            let name = file_name(&listed.key);
            if is_temporary(name) {
                continue;
            }
            match parse_name(name) {
                Some((v, false)) => listing.commits.push(v),
                Some((v, true)) => listing.checkpoints.push(v),
                None => {}
            }
        }
        listing.commits.sort_unstable();
        listing.checkpoints.sort_unstable();
        Ok(listing)
    }

    /// Writes a new log file create-only (see [`PUTS`]).
    pub fn put_new(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let _guard = PUTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.storage.put_new(key, bytes)
    }

    /// Whether the commit file of `version` exists.
    pub fn has_commit(&self, version: u64) -> Result<bool> {
        Ok(self.storage.size(&self.commit_key(version))?.is_some())
    }

    /// The bytes and actions of the commit file of `version`, if present.
    pub fn read_commit(&self, version: u64) -> Result<Option<(Vec<u8>, Vec<Action>)>> {
        let key = self.commit_key(version);
        let Some(stored) = self.storage.get(&key)? else {
            return Ok(None);
        };
        let actions = self.parse_commit(&key, &stored.bytes)?;
        Ok(Some((stored.bytes, actions)))
    }

    /// The actions of a commit file's bytes; a malformed line is an error
    /// naming the file and the line.
    pub fn parse_commit(&self, key: &str, bytes: &[u8]) -> Result<Vec<Action>> {
        let mut actions = Vec::new();
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let action = Action::parse(line).map_err(|reason| {
                self.corrupt(key, format!("line {}: {reason}: not a Delta action", n + 1))
            })?;
            actions.push(action);
        }
        Ok(actions)
    }

    /// `_last_checkpoint`, if present; malformed is an error.
    pub fn last_checkpoint(&self) -> Result<Option<LastCheckpoint>> {
        let key = self.last_checkpoint_key();
        let Some(stored) = self.storage.get(&key)? else {
            return Ok(None);
        };
        let hint: LastCheckpoint = serde_json::from_slice(&stored.bytes)
            .map_err(|e| self.corrupt(&key, crate::error::json_error_category(&e).to_owned()))?;
        if hint.parts.is_some_and(|p| p > 1) {
            return Err(self.corrupt(
                &key,
                "names a multi-part checkpoint, which this tool does not read",
            ));
        }
        Ok(Some(hint))
    }

    /// The newest version: from the checkpoint `_last_checkpoint` names (or
    /// version 0), probing commit files forward by doubling steps and then
    /// bisecting. Commit files after a checkpoint are never cleaned up and
    /// versions are dense, so presence is monotone there: this reads
    /// O(log n) names for the n commits since the checkpoint, never the
    /// whole log. A log whose start was cleaned up and that has no
    /// `_last_checkpoint` falls back on one listing.
    pub fn latest_version(&self) -> Result<Option<u64>> {
        self.latest_after(self.last_checkpoint()?.as_ref())
    }

    /// [`Log::latest_version`] with `_last_checkpoint` already read.
    pub fn latest_after(&self, hint: Option<&LastCheckpoint>) -> Result<Option<u64>> {
        let start = match hint {
            Some(hint) => hint.version,
            None if self.has_commit(0)? => 0,
            None => return Ok(self.list()?.commits.last().copied()),
        };
        if !self.has_commit(start)? && !self.has_checkpoint(start)? {
            return Err(self.corrupt(
                &self.last_checkpoint_key(),
                format!("names version {start}, whose commit and checkpoint are both missing"),
            ));
        }
        // `low` is known present; find a `high` known absent.
        let (mut low, mut step) = (start, 1u64);
        let mut high = loop {
            let probe = low.saturating_add(step);
            if !self.has_commit(probe)? {
                break probe;
            }
            low = probe;
            step = step.saturating_mul(2);
        };
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.has_commit(mid)? {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(Some(low))
    }

    /// Whether the checkpoint of `version` exists.
    pub fn has_checkpoint(&self, version: u64) -> Result<bool> {
        Ok(self.storage.size(&self.checkpoint_key(version))?.is_some())
    }

    /// Points `_last_checkpoint` at `hint`, unless it already names a newer
    /// checkpoint (a concurrent writer's): compare-and-swap where the
    /// backend has versions, retried on a lost race.
    pub fn set_last_checkpoint(&self, hint: &LastCheckpoint) -> Result<()> {
        let key = self.last_checkpoint_key();
        let bytes = serde_json::to_vec(hint).unwrap_or_default();
        for _ in 0..3 {
            let current = self.storage.get(&key)?;
            let newer = current.as_ref().and_then(|s| {
                serde_json::from_slice::<LastCheckpoint>(&s.bytes)
                    .ok()
                    .filter(|c| c.version >= hint.version)
            });
            if newer.is_some() {
                return Ok(());
            }
            let expect = match &current {
                None => Expect::Missing,
                Some(Stored {
                    version: Some(v), ..
                }) => Expect::Version(v),
                Some(_) => Expect::Any,
            };
            match self.storage.replace(&key, &bytes, expect) {
                Ok(_) => return Ok(()),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::DeltaConflict {
            path: self.describe(&key),
            reason: "kept changing while this run updated it; the next commit tries again"
                .to_owned(),
        })
    }
}
