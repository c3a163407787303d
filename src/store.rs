//! The output folder as one transactional store: the JSONL handoff file,
//! the Parquet files, the checkpoint and the audit trail, with the commit
//! protocol that ties them together.
//!
//! Commit order (SPEC §4.3, crash safety):
//! 1. records are appended to the JSONL, pushed to the open Parquet file and
//!    their IDs to the run's audit rows file;
//! 2. `commit` fsyncs the JSONL, then atomically replaces the checkpoint with
//!    the new committed length and the conversation states those records
//!    advance — so the checkpoint never points past durable data;
//! 3. a Parquet file is closed (fsync, published into place) and only then
//!    listed in the checkpoint, with the JSONL offset it covers;
//! 4. `seal` ends the run: last commit, audit rows file, the run's checksum
//!    file, manifest, chain entry (the commit point of the run), checkpoint
//!    audit pointer, `SHA256SUMS` — each durable before the next refers to
//!    it.
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

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::api::Endpoint;
use crate::api::client::Reply;
use crate::audit::{self, AuditLog, ChainEntry, Coverage, LogInfo, LogKind, Manifest};
use crate::checkpoint::{self, AuditPointer, Checkpoint, Conversation};
use crate::error::{Error, Result};
use crate::records::{HistoryBatch, HistoryRow, RecordType, SendRow};
use crate::sinks::WrittenFile;
use crate::sinks::jsonl::{self, JsonlSink};
use crate::sinks::parquet::{
    Columns, MessageColumns, ParquetSink, SendColumns, remove_uncommitted,
};
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

/// What a run is called and when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStamp {
    /// `YYYYMMDDTHHMMSSZ-<16 hex digits>`: sortable by start time, unique
    /// per folder.
    pub run_id: String,
    /// The UTC date, for Parquet partition folders.
    pub date: String,
    /// RFC 3339 UTC start time.
    pub started_at: String,
}

impl RunStamp {
    /// A stamp for a run starting now. The run ID is the second it started
    /// and 64 random bits; [`Store::open`] also checks that it is unused.
    pub fn now() -> RunStamp {
        RunStamp::at(chrono::Utc::now())
    }

    /// A stamp for a run starting at `now`.
    pub fn at(now: chrono::DateTime<chrono::Utc>) -> RunStamp {
        RunStamp {
            run_id: format!(
                "{}-{:016x}",
                now.format("%Y%m%dT%H%M%SZ"),
                fastrand::u64(..)
            ),
            date: now.format("%Y-%m-%d").to_string(),
            started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// The same stamp with a new random part.
    fn with_new_suffix(&self) -> RunStamp {
        let second = self.run_id.split('-').next().unwrap_or_default();
        RunStamp {
            run_id: format!("{second}-{:016x}", fastrand::u64(..)),
            ..self.clone()
        }
    }
}

/// The command-specific content of a run's manifest.
#[derive(Debug, Clone)]
pub struct ManifestBody {
    /// `sync` or `send`.
    pub command: &'static str,
    /// The run's exit status.
    pub exit_code: u8,
    /// Options used (no secrets).
    pub options: serde_json::Value,
    /// Per-conversation outcomes.
    pub conversations: serde_json::Value,
    /// Sends made.
    pub sends: serde_json::Value,
    /// Credits by endpoint.
    pub credits: BTreeMap<Endpoint, u64>,
    /// Counters.
    pub counts: serde_json::Value,
    /// HMAC key for the manifest, if any.
    pub signing_key: Option<audit::AuditKey>,
}

impl ManifestBody {
    /// A manifest of `command` that records no work (exit status 0): what
    /// a run that only repaired or took over earlier work says.
    pub fn empty(command: &'static str) -> ManifestBody {
        ManifestBody {
            command,
            exit_code: 0,
            options: serde_json::json!({}),
            conversations: serde_json::json!([]),
            sends: serde_json::json!([]),
            credits: BTreeMap::new(),
            counts: serde_json::json!({}),
            signing_key: None,
        }
    }
}

/// What sealing a run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Files and segments the manifest lists.
    pub files: Vec<WrittenFile>,
    /// The chain entry of the run.
    pub chain: ChainEntry,
    /// The rows file.
    pub audit_rows: LogInfo,
}

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
/// answered (see [`audit::repair`]).
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
    /// When the store was opened, on the monotonic clock.
    opened: std::time::Instant,
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
        let store = storage.as_ref();
        store.prepare()?;
        if let Some(n) = crate::shard::registered(store)? {
            return Err(Error::invalid(
                "--out",
                format!(
                    "{} is split into {n} shards: sync each with --shard K/{n}, and keep sends in an output of their own",
                    store.location()
                ),
            ));
        }
        let lock = store.lock(&stamp.run_id)?;
        let mut checkpoint = Checkpoint::load(store)?;
        let temporaries_removed =
            store.sweep_temporaries(&[jsonl::FILE_NAME, audit::SUMS, checkpoint::FILE_NAME])?;
        // Only the chain's end is read: the runs since the checkpoint's.
        let (tail, torn_at) = audit::read_chain_tail(store, checkpoint.audit.runs)?;
        if checkpoint.read_as.is_none() {
            refuse_data_without_checkpoint(store, tail.len())?;
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
                path: store.describe(audit::CHAIN),
                reason: format!(
                    "the audit chain has {last_seq} runs but the checkpoint records {runs}, ending with a manifest the chain does not hold: restore audit/ from backup"
                ),
            });
        }
        // The run claims the output before it repairs anything: it commits
        // the checkpoint it read, naming this run, by compare-and-swap. A run
        // that got past the lock and committed since loses nothing to this
        // run's repair (the claim fails instead), and any run still
        // writing can no longer commit. In a fresh folder this also marks
        // that a missing checkpoint from now on means it was removed. The
        // runs claimed before and never sealed stay named until this one
        // seals: a repair killed half way is taken up again.
        let stamp = unused_stamp(store, &tail, stamp)?;
        let (date, run_id) = (stamp.date.as_str(), stamp.run_id.as_str());
        let sealed = |run: &str| tail.iter().any(|e| e.run_id == run);
        let earlier = checkpoint.unsealed.clone();
        let mut claims: Vec<checkpoint::Claim> = earlier
            .iter()
            .flatten()
            .filter(|c| !sealed(&c.run))
            .cloned()
            .collect();
        claims.push(checkpoint::Claim {
            run: run_id.to_owned(),
            dirs: vec![
                crate::sinks::parquet::partition::<MessageColumns>(date),
                crate::sinks::parquet::partition::<SendColumns>(date),
            ],
        });
        checkpoint.run = Some(run_id.to_owned());
        checkpoint.unsealed = Some(claims.clone());
        checkpoint.save(store)?;
        audit::cut_torn_chain(store, torn_at)?;
        // Committed Parquet files stay; every other file of an unsealed run
        // goes (it is rebuilt from the committed JSONL).
        let committed: HashSet<String> = checkpoint
            .parquet
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        let (audit_repair, parquet_removed) = match earlier {
            Some(_) => {
                let killed: Vec<String> = claims
                    .iter()
                    .filter(|c| c.run != run_id)
                    .map(|c| c.run.clone())
                    .collect();
                let mut removed = Vec::new();
                for claim in claims.iter().filter(|c| c.run != run_id) {
                    removed.extend(crate::sinks::parquet::remove_run_files(
                        store, claim, &committed,
                    )?);
                }
                (audit::repair_runs(store, &killed, run_id)?, removed)
            }
            // A checkpoint that names no runs (format 1, or rebuilt): the
            // folders are listed, once, and a file is kept when the
            // checkpoint or any sealed manifest lists it.
            None => {
                let (chain, _) = audit::read_chain(store)?;
                let mut keep = committed.clone();
                keep.extend(
                    audit::listed_parquet(store, &chain)?
                        .into_iter()
                        .map(|f| f.path),
                );
                (
                    audit::repair_all(store, run_id)?,
                    remove_uncommitted(store, &keep)?,
                )
            }
        };
        let audit::AuditRepair {
            removed: audit_removed,
            recovered,
        } = audit_repair;
        let (pointer, last) = pointer_from_chain(store, tail.last())?;
        // A compaction sealed but killed before its checkpoint followed may
        // have left files it merged away (it removes them in between).
        if pointer.runs > checkpoint.audit.runs
            && let Some(compaction) = last.and_then(|m| m.compaction)
        {
            audit::finish_compaction(store, &compaction)?;
        }
        checkpoint.audit = pointer;
        // Files a sealed run's manifest lists leave the checkpoint (those of
        // a run that sealed without committing its checkpoint, too).
        let parquet = &mut checkpoint.parquet;
        let listed = checkpoint.audit.coverage.parquet_files;
        let drop = listed.saturating_sub(parquet.listed_before) as usize;
        parquet.files.drain(..drop.min(parquet.files.len()));
        parquet.listed_before = parquet.listed_before.max(listed);
        let coverage = checkpoint.audit.coverage;
        let (jsonl, cut) = JsonlSink::open(
            store,
            checkpoint.jsonl.committed_bytes,
            coverage.jsonl_bytes,
            checkpoint.jsonl.digest_state.as_ref(),
        )?;
        let mut store = Store {
            storage: storage.clone(),
            _lock: lock,
            stamp: stamp.clone(),
            checkpoint,
            head: tail.last().cloned(),
            jsonl,
            messages: ParquetSink::new(storage, date, run_id),
            sends: ParquetSink::new(storage, date, run_id),
            rows: AuditLog::create(store, run_id, LogKind::Rows)?,
            pages: PageLog(Arc::new(Mutex::new(Some(AuditLog::create(
                store,
                run_id,
                LogKind::Pages,
            )?)))),
            recovered,
            failed: None,
            compaction: None,
            opened: std::time::Instant::now(),
            uncommitted_history: 0,
            uncommitted_sends: 0,
            uncommitted_bytes: 0,
            repair: Repair {
                jsonl_bytes_cut: cut,
                parquet_removed,
                parquet_rebuilt_rows: 0,
                audit_removed,
                temporaries_removed,
            },
        };
        store.take_over_unsealed()?;
        Ok(store)
    }

    /// Takes the committed records that an earlier, killed run left without
    /// Parquet or without a manifest into this run: Parquet rows for those
    /// past their table's covered offset, audit rows for those past the
    /// audit coverage.
    fn take_over_unsealed(&mut self) -> Result<()> {
        let committed = self.checkpoint.jsonl.committed_bytes;
        let messages_from = self.checkpoint.parquet.messages_covered_bytes;
        let sends_from = self.checkpoint.parquet.sends_covered_bytes;
        let audit_from = self.checkpoint.audit.coverage.jsonl_bytes;
        let from = messages_from.min(sends_from).min(audit_from);
        if from >= committed {
            return Ok(());
        }
        let path = self.storage.describe(jsonl::FILE_NAME);
        let storage = self.storage.clone();
        let mut offset = from;
        let mut rebuilt = 0u64;
        // No file is rolled over here: the open files close at the run's
        // next roll point or when it is sealed, covering all of this.
        let (messages, sends, rows) = (&mut self.messages, &mut self.sends, &mut self.rows);
        jsonl::for_each_line(storage.as_ref(), from, committed, |line| {
            let start = offset;
            offset += line.len() as u64 + 1;
            let corrupt = |what: &str| Error::Corrupt {
                path: path.clone(),
                reason: format!(
                    "committed record at byte {start} is {what}: restore the file from backup"
                ),
            };
            let record: Record =
                serde_json::from_slice(line).map_err(|_| corrupt("not a record"))?;
            if start >= audit_from {
                rows.push_row(record.tag(), record.user_id(), &record.message_id)?;
            }
            match record.record_type {
                RecordType::History if start >= messages_from => {
                    let row: HistoryRow = serde_json::from_slice(line)
                        .map_err(|_| corrupt("not a history record"))?;
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
        self.repair.parquet_rebuilt_rows = rebuilt;
        Ok(())
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

    /// Rolls both Parquet tables over every `rows` rows (tests).
    #[cfg(test)]
    fn set_file_rows(&mut self, rows: u64) {
        self.messages.set_file_rows(rows);
        self.sends.set_file_rows(rows);
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

    /// [`Store::seal`] off the async runtime's threads.
    pub async fn seal_async(self, body: ManifestBody) -> Result<Sealed> {
        tokio::task::spawn_blocking(move || self.seal(body))
            .await
            .map_err(|e| Error::io("<store>", std::io::Error::other(e)))?
    }

    /// Ends the run: closes the Parquet file, commits, and writes the audit
    /// rows file, the manifest, the chain entry, the checkpoint's audit
    /// pointer and `SHA256SUMS`, in that order.
    pub fn seal(mut self, body: ManifestBody) -> Result<Sealed> {
        for file in [self.messages.close()?, self.sends.close()?]
            .into_iter()
            .flatten()
        {
            self.list_parquet(file);
        }
        // Both tables are closed: every record is in a listed file, also
        // for a table this run wrote nothing to.
        let end = self.jsonl.len();
        self.checkpoint.parquet.messages_covered_bytes = end;
        self.checkpoint.parquet.sends_covered_bytes = end;
        self.commit()?;
        let audit_rows = self.rows.finish()?;
        let page_log = self.pages.finish()?;

        let previous = self.head.clone();
        let mut files: Vec<WrittenFile> = self.jsonl.segment().into_iter().collect();
        files.extend(self.checkpoint.parquet.files.iter().cloned());
        if let Some(compaction) = &self.compaction {
            files.extend(compaction.added.iter().cloned());
        }
        let parquet = &self.checkpoint.parquet;
        let coverage = Coverage {
            jsonl_bytes: self.jsonl.len(),
            parquet_files: parquet.listed_before + parquet.files.len() as u64,
        };
        let mut manifest = Manifest {
            format: audit::MANIFEST_FORMAT.to_owned(),
            run_id: self.stamp.run_id.clone(),
            command: body.command.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.stamp.started_at.clone(),
            finished_at: finished_at(&self.stamp, self.opened),
            previous_manifest_sha256: previous.as_ref().map(|p| p.sha256.clone()),
            exit_code: body.exit_code,
            options: body.options,
            conversations: body.conversations,
            sends: body.sends,
            credits: body
                .credits
                .iter()
                .map(|(e, c)| (e.as_str().to_owned(), *c))
                .collect(),
            counts: body.counts,
            repair: serde_json::to_value(&self.repair).unwrap_or_default(),
            files: files.clone(),
            audit_rows: audit_rows.clone(),
            page_log: page_log.clone(),
            coverage,
            recovered: self.recovered.clone(),
            compaction: self.compaction.clone(),
            signature: None,
        };
        if let Some(key) = &body.signing_key {
            manifest.sign(&key.0)?;
        }
        let entry = audit::append_run(self.storage.as_ref(), &manifest, previous.as_ref())?;
        self.head = Some(entry.clone());
        self.checkpoint.audit = AuditPointer {
            runs: entry.seq,
            last_manifest: Some(entry.manifest.clone()),
            last_digest: Some(entry.sha256.clone()),
            coverage,
        };
        // The manifest lists them now; nothing is left to clean up after.
        self.checkpoint.parquet.files.clear();
        self.checkpoint.parquet.listed_before = coverage.parquet_files;
        self.checkpoint.unsealed = Some(Vec::new());
        if let Some(compaction) = &self.compaction {
            // The merged files are the listed ones now. Done before the
            // checkpoint follows the chain: until it has, the next run
            // finishes this.
            audit::finish_compaction(self.storage.as_ref(), compaction)?;
        }
        self.checkpoint.save(self.storage.as_ref())?;
        write_sums(
            self.storage.as_ref(),
            self.jsonl.len(),
            &self.jsonl.file_digest(),
        )?;
        Ok(Sealed {
            files,
            chain: entry,
            audit_rows,
        })
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

/// Rewrites `SHA256SUMS`, which lists the files that change: the handoff
/// file (its digest kept up to date as it grows) and the checkpoint. Every
/// file that never changes is listed in the checksum file of the run that
/// wrote it (see [`audit::append_run`]), so nothing here grows with the
/// history.
fn write_sums(storage: &dyn Backend, jsonl_len: u64, jsonl_digest: &str) -> Result<()> {
    let mut files = vec![checkpoint::KEY.to_owned()];
    if jsonl_len > 0 {
        files.push(jsonl::FILE_NAME.to_owned());
    }
    let known = BTreeMap::from([(jsonl::FILE_NAME.to_owned(), jsonl_digest.to_owned())]);
    audit::write_sums(storage, &files, &known)
}

/// A checkpoint that is missing while the root holds records, Parquet
/// files or sealed runs was removed (an operator "resetting" the job):
/// starting over would cut the JSONL to nothing and drop the Parquet files,
/// losing every message the API no longer serves. Refused instead.
fn refuse_data_without_checkpoint(storage: &dyn Backend, sealed: usize) -> Result<()> {
    let jsonl_bytes = storage.handoff_len()?;
    let parquet = crate::sinks::parquet::any_written(storage)?;
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

/// When the run `stamp` ends: its start plus the time it took on the
/// monotonic clock since `opened`, so that a wall clock set back or forward
/// during the run cannot give it a negative or absurd duration.
fn finished_at(stamp: &RunStamp, opened: std::time::Instant) -> String {
    let started = chrono::DateTime::parse_from_rfc3339(&stamp.started_at)
        .map(|t| t.with_timezone(&chrono::Utc));
    let finished = match (started, chrono::Duration::from_std(opened.elapsed())) {
        (Ok(started), Ok(elapsed)) => started + elapsed,
        _ => chrono::Utc::now(),
    };
    finished.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `stamp`, or a copy with a new random part if its run ID is taken in
/// `storage` (a sealed run, or a manifest): a run never writes over another
/// run's files.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn local(dir: &Path) -> Storage {
        Arc::new(crate::storage::local::LocalDir::new(dir))
    }
    use crate::records::RecordType;

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

    fn stamp(run_id: &str) -> RunStamp {
        RunStamp {
            run_id: run_id.into(),
            date: "2026-11-26".into(),
            started_at: "2026-11-26T00:00:00Z".into(),
        }
    }

    fn body() -> ManifestBody {
        ManifestBody::empty("sync")
    }

    #[test]
    fn uncommitted_appends_vanish_and_committed_ones_reach_parquet_and_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        // Run 1 commits 3 rows, appends 2 more and dies before committing,
        // closing its Parquet file or sealing.
        let mut store = Store::open(&local(out), &stamp("run1")).unwrap();
        let first: Vec<_> = (0..3).map(row).collect();
        store.append_history(&HistoryBatch::of(&first)).unwrap();
        store.commit().unwrap();
        let lost: Vec<_> = (3..5).map(row).collect();
        store.append_history(&HistoryBatch::of(&lost)).unwrap();
        drop(store);

        // Run 2 repairs and takes run 1's committed rows over.
        let store = Store::open(&local(out), &stamp("run2")).unwrap();
        let repair = store.repair().clone();
        assert_eq!(
            repair.jsonl_bytes_cut,
            HistoryBatch::of(&lost).lines().len() as u64
        );
        assert_eq!(repair.parquet_rebuilt_rows, 3);
        let mut removed = repair.audit_removed.clone();
        removed.sort();
        // The rows file vanished with its writer (a killed process would
        // leave its temporary, which goes the same way); the page log,
        // empty, holds nothing to recover.
        assert_eq!(removed, vec!["audit/runs/.run1.pages.jsonl.tmp"]);
        let sealed = store.seal(body()).unwrap();
        assert_eq!(sealed.files.len(), 2, "{:?}", sealed.files);
        assert_eq!(sealed.files[0].offset, Some(0));
        assert_eq!(sealed.files[0].rows, 3);
        assert_eq!(sealed.files[1].rows, 3);
        assert_eq!(sealed.audit_rows.rows, 3);
        assert_eq!(
            std::fs::read(out.join(jsonl::FILE_NAME)).unwrap(),
            HistoryBatch::of(&first).lines()
        );
        let checkpoint = Checkpoint::load(&*local(out)).unwrap();
        assert_eq!(
            checkpoint.parquet.messages_covered_bytes,
            checkpoint.jsonl.committed_bytes
        );
        assert_eq!(checkpoint.jsonl.history_rows, 3);
        assert_eq!(
            checkpoint.audit.coverage.jsonl_bytes,
            checkpoint.jsonl.committed_bytes
        );
        assert_eq!(checkpoint.audit.last_digest, Some(sealed.chain.sha256));
    }

    #[test]
    fn a_second_run_manifest_covers_only_its_own_segment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut store = Store::open(&local(out), &stamp("a")).unwrap();
        let first: Vec<_> = (0..3).map(row).collect();
        store.append_history(&HistoryBatch::of(&first)).unwrap();
        let a = store.seal(body()).unwrap();
        let mut store = Store::open(&local(out), &stamp("b")).unwrap();
        let second: Vec<_> = (3..4).map(row).collect();
        store.append_history(&HistoryBatch::of(&second)).unwrap();
        let b = store.seal(body()).unwrap();
        let len_a = HistoryBatch::of(&first).lines().len() as u64;
        assert_eq!(b.files[0].offset, Some(len_a));
        assert_eq!(b.files[0].rows, 1);
        assert_eq!(b.chain.previous_sha256, Some(a.chain.sha256));
        assert_eq!(b.chain.seq, 2);
    }

    fn send_row() -> SendRow {
        SendRow {
            record_type: RecordType::Send,
            message_id: "1900000000000000999".into(),
            success: true,
            send_status: "success".into(),
            sender_account: "acme".into(),
            recipient_user_id: "7".into(),
            message_text: "sent".into(),
            sent_at: 1_764_000_000_000_000,
            media_id: None,
            media_ids: None,
        }
    }

    /// Rows of `table` in the Parquet files the sealed runs list.
    fn parquet_rows(out: &Path, table: &str) -> u64 {
        let storage = local(out);
        let (chain, _) = audit::read_chain(&*storage).unwrap();
        chain
            .iter()
            .flat_map(|e| {
                audit::read_manifest(&*storage, &e.manifest)
                    .unwrap()
                    .0
                    .files
            })
            .filter(|f| f.path.starts_with(&format!("parquet/{table}/")))
            .map(|f| f.rows)
            .sum()
    }

    /// A table whose file rolls over while the other table still has rows
    /// waiting is covered on its own: nothing is rebuilt twice.
    #[test]
    fn tables_are_covered_separately_across_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        // A send is committed, then the run dies before sealing.
        let mut store = Store::open(&local(out), &stamp("a")).unwrap();
        store.append_send(&send_row()).unwrap();
        store.commit().unwrap();
        drop(store);
        // The next run takes the send over (pending in its sends table),
        // writes history until the messages file rolls over, commits, dies.
        let mut store = Store::open(&local(out), &stamp("b")).unwrap();
        store.set_file_rows(2);
        let rows: Vec<_> = (0..3).map(row).collect();
        store.append_history(&HistoryBatch::of(&rows)).unwrap();
        store.commit().unwrap();
        drop(store);
        let store = Store::open(&local(out), &stamp("c")).unwrap();
        store.seal(body()).unwrap();
        assert_eq!(parquet_rows(out, "messages"), 3);
        assert_eq!(parquet_rows(out, "sends"), 1);
    }

    #[test]
    fn a_run_id_already_used_is_replaced_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let id = "20261126T000000Z-0000000000000001";
        let first = Store::open(&local(out), &stamp(id))
            .unwrap()
            .seal(body())
            .unwrap();
        let manifest = std::fs::read(out.join(&first.chain.manifest)).unwrap();
        let store = Store::open(&local(out), &stamp(id)).unwrap();
        assert_ne!(store.run_id(), id);
        assert!(store.run_id().starts_with("20261126T000000Z-"));
        let second = store.seal(body()).unwrap();
        assert_ne!(second.chain.manifest, first.chain.manifest);
        assert_eq!(
            std::fs::read(out.join(&first.chain.manifest)).unwrap(),
            manifest
        );
    }

    #[test]
    fn a_folder_whose_checkpoint_was_removed_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut store = Store::open(&local(out), &stamp("a")).unwrap();
        let rows: Vec<_> = (0..3).map(row).collect();
        store.append_history(&HistoryBatch::of(&rows)).unwrap();
        store.seal(body()).unwrap();
        let jsonl = std::fs::read(out.join(jsonl::FILE_NAME)).unwrap();
        std::fs::remove_file(out.join(checkpoint::KEY)).unwrap();
        let err = Store::open(&local(out), &stamp("b")).unwrap_err();
        assert!(err.to_string().contains("xquik-dm rebuild"), "{err}");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(std::fs::read(out.join(jsonl::FILE_NAME)).unwrap(), jsonl);
        assert!(!Checkpoint::exists(&*local(out)).unwrap());
    }

    /// A killed run's files are found by the names it gives them: the
    /// repair lists neither `parquet/` nor `audit/runs/`, keeps what was
    /// committed and removes the rest.
    #[test]
    fn a_killed_run_is_cleaned_up_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let store = Store::open(&local(out), &stamp("a")).unwrap();
        store.seal(body()).unwrap();
        let mut store = Store::open(&local(out), &stamp("b")).unwrap();
        store.set_file_rows(2);
        let rows: Vec<_> = (0..2).map(row).collect();
        store.append_history(&HistoryBatch::of(&rows)).unwrap();
        store.commit().unwrap();
        let more: Vec<_> = (2..4).map(row).collect();
        store.append_history(&HistoryBatch::of(&more)).unwrap();
        store
            .page_log()
            .push(
                &serde_json::json!({"endpoint": "GET /x/users/{id}", "status": 200, "credits": 1}),
            )
            .unwrap();
        store.page_log().sync().unwrap();
        drop(store);
        let folder = crate::sinks::parquet::partition::<MessageColumns>("2026-11-26");
        let file = |n| crate::sinks::parquet::file_key(&folder, "b", n);
        assert!(out.join(file(1)).exists() && out.join(file(2)).exists());

        let counting = crate::storage::counting::Counting::new(local(out));
        let storage: Storage = Arc::new(counting.clone());
        let store = Store::open(&storage, &stamp("c")).unwrap();
        assert_eq!(counting.take().listed, Vec::<String>::new());
        assert_eq!(store.repair().parquet_removed, vec![file(2)]);
        assert_eq!(store.recovered.len(), 1);
        assert_eq!(store.recovered[0].run_id, "b");
        let sealed = store.seal(body()).unwrap();
        assert!(out.join(file(1)).exists() && !out.join(file(2)).exists());
        assert!(sealed.files.iter().any(|f| f.path == file(1)));
        let report = crate::commands::verify::check(&*local(out), None, None);
        assert!(report.ok(), "{report}");
    }

    /// A folder written by the version whose checkpoint listed every
    /// Parquet file and named no runs (format 1) is upgraded by one listing
    /// repair: listed files stay, a killed run's unlisted file goes, and
    /// from then on the checkpoint holds only what is not sealed.
    #[test]
    fn a_format_1_checkpoint_is_upgraded_by_one_listing_repair() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut store = Store::open(&local(out), &stamp("a")).unwrap();
        let rows: Vec<_> = (0..3).map(row).collect();
        store.append_history(&HistoryBatch::of(&rows)).unwrap();
        let sealed = store.seal(body()).unwrap();
        let listed = sealed.files[1].clone();
        // What format 1 looked like, and a file a killed run left.
        let mut v1: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(checkpoint::KEY)).unwrap()).unwrap();
        v1["version"] = 1.into();
        v1.as_object_mut().unwrap().remove("unsealed");
        v1["parquet"]["files"] = serde_json::json!([listed]);
        v1["parquet"]
            .as_object_mut()
            .unwrap()
            .remove("listed_before");
        std::fs::write(out.join(checkpoint::KEY), v1.to_string()).unwrap();
        let folder = crate::sinks::parquet::partition::<MessageColumns>("2026-11-26");
        let orphan = crate::sinks::parquet::file_key(&folder, "killed", 1);
        std::fs::write(out.join(&orphan), b"PAR1").unwrap();

        let store = Store::open(&local(out), &stamp("b")).unwrap();
        assert_eq!(store.repair().parquet_removed, vec![orphan.clone()]);
        assert!(store.checkpoint().parquet.files.is_empty());
        assert_eq!(store.checkpoint().parquet.listed_before, 1);
        store.seal(body()).unwrap();
        assert!(out.join(&listed.path).exists() && !out.join(&orphan).exists());
        let upgraded = Checkpoint::load(&*local(out)).unwrap();
        assert_eq!(upgraded.version, 2);
        assert_eq!(upgraded.unsealed, Some(Vec::new()));
        let report = crate::commands::verify::check(&*local(out), None, None);
        assert!(report.ok(), "{report}");
    }

    /// A scratch folder in memory where there is one (`/dev/shm`), so that
    /// thousands of runs do not wait for a disk.
    fn scratch() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        match shm.is_dir() {
            true => tempfile::tempdir_in(shm).unwrap(),
            false => tempfile::tempdir().unwrap(),
        }
    }

    /// 10,000 small runs in a row: what a run reads, writes and lists, and
    /// the checkpoint's size, are the same at the end as at the start. The
    /// bench's `longevity` scenario prints the wall times.
    #[test]
    fn a_run_costs_the_same_after_ten_thousand_runs() {
        let dir = scratch();
        let counting = crate::storage::counting::Counting::new(local(dir.path()));
        let storage: Storage = Arc::new(counting.clone());
        let sample = |run: u64| {
            counting.take();
            let mut store =
                Store::open(&storage, &stamp(&format!("20261126T000000Z-{run:016x}"))).unwrap();
            let rows: Vec<_> = (run * 2..run * 2 + 2).map(row).collect();
            store.append_history(&HistoryBatch::of(&rows)).unwrap();
            store.commit().unwrap();
            store.seal(body()).unwrap();
            let counts = counting.take();
            let checkpoint = std::fs::metadata(dir.path().join(checkpoint::KEY))
                .unwrap()
                .len();
            (counts, checkpoint)
        };
        for run in 0..100 {
            sample(run);
        }
        let (first, first_checkpoint) = sample(100);
        for run in 101..9_999 {
            sample(run);
        }
        let (last, last_checkpoint) = sample(9_999);
        // Run numbers, offsets and sequence numbers gain digits; nothing
        // else may grow.
        assert!(last.read <= first.read + 256, "{first:?} {last:?}");
        assert!(last.written <= first.written + 256, "{first:?} {last:?}");
        assert!(
            last_checkpoint <= first_checkpoint + 64,
            "{first_checkpoint} {last_checkpoint}"
        );
        assert_eq!(last.listed, first.listed);
        assert!(
            last.listed_objects <= first.listed_objects + 2,
            "{first:?} {last:?}"
        );
        for prefix in &last.listed {
            assert!(
                !prefix.starts_with("parquet") && !prefix.starts_with(audit::RUNS_DIR),
                "{prefix}"
            );
        }
    }

    #[test]
    fn a_second_store_on_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(&local(dir.path()), &stamp("a")).unwrap();
        assert!(matches!(
            Store::open(&local(dir.path()), &stamp("b")),
            Err(Error::Locked { .. })
        ));
    }
}
