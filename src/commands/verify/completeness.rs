//! Completeness: every JSONL byte of the handoff file belongs to a sealed
//! run, and the Parquet and audit files on disk are exactly the ones the
//! manifests list — nothing extra — but for what an interrupted run left:
//! the run the checkpoint names when the chain does not hold it. What it
//! committed is checked against the checkpoint and noted (the next sync
//! seals it); what it left uncommitted is noted (the next sync removes it).
//!
//! It starts from what the file checks handed on ([`Listed`]), and tells
//! the `SHA256SUMS` check where the sealed part of the handoff file ends
//! when an interrupted run wrote past it.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, BTreeSet};

use super::files::Listed;
use super::findings::VerifyReport;
use crate::audit::{self, Coverage, Manifest};
use crate::checkpoint::Checkpoint;
use crate::sinks::{WrittenFile, jsonl};
use crate::storage::{Backend, file_name, is_temporary};

/// Checks that nothing but an interrupted run's work lies beyond what the
/// manifests list (only the handoff file's tail with `start`, a `--since`
/// verify). Returns, when an interrupted run committed after the last
/// sealed one, where the sealed part of the handoff file ends.
pub(super) fn check_completeness(
    dir: &dyn Backend,
    manifests: &[Manifest],
    chained: &BTreeSet<String>,
    start: Option<Coverage>,
    listed: &Listed,
    report: &mut VerifyReport,
) -> Option<u64> {
    // Every JSONL byte belongs to exactly one sealed run — or, when the
    // last run to claim the output (the checkpoint names it) is not in the
    // chain, to the work of that interrupted run: what it committed is
    // checked against the checkpoint and noted (the next sync seals it);
    // what it left uncommitted is noted (the next sync removes it).
    let len = dir.handoff_len().unwrap_or(0);
    let checkpoint = Checkpoint::load(dir).ok();
    let interrupted_run = checkpoint
        .as_ref()
        .and_then(|c| c.run.as_deref())
        .filter(|run| !chained.contains(*run));
    let interrupted = checkpoint.as_ref().zip(interrupted_run);
    check_handoff_tail(dir, len, listed.covered, interrupted, report);
    // The handoff folder of a bucket holds only its segments.
    for rel in files_under(dir, crate::storage::object::HANDOFF_DIR) {
        if crate::storage::object::segment_offset(file_name(&rel)).is_none() {
            report.fail(&rel, "not a segment of the handoff file");
        }
    }
    // Nothing unlisted on disk, but what an interrupted run left: Parquet
    // files it committed (listed in the checkpoint, checked against it; the
    // next sync seals them), and files of runs after the last sealed one
    // (the next sync removes them).
    let pending = pending_files(checkpoint.as_ref(), interrupted_run.is_some());
    check_pending(dir, &pending, report);
    // What exists beyond the listed files is the full verify's to check:
    // listing every file is not proportional to the new runs.
    if start.is_none() {
        let unlisted = Unlisted {
            listed: &listed.paths,
            pending: &pending,
            chained,
            interrupted: interrupted_run,
            last_sealed: manifests.last().map(|m| m.run_id.as_str()),
        };
        unlisted.check(dir, report);
    }
    interrupted_run.map(|_| listed.covered)
}

/// Checks the handoff file past the last sealed segment (`covered`, of
/// `len` bytes): only an interrupted run may have written there, what it
/// committed matching the checkpoint's digest.
fn check_handoff_tail(
    dir: &dyn Backend,
    len: u64,
    covered: u64,
    interrupted: Option<(&Checkpoint, &str)>,
    report: &mut VerifyReport,
) {
    let mut sealed_end = covered;
    if let Some((c, run)) = interrupted {
        let committed = c.jsonl.committed_bytes;
        if committed > covered {
            // The checkpoint's running digest must be that of the bytes it
            // commits: records slipped in with a raised length are caught.
            let claimed = c.jsonl.digest_state.as_ref().and_then(jsonl::digest_of);
            let actual = (committed <= len)
                .then(|| audit::handoff_digest(dir, 0..committed).ok())
                .flatten()
                .map(|(sha, _)| sha);
            if claimed.is_none() || claimed != actual {
                report.fail(
                    jsonl::FILE_NAME,
                    format!("the {committed} bytes the checkpoint commits do not match its digest"),
                );
            } else {
                report.notes.push(format!(
                    "unsealed: run {run} was interrupted after committing {} bytes of {}; the next sync seals them into its manifest",
                    committed - covered,
                    jsonl::FILE_NAME
                ));
                sealed_end = committed;
            }
        }
        if len > sealed_end {
            report.notes.push(format!(
                "{} bytes after the last commit were left by the interrupted run {run}; the next sync removes them",
                len - sealed_end
            ));
            sealed_end = len;
        }
    }
    if len > sealed_end {
        report.fail(
            jsonl::FILE_NAME,
            format!(
                "{} bytes after the last sealed segment (appended outside a run)",
                len - sealed_end
            ),
        );
    }
}

/// The Parquet files the checkpoint commits, by path, when the run that
/// committed them was interrupted before it sealed.
fn pending_files(
    checkpoint: Option<&Checkpoint>,
    interrupted: bool,
) -> BTreeMap<&str, &WrittenFile> {
    checkpoint
        .filter(|_| interrupted)
        .map(|c| {
            c.parquet
                .files
                .iter()
                .map(|f| (f.path.as_str(), f))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks each pending Parquet file against the checkpoint.
fn check_pending(
    dir: &dyn Backend,
    pending: &BTreeMap<&str, &WrittenFile>,
    report: &mut VerifyReport,
) {
    for (rel, file) in pending {
        report.checked += 1;
        match audit::digest(dir, rel) {
            Ok((sha, bytes)) if sha == file.sha256 && bytes == file.bytes => {}
            Ok(_) => report.fail(*rel, "SHA-256 differs from the checkpoint"),
            Err(e) => report.fail(*rel, e.to_string()),
        }
    }
}

/// What may lie on disk beyond the listed files.
struct Unlisted<'a> {
    /// Every path a manifest accounts for.
    listed: &'a BTreeSet<String>,
    /// The Parquet files an interrupted run committed.
    pending: &'a BTreeMap<&'a str, &'a WrittenFile>,
    /// Every run the chain holds.
    chained: &'a BTreeSet<String>,
    /// The run the checkpoint names when the chain does not hold it.
    interrupted: Option<&'a str>,
    /// The last sealed run.
    last_sealed: Option<&'a str>,
}

impl Unlisted<'_> {
    /// Checks every Parquet and audit file on disk: listed, or left by an
    /// interrupted run (noted), or a failure.
    fn check(&self, dir: &dyn Backend, report: &mut VerifyReport) {
        let after_last_sealed = |run: &str| self.last_sealed.is_none_or(|last| run > last);
        let everything = files_under(dir, "parquet")
            .into_iter()
            .chain(files_under(dir, audit::RUNS_DIR));
        for rel in everything {
            // The Delta logs are checked against the manifests on their
            // own (`delta.rs`).
            if self.listed.contains(&rel) || rel.contains("/_delta_log/") {
                continue;
            }
            if self.pending.contains_key(rel.as_str()) {
                report.notes.push(format!(
                    "unsealed: {rel} is committed; the next sync seals it"
                ));
            } else if let Some(interrupted) = self.interrupted
                && run_of(&rel).is_some_and(|run| {
                    // Named after the interrupted run itself (its ID may
                    // sort before the last sealed one's when both
                    // started in the same second), or after a later one.
                    !self.chained.contains(run) && (run == interrupted || after_last_sealed(run))
                })
            {
                report.notes.push(format!(
                    "{rel} was left by an interrupted run; the next sync removes it"
                ));
            } else {
                report.fail(&rel, "not listed in any manifest");
            }
        }
    }
}

/// The run a Parquet or audit file is named after, when its name has the
/// shape the tool gives its files (`part-<run>-<n>.parquet`,
/// `<run>.<kind>...`) and the run ID has the shape of one.
fn run_of(rel: &str) -> Option<&str> {
    let name = file_name(rel);
    let run = match name.starts_with("part-") {
        true => crate::sinks::parquet::file_run(name)?,
        false => name.split('.').next()?,
    };
    let (second, random) = run.split_once('-')?;
    let shaped = second.len() == 16
        && second.as_bytes().get(8) == Some(&b'T')
        && second.ends_with('Z')
        && matches!(random.len(), 4 | 16)
        && random.bytes().all(|b| b.is_ascii_hexdigit());
    shaped.then_some(run)
}

/// Objects below `sub`, relative to the root (the temporary files a run in
/// progress writes, `.<name>.tmp`, are skipped).
fn files_under(dir: &dyn Backend, sub: &str) -> Vec<String> {
    dir.list(&format!("{sub}/"))
        .unwrap_or_default()
        .into_iter()
        .filter(|l| !is_temporary(file_name(&l.key)))
        .map(|l| l.key)
        .collect()
}
