//! Delta Lake tables over the Parquet outputs: `parquet/messages` and
//! `parquet/sends` each carry a `_delta_log/`, so that Spark, Databricks,
//! Snowflake, BigQuery, delta-rs, Polars and DuckDB read them as tables with
//! atomic snapshots, history, time travel and file statistics (SPEC §6
//! "Delta tables", issue 19).
//!
//! One module writes and reads the log, per the Delta protocol:
//! - [`actions`](Action): `add`, `remove`, `commitInfo`, `protocol`,
//!   `metaData` as JSON lines; unknown actions ([`Action::Other`]) and
//!   unknown fields are tolerated on read;
//! - `commit`: a [`Change`] becomes the next version, written create-only
//!   through [`crate::storage::Backend::put_new`] (a hard link in a folder,
//!   `If-None-Match` in a bucket); version 0 also carries `protocol`
//!   (reader 1, writer 2) and `metaData` (schema, partition column `date`);
//!   a version another writer took is checked for a conflicting removal and
//!   retried at the next one, at most [`MAX_ATTEMPTS`] times;
//! - `log`: the newest version from `_last_checkpoint` by probing commit
//!   names (doubling, then bisecting), never by reading the log;
//! - `snapshot`: replay from the newest checkpoint at or before a version
//!   plus the commits after it ([`Snapshot`], time travel);
//! - `checkpoint`: classic single-file Parquet checkpoints
//!   (`<v:020>.checkpoint.parquet`, Spark's layout) every
//!   [`CHECKPOINT_INTERVAL`] versions and after a commit that removes as
//!   many files (a day's compaction), and `_last_checkpoint`;
//! - `cleanup`: log retention per `delta.logRetentionDuration` (default 30
//!   days), below a kept checkpoint only;
//! - `stats`: `numRecords` and min/max/null counts of the ID and time
//!   columns ([`StatsCollector`]), never of a body column;
//! - `schema`: [`TableKind`] and the `schemaString` of each table.
//!
//! **Protocol features implemented.** Reader version 1 and writer version
//! 2, without table features: JSON commits, `add`/`remove` with partition
//! values, `stats`, `dataChange`, `commitInfo` (with this tool's `runId`),
//! classic single-file checkpoints with `_last_checkpoint`, tombstones kept
//! in checkpoints for `delta.deletedFileRetentionDuration` (default one
//! week), log cleanup. Not implemented (and never produced by this tool):
//! deletion vectors, column mapping, change data feed, `txn` application
//! versions (read and dropped), multi-part and V2 checkpoints (refused on
//! read), `appendOnly` and invariants (writer 2 features this tool never
//! sets), in-commit timestamps. A table that asks for a newer reader is
//! refused with a clear error; one upgraded past writer 2 by another writer
//! gets no checkpoint from this tool (a commit does not re-read the
//! protocol: that would cost the checkpoint's read); a malformed commit, hint or checkpoint is an
//! [`crate::Error::Corrupt`] naming the file (and the line).
//!
//! **Costs.** A commit reads `_last_checkpoint` and probes O(log n) commit
//! names for the n commits since the checkpoint; it lists nothing and reads
//! no commit file unless it lost a race. A checkpoint (one commit in a
//! hundred) reads the previous checkpoint and the commits since: O(live
//! files). Cleanup lists the log once per checkpoint and reads the commits
//! it considers expiring (a file's age is its `commitInfo.timestamp`: the
//! storage seam reports no modification times, and a bucket copy would
//! reset them).
//!
//! **Concurrency.** Separate processes (shards) race only through the
//! create-only put. Shards of a prefix share its tables
//! ([`crate::shard`]): each writes into its own folder of the table
//! (`shard-K/date=D/...`, the partition column stays `date`) and names it
//! in `commitInfo.part` ([`CommitInfo::part`]). Within one process the puts of log files are serialised
//! (a folder stages a new file under a name made of its key and the process
//! ID, which two threads would share).
//!
//! **Dependency decision (issue 19 §8).** Checked 2026-12-03 in a scratch
//! crate with this crate's dependencies, resolution only:
//! - `delta_kernel` 0.30.1 with `arrow-60`: one arrow, parquet,
//!   object_store and reqwest (no second version), but the feature turns on
//!   object_store's `aws`, `azure`, `gcp` and `http` features, which bring
//!   `aws-lc-rs` (`cargo tree -i aws-lc-rs` not empty); it also pulls the
//!   `arrow` umbrella (arrow-cast, -csv, -json, -ord, -row, -string,
//!   -arith: with parquet's default codecs, DEPENDENCIES.md measured them
//!   at +25% debug / +54% release CPU time) and new duplicates (itertools 0.14/0.15,
//!   phf 0.12/0.13, rand 0.9/0.10): 309 crates instead of 256. Its default
//!   engine writes through object_store, not through our storage seam (our
//!   create-only folder publication, our bucket wrapper). Fails "no aws-lc";
//!   no build timed.
//! - `deltalake` 1.1.2 (delta-rs, default features off): a second arrow
//!   (59.3), parquet (59.3), object_store (0.13) and reqwest (0.12), and
//!   aws-lc-rs: 358 crates. Fails.
//!
//! So the log is written here, on the storage seam, with the arrow-array
//! and parquet 60 crates already in the tree (plus arrow-buffer 60, also
//! already in it). delta-rs, Polars and DuckDB's `delta_scan` read the
//! result in the integration tests (`tests/integration/delta_log.rs`).

mod actions;
mod checkpoint;
mod cleanup;
mod commit;
mod log;
mod schema;
mod snapshot;
mod stats;

pub use actions::{
    Action, Add, ColumnStats, CommitInfo, FileStats, Format, Metadata, Protocol, Remove, Stats,
};
pub use commit::{CHECKPOINT_INTERVAL, Change, Committed, MAX_ATTEMPTS};
pub use schema::TableKind;
pub use snapshot::Snapshot;
pub use stats::{StatsCollector, format_micros};

use crate::error::Result;
use crate::storage::Storage;

/// One Delta table on the storage seam.
#[derive(Debug, Clone)]
pub struct Table {
    log: log::Log,
    kind: TableKind,
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Table {
    /// The table `kind` under the output root `storage`.
    pub fn new(storage: Storage, kind: TableKind) -> Table {
        let root = kind.root().to_owned();
        Table {
            log: log::Log { storage, root },
            kind,
        }
    }

    /// The output root the table lives under.
    pub fn storage(&self) -> &Storage {
        &self.log.storage
    }

    /// Which table.
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// The key (relative to the output root) of the commit file of `version`.
    pub fn commit_key(&self, version: u64) -> String {
        self.log.commit_key(version)
    }

    /// The key of the checkpoint file of `version`.
    pub fn checkpoint_key(&self, version: u64) -> String {
        self.log.checkpoint_key(version)
    }

    /// The newest version, `None` when the table has no log yet. Reads
    /// `_last_checkpoint` and probes the commits after it (O(log n) name
    /// look-ups for n commits since the checkpoint).
    pub fn latest_version(&self) -> Result<Option<u64>> {
        self.log.latest_version()
    }

    /// Writes `change` as the next version, create-only; version 0 also
    /// carries `protocol` and `metaData`. A version taken concurrently is
    /// retried at the next free one (at most [`MAX_ATTEMPTS`]), unless the
    /// winner removed a file this change removes too
    /// ([`crate::Error::DeltaConflict`]). A commit that crosses a multiple
    /// of [`CHECKPOINT_INTERVAL`], or removes that many files or more, then
    /// writes a checkpoint and cleans the log.
    ///
    /// The commit's `commitInfo.timestamp` is its time (the wall clock when
    /// it is unset): the tombstones' and the log's retentions are counted
    /// from it, on the same clock as the timestamps they compare (a
    /// commit's age is its `commitInfo.timestamp`, a tombstone's its
    /// `deletionTimestamp`, both dated by the runs).
    pub fn commit(&self, change: &Change) -> Result<Committed> {
        let now = match change.info.timestamp {
            t if t > 0 => t,
            _ => now_ms(),
        };
        commit::commit(&self.log, self.kind, change, now)
    }

    /// The table at `version` (the latest when `None`), replayed from the
    /// newest checkpoint at or before it; `None` when there is no table.
    /// Asking for a version the table does not have is bad input. The
    /// checkpoint's tombstones are not read (a reader needs its live files
    /// only): [`Snapshot::removed`] holds those of the commits after it.
    pub fn snapshot(&self, version: Option<u64>) -> Result<Option<Snapshot>> {
        snapshot::load(&self.log, version, checkpoint::Rows::Live)
    }

    /// The bytes and actions of the commit file of `version`; `None` when
    /// it is not there.
    pub fn read_commit(&self, version: u64) -> Result<Option<(Vec<u8>, Vec<Action>)>> {
        self.log.read_commit(version)
    }

    /// The versions whose commit files are present, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        Ok(self.log.list()?.commits)
    }

    /// The versions that have a checkpoint file, ascending.
    pub fn checkpoints(&self) -> Result<Vec<u64>> {
        Ok(self.log.list()?.checkpoints)
    }

    /// Writes the checkpoint of `version` now (normally done by
    /// [`Table::commit`]) and cleans the log up as of `now` (milliseconds).
    pub fn checkpoint_at(&self, version: u64, now: i64) -> Result<()> {
        commit::checkpoint_and_clean(&self.log, version, now)
    }
}

#[cfg(test)]
mod tests;
