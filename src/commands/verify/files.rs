//! The files the manifests list, run by run in chain order: each run's
//! audit logs (digest, size, line count, Merkle root), its Parquet files
//! and its JSONL segments (SHA-256, size), and that the segments follow one
//! another from the first byte of the handoff file, as far as each run's
//! coverage says. A file a later compaction merged away is checked against
//! that compaction instead, and marked in [`Compacted`].
//!
//! What it hands on, [`Listed`], is where the sealed segments end and every
//! path the manifests account for: the completeness checks look for what
//! lies beyond them.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeSet;
use std::io::BufRead;

use super::compactions::Compacted;
use super::findings::VerifyReport;
use crate::audit::{self, Coverage, LogInfo, LogKind, Manifest, Merkle};
use crate::erasure::record::Generation;
use crate::error::Result;
use crate::sinks::WrittenFile;
use crate::storage::Backend;

/// What the listed files add up to.
#[derive(Debug)]
pub(super) struct Listed {
    /// Where the last sealed segment of the handoff file ends.
    pub(super) covered: u64,
    /// Every path a checked manifest accounts for.
    pub(super) paths: BTreeSet<String>,
}

/// Checks every listed file, segment and rows file, from `start` (with
/// `--since`, where the verified head's coverage ended) on.
pub(super) fn check_files(
    dir: &dyn Backend,
    manifests: &[Manifest],
    start: Option<Coverage>,
    compacted: &Compacted,
    report: &mut VerifyReport,
) -> Listed {
    // The handoff file is the generation the last erasure wrote, and what
    // later runs appended: the segments of earlier generations are no
    // longer its bytes. They are checked as far as numbers go (they tile
    // the generation the next erasure replaced, row for row), and their
    // bytes through that erasure, which checked them before it rewrote
    // them.
    let generation = manifests
        .iter()
        .rposition(|m| m.erasure.as_ref().is_some_and(|e| e.handoff.is_some()));
    let mut walk = Walk {
        dir,
        manifests,
        compacted,
        listed: Listed {
            covered: start.map_or(0, |c| c.jsonl_bytes),
            paths: BTreeSet::new(),
        },
        generation,
        // With `--since`, the rows before its head are not counted.
        generation_rows: start.map_or(Some(0), |_| None),
        replaced: 0,
    };
    for (index, m) in manifests.iter().enumerate() {
        walk.check_run(index, m, report);
    }
    if walk.replaced > 0 {
        report.notes.push(format!(
            "{} segments of the handoff file were replaced by an erasure's new generation; their rows are checked as the earlier runs' rows minus the erased IDs",
            walk.replaced
        ));
    }
    walk.listed
}

/// The walk over the manifests' files, in chain order.
struct Walk<'a> {
    dir: &'a dyn Backend,
    manifests: &'a [Manifest],
    compacted: &'a Compacted<'a>,
    listed: Listed,
    /// The index of the last manifest that wrote a new generation of the
    /// handoff file.
    generation: Option<usize>,
    /// Records in the segments since the last generation started, when
    /// every one of them is checked.
    generation_rows: Option<u64>,
    /// Segments of replaced generations met.
    replaced: u64,
}

impl Walk<'_> {
    /// Checks the logs and files run `index` lists, and that its coverage
    /// ends where its segments do.
    fn check_run(&mut self, index: usize, m: &Manifest, report: &mut VerifyReport) {
        let listed = &mut self.listed.paths;
        listed.insert(format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id));
        listed.insert(audit::run_sums_key(&m.run_id));
        if m.signer.is_some() {
            listed.insert(audit::signature_key(&m.run_id));
        }
        let recovered = m.recovered.iter().map(|r| &r.log);
        for log in [&m.audit_rows, &m.page_log].into_iter().chain(recovered) {
            listed.insert(log.path.clone());
            check_log(self.dir, &m.run_id, log, report);
        }
        for f in &m.files {
            self.check_file(index, m, f, report);
        }
        if m.coverage.jsonl_bytes != self.listed.covered {
            report.fail(
                format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id),
                "its coverage does not match its segments",
            );
        }
    }

    /// Checks one file or segment run `index` lists against its digest.
    fn check_file(
        &mut self,
        index: usize,
        m: &Manifest,
        f: &WrittenFile,
        report: &mut VerifyReport,
    ) {
        let digest = match (f.offset, f.length) {
            (Some(offset), Some(length)) => {
                let digest = self.segment(m, f, offset, length, report);
                if self.generation.is_some_and(|g| index < g) {
                    // A replaced generation's bytes: see `check_files`.
                    self.replaced += 1;
                    return;
                }
                digest
            }
            _ => {
                if let Some(&(by, removed)) = self.compacted.removed.get(f.path.as_str()) {
                    return self.merged_away(index, m, f, (by, removed), report);
                }
                self.listed.paths.insert(f.path.clone());
                audit::digest(self.dir, &f.path)
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

    /// The digest of a JSONL segment, which must start where the previous
    /// one ended.
    fn segment(
        &mut self,
        m: &Manifest,
        f: &WrittenFile,
        offset: u64,
        length: u64,
        report: &mut VerifyReport,
    ) -> Result<(String, u64)> {
        if offset == 0
            && let Some(generation) = m.erasure.as_ref().and_then(|e| e.handoff.as_ref())
        {
            self.new_generation(m, f, generation, report);
        }
        self.generation_rows = self.generation_rows.map(|r| r.saturating_add(f.rows));
        let covered = self.listed.covered;
        if offset != covered {
            report.fail(
                &f.path,
                format!("segment of run {} starts at byte {offset}, but the previous one ended at {covered}", m.run_id),
            );
        }
        // Numbers from a file: never trusted not to overflow.
        self.listed.covered = offset.saturating_add(length);
        audit::handoff_digest(self.dir, offset..self.listed.covered)
    }

    /// An erasure's new generation: the one it replaced must be what the
    /// segments before it tile, row for row, and it must hold that many
    /// records but the erased ones. The generation starts the file again.
    fn new_generation(
        &mut self,
        m: &Manifest,
        f: &WrittenFile,
        g: &Generation,
        report: &mut VerifyReport,
    ) {
        let key = format!("{}/{}.manifest.json", audit::RUNS_DIR, m.run_id);
        let erased = m.erasure.as_ref().map_or(0, |e| e.erased);
        let rows = self.generation_rows.unwrap_or(g.before_rows);
        if g.before_bytes != self.listed.covered || g.before_rows != rows {
            report.fail(
                &key,
                format!(
                    "its erasure replaced a handoff file of {} bytes and {} records, but the segments before it hold {} and {rows}",
                    g.before_bytes, g.before_rows, self.listed.covered
                ),
            );
        }
        if g.rows.checked_add(erased) != Some(g.before_rows)
            || g.bytes != f.bytes
            || g.rows != f.rows
            || g.sha256 != f.sha256
        {
            report.fail(
                &key,
                format!(
                    "its erasure's counts do not match: {} records before, {erased} erased, {} after",
                    g.before_rows, g.rows
                ),
            );
        }
        self.listed.covered = 0;
        self.generation_rows = Some(0);
    }

    /// Checks a file that the compaction of run `by` says it removed
    /// against what that compaction names; notes it when it is still there.
    fn merged_away(
        &mut self,
        index: usize,
        m: &Manifest,
        f: &WrittenFile,
        (by, removed): (usize, &audit::RemovedFile),
        report: &mut VerifyReport,
    ) {
        // Merged away by a later compaction: that one must
        // have removed exactly this file.
        self.compacted.matched.borrow_mut().insert(f.path.clone());
        let by_run = self.manifests.get(by).map_or("", |c| c.run_id.as_str());
        if by <= index || removed.file != *f || removed.run_id != m.run_id {
            report.fail(
                format!("{}/{by_run}.manifest.json", audit::RUNS_DIR),
                format!(
                    "its compaction names {} unlike run {}'s manifest",
                    f.path, m.run_id
                ),
            );
        } else if self.dir.size(&f.path).is_ok_and(|s| s.is_some()) {
            self.listed.paths.insert(f.path.clone());
            report.notes.push(format!(
                "{} was merged by compaction {by_run} and is still there; the next run removes it",
                f.path
            ));
        }
    }
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
