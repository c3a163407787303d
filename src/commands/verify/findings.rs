//! What `verify` finds: the integrity failures and the remarks each step
//! adds, in the order the steps find them, and the report a reviewer reads
//! (its text here, its JSON through serde). Every other step of `verify`
//! writes into a [`VerifyReport`]; this module imports none of them.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use serde::Serialize;

use crate::storage::Location;

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
    /// Manifests whose SSH signature verified against the allowed signers.
    #[serde(skip_serializing_if = "is_zero")]
    pub ssh_signatures: u64,
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
    pub(super) fn new(dir: Location) -> VerifyReport {
        VerifyReport {
            dir,
            runs: 0,
            checked: 0,
            signatures_checked: 0,
            ssh_signatures: 0,
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

    /// Records that `path` failed for `reason`.
    pub(super) fn fail(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.failures.push(Failure {
            path: path.into(),
            reason: reason.into(),
        });
    }
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
        if self.ssh_signatures > 0 {
            writeln!(
                f,
                "  {} manifest SSH signatures verified against the allowed signers",
                self.ssh_signatures
            )?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

/// Whether a count is zero (left out of the JSON report).
fn is_zero(n: &u64) -> bool {
    *n == 0
}
