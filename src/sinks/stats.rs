//! Per-file column statistics of a Parquet file: its row count and, for
//! the ID and time columns a table names ([`super::parquet::Columns::stats_columns`]),
//! the minimum, maximum and number of nulls. They travel with the file
//! ([`super::WrittenFile::stats`]) to the run's Delta commit, where every
//! `add` carries them so that readers skip files by `created_at`.
//!
//! They are gathered from each batch on the file's encoder thread, beside
//! the encoding, so the writer that a sync waits on does no more work per
//! row. No body column is ever named here: bodies never enter the log.
//!
//! Strings compare as bytes (the Delta protocol's order for `string`).
//! Timestamps are written as RFC 3339 UTC with milliseconds, the minimum
//! rounded down and the maximum up: a reader that parses milliseconds
//! (Spark, delta-rs) then never skips a file holding a row in its filter.

use std::collections::BTreeMap;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use serde::{Deserialize, Serialize};

/// What a file's statistics say of one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// The smallest value (`null` when every value is null).
    pub min: serde_json::Value,
    /// The largest value (`null` when every value is null).
    pub max: serde_json::Value,
    /// How many values are null.
    pub null_count: u64,
}

/// A file's statistics: its rows and its ID and time columns' ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    /// Rows in the file.
    pub num_records: u64,
    /// By column name.
    pub columns: BTreeMap<String, ColumnStats>,
}

/// The running range of one column.
#[derive(Debug)]
enum Extent {
    Text(Option<(String, String)>),
    Micros(Option<(i64, i64)>),
}

/// Gathers [`FileStats`] batch by batch.
#[derive(Debug)]
pub struct StatsCollector {
    rows: u64,
    /// (column index in the batch, name, range, nulls).
    columns: Vec<(usize, &'static str, Extent, u64)>,
}

impl StatsCollector {
    /// A collector of the columns `names` of `schema` (a name the schema
    /// does not have, or of a type without statistics, is left out).
    pub fn new(schema: &arrow_schema::Schema, names: &[&'static str]) -> StatsCollector {
        use arrow_schema::DataType;
        let columns = names
            .iter()
            .filter_map(|name| {
                let index = schema.index_of(name).ok()?;
                let extent = match schema.field(index).data_type() {
                    DataType::Utf8 => Extent::Text(None),
                    DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, _) => {
                        Extent::Micros(None)
                    }
                    _ => return None,
                };
                Some((index, *name, extent, 0))
            })
            .collect();
        StatsCollector { rows: 0, columns }
    }

    /// Takes a batch's rows into the ranges.
    pub fn add(&mut self, batch: &RecordBatch) {
        self.rows += batch.num_rows() as u64;
        for (index, _, extent, nulls) in &mut self.columns {
            let Some(column) = batch.columns().get(*index) else {
                continue;
            };
            *nulls += column.null_count() as u64;
            match extent {
                Extent::Text(range) => {
                    if let Some(array) = column.as_any().downcast_ref::<StringArray>() {
                        widen_text(range, array);
                    }
                }
                Extent::Micros(range) => {
                    if let Some(array) = column.as_any().downcast_ref::<TimestampMicrosecondArray>()
                    {
                        widen_micros(range, array);
                    }
                }
            }
        }
    }

    /// The statistics of everything added.
    pub fn finish(self) -> FileStats {
        let columns = self
            .columns
            .into_iter()
            .map(|(_, name, extent, null_count)| {
                let (min, max) = match extent {
                    Extent::Text(Some((min, max))) => (min.into(), max.into()),
                    Extent::Micros(Some((min, max))) => (millis(min, false), millis(max, true)),
                    Extent::Text(None) | Extent::Micros(None) => {
                        (serde_json::Value::Null, serde_json::Value::Null)
                    }
                };
                let stats = ColumnStats {
                    min,
                    max,
                    null_count,
                };
                (name.to_owned(), stats)
            })
            .collect();
        FileStats {
            num_records: self.rows,
            columns,
        }
    }
}

/// Widens `range` to the strings of `array`: the batch's extremes are found
/// by reference, and at most two strings are copied per batch.
fn widen_text(range: &mut Option<(String, String)>, array: &StringArray) {
    let mut batch: Option<(&str, &str)> = None;
    for value in array.iter().flatten() {
        batch = Some(match batch {
            None => (value, value),
            Some((lo, hi)) => (
                if value.as_bytes() < lo.as_bytes() { value } else { lo },
                if value.as_bytes() > hi.as_bytes() { value } else { hi },
            ),
        });
    }
    let Some((lo, hi)) = batch else {
        return;
    };
    match range {
        None => *range = Some((lo.to_owned(), hi.to_owned())),
        Some((min, max)) => {
            if lo.as_bytes() < min.as_bytes() {
                *min = lo.to_owned();
            }
            if hi.as_bytes() > max.as_bytes() {
                *max = hi.to_owned();
            }
        }
    }
}

/// Widens `range` to the timestamps of `array`.
fn widen_micros(range: &mut Option<(i64, i64)>, array: &TimestampMicrosecondArray) {
    for value in array.iter().flatten() {
        *range = Some(match *range {
            None => (value, value),
            Some((lo, hi)) => (lo.min(value), hi.max(value)),
        });
    }
}

/// `micros` since the epoch as RFC 3339 UTC with milliseconds, rounded
/// down, or up when `ceil`.
fn millis(micros: i64, ceil: bool) -> serde_json::Value {
    let ms = if ceil {
        micros.div_euclid(1000) + i64::from(micros.rem_euclid(1000) != 0)
    } else {
        micros.div_euclid(1000)
    };
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into()
        })
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("text", DataType::Utf8, true),
        ])
    }

    fn batch(ids: &[&str], at: &[Option<i64>]) -> RecordBatch {
        let texts: Vec<Option<&str>> = ids.iter().map(|_| Some("body")).collect();
        RecordBatch::try_new(
            Arc::new(schema()),
            vec![
                Arc::new(StringArray::from(ids.to_vec())),
                Arc::new(TimestampMicrosecondArray::from(at.to_vec()).with_timezone("UTC")),
                Arc::new(StringArray::from(texts)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn ranges_span_every_batch_and_name_only_the_chosen_columns() {
        let mut c = StatsCollector::new(&schema(), &["id", "at", "missing"]);
        c.add(&batch(&["19", "2", "100"], &[Some(1_500), None, Some(2_000_001)]));
        c.add(&batch(&["3", "05"], &[None, Some(-1)]));
        let stats = c.finish();
        assert_eq!(stats.num_records, 5);
        assert_eq!(stats.columns.len(), 2, "no body column, no unknown one");
        let id = &stats.columns["id"];
        // Bytes order: "05" < "100" < "19" < "2" < "3".
        assert_eq!((id.min.as_str(), id.max.as_str()), (Some("05"), Some("3")));
        assert_eq!(id.null_count, 0);
        let at = &stats.columns["at"];
        assert_eq!(at.min, "1969-12-31T23:59:59.999Z");
        assert_eq!(at.max, "1970-01-01T00:00:02.001Z");
        assert_eq!(at.null_count, 2);
    }

    #[test]
    fn an_all_null_column_has_null_bounds() {
        let mut c = StatsCollector::new(&schema(), &["at"]);
        c.add(&batch(&["1"], &[None]));
        let at = &c.finish().columns["at"];
        assert!(at.min.is_null() && at.max.is_null());
        assert_eq!(at.null_count, 1);
    }
}
