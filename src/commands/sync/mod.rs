//! `xquik-dm sync`: page the DM history of many conversations into the
//! store, deduplicated, resumable and crash-safe.
//!
//! Shape of a run: validate and lock the output folder (before any request),
//! resolve usernames once (remembered in the checkpoint), then one task per
//! conversation pages the history and sends each page's new rows to a
//! single writer thread, which owns the store and commits every second or
//! so. Each account runs as many conversations at a time as it takes to
//! keep its requests at the account's pace (the rate limit) at the latency
//! its answers come back with, up to `--concurrency`. A conversation's state in the checkpoint
//! always travels with the rows it covers, so a crash at any instant resumes
//! exactly where the committed data ends.
//!
//! Per conversation, a run first finishes an interrupted incremental scan,
//! then scans from the newest page down to what is already written (at most
//! one page of known messages), then continues any unfinished backfill.
//!
//! The folder, in the order a run goes through it ([`run`], here, ties the
//! steps together; the parts never call back into this file):
//! - `options`: what the run is asked to do;
//! - `targets`: set-up — each conversation's user ID and checkpoint state;
//! - `schedule`: one task per conversation, at each account's pace;
//! - `scan`: a task — its scans, each a state machine over pages;
//! - `writer`: the one thread that owns the store; the tasks send it each
//!   page's rows with the conversation state they commit with;
//! - `shared`: what the tasks share (stops, credits, counters);
//! - `report`: the outcome — per conversation and for the run — and the
//!   manifest's content;
//! - `retention`: `--retain-days`, an erasure run after the sync's, at most
//!   once a day.

mod options;
mod report;
mod retention;
mod scan;
mod schedule;
mod shared;
mod targets;
mod writer;

use std::sync::Arc;
use std::time::Instant;

pub use options::{DEFAULT_CONCURRENCY, MAX_RETAIN_DAYS, SyncOptions, Target};
use report::manifest_body;
pub use report::{
    ConversationReport, ConversationStatus, InvalidRecord, LaneClosed, LaneScope, PageRecord,
    SyncReport,
};
use shared::Run;
use targets::resolve_targets;

use crate::api::client::Client;
use crate::error::{Error, Result};
use crate::sshsig::SigningKey;
use crate::storage::Storage;
use crate::store::{Repair, RunStamp, Store};

/// Runs a sync.
pub async fn run(options: SyncOptions) -> Result<SyncReport> {
    if options.targets.is_empty() {
        return Err(Error::invalid("--user", "name at least one conversation"));
    }
    let started = Instant::now();
    let mut options = options;
    let stamp = options.stamp.clone().unwrap_or_else(RunStamp::now);
    options.stamp = Some(stamp.clone());
    let (run, mut store, storage) = set_up(options).await?;
    let run_id = store.run_id().to_owned();
    let stamp = store.stamp().clone();
    let repair = store.repair().clone();
    let (resolved, mut reports) = resolve_targets(&run, &mut store).await;

    let (tx, writer) = writer::spawn(store, run.clone())?;
    schedule::run_conversations(&run, resolved, &mut reports, tx, started).await;
    let mut store = writer::join(writer).await?;

    let mut report = SyncReport::of_run(&run, run_id, repair, reports);
    report::LaneClosed::log(&report.lanes_closed);
    let due = match run.options.retain_days {
        Some(days) => retention::plan(&mut store, days, &stamp, started.elapsed()).await?,
        None => None,
    };
    let body = manifest_body(&report, &run.options);
    let sealed = store.seal_async(body).await?;
    report.files = sealed.files;
    report.manifest = sealed.chain.manifest;
    if let Some(due) = due {
        let key = run.options.signing_key.clone();
        retain_after(storage.clone(), due, key, &mut report).await;
    }
    if run.options.compact {
        let key = run.options.signing_key.clone();
        // A run of its own, on the sync's clock (a stamped sync's
        // simulated day decides which dates have closed).
        let stamp = RunStamp::at(stamp.clock(started.elapsed()));
        compact_after(storage, stamp, key, &mut report).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The set-up: the API client, the output folder opened, and the state the
/// tasks share. Returns that state, the store and the output root.
async fn set_up(options: SyncOptions) -> Result<(Arc<Run>, Store, Storage)> {
    let stamp = options.stamp.clone().unwrap_or_else(RunStamp::now);
    let client = Client::new(options.api.clone())?;

    // The folder is opened, locked and repaired before any request: an
    // unusable folder costs no credit.
    let (options, storage) = shard_of(options)?;
    let store = Store::open_async(&storage, &stamp).await?;
    let repair = store.repair();
    if *repair != Repair::default() {
        tracing::warn!(
            jsonl_bytes_cut = repair.jsonl_bytes_cut,
            parquet_removed = repair.parquet_removed.len(),
            parquet_rebuilt_rows = repair.parquet_rebuilt_rows,
            "repaired what an interrupted run left"
        );
    }
    let run = Arc::new(Run::new(client, store.page_log(), options));
    Ok((run, store, storage))
}

/// The options and output root of this run: for a shard, only its
/// conversations, in its own root under the prefix (registered there first,
/// so that a prefix is never split two ways), its Delta tables the
/// prefix's ([`crate::shard`]).
fn shard_of(mut options: SyncOptions) -> Result<(SyncOptions, Storage)> {
    let Some(shard) = options.shard else {
        let storage = crate::shard::open(&options.out)?;
        return Ok((options, storage));
    };
    let root = options.out.open()?;
    root.prepare()?;
    let split = shard.register(root.as_ref())?;
    options
        .targets
        .retain(|t| shard.contains(&t.account, &t.user));
    let storage = shard.storage(&options.out, split)?;
    options.out = options.out.join(&shard.dir());
    Ok((options, storage))
}

/// `--retain-days`: the retention erasure `due`, a run of its own after
/// this one is sealed. A failure is put in the report; the run stays
/// sealed, and the next sync tries again.
async fn retain_after(
    storage: Storage,
    due: retention::Due,
    key: Option<SigningKey>,
    report: &mut SyncReport,
) {
    match retention::apply(storage, due, key).await {
        Ok(erased) => report.retention = Some(erased),
        Err(e) => {
            tracing::error!(error = %e, "retention after the run failed; the run is sealed");
            report.retention_exit = e.exit_code();
            report.retention_error = Some(e.to_string());
        }
    }
}

/// `--compact`: compacts the partitions of the dates that closed since the
/// last compaction. A failure is put in the report; the run stays sealed.
async fn compact_after(
    storage: Storage,
    stamp: RunStamp,
    key: Option<SigningKey>,
    report: &mut SyncReport,
) -> Result<()> {
    // A run of its own, after this one is sealed and has let go of
    // the output.
    let compacted =
        tokio::task::spawn_blocking(move || super::compact::auto(&storage, &stamp, key.as_ref()))
            .await
            .map_err(|e| Error::io("<compact>", std::io::Error::other(e)))?;
    match compacted {
        Ok(compaction) => report.compaction = compaction,
        Err(e) => {
            tracing::error!(error = %e, "compaction after the run failed; the run is sealed");
            report.compaction_exit = e.exit_code();
            report.compaction_error = Some(e.to_string());
        }
    }
    Ok(())
}
