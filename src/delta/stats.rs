//! File statistics for data skipping: row count and, for the ID and time
//! columns of a table ([`super::TableKind::stats_columns`]), min, max and
//! null count, gathered from the record batches as a file is written.
//!
//! Strings compare as bytes (what Delta readers assume for `string`
//! statistics); timestamps are written as RFC 3339 with `Z` and
//! microseconds, so that a maximum is never rounded below a real value.

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use super::actions::{ColumnStats, FileStats};
use super::schema::TableKind;
use crate::error::{Error, Result};

/// Gathers the [`FileStats`] of one file from its batches.
#[derive(Debug, Clone)]
pub struct StatsCollector {
    kind: TableKind,
    rows: u64,
    columns: Vec<Running>,
}

/// The running min, max and null count of one column.
#[derive(Debug, Clone)]
struct Running {
    name: &'static str,
    min: Option<Value>,
    max: Option<Value>,
    nulls: u64,
}

/// A column value as it is compared: strings by bytes, timestamps as
/// microseconds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Text(String),
    Micros(i64),
}

impl Running {
    fn take(&mut self, value: Value) {
        if self.min.as_ref().is_none_or(|m| value < *m) {
            self.min = Some(value.clone());
        }
        if self.max.as_ref().is_none_or(|m| value > *m) {
            self.max = Some(value);
        }
    }

    /// Folds in one column of a batch; `None` when the column's type is not
    /// one statistics are kept for.
    fn add(&mut self, array: &dyn Array) -> Option<()> {
        self.nulls += array.null_count() as u64;
        match array.data_type() {
            DataType::Utf8 => {
                let strings = array.as_string_opt::<i32>()?;
                let (min, max) = strings.iter().flatten().fold((None, None), min_max);
                if let (Some(min), Some(max)) = (min, max) {
                    self.take(Value::Text(min.to_owned()));
                    self.take(Value::Text(max.to_owned()));
                }
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let times = array.as_primitive_opt::<TimestampMicrosecondType>()?;
                let (min, max) = times.iter().flatten().fold((None, None), min_max);
                if let (Some(min), Some(max)) = (min, max) {
                    self.take(Value::Micros(min));
                    self.take(Value::Micros(max));
                }
            }
            _ => return None,
        }
        Some(())
    }
}

/// One step of a min/max fold, without cloning strings on the way.
fn min_max<T: PartialOrd + Copy>(acc: (Option<T>, Option<T>), v: T) -> (Option<T>, Option<T>) {
    let min = match acc.0 {
        Some(m) if m <= v => Some(m),
        _ => Some(v),
    };
    let max = match acc.1 {
        Some(m) if m >= v => Some(m),
        _ => Some(v),
    };
    (min, max)
}

impl Value {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Text(text) => serde_json::Value::from(text.as_str()),
            Value::Micros(micros) => serde_json::Value::from(format_micros(*micros)),
        }
    }
}

/// A UTC timestamp in microseconds as the statistics spell it
/// (`2026-12-03T10:00:00.123456Z`).
pub fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

impl StatsCollector {
    /// Empty statistics for a file of table `kind`.
    pub fn new(kind: TableKind) -> StatsCollector {
        let columns = kind
            .stats_columns()
            .iter()
            .map(|&name| Running {
                name,
                min: None,
                max: None,
                nulls: 0,
            })
            .collect();
        StatsCollector {
            kind,
            rows: 0,
            columns,
        }
    }

    /// Takes in the rows of `batch`, a batch of the table's schema; a batch
    /// without a statistics column, or with one of another type, is refused.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        for running in &mut self.columns {
            let added = batch
                .column_by_name(running.name)
                .and_then(|array| running.add(array.as_ref()));
            if added.is_none() {
                return Err(Error::invalid(
                    "delta statistics",
                    format!(
                        "a batch of the {} table without a string or timestamp column {}",
                        self.kind.name(),
                        running.name
                    ),
                ));
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// The statistics so far.
    pub fn finish(&self) -> FileStats {
        let columns = self
            .columns
            .iter()
            .map(|running| {
                let json =
                    |v: &Option<Value>| v.as_ref().map_or(serde_json::Value::Null, Value::to_json);
                let stats = ColumnStats {
                    min: json(&running.min),
                    max: json(&running.max),
                    null_count: running.nulls,
                };
                (running.name.to_owned(), stats)
            })
            .collect();
        FileStats {
            num_records: self.rows,
            columns,
        }
    }
}
