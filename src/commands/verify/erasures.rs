//! Erasures: what `verify` checks across them (the invariant is stated in
//! [`crate::erasure`]).
//!
//! - each erasure's own record: its rows file holds exactly `erased`
//!   records, sorted, as many per conversation and as many sends as the
//!   manifest says, under its Merkle root; an erasure that erased records
//!   wrote a new handoff generation and a Parquet rewrite (their counts are
//!   checked by [`super::files`] and [`super::compactions`]);
//! - the handoff file's records, in order, are the sealed runs' rows (their
//!   rows files, in chain order) minus the erased ones: removing, adding or
//!   reordering a record outside an erasure fails, whatever generation the
//!   file is;
//! - the checkpoint keeps every erasure in force: each erasure's rows file
//!   as tombstones (with its digest), the forgotten conversations and the
//!   retention cut-off, as the chain of erasures says.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;

use sha2::{Digest, Sha256};

use super::findings::VerifyReport;
use crate::audit::{self, AuditRow, Manifest};
use crate::checkpoint::Checkpoint;
use crate::erasure::merkle_root;
use crate::erasure::record::{ErasureKind, staged_key};
use crate::records::RecordKey;
use crate::sinks::jsonl;
use crate::storage::Backend;

/// Checks the erasures among `manifests`. `full` when every run is
/// checked (not `--since`); `covered` is where the sealed segments of the
/// handoff file end; `interrupted` when the last run sealed and its
/// checkpoint did not follow.
pub(super) fn check_erasures(
    dir: &dyn Backend,
    manifests: &[Manifest],
    (full, covered, interrupted): (bool, u64, bool),
    report: &mut VerifyReport,
) {
    let mut erased: HashSet<(String, String, String)> = HashSet::new();
    let mut any = false;
    for m in manifests {
        let Some(e) = &m.erasure else { continue };
        any |= e.erased > 0;
        let Some(rows) = rows_of(dir, m, report) else {
            continue;
        };
        check_record(m, &rows, report);
        erased.extend(
            rows.into_iter()
                .map(|r| (r.record_type, r.user_id, r.message_id)),
        );
    }
    if full && any {
        check_rows_minus_erased(dir, manifests, &erased, covered, report);
    }
    if full {
        let last = manifests.len().saturating_sub(usize::from(interrupted));
        check_state(dir, manifests.get(..last).unwrap_or_default(), report);
    }
}

/// The rows of an erasure run's rows file (its digest is checked with the
/// other logs).
fn rows_of(dir: &dyn Backend, m: &Manifest, report: &mut VerifyReport) -> Option<Vec<AuditRow>> {
    let reader = match dir.reader(&m.audit_rows.path, None) {
        Ok(r) => r,
        Err(e) => {
            report.fail(&m.audit_rows.path, e.to_string());
            return None;
        }
    };
    let mut rows = Vec::new();
    for line in std::io::BufReader::new(reader).split(b'\n') {
        match line.map(|l| serde_json::from_slice::<AuditRow>(&l)) {
            Ok(Ok(row)) => rows.push(row),
            _ => {
                report.fail(&m.audit_rows.path, "holds a line that is not a row");
                return None;
            }
        }
    }
    Some(rows)
}

/// Checks an erasure's counts against its rows file.
fn check_record(m: &Manifest, rows: &[AuditRow], report: &mut VerifyReport) {
    let Some(e) = &m.erasure else { return };
    let key = audit::manifest_key(&m.run_id);
    let mut by_conversation: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        *by_conversation.entry(r.user_id.clone()).or_default() += 1;
    }
    let sends = rows.iter().filter(|r| r.record_type == "send").count() as u64;
    let sorted = rows.windows(2).all(|w| match w {
        [a, b] => {
            (&a.message_id, &a.record_type, &a.user_id)
                <= (&b.message_id, &b.record_type, &b.user_id)
        }
        _ => true,
    });
    let mut wrong = Vec::new();
    if e.erased != rows.len() as u64 {
        wrong.push(format!(
            "it says {} records were erased, its rows file lists {}",
            e.erased,
            rows.len()
        ));
    }
    if e.by_conversation != by_conversation || e.by_conversation.values().sum::<u64>() != e.erased {
        wrong.push("its counts per conversation do not match its rows file".to_owned());
    }
    if e.sends_erased != sends {
        wrong.push(format!(
            "it says {} sends were erased, its rows file lists {sends}",
            e.sends_erased
        ));
    }
    if e.merkle_root != merkle_root(rows) || !sorted {
        wrong.push("its Merkle root over the erased IDs does not match its rows file".to_owned());
    }
    let rewrote = e.handoff.is_some() && m.compaction.is_some();
    if (e.erased > 0) != rewrote || (e.erased > 0) != e.handoff.is_some() {
        wrong.push("it erased records without a new handoff generation and a Parquet rewrite, or the reverse".to_owned());
    }
    if e.kind == ErasureKind::UndoForget && e.erased > 0 {
        wrong.push("an undo erased records".to_owned());
    }
    for reason in wrong {
        report.fail(&key, format!("erasure: {reason}"));
    }
}

/// One record's name, as both sides hash it.
fn hash_name(hasher: &mut Sha256, record_type: &str, user: &str, message: &str) {
    for part in [record_type, "\0", user, "\0", message, "\n"] {
        hasher.update(part.as_bytes());
    }
}

/// The handoff file's sealed records are the sealed runs' rows minus the
/// erased ones, in order: compared as a digest over the sequence of
/// (record type, user, message ID), so that memory holds only the erased
/// IDs.
fn check_rows_minus_erased(
    dir: &dyn Backend,
    manifests: &[Manifest],
    erased: &HashSet<(String, String, String)>,
    covered: u64,
    report: &mut VerifyReport,
) {
    let (mut expected, mut expected_rows) = (Sha256::new(), 0u64);
    for m in manifests.iter().filter(|m| m.erasure.is_none()) {
        let Ok(reader) = dir.reader(&m.audit_rows.path, None) else {
            return; // failed with the logs
        };
        for line in std::io::BufReader::new(reader).split(b'\n') {
            let Ok(Ok(r)) = line.map(|l| serde_json::from_slice::<AuditRow>(&l)) else {
                return; // failed with the logs
            };
            if !erased.contains(&(
                r.record_type.clone(),
                r.user_id.clone(),
                r.message_id.clone(),
            )) {
                hash_name(&mut expected, &r.record_type, &r.user_id, &r.message_id);
                expected_rows += 1;
            }
        }
    }
    let (mut found, mut found_rows) = (Sha256::new(), 0u64);
    let read = jsonl::for_each_line(dir, 0, covered, |line| {
        if let Ok(r) = serde_json::from_slice::<RecordKey>(line) {
            hash_name(&mut found, &r.record_type, r.user_id(), &r.message_id);
        }
        found_rows += 1;
        Ok(())
    });
    if read.is_err() || expected_rows != found_rows || expected.finalize() != found.finalize() {
        report.fail(
            jsonl::FILE_NAME,
            format!(
                "its records are not the sealed runs' rows minus the erased ones ({expected_rows} expected, {found_rows} found): a record was removed, added or reordered outside an erasure"
            ),
        );
    }
}

/// The checkpoint keeps in force what the erasures among `manifests` say.
fn check_state(dir: &dyn Backend, manifests: &[Manifest], report: &mut VerifyReport) {
    let expected = crate::erasure::state_of(manifests);
    let Ok(checkpoint) = Checkpoint::load(dir) else {
        return; // failed with the chain's pointer
    };
    let state = &checkpoint.erasure;
    let missing: Vec<&str> = expected
        .tombstones
        .iter()
        .filter(|t| !state.tombstones.contains(t))
        .map(|t| t.run_id.as_str())
        .collect();
    if !missing.is_empty() || state.tombstones.len() != expected.tombstones.len() {
        report.fail(
            crate::checkpoint::KEY,
            format!(
                "its tombstones are not the erasure runs' (missing or changed: {missing:?}): an erased message could be written again"
            ),
        );
    }
    if let Some(problem) = crate::erasure::tombstones::index_problem(dir, state) {
        let path = state.index.as_ref().map_or("", |i| i.path.as_str());
        report.fail(
            path,
            format!(
                "the tombstones' index is damaged ({problem}); a sync reads the rows files instead"
            ),
        );
    }
    if state.forgotten != expected.forgotten || state.erased_before != expected.erased_before {
        report.fail(
            crate::checkpoint::KEY,
            "its forgotten conversations or retention cut-off are not what the erasure runs say",
        );
    }
}

/// An erasure that sealed and was killed before it installed its new
/// generation (`last`, the chain's last run, sealed while the checkpoint
/// did not follow): the handoff file is still the old generation, which
/// the next run replaces by the staged one. The staged generation is
/// checked against the manifest instead, and the old file's mismatches
/// with the new manifest are a note, not failures.
pub(super) fn check_pending_install(
    dir: &dyn Backend,
    last: Option<&Manifest>,
    report: &mut VerifyReport,
) {
    let Some((m, generation)) = last.and_then(|m| Some((m, m.erasure.as_ref()?.handoff.as_ref()?)))
    else {
        return;
    };
    let staged = staged_key(&m.run_id);
    if !dir.size(&staged).is_ok_and(|s| s.is_some()) {
        return; // installed: the file is checked as it is
    }
    report.failures.retain(|f| f.path != jsonl::FILE_NAME);
    report.checked += 1;
    match audit::digest(dir, &staged) {
        Ok((sha, bytes)) if sha == generation.sha256 && bytes == generation.bytes => {
            report.notes.push(format!(
                "erasure {} sealed and was interrupted before it replaced the handoff file by its new generation ({staged}, checked); the next run replaces it",
                m.run_id
            ));
        }
        Ok(_) => report.fail(
            &staged,
            format!("differs from run {}'s new generation", m.run_id),
        ),
        Err(e) => report.fail(&staged, e.to_string()),
    }
}
