//! Retention (`sync --retain-days N`, `retain_days` in a job file): at most
//! once a day, every record older than N days is erased from every output,
//! by the erasure mechanism ([`crate::erasure::run`], kind `retention`), as
//! an audited run of its own right after the sync's run is sealed. Its
//! manifest carries the same evidence as a `forget` (counts, Merkle root,
//! reason, the window and the cut-off instant), and its IDs become
//! tombstones, so that no later sync writes them again.
//!
//! Old means: `created_at` before the cut-off (the run's start minus N
//! days); where the API gave no `created_at`, the time in the message's
//! snowflake ID; for a send record, its `sent_at`.
//!
//! "At most once a day" is kept in the state: the sync's run commits, with
//! its own rows, the day and the run ID the erasure will have
//! (`checkpoint.retention`). A later sync the same day finds that run's
//! manifest and does nothing; if the manifest is missing (the erasure
//! failed, or was killed and undone by the next run's repair), it tries
//! again. The check costs one existence check of one key per run, and the
//! read of that one manifest on the runs of the same day.
//!
//! Cost: the erasure reads the handoff file once (the IDs and times of
//! every record; it has to write the file's new generation without the old
//! ones anyway) and rewrites only the Parquet files holding an old record;
//! once a day, not on every run. Days with nothing old still seal a
//! retention run that erased 0 records: the daily evidence that retention
//! is in force.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::audit;
use crate::checkpoint::RetentionState;
use crate::erasure::{self, ErasureKind, ErasureReport, Selection};
use crate::error::{Error, Result};
use crate::sshsig::SigningKey;
use crate::storage::Storage;
use crate::store::{RunStamp, Store};

/// A retention erasure to run once the sync's run is sealed.
#[derive(Debug, Clone)]
pub(super) struct Due {
    /// The erasure run's stamp, recorded in the sync's checkpoint.
    stamp: RunStamp,
    /// The window.
    days: u32,
    /// Records created before this instant go.
    cutoff: DateTime<Utc>,
}

/// The start of a run, as its stamp says.
fn started(stamp: &RunStamp) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&stamp.started_at)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::invalid("--retain-days", format!("the run's start time: {e}")))
}

/// Whether retention is due in the run `sync` (`elapsed` after its start),
/// with a window of `days`: when it is, records the day and the erasure
/// run's ID in `store`'s checkpoint (committed when the run is sealed) and
/// returns the erasure to run after the seal.
pub(super) async fn plan(
    store: &mut Store,
    days: u32,
    sync: &RunStamp,
    elapsed: Duration,
) -> Result<Option<Due>> {
    let state = store.checkpoint().retention.clone();
    if state.last_day.as_deref() == Some(sync.date.as_str()) && applied(store, &state).await? {
        return Ok(None);
    }
    let now = started(sync)? + chrono::Duration::from_std(elapsed).unwrap_or_default();
    let stamp = RunStamp::at(now);
    let cutoff = now - chrono::Duration::days(i64::from(days));
    store.checkpoint_mut().retention = RetentionState {
        last_day: Some(sync.date.clone()),
        run: Some(stamp.run_id.clone()),
    };
    Ok(Some(Due {
        stamp,
        days,
        cutoff,
    }))
}

/// Whether the retention run the state names was sealed: its manifest is
/// there and records a retention. (When the erasure found work of a killed
/// run to seal first, that run took the planned ID and the erasure another:
/// then this is false, and the next sync applies retention again.)
async fn applied(store: &Store, state: &RetentionState) -> Result<bool> {
    let Some(run) = state.run.clone() else {
        return Ok(false);
    };
    let storage = store.storage().clone();
    tokio::task::spawn_blocking(move || {
        let key = audit::manifest_key(&run);
        if storage.as_ref().size(&key)?.is_none() {
            return Ok(false);
        }
        let (manifest, _) = audit::read_manifest(storage.as_ref(), &key)?;
        Ok(manifest
            .erasure
            .is_some_and(|e| e.kind == ErasureKind::Retention))
    })
    .await
    .map_err(|e| Error::io("<retention>", std::io::Error::other(e)))?
}

/// The reason the retention run's manifest gives.
fn reason(days: u32) -> String {
    format!("retention: records older than {days} days")
}

/// Runs the retention erasure `due` on `storage` (the sync's run is sealed
/// and has let go of it), its manifest signed with `key` when given.
pub(super) async fn apply(
    storage: Storage,
    due: Due,
    key: Option<SigningKey>,
) -> Result<ErasureReport> {
    tokio::task::spawn_blocking(move || {
        let selection = Selection {
            older_than: Some(due.cutoff),
            ..Selection::default()
        };
        erasure::run(
            &storage,
            &due.stamp,
            &selection,
            ErasureKind::Retention,
            &reason(due.days),
            Some(due.days),
            key.as_ref(),
        )
    })
    .await
    .map_err(|e| Error::io("<retention>", std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_short_and_names_the_window() {
        let text = reason(crate::commands::sync::MAX_RETAIN_DAYS);
        assert!(text.chars().count() <= erasure::MAX_REASON_CHARS, "{text}");
        assert!(text.contains("36500 days"), "{text}");
    }
}
