//! Compactions: the files a compaction removed are those earlier runs
//! listed, digest for digest, and it added as many rows per partition (an
//! erasure's rewrite: as many rows in all but the erased ones).
//!
//! [`Compacted`] gathers what the checked compactions removed; the file
//! checks ([`super::files`]) mark each removed file they find an earlier
//! manifest listing, and [`check_compactions`] then checks each compaction
//! against its own manifest and those marks.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeSet;

use super::findings::VerifyReport;
use crate::audit::{self, Manifest};

/// The files compactions among the checked runs merged away.
#[derive(Debug, Default)]
pub(super) struct Compacted<'a> {
    /// Path → (index of the compaction's manifest, what it says it removed).
    pub(super) removed: std::collections::BTreeMap<&'a str, (usize, &'a audit::RemovedFile)>,
    /// The removed files an earlier manifest was found to list.
    pub(super) matched: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Compacted<'a> {
    /// What the compactions among `manifests` removed.
    pub(super) fn of(manifests: &'a [Manifest]) -> Compacted<'a> {
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
pub(super) fn check_compactions(
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
        if let Some(erasure) = &m.erasure {
            // An erasure's rewrite drops exactly the erased rows.
            let (before, after) = rows
                .values()
                .fold((0u64, 0u64), |(b, a), (rb, ra)| (b + rb, a + ra));
            if before.checked_sub(after) != Some(erasure.erased) {
                report.fail(
                    &key,
                    format!(
                        "its Parquet rewrite dropped {} rows but it erased {}",
                        before.saturating_sub(after),
                        erasure.erased
                    ),
                );
            }
            rows.clear();
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
