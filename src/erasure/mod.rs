//! Erasure: taking messages out of every output the tool wrote, with
//! body-free evidence, and keeping them out (`forget`, and `sync`'s
//! retention).
//!
//! An erasure is an audited run of its own, like `compact`: its own run ID,
//! manifest, chain entry and rows file. The rows file lists the erased
//! records' IDs (one [`AuditRow`] line each: `record_type`, `user_id` — the
//! conversation or the recipient — and `message_id`, sorted by message ID
//! then record type); the manifest's `erasure` object ([`Erasure`]) holds
//! the counts per conversation, a Merkle root over the erased message IDs,
//! the reason and the time, never a body.
//!
//! (The mechanism and the invariant `verify` checks across erasures are
//! documented here as they land.)

mod record;

use serde::Serialize;

pub use record::{Erasure, ErasureKind, Generation, MAX_REASON_CHARS};

use crate::audit::{AuditRow, Manifest};
use crate::error::Result;
use crate::sshsig::SigningKey;
use crate::storage::{Location, Storage};
use crate::store::{RunStamp, Store};

/// What to erase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Whole conversations, by numeric user ID (usernames are resolved
    /// before): every history record of the conversation and every send
    /// to that user. These users also become forgotten: later syncs skip
    /// them until `forget --undo-user`.
    pub users: Vec<String>,
    /// Single records, by message ID (history and send records alike).
    pub messages: Vec<String>,
    /// Retention: every record created before this instant (`created_at`,
    /// else the time in the message's snowflake ID; a send's `sent_at`).
    pub older_than: Option<chrono::DateTime<chrono::Utc>>,
    /// `forget --undo-user`: users to take off the forgotten list.
    pub undo_users: Vec<String>,
}

/// What `forget` did, for the terminal or `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// The output folder or bucket.
    pub out: Location,
    /// The erasure's run ID.
    pub run_id: String,
    /// Its manifest, relative to the output root.
    pub manifest: String,
    /// What the manifest says.
    pub erasure: Erasure,
    /// Parquet files rewritten (removed) and written in their place.
    pub parquet_removed: u64,
    /// Parquet files written.
    pub parquet_added: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Checks a reason: required, body-free in practice (short), at most
/// [`MAX_REASON_CHARS`] characters. Bad input otherwise.
pub fn check_reason(reason: &str) -> Result<()> {
    let _ = reason;
    todo!()
}

/// Runs the erasure of `selection` as a run of its own on `storage`
/// (what `forget` and `sync --retain-days` call): opens the store, erases,
/// seals the manifest (signed with `key` when given).
pub fn run(
    storage: &Storage,
    stamp: &RunStamp,
    selection: &Selection,
    kind: ErasureKind,
    reason: &str,
    retain_days: Option<u32>,
    key: Option<&SigningKey>,
) -> Result<ErasureReport> {
    let _ = (storage, stamp, selection, kind, reason, retain_days, key);
    todo!()
}

/// Erases `selection` inside the open run of `store`, which must not have
/// appended anything: the handoff file's new generation, the Parquet
/// rewrite (the store's compaction), the tombstones. The store's manifest
/// then carries the returned [`Erasure`] when it is sealed.
pub fn erase(
    store: &mut Store,
    selection: &Selection,
    kind: ErasureKind,
    reason: &str,
) -> Result<Erasure> {
    let _ = (store, selection, kind, reason);
    todo!()
}

/// The erased records of an erasure run, from its rows file, checked
/// against the manifest's digest (for `load`).
pub fn erased_ids(storage: &Storage, manifest: &Manifest) -> Result<Vec<AuditRow>> {
    let _ = (storage, manifest);
    todo!()
}

/// The time encoded in a snowflake ID, in milliseconds since the epoch.
pub fn snowflake_millis(id: &str) -> Option<i64> {
    let id: u64 = id.parse().ok()?;
    i64::try_from(id >> 22).ok()?.checked_add(1_288_834_974_657)
}

impl std::fmt::Display for ErasureReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.erasure;
        writeln!(
            f,
            "erased {} records ({} sends) from {} in {} conversations; {} Parquet files rewritten into {}, in {:.2} s",
            e.erased,
            e.sends_erased,
            self.out,
            e.by_conversation.len(),
            self.parquet_removed,
            self.parquet_added,
            self.seconds
        )?;
        for (user, count) in &e.by_conversation {
            writeln!(f, "  {user}: {count}")?;
        }
        for user in &e.forgotten_users {
            writeln!(f, "  forgotten: {user} (later syncs skip it)")?;
        }
        for user in &e.undone_users {
            writeln!(f, "  no longer forgotten: {user}")?;
        }
        writeln!(f, "  tombstones: {}", e.tombstones)?;
        writeln!(f, "  manifest: {}", self.manifest)
    }
}
