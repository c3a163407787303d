//! The chain: sequence numbers, each link to the previous manifest, each
//! manifest's SHA-256 against its chain entry and its HMAC when a key is
//! given, and the checkpoint's pointer to the last run (which also shows a
//! run killed after it sealed). It hands the manifests it could read to the
//! later steps, which check the files they list; it reads no file but the
//! chain, the manifests and the checkpoint.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, BTreeSet};

use super::Trust;
use super::findings::VerifyReport;
use super::signatures::SshChecks;
use super::since;
use crate::audit::{self, AuditKey, ChainEntry, Coverage, Manifest};
use crate::checkpoint::Checkpoint;
use crate::storage::Backend;

/// What the chain check hands to the later steps.
#[derive(Debug, Default)]
pub(super) struct Chain {
    /// The manifests that could be read, in chain order.
    pub(super) manifests: Vec<Manifest>,
    /// With `since`, where the verified head's coverage ended (`None` when
    /// `since` is not in the chain: a failure).
    pub(super) start: Option<Coverage>,
    /// Every run the chain holds.
    pub(super) chained: BTreeSet<String>,
    /// The last run sealed and was killed before its checkpoint followed.
    pub(super) sealing_interrupted: bool,
    /// The digest of each signed run's signature, as its entry records it.
    pub(super) signatures: BTreeMap<String, String>,
}

/// Checks the chain and each manifest's own digest and signature; returns
/// the manifests that could be read, in chain order.
/// With `since`, the manifests are read only after that run, and
/// [`Chain::start`] is where its coverage ended (`None` when `since` is not
/// in the chain: a failure). [`Chain::chained`] is every run the chain holds.
pub(super) fn check_chain(
    dir: &dyn Backend,
    trust: &Trust,
    since: Option<&str>,
    report: &mut VerifyReport,
) -> Chain {
    let Some((chain, torn)) = read(dir, since, report) else {
        return Chain::default();
    };
    let chained: BTreeSet<String> = chain.iter().map(|e| e.run_id.clone()).collect();
    let mut start = None;
    let mut skip = 0;
    if let Some(head) = since {
        skip = chain.first().map_or(0, |e| e.seq);
        match since::verified_start(dir, &chain, head, report) {
            Some(coverage) => start = Some(coverage),
            None => {
                return Chain {
                    chained,
                    ..Chain::default()
                };
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
        return Chain {
            chained,
            ..Chain::default()
        };
    }
    report.runs = chain.last().map_or(0, |e| e.seq);
    let manifests = check_entries(dir, trust, &chain, since.is_some(), skip, report);
    let signatures = chain
        .iter()
        .filter_map(|e| Some((e.run_id.clone(), e.signature_sha256.clone()?)))
        .collect();
    report.head = chain.last().map(|e| e.sha256.clone());
    let sealing_interrupted = check_pointer(dir, &chain, report);
    Chain {
        manifests,
        start,
        chained,
        sealing_interrupted,
        signatures,
    }
}

/// Reads the chain, with `since` only back as far as that run lies; `None`
/// (a failure) when it cannot be read or `since` is not in it.
fn read(
    dir: &dyn Backend,
    since: Option<&str>,
    report: &mut VerifyReport,
) -> Option<(Vec<ChainEntry>, Option<u64>)> {
    // The run a reviewer verified before: the chain is read back only as
    // far as it lies, manifests up to it are not read again, its own only
    // for where its coverage ended.
    let read = match since {
        Some(head) => audit::read_chain_from(dir, head),
        None => audit::read_chain(dir).map(|(chain, torn)| (Some(chain), torn)),
    };
    match read {
        Ok((Some(chain), torn)) => Some((chain, torn)),
        Ok((None, _)) => {
            report.fail(
                audit::CHAIN,
                format!(
                    "the verified head {} is not in the chain: runs were removed or replaced",
                    since.unwrap_or_default()
                ),
            );
            None
        }
        Err(e) => {
            report.fail(audit::CHAIN, e.to_string());
            None
        }
    }
}

/// Checks each entry's link and, after the first `skip` runs, its
/// manifest; returns the manifests that could be read, lightened.
fn check_entries(
    dir: &dyn Backend,
    trust: &Trust,
    chain: &[ChainEntry],
    since: bool,
    skip: u64,
    report: &mut VerifyReport,
) -> Vec<Manifest> {
    let mut manifests = Vec::new();
    let mut previous: Option<&ChainEntry> = None;
    let mut signatures = Signatures::default();
    let mut ssh = SshChecks::new(trust);
    for entry in chain {
        // Since a verified head, the chain starts there, linked before.
        if since && previous.is_none() {
            previous = Some(entry);
            ssh.follow(entry);
            continue;
        }
        check_link(entry, previous, report);
        previous = Some(entry);
        if entry.seq <= skip {
            continue;
        }
        let Some((manifest, bytes)) = check_manifest(dir, entry, report) else {
            continue;
        };
        signatures.check(trust.key.as_ref(), entry, &manifest, report);
        ssh.check(dir, entry, &manifest, &bytes, report);
        manifests.push(lighten(manifest));
    }
    signatures.note(report);
    ssh.note(report);
    manifests
}

/// Checks that `entry` follows `previous`: the next sequence number and a
/// link to its manifest's digest.
fn check_link(entry: &ChainEntry, previous: Option<&ChainEntry>, report: &mut VerifyReport) {
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
}

/// Reads `entry`'s manifest and checks it against the entry: its SHA-256,
/// its run ID and its link; returns it with its bytes, `None` when it
/// cannot be read.
fn check_manifest(
    dir: &dyn Backend,
    entry: &ChainEntry,
    report: &mut VerifyReport,
) -> Option<(Manifest, Vec<u8>)> {
    let (manifest, bytes) = match audit::read_manifest(dir, &entry.manifest) {
        Ok(m) => m,
        Err(e) => {
            report.fail(&entry.manifest, e.to_string());
            return None;
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
    if manifest.run_id != entry.run_id || manifest.previous_manifest_sha256 != entry.previous_sha256
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
    Some((manifest, bytes))
}

/// What the HMAC checks saw over the chain that is not a failure.
#[derive(Debug, Default)]
struct Signatures {
    /// Signed manifests left unchecked for want of a key.
    signed_unchecked: u64,
    /// Unsigned manifests before the first signed one.
    unsigned_before_signing: u64,
    /// Whether a signed manifest has been seen.
    seen_signed: bool,
}

impl Signatures {
    /// Checks `manifest`'s HMAC with `key`, if one is given.
    fn check(
        &mut self,
        key: Option<&AuditKey>,
        entry: &ChainEntry,
        manifest: &Manifest,
        report: &mut VerifyReport,
    ) {
        match (
            key,
            manifest.check_signature(key.map_or(&[][..], |k| &k.0[..])),
        ) {
            (Some(_), Ok(Some(true))) => {
                report.signatures_checked += 1;
                self.seen_signed = true;
            }
            (Some(_), Ok(Some(false))) => report.fail(
                &entry.manifest,
                "HMAC does not match: changed, or signed with another key",
            ),
            // Runs from before signing was switched on are unsigned; an
            // unsigned run after a signed one is a downgrade.
            (Some(_), Ok(None)) if self.seen_signed => report.fail(
                &entry.manifest,
                "not signed, though an earlier run was: replaced or inserted without the key",
            ),
            (Some(_), Ok(None)) => self.unsigned_before_signing += 1,
            (None, Ok(Some(_))) => self.signed_unchecked += 1,
            (_, Err(e)) => report.fail(&entry.manifest, e.to_string()),
            (None, Ok(None)) => {}
        }
    }

    /// Notes the signatures left unchecked and the runs from before signing.
    fn note(&self, report: &mut VerifyReport) {
        if self.signed_unchecked > 0 {
            report.notes.push(format!(
                "{} manifests are signed; set {} to check their HMAC",
                self.signed_unchecked,
                audit::AUDIT_KEY_ENV
            ));
        }
        if self.unsigned_before_signing > 0 {
            report.notes.push(format!(
                "{} runs from before signing was switched on are unsigned",
                self.unsigned_before_signing
            ));
        }
    }
}

/// The manifest with its command-specific parts let go.
fn lighten(mut manifest: Manifest) -> Manifest {
    // What is checked from here on are the files it lists: its
    // command-specific parts (per-conversation outcomes, options,
    // counts) are let go, so that memory stays small over many runs.
    for part in [
        &mut manifest.conversations,
        &mut manifest.sends,
        &mut manifest.options,
        &mut manifest.counts,
        &mut manifest.repair,
    ] {
        *part = serde_json::Value::Null;
    }
    manifest
}

/// Checks that the checkpoint's audit pointer names the last run of the
/// chain; returns whether the last run sealed and was killed before its
/// checkpoint followed (it names the run before then).
///
/// Then the checkpoint names, as the run that claimed it, either that
/// last run, or a later one that has not sealed: the next run claims the
/// output before it completes the seal (see `store/recover.rs`), so a kill
/// in between leaves the pointer one run behind under its claim.
fn check_pointer(dir: &dyn Backend, chain: &[ChainEntry], report: &mut VerifyReport) -> bool {
    let mut sealing_interrupted = false;
    match Checkpoint::load(dir) {
        Ok(c) => {
            let last = chain.last();
            let before_last = chain.len().checked_sub(2).and_then(|i| chain.get(i));
            let names = |entry: Option<&ChainEntry>| {
                c.audit.last_digest.as_deref() == entry.map(|e| e.sha256.as_str())
                    && c.audit.last_manifest.as_deref() == entry.map(|e| e.manifest.as_str())
            };
            let claimed_unsealed = |run: &str| {
                c.unsealed.iter().flatten().any(|claim| claim.run == run)
                    && !chain.iter().any(|e| e.run_id == run)
            };
            let claimed_by = |l: &ChainEntry| {
                c.run
                    .as_deref()
                    .is_some_and(|run| run == l.run_id || claimed_unsealed(run))
            };
            if names(last) {
            } else if names(before_last) && last.is_some_and(claimed_by) {
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
    sealing_interrupted
}
