//! `xquik-dm compact --out DIR|URL`: merges the small Parquet files of
//! closed date partitions into large ones, as an audited run of its own.
//!
//! A job that runs every five minutes writes a file or two per run: after a
//! year, hundreds of thousands of small files, which every warehouse reads
//! slowly. A partition is closed once its date has passed (runs write into
//! the partition of the date they started on). Compaction merges each
//! closed partition's files into one per table (more only past
//! [`FILE_ROWS`](crate::sinks::parquet::FILE_ROWS) rows), the same rows in
//! the same order, and swaps them in with the commit protocol of every run:
//!
//! 1. it claims the output and names the partitions it will write into;
//! 2. it reads each file, checks it against the manifest of the run that
//!    wrote it (a file no sealed run lists, or one that differs, is never
//!    merged), and writes the merged files next to it;
//! 3. it seals its manifest — the files removed, with the digests their
//!    runs listed, and the files added, with theirs. That is the commit
//!    point: before it, the old files are the listed ones and a killed
//!    compaction's new files are removed by the next run; after it, the new
//!    ones are, and the old ones are removed (by this run, or by the next
//!    one if this one is killed).
//!
//! So a SIGKILL at any instant leaves either the old or the new file set
//! listed, never both and never neither. In the Delta tables the swap is
//! one commit per table (`remove` of the inputs, `add` of the merged
//! files, `dataChange: false`), made by the seal just before the manifest:
//! a Delta reader sees the old set up to the version before it and the new
//! one from it on; a compaction killed between its commit and its chain
//! entry is undone by the next run's repair, before the new files go. A
//! glob reader of the data files (`parquet/<table>/date=*/*.parquet`)
//! sees both sets between step 3's seal and the removal that follows it
//! (milliseconds); readers that must never see that read the Delta table,
//! or run `compact` when they are not reading.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use arrow_array::{BooleanArray, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::audit::{self, Compaction, Manifest, RemovedFile};
use crate::error::{Error, Result};
use crate::sinks::parquet::{Columns, MessageColumns, ParquetSink, SendColumns, file_run};
use crate::sinks::{WrittenFile, sha256_hex};
use crate::sshsig::SigningKey;
use crate::storage::{Backend, Location, Storage, file_name};
use crate::store::{ManifestBody, RunStamp, Store};

/// A partition is merged when it holds at least this many files.
pub const MIN_FILES: usize = 2;

/// What a compaction did.
#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    /// The output folder or bucket.
    pub out: Location,
    /// The compaction's run ID.
    pub run_id: String,
    /// Its manifest, relative to the output root.
    pub manifest: String,
    /// Each partition merged.
    pub partitions: Vec<PartitionReport>,
    /// Files removed, in all.
    pub files_removed: u64,
    /// Files written in their place.
    pub files_added: u64,
    /// Rows moved.
    pub rows: u64,
    /// Bytes of the files removed.
    pub bytes_before: u64,
    /// Bytes of the files written.
    pub bytes_after: u64,
    /// Files left as they are, and why.
    pub skipped: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// One partition merged.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Its folder, `parquet/<table>/date=<date>`.
    pub dir: String,
    /// Files removed.
    pub files_removed: u64,
    /// Files written.
    pub files_added: u64,
    /// Rows.
    pub rows: u64,
}

/// Which closed partitions to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// All of them (`xquik-dm compact`): lists `parquet/`.
    All,
    /// Those dated after the given date (or all, when none): what an
    /// automatic compaction after a sync looks at, date by date, so that
    /// its cost depends on the days since the last one, not the history.
    After(Option<String>),
}

/// `xquik-dm compact`: every closed partition with at least `min_files`
/// files, its manifest signed with `key` when one is given.
pub fn run(out: &Location, min_files: usize, key: Option<&SigningKey>) -> Result<CompactReport> {
    out.require_existing("--out")?;
    let storage = crate::shard::open(out)?;
    compact(
        &storage,
        &RunStamp::now(),
        &Scope::All,
        min_files.max(2),
        key,
    )
}

/// The automatic compaction after a sync (`sync --compact`): when a date
/// has closed since the last compaction, the partitions of the dates since
/// then are compacted, in a run of its own stamped `stamp` (the sync's
/// clock as it ends). `None` when no date closed.
pub fn auto(
    storage: &Storage,
    stamp: &RunStamp,
    key: Option<&SigningKey>,
) -> Result<Option<CompactReport>> {
    let through = crate::checkpoint::Checkpoint::load(storage.as_ref())?
        .compaction
        .through;
    let yesterday = day_before(&stamp.date);
    if through.as_deref().is_some_and(|t| t >= yesterday.as_str()) {
        return Ok(None);
    }
    compact(storage, stamp, &Scope::After(through), MIN_FILES, key).map(Some)
}

/// Compacts the closed partitions in `scope` as the run `stamp`, its
/// manifest signed with `key` when one is given.
pub fn compact(
    storage: &Storage,
    stamp: &RunStamp,
    scope: &Scope,
    min_files: usize,
    key: Option<&SigningKey>,
) -> Result<CompactReport> {
    let started = Instant::now();
    let mut store = Store::open(storage, stamp)?;
    let backend = storage.as_ref();
    let today = stamp.date.as_str();
    let Plan { merges, skipped } = plan(backend, &store, scope, today, min_files)?;
    let dirs: Vec<String> = merges.iter().map(|(dir, _)| dir.clone()).collect();
    store.claim_dirs(&dirs)?;
    let run_id = store.run_id().to_owned();
    let (compaction, partitions) = merge_all(storage, merges, &run_id)?;
    let totals = Totals::of(&compaction);
    store.set_compaction(compaction);
    store.checkpoint_mut().compaction.through = Some(day_before(today));
    let mut body = manifest_body(scope, min_files, partitions.len(), &totals, skipped.len());
    body.ssh_key = key.cloned();
    let sealed = store.seal(body)?;
    Ok(CompactReport {
        out: backend.location(),
        run_id,
        manifest: sealed.chain.manifest,
        partitions,
        files_removed: totals.files_removed,
        files_added: totals.files_added,
        rows: totals.rows,
        bytes_before: totals.bytes_before,
        bytes_after: totals.bytes_after,
        skipped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The partitions to merge, each with the files that go, and the files
/// left as they are (with why).
struct Plan {
    merges: Vec<(String, Vec<RemovedFile>)>,
    skipped: Vec<String>,
}

/// Chooses the closed partitions in `scope` with at least `min_files`
/// files that a sealed run lists and that the checkpoint does not still
/// hold as pending.
fn plan(
    backend: &dyn Backend,
    store: &Store,
    scope: &Scope,
    today: &str,
    min_files: usize,
) -> Result<Plan> {
    let pending: HashSet<String> = store
        .checkpoint()
        .parquet
        .files
        .iter()
        .map(|f| f.path.clone())
        .collect();
    let mut skipped = Vec::new();
    let mut manifests: HashMap<String, Option<Manifest>> = HashMap::new();
    let mut merges: Vec<(String, Vec<RemovedFile>)> = Vec::new();
    for (dir, keys) in closed_partitions(backend, scope, today)? {
        let keys: Vec<String> = keys.into_iter().filter(|k| !pending.contains(k)).collect();
        if keys.len() < min_files {
            continue;
        }
        let mut removable = Vec::new();
        for key in keys {
            match listed_by(backend, &mut manifests, &key) {
                Some(removed) => removable.push(removed),
                None => skipped.push(format!("{key}: no sealed run lists it")),
            }
        }
        if removable.len() >= min_files {
            merges.push((dir, removable));
        }
    }
    Ok(Plan { merges, skipped })
}

/// Merges each planned partition into one file per table; returns what
/// was swapped, for the manifest, and a report per partition.
fn merge_all(
    storage: &Storage,
    merges: Vec<(String, Vec<RemovedFile>)>,
    run_id: &str,
) -> Result<(Compaction, Vec<PartitionReport>)> {
    let mut compaction = Compaction::default();
    let mut partitions = Vec::new();
    for (dir, removed) in merges {
        let added = if dir.starts_with(&format!("parquet/{}/", SendColumns::TABLE)) {
            rewrite::<SendColumns>(storage, &dir, &removed, run_id, None)?
        } else {
            rewrite::<MessageColumns>(storage, &dir, &removed, run_id, None)?
        };
        partitions.push(PartitionReport {
            dir,
            files_removed: removed.len() as u64,
            files_added: added.len() as u64,
            rows: added.iter().map(|f| f.rows).sum(),
        });
        compaction.removed.extend(removed);
        compaction.added.extend(added);
    }
    Ok((compaction, partitions))
}

/// What a compaction swapped, in figures.
struct Totals {
    files_removed: u64,
    files_added: u64,
    rows: u64,
    bytes_before: u64,
    bytes_after: u64,
}

impl Totals {
    fn of(c: &Compaction) -> Totals {
        Totals {
            files_removed: c.removed.len() as u64,
            files_added: c.added.len() as u64,
            rows: c.added.iter().map(|f| f.rows).sum::<u64>(),
            bytes_before: c.removed.iter().map(|r| r.file.bytes).sum::<u64>(),
            bytes_after: c.added.iter().map(|f| f.bytes).sum::<u64>(),
        }
    }
}

/// The compaction's options and figures, for its manifest.
fn manifest_body(
    scope: &Scope,
    min_files: usize,
    partitions: usize,
    totals: &Totals,
    skipped: usize,
) -> ManifestBody {
    let mut body = ManifestBody::empty("compact");
    body.options = serde_json::json!({
        "min_files": min_files,
        "scope": match scope {
            Scope::All => "all".to_owned(),
            Scope::After(None) => "closed".to_owned(),
            Scope::After(Some(date)) => format!("after {date}"),
        },
    });
    body.counts = serde_json::json!({
        "partitions": partitions,
        "files_removed": totals.files_removed,
        "files_added": totals.files_added,
        "rows": totals.rows,
        "bytes_before": totals.bytes_before,
        "bytes_after": totals.bytes_after,
        "skipped": skipped,
    });
    body
}

/// The Parquet files of closed partitions in `scope`, by folder: only
/// names this tool gives its files.
fn closed_partitions(
    storage: &dyn Backend,
    scope: &Scope,
    today: &str,
) -> Result<BTreeMap<String, Vec<String>>> {
    let tables = [MessageColumns::TABLE, SendColumns::TABLE];
    let mut listed = Vec::new();
    match scope {
        Scope::All | Scope::After(None) => {
            for table in tables {
                listed.extend(storage.list(&format!("parquet/{table}/"))?);
            }
        }
        Scope::After(Some(after)) => {
            let mut date = day_after(after);
            while date.as_str() < today {
                for table in tables {
                    listed.extend(storage.list(&format!("parquet/{table}/date={date}/"))?);
                }
                date = day_after(&date);
            }
        }
    }
    let mut by_dir: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for object in listed {
        let Some((dir, name)) = object.key.rsplit_once('/') else {
            continue;
        };
        let Some(date) = dir.rsplit('/').next().and_then(|d| d.strip_prefix("date=")) else {
            continue;
        };
        if date < today && file_run(name).is_some() {
            by_dir
                .entry(dir.to_owned())
                .or_default()
                .push(object.key.clone());
        }
    }
    Ok(by_dir)
}

/// The file `key` as the manifest of the run named in it lists it.
fn listed_by(
    storage: &dyn Backend,
    manifests: &mut HashMap<String, Option<Manifest>>,
    key: &str,
) -> Option<RemovedFile> {
    let run = file_run(file_name(key))?;
    let manifest = manifests.entry(run.to_owned()).or_insert_with(|| {
        let path = format!("{}/{run}.manifest.json", audit::RUNS_DIR);
        audit::read_manifest(storage, &path).ok().map(|(m, _)| m)
    });
    let file = manifest
        .as_ref()?
        .files
        .iter()
        .find(|f| f.path == key && f.offset.is_none())?;
    Some(RemovedFile {
        run_id: run.to_owned(),
        file: file.clone(),
    })
}

/// Which rows of a batch a rewrite keeps (`true`); an erasure's filter.
pub type Keep<'a> = &'a dyn Fn(&RecordBatch) -> Result<BooleanArray>;

/// Rewrites `removed` (in order) into new files of the run `run_id` in
/// `dir`: the one place that rewrites sealed Parquet files, for a
/// compaction (every row) and an erasure (the rows `keep` keeps). Each
/// input is checked against its manifest first: a file that changed since
/// its run sealed it stops the rewrite, with nothing swapped.
pub fn rewrite<C: Columns>(
    storage: &Storage,
    dir: &str,
    removed: &[RemovedFile],
    run_id: &str,
    keep: Option<Keep<'_>>,
) -> Result<Vec<WrittenFile>> {
    let mut sink = ParquetSink::<C>::in_dir(storage, dir.to_owned(), run_id);
    let mut added = Vec::new();
    for r in removed {
        let path = storage.describe(&r.file.path);
        let corrupt = |reason: String| Error::Corrupt {
            path: path.clone(),
            reason: format!("{reason}: nothing was rewritten; run `xquik-dm verify`"),
        };
        let bytes = storage
            .get(&r.file.path)?
            .ok_or_else(|| corrupt("missing".into()))?
            .bytes;
        if sha256_hex(&bytes) != r.file.sha256 {
            return Err(corrupt(format!("differs from run {}'s manifest", r.run_id)));
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .and_then(|b| b.with_batch_size(16_384).build())
            .map_err(|e| corrupt(format!("not readable as Parquet ({e})")))?;
        let mut rows = 0u64;
        for batch in reader {
            let mut batch = batch.map_err(|e| corrupt(format!("not readable as Parquet ({e})")))?;
            rows += batch.num_rows() as u64;
            if let Some(keep) = keep {
                let mask = keep(&batch)?;
                batch = arrow_select::filter::filter_record_batch(&batch, &mask)
                    .map_err(|e| corrupt(format!("rows not filtered ({e})")))?;
            }
            if batch.num_rows() > 0 {
                sink.push_batch(&batch)?;
            }
            if sink.is_full()
                && let Some(file) = sink.close()?
            {
                added.push(file);
            }
        }
        if rows != r.file.rows {
            return Err(corrupt(format!(
                "holds {rows} rows, run {}'s manifest says {}",
                r.run_id, r.file.rows
            )));
        }
    }
    added.extend(sink.close()?);
    Ok(added)
}

/// The date before `date` (`YYYY-MM-DD`).
fn day_before(date: &str) -> String {
    shift(date, -1)
}

/// The date after `date`.
fn day_after(date: &str) -> String {
    shift(date, 1)
}

fn shift(date: &str, days: i64) -> String {
    match chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d") {
        Ok(d) => (d + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string(),
        // Not a date: nothing sorts after it but itself, which ends a scan.
        Err(_) => "9999-12-31".to_owned(),
    }
}

impl std::fmt::Display for CompactReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "compacted {} partitions of {}: {} files ({} bytes) merged into {} ({} bytes), {} rows, in {:.2} s",
            self.partitions.len(),
            self.out,
            self.files_removed,
            self.bytes_before,
            self.files_added,
            self.bytes_after,
            self.rows,
            self.seconds
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "  {}: {} files -> {} ({} rows)",
                p.dir, p.files_removed, p.files_added, p.rows
            )?;
        }
        for s in &self.skipped {
            writeln!(f, "  left as it is: {s}")?;
        }
        writeln!(f, "  manifest: {}", self.manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_across_months_and_years() {
        assert_eq!(day_before("2026-03-01"), "2026-02-28");
        assert_eq!(day_after("2026-12-31"), "2027-01-01");
        assert_eq!(day_after("garbage"), "9999-12-31");
    }
}
