//! Log cleanup per `delta.logRetentionDuration` (default 30 days), run
//! after a checkpoint: commit and checkpoint files older than the retention
//! are deleted, but only below a checkpoint that is kept, so that every
//! version from the oldest one kept onward can still be replayed, and never
//! anything at or after the newest checkpoint.
//!
//! A file's age is its commit's `commitInfo.timestamp` rather than the
//! storage's modification time (which [`crate::storage::Backend::list`]
//! does not report, and which a bucket copy would reset): a commit without
//! one is treated as young, so nothing from it onward is deleted.

use std::collections::BTreeMap;

use super::actions::Action;
use super::log::Log;
use crate::error::Result;

/// The log retention when the table does not set one.
pub(crate) const DEFAULT_LOG_RETENTION_MS: i64 = 30 * DAY_MS;
/// How long a checkpoint keeps tombstones when the table does not say:
/// the protocol's default week, which this tool keeps (and never lowers
/// in the tables it creates) although every file it removes from a table
/// (a compaction's inputs, a killed run's files) it also deletes, right
/// after the seal. A tombstone is what stops a `VACUUM` by another engine
/// (Spark, Databricks, delta-rs) from deleting a removed file that is
/// older than the retention; the files this tool removes are still needed
/// until the removing run seals — a compaction killed before that has
/// its commit undone by the next run, which adds its inputs back — and a
/// shorter `delta.deletedFileRetentionDuration` would also let such a
/// `VACUUM` delete data files a run has written and not yet committed. The
/// cost is bounded: a week of compactions' inputs (about 2,000 for a job
/// every five minutes with `sync --compact`), in the checkpoint only,
/// where readers skip them (see `checkpoint::Rows::Live`).
pub(crate) const DEFAULT_TOMBSTONE_RETENTION_MS: i64 = 7 * DAY_MS;
const DAY_MS: i64 = 86_400_000;

/// Reads a Delta interval property (`interval 30 days`, `2 weeks`, ...) as
/// milliseconds; `None` when it is not one.
pub(crate) fn parse_interval(text: &str) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_prefix("interval").unwrap_or(&text).trim();
    let (count, unit) = text.split_once(char::is_whitespace)?;
    let count: i64 = count.trim().parse().ok()?;
    let unit_ms = match unit.trim().trim_end_matches('s') {
        "millisecond" => 1,
        "second" => 1_000,
        "minute" => 60_000,
        "hour" => 3_600_000,
        "day" => DAY_MS,
        "week" => 7 * DAY_MS,
        _ => return None,
    };
    count.checked_mul(unit_ms).filter(|ms| *ms >= 0)
}

/// A retention property of the table, or its default; `None` when the
/// table sets one this module cannot read (then nothing is cleaned).
pub(crate) fn retention(
    configuration: &BTreeMap<String, String>,
    key: &str,
    default: i64,
) -> Option<i64> {
    match configuration.get(key) {
        None => Some(default),
        Some(text) => parse_interval(text),
    }
}

/// When the commit of `version` was made, from its `commitInfo`.
fn commit_time(log: &Log, version: u64) -> Result<Option<i64>> {
    let Some((_, actions)) = log.read_commit(version)? else {
        return Ok(None);
    };
    Ok(actions.into_iter().find_map(|a| match a {
        Action::CommitInfo(info) if info.timestamp > 0 => Some(info.timestamp),
        _ => None,
    }))
}

/// Deletes the log files older than `now - retention_ms` below the newest
/// checkpoint that keeps every later version replayable; `newest` is the
/// newest checkpoint's version. Returns the keys deleted.
pub(crate) fn clean(log: &Log, newest: u64, now: i64, retention_ms: i64) -> Result<Vec<String>> {
    let cutoff = now.saturating_sub(retention_ms);
    let listing = log.list()?;
    // The first version that must stay: the oldest one not yet expired.
    let mut first_young = newest;
    for &version in listing.commits.iter().filter(|&&v| v < newest) {
        if commit_time(log, version)?.is_none_or(|t| t >= cutoff) {
            first_young = version;
            break;
        }
    }
    // Versions from the checkpoint at or before it on stay replayable.
    let Some(&keep) = listing
        .checkpoints
        .iter()
        .rev()
        .find(|&&c| c <= first_young && c <= newest)
    else {
        return Ok(Vec::new());
    };
    let mut deleted = Vec::new();
    let old_commits = listing.commits.iter().filter(|&&v| v < keep);
    let old_checkpoints = listing.checkpoints.iter().filter(|&&c| c < keep);
    let keys = old_commits
        .map(|&v| log.commit_key(v))
        .chain(old_checkpoints.map(|&c| log.checkpoint_key(c)));
    for key in keys {
        log.storage.delete(&key)?;
        deleted.push(key);
    }
    Ok(deleted)
}
