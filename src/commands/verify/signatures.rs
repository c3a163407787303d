//! The SSH signatures: each signed run's `<manifest>.sig`, its digest
//! against the chain entry (so that a removed or swapped signature is
//! caught without any key), and with `--allowed-signers` the signature
//! itself, against the key valid when the run finished. Runs sealed before
//! signing began are counted as unsigned, a failure only with
//! `--require-signatures`; an unsigned run after a signed one is a
//! failure whenever the signatures are checked.
//!
//! The chain step hands it each manifest with the bytes it read; it reads
//! no other file than the signatures.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::Trust;
use super::findings::VerifyReport;
use crate::audit::{self, ChainEntry, Manifest};
use crate::sinks::sha256_hex;
use crate::storage::Backend;

/// The SSH signature checks over the chain, run by run in chain order.
#[derive(Debug)]
pub(super) struct SshChecks<'a> {
    trust: &'a Trust,
    /// Whether a signed run has been seen.
    seen_signed: bool,
    /// Unsigned runs before the first signed one.
    unsigned_before_signing: u64,
    /// Signed runs left unchecked for want of `--allowed-signers`.
    signed_unchecked: u64,
}

impl<'a> SshChecks<'a> {
    /// Checks with `trust`.
    pub(super) fn new(trust: &'a Trust) -> SshChecks<'a> {
        SshChecks {
            trust,
            seen_signed: false,
            unsigned_before_signing: 0,
            signed_unchecked: 0,
        }
    }

    /// Takes `entry`, the head verified before (`--since`), as the run
    /// before the ones checked: an unsigned run after a signed head fails.
    pub(super) fn follow(&mut self, entry: &ChainEntry) {
        self.seen_signed |= entry.signature_sha256.is_some();
    }

    /// Checks the signature of `manifest` (its file read as `bytes`),
    /// which `entry` chains.
    pub(super) fn check(
        &mut self,
        dir: &dyn Backend,
        entry: &ChainEntry,
        manifest: &Manifest,
        bytes: &[u8],
        report: &mut VerifyReport,
    ) {
        let sig_key = audit::signature_key(&entry.run_id);
        let recorded = (manifest.signer.is_some(), entry.signature_sha256.is_some());
        if recorded == (false, false) {
            return self.unsigned(entry, report);
        }
        self.seen_signed = true;
        if recorded != (true, true) {
            // One side was edited: the manifest names a signer its entry
            // has no signature for, or the other way round.
            report.fail(
                audit::CHAIN,
                format!(
                    "the entry of run {} and its manifest disagree on whether it is signed",
                    entry.run_id
                ),
            );
        }
        let sig = match dir.get(&sig_key) {
            Ok(Some(stored)) => stored.bytes,
            Ok(None) => {
                return report.fail(
                    &sig_key,
                    format!("missing: the signature of run {} was removed", entry.run_id),
                );
            }
            Err(e) => return report.fail(&sig_key, e.to_string()),
        };
        report.checked += 1;
        if entry.signature_sha256.as_deref() != Some(sha256_hex(&sig).as_str()) {
            report.fail(
                &sig_key,
                format!(
                    "SHA-256 differs from the chain entry of run {}: replaced",
                    entry.run_id
                ),
            );
        }
        self.verify(entry, manifest, bytes, &sig, &sig_key, report);
    }

    /// An unsigned run: before signing began, only counted (a failure
    /// with `--require-signatures`); after it, a failure when signatures
    /// are checked.
    fn unsigned(&mut self, entry: &ChainEntry, report: &mut VerifyReport) {
        if self.trust.signers.is_none() {
            return;
        }
        if self.seen_signed {
            report.fail(
                &entry.manifest,
                format!(
                    "run {} is not signed, though an earlier run was: sealed without the key, or replaced",
                    entry.run_id
                ),
            );
        } else if self.trust.require_signatures {
            report.fail(
                &entry.manifest,
                format!("run {} is not signed (--require-signatures)", entry.run_id),
            );
        } else {
            self.unsigned_before_signing += 1;
        }
    }

    /// Checks `sig` over the manifest's `bytes` against the allowed
    /// signers, at the run's `finished_at`, and that it is by the key the
    /// manifest names.
    fn verify(
        &mut self,
        entry: &ChainEntry,
        manifest: &Manifest,
        bytes: &[u8],
        sig: &[u8],
        sig_key: &str,
        report: &mut VerifyReport,
    ) {
        let Some(signers) = &self.trust.signers else {
            self.signed_unchecked += 1;
            return;
        };
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(&manifest.finished_at) else {
            return report.fail(
                &entry.manifest,
                format!("run {}: finished_at is not an RFC 3339 time", entry.run_id),
            );
        };
        match signers.verify(bytes, sig, at.with_timezone(&chrono::Utc)) {
            Ok((fingerprint, _)) => {
                if manifest.signer.as_ref().map(|s| s.fingerprint.as_str()) != Some(&fingerprint) {
                    return report.fail(
                        sig_key,
                        format!(
                            "run {}: made by {fingerprint}, not the key its manifest names",
                            entry.run_id
                        ),
                    );
                }
                report.ssh_signatures += 1;
            }
            Err(failure) => report.fail(sig_key, format!("run {}: {failure}", entry.run_id)),
        }
    }

    /// Notes the signatures left unchecked and the runs from before signing.
    pub(super) fn note(&self, report: &mut VerifyReport) {
        if self.signed_unchecked > 0 {
            report.notes.push(format!(
                "{} manifests are SSH-signed; pass --allowed-signers to check the signatures",
                self.signed_unchecked
            ));
        }
        if self.unsigned_before_signing > 0 {
            report.notes.push(format!(
                "{} runs sealed before SSH signing began are unsigned",
                self.unsigned_before_signing
            ));
        }
    }
}
