//! The output folder as one transactional store: the JSONL handoff file,
//! the Parquet files, the checkpoint and the audit trail, with the commit
//! protocol that ties them together.
//!
//! How data flows through this folder: [`Store::open`] locks the output and
//! has `recover.rs` repair, step by step, whatever a killed run left; the
//! run then appends its records ([`Store::append_history`],
//! [`Store::append_send`]) and makes them durable with [`Store::commit`]
//! (this file); [`Store::seal`] (`seal.rs`) ends it with its manifest and
//! chain entry. `stamp.rs` names the run. The parts it drives ([`crate::sinks`],
//! [`crate::audit`], [`crate::checkpoint`]) each know only their own files,
//! and none calls back into the store.
//!
//! Commit order (SPEC §4.3, crash safety):
//! 1. records are appended to the JSONL, pushed to the open Parquet file and
//!    their IDs to the run's audit rows file;
//! 2. `commit` fsyncs the JSONL, then atomically replaces the checkpoint with
//!    the new committed length and the conversation states those records
//!    advance — so the checkpoint never points past durable data;
//! 3. a Parquet file is closed (fsync, published into place) and only then
//!    listed in the checkpoint, with the JSONL offset it covers;
//! 4. `seal` ends the run: last commit, audit rows file, one Delta commit
//!    per table the run changed (`tables.rs`), the run's checksum file,
//!    manifest (pinning each Delta commit by version and SHA-256), chain
//!    entry (the commit point of the run), `SHA256SUMS`, checkpoint audit
//!    pointer — each durable before the next refers to it.
//!
//! An erasure run (`generation.rs`, driven by [`crate::erasure`]) appends
//! nothing: it stages the handoff file's new generation, which its seal
//! installs once the chain entry is written, with the Parquet files it
//! rewrote as a compaction's. Every run loads the tombstones when it
//! opens, and [`Store::append_history`] drops the records they name, so
//! an erased message the API still serves is never written again.
//!
//! Opening the store repairs whatever a killed run left, so that the
//! outputs converge to what an uninterrupted run would have written: the
//! steps, in order, are the module doc of `recover.rs`.

mod generation;
mod recover;
mod seal;
mod stamp;
mod tables;

use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use generation::StagedGeneration;
pub use recover::Repair;
pub use seal::{ManifestBody, Sealed};
pub use stamp::RunStamp;
pub use tables::{RunFiles, in_part, is_in_part, locate, project};

use crate::api::Endpoint;
use crate::api::client::Reply;
use crate::audit::{self, AuditLog, ChainEntry, LogInfo, LogKind};
use crate::checkpoint::{self, Checkpoint, Conversation};
use crate::erasure::record::Erasure;
use crate::erasure::tombstones::Tombstones;
use crate::error::{Error, Result};
use crate::records::{HistoryBatch, SendRow};
use crate::sinks::WrittenFile;
use crate::sinks::jsonl::{self, JsonlSink};
use crate::sinks::parquet::{Columns, MessageColumns, ParquetSink, SendColumns};
use crate::storage::{Backend, Storage};
use recover::Recovered;

/// A commit that failed, remembered so that later commits and the seal
/// refuse with the same kind of error.
#[derive(Debug, Clone)]
struct Failed {
    conflict: bool,
    what: String,
}

impl Failed {
    fn from(e: &Error) -> Failed {
        Failed {
            conflict: matches!(e, Error::Conflict { .. }),
            what: e.to_string(),
        }
    }

    fn again(&self, storage: &Storage) -> Error {
        let path = storage.describe(checkpoint::KEY);
        if self.conflict {
            Error::Conflict { path }
        } else {
            Error::io(
                path,
                std::io::Error::other(format!(
                    "an earlier commit of this run failed ({}); the next run repairs from the last commit",
                    self.what
                )),
            )
        }
    }
}

/// The run's page log, shared with the tasks that make requests: each line
/// is written the moment its answer arrives, not when the writer gets to
/// it, so that a killed run leaves a record of every request it was
/// answered (see [`audit::repair_runs`]).
#[derive(Debug, Clone)]
pub struct PageLog(Arc<Mutex<Option<AuditLog>>>);

impl PageLog {
    /// Adds one request's line.
    pub fn push<T: Serialize>(&self, record: &T) -> Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(log) => log.push(record),
            None => Err(Error::io(
                "<page log>",
                std::io::Error::other("the run is sealed"),
            )),
        }
    }

    /// Closes the log for the manifest.
    fn finish(&self) -> Result<LogInfo> {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        log.ok_or_else(|| Error::io("<page log>", std::io::Error::other("already closed")))?
            .finish()
    }

    /// Makes the lines so far durable (at each commit).
    fn sync(&self) -> Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(log) => log.sync(),
            None => Ok(()),
        }
    }
}

/// An open output folder, locked for this run.
#[derive(Debug)]
pub struct Store {
    storage: Storage,
    _lock: Box<dyn std::fmt::Debug + Send + Sync>,
    stamp: RunStamp,
    checkpoint: Checkpoint,
    /// The last sealed run, which this one's manifest links to.
    head: Option<ChainEntry>,
    jsonl: JsonlSink,
    messages: ParquetSink<MessageColumns>,
    sends: ParquetSink<SendColumns>,
    rows: AuditLog,
    pages: PageLog,
    /// Page logs of killed runs, sealed into this run's manifest.
    recovered: Vec<audit::RecoveredLog>,
    /// Set when a commit failed: the run then stops committing.
    failed: Option<Failed>,
    /// The files a `compact` run swapped, sealed into its manifest.
    compaction: Option<audit::Compaction>,
    /// What an erasure run erased, sealed into its manifest.
    erasure: Option<Erasure>,
    /// The handoff file's new generation an erasure run staged.
    generation: Option<StagedGeneration>,
    /// Erased messages, never written again.
    tombstones: Tombstones,
    /// When the store was opened, on the monotonic clock.
    opened: std::time::Instant,
    /// Delta commits of killed runs this run undid when it opened, for its
    /// manifest.
    delta_reverted: std::collections::BTreeMap<crate::delta::TableKind, audit::DeltaRevert>,
    /// History and send rows appended since the last commit.
    uncommitted_history: u64,
    uncommitted_sends: u64,
    uncommitted_bytes: u64,
    repair: Repair,
}

impl Store {
    /// [`Store::open`] off the async runtime's threads.
    pub async fn open_async(storage: &Storage, stamp: &RunStamp) -> Result<Store> {
        let (owned, stamp) = (storage.clone(), stamp.clone());
        tokio::task::spawn_blocking(move || Store::open(&owned, &stamp))
            .await
            .map_err(|e| Error::io("<store>", std::io::Error::other(e)))?
    }

    /// Opens (creating if needed) and repairs the output root `storage` for
    /// the run `stamp`.
    pub fn open(storage: &Storage, stamp: &RunStamp) -> Result<Store> {
        let backend = storage.as_ref();
        backend.prepare()?;
        refuse_sharded(backend)?;
        let lock = backend.lock(&stamp.run_id)?;
        let recovered = recover::run(storage, stamp)?;
        let mut store = Store::start(storage, lock, recovered)?;
        store.repair.parquet_rebuilt_rows = recover::take_over_unsealed(
            backend,
            &store.checkpoint,
            &mut store.messages,
            &mut store.sends,
            &mut store.rows,
        )?;
        Ok(store)
    }

    /// The store of a run on the output `recovered` left, holding its
    /// `lock`: opens this run's Parquet files and audit logs.
    fn start(
        storage: &Storage,
        lock: Box<dyn std::fmt::Debug + Send + Sync>,
        recovered: Recovered,
    ) -> Result<Store> {
        let Recovered {
            stamp,
            checkpoint,
            head,
            jsonl,
            recovered,
            repair,
            delta_reverted,
        } = recovered;
        let (date, run_id) = (stamp.date.as_str(), stamp.run_id.as_str());
        let backend = storage.as_ref();
        // Loaded before anything is fetched: damaged tombstones stop the
        // run before an erased message could be written again.
        let tombstones = Tombstones::load(backend, &checkpoint.erasure)?;
        Ok(Store {
            storage: storage.clone(),
            _lock: lock,
            stamp: stamp.clone(),
            checkpoint,
            head,
            jsonl,
            messages: ParquetSink::new(storage, date, run_id),
            sends: ParquetSink::new(storage, date, run_id),
            rows: AuditLog::create(backend, run_id, LogKind::Rows)?,
            pages: PageLog(Arc::new(Mutex::new(Some(AuditLog::create(
                backend,
                run_id,
                LogKind::Pages,
            )?)))),
            recovered,
            failed: None,
            compaction: None,
            erasure: None,
            generation: None,
            tombstones,
            opened: std::time::Instant::now(),
            delta_reverted,
            uncommitted_history: 0,
            uncommitted_sends: 0,
            uncommitted_bytes: 0,
            repair,
        })
    }

    /// Names `dirs` as folders this run writes Parquet files into (beyond
    /// its own date's), and commits that before it writes there: if it is
    /// killed, the next run looks for its files there by name.
    pub fn claim_dirs(&mut self, dirs: &[String]) -> Result<()> {
        let run_id = self.stamp.run_id.clone();
        if let Some(claim) = self
            .checkpoint
            .unsealed
            .iter_mut()
            .flatten()
            .find(|c| c.run == run_id)
        {
            for dir in dirs {
                if !claim.dirs.contains(dir) {
                    claim.dirs.push(dir.clone());
                }
            }
        }
        self.commit()
    }

    /// Records what a `compact` run swapped, for its manifest; the files it
    /// removed go once the manifest is sealed.
    pub fn set_compaction(&mut self, compaction: audit::Compaction) {
        self.compaction = Some(compaction);
    }

    /// What this run swapped in Parquet, if anything (a compaction or an
    /// erasure).
    pub fn compaction(&self) -> Option<&audit::Compaction> {
        self.compaction.as_ref()
    }

    /// Records what an erasure run erased, for its manifest.
    pub fn set_erasure(&mut self, erasure: Erasure) {
        self.erasure = Some(erasure);
    }

    /// What opening the store repaired.
    pub fn repair(&self) -> &Repair {
        &self.repair
    }

    /// The output root.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// This run's ID.
    pub fn run_id(&self) -> &str {
        &self.stamp.run_id
    }

    /// This run's stamp.
    pub fn stamp(&self) -> &RunStamp {
        &self.stamp
    }

    /// Milliseconds since the epoch on this run's clock now (see
    /// [`RunStamp::clock`]): what its Delta commits are dated.
    pub(crate) fn clock_ms(&self) -> i64 {
        self.stamp.clock(self.opened.elapsed()).timestamp_millis()
    }

    /// The checkpoint as it will be committed next.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Mutable access for state that takes effect at the next commit
    /// (resolved recipients).
    pub fn checkpoint_mut(&mut self) -> &mut Checkpoint {
        &mut self.checkpoint
    }

    /// Appends history records: their JSONL lines to the handoff file, the
    /// rows to Parquet and their IDs to the rows file.
    pub fn append_history(&mut self, batch: &HistoryBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if !self.tombstones.is_empty() && batch.rows().any(|r| self.tombstones.erases(&r)) {
            // An erased message the API still serves is not written again.
            let mut kept = HistoryBatch::with_capacity(batch.len(), batch.lines().len());
            for row in batch.rows().filter(|r| !self.tombstones.erases(r)) {
                kept.push(&row);
            }
            return self.append_history(&kept);
        }
        let lines = batch.lines();
        self.jsonl.append(lines, batch.len() as u64)?;
        for row in batch.rows() {
            self.messages.push_ref(&row)?;
            self.rows
                .push_row("history", row.conversation_user_id, row.message_id)?;
        }
        self.uncommitted_history += batch.len() as u64;
        self.uncommitted_bytes += lines.len() as u64;
        if self.messages.is_full()
            && let Some(file) = self.messages.close()?
        {
            self.list_parquet(file);
        }
        Ok(())
    }

    /// Appends one send record (JSONL, Parquet, audit row).
    pub fn append_send(&mut self, row: &SendRow) -> Result<()> {
        let mut line = serde_json::to_vec(row)
            .map_err(|e| Error::io(self.storage.describe(jsonl::FILE_NAME), e.into()))?;
        line.push(b'\n');
        self.jsonl.append(&line, 1)?;
        self.sends.push(row)?;
        self.rows
            .push_row("send", &row.recipient_user_id, &row.message_id)?;
        self.uncommitted_sends += 1;
        self.uncommitted_bytes += line.len() as u64;
        Ok(())
    }

    /// The run's page log, for the tasks that fetch pages.
    pub fn page_log(&self) -> PageLog {
        self.pages.clone()
    }

    /// Adds a paid request other than a history page (a lookup, an upload,
    /// a DM) to the run's page log, so that its credits are accounted for
    /// even if the run is killed before it seals.
    pub fn log_request<T>(
        &mut self,
        endpoint: Endpoint,
        target: &str,
        result: &Result<Reply<T>>,
    ) -> Result<()> {
        #[derive(Serialize)]
        struct RequestRecord<'a> {
            endpoint: Endpoint,
            target: &'a str,
            status: u16,
            attempts: u32,
            credits: u64,
        }
        fn failed(e: &Error) -> (u16, u32) {
            match e {
                Error::Api(api) => (api.status, 1),
                Error::RetriesExhausted { attempts, last, .. } => (failed(last).0, *attempts),
                _ => (0, 1),
            }
        }
        let (status, attempts, credits) = match result {
            Ok(reply) => (reply.meta.status, reply.meta.attempts, endpoint.credits(0)),
            Err(e) => {
                let (status, attempts) = failed(e);
                (status, attempts, 0)
            }
        };
        self.pages.push(&RequestRecord {
            endpoint,
            target,
            status,
            attempts,
            credits,
        })
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
        if let Some(failed) = &self.failed {
            return Err(failed.again(&self.storage));
        }
        let result = self.try_commit();
        if let Err(e) = &result {
            // What was appended is not durable, and the checkpoint in
            // memory no longer matches what is: nothing more of this run
            // is committed or sealed; the next run repairs from the last
            // commit.
            self.failed = Some(Failed::from(e));
        }
        result
    }

    fn try_commit(&mut self) -> Result<()> {
        // The data first: the checkpoint must never point past durable bytes.
        let committed = self.jsonl.sync()?;
        self.checkpoint.jsonl.committed_bytes = committed;
        self.checkpoint.jsonl.digest_state = Some(self.jsonl.digest_state());
        self.checkpoint.jsonl.history_rows += self.uncommitted_history;
        self.checkpoint.jsonl.send_rows += self.uncommitted_sends;
        self.uncommitted_history = 0;
        self.uncommitted_sends = 0;
        self.uncommitted_bytes = 0;
        self.pages.sync()?;
        self.checkpoint.save(self.storage.as_ref())
    }

    /// Lists a closed Parquet file. Its table has no rows waiting any
    /// more, so every record of that table appended so far is in a listed
    /// file: the table is covered up to the JSONL's end.
    fn list_parquet(&mut self, file: WrittenFile) {
        let end = self.jsonl.len();
        let parquet = &mut self.checkpoint.parquet;
        if file
            .path
            .starts_with(&format!("parquet/{}/", SendColumns::TABLE))
        {
            parquet.sends_covered_bytes = end;
        } else {
            parquet.messages_covered_bytes = end;
        }
        parquet.files.push(file);
    }
}

/// A root split into shards is refused: each shard is an output of its
/// own, synced with `--shard K/N`.
fn refuse_sharded(storage: &dyn Backend) -> Result<()> {
    if let Some(n) = crate::shard::registered(storage)? {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} is split into {n} shards: sync each with --shard K/{n}, and keep sends in an output of their own",
                storage.location()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
