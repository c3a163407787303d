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

/// The `stats` of an `add` as the log holds them: the JSON string, parsed
/// only when a caller asks ([`Stats::parse`]). Opening a table decodes one
/// `add` per live file, and most readers never look at the statistics, so
/// they are carried as read (and written forward as read by a checkpoint).
#[derive(Debug, Clone)]
pub struct Stats(String);

impl Stats {
    /// A `stats` string as read from the log.
    pub fn from_json(json: String) -> Stats {
        Stats(json)
    }

    /// The JSON string, as the log holds it.
    pub fn json(&self) -> &str {
        &self.0
    }

    /// The statistics; `None` when the string is not one this tool can use
    /// (statistics only ever help skipping, so they are never an error).
    pub fn parse(&self) -> Option<FileStats> {
        FileStats::from_json(&self.0)
    }
}

impl From<&FileStats> for Stats {
    fn from(stats: &FileStats) -> Stats {
        Stats(stats.to_json())
    }
}

impl From<FileStats> for Stats {
    fn from(stats: FileStats) -> Stats {
        Stats::from(&stats)
    }
}

/// Equal when they say the same: the same string, or the same statistics
/// however their JSON is spelled.
impl PartialEq for Stats {
    fn eq(&self, other: &Stats) -> bool {
        self.0 == other.0 || self.parse() == other.parse()
    }
}

/// A data file added to the table. Serialised as the log spells an `add`:
/// `path` as a URI reference, `date` as `partitionValues`, `stats` as a
/// JSON string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Add {
    /// Path relative to the table root: `date=YYYY-MM-DD/part-<run>-<n>.parquet`.
    #[serde(with = "uri_path")]
    pub path: String,
    /// The value of the partition column `date`.
    #[serde(rename = "partitionValues", default, with = "date_partition")]
    pub date: String,
    /// Size in bytes.
    pub size: u64,
    /// Milliseconds since the epoch when the file was written.
    pub modification_time: i64,
    /// `false` when the rows were only rearranged (compaction).
    pub data_change: bool,
    /// Statistics for data skipping.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "stats_string"
    )]
    pub stats: Option<Stats>,
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
    /// The folder under the table root that holds the files of the output
    /// root that made the commit, when roots share the table (`shard-K`,
    /// a shard of a prefix with one table per prefix); `None` otherwise.
    pub part: Option<String>,
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

/// Characters of a path kept as they are in `add.path`: the protocol stores
/// paths as URI references, so everything else is percent-encoded.
const PATH_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/')
    .remove(b'=');

/// `remove` as the log spells it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemoveWire {
    path: String,
    #[serde(default)]
    deletion_timestamp: Option<i64>,
    data_change: bool,
    #[serde(default)]
    extended_file_metadata: Option<bool>,
    #[serde(default)]
    partition_values: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    size: Option<u64>,
}

/// `commitInfo` as this tool writes it; readers ignore what they do not
/// know, and so does this one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitInfoWire {
    #[serde(default)]
    timestamp: i64,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    operation_parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engine_info: Option<String>,
    /// The run that made the commit (a field of this tool's own).
    #[serde(default)]
    run_id: String,
    /// The shard's folder of the root that made it (this tool's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    part: Option<String>,
}

/// The `stats` string of an `add`, parsed.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatsWire {
    #[serde(default)]
    num_records: u64,
    #[serde(default)]
    min_values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    max_values: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    null_count: BTreeMap<String, serde_json::Value>,
}

impl FileStats {
    /// The `stats` JSON string of the protocol: `numRecords`, `minValues`,
    /// `maxValues`, `nullCount` (a column with no non-null value has only
    /// its null count).
    pub fn to_json(&self) -> String {
        let mut wire = StatsWire {
            num_records: self.num_records,
            ..StatsWire::default()
        };
        for (name, column) in &self.columns {
            if !column.min.is_null() {
                wire.min_values.insert(name.clone(), column.min.clone());
            }
            if !column.max.is_null() {
                wire.max_values.insert(name.clone(), column.max.clone());
            }
            wire.null_count
                .insert(name.clone(), serde_json::Value::from(column.null_count));
        }
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Reads a `stats` string; `None` when it is not one this tool can use
    /// (statistics only ever help skipping, so they are never an error).
    pub fn from_json(text: &str) -> Option<FileStats> {
        let wire: StatsWire = serde_json::from_str(text).ok()?;
        let mut columns: BTreeMap<String, ColumnStats> = BTreeMap::new();
        for (name, count) in wire.null_count {
            columns.entry(name).or_default().null_count = count.as_u64().unwrap_or(0);
        }
        for (name, value) in wire.min_values {
            columns.entry(name).or_default().min = value;
        }
        for (name, value) in wire.max_values {
            columns.entry(name).or_default().max = value;
        }
        Some(FileStats {
            num_records: wire.num_records,
            columns,
        })
    }
}

fn partition_values(date: &str) -> BTreeMap<String, Option<String>> {
    BTreeMap::from([("date".to_owned(), Some(date.to_owned()))])
}

fn date_of(values: &BTreeMap<String, Option<String>>) -> String {
    values.get("date").cloned().flatten().unwrap_or_default()
}

/// A path as the log stores it (a URI reference).
pub(crate) fn encode_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, PATH_ESCAPED).to_string()
}

/// A path of the log as a key relative to the table root.
pub(crate) fn decode_path(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

impl Add {
    /// The `remove` that takes this file out at `deletion_timestamp`.
    pub fn to_remove(&self, deletion_timestamp: i64, data_change: bool) -> Remove {
        Remove {
            path: self.path.clone(),
            date: self.date.clone(),
            size: self.size,
            deletion_timestamp,
            data_change,
        }
    }
}

impl Remove {
    /// The `add` that puts this file back (without statistics: a remove
    /// does not carry them).
    pub fn to_add(&self, modification_time: i64, data_change: bool) -> Add {
        Add {
            path: self.path.clone(),
            date: self.date.clone(),
            size: self.size,
            modification_time,
            data_change,
            stats: None,
        }
    }
}

impl Action {
    /// The action as one line of a commit file (no newline).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Action::Add(add) => json!({ "add": add }),
            Action::Remove(remove) => json!({ "remove": RemoveWire {
                path: encode_path(&remove.path),
                deletion_timestamp: Some(remove.deletion_timestamp),
                data_change: remove.data_change,
                extended_file_metadata: Some(true),
                partition_values: Some(partition_values(&remove.date)),
                size: Some(remove.size),
            }}),
            Action::CommitInfo(info) => json!({ "commitInfo": commit_info_wire(info) }),
            Action::Protocol(protocol) => json!({ "protocol": protocol }),
            Action::Metadata(metadata) => json!({ "metaData": metadata }),
            Action::Other(value) => value.clone(),
        }
    }

    /// Reads one line of a commit file. `Err` holds what is wrong (the
    /// shape, never a value).
    ///
    /// The action's body is deserialized straight from the line into its
    /// type, with no JSON tree in between: replaying a table parses every
    /// commit after its checkpoint.
    pub fn parse(line: &[u8]) -> std::result::Result<Action, String> {
        use serde::Deserializer as _;
        let mut state = LineState::default();
        let mut de = serde_json::Deserializer::from_slice(line);
        let action = de
            .deserialize_map(LineVisitor(&mut state))
            .and_then(|action| de.end().map(|()| action));
        action.map_err(|e| {
            let category = crate::error::json_error_category(&e);
            match (state.problem, state.body_of) {
                (Some(problem), _) => problem.to_owned(),
                (None, Some(name)) => format!("{name}: {category}"),
                (None, None) => category.to_owned(),
            }
        })
    }
}

/// What went wrong reading a line, besides what the JSON error says.
#[derive(Default)]
struct LineState {
    /// The action whose body was being read.
    body_of: Option<String>,
    /// A line that is JSON but not one action.
    problem: Option<&'static str>,
}

/// Reads a line's one key and its body as that action.
struct LineVisitor<'s>(&'s mut LineState);

impl LineVisitor<'_> {
    fn problem<E: serde::de::Error>(self, problem: &'static str) -> E {
        self.0.problem = Some(problem);
        E::custom(problem)
    }
}

impl<'de> serde::de::Visitor<'de> for LineVisitor<'_> {
    type Value = Action;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("one Delta action")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Action, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(self.problem("an empty action"));
        };
        let name: &str = self.0.body_of.insert(name);
        let action = match name {
            "add" => Action::Add(map.next_value()?),
            "remove" => Action::Remove(remove_from(map.next_value()?)),
            "commitInfo" => {
                let wire: CommitInfoWire = map.next_value()?;
                Action::CommitInfo(CommitInfo {
                    run_id: wire.run_id,
                    operation: wire.operation,
                    timestamp: wire.timestamp,
                    part: wire.part,
                })
            }
            "protocol" => Action::Protocol(map.next_value()?),
            "metaData" => Action::Metadata(map.next_value()?),
            _ => {
                let body: serde_json::Value = map.next_value()?;
                Action::Other(serde_json::Value::Object(serde_json::Map::from_iter([(
                    name.to_owned(),
                    body,
                )])))
            }
        };
        self.0.body_of = None;
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(self.problem("an action line with more than one action"));
        }
        Ok(action)
    }
}

fn commit_info_wire(info: &CommitInfo) -> CommitInfoWire {
    let mut parameters = BTreeMap::new();
    if info.operation == "WRITE" {
        parameters.insert("mode".to_owned(), "Append".to_owned());
    }
    CommitInfoWire {
        timestamp: info.timestamp,
        operation: info.operation.clone(),
        operation_parameters: parameters,
        engine_info: Some(concat!("xquik-dm/", env!("CARGO_PKG_VERSION")).to_owned()),
        run_id: info.run_id.clone(),
        part: info.part.clone(),
    }
}

fn remove_from(wire: RemoveWire) -> Remove {
    Remove {
        path: decode_path(&wire.path),
        date: wire
            .partition_values
            .as_ref()
            .map(date_of)
            .unwrap_or_default(),
        size: wire.size.unwrap_or(0),
        deletion_timestamp: wire.deletion_timestamp.unwrap_or(0),
        data_change: wire.data_change,
    }
}

/// `add.path`: a URI reference in the log, a plain relative key here.
mod uri_path {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(path: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode_path(path))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(super::decode_path(&String::deserialize(d)?))
    }
}

/// `add.partitionValues`: `{"date": "..."}` in the log, the date here.
mod date_partition {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(date: &str, s: S) -> Result<S::Ok, S::Error> {
        super::partition_values(date).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(super::date_of(&BTreeMap::deserialize(d)?))
    }
}

/// `add.stats`: a JSON document in a string, kept as it is (see [`Stats`]).
mod stats_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Stats;

    pub fn serialize<S: Serializer>(stats: &Option<Stats>, s: S) -> Result<S::Ok, S::Error> {
        match stats {
            Some(stats) => s.serialize_str(stats.json()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Stats>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Stats::from_json))
    }
}
