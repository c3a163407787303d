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
//! # The mechanism
//!
//! [`run`] opens the store (a killed run's left-over work is sealed first,
//! in a run of its own) and [`erase`]s:
//! 1. one pass over the handoff file finds the records the [`Selection`]
//!    names and checks the old bytes against the whole-file digest the
//!    checkpoint and `SHA256SUMS` carry; a second copies the kept records
//!    into the staged new generation (`handoff.rs`), named by the run;
//! 2. the sealed Parquet files holding an erased row are rewritten without
//!    it through compaction's [`rewrite`](crate::commands::compact::rewrite)
//!    (into folders claimed first), and recorded as the run's
//!    [`Compaction`]; the rows dropped must be exactly the records erased
//!    (`parquet.rs`); Parquet files under `recovered/` holding an erased
//!    row are deleted;
//! 3. the erased records go into the rows file, sorted;
//! 4. the seal chains the manifest — **the commit point** — then installs
//!    the new generation (a rename in a folder; in a bucket every old
//!    segment is deleted and the generation put at offset 0), deletes the
//!    Parquet files rewritten, and puts the erasure in force in the
//!    checkpoint: the rows file as tombstones, the retention cut-off, the
//!    forgotten conversations (`store/generation.rs`).
//!
//! A SIGKILL before the commit point leaves the old generation and old
//! files listed: the next run removes the staged generation and the new
//! files by their names (repair step 5), and nothing is erased until the
//! erasure is run again. After it, the next run finishes the install, the
//! deletions and the checkpoint (repair steps 7 and 8). `state/tmp/` (the
//! local backend's staging) is swept by every run when it opens the
//! output. Either way, once the next run is done, every output holds all
//! the erased bodies or none.
//!
//! # The invariant `verify` checks across erasures
//!
//! Earlier manifests keep their digests. The handoff file is the last
//! erasure's generation plus the segments sealed after it, and:
//! - **rows:** its records, in order, are the sealed runs' rows (their
//!   rows files, in chain order) minus the records the erasure runs' rows
//!   files list — so a record removed, added or reordered outside an
//!   erasure fails (exit 5), whatever generation the file is;
//! - **bytes:** the generation and every later segment match their
//!   manifests' digests; the segments of replaced generations tile the
//!   generation the next erasure replaced, byte and row counts equal to
//!   what that erasure says it read (their bytes were checked by it, against
//!   the checkpoint's digest, before it rewrote them);
//! - **counts:** each erasure's rows file holds exactly `erased` records,
//!   sorted, as many per conversation and as many sends as its manifest
//!   says, under its Merkle root; its generation holds the records it
//!   replaced minus `erased`; its Parquet rewrite dropped exactly `erased`
//!   rows, and the files it removed are those earlier runs listed, digest
//!   for digest;
//! - **in force:** the checkpoint names every erasure's rows file as
//!   tombstones (with its digest), the forgotten conversations and the
//!   retention cut-off the erasures imply.

mod handoff;
mod parquet;
pub mod record;
pub mod tombstones;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

pub use crate::timestamp::snowflake_millis;
pub use record::{Erasure, ErasureKind, Generation, MAX_REASON_CHARS};

use crate::audit::{AuditRow, Compaction, Manifest, Merkle};
use crate::checkpoint::{ErasureState, TombstoneFile};
use crate::error::{Error, Result};
use crate::sinks::sha256_hex;
use crate::sshsig::SigningKey;
use crate::storage::{Backend, Location, Storage};
use crate::store::{ManifestBody, RunStamp, StagedGeneration, Store};

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

/// Checks a reason: required, not blank, at most [`MAX_REASON_CHARS`]
/// characters (it is stored in the manifest, so it must stay short and
/// body-free). Bad input otherwise.
pub fn check_reason(reason: &str) -> Result<()> {
    let chars = reason.chars().count();
    if reason.trim().is_empty() {
        return Err(Error::invalid(
            "--reason",
            "required: say why (a ticket, \"GDPR Art. 17 request\"), never a message's text",
        ));
    }
    if chars > MAX_REASON_CHARS {
        return Err(Error::invalid(
            "--reason",
            format!(
                "{chars} characters; at most {MAX_REASON_CHARS} (it is stored in the manifest: a reference, never a message's text)"
            ),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(Error::invalid("--reason", "holds control characters"));
    }
    Ok(())
}

/// Runs the erasure of `selection` as a run of its own on `storage`
/// (what `forget` and `sync --retain-days` call): opens the store, erases,
/// seals the manifest (signed with `key` when given). Work a killed run
/// left for the next one to take over is sealed first, in a run of its
/// own, so that the erasure's manifest lists only what it erased and
/// wrote.
pub fn run(
    storage: &Storage,
    stamp: &RunStamp,
    selection: &Selection,
    kind: ErasureKind,
    reason: &str,
    retain_days: Option<u32>,
    key: Option<&SigningKey>,
) -> Result<ErasureReport> {
    check_reason(reason)?;
    let started = Instant::now();
    let command = command_of(kind);
    let mut store = Store::open(storage, stamp)?;
    if !store.is_untouched() {
        let mut body = ManifestBody::empty(command);
        body.ssh_key = key.cloned();
        store.seal(body)?;
        store = Store::open(storage, &RunStamp::now())?;
    }
    let mut erasure = erase(&mut store, selection, kind, reason)?;
    erasure.retain_days = retain_days;
    store.set_erasure(erasure.clone());
    let run_id = store.run_id().to_owned();
    let (removed, added) = store
        .compaction()
        .map_or((0, 0), |c| (c.removed.len() as u64, c.added.len() as u64));
    let mut body = ManifestBody::empty(command);
    body.options = serde_json::json!({
        "kind": kind,
        "users": selection.users.len(),
        "messages": selection.messages.len(),
        "undo_users": selection.undo_users.len(),
        "retain_days": retain_days,
    });
    body.counts = serde_json::json!({
        "erased": erasure.erased,
        "sends_erased": erasure.sends_erased,
        "parquet_removed": removed,
        "parquet_added": added,
    });
    body.ssh_key = key.cloned();
    let sealed = store.seal(body)?;
    Ok(ErasureReport {
        out: storage.location(),
        run_id,
        manifest: sealed.chain.manifest,
        erasure,
        parquet_removed: removed,
        parquet_added: added,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The manifest's `command` of an erasure of `kind`.
fn command_of(kind: ErasureKind) -> &'static str {
    match kind {
        ErasureKind::Forget | ErasureKind::UndoForget => "forget",
        ErasureKind::Retention => "retention",
    }
}

/// Erases `selection` inside the open run of `store`, which must not have
/// appended anything: stages the handoff file's new generation, rewrites
/// the Parquet files that hold erased rows (the store's compaction),
/// deletes such files under `recovered/`, and writes the erased IDs into
/// the run's rows file. The store's manifest then carries the returned
/// [`Erasure`] (set it with [`Store::set_erasure`]); sealing it is the
/// commit point.
pub fn erase(
    store: &mut Store,
    selection: &Selection,
    kind: ErasureKind,
    reason: &str,
) -> Result<Erasure> {
    check_reason(reason)?;
    let storage = store.storage().clone();
    if !store.is_untouched() {
        return Err(Error::invalid(
            "--out",
            "an erasure runs in a run of its own: this run has appended records (see erasure::run)",
        ));
    }
    let run_id = store.run_id().to_owned();
    let (committed, digest) = store.handoff_state();
    let matcher = handoff::Matcher::new(selection);
    let staged = handoff::stage(storage.as_ref(), committed, &digest, &matcher, &run_id)?;
    let mut erased = Vec::new();
    let mut generation = None;
    if let Some(staged) = staged {
        let gone = parquet::Gone::of(&staged.erased);
        let affected =
            parquet::affected(storage.as_ref(), parquet::listed(storage.as_ref())?, &gone)?;
        let dirs: Vec<String> = affected.keys().cloned().collect();
        // Claimed before a file is written there: a killed erasure's new
        // files are found by name by the next run.
        store.claim_dirs(&dirs)?;
        let compaction = parquet::rewrite_all(&storage, affected, &gone, &run_id)?;
        check_parquet(storage.as_ref(), &compaction, staged.erased.len() as u64)?;
        parquet::clean_recovered(storage.as_ref(), &gone)?;
        store.set_compaction(compaction);
        generation = Some(Generation {
            before_bytes: staged.before.0,
            before_rows: staged.before.1,
            before_sha256: staged.before.2.clone(),
            bytes: staged.bytes,
            rows: staged.history_rows + staged.send_rows,
            sha256: staged.sha256.clone(),
        });
        store.set_generation(StagedGeneration {
            key: staged.key.clone(),
            bytes: staged.bytes,
            rows: staged.history_rows + staged.send_rows,
            sha256: staged.sha256.clone(),
            state: staged.state.clone(),
        })?;
        erased = staged.erased;
    }
    erased.sort_by(|a, b| {
        (&a.message_id, &a.record_type, &a.user_id).cmp(&(
            &b.message_id,
            &b.record_type,
            &b.user_id,
        ))
    });
    store.record_erased(&erased)?;
    Ok(record(store, selection, kind, reason, &erased, generation))
}

/// The manifest's `erasure` object of the records `erased` (sorted).
fn record(
    store: &Store,
    selection: &Selection,
    kind: ErasureKind,
    reason: &str,
    erased: &[AuditRow],
    handoff: Option<Generation>,
) -> Erasure {
    let mut by_conversation: BTreeMap<String, u64> = BTreeMap::new();
    for r in erased {
        *by_conversation.entry(r.user_id.clone()).or_default() += 1;
    }
    let state = &store.checkpoint().erasure;
    let tombstones = state.tombstone_count()
        + if kind == ErasureKind::Retention {
            0
        } else {
            erased.len() as u64
        };
    Erasure {
        kind,
        reason: reason.to_owned(),
        erased_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        erased: erased.len() as u64,
        by_conversation,
        sends_erased: erased.iter().filter(|r| r.record_type == "send").count() as u64,
        merkle_root: merkle_root(erased),
        forgotten_users: dedup(&selection.users),
        undone_users: dedup(&selection.undo_users),
        retain_days: None,
        older_than: selection
            .older_than
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        handoff,
        tombstones,
    }
}

/// The erasures in force after the runs of `manifests` (in chain order):
/// what the checkpoint must hold, for `verify` and for `rebuild`.
pub fn state_of<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> ErasureState {
    let mut state = ErasureState::default();
    for m in manifests {
        if let Some(erasure) = &m.erasure {
            let rows = TombstoneFile {
                run_id: m.run_id.clone(),
                path: m.audit_rows.path.clone(),
                sha256: m.audit_rows.sha256.clone(),
                rows: m.audit_rows.rows,
            };
            state.put_in_force(&m.run_id, erasure, rows);
        }
    }
    state
}

/// The Merkle root over the message IDs of `erased`, sorted, each once.
pub fn merkle_root(erased: &[AuditRow]) -> Option<String> {
    let ids: BTreeSet<&str> = erased.iter().map(|r| r.message_id.as_str()).collect();
    let mut merkle = Merkle::default();
    for id in ids {
        merkle.push(id.as_bytes());
    }
    merkle.root()
}

fn dedup(users: &[String]) -> Vec<String> {
    users
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Refuses a Parquet rewrite that did not take out exactly the `erased`
/// records the handoff file held: the two outputs would disagree.
fn check_parquet(storage: &dyn Backend, compaction: &Compaction, erased: u64) -> Result<()> {
    let before: u64 = compaction.removed.iter().map(|r| r.file.rows).sum();
    let after: u64 = compaction.added.iter().map(|f| f.rows).sum();
    if before - after.min(before) == erased {
        return Ok(());
    }
    Err(Error::Corrupt {
        path: storage.describe("parquet"),
        reason: format!(
            "the Parquet files hold {} of the {erased} records erased from the handoff file: nothing was erased; run `xquik-dm verify`",
            before - after.min(before)
        ),
    })
}

/// The erased records of an erasure run, from its rows file, checked
/// against the manifest's digest (for `load`).
pub fn erased_ids(storage: &Storage, manifest: &Manifest) -> Result<Vec<AuditRow>> {
    let info = &manifest.audit_rows;
    let path = storage.describe(&info.path);
    let bytes = storage
        .get(&info.path)?
        .ok_or_else(|| Error::Corrupt {
            path: path.clone(),
            reason: format!("missing: run {}'s rows file", manifest.run_id),
        })?
        .bytes;
    if sha256_hex(&bytes) != info.sha256 {
        return Err(Error::Corrupt {
            path,
            reason: format!("SHA-256 differs from run {}'s manifest", manifest.run_id),
        });
    }
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|_| Error::Corrupt {
                path: path.clone(),
                reason: "holds a line that is not a row".into(),
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_short_and_one_line() {
        assert!(check_reason("ticket 4711").is_ok());
        assert!(check_reason(&"é".repeat(MAX_REASON_CHARS)).is_ok());
        for bad in ["", "   ", &"x".repeat(MAX_REASON_CHARS + 1), "two\nlines"] {
            let err = check_reason(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn the_merkle_root_is_over_the_sorted_ids_each_once() {
        let row = |t: &str, m: &str| AuditRow {
            record_type: t.into(),
            user_id: "1".into(),
            message_id: m.into(),
        };
        let a = merkle_root(&[row("history", "2"), row("send", "2"), row("history", "1")]);
        let mut expected = Merkle::default();
        expected.push(b"1");
        expected.push(b"2");
        assert_eq!(a, expected.root());
        assert_eq!(merkle_root(&[]), None);
    }

    #[test]
    fn snowflake_ids_carry_their_time() {
        // 2022-11-01T00:00:00Z in X's epoch, shifted into an ID.
        let ms = 1_667_260_800_000_i64;
        let id = ((ms - 1_288_834_974_657) as u64) << 22 | 12_345;
        assert_eq!(snowflake_millis(&id.to_string()), Some(ms));
        assert_eq!(snowflake_millis("not an id"), None);
    }
}
