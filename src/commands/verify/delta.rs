//! The Delta tables against the manifests: the log of each table
//! (`parquet/<table>/_delta_log/`) must hold exactly what the sealed runs
//! say, commit for commit.
//!
//! - Every commit file a manifest pins (its own commit, the killed runs'
//!   commits it reverted, its restoring commit) is there, byte for byte
//!   (the SHA-256 the manifest records).
//! - Versions are dense from the oldest one kept (a checkpoint may stand in
//!   for the commits log cleanup removed before it).
//! - No commit is there that no manifest pins, but those at the end of the
//!   log of a run the checkpoint names as in progress or killed (noted: the
//!   next run reverts them).
//! - Each `add` names a file a sealed run lists, with its size; each run's
//!   own commit leaves the table holding exactly the files the manifests
//!   list up to that run (the projection of `store::project`, replayed),
//!   and so does the latest snapshot.
//!
//! The log is replayed once, in version order, alongside the manifests in
//! chain order: the cost is the log's length, once.
//!
//! A shard of a prefix with one table per prefix ([`crate::shard`]) shares
//! the table: its check considers only the commits that name its folder
//! (`commitInfo.part`) and the files in it, exactly as above; what concerns
//! the table as a whole — dense versions, every commit naming one of the
//! prefix's shards — is checked once per prefix ([`check_shared_tables`]).
//! Together: every commit belongs to a shard's sealed run, and each
//! shard's folder in every snapshot holds what its manifests list. The
//! prefix's check reads every commit once and hands each shard the folder
//! each commit names ([`Parts`]): a shard then reads only its own commits,
//! and the log is read about twice, not once per shard.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::{BTreeMap, HashSet};

use super::findings::VerifyReport;
use crate::audit::{DeltaCommit, Manifest};
use crate::checkpoint::Checkpoint;
use crate::delta::{Action, Table, TableKind};
use crate::sinks::sha256_hex;
use crate::storage::Storage;
use crate::store::{RunFiles, in_part, is_in_part, project};

/// The folder each commit of a prefix's shared tables names (`None`: none),
/// by table and version: read once per prefix, for every shard's check.
pub(super) type Parts = BTreeMap<TableKind, BTreeMap<u64, Option<String>>>;

/// Checks both tables of `storage` against `manifests` (the whole chain,
/// in order); `parts`, when the prefix's check read them, saves a shard
/// from reading every commit again to find its own.
pub(super) fn check_delta(
    storage: &Storage,
    manifests: &[Manifest],
    parts: Option<&Parts>,
    report: &mut VerifyReport,
) {
    let in_progress: HashSet<String> = Checkpoint::load(storage.as_ref())
        .ok()
        .and_then(|c| c.unsealed)
        .into_iter()
        .flatten()
        .map(|c| c.run)
        .collect();
    for kind in TableKind::ALL {
        let table = Table::new(storage.clone(), kind);
        let known = parts.and_then(|p| p.get(&kind));
        if let Err(reason) = check_table(&table, manifests, &in_progress, known, report) {
            report.fail(format!("{}/_delta_log", kind.root()), reason);
        }
    }
}

/// A file of the table, as the log or the manifests hold it: its size.
type Files = BTreeMap<String, u64>;

/// The log of one table, replayed version by version.
struct Replay<'a> {
    table: &'a Table,
    /// The folder of the root's files when it shares the table (`shard-K`):
    /// only its commits and files are replayed.
    part: Option<String>,
    /// The next version to apply.
    next: u64,
    /// The files live after the versions applied.
    live: Files,
    /// Every version present, ascending.
    versions: Vec<u64>,
}

/// Checks one table; an `Err` is a log that cannot be read at all.
fn check_table(
    table: &Table,
    manifests: &[Manifest],
    in_progress: &HashSet<String>,
    known: Option<&BTreeMap<u64, Option<String>>>,
    report: &mut VerifyReport,
) -> Result<(), String> {
    let versions = table.versions().map_err(|e| e.to_string())?;
    let name = table.kind().name();
    let pinned = manifests.iter().any(|m| m.delta.contains_key(name));
    if versions.is_empty() && !pinned {
        return Ok(());
    }
    let part = table.storage().table_part().map(str::to_owned);
    let mut replay = Replay::start(table, versions, part.clone(), known, report)?;
    let mut expected = Files::new();
    let mut listed = Files::new();
    for m in manifests {
        let entry = m.delta.get(name);
        if let Some(reverted) = entry.and_then(|e| e.reverted.as_ref()) {
            for commit in &reverted.commits {
                replay.pinned(commit, None, report);
            }
            replay.pinned(&reverted.restore, None, report);
            replay.compare(&expected, &reverted.restore, report);
        }
        let timestamp = 0;
        let change = project(&RunFiles::of(m), timestamp).remove(&table.kind());
        if let Some(change) = change.map(|c| in_part(c, part.as_deref())) {
            for add in &change.adds {
                listed.insert(add.path.clone(), add.size);
                expected.insert(add.path.clone(), add.size);
            }
            for remove in &change.removes {
                expected.remove(&remove.path);
            }
        }
        if let Some(own) = entry.and_then(|e| e.commit()) {
            replay.pinned(&own, Some(&listed), report);
            replay.compare(&expected, &own, report);
        }
    }
    replay.finish(&expected, in_progress, report);
    Ok(())
}

impl<'a> Replay<'a> {
    /// The replay from the oldest version kept: from nothing when version 0
    /// is there, else from the newest checkpoint that the kept commits
    /// follow without a gap.
    ///
    /// With `part`, only the commits that name it and the files in it
    /// are replayed, and the log's gaps are left to the check of the whole
    /// table (which reports them once).
    fn start(
        table: &'a Table,
        versions: Vec<u64>,
        part: Option<String>,
        known: Option<&BTreeMap<u64, Option<String>>>,
        report: &mut VerifyReport,
    ) -> Result<Replay<'a>, String> {
        let mut replay = Replay {
            table,
            part,
            next: 0,
            live: Files::new(),
            versions,
        };
        let start = base_checkpoint(table, &replay.versions)?;
        match replay.part.as_deref() {
            None => check_dense(table, &replay.versions, report),
            Some(part) => {
                let all = std::mem::take(&mut replay.versions);
                replay.versions = of_part(table, all, part, known, report);
            }
        }
        let base = match start {
            Start::Zero => return Ok(replay),
            Start::Checkpoint(base) => base,
            Start::Gap(first) => {
                if replay.part.is_none() {
                    report_gap(table, first, report);
                }
                return Ok(replay);
            }
        };
        let snapshot = table
            .snapshot(Some(base))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("checkpoint {base} cannot be read"))?;
        replay.live = snapshot
            .files
            .values()
            .filter(|a| is_in_part(&a.path, replay.part.as_deref()))
            .map(|a| (a.path.clone(), a.size))
            .collect();
        replay.next = base + 1;
        Ok(replay)
    }

    /// Applies the commit `pin` names, after failing every version before
    /// it that no manifest pins. Its bytes must have the pinned digest;
    /// with `listed`, every `add` must name a listed file with its size.
    fn pinned(&mut self, pin: &DeltaCommit, listed: Option<&Files>, report: &mut VerifyReport) {
        if pin.version < self.next {
            // Before the oldest version kept (cleaned up): nothing to read.
            return;
        }
        while self.next < pin.version {
            if self.versions.binary_search(&self.next).is_ok() {
                report.fail(
                    commit_path(self.table, self.next),
                    "no manifest accounts for this commit",
                );
                self.apply(self.next, report);
            }
            self.next += 1;
        }
        let path = commit_path(self.table, pin.version);
        match self.table.read_commit(pin.version) {
            Ok(Some((bytes, actions))) => {
                if sha256_hex(&bytes) != pin.sha256 {
                    report.fail(
                        &path,
                        "SHA-256 differs from the manifest that pins it: the commit was changed",
                    );
                }
                self.apply_actions(&path, actions, listed, report);
            }
            Ok(None) => report.fail(&path, "missing: a manifest pins it"),
            Err(e) => report.fail(&path, e.to_string()),
        }
        self.next = pin.version + 1;
    }

    /// Applies the actions of `version` to the live files.
    fn apply(&mut self, version: u64, report: &mut VerifyReport) {
        let path = commit_path(self.table, version);
        match self.table.read_commit(version) {
            Ok(Some((_, actions))) => self.apply_actions(&path, actions, None, report),
            Ok(None) => {}
            Err(e) => report.fail(&path, e.to_string()),
        }
    }

    /// Applies `actions` (of the commit file `path`) to the live files;
    /// with `listed`, checks each `add` against the files the manifests
    /// list.
    fn apply_actions(
        &mut self,
        path: &str,
        actions: Vec<Action>,
        listed: Option<&Files>,
        report: &mut VerifyReport,
    ) {
        let part = self.part.as_deref();
        for action in actions {
            let named = match &action {
                Action::Add(add) => Some(add.path.as_str()),
                Action::Remove(remove) => Some(remove.path.as_str()),
                _ => None,
            };
            if let Some(named) = named.filter(|p| !is_in_part(p, part)) {
                report.fail(
                    path,
                    format!(
                        "names {named}, outside the folder {} of the shard that made it",
                        part.unwrap_or_default()
                    ),
                );
                continue;
            }
            match action {
                Action::Add(add) => {
                    if let Some(listed) = listed
                        && listed.get(&add.path) != Some(&add.size)
                    {
                        report.fail(
                            path,
                            format!(
                                "adds {}, which no sealed run lists with that size",
                                add.path
                            ),
                        );
                    }
                    self.live.insert(add.path, add.size);
                }
                Action::Remove(remove) => {
                    self.live.remove(&remove.path);
                }
                _ => {}
            }
        }
    }

    /// After the commit `pin`: the live files must be `expected`.
    fn compare(&self, expected: &Files, pin: &DeltaCommit, report: &mut VerifyReport) {
        if pin.version + 1 < self.next || self.live == *expected {
            return;
        }
        report.fail(
            commit_path(self.table, pin.version),
            describe_difference(&self.live, expected),
        );
    }

    /// The versions after the last pinned one: those of a run in progress
    /// or killed (`in_progress`) are noted, any other fails; the table
    /// before them must hold exactly `expected`.
    fn finish(
        mut self,
        expected: &Files,
        in_progress: &HashSet<String>,
        report: &mut VerifyReport,
    ) {
        if self.live != *expected {
            report.fail(
                format!("{}/_delta_log", self.table.kind().root()),
                format!(
                    "latest snapshot: {}",
                    describe_difference(&self.live, expected)
                ),
            );
        }
        let rest: Vec<u64> = self
            .versions
            .iter()
            .copied()
            .filter(|v| *v >= self.next)
            .collect();
        for version in rest {
            let path = commit_path(self.table, version);
            let run = self
                .table
                .read_commit(version)
                .ok()
                .flatten()
                .and_then(|(_, actions)| {
                    actions.into_iter().find_map(|a| match a {
                        Action::CommitInfo(info) => Some(info.run_id),
                        _ => None,
                    })
                });
            match run {
                Some(run) if in_progress.contains(&run) => report.notes.push(format!(
                    "{path} was committed by run {run}, which has not sealed; the next run reverts it"
                )),
                _ => report.fail(&path, "no manifest accounts for this commit"),
            }
            self.next = version + 1;
        }
    }
}

/// Where a replay of a table starts.
enum Start {
    /// From version 0.
    Zero,
    /// From this checkpoint, which the oldest kept commit follows.
    Checkpoint(u64),
    /// Nowhere: the log starts at this version, and no checkpoint stands
    /// in for the commits before it.
    Gap(u64),
}

/// Where a replay of `table`, whose commit files are `versions`, starts.
fn base_checkpoint(table: &Table, versions: &[u64]) -> Result<Start, String> {
    let first = versions.first().copied().unwrap_or(0);
    if first == 0 {
        return Ok(Start::Zero);
    }
    let checkpoints = table.checkpoints().map_err(|e| e.to_string())?;
    Ok(match checkpoints.into_iter().rfind(|c| *c + 1 >= first) {
        Some(base) => Start::Checkpoint(base),
        None => Start::Gap(first),
    })
}

/// Fails the commit before `first`, the oldest kept, which no checkpoint
/// stands in for.
fn report_gap(table: &Table, first: u64, report: &mut VerifyReport) {
    report.fail(
        commit_path(table, first.saturating_sub(1)),
        "missing: the log starts after it, and no checkpoint stands in for it",
    );
}

/// Fails every gap between the `versions` present.
fn check_dense(table: &Table, versions: &[u64], report: &mut VerifyReport) {
    for pair in versions.windows(2) {
        if let [a, b] = pair
            && b - a > 1
        {
            report.fail(
                commit_path(table, a + 1),
                format!("missing: versions {a} and {b} are there, not the ones between"),
            );
        }
    }
}

/// The folder a commit's `commitInfo` names (`None`: none, or no
/// `commitInfo`), read from the commit file of `version`.
fn part_of(table: &Table, version: u64) -> Result<Option<String>, String> {
    let actions = table
        .read_commit(version)
        .map_err(|e| e.to_string())?
        .map(|(_, actions)| actions)
        .unwrap_or_default();
    Ok(actions.into_iter().find_map(|a| match a {
        Action::CommitInfo(info) => info.part,
        _ => None,
    }))
}

/// Of `versions`, those whose commit names the folder `part`, as `known`
/// says or as read.
fn of_part(
    table: &Table,
    versions: Vec<u64>,
    part: &str,
    known: Option<&BTreeMap<u64, Option<String>>>,
    report: &mut VerifyReport,
) -> Vec<u64> {
    let named = |v: u64| match known.and_then(|k| k.get(&v)) {
        Some(named) => Ok(named.clone()),
        None => part_of(table, v),
    };
    versions
        .into_iter()
        .filter(|v| match named(*v) {
            Ok(named) => named.as_deref() == Some(part),
            Err(reason) => {
                report.fail(commit_path(table, *v), reason);
                false
            }
        })
        .collect()
}

/// The checks of the prefix `storage`'s shared tables as a whole, once per
/// prefix of `shards` shards (each shard's own commits and files are
/// checked with the shard): versions dense from the oldest kept, and every
/// commit naming the folder of one of the shards. Returns the folder each
/// commit names, for the shards' checks.
pub(super) fn check_shared_tables(
    storage: &Storage,
    shards: u32,
    report: &mut VerifyReport,
) -> Parts {
    let mut found = Parts::new();
    let parts: HashSet<String> = (0..shards)
        .map(|index| {
            crate::shard::Shard {
                index,
                count: shards,
            }
            .table_part()
        })
        .collect();
    for kind in TableKind::ALL {
        let table = Table::new(storage.clone(), kind);
        let versions = match table.versions() {
            Ok(versions) => versions,
            Err(e) => {
                report.fail(format!("{}/_delta_log", kind.root()), e.to_string());
                continue;
            }
        };
        let from = match base_checkpoint(&table, &versions) {
            Ok(Start::Zero) => 0,
            Ok(Start::Checkpoint(base)) => base + 1,
            Ok(Start::Gap(first)) => {
                report_gap(&table, first, report);
                0
            }
            Err(reason) => {
                report.fail(format!("{}/_delta_log", kind.root()), reason);
                continue;
            }
        };
        check_dense(&table, &versions, report);
        let named = found.entry(kind).or_default();
        for version in versions.into_iter().filter(|v| *v >= from) {
            let part = part_of(&table, version);
            if let Ok(part) = &part {
                named.insert(version, part.clone());
            }
            match part {
                Ok(Some(part)) if parts.contains(&part) => {}
                Ok(named) => report.fail(
                    commit_path(&table, version),
                    format!(
                        "names no shard of the {shards} ({}): no shard accounts for this commit",
                        named.as_deref().unwrap_or("no shard at all")
                    ),
                ),
                Err(reason) => report.fail(commit_path(&table, version), reason),
            }
        }
    }
    found
}

/// What differs between the table's files and the manifests'.
fn describe_difference(live: &Files, expected: &Files) -> String {
    let extra: Vec<&str> = live
        .keys()
        .filter(|p| !expected.contains_key(*p))
        .map(String::as_str)
        .collect();
    let missing: Vec<&str> = expected
        .keys()
        .filter(|p| !live.contains_key(*p))
        .map(String::as_str)
        .collect();
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!(
            "holds {} that no manifest lists ({})",
            extra.len(),
            sample(&extra)
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "lacks {} that the manifests list ({})",
            missing.len(),
            sample(&missing)
        ));
    }
    if parts.is_empty() {
        parts.push("a file's size differs from the manifests'".to_owned());
    }
    format!("the table {}", parts.join(" and "))
}

/// The first few of `paths`.
fn sample(paths: &[&str]) -> String {
    let mut text = paths.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    if paths.len() > 3 {
        text.push_str(", ...");
    }
    text
}

/// The key of the commit file of `version`.
fn commit_path(table: &Table, version: u64) -> String {
    table.commit_key(version)
}
