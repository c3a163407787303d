//! The output folder as one transactional store: the JSONL handoff file,
//! the Parquet files and the checkpoint, with the commit protocol that ties
//! them together.
//!
//! Commit order (SPEC §4.3, crash safety):
//! 1. records are appended to the JSONL and pushed to the open Parquet file;
//! 2. `commit` fsyncs the JSONL, then atomically replaces the checkpoint with
//!    the new committed length and the conversation states those records
//!    advance — so the checkpoint never points past durable data;
//! 3. a Parquet file is closed (fsync, rename into place) and only then
//!    listed in the checkpoint, with the JSONL offset it covers.
//!
//! Opening the store repairs whatever a killed run left: the JSONL is cut
//! back to its committed length, unlisted Parquet files are removed, and the
//! committed JSONL records that no listed Parquet file holds yet are pushed
//! into this run's Parquet file. The outputs thus converge to what an
//! uninterrupted run would have written.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, Conversation, DirLock};
use crate::error::{Error, Result};
use crate::normalize::{HistoryRow, RecordType};
use crate::sinks::jsonl::{self, JsonlSink};
use crate::sinks::parquet::{MessageColumns, ParquetSink, remove_uncommitted};
use crate::sinks::{WrittenFile, create_private_dir};

/// What opening the store had to repair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// Bytes cut from the end of the JSONL (a torn or uncommitted tail).
    pub jsonl_bytes_cut: u64,
    /// Parquet files removed (temporary or unlisted).
    pub parquet_removed: Vec<String>,
    /// Committed JSONL records re-pushed to Parquet.
    pub parquet_rebuilt_rows: u64,
}

/// An open output folder, locked for this run.
#[derive(Debug)]
pub struct Store {
    out: PathBuf,
    _lock: DirLock,
    checkpoint: Checkpoint,
    jsonl: JsonlSink,
    messages: ParquetSink<MessageColumns>,
    /// History rows appended since the last commit.
    uncommitted_history: u64,
    uncommitted_bytes: u64,
    /// Parquet files this run closed.
    parquet_written: Vec<WrittenFile>,
    repair: Repair,
}

impl Store {
    /// Opens (creating if needed) and repairs the output folder `out`.
    /// `date` is the run's partition date, `run_id` names its files.
    pub fn open(out: &Path, date: &str, run_id: &str) -> Result<Store> {
        create_private_dir(out)?;
        let lock = DirLock::acquire(out)?;
        let checkpoint = Checkpoint::load(out)?;
        let (jsonl, cut) = JsonlSink::open(
            &out.join(jsonl::FILE_NAME),
            checkpoint.jsonl.committed_bytes,
        )?;
        let listed: HashSet<String> = checkpoint
            .parquet
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        let removed = remove_uncommitted(out, &listed)?;
        let mut store = Store {
            out: out.to_owned(),
            _lock: lock,
            checkpoint,
            jsonl,
            messages: ParquetSink::new(out, date, run_id),
            uncommitted_history: 0,
            uncommitted_bytes: 0,
            parquet_written: Vec::new(),
            repair: Repair {
                jsonl_bytes_cut: cut,
                parquet_removed: removed,
                parquet_rebuilt_rows: 0,
            },
        };
        store.rebuild_parquet()?;
        Ok(store)
    }

    /// Pushes the committed JSONL records that no listed Parquet file holds
    /// into this run's Parquet file.
    fn rebuild_parquet(&mut self) -> Result<()> {
        let from = self.checkpoint.parquet.covered_bytes;
        let to = self.checkpoint.jsonl.committed_bytes;
        if from >= to {
            return Ok(());
        }
        let path = self.out.join(jsonl::FILE_NAME);
        let mut offset = from;
        let mut rebuilt = 0u64;
        let messages = &mut self.messages;
        let mut closed = Vec::new();
        jsonl::for_each_line(&path, from, to, |line| {
            offset += line.len() as u64 + 1;
            #[derive(Deserialize)]
            struct Tag {
                record_type: RecordType,
            }
            let corrupt = |what: &str| Error::Corrupt {
                path: path.clone(),
                reason: format!(
                    "committed record ending at byte {offset} is {what}: restore the file from backup"
                ),
            };
            let tag: Tag = serde_json::from_slice(line).map_err(|_| corrupt("not a record"))?;
            if tag.record_type == RecordType::History {
                let row: HistoryRow =
                    serde_json::from_slice(line).map_err(|_| corrupt("not a history record"))?;
                messages.push(&row)?;
                rebuilt += 1;
                if messages.is_full()
                    && let Some(file) = messages.close()?
                {
                    closed.push((file, offset));
                }
            }
            Ok(())
        })?;
        for (file, covered) in closed {
            self.list_parquet(file, covered);
        }
        self.repair.parquet_rebuilt_rows = rebuilt;
        Ok(())
    }

    /// What opening the store repaired.
    pub fn repair(&self) -> &Repair {
        &self.repair
    }

    /// The output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// The checkpoint as it will be committed next.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Mutable access for state that takes effect at the next commit
    /// (resolved recipients, the audit pointer).
    pub fn checkpoint_mut(&mut self) -> &mut Checkpoint {
        &mut self.checkpoint
    }

    /// Appends history records: `lines` is their JSONL text (one line per
    /// row, in the same order), `rows` the same records for Parquet.
    pub fn append_history(&mut self, lines: &[u8], rows: &[HistoryRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.jsonl.append(lines, rows.len() as u64)?;
        for row in rows {
            self.messages.push(row)?;
        }
        self.uncommitted_history += rows.len() as u64;
        self.uncommitted_bytes += lines.len() as u64;
        if self.messages.is_full()
            && let Some(file) = self.messages.close()?
        {
            // Everything appended so far is in this file or an earlier one.
            let covered = self.jsonl.len();
            self.list_parquet(file, covered);
        }
        Ok(())
    }

    /// Records a conversation's state; it takes effect at the next commit,
    /// together with the records appended before this call.
    pub fn set_conversation(&mut self, key: String, state: Conversation) {
        self.checkpoint.conversations.insert(key, state);
    }

    /// Bytes appended since the last commit.
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    /// Makes everything appended so far durable, then the checkpoint that
    /// describes it.
    pub fn commit(&mut self) -> Result<()> {
        // The data first: the checkpoint must never point past durable bytes.
        let committed = self.jsonl.sync()?;
        self.checkpoint.jsonl.committed_bytes = committed;
        self.checkpoint.jsonl.history_rows += self.uncommitted_history;
        self.uncommitted_history = 0;
        self.uncommitted_bytes = 0;
        self.checkpoint.save(&self.out)
    }

    /// Closes the open Parquet file and commits. Returns every file and
    /// segment this run wrote, for the audit manifest.
    pub fn finish(mut self) -> Result<Vec<WrittenFile>> {
        if let Some(file) = self.messages.close()? {
            let covered = self.jsonl.len();
            self.list_parquet(file, covered);
        }
        self.commit()?;
        let mut files = Vec::new();
        files.extend(self.jsonl.segment());
        files.extend(self.parquet_written);
        Ok(files)
    }

    fn list_parquet(&mut self, file: WrittenFile, covered: u64) {
        self.checkpoint.parquet.files.push(file.clone());
        self.checkpoint.parquet.covered_bytes = covered;
        self.parquet_written.push(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::RecordType;

    fn row(i: u64) -> HistoryRow {
        HistoryRow {
            record_type: RecordType::History,
            message_id: (1_900_000_000_000_000_000u64 + i).to_string(),
            conversation_user_id: "42".into(),
            account: "acme".into(),
            sender_id: "42".into(),
            receiver_id: "7".into(),
            created_at: None,
            message_text: Some(format!("text {i}")),
            media_url: None,
        }
    }

    fn lines(rows: &[HistoryRow]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut out, r).unwrap();
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn uncommitted_appends_vanish_and_committed_ones_reach_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        // Run 1 commits 3 rows, appends 2 more and dies before committing
        // or closing its Parquet file.
        let mut store = Store::open(out, "2026-11-26", "run1").unwrap();
        let first: Vec<_> = (0..3).map(row).collect();
        store.append_history(&lines(&first), &first).unwrap();
        store.commit().unwrap();
        let lost: Vec<_> = (3..5).map(row).collect();
        store.append_history(&lines(&lost), &lost).unwrap();
        drop(store);

        // Run 2 repairs: cuts the JSONL back, rebuilds Parquet for run 1's rows.
        let store = Store::open(out, "2026-11-26", "run2").unwrap();
        let repair = store.repair().clone();
        assert_eq!(repair.jsonl_bytes_cut, lines(&lost).len() as u64);
        assert_eq!(repair.parquet_rebuilt_rows, 3);
        // Run 1 never reached its first Parquet batch: nothing to remove.
        assert!(repair.parquet_removed.is_empty(), "{repair:?}");
        let files = store.finish().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, 3);
        assert_eq!(
            std::fs::read(out.join(jsonl::FILE_NAME)).unwrap(),
            lines(&first)
        );
        let checkpoint = Checkpoint::load(out).unwrap();
        assert_eq!(
            checkpoint.parquet.covered_bytes,
            checkpoint.jsonl.committed_bytes
        );
        assert_eq!(checkpoint.jsonl.history_rows, 3);
    }

    #[test]
    fn a_second_store_on_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), "2026-11-26", "a").unwrap();
        assert!(matches!(
            Store::open(dir.path(), "2026-11-26", "b"),
            Err(Error::Locked { .. })
        ));
    }
}
