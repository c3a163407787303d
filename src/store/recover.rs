//! The repair of a killed run, in the order it is done: what opening the
//! store does between taking the output's lock and handing the run its
//! store.
//!
//! Opening the store repairs whatever a killed run left: the JSONL is cut
//! back to its committed length, the killed run's uncommitted Parquet files
//! and unchained audit files are removed — found by the names it gives them,
//! in the folders the checkpoint says it claimed, so that no folder growing
//! with the history is listed — and committed records that no listed
//! Parquet file or no manifest covers yet are taken into this run's Parquet
//! file and manifest. The outputs thus converge to what an uninterrupted run
//! would have written, and every committed byte ends up in exactly one
//! manifest. What a run reads and writes here depends on what it does and on
//! the number of conversations, not on how many runs came before.
//!
//! The steps, in order ([`run`] does 1 to 11; step 12 needs this run's own
//! files, which [`Store::open`] opens in between):
//! 1. load the checkpoint and sweep the temporaries a killed write left
//!    (of the handoff file, `SHA256SUMS` and the checkpoint);
//! 2. read the chain's tail and check it against the checkpoint: a folder
//!    whose checkpoint was removed while it holds data is refused, and so is
//!    a chain that lost runs the checkpoint knows of;
//! 3. claim the output: commit the checkpoint naming this run (under a run
//!    ID no other run used) and the folders it writes Parquet files into;
//! 4. cut a torn last line of the chain;
//! 5. undo the Delta commits of the killed runs (runs killed between their
//!    commit and their chain entry): in each table, the commits at the end
//!    of the log that name such a run are followed by one commit, named
//!    after this run, that restores the snapshot before them, so the latest
//!    snapshot is again what the chain holds. Done before anything is
//!    removed: those commits' files are still there, and no snapshot a
//!    reader opens from now on names a file step 6 removes (this run's
//!    manifest pins both, see `tables.rs`);
//! 6. remove the killed runs' Parquet files but the committed ones, by the
//!    names they give them in the folders they claimed, and a killed
//!    erasure's staged handoff generation, by its name;
//! 7. repair the killed runs' audit files: manifests, rows files and
//!    checksum files go, page logs are kept, renamed after this run, for its
//!    manifest (a checkpoint that names no runs, format 1 or rebuilt, is
//!    repaired by listing instead: audit files first, then Parquet files);
//! 8. finish a compaction (or an erasure's Parquet rewrite) that sealed
//!    but was killed before its checkpoint followed: the files it merged
//!    away go;
//! 9. finish an erasure that sealed but was killed before its checkpoint
//!    followed: its staged handoff generation replaces the old one (every
//!    old byte and segment deleted) if it did not yet, the checkpoint
//!    points at the new generation, and its tombstones, retention cut-off
//!    and forgotten conversations come into force ([`generation::apply`]);
//!    a killed erasure that never sealed left a staged generation, which
//!    step 6 removed with its other files, so that nothing of it is
//!    erased and its rerun starts over;
//! 10. move the checkpoint's audit pointer to the chain's last run, and
//!     drop from the checkpoint the Parquet files its manifests list;
//! 11. cut the JSONL back to its committed length;
//! 12. take over the committed records that no listed Parquet file or no
//!     manifest covers yet into this run's Parquet files and rows file
//!     ([`take_over_unsealed`]).
//!
//! The parts are asked for their own files through small, named calls
//! ([`audit::repair_runs`], [`parquet::remove_run_files`],
//! [`JsonlSink::open`], ...): none of them knows this order, and none calls
//! back into the store.
//!
//! [`Store::open`]: super::Store::open

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::generation::{self, Sealing};
use super::stamp::RunStamp;
use super::tables;
use crate::audit::{self, AuditLog, AuditRepair, ChainEntry, DeltaRevert, Manifest, RecoveredLog};
use crate::checkpoint::{self, AuditPointer, Checkpoint, Claim};
use crate::delta::TableKind;
use crate::erasure::record::staged_key;
use crate::error::{Error, Result};
use crate::records::{HistoryRow, RecordType, SendRow};
use crate::sinks::jsonl::{self, JsonlSink};
use crate::sinks::parquet::{self, MessageColumns, ParquetSink, SendColumns};
use crate::storage::{Backend, Storage};

/// What opening the store had to repair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Repair {
    /// Bytes cut from the end of the JSONL (a torn or uncommitted tail).
    pub jsonl_bytes_cut: u64,
    /// Parquet files removed (temporary or unlisted).
    pub parquet_removed: Vec<String>,
    /// Committed JSONL records re-pushed to Parquet.
    pub parquet_rebuilt_rows: u64,
    /// Audit files removed (manifests no chain entry names).
    pub audit_removed: Vec<String>,
    /// Temporary files of a killed run removed (checkpoint, `SHA256SUMS`).
    pub temporaries_removed: Vec<String>,
}

/// The repaired output, as steps 1 to 10 leave it for the run.
#[derive(Debug)]
pub(super) struct Recovered {
    /// The run's stamp, with a new random part if its ID was taken.
    pub stamp: RunStamp,
    /// The checkpoint, claimed by this run and following the chain.
    pub checkpoint: Checkpoint,
    /// The last sealed run, which this one's manifest links to.
    pub head: Option<ChainEntry>,
    /// The handoff file, cut back to its committed length.
    pub jsonl: JsonlSink,
    /// Page logs of killed runs, for this run's manifest.
    pub recovered: Vec<RecoveredLog>,
    /// What was repaired (all but the rows step 11 rebuilds).
    pub repair: Repair,
    /// The Delta commits step 5 undid, by table, for this run's manifest.
    pub delta_reverted: BTreeMap<TableKind, DeltaRevert>,
}

/// Steps 1 to 11 of the repair, for the run `stamp`, on an output this
/// process holds the lock of.
pub(super) fn run(shared: &Storage, stamp: &RunStamp) -> Result<Recovered> {
    let storage = shared.as_ref();
    let mut checkpoint = Checkpoint::load(storage)?;
    let temporaries_removed =
        storage.sweep_temporaries(&[jsonl::FILE_NAME, audit::SUMS, checkpoint::FILE_NAME])?;
    // Only the chain's end is read: the runs since the checkpoint's.
    let (tail, torn_at) = audit::read_chain_tail(storage, checkpoint.audit.runs)?;
    check_chain(storage, &checkpoint, &tail)?;
    let stamp = unused_stamp(storage, &tail, stamp)?;
    let killed = claim(storage, &mut checkpoint, &tail, &stamp)?;
    audit::cut_torn_chain(storage, torn_at)?;
    let delta_reverted = revert_delta(shared, killed.as_deref(), &stamp)?;
    let (audit_repair, parquet_removed) =
        remove_killed_runs(storage, &checkpoint, killed, &stamp.run_id)?;
    let (pointer, last) = pointer_from_chain(storage, tail.last())?;
    let ahead = pointer.runs > checkpoint.audit.runs;
    finish_compaction(storage, ahead, last.as_ref())?;
    finish_erasure(storage, &mut checkpoint, ahead, last.as_ref())?;
    follow_chain(&mut checkpoint, pointer);
    let (jsonl, jsonl_bytes_cut) = cut_jsonl(storage, &checkpoint)?;
    Ok(Recovered {
        stamp,
        checkpoint,
        head: tail.last().cloned(),
        jsonl,
        recovered: audit_repair.recovered,
        repair: Repair {
            jsonl_bytes_cut,
            parquet_removed,
            parquet_rebuilt_rows: 0,
            audit_removed: audit_repair.removed,
            temporaries_removed,
        },
        delta_reverted,
    })
}

/// Step 5: undoes, in each Delta table, the commits of the `killed` runs
/// (or, when the checkpoint names none, of every run the chain does not
/// hold), naming the run `stamp` and dated on its clock.
fn revert_delta(
    storage: &Storage,
    killed: Option<&[Claim]>,
    stamp: &RunStamp,
) -> Result<BTreeMap<TableKind, DeltaRevert>> {
    let run_id = stamp.run_id.as_str();
    let timestamp = stamp.clock(std::time::Duration::ZERO).timestamp_millis();
    // Only runs known to have been killed count: a commit of a run sealed
    // long ago (which the chain's tail, read from the checkpoint on, may
    // not hold) ends the walk back through the log.
    match killed {
        // No run was killed: nothing to look for (a run that sealed has
        // its commits in the chain).
        Some([]) => Ok(BTreeMap::new()),
        Some(claims) => {
            let runs: HashSet<&str> = claims.iter().map(|c| c.run.as_str()).collect();
            tables::revert_killed(storage, &|run| runs.contains(run), run_id, timestamp)
        }
        None => {
            let (chain, _) = audit::read_chain(storage.as_ref())?;
            let sealed: HashSet<&str> = chain.iter().map(|e| e.run_id.as_str()).collect();
            tables::revert_killed(
                storage,
                &|run| run != run_id && !sealed.contains(run),
                run_id,
                timestamp,
            )
        }
    }
}

/// Step 2: refuses an output whose checkpoint was removed while it holds
/// data, and a chain `tail` that does not hold what the checkpoint knows.
fn check_chain(storage: &dyn Backend, checkpoint: &Checkpoint, tail: &[ChainEntry]) -> Result<()> {
    if checkpoint.read_as.is_none() {
        refuse_data_without_checkpoint(storage, tail.len())?;
    }
    // The chain is the durable record of sealed runs: a run killed after
    // appending to it but before its checkpoint is believed from it. It
    // may be ahead of the checkpoint, never behind: a chain that lost
    // runs the checkpoint knows of was truncated or replaced, and
    // repairing or building on it would bury that. Checked before the
    // repair, which removes files of runs the chain does not name.
    let runs = checkpoint.audit.runs;
    let known = checkpoint.audit.last_digest.as_deref();
    let last_seq = tail.last().map_or(0, |e| e.seq);
    let holds_known = known.is_none_or(|d| tail.iter().any(|e| e.seq == runs && e.sha256 == d));
    if last_seq < runs || !holds_known {
        return Err(Error::Corrupt {
            path: storage.describe(audit::CHAIN),
            reason: format!(
                "the audit chain has {last_seq} runs but the checkpoint records {runs}, ending with a manifest the chain does not hold: restore audit/ from backup"
            ),
        });
    }
    Ok(())
}

/// A checkpoint that is missing while the root holds records, Parquet
/// files or sealed runs was removed (an operator "resetting" the job):
/// starting over would cut the JSONL to nothing and drop the Parquet files,
/// losing every message the API no longer serves. Refused instead.
fn refuse_data_without_checkpoint(storage: &dyn Backend, sealed: usize) -> Result<()> {
    let jsonl_bytes = storage.handoff_len()?;
    let parquet = parquet::any_written(storage)?;
    if jsonl_bytes == 0 && !parquet && sealed == 0 {
        return Ok(());
    }
    Err(Error::Corrupt {
        path: storage.describe(checkpoint::KEY),
        reason: format!(
            "missing, but the folder holds data ({jsonl_bytes} bytes in {}, {}, {}): nothing was changed. Run `xquik-dm rebuild --out {}` to rebuild the checkpoint from what is there, or restore state/ from backup",
            jsonl::FILE_NAME,
            if parquet {
                "Parquet files"
            } else {
                "no Parquet files"
            },
            if sealed > 0 {
                "sealed runs"
            } else {
                "no sealed runs"
            },
            storage.location()
        ),
    })
}

/// Step 3, first half: `stamp`, or a copy with a new random part if its run
/// ID is taken in `storage` (a sealed run, or a manifest): a run never
/// writes over another run's files.
fn unused_stamp(storage: &dyn Backend, chain: &[ChainEntry], stamp: &RunStamp) -> Result<RunStamp> {
    let mut stamp = stamp.clone();
    loop {
        let id = stamp.run_id.as_str();
        let manifest = format!("{}/{id}.manifest.json", audit::RUNS_DIR);
        if !chain.iter().any(|e| e.run_id == id) && storage.size(&manifest)?.is_none() {
            return Ok(stamp);
        }
        stamp = stamp.with_new_suffix();
    }
}

/// Step 3: commits `checkpoint` naming the run `stamp` and the folders of
/// its date. Returns the runs claimed before it and never sealed (in
/// `tail`): the killed runs to clean up after; `None` when the checkpoint
/// names no runs (format 1, or rebuilt).
fn claim(
    storage: &dyn Backend,
    checkpoint: &mut Checkpoint,
    tail: &[ChainEntry],
    stamp: &RunStamp,
) -> Result<Option<Vec<Claim>>> {
    // The run claims the output before it repairs anything: it commits
    // the checkpoint it read, naming this run, by compare-and-swap. A run
    // that got past the lock and committed since loses nothing to this
    // run's repair (the claim fails instead), and any run still
    // writing can no longer commit. In a fresh folder this also marks
    // that a missing checkpoint from now on means it was removed. The
    // runs claimed before and never sealed stay named until this one
    // seals: a repair killed half way is taken up again.
    let (date, run_id) = (stamp.date.as_str(), stamp.run_id.as_str());
    let sealed = |run: &str| tail.iter().any(|e| e.run_id == run);
    let earlier = checkpoint.unsealed.clone();
    let mut claims: Vec<Claim> = earlier
        .iter()
        .flatten()
        .filter(|c| !sealed(&c.run))
        .cloned()
        .collect();
    claims.push(Claim {
        run: run_id.to_owned(),
        dirs: vec![
            parquet::partition::<MessageColumns>(date),
            parquet::partition::<SendColumns>(date),
        ],
    });
    checkpoint.run = Some(run_id.to_owned());
    checkpoint.unsealed = Some(claims.clone());
    checkpoint.save(storage)?;
    Ok(earlier.map(|_| claims.into_iter().filter(|c| c.run != run_id).collect()))
}

/// Steps 6 and 7: removes the files of the `killed` runs (or, when the
/// checkpoint names none, of every run the chain does not hold), keeping
/// the committed Parquet files and the page logs, which `run_id` takes
/// over. Returns the audit repair and the Parquet files removed.
fn remove_killed_runs(
    storage: &dyn Backend,
    checkpoint: &Checkpoint,
    killed: Option<Vec<Claim>>,
    run_id: &str,
) -> Result<(AuditRepair, Vec<String>)> {
    // Committed Parquet files stay; every other file of an unsealed run
    // goes (it is rebuilt from the committed JSONL).
    let committed: HashSet<String> = checkpoint
        .parquet
        .files
        .iter()
        .map(|f| f.path.clone())
        .collect();
    match killed {
        Some(killed) => {
            let mut removed = Vec::new();
            for claim in &killed {
                removed.extend(parquet::remove_run_files(storage, claim, &committed)?);
                // A killed erasure's new handoff generation, never installed.
                let staged = staged_key(&claim.run);
                if storage.size(&staged)?.is_some() {
                    storage.delete(&staged)?;
                    removed.push(staged);
                }
            }
            let runs: Vec<String> = killed.into_iter().map(|c| c.run).collect();
            Ok((audit::repair_runs(storage, &runs, run_id)?, removed))
        }
        // A checkpoint that names no runs (format 1, or rebuilt): the
        // folders are listed, once, and a file is kept when the
        // checkpoint or any sealed manifest lists it.
        None => {
            let (chain, _) = audit::read_chain(storage)?;
            let mut keep = committed;
            keep.extend(
                audit::listed_parquet(storage, &chain)?
                    .into_iter()
                    .map(|f| f.path),
            );
            Ok((
                audit::repair_all(storage, run_id)?,
                parquet::remove_uncommitted(storage, &keep)?,
            ))
        }
    }
}

/// The audit pointer as the chain's last entry says it stands, and that
/// run's manifest.
fn pointer_from_chain(
    storage: &dyn Backend,
    last: Option<&ChainEntry>,
) -> Result<(AuditPointer, Option<Manifest>)> {
    let Some(last) = last else {
        return Ok((AuditPointer::default(), None));
    };
    let (manifest, _) = audit::read_manifest(storage, &last.manifest)?;
    let pointer = AuditPointer {
        runs: last.seq,
        last_manifest: Some(last.manifest.clone()),
        last_digest: Some(last.sha256.clone()),
        coverage: manifest.coverage,
    };
    Ok((pointer, Some(manifest)))
}

/// Step 8: finishes the compaction of the chain's `last` manifest when the
/// chain is `ahead` of the checkpoint.
fn finish_compaction(storage: &dyn Backend, ahead: bool, last: Option<&Manifest>) -> Result<()> {
    // A compaction (or an erasure's Parquet rewrite) sealed but killed
    // before its checkpoint followed may have left files it merged away
    // (it removes them in between).
    if ahead && let Some(compaction) = last.and_then(|m| m.compaction.as_ref()) {
        audit::finish_compaction(storage, compaction)?;
    }
    Ok(())
}

/// Step 9: finishes the erasure of the chain's `last` manifest when the
/// chain is `ahead` of `checkpoint`: its new handoff generation is
/// installed (the old bytes deleted, every old segment in a bucket) if it
/// was not yet, the checkpoint points at it, and its tombstones, retention
/// cut-off and forgotten conversations come into force.
fn finish_erasure(
    storage: &dyn Backend,
    checkpoint: &mut Checkpoint,
    ahead: bool,
    last: Option<&Manifest>,
) -> Result<()> {
    let Some(manifest) = last.filter(|_| ahead) else {
        return Ok(());
    };
    let Some(erasure) = &manifest.erasure else {
        return Ok(());
    };
    let sealing = Sealing {
        run_id: &manifest.run_id,
        erasure,
        rows: &manifest.audit_rows,
        state: None,
    };
    generation::apply(storage, checkpoint, sealing)
}

/// Step 10: the checkpoint's audit pointer becomes `pointer`, and the
/// Parquet files the sealed manifests list leave the checkpoint.
fn follow_chain(checkpoint: &mut Checkpoint, pointer: AuditPointer) {
    checkpoint.audit = pointer;
    // Files a sealed run's manifest lists leave the checkpoint (those of
    // a run that sealed without committing its checkpoint, too).
    let parquet = &mut checkpoint.parquet;
    let listed = checkpoint.audit.coverage.parquet_files;
    let drop = listed.saturating_sub(parquet.listed_before) as usize;
    parquet.files.drain(..drop.min(parquet.files.len()));
    parquet.listed_before = parquet.listed_before.max(listed);
}

/// Step 11: opens the handoff file cut back to the committed length
/// `checkpoint` records, its segment starting where the sealed manifests'
/// coverage ends. Returns the sink and the bytes cut.
fn cut_jsonl(storage: &dyn Backend, checkpoint: &Checkpoint) -> Result<(JsonlSink, u64)> {
    let coverage = checkpoint.audit.coverage;
    JsonlSink::open(
        storage,
        checkpoint.jsonl.committed_bytes,
        coverage.jsonl_bytes,
        checkpoint.jsonl.digest_state.as_ref(),
    )
}

/// Step 12: takes the committed records that an earlier, killed run left
/// without Parquet or without a manifest into this run: Parquet rows (into
/// `messages` and `sends`) for those past their table's covered offset,
/// audit rows (into `rows`) for those past the audit coverage. Returns the
/// number of records re-pushed to Parquet.
pub(super) fn take_over_unsealed(
    storage: &dyn Backend,
    checkpoint: &Checkpoint,
    messages: &mut ParquetSink<MessageColumns>,
    sends: &mut ParquetSink<SendColumns>,
    rows: &mut AuditLog,
) -> Result<u64> {
    let committed = checkpoint.jsonl.committed_bytes;
    let messages_from = checkpoint.parquet.messages_covered_bytes;
    let sends_from = checkpoint.parquet.sends_covered_bytes;
    let audit_from = checkpoint.audit.coverage.jsonl_bytes;
    let from = messages_from.min(sends_from).min(audit_from);
    if from >= committed {
        return Ok(0);
    }
    let path = storage.describe(jsonl::FILE_NAME);
    let mut offset = from;
    let mut rebuilt = 0u64;
    // No file is rolled over here: the open files close at the run's
    // next roll point or when it is sealed, covering all of this.
    jsonl::for_each_line(storage, from, committed, |line| {
        let start = offset;
        offset += line.len() as u64 + 1;
        let corrupt = |what: &str| Error::Corrupt {
            path: path.clone(),
            reason: format!(
                "committed record at byte {start} is {what}: restore the file from backup"
            ),
        };
        let record: Record = serde_json::from_slice(line).map_err(|_| corrupt("not a record"))?;
        if start >= audit_from {
            rows.push_row(record.tag(), record.user_id(), &record.message_id)?;
        }
        match record.record_type {
            RecordType::History if start >= messages_from => {
                let row: HistoryRow =
                    serde_json::from_slice(line).map_err(|_| corrupt("not a history record"))?;
                messages.push(&row)?;
                rebuilt += 1;
            }
            RecordType::Send if start >= sends_from => {
                let row: SendRow =
                    serde_json::from_slice(line).map_err(|_| corrupt("not a send record"))?;
                sends.push(&row)?;
                rebuilt += 1;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(rebuilt)
}

/// The fields of a JSONL record that every record type has, or that tell
/// where it belongs.
#[derive(Debug, Deserialize)]
struct Record {
    record_type: RecordType,
    message_id: String,
    #[serde(default)]
    conversation_user_id: Option<String>,
    #[serde(default)]
    recipient_user_id: Option<String>,
}

impl Record {
    fn tag(&self) -> &'static str {
        match self.record_type {
            RecordType::History => "history",
            RecordType::Send => "send",
        }
    }

    fn user_id(&self) -> &str {
        self.conversation_user_id
            .as_deref()
            .or(self.recipient_user_id.as_deref())
            .unwrap_or_default()
    }
}
