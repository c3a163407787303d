//! An erasure run in the store: the handoff file's new generation it
//! staged, the erased records for its rows file, and what its seal (or the
//! repair of a killed seal) does once the manifest is chained — install
//! the new generation, point the checkpoint at it, put the erasure's
//! tombstones, retention cut-off and forgotten conversations in force.
//!
//! The chain entry is the commit point, as for a compaction: before it the
//! old generation and the old Parquet files are the listed ones, and the
//! staged generation and new files of a killed erasure are removed by the
//! next run; after it the new ones are, and [`apply`] (at the seal, or by
//! the next run's repair when the seal was killed) finishes the swap.

use super::Store;
use crate::audit::{AuditRow, LogInfo};
use crate::checkpoint::{Checkpoint, TombstoneFile};
use crate::erasure::record::Erasure;
use crate::error::{Error, Result};
use crate::sinks::WrittenFile;
use crate::sinks::jsonl::{self, DigestState};
use crate::storage::Backend;

/// The handoff file's new generation, staged by an erasure run.
#[derive(Debug, Clone)]
pub struct StagedGeneration {
    /// The staged object.
    pub key: String,
    /// Its length.
    pub bytes: u64,
    /// Its records.
    pub rows: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// The SHA-256 midstate after its bytes, for the checkpoint.
    pub state: DigestState,
}

impl StagedGeneration {
    /// The generation as the manifest lists it: a segment at offset 0.
    pub fn segment(&self) -> WrittenFile {
        WrittenFile {
            path: jsonl::FILE_NAME.to_owned(),
            sha256: self.sha256.clone(),
            bytes: self.bytes,
            rows: self.rows,
            offset: Some(0),
            length: Some(self.bytes),
            stats: None,
        }
    }
}

impl Store {
    /// Whether this run has appended nothing and no earlier run left work
    /// for it to take over: what an erasure needs, so that its manifest
    /// lists nothing but what it erased and wrote.
    pub fn is_untouched(&self) -> bool {
        self.jsonl.segment().is_none()
            && self.checkpoint.parquet.files.is_empty()
            && self.uncommitted_bytes == 0
            && self.repair.parquet_rebuilt_rows == 0
    }

    /// The handoff file's committed length and whole-file SHA-256.
    pub fn handoff_state(&self) -> (u64, String) {
        (
            self.checkpoint.jsonl.committed_bytes,
            self.jsonl.file_digest(),
        )
    }

    /// Adds the erased records to the run's rows file.
    pub fn record_erased(&mut self, rows: &[AuditRow]) -> Result<()> {
        for r in rows {
            self.rows
                .push_row(&r.record_type, &r.user_id, &r.message_id)?;
        }
        Ok(())
    }

    /// Sets the handoff file's new generation, installed once the run's
    /// manifest is chained.
    pub fn set_generation(&mut self, generation: StagedGeneration) -> Result<()> {
        if !self.is_untouched() {
            return Err(Error::io(
                self.storage.describe(jsonl::FILE_NAME),
                std::io::Error::other("an erasure run must not append records"),
            ));
        }
        self.generation = Some(generation);
        Ok(())
    }
}

/// What a sealed erasure puts in force, from its manifest: the run, its
/// `erasure`, its rows file and, when the seal itself does it, the staged
/// generation's midstate.
#[derive(Debug, Clone, Copy)]
pub struct Sealing<'a> {
    /// The erasure run.
    pub run_id: &'a str,
    /// What it erased.
    pub erasure: &'a Erasure,
    /// Its rows file.
    pub rows: &'a LogInfo,
    /// The new generation's midstate (unknown to a repair, which lets the
    /// next run hash the file again).
    pub state: Option<&'a DigestState>,
}

/// Finishes a sealed erasure on `checkpoint` (not saved here): installs
/// the staged generation, points the checkpoint at it, and puts the
/// tombstones, retention cut-off and forgotten conversations in force.
/// Safe to repeat.
pub fn apply(
    storage: &dyn Backend,
    checkpoint: &mut Checkpoint,
    sealing: Sealing<'_>,
) -> Result<()> {
    let Sealing {
        run_id,
        erasure,
        rows,
        state,
    } = sealing;
    if let Some(generation) = &erasure.handoff {
        // The old bytes go with the install: every old segment in a bucket.
        storage.handoff_install(&crate::erasure::record::staged_key(run_id))?;
        let jsonl = &mut checkpoint.jsonl;
        if jsonl.committed_bytes != generation.bytes || jsonl.digest_state.as_ref() != state {
            let sends = erasure.sends_erased;
            jsonl.history_rows = jsonl
                .history_rows
                .saturating_sub(erasure.erased.saturating_sub(sends));
            jsonl.send_rows = jsonl.send_rows.saturating_sub(sends);
            jsonl.committed_bytes = generation.bytes;
            jsonl.digest_state = state.cloned();
        }
        checkpoint.parquet.messages_covered_bytes = generation.bytes;
        checkpoint.parquet.sends_covered_bytes = generation.bytes;
    }
    let tombstones = TombstoneFile {
        run_id: run_id.to_owned(),
        path: rows.path.clone(),
        sha256: rows.sha256.clone(),
        rows: rows.rows,
    };
    checkpoint.erasure.put_in_force(run_id, erasure, tombstones);
    crate::erasure::tombstones::refresh_index(storage, &mut checkpoint.erasure)
}
