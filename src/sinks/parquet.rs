//! Parquet outputs for warehouses: `parquet/messages/` (history rows) and
//! `parquet/sends/` (outbound sends).
//!
//! Layout: `parquet/<table>/date=YYYY-MM-DD/part-<run>-<seq>.parquet`. The
//! partition is the UTC date of the run, not of the messages: a backfill of
//! years of history would otherwise scatter into thousands of tiny files,
//! and the folder value must be a date, never an ID (DuckDB and Spark turn
//! numeric-looking folder values into integers). File names carry the run
//! ID, so every run adds an immutable file set and never rewrites one.
//!
//! A file is written under a temporary name and only renamed into place
//! once closed and fsynced, so no reader and no later run ever sees a
//! half-written file. A file the checkpoint does not list (a run killed
//! between the rename and its checkpoint) is removed by the next run and
//! rebuilt from the committed JSONL.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::{HashingWriter, WrittenFile};
use crate::delta::{FileStats, StatsCollector, TableKind};
use crate::error::{Error, Result};
use crate::records::{HistoryRow, HistoryRowRef, SendRow};
use crate::storage::{Backend, NewObject, Storage, file_name, is_temporary};

/// Rows per row group: large enough for warehouse scans, small enough that
/// the writer's in-memory row group stays within the memory budget.
pub const ROW_GROUP_ROWS: usize = 262_144;
/// Rows per file before a new file is started.
pub const FILE_ROWS: u64 = 1_048_576;
/// Rows gathered before they are handed to the Parquet encoder.
const BATCH_ROWS: usize = 16_384;

/// The columns of one table: an Arrow schema and builders for its rows.
pub trait Columns: Send {
    /// The row type.
    type Row;
    /// The folder under `parquet/`.
    const TABLE: &'static str;
    /// The Arrow schema; column order is fixed.
    fn schema() -> SchemaRef;
    /// Empty builders.
    fn new() -> Self;
    /// Appends one row.
    fn push(&mut self, row: &Self::Row);
    /// Rows appended since the last `take`.
    fn len(&self) -> usize;
    /// Whether no row is pending.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The pending rows as arrays, in schema order; the builders are reset.
    fn take(&mut self) -> Vec<ArrayRef>;
    /// Columns whose values are all distinct (IDs, texts): dictionary
    /// encoding would only cost time there.
    fn high_cardinality() -> &'static [&'static str];
    /// Columns no reader prunes by value (message bodies): their minimum
    /// and maximum would cost a comparison per row and say nothing.
    fn without_statistics() -> &'static [&'static str];
    /// The Delta table of these columns, whose `add` of each file carries
    /// its statistics ([`FileStats`]).
    const KIND: TableKind;
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn timestamp(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

/// Columns of `parquet/messages/`: the history record of SPEC §3.
#[derive(Debug)]
pub struct MessageColumns {
    record_type: StringBuilder,
    message_id: StringBuilder,
    conversation_user_id: StringBuilder,
    account: StringBuilder,
    sender_id: StringBuilder,
    receiver_id: StringBuilder,
    created_at: TimestampMicrosecondBuilder,
    message_text: StringBuilder,
    media_url: StringBuilder,
}

impl Columns for MessageColumns {
    type Row = HistoryRow;
    const TABLE: &'static str = "messages";
    const KIND: TableKind = TableKind::Messages;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            utf8("record_type", false),
            utf8("message_id", false),
            utf8("conversation_user_id", false),
            utf8("account", false),
            utf8("sender_id", false),
            utf8("receiver_id", false),
            timestamp("created_at", true),
            utf8("message_text", true),
            utf8("media_url", true),
        ]))
    }

    fn new() -> Self {
        MessageColumns {
            record_type: StringBuilder::new(),
            message_id: StringBuilder::new(),
            conversation_user_id: StringBuilder::new(),
            account: StringBuilder::new(),
            sender_id: StringBuilder::new(),
            receiver_id: StringBuilder::new(),
            created_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            message_text: StringBuilder::new(),
            media_url: StringBuilder::new(),
        }
    }

    fn push(&mut self, row: &HistoryRow) {
        self.push_ref(&row.as_ref());
    }

    fn len(&self) -> usize {
        self.message_id.len()
    }

    fn take(&mut self) -> Vec<ArrayRef> {
        vec![
            finish_sized(&mut self.record_type),
            finish_sized(&mut self.message_id),
            finish_sized(&mut self.conversation_user_id),
            finish_sized(&mut self.account),
            finish_sized(&mut self.sender_id),
            finish_sized(&mut self.receiver_id),
            Arc::new(self.created_at.finish()),
            finish_sized(&mut self.message_text),
            finish_sized(&mut self.media_url),
        ]
    }

    fn high_cardinality() -> &'static [&'static str] {
        &["message_id", "message_text", "created_at"]
    }

    fn without_statistics() -> &'static [&'static str] {
        &["message_text"]
    }
}

impl MessageColumns {
    fn push_ref(&mut self, row: &HistoryRowRef<'_>) {
        self.record_type.append_value("history");
        self.message_id.append_value(row.message_id);
        self.conversation_user_id
            .append_value(row.conversation_user_id);
        self.account.append_value(row.account);
        self.sender_id.append_value(row.sender_id);
        self.receiver_id.append_value(row.receiver_id);
        self.created_at.append_option(row.created_at);
        self.message_text.append_option(row.message_text);
        self.media_url.append_option(row.media_url);
    }
}

/// Finishes a string column and starts the next batch's at the same size:
/// grown by doubling instead, a text column's buffer would be copied a
/// dozen times over for every batch.
fn finish_sized(builder: &mut StringBuilder) -> ArrayRef {
    let (items, bytes) = (builder.len(), builder.values_slice().len());
    let array = builder.finish();
    *builder = StringBuilder::with_capacity(items, bytes);
    Arc::new(array)
}

/// Columns of `parquet/sends/`: the send record of SPEC §3.
#[derive(Debug)]
pub struct SendColumns {
    record_type: StringBuilder,
    message_id: StringBuilder,
    success: BooleanBuilder,
    send_status: StringBuilder,
    sender_account: StringBuilder,
    recipient_user_id: StringBuilder,
    message_text: StringBuilder,
    sent_at: TimestampMicrosecondBuilder,
    media_id: StringBuilder,
    media_ids: ListBuilder<StringBuilder>,
}

impl Columns for SendColumns {
    type Row = SendRow;
    const TABLE: &'static str = "sends";
    const KIND: TableKind = TableKind::Sends;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            utf8("record_type", false),
            utf8("message_id", false),
            Field::new("success", DataType::Boolean, false),
            utf8("send_status", false),
            utf8("sender_account", false),
            utf8("recipient_user_id", false),
            utf8("message_text", false),
            timestamp("sent_at", false),
            utf8("media_id", true),
            Field::new(
                "media_ids",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]))
    }

    fn new() -> Self {
        SendColumns {
            record_type: StringBuilder::new(),
            message_id: StringBuilder::new(),
            success: BooleanBuilder::new(),
            send_status: StringBuilder::new(),
            sender_account: StringBuilder::new(),
            recipient_user_id: StringBuilder::new(),
            message_text: StringBuilder::new(),
            sent_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            media_id: StringBuilder::new(),
            media_ids: ListBuilder::new(StringBuilder::new()),
        }
    }

    fn push(&mut self, row: &SendRow) {
        self.record_type.append_value("send");
        self.message_id.append_value(&row.message_id);
        self.success.append_value(row.success);
        self.send_status.append_value(&row.send_status);
        self.sender_account.append_value(&row.sender_account);
        self.recipient_user_id.append_value(&row.recipient_user_id);
        self.message_text.append_value(&row.message_text);
        self.sent_at.append_value(row.sent_at);
        self.media_id.append_option(row.media_id.as_deref());
        match &row.media_ids {
            Some(ids) => {
                for id in ids {
                    self.media_ids.values().append_value(id);
                }
                self.media_ids.append(true);
            }
            None => self.media_ids.append(false),
        }
    }

    fn len(&self) -> usize {
        self.message_id.len()
    }

    fn take(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.record_type.finish()),
            Arc::new(self.message_id.finish()),
            Arc::new(self.success.finish()),
            Arc::new(self.send_status.finish()),
            Arc::new(self.sender_account.finish()),
            Arc::new(self.recipient_user_id.finish()),
            Arc::new(self.message_text.finish()),
            Arc::new(self.sent_at.finish()),
            Arc::new(self.media_id.finish()),
            Arc::new(self.media_ids.finish()),
        ]
    }

    fn high_cardinality() -> &'static [&'static str] {
        &["message_id", "message_text", "sent_at"]
    }

    fn without_statistics() -> &'static [&'static str] {
        &["message_text"]
    }
}

impl ParquetSink<MessageColumns> {
    /// Adds a history row whose strings live elsewhere (a page's batch).
    pub fn push_ref(&mut self, row: &HistoryRowRef<'_>) -> Result<()> {
        self.columns.push_ref(row);
        if self.columns.len() >= BATCH_ROWS {
            self.write_pending()?;
        }
        Ok(())
    }
}

/// The writer settings, built in this one place.
fn writer_properties<C: Columns>() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("xquik-dm ", env!("CARGO_PKG_VERSION")).to_owned());
    for column in C::high_cardinality() {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), false);
    }
    for column in C::without_statistics() {
        builder = builder
            .set_column_statistics_enabled(ColumnPath::from(*column), EnabledStatistics::None);
    }
    builder.build()
}

/// A file the encoder is done with: the object (not yet published), its
/// SHA-256, its size and its statistics.
type Encoded = (Box<dyn NewObject>, String, u64, FileStats);

/// A file being written. Its rows are encoded on a thread of its own:
/// encoding and compressing them costs about as much as the rest of what a
/// sync's writer does per message, and this way the two overlap. Batches
/// reach the encoder in order; closing the file waits for it.
struct OpenFile {
    batches: SyncSender<RecordBatch>,
    encoder: JoinHandle<Result<Encoded>>,
    rel: String,
    path: PathBuf,
    rows: u64,
}

impl OpenFile {
    fn start(
        writer: ArrowWriter<HashingWriter<Box<dyn NewObject>>>,
        mut stats: StatsCollector,
        rel: String,
        path: PathBuf,
    ) -> Result<OpenFile> {
        // Two batches in flight at most: memory stays bounded when the
        // encoder falls behind.
        let (batches, pending) = sync_channel::<RecordBatch>(2);
        let encoder_path = path.clone();
        let encoder = std::thread::Builder::new()
            .name("xquik-dm-parquet".into())
            .spawn(move || {
                let mut writer = writer;
                for batch in pending {
                    // Here, beside the encoding, rather than as rows are
                    // pushed: the writer a sync waits on does no more
                    // work per row.
                    stats
                        .add_batch(&batch)
                        .map_err(|e| Error::io(&encoder_path, std::io::Error::other(e)))?;
                    writer
                        .write(&batch)
                        .map_err(|e| parquet_error(&encoder_path, e))?;
                }
                let hashing = writer
                    .into_inner()
                    .map_err(|e| parquet_error(&encoder_path, e))?;
                let (object, sha256, bytes) = hashing.finish();
                Ok((object, sha256, bytes, stats.finish()))
            })
            .map_err(|e| Error::io(&path, e))?;
        Ok(OpenFile {
            batches,
            encoder,
            rel,
            path,
            rows: 0,
        })
    }

    /// Hands a batch to the encoder. An encoder that stopped on an error
    /// returns that error here, and the file is gone.
    fn write(open: &mut Option<OpenFile>, batch: RecordBatch) -> Result<()> {
        let Some(file) = open.as_mut() else {
            return Ok(());
        };
        let rows = batch.num_rows() as u64;
        if file.batches.send(batch).is_ok() {
            file.rows += rows;
            return Ok(());
        }
        let Some(file) = open.take() else {
            return Ok(());
        };
        let path = file.path.clone();
        match file.finish() {
            Err(e) => Err(e),
            Ok(_) => Err(Error::io(
                &path,
                std::io::Error::other("the Parquet encoder stopped"),
            )),
        }
    }

    /// Waits for the encoder to write the footer: the object (not yet
    /// published), its SHA-256, its size and its statistics.
    fn finish(self) -> Result<Encoded> {
        let OpenFile {
            batches,
            encoder,
            path,
            ..
        } = self;
        drop(batches);
        encoder.join().unwrap_or_else(|_| {
            Err(Error::io(
                &path,
                std::io::Error::other("the Parquet encoder panicked"),
            ))
        })
    }
}

/// Writes one table's rows of one run into immutable Parquet files.
pub struct ParquetSink<C: Columns> {
    storage: Storage,
    rel_dir: String,
    run_id: String,
    seq: u32,
    columns: C,
    open: Option<OpenFile>,
    file_rows: u64,
}

impl<C: Columns> std::fmt::Debug for ParquetSink<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("rel_dir", &self.rel_dir)
            .field("run_id", &self.run_id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl<C: Columns> ParquetSink<C> {
    /// A sink writing under `parquet/<table>/date=<date>/`.
    pub fn new(storage: &Storage, date: &str, run_id: &str) -> Self {
        ParquetSink::in_dir(storage, partition::<C>(date), run_id)
    }

    /// A sink writing into the folder `rel_dir`.
    pub fn in_dir(storage: &Storage, rel_dir: String, run_id: &str) -> Self {
        ParquetSink {
            storage: storage.clone(),
            rel_dir,
            run_id: run_id.to_owned(),
            seq: 0,
            columns: C::new(),
            open: None,
            file_rows: FILE_ROWS,
        }
    }

    /// Rolls over to a new file every `rows` rows instead of [`FILE_ROWS`]
    /// (tests use tiny files).
    pub fn set_file_rows(&mut self, rows: u64) {
        self.file_rows = rows.max(1);
    }

    /// Adds a row.
    pub fn push(&mut self, row: &C::Row) -> Result<()> {
        self.columns.push(row);
        if self.columns.len() >= BATCH_ROWS {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Adds rows that are already columns of this table (a file being
    /// merged); a batch of another schema is refused.
    pub fn push_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.write_pending()?;
        if self.open.is_none() {
            self.open = Some(self.start_file()?);
        }
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        let batch = RecordBatch::try_new(C::schema(), batch.columns().to_vec()).map_err(|e| {
            Error::Corrupt {
                path: open.path.clone(),
                reason: format!("rows of another schema than the {} table's ({e})", C::TABLE),
            }
        })?;
        OpenFile::write(&mut self.open, batch)
    }

    /// Whether the current file is full and should be closed (the caller
    /// closes it at a record boundary it can name in the checkpoint).
    pub fn is_full(&self) -> bool {
        let written = self.open.as_ref().map_or(0, |o| o.rows);
        written + self.columns.len() as u64 >= self.file_rows
    }

    /// Closes the current file, if any, and returns it (renamed into place
    /// and durable).
    pub fn close(&mut self) -> Result<Option<WrittenFile>> {
        self.write_pending()?;
        let Some(open) = self.open.take() else {
            return Ok(None);
        };
        let (rel, rows) = (open.rel.clone(), open.rows);
        let (object, sha256, bytes, stats) = open.finish()?;
        object.finish()?;
        Ok(Some(WrittenFile {
            path: rel,
            sha256,
            bytes,
            rows,
            offset: None,
            length: None,
            stats: Some(stats),
        }))
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.columns.is_empty() {
            return Ok(());
        }
        if self.open.is_none() {
            self.open = Some(self.start_file()?);
        }
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        let batch = RecordBatch::try_new(C::schema(), self.columns.take())
            .map_err(|e| Error::io(&open.path, std::io::Error::other(e)))?;
        OpenFile::write(&mut self.open, batch)
    }

    fn start_file(&mut self) -> Result<OpenFile> {
        self.seq += 1;
        let rel = file_key(&self.rel_dir, &self.run_id, u64::from(self.seq));
        let object = self.storage.create(&rel)?;
        let path = self.storage.describe(&rel);
        let writer = ArrowWriter::try_new(
            HashingWriter::new(object),
            C::schema(),
            Some(writer_properties::<C>()),
        )
        .map_err(|e| parquet_error(&path, e))?;
        let stats = StatsCollector::new(C::KIND);
        OpenFile::start(writer, stats, rel, path)
    }
}

fn parquet_error(path: &std::path::Path, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => Error::io(path, *io),
                Err(other) => Error::io(path, std::io::Error::other(other)),
            }
        }
        other => Error::io(path, std::io::Error::other(other)),
    }
}

/// Every object under `parquet/` named as this module names its files:
/// finished ones (`part-*.parquet`) and a folder's temporaries
/// (`.part-*.tmp`), as (key, temporary?). An object the tool did not write
/// is never among them, so it is never removed or moved.
fn own_files(storage: &dyn Backend) -> Result<Vec<(String, bool)>> {
    let mut found = Vec::new();
    for listed in storage.list("parquet/")? {
        let name = file_name(&listed.key);
        if is_temporary(name) && name.starts_with(".part-") {
            found.push((listed.key, true));
        } else if name.starts_with("part-") && name.ends_with(".parquet") {
            found.push((listed.key, false));
        }
    }
    Ok(found)
}

/// Whether any finished Parquet file of this tool is under `parquet/`.
pub fn any_written(storage: &dyn Backend) -> Result<bool> {
    Ok(own_files(storage)?.iter().any(|(_, tmp)| !tmp))
}

/// The finished Parquet files under `parquet/` that `committed` (keys)
/// does not list.
pub fn unlisted(storage: &dyn Backend, committed: &HashSet<String>) -> Result<Vec<String>> {
    Ok(own_files(storage)?
        .into_iter()
        .filter(|(rel, tmp)| !tmp && !committed.contains(rel))
        .map(|(rel, _)| rel)
        .collect())
}

/// Removes what a killed run may have left under `parquet/`: temporary
/// files, and finished files that no checkpoint lists (`committed` holds
/// keys). Returns the keys removed.
pub fn remove_uncommitted(
    storage: &dyn Backend,
    committed: &HashSet<String>,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (rel, tmp) in own_files(storage)? {
        if tmp || !committed.contains(&rel) {
            storage.delete(&rel)?;
            removed.push(rel);
        }
    }
    Ok(removed)
}

/// The run a file of this module is named after (`part-<run>-<n>.parquet`).
pub fn file_run(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (run, seq) = rest.rsplit_once('-')?;
    (!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit())).then_some(run)
}

/// The folder of a table's files of one date.
pub fn partition<C: Columns>(date: &str) -> String {
    format!("parquet/{}/date={date}", C::TABLE)
}

/// The name of the `seq`th file (from 1) a run writes into a folder.
pub fn file_key(dir: &str, run_id: &str, seq: u64) -> String {
    format!("{dir}/part-{run_id}-{seq:04}.parquet")
}

/// Removes the files the run `claim` names wrote into its folders, but
/// those `keep` lists (committed ones), looking only at the names it gives
/// them (`part-<run>-0001.parquet` onward, in sequence), never listing a
/// folder. The last is removed first, so a repair that is itself killed
/// leaves an unbroken sequence for the next one to find. Returns the keys
/// removed.
pub fn remove_run_files(
    storage: &dyn Backend,
    claim: &crate::checkpoint::Claim,
    keep: &HashSet<String>,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in &claim.dirs {
        let mut found = Vec::new();
        for seq in 1.. {
            let key = file_key(dir, &claim.run, seq);
            if storage.size(&key)?.is_none() {
                break;
            }
            found.push(key);
        }
        for key in found.into_iter().rev().filter(|k| !keep.contains(k)) {
            storage.delete(&key)?;
            removed.push(key);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};

    fn local(dir: &std::path::Path) -> Storage {
        Arc::new(crate::storage::local::LocalDir::new(dir))
    }
    use crate::records::RecordType;
    use arrow_array::{Array, StringArray, TimestampMicrosecondArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn row(i: u64, text: Option<&str>) -> HistoryRow {
        HistoryRow {
            record_type: RecordType::History,
            message_id: format!("{}", 1_900_000_000_000_000_000u64 + i),
            conversation_user_id: "42".into(),
            account: "acme".into(),
            sender_id: "42".into(),
            receiver_id: "7".into(),
            created_at: (!i.is_multiple_of(3)).then_some(1_736_942_400_000_000 + i as i64),
            message_text: text.map(Into::into),
            media_url: i.is_multiple_of(5).then(|| format!("https://m/{i}.jpg")),
        }
    }

    #[test]
    fn rows_read_back_equal_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::<MessageColumns>::new(&local(dir.path()), "2026-11-26", "r1");
        let texts = ["héllo \"q\"\n👩‍👩‍👧", "مرحبا", "漢字\t\\", ""];
        let rows: Vec<HistoryRow> = (0..40_000)
            .map(|i| row(i, (i % 7 != 0).then_some(texts[i as usize % texts.len()])))
            .collect();
        for r in &rows {
            sink.push(r).unwrap();
        }
        assert!(!sink.is_full());
        let file = sink.close().unwrap().unwrap();
        assert_eq!(file.rows, 40_000);
        assert_eq!(
            file.path,
            "parquet/messages/date=2026-11-26/part-r1-0001.parquet"
        );
        let bytes = fs::read(dir.path().join(&file.path)).unwrap();
        assert_eq!(file.bytes, bytes.len() as u64);
        assert_eq!(file.sha256, super::super::sha256_hex(&bytes));

        let reader = ParquetRecordBatchReaderBuilder::try_new(
            File::open(dir.path().join(&file.path)).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut i = 0usize;
        for batch in reader {
            let batch = batch.unwrap();
            assert_eq!(batch.schema(), MessageColumns::schema());
            let ids = batch
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let created = batch
                .column(6)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let text = batch
                .column(7)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let media = batch
                .column(8)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            for j in 0..batch.num_rows() {
                let r = &rows[i];
                assert_eq!(ids.value(j), r.message_id);
                assert_eq!(created.is_null(j), r.created_at.is_none());
                if let Some(c) = r.created_at {
                    assert_eq!(created.value(j), c);
                }
                assert_eq!(
                    (!text.is_null(j)).then(|| text.value(j)),
                    r.message_text.as_deref()
                );
                assert_eq!(
                    (!media.is_null(j)).then(|| media.value(j)),
                    r.media_url.as_deref()
                );
                i += 1;
            }
        }
        assert_eq!(i, rows.len());
    }

    /// `schemas/messages.arrow.json` documents the schema for analysts; it
    /// must say exactly what the writer writes.
    #[test]
    fn documented_schema_matches_the_writer() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/messages.arrow.json");
        let doc: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        let documented: Vec<(String, String, bool)> = doc["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_owned(),
                    f["type"].as_str().unwrap().to_owned(),
                    f["nullable"].as_bool().unwrap(),
                )
            })
            .collect();
        let actual: Vec<(String, String, bool)> = MessageColumns::schema()
            .fields()
            .iter()
            .map(|f| {
                let ty = match f.data_type() {
                    DataType::Utf8 => "Utf8".to_owned(),
                    DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) => {
                        format!("Timestamp(Microsecond, \"{tz}\")")
                    }
                    other => panic!("undocumented type {other:?}"),
                };
                (f.name().clone(), ty, f.is_nullable())
            })
            .collect();
        assert_eq!(documented, actual);
    }

    #[test]
    fn nothing_is_visible_before_close() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::<MessageColumns>::new(&local(dir.path()), "2026-11-26", "r2");
        for i in 0..(BATCH_ROWS as u64 + 10) {
            sink.push(&row(i, Some("x"))).unwrap();
        }
        // Nothing is under parquet/ yet: the file is staged in state/tmp/.
        let storage = local(dir.path());
        assert_eq!(storage.list("parquet/").unwrap(), Vec::new());
        let staged = storage.list("state/tmp/").unwrap();
        assert_eq!(staged.len(), 1, "{staged:?}");
        assert!(staged[0].key.contains("part-r2-0001.parquet."));
        assert_eq!(storage.sweep_temporaries(&[]).unwrap().len(), 1);
        assert_eq!(storage.list("state/tmp/").unwrap(), Vec::new());
    }

    /// A killed run's files are found by name, in sequence: committed ones
    /// stay, the rest go, and a file of another run is never touched.
    #[test]
    fn a_killed_runs_files_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(dir.path());
        let folder = partition::<MessageColumns>("2026-11-26");
        for run in ["r5", "r6"] {
            let mut sink = ParquetSink::<MessageColumns>::new(&storage, "2026-11-26", run);
            sink.set_file_rows(1);
            for i in 0..3 {
                sink.push(&row(i, Some("x"))).unwrap();
                sink.close().unwrap().unwrap();
            }
        }
        let claim = crate::checkpoint::Claim {
            run: "r5".into(),
            dirs: vec![folder.clone(), partition::<SendColumns>("2026-11-26")],
        };
        let committed = HashSet::from([file_key(&folder, "r5", 1)]);
        let removed = remove_run_files(&*storage, &claim, &committed).unwrap();
        assert_eq!(
            removed,
            vec![file_key(&folder, "r5", 3), file_key(&folder, "r5", 2)]
        );
        let left: Vec<String> = storage
            .list("parquet/")
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .collect();
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&file_key(&folder, "r5", 1)));
    }

    #[test]
    fn unlisted_files_are_removed_and_listed_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::<MessageColumns>::new(&local(dir.path()), "2026-11-26", "r3");
        sink.push(&row(1, Some("x"))).unwrap();
        let kept = sink.close().unwrap().unwrap();
        let mut sink = ParquetSink::<MessageColumns>::new(&local(dir.path()), "2026-11-26", "r4");
        sink.push(&row(2, Some("y"))).unwrap();
        let orphan = sink.close().unwrap().unwrap();
        let committed: HashSet<String> = [kept.path.clone()].into();
        let removed = remove_uncommitted(&*local(dir.path()), &committed).unwrap();
        assert_eq!(removed, vec![orphan.path]);
        assert!(dir.path().join(&kept.path).exists());
    }
}
