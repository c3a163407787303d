//! Reading a classic checkpoint back into actions: `add`, `remove`,
//! `metaData` and `protocol` rows (other columns, such as `txn`, are not
//! needed for a snapshot and are skipped). A file that is not a readable
//! checkpoint is an error naming it.

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{
    Array, BooleanArray, Int64Array, MapArray, RecordBatch, StringArray, StructArray,
};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::RowGroupMetaData;
use parquet::schema::types::SchemaDescriptor;

use crate::delta::actions::{Action, Add, Format, Metadata, Protocol, Remove, Stats};
use crate::delta::log::Log;
use crate::error::Result;

/// A typed view on one struct column of a checkpoint batch.
struct Column<'a> {
    array: &'a StructArray,
}

impl<'a> Column<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Option<Column<'a>> {
        batch
            .column_by_name(name)?
            .as_struct_opt()
            .map(|array| Column { array })
    }

    fn valid(&self, row: usize) -> bool {
        self.array.is_valid(row)
    }

    fn child(&self, name: &str) -> Option<&'a dyn Array> {
        self.array.column_by_name(name).map(|a| a.as_ref())
    }

    fn string(&self, name: &str, row: usize) -> Option<String> {
        let strings = self.child(name)?.as_string_opt::<i32>()?;
        strings.is_valid(row).then(|| strings.value(row).to_owned())
    }

    fn int64(&self, name: &str, row: usize) -> Option<i64> {
        let ints = self.child(name)?.as_primitive_opt::<Int64Type>()?;
        ints.is_valid(row).then(|| ints.value(row))
    }

    fn int32(&self, name: &str, row: usize) -> Option<i32> {
        let ints = self.child(name)?.as_primitive_opt::<Int32Type>()?;
        ints.is_valid(row).then(|| ints.value(row))
    }

    fn boolean(&self, name: &str, row: usize) -> Option<bool> {
        let bools = self.child(name)?.as_boolean_opt()?;
        bools.is_valid(row).then(|| bools.value(row))
    }

    fn map(&self, name: &str, row: usize) -> BTreeMap<String, String> {
        let Some(map) = self.child(name).and_then(|a| a.as_map_opt()) else {
            return BTreeMap::new();
        };
        map_row(map, row)
    }

    /// The partition value of `date` in row `row`.
    fn date(&self, row: usize) -> String {
        partition_date(
            self.child("partitionValues").and_then(|a| a.as_map_opt()),
            row,
        )
    }

    fn strings(&self, name: &str, row: usize) -> Vec<String> {
        let Some(list) = self.child(name).and_then(|a| a.as_list_opt::<i32>()) else {
            return Vec::new();
        };
        if !list.is_valid(row) {
            return Vec::new();
        }
        let values = list.value(row);
        let Some(strings) = values.as_string_opt::<i32>() else {
            return Vec::new();
        };
        strings.iter().flatten().map(str::to_owned).collect()
    }

    fn nested(&self, name: &str) -> Option<Column<'a>> {
        self.child(name)?
            .as_struct_opt()
            .map(|array| Column { array })
    }
}

/// The entries of row `row` of a string map (none when the row is null or
/// the map is not of strings), borrowed from the batch.
fn map_entries(map: &MapArray, row: usize) -> impl Iterator<Item = (&str, Option<&str>)> {
    let strings = (map.keys().as_string_opt::<i32>()).zip(map.values().as_string_opt::<i32>());
    let offsets = map.value_offsets();
    let bounds = offsets.get(row).zip(offsets.get(row + 1));
    let range = bounds
        .filter(|_| map.is_valid(row))
        .map_or(0..0, |(&start, &end)| {
            usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0)
        });
    strings.into_iter().flat_map(move |(keys, values)| {
        let value = move |i: usize| values.is_valid(i).then(|| values.value(i));
        range.clone().map(move |i| (keys.value(i), value(i)))
    })
}

/// The `date` of an action's `partitionValues` in row `row` (empty when
/// it has none).
fn partition_date(partition: Option<&MapArray>, row: usize) -> String {
    partition
        .and_then(|map| map_value(map, row, "date"))
        .unwrap_or_default()
        .to_owned()
}

fn map_row(map: &MapArray, row: usize) -> BTreeMap<String, String> {
    map_entries(map, row)
        .filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned())))
        .collect()
}

/// The value of `key` in row `row` of a string map, without copying.
fn map_value<'a>(map: &'a MapArray, row: usize, key: &str) -> Option<&'a str> {
    map_entries(map, row).find(|(k, _)| *k == key)?.1
}

/// The `add` column of a batch, its children resolved once: opening a
/// table decodes one `add` per live file, so the per-row work is one
/// allocation for the path and one for the statistics string.
struct AddColumns<'a> {
    add: Column<'a>,
    path: Option<&'a StringArray>,
    partition: Option<&'a MapArray>,
    size: Option<&'a Int64Array>,
    modification_time: Option<&'a Int64Array>,
    data_change: Option<&'a BooleanArray>,
    stats: Option<&'a StringArray>,
}

impl<'a> AddColumns<'a> {
    fn of(add: Column<'a>) -> AddColumns<'a> {
        AddColumns {
            path: add.child("path").and_then(|a| a.as_string_opt::<i32>()),
            partition: add.child("partitionValues").and_then(|a| a.as_map_opt()),
            size: add
                .child("size")
                .and_then(|a| a.as_primitive_opt::<Int64Type>()),
            modification_time: add
                .child("modificationTime")
                .and_then(|a| a.as_primitive_opt::<Int64Type>()),
            data_change: add.child("dataChange").and_then(|a| a.as_boolean_opt()),
            stats: add.child("stats").and_then(|a| a.as_string_opt::<i32>()),
            add,
        }
    }

    fn at(&self, row: usize) -> Option<Add> {
        let valid = |a: &dyn Array| a.is_valid(row);
        let path = self.path.filter(|a| valid(*a))?.value(row);
        let size = self.size.filter(|a| valid(*a))?.value(row);
        Some(Add {
            path: crate::delta::actions::decode_path(path),
            date: partition_date(self.partition, row),
            size: u64::try_from(size).ok()?,
            modification_time: self.modification_time.filter(|a| valid(*a))?.value(row),
            data_change: self.data_change.filter(|a| valid(*a))?.value(row),
            stats: self
                .stats
                .filter(|a| valid(*a))
                .map(|a| Stats::from_json(a.value(row).to_owned())),
        })
    }
}

fn remove_at(remove: &Column<'_>, row: usize) -> Option<Remove> {
    Some(Remove {
        path: crate::delta::actions::decode_path(&remove.string("path", row)?),
        date: remove.date(row),
        size: remove
            .int64("size", row)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        deletion_timestamp: remove.int64("deletionTimestamp", row).unwrap_or(0),
        data_change: remove.boolean("dataChange", row).unwrap_or(false),
    })
}

fn metadata_at(meta: &Column<'_>, row: usize) -> Option<Metadata> {
    let format = meta.nested("format");
    Some(Metadata {
        id: meta.string("id", row)?,
        format: Format {
            provider: format
                .as_ref()
                .and_then(|f| f.string("provider", row))
                .unwrap_or_else(|| "parquet".to_owned()),
            options: format.map(|f| f.map("options", row)).unwrap_or_default(),
        },
        schema_string: meta.string("schemaString", row)?,
        partition_columns: meta.strings("partitionColumns", row),
        configuration: meta.map("configuration", row),
        created_time: meta.int64("createdTime", row),
    })
}

fn protocol_at(protocol: &Column<'_>, row: usize) -> Option<Protocol> {
    Some(Protocol {
        min_reader_version: protocol.int32("minReaderVersion", row)?,
        min_writer_version: protocol.int32("minWriterVersion", row)?,
    })
}

/// The actions of one batch; `Err` names the row that is malformed.
fn batch_actions(batch: &RecordBatch, actions: &mut Vec<Action>) -> Result<(), String> {
    let add = Column::of(batch, "add").map(AddColumns::of);
    let remove = Column::of(batch, "remove");
    let meta = Column::of(batch, "metaData");
    let protocol = Column::of(batch, "protocol");
    let bad = |what: &str, row: usize| format!("row {row}: a malformed {what} action");
    for row in 0..batch.num_rows() {
        if let Some(c) = add.as_ref().filter(|c| c.add.valid(row)) {
            actions.push(Action::Add(c.at(row).ok_or_else(|| bad("add", row))?));
        } else if let Some(c) = remove.as_ref().filter(|c| c.valid(row)) {
            actions.push(Action::Remove(
                remove_at(c, row).ok_or_else(|| bad("remove", row))?,
            ));
        } else if let Some(c) = meta.as_ref().filter(|c| c.valid(row)) {
            actions.push(Action::Metadata(
                metadata_at(c, row).ok_or_else(|| bad("metaData", row))?,
            ));
        } else if let Some(c) = protocol.as_ref().filter(|c| c.valid(row)) {
            actions.push(Action::Protocol(
                protocol_at(c, row).ok_or_else(|| bad("protocol", row))?,
            ));
        }
    }
    Ok(())
}

/// The top-level columns a reader needs: all but `remove` and `txn`.
fn live_columns(schema: &SchemaDescriptor) -> ProjectionMask {
    let fields = schema.root_schema().get_fields();
    let wanted = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| !matches!(f.name(), "remove" | "txn"))
        .map(|(i, _)| i);
    ProjectionMask::roots(schema, wanted)
}

/// A field every action of each live kind has: a row group in which all
/// three are null (by its statistics) holds tombstones (or `txn` rows)
/// only.
const LIVE_FIELDS: [&str; 3] = ["add.path", "metaData.id", "protocol.minReaderVersion"];

/// The row groups that may hold a live row: all but those whose
/// statistics say that every row is something else (this tool writes the
/// tombstones in a row group of their own; a group without statistics is
/// read).
fn live_row_groups(groups: &[RowGroupMetaData]) -> Vec<usize> {
    let may_hold_live = |group: &RowGroupMetaData| {
        let rows = u64::try_from(group.num_rows()).unwrap_or(u64::MAX);
        let mut fields = group
            .columns()
            .iter()
            .filter(|c| LIVE_FIELDS.contains(&c.column_path().string().as_str()))
            .peekable();
        fields.peek().is_none()
            || fields.any(|c| {
                c.statistics()
                    .and_then(|s| s.null_count_opt())
                    .is_none_or(|nulls| nulls < rows)
            })
    };
    (0..groups.len())
        .filter(|&i| may_hold_live(&groups[i]))
        .collect()
}

/// Which rows of a checkpoint to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// Every action: what the next checkpoint carries forward.
    All,
    /// The live files, metadata and protocol, without the tombstones: what
    /// a reader needs. A checkpoint is already reconciled, so none of its
    /// `remove` rows cancels one of its `add` rows; neither the `remove`
    /// column nor a row group of tombstones only is decoded (a week of
    /// compactions' tombstones would otherwise be most of the cost of
    /// opening a table, see `cleanup`).
    Live,
}

/// The `rows` of the checkpoint of `version`.
pub(crate) fn read_rows(log: &Log, version: u64, rows: Rows) -> Result<Vec<Action>> {
    let key = log.checkpoint_key(version);
    let Some(stored) = log.storage.get(&key)? else {
        return Err(log.corrupt(&key, "missing, though the log names this checkpoint"));
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(stored.bytes))
        .map(|builder| match rows {
            Rows::All => builder,
            Rows::Live => {
                let mask = live_columns(builder.parquet_schema());
                let groups = live_row_groups(builder.metadata().row_groups());
                builder.with_projection(mask).with_row_groups(groups)
            }
        })
        .and_then(|builder| builder.build())
        .map_err(|e| log.corrupt(&key, format!("not a readable Parquet checkpoint ({e})")))?;
    let mut actions = Vec::new();
    for batch in reader {
        let batch = batch
            .map_err(|e| log.corrupt(&key, format!("not a readable Parquet checkpoint ({e})")))?;
        batch_actions(&batch, &mut actions).map_err(|reason| log.corrupt(&key, reason))?;
    }
    Ok(actions)
}
