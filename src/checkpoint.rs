//! The one checkpoint object, `state/checkpoint.json` (the guide's
//! "recipient / history / send / audit checkpoint"): the commit record.
//!
//! The checkpoint says what is committed: how many bytes of the JSONL, the
//! Parquet files no sealed run's manifest lists yet, which runs have claimed
//! the output since the last seal, and per conversation which block of
//! message IDs is written and where paging resumes. Its size depends on the
//! conversations and sends it tracks, never on how many runs came before:
//! what sealed runs wrote is in their manifests, not here. It holds IDs, cursors, counts and statuses,
//! never a message body. It is replaced atomically and only after the data
//! it describes is durable, so after a crash it never points past the data;
//! where the storage has versions, by compare-and-swap against the version
//! it was read as, so that a run that was not the last to commit can never
//! commit over another's work.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::pagination::StopReason;
use crate::dedupe::Block;
use crate::erasure::record::{Erasure, ErasureKind};
use crate::error::{Error, Result};
use crate::sinks::WrittenFile;
use crate::storage::{Backend, Expect};

/// Folder of the checkpoint and the lock, inside the output folder.
pub const STATE_DIR: &str = "state";
/// Checkpoint file name.
pub const FILE_NAME: &str = "checkpoint.json";
/// The checkpoint's key.
pub const KEY: &str = "state/checkpoint.json";
/// Format 2: `parquet.files` holds only the files written since the last
/// sealed run, and `unsealed` names the runs to clean up after. A format 1
/// checkpoint (every file, no `unsealed`) is read and upgraded.
const FORMAT_VERSION: u32 = 2;

/// The checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// Committed part of the JSONL handoff file.
    pub jsonl: JsonlState,
    /// Committed Parquet files.
    pub parquet: ParquetState,
    /// Usernames resolved to numeric IDs (the recipient checkpoint), by
    /// lowercase username.
    #[serde(default)]
    pub recipients: BTreeMap<String, Recipient>,
    /// History state per conversation, by `account/user_id`.
    #[serde(default)]
    pub conversations: BTreeMap<String, Conversation>,
    /// Outbound sends by their DM `Idempotency-Key` (the text-send and
    /// media checkpoints).
    #[serde(default)]
    pub sends: BTreeMap<String, SendState>,
    /// The audit chain's head.
    #[serde(default)]
    pub audit: AuditPointer,
    /// The run that wrote it. Every run claims the output by committing
    /// the checkpoint with its own ID before it changes anything, so that
    /// the checkpoint's content — and the ETag a compare-and-swap compares,
    /// which object stores derive from it — changes with every claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The runs that claimed the output since the last sealed run, with the
    /// folders they write Parquet files into: what a killed one left is
    /// found by name there, without listing folders that grow with the
    /// history. `None` in a format 1 checkpoint, whose repair lists them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsealed: Option<Vec<Claim>>,
    /// Where compaction stands.
    #[serde(default, skip_serializing_if = "CompactionState::is_empty")]
    pub compaction: CompactionState,
    /// Whether the Delta tables hold every file the sealed runs list: set
    /// by the first run sealed with the tables, which converts an output
    /// written before them (reading every manifest once), so that no later
    /// run looks at the chain for a table that does not exist yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta_converted: bool,
    /// Where retention (`sync --retain-days`) stands.
    #[serde(default, skip_serializing_if = "RetentionState::is_empty")]
    pub retention: RetentionState,
    /// The erasures that stay in force: tombstones, the retention
    /// cut-off, forgotten conversations.
    #[serde(default, skip_serializing_if = "ErasureState::is_empty")]
    pub erasure: ErasureState,
    /// How it was read: `None` when there was none, else the version (if
    /// the storage has versions) the next save must still find.
    #[serde(skip)]
    pub read_as: Option<Option<String>>,
}

/// Where compaction stands (see `xquik-dm compact`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionState {
    /// Every date partition up to this date (`YYYY-MM-DD`) was compacted
    /// when it was closed: an automatic compaction starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
}

impl CompactionState {
    fn is_empty(&self) -> bool {
        self.through.is_none()
    }
}

/// Where retention stands (`sync --retain-days`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionState {
    /// The UTC date (`YYYY-MM-DD`) of the last run that applied retention:
    /// it is applied at most once a day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_day: Option<String>,
    /// The ID of that day's retention run (an erasure run of its own,
    /// after the sync's): while its manifest is missing, the next sync
    /// tries again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl RetentionState {
    fn is_empty(&self) -> bool {
        self.last_day.is_none() && self.run.is_none()
    }
}

/// The erasures that stay in force (see [`crate::erasure`]). Body-free:
/// IDs, digests and a time. Its size grows with the erasure runs and the
/// forgotten conversations, not with the messages erased: the tombstones
/// themselves are the erasure runs' rows files, named here with their
/// digests so that a changed or removed one is found before a sync could
/// write an erased message again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureState {
    /// The rows files whose message IDs no sync writes again, one per
    /// erasure run that erased by conversation or by ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombstones: Vec<TombstoneFile>,
    /// Retention: no record created before this instant (RFC 3339 UTC) is
    /// written again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_before: Option<String>,
    /// Forgotten conversations (user ID → the run that forgot it): skipped
    /// by syncs until `forget --undo-user`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forgotten: BTreeMap<String, String>,
    /// The tombstones as one sorted binary file, read by every run instead
    /// of the rows files (see [`crate::erasure::tombstones`]); a cache of
    /// them, which the rows files stand in for when it is missing, stale or
    /// damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<TombstoneIndex>,
}

/// The tombstones' index file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneIndex {
    /// The file, relative to the output root (`state/tombstones-<run>.bin`).
    pub path: String,
    /// Its SHA-256.
    pub sha256: String,
    /// The (conversation, message) ID pairs it holds.
    pub ids: u64,
    /// SHA-256 over the digests of the rows files it was built from, in
    /// order: it indexes exactly [`ErasureState::tombstones`] while this
    /// matches them.
    pub source: String,
}

impl ErasureState {
    fn is_empty(&self) -> bool {
        self.tombstones.is_empty() && self.erased_before.is_none() && self.forgotten.is_empty()
    }

    /// Tombstones in all.
    pub fn tombstone_count(&self) -> u64 {
        self.tombstones.iter().map(|t| t.rows).sum()
    }

    /// Puts in force the sealed erasure of the run `run_id`, whose rows
    /// file is `rows` (its tombstones, unless it is a retention run, which
    /// leaves its cut-off instead). Safe to repeat.
    pub fn put_in_force(&mut self, run_id: &str, erasure: &Erasure, rows: TombstoneFile) {
        if erasure.kind == ErasureKind::Retention {
            if let Some(cut) = &erasure.older_than
                && self.erased_before.as_ref().is_none_or(|b| b < cut)
            {
                self.erased_before = Some(cut.clone());
            }
        } else if rows.rows > 0 && !self.tombstones.iter().any(|t| t.run_id == run_id) {
            self.tombstones.push(rows);
        }
        for user in &erasure.forgotten_users {
            self.forgotten.insert(user.clone(), run_id.to_owned());
        }
        for user in &erasure.undone_users {
            self.forgotten.remove(user);
        }
    }
}

/// An erasure run's rows file, as a set of tombstones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneFile {
    /// The erasure run.
    pub run_id: String,
    /// Its rows file, relative to the output root.
    pub path: String,
    /// The rows file's SHA-256, as the run's manifest lists it.
    pub sha256: String,
    /// Its lines: the tombstones it holds.
    pub rows: u64,
}

/// A run that claimed the output and may have written files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The run's ID, which names every file it writes.
    pub run: String,
    /// The Parquet folders it writes into (`parquet/<table>/date=<date>`).
    #[serde(default)]
    pub dirs: Vec<String>,
}

/// Where one outbound send stands. No text: the key identifies it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendState {
    /// The sender account.
    pub account: String,
    /// The numeric recipient ID.
    pub recipient_user_id: String,
    /// `media_uploaded`, `pending` (accepted, not terminal: poll
    /// `status_url`), `retry` (a transient failure: the write may have
    /// happened, so the same key is used again), `failed` (the API refused
    /// it or it ended failed: a new attempt gets a new key) or `sent`.
    pub status: String,
    /// Attempts that definitely failed before the current one; part of the
    /// idempotency key from the second attempt on.
    #[serde(default)]
    pub attempt: u32,
    /// The `Idempotency-Key` of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Where to poll a pending write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    /// The uploaded media ID, once uploaded (reused on a rerun).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    /// The uploaded media's public URL, when the API gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    /// The sent DM's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The write action's final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_status: Option<String>,
    /// When the job sent it (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Whether its send record is in the committed JSONL.
    #[serde(default)]
    pub recorded: bool,
    /// The error code it failed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Committed part of the JSONL file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonlState {
    /// Bytes committed; anything after this on disk is cut back.
    pub committed_bytes: u64,
    /// History records in the committed bytes.
    #[serde(default)]
    pub history_rows: u64,
    /// Send records in the committed bytes.
    #[serde(default)]
    pub send_rows: u64,
    /// SHA-256 midstate of the committed bytes (for `SHA256SUMS`).
    #[serde(default)]
    pub digest_state: Option<crate::sinks::jsonl::DigestState>,
}

/// Committed Parquet files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetState {
    /// Every history record before this JSONL byte offset is in a listed
    /// `parquet/messages/` file; later ones are rebuilt by the next run.
    pub messages_covered_bytes: u64,
    /// The same for send records and `parquet/sends/`. One offset per table:
    /// a table whose file rolls over must not wait for the other.
    #[serde(default)]
    pub sends_covered_bytes: u64,
    /// Committed Parquet files that no sealed run's manifest lists yet,
    /// oldest first (a sealed run's files are in its manifest).
    #[serde(default)]
    pub files: Vec<WrittenFile>,
    /// How many committed files came before `files[0]`: the manifests'
    /// cumulative `coverage.parquet_files` counts in the same order, so a
    /// run that sealed without recording it here is recognised.
    #[serde(default)]
    pub listed_before: u64,
}

/// A resolved recipient (from `GET /x/users/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Numeric user ID.
    pub id: String,
    /// Username without `@`.
    pub username: String,
    /// The `canDm` preflight hint, when the API gave one.
    #[serde(default, rename = "canDm", skip_serializing_if = "Option::is_none")]
    pub can_dm: Option<bool>,
}

/// History state of one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The connected account reading it.
    pub account: String,
    /// The other participant.
    pub user_id: String,
    /// The contiguous block of message IDs written so far.
    #[serde(default)]
    pub written: Option<Block>,
    /// The downward backfill below `written`.
    #[serde(default)]
    pub backfill: Backfill,
    /// An incremental scan from the newest page down to `written.newest`
    /// that has not reached it yet.
    #[serde(default)]
    pub top_scan: Option<TopScan>,
    /// History records written for this conversation, all runs.
    #[serde(default)]
    pub messages_written: u64,
    /// The last page synced: the guide's history checkpoint.
    #[serde(default)]
    pub last_page: Option<PageState>,
    /// How the last run left it.
    #[serde(default)]
    pub status: Option<String>,
    /// Why it stopped (a stop reason or an error code).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The downward backfill of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    /// Cursor of the next older page; `None` before the first page.
    pub cursor: Option<String>,
    /// Whether the oldest message was reached.
    pub done: bool,
}

/// An unfinished incremental scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopScan {
    /// IDs this scan has written (above the conversation's `written` block).
    pub block: Option<Block>,
    /// Cursor of its next page; `None` to start from the newest page.
    pub cursor: Option<String>,
}

/// The paging fields of the last page fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageState {
    /// Messages the page returned.
    pub messages_count: u64,
    /// Its `next_cursor`.
    pub next_cursor: String,
    /// Its `has_next_page`.
    pub has_next_page: bool,
    /// Why paging stopped after it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopReason>,
}

/// Where the audit chain stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPointer {
    /// Runs committed so far.
    #[serde(default)]
    pub runs: u64,
    /// Path of the last run's manifest, relative to the output folder.
    #[serde(default)]
    pub last_manifest: Option<String>,
    /// SHA-256 of that manifest.
    #[serde(default)]
    pub last_digest: Option<String>,
    /// How far the manifests cover the outputs.
    #[serde(default)]
    pub coverage: crate::audit::Coverage,
}

/// The key of a conversation in the checkpoint.
pub fn conversation_key(account: &str, user_id: &str) -> String {
    format!("{account}/{user_id}")
}

impl Checkpoint {
    /// The checkpoint of a folder with nothing committed yet.
    pub fn empty() -> Checkpoint {
        Checkpoint {
            version: FORMAT_VERSION,
            unsealed: Some(Vec::new()),
            ..Checkpoint::default()
        }
    }

    /// Whether `storage` has a checkpoint.
    pub fn exists(storage: &dyn Backend) -> Result<bool> {
        Ok(storage.size(KEY)?.is_some())
    }

    /// Loads the checkpoint of `storage`; a root without one starts empty.
    pub fn load(storage: &dyn Backend) -> Result<Checkpoint> {
        let Some(stored) = storage.get(KEY)? else {
            return Ok(Checkpoint::empty());
        };
        let path = storage.describe(KEY);
        let mut checkpoint: Checkpoint =
            serde_json::from_slice(&stored.bytes).map_err(|e| Error::Corrupt {
                path: path.clone(),
                reason: format!(
                    "not a checkpoint (JSON error at line {} column {}): restore it from backup",
                    e.line(),
                    e.column()
                ),
            })?;
        if checkpoint.version > FORMAT_VERSION {
            return Err(Error::Corrupt {
                path,
                reason: format!(
                    "written by a newer xquik-dm (format {}): upgrade xquik-dm",
                    checkpoint.version
                ),
            });
        }
        checkpoint.read_as = Some(stored.version);
        // Saved in the current format from now on; a format 1 checkpoint
        // keeps `unsealed: None` until its repair ran (see `store/recover.rs`).
        checkpoint.version = FORMAT_VERSION;
        Ok(checkpoint)
    }

    /// Replaces the checkpoint atomically and durably, provided it is still
    /// the one this was read as. Call only once the data it describes is
    /// durable.
    pub fn save(&mut self, storage: &dyn Backend) -> Result<()> {
        let bytes = self.to_bytes(storage)?;
        self.save_bytes(storage, &bytes)
    }

    /// The bytes [`Checkpoint::save`] writes: what the seal lists in
    /// `SHA256SUMS` before it saves them.
    pub fn to_bytes(&self, storage: &dyn Backend) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::io(storage.describe(KEY), std::io::Error::other(e)))
    }

    /// Saves `bytes`, which [`Checkpoint::to_bytes`] made of this
    /// checkpoint.
    pub fn save_bytes(&mut self, storage: &dyn Backend, bytes: &[u8]) -> Result<()> {
        let expect = match &self.read_as {
            None => Expect::Missing,
            Some(None) => Expect::Any,
            Some(Some(version)) => Expect::Version(version),
        };
        let version = storage.replace(KEY, bytes, expect)?;
        self.read_as = Some(version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalDir;

    #[test]
    fn missing_checkpoint_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoint::load(&LocalDir::new(dir.path())).unwrap();
        assert_eq!(c.version, FORMAT_VERSION);
        assert!(c.conversations.is_empty());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDir::new(dir.path());
        let mut c = Checkpoint::load(&storage).unwrap();
        c.jsonl.committed_bytes = 123;
        c.conversations.insert(
            conversation_key("acme", "42"),
            Conversation {
                account: "acme".into(),
                user_id: "42".into(),
                written: Some(Block {
                    newest: "9".into(),
                    oldest: "1".into(),
                }),
                backfill: Backfill {
                    cursor: Some("opaque+/=".into()),
                    done: false,
                },
                ..Conversation::default()
            },
        );
        c.save(&storage).unwrap();
        assert_eq!(Checkpoint::load(&storage).unwrap(), c);
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        std::fs::write(dir.path().join(KEY), b"{\"version\": 1, \"jsonl\": ").unwrap();
        let err = Checkpoint::load(&LocalDir::new(dir.path())).unwrap_err();
        assert!(err.to_string().contains("checkpoint.json"), "{err}");
    }
}
