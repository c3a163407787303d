//! Classic single-file checkpoints (`<v:020>.checkpoint.parquet`): the
//! snapshot of a version as one Parquet file, one action per row, in the
//! layout Spark writes and every Delta reader knows (top-level struct
//! columns `txn`, `add`, `remove`, `metaData`, `protocol`, each row with
//! exactly one of them set; every field optional, maps as `key_value`
//! groups, lists of `element`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, MapBuilder, MapFieldNames,
    StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::actions::{Action, Add, Metadata, Protocol, Remove};
use super::log::Log;
use crate::error::{Error, Result};

mod read;

pub(crate) use read::{Rows, read_rows};

/// One nullable child column of a struct column, being built.
type Children = Vec<(&'static str, ArrayRef)>;

/// A map builder with the names Spark gives a map's parts.
fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    let names = MapFieldNames {
        entry: "key_value".to_owned(),
        key: "key".to_owned(),
        value: "value".to_owned(),
    };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

/// Appends a map (or a null one) to `builder`.
fn push_map(
    builder: &mut MapBuilder<StringBuilder, StringBuilder>,
    map: Option<&BTreeMap<String, Option<String>>>,
) -> Result<()> {
    if let Some(map) = map {
        for (key, value) in map {
            builder.keys().append_value(key);
            builder.values().append_option(value.as_deref());
        }
    }
    builder.append(map.is_some()).map_err(arrow_error)
}

fn arrow_error(e: arrow_schema::ArrowError) -> Error {
    Error::io("delta checkpoint", std::io::Error::other(e))
}

/// A struct column from its children, null where `valid` is false.
fn struct_column(children: Children, valid: Vec<bool>) -> Result<ArrayRef> {
    let fields: Fields = children
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), true))
        .collect();
    let arrays = children.into_iter().map(|(_, a)| a).collect();
    let array =
        StructArray::try_new(fields, arrays, Some(NullBuffer::from(valid))).map_err(arrow_error)?;
    Ok(Arc::new(array))
}

fn as_add(action: &Action) -> Option<&Add> {
    match action {
        Action::Add(add) => Some(add),
        _ => None,
    }
}

fn as_remove(action: &Action) -> Option<&Remove> {
    match action {
        Action::Remove(remove) => Some(remove),
        _ => None,
    }
}

fn date_map(date: &str) -> BTreeMap<String, Option<String>> {
    BTreeMap::from([("date".to_owned(), Some(date.to_owned()))])
}

/// The `add` column.
fn add_column(actions: &[Action]) -> Result<ArrayRef> {
    let (mut path, mut stats) = (StringBuilder::new(), StringBuilder::new());
    let (mut size, mut time) = (Int64Builder::new(), Int64Builder::new());
    let mut change = BooleanBuilder::new();
    let (mut values, mut tags) = (map_builder(), map_builder());
    for add in actions.iter().map(as_add) {
        path.append_option(add.map(|a| super::actions::encode_path(&a.path)));
        push_map(&mut values, add.map(|a| date_map(&a.date)).as_ref())?;
        size.append_option(add.map(|a| i64::try_from(a.size).unwrap_or(i64::MAX)));
        time.append_option(add.map(|a| a.modification_time));
        change.append_option(add.map(|a| a.data_change));
        stats.append_option(add.and_then(|a| a.stats.as_ref()).map(super::Stats::json));
        push_map(&mut tags, None)?;
    }
    let valid = actions.iter().map(|a| as_add(a).is_some()).collect();
    struct_column(
        vec![
            ("path", Arc::new(path.finish())),
            ("partitionValues", Arc::new(values.finish())),
            ("size", Arc::new(size.finish())),
            ("modificationTime", Arc::new(time.finish())),
            ("dataChange", Arc::new(change.finish())),
            ("stats", Arc::new(stats.finish())),
            ("tags", Arc::new(tags.finish())),
        ],
        valid,
    )
}

/// The `remove` column.
fn remove_column(actions: &[Action]) -> Result<ArrayRef> {
    let mut path = StringBuilder::new();
    let (mut deleted, mut size) = (Int64Builder::new(), Int64Builder::new());
    let (mut change, mut extended) = (BooleanBuilder::new(), BooleanBuilder::new());
    let mut values = map_builder();
    for remove in actions.iter().map(as_remove) {
        path.append_option(remove.map(|r| super::actions::encode_path(&r.path)));
        deleted.append_option(remove.map(|r| r.deletion_timestamp));
        change.append_option(remove.map(|r| r.data_change));
        extended.append_option(remove.map(|_| true));
        push_map(&mut values, remove.map(|r| date_map(&r.date)).as_ref())?;
        size.append_option(remove.map(|r| i64::try_from(r.size).unwrap_or(i64::MAX)));
    }
    let valid = actions.iter().map(|a| as_remove(a).is_some()).collect();
    struct_column(
        vec![
            ("path", Arc::new(path.finish())),
            ("deletionTimestamp", Arc::new(deleted.finish())),
            ("dataChange", Arc::new(change.finish())),
            ("extendedFileMetadata", Arc::new(extended.finish())),
            ("partitionValues", Arc::new(values.finish())),
            ("size", Arc::new(size.finish())),
        ],
        valid,
    )
}

/// A string child column: `value` of each row's action, null where the
/// row holds another action.
fn strings<'a, T>(rows: &[Option<&'a T>], value: impl Fn(&'a T) -> Option<&'a str>) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for row in rows {
        builder.append_option(row.and_then(&value));
    }
    Arc::new(builder.finish())
}

/// A string map child column (see [`strings`]).
fn maps<'a, T>(
    rows: &[Option<&'a T>],
    value: impl Fn(&'a T) -> &'a BTreeMap<String, String>,
) -> Result<ArrayRef> {
    let mut builder = map_builder();
    for row in rows {
        let map = row.map(|r| {
            value(r)
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect()
        });
        push_map(&mut builder, map.as_ref())?;
    }
    Ok(Arc::new(builder.finish()))
}

/// The `metaData` column.
fn metadata_column(actions: &[Action]) -> Result<ArrayRef> {
    let rows: Vec<Option<&Metadata>> = actions
        .iter()
        .map(|a| match a {
            Action::Metadata(m) => Some(m),
            _ => None,
        })
        .collect();
    let mut partitions = ListBuilder::new(StringBuilder::new()).with_field(Field::new(
        "element",
        arrow_schema::DataType::Utf8,
        true,
    ));
    let mut created = Int64Builder::new();
    for m in &rows {
        partitions
            .append_option(m.map(|m| m.partition_columns.iter().map(Some).collect::<Vec<_>>()));
        created.append_option(m.and_then(|m| m.created_time));
    }
    let valid: Vec<bool> = rows.iter().map(Option::is_some).collect();
    let format = struct_column(
        vec![
            (
                "provider",
                strings(&rows, |m| Some(m.format.provider.as_str())),
            ),
            ("options", maps(&rows, |m| &m.format.options)?),
        ],
        valid.clone(),
    )?;
    struct_column(
        vec![
            ("id", strings(&rows, |m| Some(m.id.as_str()))),
            ("name", strings(&rows, |_| None)),
            ("description", strings(&rows, |_| None)),
            ("format", format),
            (
                "schemaString",
                strings(&rows, |m| Some(m.schema_string.as_str())),
            ),
            ("partitionColumns", Arc::new(partitions.finish())),
            ("configuration", maps(&rows, |m| &m.configuration)?),
            ("createdTime", Arc::new(created.finish())),
        ],
        valid,
    )
}

/// The `protocol` column.
fn protocol_column(actions: &[Action]) -> Result<ArrayRef> {
    let rows: Vec<Option<&Protocol>> = actions
        .iter()
        .map(|a| match a {
            Action::Protocol(p) => Some(p),
            _ => None,
        })
        .collect();
    let (mut reader, mut writer) = (Int32Builder::new(), Int32Builder::new());
    for p in &rows {
        reader.append_option(p.map(|p| p.min_reader_version));
        writer.append_option(p.map(|p| p.min_writer_version));
    }
    struct_column(
        vec![
            ("minReaderVersion", Arc::new(reader.finish())),
            ("minWriterVersion", Arc::new(writer.finish())),
        ],
        rows.iter().map(Option::is_some).collect(),
    )
}

/// The `txn` column: no application transactions are kept, but readers
/// look for the column.
fn txn_column(rows: usize) -> Result<ArrayRef> {
    let (mut app, mut version, mut updated) = (
        StringBuilder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for _ in 0..rows {
        app.append_null();
        version.append_null();
        updated.append_null();
    }
    struct_column(
        vec![
            ("appId", Arc::new(app.finish())),
            ("version", Arc::new(version.finish())),
            ("lastUpdated", Arc::new(updated.finish())),
        ],
        vec![false; rows],
    )
}

/// The checkpoint file's bytes for `actions` (a snapshot's): the live
/// rows (protocol, metaData, adds) in the first row group, the tombstones
/// in one of their own, which a reader skips without decoding it (see
/// `read::Rows::Live`). Row order within a checkpoint has no meaning in
/// the protocol.
pub(crate) fn encode(actions: &[Action]) -> Result<Vec<u8>> {
    let (mut rows, tombstones): (Vec<Action>, Vec<Action>) = actions
        .iter()
        .cloned()
        .partition(|a| !matches!(a, Action::Remove(_)));
    let live = rows.len();
    rows.extend(tombstones);
    let batch = batch_of(&rows)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))
        .map_err(|e| Error::io("delta checkpoint", std::io::Error::other(e)))?;
    let groups = [batch.slice(0, live), batch.slice(live, rows.len() - live)];
    for group in groups.iter().filter(|g| g.num_rows() > 0) {
        writer
            .write(group)
            .and_then(|()| writer.flush())
            .map_err(|e| Error::io("delta checkpoint", std::io::Error::other(e)))?;
    }
    writer
        .close()
        .map_err(|e| Error::io("delta checkpoint", std::io::Error::other(e)))?;
    Ok(bytes)
}

/// One row per action, in the checkpoint's columns.
fn batch_of(actions: &[Action]) -> Result<RecordBatch> {
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("txn", txn_column(actions.len())?),
        ("add", add_column(actions)?),
        ("remove", remove_column(actions)?),
        ("metaData", metadata_column(actions)?),
        ("protocol", protocol_column(actions)?),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(arrow_error)
}

/// Writes the checkpoint of `version` (create-only: one that is already
/// there, written by a concurrent writer, is as good) and returns its size.
pub(crate) fn write(log: &Log, version: u64, actions: &[Action]) -> Result<u64> {
    let bytes = encode(actions)?;
    let key = log.checkpoint_key(version);
    match log.put_new(&key, &bytes) {
        Ok(()) => Ok(bytes.len() as u64),
        Err(Error::Conflict { .. } | Error::Corrupt { .. }) if log.has_checkpoint(version)? => {
            Ok(bytes.len() as u64)
        }
        Err(e) => Err(e),
    }
}
