//! The actions of a Delta commit file and of a checkpoint (Delta protocol,
//! "Actions"), as this tool writes and reads them.
//!
//! A commit file is JSON Lines, one action per line, each an object with one
//! key naming the action (`{"add": {...}}`). Reading is tolerant as the
//! protocol asks: an action this tool does not know is kept as
//! [`Action::Other`], and unknown fields of known actions are ignored.
//! Writing is exact: the fields the protocol requires for reader version 1
//! and writer version 2, plus `stats` on `add`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Minimum value, maximum value and null count of one column of one file.
///
/// `min`/`max` are JSON values as they go into the `stats` string: strings
/// for string columns (compared as bytes), RFC 3339 strings with `Z` and
/// microseconds for timestamps; `Value::Null` when every value is null.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColumnStats {
    /// The smallest non-null value.
    pub min: serde_json::Value,
    /// The largest non-null value.
    pub max: serde_json::Value,
    /// Null values.
    pub null_count: u64,
}

/// The `stats` of an `add`: rows and per-column statistics (ID and time
/// columns only: never a body column).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileStats {
    /// Rows in the file.
    pub num_records: u64,
    /// Statistics by column name.
    pub columns: BTreeMap<String, ColumnStats>,
}

/// A data file added to the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Add {
    /// Path relative to the table root: `date=YYYY-MM-DD/part-<run>-<n>.parquet`.
    pub path: String,
    /// The value of the partition column `date`.
    pub date: String,
    /// Size in bytes.
    pub size: u64,
    /// Milliseconds since the epoch when the file was written.
    pub modification_time: i64,
    /// `false` when the rows were only rearranged (compaction).
    pub data_change: bool,
    /// Statistics for data skipping.
    pub stats: Option<FileStats>,
}

/// A data file removed from the table (a tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Remove {
    /// Path relative to the table root, as its `add` named it.
    pub path: String,
    /// The value of the partition column `date`.
    pub date: String,
    /// Size in bytes.
    pub size: u64,
    /// Milliseconds since the epoch of the removal.
    pub deletion_timestamp: i64,
    /// `false` when the rows were only rearranged (compaction).
    pub data_change: bool,
}

/// The `commitInfo` of a commit: which run made it, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitInfo {
    /// The run ID (also in the run's manifest).
    pub run_id: String,
    /// `WRITE`, `OPTIMIZE`, `DELETE` or `CONVERT`.
    pub operation: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// The `protocol` action: the reader and writer versions a client needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Protocol {
    /// Minimum reader version (1 for the tables this tool writes).
    pub min_reader_version: i32,
    /// Minimum writer version (2 for the tables this tool writes).
    pub min_writer_version: i32,
}

/// The `metaData` action: the table's identity, schema and partitioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// A UUID fixed at creation.
    pub id: String,
    /// Always `{"provider": "parquet", "options": {}}`.
    #[serde(default)]
    pub format: Format,
    /// The schema, as the protocol's JSON struct type, in a string.
    pub schema_string: String,
    /// `["date"]`.
    #[serde(default)]
    pub partition_columns: Vec<String>,
    /// Table properties (`delta.logRetentionDuration`, ...).
    #[serde(default)]
    pub configuration: BTreeMap<String, String>,
    /// Milliseconds since the epoch of the creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
}

/// The file format of a table's data files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    /// `parquet`.
    pub provider: String,
    /// Format options (none).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Default for Format {
    fn default() -> Format {
        Format {
            provider: "parquet".to_owned(),
            options: BTreeMap::new(),
        }
    }
}

/// One action of a commit file or checkpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// `add`.
    Add(Add),
    /// `remove`.
    Remove(Remove),
    /// `commitInfo` (only the fields this tool writes are kept).
    CommitInfo(CommitInfo),
    /// `protocol`.
    Protocol(Protocol),
    /// `metaData`.
    Metadata(Metadata),
    /// Any other action (`txn`, `cdc`, `domainMetadata`, ...), kept as read.
    Other(serde_json::Value),
}
