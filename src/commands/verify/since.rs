//! `verify --since HEAD`: the incremental verify. Given a chain head that a
//! full verify accepted before, it checks only what came after it: the
//! chain's links after that run, the later runs' manifests and everything
//! they list, and the handoff file from where that run's coverage ended —
//! in time proportional to the new runs. `SHA256SUMS` and the check that
//! nothing extra exists are left to the full verify, which this module's
//! note reminds the reviewer of.
//!
//! The other steps take `since` (or the [`Coverage`] it starts from) and
//! skip what it already covers; this module holds what only the
//! incremental path does.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::findings::VerifyReport;
use crate::audit::{self, ChainEntry, Coverage};
use crate::storage::Backend;

/// Where the verified head's coverage ended, read from its manifest (the
/// first entry of a chain read from `head` on); `None`, a failure, when
/// that manifest no longer matches `head`.
pub(super) fn verified_start(
    dir: &dyn Backend,
    chain: &[ChainEntry],
    head: &str,
    report: &mut VerifyReport,
) -> Option<Coverage> {
    match chain
        .first()
        .map(|e| audit::read_manifest(dir, &e.manifest))
    {
        Some(Ok((manifest, bytes))) if crate::sinks::sha256_hex(&bytes) == head => {
            Some(manifest.coverage)
        }
        _ => {
            report.fail(
                audit::CHAIN,
                format!("the manifest of the verified head {head} no longer matches it"),
            );
            None
        }
    }
}

/// Notes how many runs after `since` were checked, and what is left to the
/// full verify.
pub(super) fn note_checked(runs: usize, since: Option<&str>, report: &mut VerifyReport) {
    report.notes.push(format!(
        "checked the {} runs after {}; the full verify also checks the earlier runs, SHA256SUMS and that nothing extra exists",
        runs,
        since.unwrap_or_default()
    ));
}
