//! The end of a run: [`Store::seal`] closes the run's Parquet files and
//! commits, then writes the audit rows file, the run's Delta commit per
//! table it changed, the manifest (with its SSH signature first, when a key
//! is set), the chain entry (the commit point of the run), `SHA256SUMS`
//! (naming the checkpoint about to be saved) and the checkpoint's audit
//! pointer, each durable before the next refers to it.
//!
//! The Delta commits come after the Parquet files are listed in the
//! checkpoint (a killed run's files are then kept and taken over, never
//! removed from under a snapshot that names them) and before the manifest,
//! which pins each by version and SHA-256. A run killed between the two
//! leaves a commit the chain does not hold: the next run undoes it first
//! (`recover.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Store;
use super::generation::{self, Sealing};
use super::recover::Repair;
use super::stamp::RunStamp;
use super::tables::{self, RunFiles};
use crate::api::Endpoint;
use crate::audit::{self, ChainEntry, Compaction, Coverage, LogInfo, Manifest, RecoveredLog};
use crate::checkpoint::{self, AuditPointer, Checkpoint};
use crate::erasure::record::Erasure;
use crate::error::{Error, Result};
use crate::sinks::WrittenFile;
use crate::sinks::jsonl;
use crate::sshsig::{self, SigningKey};
use crate::storage::Backend;

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
    /// SSH key that signs the manifest, if any.
    pub ssh_key: Option<SigningKey>,
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
            ssh_key: None,
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

/// What a manifest says of the run itself, beside the command's body and
/// the files it wrote.
struct Run<'a> {
    stamp: &'a RunStamp,
    /// When the store was opened, on the monotonic clock.
    opened: std::time::Instant,
    /// The last sealed run, which the manifest links to.
    previous: Option<&'a ChainEntry>,
    repair: &'a Repair,
    recovered: &'a [RecoveredLog],
    compaction: Option<&'a Compaction>,
    /// The Delta commits of the run, by table.
    delta: BTreeMap<String, audit::DeltaEntry>,
    erasure: Option<&'a Erasure>,
}

impl Store {
    /// [`Store::seal`] off the async runtime's threads.
    pub async fn seal_async(self, body: ManifestBody) -> Result<Sealed> {
        tokio::task::spawn_blocking(move || self.seal(body))
            .await
            .map_err(|e| Error::io("<store>", std::io::Error::other(e)))?
    }

    /// Ends the run: closes the Parquet file, commits, and writes the audit
    /// rows file, the Delta commit of each table it changed, the manifest,
    /// the chain entry, `SHA256SUMS` and the checkpoint's audit pointer, in
    /// that order.
    pub fn seal(mut self, body: ManifestBody) -> Result<Sealed> {
        self.close_tables()?;
        let now = self.clock_ms();
        let files = self.listed_files();
        let coverage = self.coverage();
        let audit_rows = self.rows.finish()?;
        let page_log = self.pages.finish()?;

        let previous = self.head.clone();
        let delta = tables::commit_run(
            &self.storage,
            now,
            &RunFiles {
                run_id: &self.stamp.run_id,
                command: body.command,
                files: &files,
                compaction: self.compaction.as_ref(),
            },
            previous.is_some() && !self.checkpoint.delta_converted,
            std::mem::take(&mut self.delta_reverted),
        )?;
        let run = Run {
            stamp: &self.stamp,
            opened: self.opened,
            previous: previous.as_ref(),
            repair: &self.repair,
            recovered: &self.recovered,
            compaction: self.compaction.as_ref(),
            delta,
            erasure: self.erasure.as_ref(),
        };
        let ssh_key = body.ssh_key.clone();
        let manifest = body.into_manifest(run, files.clone(), &audit_rows, page_log, coverage)?;
        let storage = self.storage.as_ref();
        let entry =
            audit::append_signed_run(storage, &manifest, previous.as_ref(), ssh_key.as_ref())?;
        self.head = Some(entry.clone());
        let erasure = self.erasure.as_ref().map(|erasure| Sealing {
            run_id: &self.stamp.run_id,
            erasure,
            rows: &audit_rows,
            state: self.generation.as_ref().map(|g| &g.state),
        });
        follow_seal(
            storage,
            &mut self.checkpoint,
            &entry,
            coverage,
            (self.compaction.as_ref(), erasure),
        )?;
        // `SHA256SUMS` first, naming the checkpoint about to be saved: a
        // kill between the two leaves the checkpoint naming the run before,
        // which `verify` and the next run know as a seal to complete. The
        // other order would leave a checkpoint that names this run beside
        // the `SHA256SUMS` of the run before, which nothing could tell from
        // an edited checkpoint.
        let bytes = self.checkpoint.to_bytes(storage)?;
        let sums = match &self.generation {
            // An erasure's new generation is the file now.
            Some(g) => (g.bytes, g.sha256.clone()),
            None => (self.jsonl.len(), self.jsonl.file_digest()),
        };
        write_sums(storage, sums, &hex::encode(Sha256::digest(&bytes)))?;
        self.checkpoint.save_bytes(storage, &bytes)?;
        if self.erasure.is_some() {
            // The checkpoint names the new index now.
            crate::erasure::tombstones::remove_stale_indexes(storage, &self.checkpoint.erasure)?;
        }
        Ok(Sealed {
            files,
            chain: entry,
            audit_rows,
        })
    }

    /// Closes both Parquet tables, lists their last files and commits.
    fn close_tables(&mut self) -> Result<()> {
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
        self.commit()
    }

    /// The files the manifest lists: the JSONL segment since the last
    /// manifest, the Parquet files no sealed manifest lists yet, and the
    /// files a compaction wrote.
    fn listed_files(&self) -> Vec<WrittenFile> {
        // An erasure appends nothing: its segment is its new generation.
        let segment = match &self.generation {
            Some(g) => Some(g.segment()),
            None => self.jsonl.segment(),
        };
        let mut files: Vec<WrittenFile> = segment.into_iter().collect();
        files.extend(self.checkpoint.parquet.files.iter().cloned());
        if let Some(compaction) = &self.compaction {
            files.extend(compaction.added.iter().cloned());
        }
        files
    }

    /// How far the manifests cover the outputs once this run is sealed.
    fn coverage(&self) -> Coverage {
        let parquet = &self.checkpoint.parquet;
        Coverage {
            jsonl_bytes: self
                .generation
                .as_ref()
                .map_or(self.jsonl.len(), |g| g.bytes),
            parquet_files: parquet.listed_before + parquet.files.len() as u64,
        }
    }
}

impl ManifestBody {
    /// The manifest of `run`: this body, the files it wrote, its logs and
    /// the coverage after it, signed when a key is set.
    fn into_manifest(
        self,
        run: Run<'_>,
        files: Vec<WrittenFile>,
        audit_rows: &LogInfo,
        page_log: LogInfo,
        coverage: Coverage,
    ) -> Result<Manifest> {
        let mut manifest = Manifest {
            format: audit::MANIFEST_FORMAT.to_owned(),
            run_id: run.stamp.run_id.clone(),
            command: self.command.to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: run.stamp.started_at.clone(),
            finished_at: finished_at(run.stamp, run.opened),
            previous_manifest_sha256: run.previous.map(|p| p.sha256.clone()),
            exit_code: self.exit_code,
            options: self.options,
            conversations: self.conversations,
            sends: self.sends,
            credits: self
                .credits
                .iter()
                .map(|(e, c)| (e.as_str().to_owned(), *c))
                .collect(),
            counts: self.counts,
            repair: serde_json::to_value(run.repair).unwrap_or_default(),
            files,
            audit_rows: audit_rows.clone(),
            page_log,
            coverage,
            recovered: run.recovered.to_vec(),
            compaction: run.compaction.cloned(),
            delta: run.delta,
            erasure: run.erasure.cloned(),
            signer: self.ssh_key.as_ref().map(|key| audit::Signer {
                fingerprint: key.fingerprint().to_owned(),
                namespace: sshsig::NAMESPACE.to_owned(),
            }),
            signature: None,
        };
        if let Some(key) = &self.signing_key {
            manifest.sign(&key.0)?;
        }
        Ok(manifest)
    }
}

/// Points `checkpoint` at the sealed run `entry`, whose manifest lists
/// every file the checkpoint held, and finishes its `compaction` and its
/// erasure; the caller saves it.
fn follow_seal(
    storage: &dyn Backend,
    checkpoint: &mut Checkpoint,
    entry: &ChainEntry,
    coverage: Coverage,
    (compaction, erasure): (Option<&Compaction>, Option<Sealing<'_>>),
) -> Result<()> {
    checkpoint.audit = AuditPointer {
        runs: entry.seq,
        last_manifest: Some(entry.manifest.clone()),
        last_digest: Some(entry.sha256.clone()),
        coverage,
    };
    // The manifest lists them now; nothing is left to clean up after.
    checkpoint.parquet.files.clear();
    checkpoint.delta_converted = true;
    checkpoint.parquet.listed_before = coverage.parquet_files;
    checkpoint.unsealed = Some(Vec::new());
    if let Some(compaction) = compaction {
        // The merged files are the listed ones now. Done before the
        // checkpoint follows the chain: until it has, the next run
        // finishes this.
        audit::finish_compaction(storage, compaction)?;
    }
    if let Some(erasure) = erasure {
        generation::apply(storage, checkpoint, erasure)?;
    }
    Ok(())
}

/// Rewrites `SHA256SUMS`, which lists the files that change: the handoff
/// file (its digest kept up to date as it grows) and the checkpoint. Every
/// file that never changes is listed in the checksum file of the run that
/// wrote it (see [`audit::append_run`]), so nothing here grows with the
/// history.
fn write_sums(
    storage: &dyn Backend,
    (jsonl_len, jsonl_digest): (u64, String),
    checkpoint_digest: &str,
) -> Result<()> {
    let mut files = vec![checkpoint::KEY.to_owned()];
    if jsonl_len > 0 {
        files.push(jsonl::FILE_NAME.to_owned());
    }
    let known = BTreeMap::from([
        (jsonl::FILE_NAME.to_owned(), jsonl_digest),
        (checkpoint::KEY.to_owned(), checkpoint_digest.to_owned()),
    ]);
    audit::write_sums(storage, &files, &known)
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
