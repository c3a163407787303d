//! `xquik-dm rebuild --out DIR`: rebuilds a lost `state/checkpoint.json`
//! from what the folder still holds, so that a job whose state was removed
//! continues without refetching (and paying for) its history, and without
//! losing the messages the API no longer serves.
//!
//! The JSONL holds every committed record, so it gives back the committed
//! length, each conversation's block of written message IDs and the sends
//! already recorded. The audit chain, when it is still there, gives back
//! which Parquet files are committed and how far the manifests cover the
//! JSONL; without it, the next sync rebuilds the Parquet data from the JSONL
//! and seals every record into its manifest. The erasures the chain holds
//! stay in force (tombstones, forgotten conversations, the retention
//! cut-off: [`crate::erasure::state_of`]). Nothing is deleted: Parquet
//! files no manifest lists are moved to `recovered/<time>/` for the
//! operator to inspect, never left where a glob would read them twice.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use serde::Serialize;

use crate::audit::{self, ChainEntry};
use crate::checkpoint::{
    self, AuditPointer, Backfill, Checkpoint, Conversation, ErasureState, SendState,
    conversation_key,
};
use crate::dedupe::Block;
use crate::erasure::tombstones;
use crate::error::{Error, Result};
use crate::records::{HistoryRow, RecordType, SendRow};
use crate::sinks::WrittenFile;
use crate::sinks::jsonl;
use crate::sinks::parquet::{any_written, remove_uncommitted};
use crate::storage::{Backend, Location};

/// Key prefix of the sends a rebuild takes from the JSONL: their original
/// idempotency keys are not in the records, so they are known by message ID
/// (and `send` will not record the same DM twice).
pub const RECOVERED_SEND_PREFIX: &str = "recovered/";

/// What `rebuild` found and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The output folder or bucket.
    pub out: Location,
    /// JSONL bytes the checkpoint now commits.
    pub jsonl_bytes: u64,
    /// Bytes after the last complete record (a torn tail; the next sync
    /// cuts it, as after any interrupted run).
    pub torn_tail_bytes: u64,
    /// History records found.
    pub history_rows: u64,
    /// Send records found.
    pub send_rows: u64,
    /// Conversations restored.
    pub conversations: usize,
    /// Sealed runs in the audit chain (0: the chain is gone too).
    pub runs: u64,
    /// Parquet files the chain lists, kept.
    pub parquet_kept: usize,
    /// Parquet files no manifest lists, moved under `recovered/`.
    pub parquet_moved: Vec<String>,
}

impl RebuildReport {
    /// Always 0: a rebuild that cannot finish fails with an error.
    pub fn exit_code(&self) -> u8 {
        0
    }
}

impl std::fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rebuilt {}/{} from {} ({} bytes: {} history and {} send records, {} conversations)",
            self.out,
            checkpoint::KEY,
            jsonl::FILE_NAME,
            self.jsonl_bytes,
            self.history_rows,
            self.send_rows,
            self.conversations
        )?;
        if self.runs > 0 {
            writeln!(
                f,
                "  audit chain: {} sealed runs, {} Parquet files kept",
                self.runs, self.parquet_kept
            )?;
        } else {
            writeln!(
                f,
                "  audit chain: none; the next sync rewrites the Parquet data from the JSONL and seals every record into its manifest"
            )?;
        }
        if !self.parquet_moved.is_empty() {
            writeln!(
                f,
                "  {} Parquet files no manifest lists were moved under recovered/ (the JSONL holds their records)",
                self.parquet_moved.len()
            )?;
        }
        if self.torn_tail_bytes > 0 {
            writeln!(
                f,
                "  {} bytes after the last complete record are a torn tail; the next sync cuts them",
                self.torn_tail_bytes
            )?;
        }
        writeln!(
            f,
            "  every conversation is taken as synced from its oldest to its newest message on file; the next sync fetches only what is newer"
        )
    }
}

/// Rebuilds the missing checkpoint of `out`.
pub fn run(out: &Location) -> Result<RebuildReport> {
    out.require_existing("--out")?;
    let storage = crate::shard::open(out)?;
    let storage = storage.as_ref();
    let _lock = storage.lock("rebuild")?;
    if Checkpoint::exists(storage)? {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} exists: rebuild only replaces a missing checkpoint (move a damaged one away first)",
                storage.describe(checkpoint::KEY).display()
            ),
        ));
    }
    let (chain, _) = audit::read_chain(storage)?;
    let len = storage.handoff_len()?;
    if len == 0 && chain.is_empty() && !any_written(storage)? {
        return Err(Error::invalid(
            "--out",
            format!("{out} holds no xquik-dm output: nothing to rebuild"),
        ));
    }
    let sealed = sealed_outputs(storage, &chain)?;
    let mut checkpoint = read_records(storage, len)?;
    let committed = checkpoint.jsonl.committed_bytes;
    if sealed.pointer.coverage.jsonl_bytes > committed {
        return Err(Error::Corrupt {
            path: storage.describe(jsonl::FILE_NAME),
            reason: format!(
                "the audit chain covers {} bytes but the file holds {committed} bytes of complete records: restore it from backup",
                sealed.pointer.coverage.jsonl_bytes
            ),
        });
    }
    let parquet_moved = move_unlisted_parquet(storage, &sealed.parquet, chain.is_empty())?;
    // Every committed Parquet file covers what the last sealed run
    // covered; records after that are written to Parquet by the next run.
    checkpoint.parquet.messages_covered_bytes = sealed.pointer.coverage.jsonl_bytes;
    checkpoint.parquet.sends_covered_bytes = sealed.pointer.coverage.jsonl_bytes;
    checkpoint.parquet.listed_before = sealed.pointer.coverage.parquet_files;
    checkpoint.audit = sealed.pointer;
    // Erased messages stay erased: the tombstones, forgotten conversations
    // and retention cut-off are what the erasure runs say.
    checkpoint.erasure = sealed.erasure;
    tombstones::refresh_index(storage, &mut checkpoint.erasure)?;
    // Which runs were killed is not known: the next run lists the audit
    // folder once to clean up after them.
    checkpoint.unsealed = None;
    checkpoint.save(storage)?;
    tombstones::remove_stale_indexes(storage, &checkpoint.erasure)?;
    Ok(RebuildReport {
        out: out.clone(),
        jsonl_bytes: committed,
        torn_tail_bytes: len - committed,
        history_rows: checkpoint.jsonl.history_rows,
        send_rows: checkpoint.jsonl.send_rows,
        conversations: checkpoint.conversations.len(),
        runs: checkpoint.audit.runs,
        parquet_kept: sealed.parquet.len(),
        parquet_moved,
    })
}

/// What the sealed runs committed, from their manifests.
struct Sealed {
    pointer: AuditPointer,
    parquet: Vec<WrittenFile>,
    erasure: ErasureState,
}

fn sealed_outputs(storage: &dyn Backend, chain: &[ChainEntry]) -> Result<Sealed> {
    let mut pointer = AuditPointer::default();
    if let Some(last) = chain.last() {
        let (manifest, _) = audit::read_manifest(storage, &last.manifest)?;
        pointer = AuditPointer {
            runs: last.seq,
            last_manifest: Some(last.manifest.clone()),
            last_digest: Some(last.sha256.clone()),
            coverage: manifest.coverage,
        };
    }
    let parquet = audit::listed_parquet(storage, chain)?;
    let mut erasures = Vec::new();
    for entry in chain {
        let (manifest, _) = audit::read_manifest(storage, &entry.manifest)?;
        if manifest.erasure.is_some() {
            erasures.push(manifest);
        }
    }
    Ok(Sealed {
        pointer,
        parquet,
        erasure: crate::erasure::state_of(&erasures),
    })
}

/// A checkpoint with the JSONL part, the conversations and the recorded
/// sends that the complete records of the JSONL give.
fn read_records(storage: &dyn Backend, len: u64) -> Result<Checkpoint> {
    let mut checkpoint = Checkpoint::empty();
    let path = storage.describe(jsonl::FILE_NAME);
    let mut offset = 0u64;
    jsonl::for_each_line(storage, 0, len, |line| {
        let start = offset;
        let end = start + line.len() as u64 + 1;
        if end > len {
            // The last line has no newline: a torn tail, not a record.
            return Ok(());
        }
        let corrupt = || Error::Corrupt {
            path: path.clone(),
            reason: format!(
                "the line at byte {start} is not an xquik-dm record: restore the file from backup"
            ),
        };
        let kind: RecordKind = serde_json::from_slice(line).map_err(|_| corrupt())?;
        match kind.record_type {
            RecordType::History => {
                let row: HistoryRow = serde_json::from_slice(line).map_err(|_| corrupt())?;
                add_history(&mut checkpoint, &row);
                checkpoint.jsonl.history_rows += 1;
            }
            RecordType::Send => {
                let row: SendRow = serde_json::from_slice(line).map_err(|_| corrupt())?;
                add_send(&mut checkpoint, row);
                checkpoint.jsonl.send_rows += 1;
            }
        }
        offset = end;
        Ok(())
    })?;
    checkpoint.jsonl.committed_bytes = offset;
    Ok(checkpoint)
}

#[derive(serde::Deserialize)]
struct RecordKind {
    record_type: RecordType,
}

/// Widens the conversation's block of written IDs by one record.
fn add_history(checkpoint: &mut Checkpoint, row: &HistoryRow) {
    let key = conversation_key(&row.account, &row.conversation_user_id);
    let state = checkpoint
        .conversations
        .entry(key)
        .or_insert_with(|| Conversation {
            account: row.account.clone(),
            user_id: row.conversation_user_id.clone(),
            backfill: Backfill {
                cursor: None,
                done: true,
            },
            status: Some("rebuilt".into()),
            ..Conversation::default()
        });
    Block::widen(&mut state.written, &row.message_id);
    state.messages_written += 1;
}

/// Records a send as sent and recorded, known by its message ID.
fn add_send(checkpoint: &mut Checkpoint, row: SendRow) {
    let state = SendState {
        account: row.sender_account,
        recipient_user_id: row.recipient_user_id,
        status: "sent".into(),
        media_id: row.media_id,
        message_id: Some(row.message_id.clone()),
        send_status: Some(row.send_status),
        sent_at: crate::timestamp::format_micros(row.sent_at),
        recorded: true,
        ..SendState::default()
    };
    checkpoint
        .sends
        .insert(format!("{RECOVERED_SEND_PREFIX}{}", row.message_id), state);
}

/// Moves the Parquet files no sealed manifest lists out of `parquet/`, to
/// `recovered/<time>/parquet/...`, and, when no sealed run is left
/// (`unchained`), the tables' Delta logs with them: no manifest accounts
/// for their commits any more, and they name the files moved; the next
/// run starts the tables afresh. A shard's tables are shared: their logs
/// stay, and until the shard's next run reverts its commits, its folder of
/// the table names the files moved. Returns the data files' former keys.
fn move_unlisted_parquet(
    storage: &dyn Backend,
    listed: &[WrittenFile],
    unchained: bool,
) -> Result<Vec<String>> {
    let listed: std::collections::HashSet<String> = listed.iter().map(|f| f.path.clone()).collect();
    let unlisted = crate::sinks::parquet::unlisted(storage, &listed)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    for key in &unlisted {
        storage.rename(key, &format!("recovered/{stamp}/{key}"))?;
    }
    // A shard's tables are shared with the other shards: their logs stay,
    // and the next run's repair reverts this shard's commits that no
    // sealed run accounts for any more (which, with no checkpoint naming
    // the killed runs, is every commit of this shard's no chain holds).
    if unchained && storage.table_part().is_none() {
        for kind in crate::delta::TableKind::ALL {
            for object in storage.list(&format!("{}/_delta_log/", kind.root()))? {
                let key = object.key;
                storage.rename(&key, &format!("recovered/{stamp}/{key}"))?;
            }
        }
    }
    // Temporaries of a killed run go the usual way.
    remove_uncommitted(storage, &listed)?;
    Ok(unlisted)
}
