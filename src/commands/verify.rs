//! `xquik-dm verify DIR`: what an audit reviewer runs. Recomputes every
//! digest and checks that the audit trail accounts for every byte, without
//! reading a message body into the report:
//!
//! - the chain: sequence numbers, each manifest's SHA-256, each link to the
//!   previous manifest, and the checkpoint's pointer to the last run;
//! - each manifest: the files and JSONL segments it lists (SHA-256, size),
//!   its rows file and Merkle root, and its HMAC when a key is given;
//! - completeness: the JSONL segments tile the handoff file from its first
//!   to its last byte, and the Parquet and audit files on disk are exactly
//!   the ones the manifests list — nothing missing, nothing extra;
//! - compactions: the files a compaction removed are those earlier runs
//!   listed, digest for digest, and it added as many rows per partition;
//! - `SHA256SUMS`, line by line, as `sha256sum -c` would, and each run's
//!   checksum file against its manifest.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeSet;
use std::io::BufRead;

use serde::Serialize;

use crate::audit::{self, AuditKey, ChainEntry, Coverage, LogInfo, LogKind, Manifest, Merkle};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::sinks::jsonl;
use crate::storage::{Backend, Location, file_name, is_temporary};

/// One integrity failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The file at fault, relative to the folder.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The folder or bucket verified.
    pub dir: Location,
    /// Runs in the chain.
    pub runs: u64,
    /// Files and segments whose digest was recomputed.
    pub checked: u64,
    /// Manifests whose HMAC was checked.
    pub signatures_checked: u64,
    /// SHA-256 of the last run's manifest: the chain's head. Kept outside
    /// the folder, it lets a later `verify --expect-head` detect that runs
    /// were removed from the end (which the folder alone cannot show).
    pub head: Option<String>,
    /// For a sharded prefix, each shard's chain head.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub shard_heads: std::collections::BTreeMap<String, Option<String>>,
    /// Everything that failed.
    pub failures: Vec<Failure>,
    /// Remarks that are not failures.
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// An empty report on `dir`.
    fn new(dir: Location) -> VerifyReport {
        VerifyReport {
            dir,
            runs: 0,
            checked: 0,
            signatures_checked: 0,
            head: None,
            shard_heads: std::collections::BTreeMap::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// 0 when everything verified, 5 otherwise (SPEC §2).
    pub fn exit_code(&self) -> u8 {
        if self.ok() { 0 } else { 5 }
    }

    fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.failures.push(Failure {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Verifies the output folder `dir`. `key` checks manifest signatures;
/// `expect_head`, a chain head recorded earlier, must still be in the chain.
pub fn run(
    location: impl Into<Location>,
    key: Option<&AuditKey>,
    expect_head: Option<&str>,
) -> Result<VerifyReport> {
    run_since(location, key, expect_head, None)
}

/// [`run`], checking only what came after the chain head `since` when it
/// is given (see [`check_since`]).
pub fn run_since(
    location: impl Into<Location>,
    key: Option<&AuditKey>,
    expect_head: Option<&str>,
    since: Option<&str>,
) -> Result<VerifyReport> {
    let location = location.into();
    location.require_existing("DIR")?;
    let storage = location.open()?;
    if location.as_dir().is_none() {
        // A bucket that is missing or refuses reading is bad input, not a
        // list of failures.
        storage.prepare()?;
    }
    let Some(shards) = crate::shard::registered(storage.as_ref())? else {
        return Ok(check_since(storage.as_ref(), key, expect_head, since));
    };
    if since.is_some() {
        return Err(Error::invalid(
            "--since",
            "a chain head belongs to one shard: verify that shard's folder (<prefix>/shard=K)",
        ));
    }
    // A sharded prefix: every shard is an output root of its own, each
    // with its own chain; all of them must verify.
    let mut report = VerifyReport::new(location.clone());
    let mut found_head = false;
    for index in 0..shards {
        let dir = crate::shard::Shard {
            index,
            count: shards,
        }
        .dir();
        let storage = location.join(&dir).open()?;
        let shard = check(storage.as_ref(), key, None);
        if let Some(expected) = expect_head
            && audit::read_chain(storage.as_ref())
                .is_ok_and(|(chain, _)| chain.iter().any(|e| e.sha256 == expected))
        {
            found_head = true;
        }
        report.runs += shard.runs;
        report.checked += shard.checked;
        report.signatures_checked += shard.signatures_checked;
        report
            .failures
            .extend(shard.failures.into_iter().map(|f| Failure {
                path: format!("{dir}/{}", f.path),
                reason: f.reason,
            }));
        report
            .notes
            .extend(shard.notes.into_iter().map(|n| format!("{dir}: {n}")));
        report.shard_heads.insert(dir, shard.head);
    }
    // A sharded prefix holds its shards and its registry, nothing else.
    for listed in storage.list("")? {
        // Exactly `shard=<k>/` as the tool names it: `shard=00/` is not
        // shard 0, and a glob would read it all the same.
        let in_shard = listed
            .key
            .strip_prefix("shard=")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(k, _)| k.parse::<u32>().ok().filter(|n| n.to_string() == k))
            .is_some_and(|k| k < shards);
        if !in_shard && listed.key != crate::shard::REGISTRY {
            report.fail(
                &listed.key,
                format!("not part of any of the {shards} shards"),
            );
        }
    }
    if let Some(expected) = expect_head
        && !found_head
    {
        report.fail(
            audit::CHAIN,
            format!(
                "the expected head {expected} is in no shard's chain: runs were removed or replaced"
            ),
        );
    }
    Ok(report)
}

/// Verifies the output root `dir` (see [`run`]).
pub fn check(dir: &dyn Backend, key: Option<&AuditKey>, expect_head: Option<&str>) -> VerifyReport {
    check_since(dir, key, expect_head, None)
}

/// [`check`], or with `since` (a chain head verified before) only what came
/// after it: the chain's links after that run, the later runs' manifests
/// and everything they list, and the handoff file from where that run's
/// coverage ended — in time proportional to the new runs. `SHA256SUMS` and
/// the check that nothing extra exists are left to the full verify.
pub fn check_since(
    dir: &dyn Backend,
    key: Option<&AuditKey>,
    expect_head: Option<&str>,
    since: Option<&str>,
) -> VerifyReport {
    let mut report = VerifyReport::new(dir.location());
    if dir.is_locked() {
        report.notes.push(
            "a run is in progress in this folder: its data is not sealed yet; verify again when it has finished".into(),
        );
    }
    let (manifests, start, chained, sealing_interrupted) =
        check_chain(dir, key, since, &mut report);
    if let Some(expected) = expect_head {
        let in_chain = audit::read_chain(dir)
            .map(|(chain, _)| chain.iter().any(|e| e.sha256 == expected))
            .unwrap_or(false);
        if !in_chain {
            report.fail(
                audit::CHAIN,
                format!("the expected head {expected} is not in the chain: runs were removed or replaced"),
            );
        }
    }
    if since.is_some() && start.is_none() {
        return report;
    }
    let compacted = Compacted::of(&manifests);
    let mut interrupted = check_files(dir, &manifests, &chained, start, &compacted, &mut report);
    if sealing_interrupted {
        // SHA256SUMS is still the one the run before the last one wrote.
        let before_last = manifests
            .len()
            .checked_sub(2)
            .and_then(|i| manifests.get(i));
        interrupted = Some(before_last.map_or(0, |m| m.coverage.jsonl_bytes));
    }
    check_compactions(&manifests, &compacted, start.is_some(), &mut report);
    check_run_sums(dir, &manifests, &compacted, &mut report);
    match start {
        Some(_) => report.notes.push(format!(
            "checked the {} runs after {}; the full verify also checks the earlier runs, SHA256SUMS and that nothing extra exists",
            manifests.len(),
            since.unwrap_or_default()
        )),
        None => check_sums(dir, interrupted, &mut report),
    }
    report
}

/// Checks the chain and each manifest's own digest and signature; returns
/// the manifests that could be read, in chain order.
/// With `since`, the manifests are read only after that run, and the
/// second value is where its coverage ended (`None` when `since` is not in
/// the chain: a failure). The third is every run the chain holds.
fn check_chain(
    dir: &dyn Backend,
    key: Option<&AuditKey>,
    since: Option<&str>,
    report: &mut VerifyReport,
) -> (Vec<Manifest>, Option<Coverage>, BTreeSet<String>, bool) {
    // The run a reviewer verified before: the chain is read back only as
    // far as it lies, manifests up to it are not read again, its own only
    // for where its coverage ended.
    let read = match since {
        Some(head) => audit::read_chain_from(dir, head),
        None => audit::read_chain(dir).map(|(chain, torn)| (Some(chain), torn)),
    };
    let (chain, torn) = match read {
        Ok((Some(chain), torn)) => (chain, torn),
        Ok((None, _)) => {
            report.fail(
                audit::CHAIN,
                format!(
                    "the verified head {} is not in the chain: runs were removed or replaced",
                    since.unwrap_or_default()
                ),
            );
            return (Vec::new(), None, BTreeSet::new(), false);
        }
        Err(e) => {
            report.fail(audit::CHAIN, e.to_string());
            return (Vec::new(), None, BTreeSet::new(), false);
        }
    };
    let chained: BTreeSet<String> = chain.iter().map(|e| e.run_id.clone()).collect();
    let mut start = None;
    let mut skip = 0;
    if let Some(head) = since {
        skip = chain.first().map_or(0, |e| e.seq);
        match chain
            .first()
            .map(|e| audit::read_manifest(dir, &e.manifest))
        {
            Some(Ok((manifest, bytes))) if crate::sinks::sha256_hex(&bytes) == head => {
                start = Some(manifest.coverage);
            }
            _ => {
                report.fail(
                    audit::CHAIN,
                    format!("the manifest of the verified head {head} no longer matches it"),
                );
                return (Vec::new(), None, chained, false);
            }
        }
    }
    if torn.is_some() {
        report.fail(audit::CHAIN, "the last line is torn (no newline)");
    }
    if chain.is_empty() {
        report.fail(
            audit::CHAIN,
            "no runs recorded: missing or empty audit chain",
        );
        return (Vec::new(), None, chained, false);
    }
    report.runs = chain.last().map_or(0, |e| e.seq);
    let mut manifests = Vec::new();
    let mut previous: Option<&ChainEntry> = None;
    let (mut signed_unchecked, mut unsigned_before_signing, mut seen_signed) = (0, 0, false);
    for entry in &chain {
        // Since a verified head, the chain starts there, linked before.
        if since.is_some() && previous.is_none() {
            previous = Some(entry);
            continue;
        }
        let expected_seq = previous.map_or(1, |p| p.seq.saturating_add(1));
        if entry.seq != expected_seq {
            report.fail(
                audit::CHAIN,
                format!(
                    "run {} has seq {}, expected {expected_seq}",
                    entry.run_id, entry.seq
                ),
            );
        }
        if entry.previous_sha256 != previous.map(|p| p.sha256.clone()) {
            report.fail(
                audit::CHAIN,
                format!("run {} does not link to the run before it", entry.run_id),
            );
        }
        previous = Some(entry);
        if entry.seq <= skip {
            continue;
        }
        let (manifest, bytes) = match audit::read_manifest(dir, &entry.manifest) {
            Ok(m) => m,
            Err(e) => {
                report.fail(&entry.manifest, e.to_string());
                continue;
            }
        };
        report.checked += 1;
        if crate::sinks::sha256_hex(&bytes) != entry.sha256 {
            // Either side may have been changed: name both.
            report.fail(&entry.manifest, "SHA-256 differs from its chain entry");
            report.fail(
                audit::CHAIN,
                format!(
                    "the entry of run {} does not match its manifest",
                    entry.run_id
                ),
            );
        }
        if manifest.run_id != entry.run_id
            || manifest.previous_manifest_sha256 != entry.previous_sha256
        {
            report.fail(
                &entry.manifest,
                "run ID or previous digest differs from its chain entry",
            );
            report.fail(
                audit::CHAIN,
                format!(
                    "the entry of run {} does not match its manifest",
                    manifest.run_id
                ),
            );
        }
        match (
            key,
            manifest.check_signature(key.map_or(&[][..], |k| &k.0[..])),
        ) {
            (Some(_), Ok(Some(true))) => {
                report.signatures_checked += 1;
                seen_signed = true;
            }
            (Some(_), Ok(Some(false))) => report.fail(
                &entry.manifest,
                "HMAC does not match: changed, or signed with another key",
            ),
            // Runs from before signing was switched on are unsigned; an
            // unsigned run after a signed one is a downgrade.
            (Some(_), Ok(None)) if seen_signed => report.fail(
                &entry.manifest,
                "not signed, though an earlier run was: replaced or inserted without the key",
            ),
            (Some(_), Ok(None)) => unsigned_before_signing += 1,
            (None, Ok(Some(_))) => signed_unchecked += 1,
            (_, Err(e)) => report.fail(&entry.manifest, e.to_string()),
            (None, Ok(None)) => {}
        }
        // What is checked from here on are the files it lists: its
        // command-specific parts (per-conversation outcomes, options,
        // counts) are let go, so that memory stays small over many runs.
        let mut manifest = manifest;
        for part in [
            &mut manifest.conversations,
            &mut manifest.sends,
            &mut manifest.options,
            &mut manifest.counts,
            &mut manifest.repair,
        ] {
            *part = serde_json::Value::Null;
        }
        manifests.push(manifest);
    }
    if signed_unchecked > 0 {
        report.notes.push(format!(
            "{signed_unchecked} manifests are signed; set {} to check their HMAC",
            audit::AUDIT_KEY_ENV
        ));
    }
    if unsigned_before_signing > 0 {
        report.notes.push(format!(
            "{unsigned_before_signing} runs from before signing was switched on are unsigned"
        ));
    }
    report.head = chain.last().map(|e| e.sha256.clone());
    let mut sealing_interrupted = false;
    match Checkpoint::load(dir) {
        Ok(c) => {
            let last = chain.last();
            let before_last = chain.len().checked_sub(2).and_then(|i| chain.get(i));
            let names = |entry: Option<&ChainEntry>| {
                c.audit.last_digest.as_deref() == entry.map(|e| e.sha256.as_str())
                    && c.audit.last_manifest.as_deref() == entry.map(|e| e.manifest.as_str())
            };
            if names(last) {
            } else if names(before_last)
                && last.is_some_and(|l| c.run.as_deref() == Some(l.run_id.as_str()))
            {
                // The last run sealed and was killed before its checkpoint
                // followed: the next run completes it.
                sealing_interrupted = true;
                report.notes.push(format!(
                    "run {} was interrupted after it sealed, before its checkpoint followed; the next run completes it",
                    last.map_or("", |l| l.run_id.as_str())
                ));
            } else {
                report.fail(
                    "state/checkpoint.json",
                    "the audit pointer does not name the last run of the chain",
                );
            }
        }
        Err(e) => report.fail("state/checkpoint.json", e.to_string()),
    }
    (manifests, start, chained, sealing_interrupted)
}

/// Checks every listed file, segment and rows file, and completeness.
/// Returns, when an interrupted run committed after the last sealed one,
/// where the sealed part of the handoff file ends.
fn check_files(
    dir: &dyn Backend,
    manifests: &[Manifest],
    chained: &BTreeSet<String>,
    start: Option<Coverage>,
    compacted: &Compacted,
    report: &mut VerifyReport,
) -> Option<u64> {
    let mut covered = start.map_or(0, |c| c.jsonl_bytes);
    let mut listed = BTreeSet::new();
    for (index, m) in manifests.iter().enumerate() {
        listed.insert(format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id));
        listed.insert(audit::run_sums_key(&m.run_id));
        let recovered = m.recovered.iter().map(|r| &r.log);
        for log in [&m.audit_rows, &m.page_log].into_iter().chain(recovered) {
            listed.insert(log.path.clone());
            check_log(dir, &m.run_id, log, report);
        }
        for f in &m.files {
            let digest = match (f.offset, f.length) {
                (Some(offset), Some(length)) => {
                    if offset != covered {
                        report.fail(
                            &f.path,
                            format!("segment of run {} starts at byte {offset}, but the previous one ended at {covered}", m.run_id),
                        );
                    }
                    // Numbers from a file: never trusted not to overflow.
                    covered = offset.saturating_add(length);
                    audit::handoff_digest(dir, offset..covered)
                }
                _ => {
                    if let Some(&(by, removed)) = compacted.removed.get(f.path.as_str()) {
                        // Merged away by a later compaction: that one must
                        // have removed exactly this file.
                        compacted.matched.borrow_mut().insert(f.path.clone());
                        let by_run = manifests.get(by).map_or("", |c| c.run_id.as_str());
                        if by <= index || removed.file != *f || removed.run_id != m.run_id {
                            report.fail(
                                format!("{}/{by_run}.manifest.json", audit::RUNS_DIR),
                                format!(
                                    "its compaction names {} unlike run {}'s manifest",
                                    f.path, m.run_id
                                ),
                            );
                        } else if dir.size(&f.path).is_ok_and(|s| s.is_some()) {
                            listed.insert(f.path.clone());
                            report.notes.push(format!(
                                "{} was merged by compaction {by_run} and is still there; the next run removes it",
                                f.path
                            ));
                        }
                        continue;
                    }
                    listed.insert(f.path.clone());
                    audit::digest(dir, &f.path)
                }
            };
            report.checked += 1;
            match digest {
                Ok((sha, bytes)) if sha == f.sha256 && bytes == f.bytes => {}
                Ok((_, bytes)) if bytes != f.bytes => report.fail(
                    &f.path,
                    format!(
                        "run {} wrote {} bytes here, found {bytes}",
                        m.run_id, f.bytes
                    ),
                ),
                Ok(_) => report.fail(
                    &f.path,
                    format!("SHA-256 differs from run {}'s manifest", m.run_id),
                ),
                Err(e) => report.fail(&f.path, e.to_string()),
            }
        }
        if m.coverage.jsonl_bytes != covered {
            report.fail(
                format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id),
                "its coverage does not match its segments",
            );
        }
    }
    // Every JSONL byte belongs to exactly one sealed run — or, when the
    // last run to claim the output (the checkpoint names it) is not in the
    // chain, to the work of that interrupted run: what it committed is
    // checked against the checkpoint and noted (the next sync seals it);
    // what it left uncommitted is noted (the next sync removes it).
    let len = dir.handoff_len().unwrap_or(0);
    let checkpoint = Checkpoint::load(dir).ok();
    let last_sealed = manifests.last().map(|m| m.run_id.as_str());
    let interrupted_run = checkpoint
        .as_ref()
        .and_then(|c| c.run.as_deref())
        .filter(|run| !chained.contains(*run));
    let committed = checkpoint.as_ref().map_or(0, |c| c.jsonl.committed_bytes);
    let mut sealed_end = covered;
    if let (Some(run), Some(c)) = (interrupted_run, &checkpoint) {
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
    let pending: std::collections::BTreeMap<&str, &crate::sinks::WrittenFile> = checkpoint
        .as_ref()
        .filter(|_| interrupted_run.is_some())
        .map(|c| {
            c.parquet
                .files
                .iter()
                .map(|f| (f.path.as_str(), f))
                .collect()
        })
        .unwrap_or_default();
    for (rel, file) in &pending {
        report.checked += 1;
        match audit::digest(dir, rel) {
            Ok((sha, bytes)) if sha == file.sha256 && bytes == file.bytes => {}
            Ok(_) => report.fail(*rel, "SHA-256 differs from the checkpoint"),
            Err(e) => report.fail(*rel, e.to_string()),
        }
    }
    let after_last_sealed = |run: &str| last_sealed.is_none_or(|last| run > last);
    // What exists beyond the listed files is the full verify's to check:
    // listing every file is not proportional to the new runs.
    let everything = if start.is_some() {
        Vec::new()
    } else {
        files_under(dir, "parquet")
            .into_iter()
            .chain(files_under(dir, audit::RUNS_DIR))
            .collect()
    };
    for rel in everything {
        if listed.contains(&rel) {
            continue;
        }
        if pending.contains_key(rel.as_str()) {
            report.notes.push(format!(
                "unsealed: {rel} is committed; the next sync seals it"
            ));
        } else if interrupted_run.is_some()
            && run_of(&rel).is_some_and(|run| !chained.contains(run) && after_last_sealed(run))
        {
            report.notes.push(format!(
                "{rel} was left by an interrupted run; the next sync removes it"
            ));
        } else {
            report.fail(&rel, "not listed in any manifest");
        }
    }
    interrupted_run.map(|_| covered)
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

/// Checks a run's audit log: digest, size, line count and, for the rows
/// file, the Merkle root.
fn check_log(dir: &dyn Backend, run_id: &str, info: &LogInfo, report: &mut VerifyReport) {
    report.checked += 1;
    match audit::digest(dir, &info.path) {
        Ok((sha, bytes)) if sha == info.sha256 && bytes == info.bytes => {}
        Ok(_) => {
            return report.fail(
                &info.path,
                format!("SHA-256 differs from run {run_id}'s manifest"),
            );
        }
        Err(e) => return report.fail(&info.path, e.to_string()),
    }
    let reader = match dir.reader(&info.path, None) {
        Ok(r) => r,
        Err(e) => return report.fail(&info.path, format!("cannot read: {e}")),
    };
    let mut merkle = Merkle::default();
    for line in std::io::BufReader::new(reader).split(b'\n') {
        match line {
            Ok(line) => merkle.push(&line),
            Err(e) => return report.fail(&info.path, format!("cannot read: {e}")),
        }
    }
    // The page log keeps no Merkle root (its digest binds it).
    let root_matches = info.path.ends_with(LogKind::Pages.suffix()) && info.merkle_root.is_none()
        || merkle.root() == info.merkle_root;
    if merkle.len() != info.rows || !root_matches {
        report.fail(
            &info.path,
            "Merkle root or line count differs from the manifest",
        );
    }
}

/// Checks `SHA256SUMS` as `sha256sum -c` would.
/// With `interrupted` (where the sealed part of the handoff file ends), the
/// files an interrupted run changed after the last seal are checked as
/// that seal left them: the handoff file up to its sealed end; the
/// checkpoint, which every commit replaces, is only noted.
fn check_sums(dir: &dyn Backend, interrupted: Option<u64>, report: &mut VerifyReport) {
    let sums = match audit::read_sums(dir, audit::SUMS) {
        Ok(s) => s,
        Err(e) => return report.fail(audit::SUMS, e.to_string()),
    };
    for (digest, rel) in sums {
        report.checked += 1;
        // The handoff file is one object in a folder and a series of
        // segments in a bucket; either way its digest is the whole file's.
        let actual = match (rel.as_str(), interrupted) {
            (jsonl::FILE_NAME, Some(sealed)) => audit::handoff_digest(dir, 0..sealed),
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

/// The files compactions among the checked runs merged away.
#[derive(Debug, Default)]
struct Compacted<'a> {
    /// Path → (index of the compaction's manifest, what it says it removed).
    removed: std::collections::BTreeMap<&'a str, (usize, &'a audit::RemovedFile)>,
    /// The removed files an earlier manifest was found to list.
    matched: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Compacted<'a> {
    fn of(manifests: &'a [Manifest]) -> Compacted<'a> {
        let mut compacted = Compacted::default();
        for (index, m) in manifests.iter().enumerate() {
            for removed in m.compaction.iter().flat_map(|c| &c.removed) {
                compacted
                    .removed
                    .insert(removed.file.path.as_str(), (index, removed));
            }
        }
        compacted
    }
}

/// Checks what each compaction says of itself: the files it added are
/// listed as its files, hold as many rows per folder as the files it
/// removed, and (in a full verify, which reads every earlier manifest)
/// every file it removed was listed by an earlier run, digest for digest.
fn check_compactions(
    manifests: &[Manifest],
    compacted: &Compacted,
    since: bool,
    report: &mut VerifyReport,
) {
    for m in manifests {
        let Some(c) = &m.compaction else {
            continue;
        };
        let key = format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id);
        let folder = |path: &str| {
            path.rsplit_once('/')
                .map_or(String::new(), |(d, _)| d.to_owned())
        };
        let mut rows: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for r in &c.removed {
            rows.entry(folder(&r.file.path)).or_default().0 += r.file.rows;
        }
        for a in &c.added {
            rows.entry(folder(&a.path)).or_default().1 += a.rows;
            if !m.files.contains(a) {
                report.fail(&key, format!("{} is added but not among its files", a.path));
            }
        }
        for (dir, (before, after)) in rows {
            if before != after {
                report.fail(
                    &key,
                    format!("{dir}: {before} rows removed but {after} added"),
                );
            }
        }
        if !since {
            for r in &c.removed {
                if !compacted.matched.borrow().contains(&r.file.path) {
                    report.fail(
                        &key,
                        format!("removes {}, which no earlier run listed", r.file.path),
                    );
                }
            }
        }
    }
}

/// Checks each run's checksum file as `sha256sum -c` would: it lists the
/// files the run's manifest names, whose digests `check_files` already
/// recomputed, so each line is compared with the manifest rather than
/// hashed again.
fn check_run_sums(
    dir: &dyn Backend,
    manifests: &[Manifest],
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
        let manifest = format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id);
        let found: BTreeSet<(String, String)> = sums.into_iter().collect();
        let listed_manifest = found.iter().find(|(_, path)| *path == manifest);
        let rest: BTreeSet<_> = found
            .iter()
            .filter(|(_, path)| *path != manifest)
            .cloned()
            .collect();
        let before_removal: BTreeSet<_> = expected.union(&merged).cloned().collect();
        if (rest != expected && rest != before_removal) || listed_manifest.is_none() {
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

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ok() {
            writeln!(
                f,
                "OK: {} runs, {} files and segments verified in {}",
                self.runs, self.checked, self.dir
            )?;
        } else {
            writeln!(
                f,
                "FAILED: {} problems in {} ({} runs, {} files and segments checked)",
                self.failures.len(),
                self.dir,
                self.runs,
                self.checked
            )?;
            for failure in &self.failures {
                writeln!(f, "  {}: {}", failure.path, failure.reason)?;
            }
        }
        if let Some(head) = &self.head {
            writeln!(f, "  chain head: {head}")?;
        }
        for (shard, head) in &self.shard_heads {
            writeln!(
                f,
                "  {shard} chain head: {}",
                head.as_deref().unwrap_or("(no runs)")
            )?;
        }
        if self.signatures_checked > 0 {
            writeln!(
                f,
                "  {} manifest signatures verified",
                self.signatures_checked
            )?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}
