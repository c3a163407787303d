//! Delta Lake tables over the Parquet outputs: `parquet/messages` and
//! `parquet/sends` each carry a `_delta_log/`, so that Spark, Databricks,
//! Snowflake, BigQuery, delta-rs, Polars and DuckDB read them as tables with
//! atomic snapshots, history, time travel and file statistics.
//!
//! (Dependency decision and protocol features: filled in below as they are
//! settled.)

mod actions;
mod checkpoint;
mod cleanup;
mod commit;
mod log;
mod schema;
mod snapshot;
mod stats;

pub use actions::{
    Action, Add, ColumnStats, CommitInfo, FileStats, Format, Metadata, Protocol, Remove,
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
    /// of [`CHECKPOINT_INTERVAL`] then writes a checkpoint and cleans the log.
    pub fn commit(&self, change: &Change) -> Result<Committed> {
        commit::commit(&self.log, self.kind, change, now_ms())
    }

    /// The table at `version` (the latest when `None`), replayed from the
    /// newest checkpoint at or before it; `None` when there is no table.
    /// Asking for a version the table does not have is bad input.
    pub fn snapshot(&self, version: Option<u64>) -> Result<Option<Snapshot>> {
        snapshot::load(&self.log, version)
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
