//! The Parquet side of an erasure: which sealed files hold an erased row,
//! and their rewrite without those rows through compaction's
//! [`rewrite`](crate::commands::compact::rewrite). The files removed and
//! added go into the run's [`Compaction`], so that the manifest records
//! them as a compaction's and the seal deletes the old ones. Files under
//! `recovered/` (Parquet files `rebuild` set aside, whose records the
//! handoff file holds) that hold an erased row are deleted.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashSet};

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::audit::{self, AuditRow, Compaction, RemovedFile};
use crate::commands::compact::rewrite;
use crate::error::{Error, Result};
use crate::sinks::WrittenFile;
use crate::sinks::parquet::{Columns, MessageColumns, SendColumns, file_run};
use crate::storage::{Backend, Storage, file_name};

/// The erased records, by table, as (user ID, message ID).
#[derive(Debug, Default)]
pub struct Gone {
    history: HashSet<(String, String)>,
    sends: HashSet<(String, String)>,
}

impl Gone {
    /// The set of `erased`.
    pub fn of(erased: &[AuditRow]) -> Gone {
        let mut gone = Gone::default();
        for r in erased {
            let set = match r.record_type.as_str() {
                "send" => &mut gone.sends,
                _ => &mut gone.history,
            };
            set.insert((r.user_id.clone(), r.message_id.clone()));
        }
        gone
    }

    /// The table a data file belongs to, by its path: its erased rows and
    /// the column naming the user.
    fn table(&self, path: &str) -> (&HashSet<(String, String)>, &'static str) {
        if path.starts_with(&format!("parquet/{}/", SendColumns::TABLE))
            || path.contains(&format!("/parquet/{}/", SendColumns::TABLE))
        {
            (&self.sends, "recipient_user_id")
        } else {
            (&self.history, "conversation_user_id")
        }
    }

    /// Which rows of `batch` (of the table at `path`) are kept.
    fn keep(&self, path: &str, batch: &RecordBatch) -> Result<BooleanArray> {
        let (set, user_column) = self.table(path);
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| Error::Corrupt {
                    path: path.into(),
                    reason: format!("has no text column {name}: nothing was erased"),
                })
        };
        let (users, ids) = (column(user_column)?, column("message_id")?);
        Ok((0..batch.num_rows())
            .map(|i| {
                let key = (users.value(i).to_owned(), ids.value(i).to_owned());
                Some(users.is_null(i) || !set.contains(&key))
            })
            .collect())
    }

    /// Whether the file `bytes` (at `path`) holds any erased row; reads
    /// only the two ID columns.
    fn holds_any(&self, path: &str, bytes: Vec<u8>) -> Result<bool> {
        let (set, user_column) = self.table(path);
        if set.is_empty() {
            return Ok(false);
        }
        let corrupt = |e: parquet::errors::ParquetError| Error::Corrupt {
            path: path.into(),
            reason: format!("not readable as Parquet ({e}): nothing was erased"),
        };
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).map_err(corrupt)?;
        let schema = builder.parquet_schema();
        let wanted: Vec<usize> = (0..schema.num_columns())
            .filter(|&i| {
                let column = schema.column(i);
                column.name() == user_column || column.name() == "message_id"
            })
            .collect();
        let mask = ProjectionMask::leaves(schema, wanted);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(16_384)
            .build()
            .map_err(corrupt)?;
        for batch in reader {
            let batch = batch.map_err(|e| corrupt(e.into()))?;
            if self.keep(path, &batch)?.false_count() > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Rewrites every sealed Parquet file of `listed` that holds a row of
/// `gone` into new files of the run `run_id` (one per folder), without
/// those rows. Returns the swap, for the manifest; the folders written
/// into must have been claimed (see [`affected`]).
pub fn rewrite_all(
    storage: &Storage,
    affected: BTreeMap<String, Vec<RemovedFile>>,
    gone: &Gone,
    run_id: &str,
) -> Result<Compaction> {
    let mut compaction = Compaction::default();
    for (dir, removed) in affected {
        let keep = |batch: &RecordBatch| gone.keep(&dir, batch);
        let added = if dir.starts_with(&format!("parquet/{}/", SendColumns::TABLE)) {
            rewrite::<SendColumns>(storage, &dir, &removed, run_id, Some(&keep))?
        } else {
            rewrite::<MessageColumns>(storage, &dir, &removed, run_id, Some(&keep))?
        };
        compaction.removed.extend(removed);
        compaction.added.extend(added);
    }
    Ok(compaction)
}

/// The sealed files of `listed` that hold a row of `gone`, by folder, as
/// the runs that wrote them list them.
pub fn affected(
    storage: &dyn Backend,
    listed: Vec<WrittenFile>,
    gone: &Gone,
) -> Result<BTreeMap<String, Vec<RemovedFile>>> {
    let mut by_dir: BTreeMap<String, Vec<RemovedFile>> = BTreeMap::new();
    for file in listed {
        let Some(bytes) = storage.get(&file.path)? else {
            return Err(Error::Corrupt {
                path: storage.describe(&file.path),
                reason: "missing, though a sealed run lists it: nothing was erased; run `xquik-dm verify`".into(),
            });
        };
        if !gone.holds_any(&file.path, bytes.bytes)? {
            continue;
        }
        let (Some((dir, _)), Some(run)) = (
            file.path.rsplit_once('/'),
            file_run(file_name(&file.path)).map(str::to_owned),
        ) else {
            continue;
        };
        by_dir.entry(dir.to_owned()).or_default().push(RemovedFile {
            run_id: run,
            file: file.clone(),
        });
    }
    Ok(by_dir)
}

/// Deletes the Parquet files under `recovered/` that hold a row of
/// `gone`. Returns their keys.
pub fn clean_recovered(storage: &dyn Backend, gone: &Gone) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for listed in storage.list("recovered/")? {
        if !listed.key.ends_with(".parquet") {
            continue;
        }
        let Some(bytes) = storage.get(&listed.key)? else {
            continue;
        };
        // A file that cannot be read is not proven free of erased rows: it
        // goes too (the handoff file holds every record it held).
        if gone.holds_any(&listed.key, bytes.bytes).unwrap_or(true) {
            storage.delete(&listed.key)?;
            removed.push(listed.key);
        }
    }
    Ok(removed)
}

/// The Parquet files the sealed runs list now (those a compaction merged
/// away left out).
pub fn listed(storage: &dyn Backend) -> Result<Vec<WrittenFile>> {
    let (chain, _) = audit::read_chain(storage)?;
    audit::listed_parquet(storage, &chain)
}
