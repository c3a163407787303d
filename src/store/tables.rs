//! The run's side of the Delta tables (`parquet/messages`, `parquet/sends`):
//! what a run's manifest means as Delta actions, the one commit per table
//! a run makes when it seals, the conversion of an output written before
//! the tables existed, and the undoing of a killed run's commit.
//!
//! The log itself (commit files, checkpoints, snapshots) is
//! [`crate::delta`]'s; this module only decides what goes into it:
//!
//! - [`project`] turns a run's listed files and compaction into one
//!   [`Change`] per table. It is the one place that does: the seal commits
//!   it, the conversion replays it, and `verify` checks the log against
//!   it;
//! - [`commit_run`] (in the seal, after the Parquet files are listed in
//!   the checkpoint and before the manifest) commits each table's change,
//!   converting a table that has no log yet, and returns what the manifest
//!   pins: version and SHA-256 per table;
//! - [`revert_killed`] (a repair step of `recover.rs`) finds the commits of
//!   runs killed between their commit and their chain entry, at the end of
//!   the log, and writes one commit that restores the snapshot the chain
//!   accounts for, named after the repairing run.
//!
//! A shard of a prefix with one table per prefix ([`crate::shard`]) commits
//! its changes [`in_part`]: its paths in its folder of the table, its
//! `commitInfo` naming the folder; its repair passes over the other
//! shards' commits and restores only its own folder.

use std::collections::{BTreeMap, HashSet};

use crate::audit::{self, Compaction, DeltaCommit, DeltaEntry, DeltaRevert, Manifest};
use crate::delta::{
    Action, Add, Change, CommitInfo, FileStats, Remove, Snapshot, Table, TableKind,
};
use crate::error::Result;
use crate::sinks::WrittenFile;
use crate::storage::Storage;

/// What a run wrote and swapped, as its manifest lists it.
#[derive(Debug, Clone, Copy)]
pub struct RunFiles<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Its command (`sync`, `send`, `compact`, ...).
    pub command: &'a str,
    /// The files it lists (JSONL segments are skipped).
    pub files: &'a [WrittenFile],
    /// What its compaction removed and added, if any.
    pub compaction: Option<&'a Compaction>,
}

impl<'a> RunFiles<'a> {
    /// The files the sealed `manifest` lists.
    pub fn of(manifest: &'a Manifest) -> RunFiles<'a> {
        RunFiles {
            run_id: &manifest.run_id,
            command: &manifest.command,
            files: &manifest.files,
            compaction: manifest.compaction.as_ref(),
        }
    }
}

/// The Delta changes of `run`, by table, made at `timestamp` (ms since
/// the epoch): an `add` for every Parquet file it lists, a `remove` for
/// every file its compaction removed. A `compact` run only rearranges rows:
/// its compaction's actions have `dataChange: false` (another command that
/// swaps files through the same field, such as an erasure, changes data).
/// A table the run does not touch has no entry.
pub fn project(run: &RunFiles<'_>, timestamp: i64) -> BTreeMap<TableKind, Change> {
    let rearranged = run.command == "compact";
    let swapped: HashSet<&str> = run
        .compaction
        .iter()
        .flat_map(|c| &c.added)
        .map(|f| f.path.as_str())
        .collect();
    let mut changes: BTreeMap<TableKind, Change> = BTreeMap::new();
    let info = CommitInfo {
        run_id: run.run_id.to_owned(),
        operation: operation(run.command).to_owned(),
        timestamp,
        part: None,
    };
    for file in run.files.iter().filter(|f| f.offset.is_none()) {
        let Some((kind, path, date)) = locate(&file.path) else {
            continue;
        };
        let data_change = !(rearranged && swapped.contains(file.path.as_str()));
        change_of(&mut changes, kind, &info).adds.push(Add {
            path,
            date,
            size: file.bytes,
            modification_time: timestamp,
            data_change,
            stats: Some(stats_of(file).into()),
        });
    }
    for removed in run.compaction.iter().flat_map(|c| &c.removed) {
        let Some((kind, path, date)) = locate(&removed.file.path) else {
            continue;
        };
        change_of(&mut changes, kind, &info).removes.push(Remove {
            path,
            date,
            size: removed.file.bytes,
            deletion_timestamp: timestamp,
            data_change: !rearranged,
        });
    }
    changes
}

/// The change of table `kind` in `changes`, begun with `info` if new.
fn change_of<'a>(
    changes: &'a mut BTreeMap<TableKind, Change>,
    kind: TableKind,
    info: &CommitInfo,
) -> &'a mut Change {
    changes.entry(kind).or_insert_with(|| Change {
        info: info.clone(),
        adds: Vec::new(),
        removes: Vec::new(),
    })
}

/// The `commitInfo.operation` of a run of `command`.
fn operation(command: &str) -> &'static str {
    match command {
        "compact" => "OPTIMIZE",
        "forget" => "DELETE",
        _ => "WRITE",
    }
}

/// `change` as the output root whose files are in the folder `part` of the
/// table makes it (a shard of a prefix with one table per prefix, see
/// [`crate::shard`]): its paths in that folder, its `commitInfo` naming it.
/// As it is when `part` is `None`.
pub fn in_part(mut change: Change, part: Option<&str>) -> Change {
    let Some(part) = part else {
        return change;
    };
    for add in &mut change.adds {
        add.path = format!("{part}/{}", add.path);
    }
    for remove in &mut change.removes {
        remove.path = format!("{part}/{}", remove.path);
    }
    change.info.part = Some(part.to_owned());
    change
}

/// Whether the table file `path` is in the folder `part` (any file is,
/// when there is no folder).
pub fn is_in_part(path: &str, part: Option<&str>) -> bool {
    part.is_none_or(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The table of a Parquet file's key (`parquet/<table>/date=D/<name>`),
/// its path relative to the table root, and its partition date.
pub fn locate(key: &str) -> Option<(TableKind, String, String)> {
    TableKind::ALL.into_iter().find_map(|kind| {
        let path = key.strip_prefix(kind.root())?.strip_prefix('/')?;
        let (dir, _) = path.split_once('/')?;
        let date = dir.strip_prefix("date=")?;
        Some((kind, path.to_owned(), date.to_owned()))
    })
}

/// A file's statistics for its `add`: those gathered as it was written,
/// or, for a file a killed run committed and this run took over, its row
/// count alone.
fn stats_of(file: &WrittenFile) -> FileStats {
    file.stats.clone().unwrap_or_else(|| FileStats {
        num_records: file.rows,
        columns: BTreeMap::new(),
    })
}

/// Commits `run`'s change to each table it touches, one commit per table,
/// and returns what its manifest pins, merged with the commits `reverted`
/// when it opened. With `converting` (an output with sealed runs that no run
/// sealed with the tables yet), a table with no log is converted in the
/// same commit: it also adds every file the sealed manifests list, so that
/// its first version holds everything the chain does. `timestamp` (ms
/// since the epoch, on the run's clock) dates the commits.
pub(super) fn commit_run(
    storage: &Storage,
    timestamp: i64,
    run: &RunFiles<'_>,
    converting: bool,
    reverted: BTreeMap<TableKind, DeltaRevert>,
) -> Result<BTreeMap<String, DeltaEntry>> {
    let mut changes = project(run, timestamp);
    let mut entries: BTreeMap<String, DeltaEntry> = reverted
        .into_iter()
        .map(|(kind, reverted)| {
            let entry = DeltaEntry {
                version: None,
                sha256: None,
                reverted: Some(reverted),
            };
            (kind.name().to_owned(), entry)
        })
        .collect();
    let mut earlier: Option<Vec<WrittenFile>> = None;
    for kind in TableKind::ALL {
        let table = Table::new(storage.clone(), kind);
        let mut change = changes.remove(&kind);
        if converting && table.latest_version()?.is_none() {
            let listed = match &mut earlier {
                Some(listed) => listed,
                None => earlier.insert(listed_by_chain(storage.as_ref())?),
            };
            change = convert(kind, listed, change, run, timestamp);
        }
        let Some(change) = change.filter(|c| !c.adds.is_empty() || !c.removes.is_empty()) else {
            continue;
        };
        let change = in_part(change, storage.table_part());
        let committed = table.commit(&change)?;
        let entry = entries.entry(kind.name().to_owned()).or_insert(DeltaEntry {
            version: None,
            sha256: None,
            reverted: None,
        });
        entry.version = Some(committed.version);
        entry.sha256 = Some(committed.sha256);
    }
    Ok(entries)
}

/// Every Parquet file the sealed manifests list now (the chain read
/// whole: once per table, when it is converted).
fn listed_by_chain(storage: &dyn crate::storage::Backend) -> Result<Vec<WrittenFile>> {
    let (chain, _) = audit::read_chain(storage)?;
    audit::listed_parquet(storage, &chain)
}

/// `change` (the run's own, if any) as the first commit of table `kind`:
/// an `add` of every file of the table in `listed` (the sealed runs'),
/// but those the run itself removes, then the run's own adds.
fn convert(
    kind: TableKind,
    listed: &[WrittenFile],
    change: Option<Change>,
    run: &RunFiles<'_>,
    timestamp: i64,
) -> Option<Change> {
    let earlier = RunFiles {
        files: listed,
        compaction: None,
        ..*run
    };
    let Some(mut base) = project(&earlier, timestamp).remove(&kind) else {
        return change;
    };
    base.info.operation = "CONVERT".to_owned();
    if let Some(own) = change {
        let removed: HashSet<&str> = own.removes.iter().map(|r| r.path.as_str()).collect();
        base.adds.retain(|a| !removed.contains(a.path.as_str()));
        base.adds.extend(own.adds);
    }
    Some(base)
}

/// Whether a run is one the repair must undo: killed after it claimed the
/// output and before the chain held it.
pub(super) type Killed<'a> = &'a dyn Fn(&str) -> bool;

/// The repair step for the Delta tables: in each table, the commits at the
/// end of the log whose run is `killed` are undone by one commit, named
/// after `run_id` and dated `timestamp` (ms since the epoch, on the run's
/// clock), that restores the snapshot before them (removes what they
/// added, adds back what they removed). Returns, by table, the commits
/// undone and the restoring one, for this run's manifest.
///
/// A shard that shares the table (`table_part`) considers only its own
/// commits and files: other shards' commits, which may follow or
/// interleave with its killed run's, are passed over and left as they are,
/// and the restore touches only files in its folder, which no other shard
/// writes. Its walk back ends at its own last sealed commit, or at the
/// oldest commit kept when it has none.
pub(super) fn revert_killed(
    storage: &Storage,
    killed: Killed<'_>,
    run_id: &str,
    timestamp: i64,
) -> Result<BTreeMap<TableKind, DeltaRevert>> {
    let mut reverted = BTreeMap::new();
    let part = storage.table_part();
    for kind in TableKind::ALL {
        let table = Table::new(storage.clone(), kind);
        let Some(latest) = table.latest_version()? else {
            continue;
        };
        let commits = killed_commits(&table, latest, killed, part)?;
        let Some(first) = commits.first().map(|c| c.version) else {
            continue;
        };
        let now = table.snapshot(Some(latest))?;
        let before = match first.checked_sub(1) {
            Some(version) => table.snapshot(Some(version))?,
            None => None,
        };
        let info = CommitInfo {
            run_id: run_id.to_owned(),
            operation: "RESTORE".to_owned(),
            timestamp,
            part: part.map(str::to_owned),
        };
        let committed = table.commit(&restore(info, now.as_ref(), before.as_ref(), part))?;
        let restore = DeltaCommit {
            version: committed.version,
            sha256: committed.sha256,
        };
        reverted.insert(kind, DeltaRevert { commits, restore });
    }
    Ok(reverted)
}

/// The commits at the end of `table`'s log, from `latest` back, whose
/// `commitInfo` names a `killed` run, oldest first; of those in the folder
/// `part` only, passing over the others' (see [`revert_killed`]).
fn killed_commits(
    table: &Table,
    latest: u64,
    killed: Killed<'_>,
    part: Option<&str>,
) -> Result<Vec<DeltaCommit>> {
    let mut found = Vec::new();
    let mut version = Some(latest);
    while let Some(v) = version {
        version = v.checked_sub(1);
        let Some((bytes, actions)) = table.read_commit(v)? else {
            break;
        };
        let info = actions.iter().find_map(|a| match a {
            Action::CommitInfo(info) => Some(info),
            _ => None,
        });
        if info.is_some_and(|i| i.part.as_deref() != part) {
            continue;
        }
        if !info.is_some_and(|i| killed(&i.run_id)) {
            break;
        }
        found.push(DeltaCommit {
            version: v,
            sha256: crate::sinks::sha256_hex(&bytes),
        });
    }
    found.reverse();
    Ok(found)
}

/// The change from the snapshot `now` back to `before` (no table when
/// `None`), of the files in the folder `part`: what `now` has beyond it is
/// removed, what it lost is added back with its statistics.
fn restore(
    info: CommitInfo,
    now: Option<&Snapshot>,
    before: Option<&Snapshot>,
    part: Option<&str>,
) -> Change {
    let empty = BTreeMap::new();
    let now_files = now.map_or(&empty, |s| &s.files);
    let before_files = before.map_or(&empty, |s| &s.files);
    let removes = now_files
        .values()
        .filter(|a| is_in_part(&a.path, part) && !before_files.contains_key(&a.path))
        .map(|a| Remove {
            path: a.path.clone(),
            date: a.date.clone(),
            size: a.size,
            deletion_timestamp: info.timestamp,
            data_change: true,
        })
        .collect();
    let adds = before_files
        .values()
        .filter(|a| is_in_part(&a.path, part) && !now_files.contains_key(&a.path))
        .map(|a| Add {
            modification_time: info.timestamp,
            data_change: true,
            ..a.clone()
        })
        .collect();
    Change {
        info,
        adds,
        removes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::RemovedFile;

    fn file(path: &str, rows: u64) -> WrittenFile {
        WrittenFile {
            path: path.into(),
            sha256: "0".repeat(64),
            bytes: rows * 10,
            rows,
            offset: None,
            length: None,
            stats: None,
        }
    }

    #[test]
    fn a_run_projects_to_one_change_per_table_it_touches() {
        let mut segment = file("xquik-dm-handoff.jsonl", 3);
        segment.offset = Some(0);
        let files = [
            segment,
            file("parquet/messages/date=2026-12-01/part-r1-0001.parquet", 2),
            file("parquet/sends/date=2026-12-01/part-r1-0001.parquet", 1),
        ];
        let run = RunFiles {
            run_id: "r1",
            command: "sync",
            files: &files,
            compaction: None,
        };
        let changes = project(&run, 7);
        assert_eq!(changes.len(), 2);
        let messages = &changes[&TableKind::Messages];
        assert_eq!(messages.info.run_id, "r1");
        assert_eq!(messages.info.operation, "WRITE");
        assert_eq!(messages.adds.len(), 1);
        let add = &messages.adds[0];
        assert_eq!(add.path, "date=2026-12-01/part-r1-0001.parquet");
        assert_eq!(add.date, "2026-12-01");
        assert_eq!((add.size, add.data_change), (20, true));
        assert_eq!(add.stats.as_ref().unwrap().parse().unwrap().num_records, 2);
        assert!(messages.removes.is_empty());
    }

    #[test]
    fn a_compaction_removes_and_adds_without_changing_data() {
        let added = file("parquet/messages/date=2026-11-01/part-c-0001.parquet", 4);
        let taken_over = file("parquet/messages/date=2026-12-01/part-k-0001.parquet", 1);
        let compaction = Compaction {
            removed: ["a", "b"]
                .map(|r| RemovedFile {
                    run_id: r.into(),
                    file: file(
                        &format!("parquet/messages/date=2026-11-01/part-{r}-0001.parquet"),
                        2,
                    ),
                })
                .to_vec(),
            added: vec![added.clone()],
        };
        let files = [added, taken_over];
        let run = RunFiles {
            run_id: "c",
            command: "compact",
            files: &files,
            compaction: Some(&compaction),
        };
        let change = &project(&run, 7)[&TableKind::Messages];
        assert_eq!(change.info.operation, "OPTIMIZE");
        assert_eq!(change.removes.len(), 2);
        assert!(change.removes.iter().all(|r| !r.data_change));
        let flags: Vec<(&str, bool)> = change
            .adds
            .iter()
            .map(|a| (a.path.as_str(), a.data_change))
            .collect();
        // A file a killed sync committed, taken over by the compaction, is
        // new data; the merged file is not.
        assert_eq!(
            flags,
            [
                ("date=2026-11-01/part-c-0001.parquet", false),
                ("date=2026-12-01/part-k-0001.parquet", true)
            ]
        );
    }

    /// The first commit of a table in an output written before the tables
    /// adds every file the sealed runs list, but those the converting run
    /// removes, then the run's own.
    #[test]
    fn a_conversion_adds_every_listed_file_in_the_runs_commit() {
        let earlier = [
            file("parquet/messages/date=2026-11-01/part-a-0001.parquet", 2),
            file("parquet/messages/date=2026-11-01/part-b-0001.parquet", 3),
            file("parquet/sends/date=2026-11-01/part-b-0001.parquet", 1),
        ];
        let merged = file("parquet/messages/date=2026-11-01/part-c-0001.parquet", 5);
        let compaction = Compaction {
            removed: earlier[..2]
                .iter()
                .map(|f| RemovedFile {
                    run_id: "a".into(),
                    file: f.clone(),
                })
                .collect(),
            added: vec![merged.clone()],
        };
        let files = [merged];
        let run = RunFiles {
            run_id: "c",
            command: "compact",
            files: &files,
            compaction: Some(&compaction),
        };
        let own = project(&run, 1).remove(&TableKind::Messages);
        let change = convert(TableKind::Messages, &earlier, own, &run, 1).unwrap();
        assert_eq!(change.info.operation, "CONVERT");
        assert_eq!(change.info.run_id, "c");
        let adds: Vec<&str> = change.adds.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(adds, ["date=2026-11-01/part-c-0001.parquet"]);
        assert!(change.removes.is_empty(), "never added, never removed");
        let sends = convert(TableKind::Sends, &earlier, None, &run, 1).unwrap();
        assert_eq!(sends.adds.len(), 1);
        assert!(sends.adds[0].data_change);
        assert!(convert(TableKind::Messages, &[], None, &run, 1).is_none());
        // Nothing to convert: the run's own change as it is.
        let own = project(&run, 1).remove(&TableKind::Messages);
        assert_eq!(convert(TableKind::Messages, &[], own.clone(), &run, 1), own);
    }

    #[test]
    fn only_data_files_of_a_table_are_located() {
        assert!(locate("parquet/messages/_delta_log/00000000000000000000.json").is_none());
        assert!(locate("parquet/other/date=2026-12-01/part-r-0001.parquet").is_none());
        assert_eq!(
            locate("parquet/sends/date=2026-12-01/part-r-0001.parquet"),
            Some((
                TableKind::Sends,
                "date=2026-12-01/part-r-0001.parquet".into(),
                "2026-12-01".into()
            ))
        );
    }
}
