//! The checksum files: `SHA256SUMS`, line by line, as `sha256sum -c` would
//! (the full verify only), and each run's checksum file against its
//! manifest. These run last: a run's checksum file is compared with the
//! digests the file checks already recomputed, not hashed again.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, BTreeSet};

use super::compactions::Compacted;
use super::findings::VerifyReport;
use crate::audit::{self, Manifest};
use crate::error::Error;
use crate::sinks::jsonl;
use crate::storage::Backend;

/// Checks `SHA256SUMS` as `sha256sum -c` would.
/// With `interrupted` (where the sealed part of the handoff file ends), the
/// files an interrupted run changed after the last seal are checked as
/// that seal left them: the handoff file up to its sealed end; the
/// checkpoint, which every commit replaces, is only noted. With `sealing`
/// (the last run, which sealed and was killed before its checkpoint
/// followed), `SHA256SUMS` may also be the one that run wrote just before
/// (see [`sealed_handoff_matches`]).
pub(super) fn check_sums(
    dir: &dyn Backend,
    (interrupted, sealing): (Option<u64>, Option<&Manifest>),
    report: &mut VerifyReport,
) {
    let sums = match audit::read_sums(dir, audit::SUMS) {
        Ok(s) => s,
        Err(e) => return report.fail(audit::SUMS, e.to_string()),
    };
    for (digest, rel) in sums {
        report.checked += 1;
        // The handoff file is one object in a folder and a series of
        // segments in a bucket; either way its digest is the whole file's.
        let actual = match (rel.as_str(), interrupted) {
            (jsonl::FILE_NAME, Some(sealed)) => {
                if !sealed_handoff_matches(dir, &digest, sealed, sealing) {
                    report.fail(&rel, "SHA-256 differs from SHA256SUMS");
                }
                continue;
            }
            (jsonl::FILE_NAME, None) => dir
                .handoff_len()
                .and_then(|len| audit::handoff_digest(dir, 0..len)),
            (crate::checkpoint::KEY, Some(_)) => {
                report.notes.push(format!(
                    "{rel} changed since the last sealed run (the interrupted run committed)"
                ));
                continue;
            }
            _ => audit::digest(dir, &rel),
        };
        match actual {
            Ok((sha, _)) if sha == digest => {}
            Ok(_) => report.fail(&rel, "SHA-256 differs from SHA256SUMS"),
            Err(e) => report.fail(&rel, e.to_string()),
        }
    }
}

/// Whether `digest`, `SHA256SUMS`'s line for the handoff file, is one an
/// interrupted run can have left: the file up to `sealed`, as the last
/// complete seal listed it; or, when the last run sealed and was killed
/// before its checkpoint followed, what that run's seal had written just
/// before — the file as it sealed it, or the generation an erasure replaced
/// when its new one was installed and `SHA256SUMS` not yet rewritten. The
/// file's bytes themselves are checked against the manifests elsewhere.
fn sealed_handoff_matches(
    dir: &dyn Backend,
    digest: &str,
    sealed: u64,
    sealing: Option<&Manifest>,
) -> bool {
    let prefix = |end: u64| audit::handoff_digest(dir, 0..end).is_ok_and(|(sha, _)| sha == digest);
    if prefix(sealed) {
        return true;
    }
    let Some(last) = sealing else {
        return false;
    };
    let replaced = last
        .erasure
        .as_ref()
        .and_then(|e| e.handoff.as_ref())
        .is_some_and(|g| g.before_sha256 == digest);
    replaced || prefix(last.coverage.jsonl_bytes)
}

/// Checks each run's checksum file as `sha256sum -c` would: it lists the
/// files the run's manifest names, whose digests `check_files` already
/// recomputed, so each line is compared with the manifest rather than
/// hashed again.
pub(super) fn check_run_sums(
    dir: &dyn Backend,
    manifests: &[Manifest],
    signatures: &BTreeMap<String, String>,
    compacted: &Compacted,
    report: &mut VerifyReport,
) {
    let mut missing = 0;
    for m in manifests {
        let key = audit::run_sums_key(&m.run_id);
        let sums = match audit::read_sums(dir, &key) {
            Ok(s) => s,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                missing += 1;
                continue;
            }
            Err(e) => {
                report.fail(&key, e.to_string());
                continue;
            }
        };
        report.checked += 1;
        let signature = signatures.get(&m.run_id).map(String::as_str);
        if !lists_its_run(m, signature, compacted, sums) {
            report.fail(
                &key,
                "does not list exactly the files of its run's manifest",
            );
        }
    }
    if missing > 0 {
        report.notes.push(format!(
            "{missing} runs have no checksum file under {} (sealed by an xquik-dm that did not write one)",
            audit::RUNS_DIR
        ));
    }
}

/// Whether a run's checksum file, read as `sums`, lists its manifest and
/// exactly the files that manifest names, and its SSH signature with the
/// digest the chain records (`signature`) when it is signed.
fn lists_its_run(
    m: &Manifest,
    signature: Option<&str>,
    compacted: &Compacted,
    sums: Vec<(String, String)>,
) -> bool {
    // A compaction rewrites the checksum files of the runs whose files
    // it merged away (until it has, they still list them).
    let (mut expected, merged): (BTreeSet<_>, BTreeSet<_>) = m
        .files
        .iter()
        .filter(|f| f.offset.is_none())
        .map(|f| (f.sha256.clone(), f.path.clone()))
        .partition(|(_, path)| !compacted.removed.contains_key(path.as_str()));
    let logs = [&m.audit_rows, &m.page_log]
        .into_iter()
        .chain(m.recovered.iter().map(|r| &r.log));
    expected.extend(logs.map(|l| (l.sha256.clone(), l.path.clone())));
    if m.signer.is_some() || signature.is_some() {
        let digest = signature.unwrap_or_default().to_owned();
        expected.insert((digest, audit::signature_key(&m.run_id)));
    }
    let manifest = format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id);
    let found: BTreeSet<(String, String)> = sums.into_iter().collect();
    let listed_manifest = found.iter().find(|(_, path)| *path == manifest);
    let rest: BTreeSet<_> = found
        .iter()
        .filter(|(_, path)| *path != manifest)
        .cloned()
        .collect();
    let before_removal: BTreeSet<_> = expected.union(&merged).cloned().collect();
    (rest == expected || rest == before_removal) && listed_manifest.is_some()
}
