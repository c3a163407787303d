//! Shards of one job sharing the prefix's Delta table, in a folder: a
//! shard killed between its Delta commit and its chain entry, and shards
//! SIGKILLed at random moments while the others commit, are repaired by
//! their reruns in their own folder of the table only; the other shards'
//! commits and files stay as they were; delta-rs, Polars and DuckDB read
//! every row once; `verify` of the prefix exits 0. (Four concurrent shards
//! into a bucket: `bucket.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use xquik_dm::api::{Account, UserRef};
use xquik_dm::delta::{Action, Table, TableKind};
use xquik_dm::mock::MockServer;
use xquik_dm::shard::Shard;
use xquik_dm::storage::local::LocalDir;
use xquik_dm::storage::{Location, Storage};
use xquik_dm::store::{ManifestBody, RunStamp, Store};

use crate::delta::{assert_consistent, kill_after, one_more_row, run_readers, verify_ok};
use crate::{ACCOUNT, jsonl_records, users, world};

/// Shards of the job.
const SHARDS: u32 = 4;

/// `sync --shard K/4` of `people` into the prefix `out`.
fn shard_sync(server: &MockServer, out: &Path, people: &[String], k: u32) -> std::process::Command {
    let mut cmd = crate::protocol::sync(server, out, people);
    cmd.args(["--shard", &format!("{k}/{SHARDS}")]);
    cmd
}

/// Starts the shards `ks` at once.
fn start(server: &MockServer, out: &Path, people: &[String], ks: &[u32]) -> Vec<Child> {
    ks.iter()
        .map(|k| {
            shard_sync(server, out, people, *k)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for `children`, which must all succeed.
fn finish(children: Vec<Child>) {
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The prefix's messages table, read through the library.
fn table(out: &Path) -> Table {
    let prefix: Storage = Arc::new(LocalDir::new(out));
    Table::new(prefix, TableKind::Messages)
}

/// Every commit file of the table: version -> bytes.
fn commits(out: &Path) -> BTreeMap<u64, Vec<u8>> {
    let table = table(out);
    table
        .versions()
        .unwrap()
        .into_iter()
        .map(|v| (v, table.read_commit(v).unwrap().unwrap().0))
        .collect()
}

/// The folder a commit's `commitInfo` names.
fn part(out: &Path, version: u64) -> Option<String> {
    let (_, actions) = table(out).read_commit(version).unwrap().unwrap();
    actions.into_iter().find_map(|a| match a {
        Action::CommitInfo(info) => info.part,
        _ => None,
    })
}

/// The latest snapshot's files in the folders of shards other than `k`.
fn others_files(out: &Path, k: u32) -> BTreeSet<String> {
    let own = format!("shard-{k}/");
    let snapshot = table(out).snapshot(None).unwrap().unwrap();
    snapshot
        .files
        .into_keys()
        .filter(|p| !p.starts_with(&own))
        .collect()
}

/// Every history record of every shard's JSONL, as (user, message) pairs.
fn jsonl_pairs(out: &Path) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = (0..SHARDS)
        .flat_map(|k| jsonl_records(&out.join(format!("shard={k}"))))
        .filter(|r| r["record_type"] == "history")
        .map(|r| {
            (
                r["conversation_user_id"].as_str().unwrap().to_owned(),
                r["message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

/// What delta-rs and Polars read of the prefix's one messages table:
/// (user, message) pairs, sorted, each reader's.
fn table_pairs(out: &Path) -> Value {
    let script = r#"
import json, sys
import polars as pl
from deltalake import DeltaTable
path = sys.argv[1] + "/parquet/messages"
t = DeltaTable(path).to_pyarrow_table()
rs = sorted(zip(t.column("conversation_user_id").to_pylist(), t.column("message_id").to_pylist()))
df = pl.read_delta(path)
pol = sorted(zip(df["conversation_user_id"].to_list(), df["message_id"].to_list()))
print(json.dumps({"delta_rs": rs, "polars": pol, "columns": sorted(df.columns)}))
"#;
    serde_json::from_str(&run_readers(script, &[out])).unwrap()
}

/// The readers read every row of every shard exactly once, and nothing
/// else; the log's versions are dense and the prefix verifies.
fn assert_one_table(out: &Path) {
    let expected = jsonl_pairs(out);
    let unique: BTreeSet<_> = expected.iter().collect();
    assert_eq!(unique.len(), expected.len(), "a row in two shards");
    let read = table_pairs(out);
    for reader in ["delta_rs", "polars"] {
        let pairs: Vec<(String, String)> = serde_json::from_value(read[reader].clone()).unwrap();
        assert_eq!(pairs, expected, "{reader}");
    }
    let columns: Vec<String> = serde_json::from_value(read["columns"].clone()).unwrap();
    assert!(
        !columns.iter().any(|c| c.starts_with("shard")),
        "{columns:?}"
    );
    let versions = table(out).versions().unwrap();
    let dense: Vec<u64> = (0..versions.len() as u64).collect();
    assert_eq!(versions, dense, "versions dense");
    for k in 0..SHARDS {
        let own_root = out.join(format!("shard={k}/parquet/messages"));
        assert!(!own_root.exists(), "a table of shard {k}'s own");
    }
    verify_ok(out);
}

/// DuckDB's `delta_scan` (the Delta kernel) reads the shared table: every
/// row of every shard once.
fn assert_duckdb_reads_every_row_once(out: &Path) {
    let script = r#"
import sys, json, duckdb
table, extensions = sys.argv[1], sys.argv[2]
con = duckdb.connect(config={"threads": 1})
con.execute(f"SET extension_directory = '{extensions}'")
con.execute("LOAD delta")
rows = con.execute("SELECT count(*), count(DISTINCT (conversation_user_id, message_id)) FROM delta_scan(?)", [table]).fetchone()
print(json.dumps(rows))
"#;
    let (python, extensions) = crate::delta_log::duckdb_with_delta();
    let seen = crate::run_python(
        python,
        script,
        &[&out.join("parquet/messages"), &extensions],
    );
    let seen: (usize, usize) = serde_json::from_str(seen.trim()).unwrap();
    let expected = jsonl_pairs(out).len();
    assert_eq!(seen, (expected, expected));
}

/// The users of the job, by the shard they belong to.
fn by_shard(people: &[String]) -> BTreeMap<u32, Vec<String>> {
    let account = Account::parse(ACCOUNT).unwrap();
    let mut shards: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for user in people {
        let k = Shard::of(&account, &UserRef::Id(user.clone()), SHARDS);
        shards.entry(k).or_default().push(user.clone());
    }
    assert_eq!(shards.len(), SHARDS as usize, "a shard with no users");
    shards
}

/// Shard 1 is killed after its Delta commit and before its chain entry
/// (through the library); the other shards commit after it; shard 1 is
/// then SIGKILLed at random moments while the others run, and rerun. Its
/// reruns revert only its own commits: the others' commit files and their
/// files in the latest snapshot stay as they were; every row is read once.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_shard_is_repaired_in_its_own_folder_of_the_shared_table() {
    let sizes: Vec<u64> = (0..12).map(|i| 60 + i * 17).collect();
    let server = Arc::new(MockServer::start(world(&sizes, 20)).await.unwrap());
    let people = users(sizes.len());
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        let groups = by_shard(&people);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let started = Instant::now();
        finish(start(&s, out, &people, &[0, 1, 2, 3]));
        let full = started.elapsed().as_millis().max(50) as u64;
        assert_one_table(out);

        let orphan = kill_shard_1_at_its_chain_entry(out);
        // The other shards commit after it.
        for k in [0, 2, 3] {
            s.append_messages(ACCOUNT, &groups[&k][0], 30);
        }
        finish(start(&s, out, &people, &[0, 2, 3]));
        let after = table(out).latest_version().unwrap().unwrap();
        assert_eq!(after, orphan + 3, "the other shards' commits follow it");
        assert_consistent(out);
        verify_ok(out);

        let before = commits(out);
        let others = others_files(out, 1);
        let mut rng = fastrand::Rng::with_seed(15);
        let mut interrupted = 0;
        for round in 0..4 {
            s.append_messages(ACCOUNT, &groups[&1][round % groups[&1].len()], 200);
            let running = start(&s, out, &people, &[0, 2, 3]);
            interrupted += usize::from(kill_after(shard_sync(&s, out, &people, 1), &mut rng, full));
            finish(running);
            assert_consistent(out);
            verify_ok(out);
        }
        assert!(interrupted > 0, "no run of shard 1 was interrupted");
        let (code, _, stderr) = crate::cli::run(&mut shard_sync(&s, out, &people, 1));
        assert_eq!(code, 0, "{stderr}");

        assert_only_shard_1_reverted(out, orphan, &before, &others);
        assert_one_table(out);
        assert_duckdb_reads_every_row_once(out);
        // Each shard's folder verifies on its own too (its part of the
        // shared table).
        for k in 0..SHARDS {
            verify_ok(&out.join(format!("shard={k}")));
        }
        compact_a_shard(out);
        extra_commits_fail_verify(out);
    })
    .await
    .unwrap();
}

/// Runs shard 1 through the library until its Delta commit, and kills it
/// before its chain entry; returns the version of its orphan commit.
fn kill_shard_1_at_its_chain_entry(out: &Path) -> u64 {
    let shard1 = xquik_dm::shard::open(&Location::Dir(out.join("shard=1"))).unwrap();
    assert_eq!(shard1.table_part(), Some("shard-1"));
    let killing: Storage = Arc::new(crate::signing::KillAtChain(shard1));
    // Named after its start, as the binary names its runs: after the
    // shard's last sealed run.
    let stamp = RunStamp::now();
    let mut store = Store::open(&killing, &stamp).unwrap();
    one_more_row(&mut store);
    assert!(store.seal(ManifestBody::empty("sync")).is_err());
    let orphan = table(out).latest_version().unwrap().unwrap();
    assert_eq!(part(out, orphan).as_deref(), Some("shard-1"));
    orphan
}

/// Shard 1's reruns reverted its `orphan` commit (the first rerun that
/// sealed, first; with it the restoring commits of reruns killed before
/// it), and only shard 1's commits; every commit file of `before` is
/// unchanged, and every file of the other shards (`others`) still in the
/// table.
fn assert_only_shard_1_reverted(
    out: &Path,
    orphan: u64,
    before: &BTreeMap<u64, Vec<u8>>,
    others: &BTreeSet<String>,
) {
    let manifests = crate::chain_manifests(&out.join("shard=1"));
    let reverting: Vec<&Value> = manifests
        .iter()
        .map(|m| &m["delta"]["messages"]["reverted"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(reverting[0]["commits"][0]["version"], orphan);
    for reverted in &reverting {
        for commit in reverted["commits"].as_array().unwrap() {
            let v = commit["version"].as_u64().unwrap();
            assert_eq!(part(out, v).as_deref(), Some("shard-1"), "reverted {v}");
        }
    }
    let now = commits(out);
    for (version, bytes) in before {
        assert_eq!(now.get(version), Some(bytes), "commit {version} changed");
    }
    let mut kept = others_files(out, 1);
    kept.retain(|p| others.contains(p));
    assert_eq!(&kept, others, "another shard's file left the table");
}

/// `compact` of shard 1's folder merges its files of a closed date in its
/// folder of the table, one commit naming it; the other shards' files stay.
fn compact_a_shard(out: &Path) {
    let shard1 = xquik_dm::shard::open(&Location::Dir(out.join("shard=1"))).unwrap();
    crate::compact::past_runs_into(&shard1, 1, 3, 20);
    let others = others_files(out, 1);
    let before = table(out).latest_version().unwrap().unwrap();
    let (code, stdout, stderr) = crate::cli::run(
        crate::cli::bin()
            .args(["compact", "--json", "--out"])
            .arg(out.join("shard=1")),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let after = table(out).latest_version().unwrap().unwrap();
    assert_eq!(after, before + 1, "one commit: {stdout}");
    let (_, actions) = table(out).read_commit(after).unwrap().unwrap();
    let mut removed = 0;
    for action in actions {
        match action {
            Action::CommitInfo(info) => {
                assert_eq!(
                    (info.operation.as_str(), info.part.as_deref()),
                    ("OPTIMIZE", Some("shard-1"))
                );
            }
            Action::Add(a) => assert!(a.path.starts_with("shard-1/date=") && !a.data_change),
            Action::Remove(r) => {
                assert!(r.path.starts_with("shard-1/date="));
                removed += 1;
            }
            _ => {}
        }
    }
    assert!(removed >= 2, "nothing merged: {stdout}");
    assert_eq!(others_files(out, 1), others);
    assert_one_table(out);
}

/// A commit no shard's sealed run made fails `verify` of the prefix, named:
/// one naming no shard (the table's check), one naming a shard that does
/// not account for it (that shard's check).
fn extra_commits_fail_verify(out: &Path) {
    let log = out.join("parquet/messages/_delta_log");
    let next = table(out).latest_version().unwrap().unwrap() + 1;
    for (part, reason) in [
        (None, "names no shard of the 4"),
        (Some("shard-2"), "no manifest accounts for this commit"),
    ] {
        let mut info = serde_json::json!({"timestamp": 1, "operation": "WRITE", "runId": "x"});
        if let Some(part) = part {
            info["part"] = part.into();
        }
        let name = format!("{next:020}.json");
        let line = serde_json::json!({ "commitInfo": info });
        std::fs::write(log.join(&name), format!("{line}\n")).unwrap();
        let (code, report) = crate::delta::verify(out);
        assert_eq!(code, 5, "{report}");
        let named = format!("parquet/messages/_delta_log/{name}: {reason}");
        assert!(report.contains(&named), "{named} not in:\n{report}");
        std::fs::remove_file(log.join(&name)).unwrap();
    }
    verify_ok(out);
}

/// A prefix registered before the shared tables (a `shards.json` without
/// `"tables"`) keeps a table per shard, in each shard's root, where its
/// sealed manifests list its files; it still verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_registered_before_keeps_a_table_per_shard() {
    let sizes: Vec<u64> = (0..8).map(|i| 30 + i * 7).collect();
    let server = Arc::new(MockServer::start(world(&sizes, 20)).await.unwrap());
    let people = users(sizes.len());
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(out.join("shards.json"), r#"{"shards":4}"#).unwrap();
        finish(start(&server, out, &people, &[0, 1, 2, 3]));
        assert!(!out.join("parquet").exists());
        for k in 0..SHARDS {
            let own = out.join(format!("shard={k}/parquet/messages"));
            assert!(own.join("_delta_log").is_dir(), "shard {k}");
        }
        verify_ok(out);
        let registry = std::fs::read_to_string(out.join("shards.json")).unwrap();
        assert_eq!(registry, r#"{"shards":4}"#);
    })
    .await
    .unwrap();
}

/// A shard whose audit trail and checkpoint are gone is rebuilt from its
/// own folder: its data files move aside into its own root, the shared
/// log stays, and its next run reverts its commits the chain no longer
/// holds; the other shards' files stay in the table and the prefix
/// verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_rebuilt_without_its_audit_trail_leaves_the_others_alone() {
    let sizes: Vec<u64> = (0..8).map(|i| 30 + i * 7).collect();
    let server = Arc::new(MockServer::start(world(&sizes, 20)).await.unwrap());
    let people = users(sizes.len());
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        finish(start(&server, out, &people, &[0, 1, 2, 3]));
        let others = others_files(out, 2);
        let shard2 = out.join("shard=2");
        std::fs::remove_dir_all(shard2.join("audit")).unwrap();
        std::fs::remove_file(shard2.join("state/checkpoint.json")).unwrap();
        std::fs::remove_file(shard2.join("SHA256SUMS")).ok();
        let (code, stdout, stderr) =
            crate::cli::run(crate::cli::bin().args(["rebuild", "--out"]).arg(&shard2));
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(
            !files_in(&out.join("parquet/messages/shard-2")),
            "moved aside"
        );
        assert!(shard2.join("recovered").is_dir());
        assert!(
            out.join("parquet/messages/_delta_log").is_dir(),
            "the log stays"
        );
        let (code, _, stderr) = crate::cli::run(&mut shard_sync(&server, out, &people, 2));
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(others_files(out, 2), others);
        assert_one_table(out);
    })
    .await
    .unwrap();
}

/// Whether a folder holds any file, at any depth.
fn files_in(dir: &Path) -> bool {
    !crate::files_under(dir, "").is_empty()
}

/// `forget --out <prefix>` erases a person from every shard: one erasure
/// run in each shard's chain, the shared table rewritten in the folder
/// that held them, no file of the prefix holding an erased text, the
/// readers reading exactly the rest, the prefix verifying; later syncs of
/// every shard skip the forgotten conversation.
#[tokio::test(flavor = "multi_thread")]
async fn forget_on_a_sharded_prefix_erases_in_every_shard() {
    let sizes: Vec<u64> = (0..8).map(|i| 30 + i * 11).collect();
    let server = Arc::new(MockServer::start(world(&sizes, 20)).await.unwrap());
    let people = users(sizes.len());
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        finish(start(&s, out, &people, &[0, 1, 2, 3]));
        let victim = by_shard(&people)[&2][0].clone();
        let records: Vec<Value> = (0..SHARDS)
            .flat_map(|k| jsonl_records(&out.join(format!("shard={k}"))))
            .collect();
        let (erased, kept): (Vec<Value>, Vec<Value>) = records
            .into_iter()
            .partition(|r| r["conversation_user_id"] == victim.as_str());
        let (gone, kept_texts) = crate::erasure::texts_to_search(&erased, &kept);
        assert!(gone.len() >= 10, "{}", gone.len());

        let (code, stdout, stderr) = crate::cli::run(crate::cli::bin().args([
            "forget",
            "--json",
            "--out",
            out.to_str().unwrap(),
            "--user",
            &victim,
            "--reason",
            "erasure request 9",
        ]));
        assert_eq!(code, 0, "{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        let shards = report["shards"].as_array().unwrap();
        assert_eq!(shards.len(), SHARDS as usize);
        let total: u64 = shards
            .iter()
            .map(|r| r["erasure"]["erased"].as_u64().unwrap())
            .sum();
        assert_eq!(total, erased.len() as u64);
        for r in shards {
            assert_eq!(r["erasure"]["forgotten_users"][0], victim.as_str());
        }
        assert!(jsonl_pairs(out).iter().all(|(user, _)| *user != victim));
        crate::erasure::assert_search(&crate::erasure::folder_texts(out), &gone, &kept_texts);
        assert_one_table(out);

        // Later syncs of every shard: the person stays out.
        s.append_messages(ACCOUNT, &victim, 5);
        finish(start(&s, out, &people, &[0, 1, 2, 3]));
        assert!(jsonl_pairs(out).iter().all(|(user, _)| *user != victim));
        crate::erasure::assert_search(&crate::erasure::folder_texts(out), &gone, &kept_texts);
        assert_one_table(out);
    })
    .await
    .unwrap();
}
