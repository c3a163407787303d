//! Delta Lake tables over the Parquet outputs: `parquet/messages` and
//! `parquet/sends` each carry a `_delta_log/`, so that Spark, Databricks,
//! Snowflake, BigQuery, delta-rs, Polars and DuckDB read them as tables with
//! atomic snapshots, history, time travel and file statistics.
//!
//! (Dependency decision and protocol features: filled in below as they are
//! settled.)

mod actions;
mod stats;

use std::collections::BTreeMap;

pub use actions::{
    Action, Add, ColumnStats, CommitInfo, FileStats, Format, Metadata, Protocol, Remove,
};
pub use stats::StatsCollector;

use crate::error::Result;
use crate::storage::Storage;

/// Which of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableKind {
    /// `parquet/messages`: history rows.
    Messages,
    /// `parquet/sends`: outbound sends.
    Sends,
}

impl TableKind {
    /// Both tables.
    pub const ALL: [TableKind; 2] = [TableKind::Messages, TableKind::Sends];

    /// The table root, relative to the output root.
    pub fn root(self) -> &'static str {
        match self {
            TableKind::Messages => "parquet/messages",
            TableKind::Sends => "parquet/sends",
        }
    }

    /// The short name (`messages`, `sends`), as manifests name the table.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Messages => "messages",
            TableKind::Sends => "sends",
        }
    }

    /// The columns that get statistics: the ID and time columns, never a
    /// body column.
    pub fn stats_columns(self) -> &'static [&'static str] {
        match self {
            TableKind::Messages => &["created_at", "message_id", "conversation_user_id"],
            TableKind::Sends => &["sent_at", "message_id", "recipient_user_id"],
        }
    }
}

/// What one run changes in a table: one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Who and how (becomes `commitInfo`).
    pub info: CommitInfo,
    /// Files added.
    pub adds: Vec<Add>,
    /// Files removed.
    pub removes: Vec<Remove>,
}

impl Change {
    /// The change that undoes this one (adds become removes and removes
    /// adds), made by `info`: the repair of a run whose commit the audit
    /// chain does not hold. A re-added file gets its statistics back from
    /// `known` (the snapshot before the commit being undone) when they are
    /// there.
    pub fn inverse(&self, info: CommitInfo, known: Option<&Snapshot>) -> Change {
        let _ = (info, known);
        todo!()
    }
}

/// A commit that was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The table version it produced.
    pub version: u64,
    /// SHA-256 (hex) of the commit file's bytes.
    pub sha256: String,
}

/// The state of a table at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The version.
    pub version: u64,
    /// The live data files, by path relative to the table root.
    pub files: BTreeMap<String, Add>,
    /// Tombstones still within the deleted-file retention, by path.
    pub removed: BTreeMap<String, Remove>,
    /// The protocol in force.
    pub protocol: Protocol,
    /// The table metadata in force.
    pub metadata: Metadata,
}

/// One Delta table on the storage seam.
#[derive(Debug, Clone)]
pub struct Table {
    storage: Storage,
    kind: TableKind,
}

impl Table {
    /// The table `kind` under the output root `storage`.
    pub fn new(storage: Storage, kind: TableKind) -> Table {
        Table { storage, kind }
    }

    /// The output root the table lives under.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Which table.
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// The key (relative to the output root) of the commit file of `version`.
    pub fn commit_key(&self, version: u64) -> String {
        format!("{}/_delta_log/{version:020}.json", self.kind.root())
    }

    /// The newest version, `None` when the table has no log yet. Reads
    /// `_last_checkpoint` and probes the commits after it.
    pub fn latest_version(&self) -> Result<Option<u64>> {
        todo!()
    }

    /// Writes `change` as the next version, create-only; version 0 also
    /// carries `protocol` and `metaData`. A version taken concurrently is
    /// retried at the next free one (bounded). A checkpoint follows when the
    /// version crosses a multiple of 100, then log cleanup.
    pub fn commit(&self, change: &Change) -> Result<Committed> {
        let _ = change;
        todo!()
    }

    /// The table at `version` (the latest when `None`), replayed from the
    /// newest checkpoint at or before it; `None` when there is no table.
    pub fn snapshot(&self, version: Option<u64>) -> Result<Option<Snapshot>> {
        let _ = version;
        todo!()
    }

    /// The bytes and actions of the commit file of `version`; `None` when
    /// it is not there.
    pub fn read_commit(&self, version: u64) -> Result<Option<(Vec<u8>, Vec<Action>)>> {
        let _ = version;
        todo!()
    }

    /// The versions whose commit files are present, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        todo!()
    }

    /// The versions that have a checkpoint file, ascending.
    pub fn checkpoints(&self) -> Result<Vec<u64>> {
        todo!()
    }
}
