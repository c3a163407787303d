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
//! - erasures: see [`crate::erasure`]'s invariant;
//! - `SHA256SUMS`, line by line, as `sha256sum -c` would, and each run's
//!   checksum file against its manifest;
//! - the Delta tables: every commit a manifest pins is there unchanged,
//!   no other commit is, versions are dense, and each snapshot a run left
//!   holds exactly the files the manifests list.
//!
//! How an output root is checked ([`check_since`]), step by step, each
//! step adding its failures and notes to one [`VerifyReport`] in turn:
//!
//! 1. [`chain`] reads the chain and the manifests it names, and the
//!    checkpoint's pointer; it hands on the manifests, lightened;
//! 2. [`files`] checks every file, log and segment those manifests list,
//!    and hands on where the sealed segments end and every listed path;
//! 3. [`completeness`] checks what lies beyond them: the handoff file's
//!    tail and the unlisted files, accounting for an interrupted run;
//! 4. [`compactions`] checks each compaction against the files it removed;
//!    [`erasures`] checks each erasure against its rows file, the handoff
//!    file against the runs' rows minus the erased ones, and the
//!    checkpoint's tombstones against the erasures;
//! 5. [`sums`] checks each run's checksum file, then `SHA256SUMS`;
//! 6. [`delta`] checks each table's Delta log against the manifests: the
//!    commits they pin, byte for byte, nothing else, and the files.
//!
//! Step 1 also hands each manifest to [`signatures`], which checks its SSH
//! signature: the file and its digest in the chain always, the signature
//! itself against `--allowed-signers` when given.
//!
//! With `--since` ([`since`]), steps 1 to 5 start after a chain head
//! verified before, and `SHA256SUMS`, the unlisted files and the Delta logs
//! are left to the full verify. A sharded prefix ([`run_since`]) is verified shard by
//! shard, each shard an output root of its own; when the shards share one
//! Delta table per prefix, each shard's check accounts for its own commits
//! and files, and the table as a whole (dense versions, every commit a
//! shard's) is checked once for the prefix. [`findings`] holds the
//! report itself, which every step writes into and none reads back.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod chain;
mod compactions;
mod completeness;
mod delta;
mod erasures;
mod files;
mod findings;
mod signatures;
mod since;
mod sums;

pub use findings::{Failure, VerifyReport};

use self::compactions::Compacted;
use crate::audit::{self, AuditKey};
use crate::error::{Error, Result};
use crate::shard::{Shard, Split};
use crate::sshsig::AllowedSigners;
use crate::storage::{Backend, Location, Storage};

/// What the manifests' authenticity is checked with.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The HMAC key (`XQUIK_DM_AUDIT_KEY`).
    pub key: Option<AuditKey>,
    /// The SSH keys trusted to sign manifests (`--allowed-signers`).
    pub signers: Option<AllowedSigners>,
    /// Fail unsigned runs too (`--require-signatures`).
    pub require_signatures: bool,
}

impl Trust {
    /// Only an HMAC key.
    fn of_key(key: Option<&AuditKey>) -> Trust {
        Trust {
            key: key.cloned(),
            ..Trust::default()
        }
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
    run_trusted(location, &Trust::of_key(key), expect_head, since)
}

/// [`run_since`], checking the manifests' HMACs and SSH signatures with
/// `trust`.
pub fn run_trusted(
    location: impl Into<Location>,
    trust: &Trust,
    expect_head: Option<&str>,
    since: Option<&str>,
) -> Result<VerifyReport> {
    let location = location.into();
    location.require_existing("DIR")?;
    let storage = crate::shard::open(&location)?;
    if location.as_dir().is_none() {
        // A bucket that is missing or refuses reading is bad input, not a
        // list of failures.
        storage.prepare()?;
    }
    let Some(split) = crate::shard::split(storage.as_ref())? else {
        return Ok(check_trusted(&storage, trust, expect_head, since));
    };
    if since.is_some() {
        return Err(Error::invalid(
            "--since",
            "a chain head belongs to one shard: verify that shard's folder (<prefix>/shard=K)",
        ));
    }
    check_shards(&location, &storage, split, trust, expect_head)
}

/// Verifies a prefix split as `split`, whose root is `storage`.
fn check_shards(
    location: &Location,
    storage: &Storage,
    split: Split,
    trust: &Trust,
    expect_head: Option<&str>,
) -> Result<VerifyReport> {
    // A sharded prefix: every shard is an output root of its own, each
    // with its own chain; all of them must verify.
    let mut report = VerifyReport::new(location.clone());
    let parts = split
        .one_table
        .then(|| delta::check_shared_tables(storage, split.shards, &mut report));
    let mut found_head = false;
    for index in 0..split.shards {
        let shard = Shard {
            index,
            count: split.shards,
        };
        found_head |= check_shard(
            location,
            shard,
            split,
            trust,
            expect_head,
            parts.as_ref(),
            &mut report,
        )?;
    }
    check_prefix_keys(storage.as_ref(), split, &mut report)?;
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

/// Verifies `shard` of the prefix `location`, split as `split`, and adds
/// what it found to `report`, its paths relative to the prefix and its
/// notes prefixed with the shard's folder; returns whether `expect_head` is
/// in its chain. `parts` (shared tables) is what the prefix's check read of
/// the log.
fn check_shard(
    location: &Location,
    shard: Shard,
    split: Split,
    trust: &Trust,
    expect_head: Option<&str>,
    parts: Option<&delta::Parts>,
    report: &mut VerifyReport,
) -> Result<bool> {
    let mut found_head = false;
    let dir = shard.dir();
    let storage = shard.storage(location, split)?;
    let shard = check_root(&storage, trust, None, None, parts);
    if let Some(expected) = expect_head
        && audit::read_chain(storage.as_ref())
            .is_ok_and(|(chain, _)| chain.iter().any(|e| e.sha256 == expected))
    {
        found_head = true;
    }
    report.runs += shard.runs;
    report.checked += shard.checked;
    report.signatures_checked += shard.signatures_checked;
    report.ssh_signatures += shard.ssh_signatures;
    report
        .failures
        .extend(shard.failures.into_iter().map(|f| Failure {
            path: in_prefix(location, storage.as_ref(), &dir, &f.path),
            reason: f.reason,
        }));
    report
        .notes
        .extend(shard.notes.into_iter().map(|n| format!("{dir}: {n}")));
    report.shard_heads.insert(dir, shard.head);
    Ok(found_head)
}

/// The shard `storage`'s `key` as a path relative to the prefix `location`:
/// its own files are in its folder `dir`, its tables' files (when it shares
/// them) in the prefix's tables.
fn in_prefix(location: &Location, storage: &dyn Backend, dir: &str, key: &str) -> String {
    let full = storage.describe(key).to_string_lossy().into_owned();
    let root = format!("{}/", location.to_string().trim_end_matches('/'));
    full.strip_prefix(&root)
        .map_or_else(|| format!("{dir}/{key}"), str::to_owned)
}

/// Checks that a sharded prefix holds its shards and its registry, and,
/// with one table per prefix, its tables' logs and the shards' folders in
/// them (what is in those, the shards' checks account for): nothing else.
fn check_prefix_keys(storage: &dyn Backend, split: Split, report: &mut VerifyReport) -> Result<()> {
    let shards = split.shards;
    // Exactly `<name><k>/` as the tool names it: `shard=00/` is not shard
    // 0, and a glob would read it all the same.
    let in_folder = |key: &str, name: &str| {
        key.strip_prefix(name)
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(k, _)| k.parse::<u32>().ok().filter(|n| n.to_string() == k))
            .is_some_and(|k| k < shards)
    };
    let in_table = |key: &str| {
        split.one_table
            && crate::delta::TableKind::ALL.into_iter().any(|kind| {
                key.strip_prefix(kind.root())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .is_some_and(|rest| {
                        rest.starts_with("_delta_log/") || in_folder(rest, "shard-")
                    })
            })
    };
    for listed in storage.list("")? {
        let in_shard = in_folder(&listed.key, "shard=") || in_table(&listed.key);
        if !in_shard && listed.key != crate::shard::REGISTRY {
            report.fail(
                &listed.key,
                format!("not part of any of the {shards} shards"),
            );
        }
    }
    Ok(())
}

/// Verifies the output root `dir` (see [`run`]).
pub fn check(dir: &Storage, key: Option<&AuditKey>, expect_head: Option<&str>) -> VerifyReport {
    check_since(dir, key, expect_head, None)
}

/// [`check`], or with `since` (a chain head verified before) only what came
/// after it: the chain's links after that run, the later runs' manifests
/// and everything they list, and the handoff file from where that run's
/// coverage ended — in time proportional to the new runs. `SHA256SUMS` and
/// the check that nothing extra exists are left to the full verify.
pub fn check_since(
    dir: &Storage,
    key: Option<&AuditKey>,
    expect_head: Option<&str>,
    since: Option<&str>,
) -> VerifyReport {
    check_trusted(dir, &Trust::of_key(key), expect_head, since)
}

/// [`check_since`], checking the manifests' HMACs and SSH signatures with
/// `trust`.
pub fn check_trusted(
    storage: &Storage,
    trust: &Trust,
    expect_head: Option<&str>,
    since: Option<&str>,
) -> VerifyReport {
    check_root(storage, trust, expect_head, since, None)
}

/// [`check_trusted`]; a shard of a prefix with shared tables is given what
/// the prefix's check read of their logs (`parts`).
fn check_root(
    storage: &Storage,
    trust: &Trust,
    expect_head: Option<&str>,
    since: Option<&str>,
    parts: Option<&delta::Parts>,
) -> VerifyReport {
    let dir = storage.as_ref();
    let mut report = VerifyReport::new(dir.location());
    if dir.is_locked() {
        report.notes.push(
            "a run is in progress in this folder: its data is not sealed yet; verify again when it has finished".into(),
        );
    }
    let chain = chain::check_chain(dir, trust, since, &mut report);
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
    if since.is_some() && chain.start.is_none() {
        return report;
    }
    let manifests = &chain.manifests;
    let compacted = Compacted::of(manifests);
    let listed = files::check_files(dir, manifests, chain.start, &compacted, &mut report);
    let mut interrupted = completeness::check_completeness(
        dir,
        manifests,
        &chain.chained,
        chain.start,
        &listed,
        &mut report,
    );
    if chain.sealing_interrupted {
        // SHA256SUMS is still the one the run before the last one wrote.
        let before_last = manifests
            .len()
            .checked_sub(2)
            .and_then(|i| manifests.get(i));
        interrupted = Some(before_last.map_or(0, |m| m.coverage.jsonl_bytes));
    }
    compactions::check_compactions(manifests, &compacted, chain.start.is_some(), &mut report);
    let full = chain.start.is_none();
    let erasures = (full, listed.covered, chain.sealing_interrupted);
    erasures::check_erasures(dir, manifests, erasures, &mut report);
    if chain.sealing_interrupted {
        erasures::check_pending_install(dir, manifests.last(), &mut report);
    }
    sums::check_run_sums(dir, manifests, &chain.signatures, &compacted, &mut report);
    match chain.start {
        Some(_) => since::note_checked(manifests.len(), since, &mut report),
        None => {
            let sealing = manifests.last().filter(|_| chain.sealing_interrupted);
            sums::check_sums(dir, (interrupted, sealing), &mut report);
            delta::check_delta(storage, manifests, parts, &mut report);
        }
    }
    report
}
