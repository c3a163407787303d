//! The Delta tables, read by the real readers: delta-rs (the Python
//! `deltalake` package) and Polars, installed from PyPI into the target
//! folder on first use. They must read exactly what the JSONL holds, one
//! commit per run, time travel by run, skip files on `created_at`, see a
//! compaction as one commit, stay consistent across SIGKILLs, use a
//! checkpoint after many runs; `verify` must catch a changed, a missing and
//! an extra commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use xquik_dm::commands::mock::{SYNTHETIC_ACCOUNT, synthetic_user, synthetic_world};
use xquik_dm::commands::sync;
use xquik_dm::mock::MockServer;
use xquik_dm::storage::Storage;
use xquik_dm::storage::local::LocalDir;
use xquik_dm::store::{ManifestBody, RunStamp, Store};

use crate::cli::{bin, run};
use crate::compact::{one_run, past_runs};
use crate::{
    ACCOUNT, copy_dir, files_under, jsonl_records, python_with, run_python, sync_options, users,
    world,
};

/// The readers the tests start.
const READERS: &[&str] = &["deltalake", "polars", "pyarrow"];

/// Runs a reader's Python `script` with `args`; its stdout. It exits
/// without the interpreter's teardown, which delta-rs's and Polars'
/// threads can abort ("terminate called without an active exception")
/// after the script has done its work.
pub(crate) fn run_readers(script: &str, args: &[&Path]) -> String {
    let script =
        format!("{script}\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_os._exit(0)\n");
    run_python(python_with(READERS), &script, args)
}

/// `verify` of `out`: exit code and output.
pub(crate) fn verify(out: &Path) -> (i32, String) {
    let (code, stdout, stderr) = run(bin().arg("verify").arg(out));
    (code, format!("{stdout}{stderr}"))
}

pub(crate) fn verify_ok(out: &Path) {
    let (code, report) = verify(out);
    assert_eq!(code, 0, "{report}");
}

/// What delta-rs and Polars read of `out`'s messages table, as JSON: the
/// rows (delta-rs and Polars), the column types, the history, the add
/// paths and the row count at every version.
fn read_messages(out: &Path) -> Value {
    let script = r#"
import json, os, sys
import polars as pl, pyarrow
from deltalake import DeltaTable
path = sys.argv[1] + "/parquet/messages"
dt = DeltaTable(path)
table = dt.to_pyarrow_table()
def rows(records):
    out = []
    for r in records:
        r = dict(r)
        if r.get("created_at") is not None:
            r["created_at"] = r["created_at"].isoformat()
        out.append(r)
    return sorted(out, key=lambda r: (r["conversation_user_id"], r["message_id"]))
history = [{"version": h.get("version"), "operation": h.get("operation"), "run": h.get("runId")}
           for h in dt.history()]
adds = pyarrow.table(dt.get_add_actions(flatten=True)).to_pylist()
print(json.dumps({
    "version": dt.version(),
    "types": {f.name: str(f.type) for f in table.schema},
    "rows": rows(table.to_pylist()),
    "polars": rows(pl.read_delta(path).to_dicts()),
    "history": history,
    "paths": sorted(a["path"] for a in adds),
    "records": {a["path"]: a["num_records"] for a in adds},
    "counts": {str(v): DeltaTable(path, version=v).to_pyarrow_table().num_rows
               for v in range(dt.version() + 1)},
}, default=str))
"#;
    let out = run_readers(script, &[out]);
    serde_json::from_str(&out).unwrap()
}

/// The history records of the JSONL, keyed like [`read_messages`]'s rows.
fn jsonl_history(out: &Path) -> Vec<Value> {
    let mut rows: Vec<Value> = jsonl_records(out)
        .into_iter()
        .filter(|r| r["record_type"] == "history")
        .collect();
    rows.sort_by(|a, b| {
        let key = |r: &Value| {
            (
                r["conversation_user_id"].as_str().unwrap().to_owned(),
                r["message_id"].as_str().unwrap().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
    rows
}

/// Asserts that a row as a reader read it is the JSONL record, column for
/// column, plus the partition `date`.
fn assert_row_is_record(row: &Value, record: &Value) {
    for column in [
        "record_type",
        "message_id",
        "conversation_user_id",
        "account",
        "sender_id",
        "receiver_id",
        "message_text",
    ] {
        assert_eq!(
            row[column], record[column],
            "{column} of {}",
            record["message_id"]
        );
    }
    assert_eq!(
        row["media_url"].as_str(),
        record["media_url"].as_str(),
        "media_url of {}",
        record["message_id"]
    );
    let time = |v: &Value| {
        v.as_str()
            .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
    };
    assert_eq!(time(&row["created_at"]), time(&record["created_at"]));
    let date = row["date"].as_str().unwrap();
    assert!(chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_rs_and_polars_read_every_run_exactly_as_the_jsonl_holds_it() {
    let server = MockServer::start(world(&[0, 3, 40, 120], 25))
        .await
        .unwrap();
    let people = users(4);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut cumulative = Vec::new();
    for more in [0, 7, 30] {
        if more > 0 {
            server.append_messages(ACCOUNT, &people[1], more);
            server.append_messages(ACCOUNT, &people[3], more);
        }
        let report = sync::run(sync_options(&server, &out, &people))
            .await
            .unwrap();
        assert_eq!(report.exit_code(), 0);
        cumulative.push(jsonl_history(&out).len() as u64);
    }
    let read = read_messages(&out);
    let records = jsonl_history(&out);
    for rows in [&read["rows"], &read["polars"]] {
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), records.len());
        for (row, record) in rows.iter().zip(&records) {
            assert_row_is_record(row, record);
        }
    }
    let types = &read["types"];
    assert_eq!(types["message_id"], "string");
    assert_eq!(types["created_at"], "timestamp[us, tz=UTC]");
    assert_eq!(types["date"], "string");

    // One commit per run, naming it; time travel to a run's version gives
    // the rows up to that run.
    let manifests = crate::chain_manifests(&out);
    let runs: Vec<&str> = manifests
        .iter()
        .map(|m| m["run_id"].as_str().unwrap())
        .collect();
    let history = read["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    let mut committed: Vec<&str> = history.iter().map(|h| h["run"].as_str().unwrap()).collect();
    committed.reverse();
    assert_eq!(committed, runs);
    for (m, rows) in manifests.iter().zip(&cumulative) {
        let version = m["delta"]["messages"]["version"].as_u64().unwrap();
        assert_eq!(
            read["counts"][version.to_string()],
            *rows,
            "version {version}"
        );
    }
    // The add paths are the files the manifests list, with their rows.
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    for m in &manifests {
        for f in m["files"].as_array().unwrap() {
            if let Some(path) = f["path"]
                .as_str()
                .unwrap()
                .strip_prefix("parquet/messages/")
            {
                listed.insert(path.to_owned(), f["rows"].as_u64().unwrap());
            }
        }
    }
    let paths: Vec<&str> = read["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(paths, listed.keys().map(String::as_str).collect::<Vec<_>>());
    for (path, rows) in &listed {
        assert_eq!(read["records"][path], *rows, "numRecords of {path}");
    }
    verify_ok(&out);
    // `report` shows each table's version.
    let (code, stdout, stderr) = run(bin().arg("report").arg(&out).arg("--json"));
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["tables"]["messages"], read["version"], "{stdout}");
    let (_, text, _) = run(bin().arg("report").arg(&out));
    let version = read["version"].as_u64().unwrap();
    assert!(
        text.contains(&format!("messages at version {version}")),
        "{text}"
    );
}

/// `runs` sealed runs of `rows` rows each into `out` through the library,
/// each on its own date, with `created_at` rising from run to run.
fn runs_through_the_library(out: &Path, runs: u32, rows: u64) {
    let storage: Storage = Arc::new(LocalDir::new(out));
    let mut n = 0;
    for run in 0..runs {
        let stamp = RunStamp {
            run_id: format!("20261101T{:06}Z-{run:016x}", run % 240_000),
            date: "2026-11-01".into(),
            started_at: "2026-11-01T00:00:00.000Z".into(),
        };
        n = one_run(Store::open(&storage, &stamp).unwrap(), n, rows, false);
    }
}

#[test]
fn a_filter_on_created_at_skips_files_by_their_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    runs_through_the_library(out, 8, 50);
    let script = r#"
import json, sys
import pyarrow, pyarrow.dataset as ds, pyarrow.compute as pc
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1] + "/parquet/messages")
adds = pyarrow.table(dt.get_add_actions(flatten=True)).to_pylist()
cut = sorted(a["max.created_at"] for a in adds)[1]
dataset = dt.to_pyarrow_dataset()
everything = len(list(dataset.get_fragments()))
cut = pyarrow.scalar(cut, type=pyarrow.timestamp("us", tz="UTC"))
expr = ds.field("created_at") > cut
matching = len(list(dataset.get_fragments(filter=expr)))
rows = dataset.to_table(filter=expr).num_rows
table = dataset.to_table()
rows_all = table.filter(pc.greater(table["created_at"], cut)).num_rows
print(json.dumps({"files": everything, "read": matching, "rows": rows, "expected": rows_all,
                  "stats": sorted(k for k, v in adds[0].items()
                                 if k.startswith(("min.", "max.", "null_count.")) and v is not None)}))
"#;
    let out: Value = serde_json::from_str(&run_readers(script, &[out])).unwrap();
    assert_eq!(out["files"], 8);
    assert!(
        out["read"].as_u64().unwrap() <= 6,
        "no file was skipped: {out}"
    );
    assert_eq!(out["rows"], out["expected"]);
    // Statistics for the ID and time columns, never the body (delta-rs
    // names every column; those without statistics are null).
    let stats: Vec<&str> = out["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for column in ["created_at", "message_id", "conversation_user_id"] {
        assert!(
            stats.contains(&format!("min.{column}").as_str()),
            "{stats:?}"
        );
    }
    assert!(
        stats.iter().all(|s| !s.contains("message_text")),
        "{stats:?}"
    );
}

/// Every row of both tables as delta-rs reads the latest snapshot (or
/// version `version`), sorted, with its count: what must not change.
fn delta_rows(out: &Path) -> String {
    let script = r#"
import hashlib, sys
from deltalake import DeltaTable
out = []
for table in ["messages", "sends"]:
    if not DeltaTable.is_deltatable(f"{sys.argv[1]}/parquet/{table}"):
        out.append(f"{table}: no table")
        continue
    rows = sorted(map(repr, DeltaTable(f"{sys.argv[1]}/parquet/{table}").to_pyarrow_table().drop_columns(["date"]).to_pylist()))
    out.append(f"{table}: {len(rows)} rows, {len(set(rows))} distinct, {hashlib.sha256(repr(rows).encode()).hexdigest()}")
print("\n".join(out))
"#;
    run_readers(script, &[out])
}

/// The last commit of `out`'s messages table: its operation and actions.
fn last_commit(out: &Path) -> (u64, Vec<Value>) {
    let log = out.join("parquet/messages/_delta_log");
    let last = files_under(out, "parquet/messages/_delta_log")
        .into_iter()
        .filter(|p| p.ends_with(".json"))
        .max()
        .unwrap();
    let name = Path::new(&last).file_name().unwrap().to_str().unwrap();
    let version: u64 = name.trim_end_matches(".json").parse().unwrap();
    let text = std::fs::read_to_string(log.join(name)).unwrap();
    (
        version,
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

#[test]
fn a_compaction_is_one_commit_and_the_table_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    past_runs(out, 3, 4, 40);
    let before = delta_rows(out);
    let (version, _) = last_commit(out);
    let (code, _, stderr) = run(bin().args(["compact", "--out"]).arg(out));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(delta_rows(out), before);
    let (after, actions) = last_commit(out);
    assert_eq!(after, version + 1, "one commit");
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(info["operation"], "OPTIMIZE");
    let adds: Vec<&Value> = actions.iter().filter_map(|a| a.get("add")).collect();
    let removes: Vec<&Value> = actions.iter().filter_map(|a| a.get("remove")).collect();
    assert_eq!((adds.len(), removes.len()), (3, 12), "{actions:?}");
    assert!(
        adds.iter()
            .chain(&removes)
            .all(|a| a["dataChange"] == false)
    );
    verify_ok(out);
}

/// Kills `cmd` after a random part of `full` milliseconds; whether it was
/// still running.
pub(crate) fn kill_after(
    mut cmd: std::process::Command,
    rng: &mut fastrand::Rng,
    full: u64,
) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(rng.u64(0..full)));
    let _ = child.kill();
    !child.wait().unwrap().success()
}

/// delta-rs opens the latest snapshot of both tables and reads every file
/// it names (which all exist).
pub(crate) fn assert_consistent(out: &Path) {
    let script = r#"
import sys
from deltalake import DeltaTable
for table in ["messages", "sends"]:
    path = f"{sys.argv[1]}/parquet/{table}"
    if DeltaTable.is_deltatable(path):
        DeltaTable(path).to_pyarrow_table()
print("ok")
"#;
    assert_eq!(run_readers(script, &[out]).trim(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_during_sync_and_compact_leave_consistent_tables_that_reruns_converge() {
    let server = Arc::new(
        MockServer::start(world(&[300, 500, 800], 20))
            .await
            .unwrap(),
    );
    let people = users(3);
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        let mut rng = fastrand::Rng::with_seed(19);
        let mut interrupted = 0;
        // Syncs: killed, then rerun to completion.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let sync = || crate::protocol::sync(&s, out, &people);
        let started = Instant::now();
        let (code, _, stderr) = run(&mut sync());
        assert_eq!(code, 0, "{stderr}");
        let full = started.elapsed().as_millis().max(20) as u64;
        for round in 0..4 {
            s.append_messages(ACCOUNT, &people[round % 3], 400);
            interrupted += usize::from(kill_after(sync(), &mut rng, full));
            assert_consistent(out);
            verify_ok(out);
            let (code, _, stderr) = run(&mut sync());
            assert_eq!(code, 0, "{stderr}");
            assert_consistent(out);
            verify_ok(out);
        }
        let rows = read_messages(out)["rows"].as_array().unwrap().len();
        assert_eq!(rows, jsonl_history(out).len(), "every row once");
        // Compactions: killed, then rerun.
        let template = tempfile::tempdir().unwrap();
        past_runs(template.path(), 3, 8, 200);
        let before = delta_rows(template.path());
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            let mut compact = bin();
            compact.args(["compact", "--out"]).arg(dir.path());
            interrupted += usize::from(kill_after(compact, &mut rng, full.min(400)));
            assert_consistent(dir.path());
            assert_eq!(delta_rows(dir.path()), before);
            verify_ok(dir.path());
            let (code, _, stderr) = run(bin().args(["compact", "--out"]).arg(dir.path()));
            assert_eq!(code, 0, "{stderr}");
            assert_eq!(delta_rows(dir.path()), before);
            verify_ok(dir.path());
        }
        assert!(interrupted > 0, "no run was interrupted");
    })
    .await
    .unwrap();
}

/// A run killed after its Delta commit and before its chain entry: the
/// next run restores the table to what the chain holds, then adds what it
/// takes over, and both commits are pinned in its manifest.
#[test]
fn a_commit_the_chain_does_not_hold_is_reverted_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    runs_through_the_library(out, 2, 30);
    let before = delta_rows(out);
    let killing: Storage = Arc::new(crate::signing::KillAtChain(Arc::new(LocalDir::new(out))));
    let stamp = RunStamp {
        run_id: "20261101T120000Z-00000000000000aa".into(),
        date: "2026-11-01".into(),
        started_at: "2026-11-01T12:00:00.000Z".into(),
    };
    let mut store = Store::open(&killing, &stamp).unwrap();
    one_more_row(&mut store);
    assert!(store.seal(ManifestBody::empty("sync")).is_err());
    let (orphan, actions) = last_commit(out);
    assert!(
        actions
            .iter()
            .any(|a| a["commitInfo"]["runId"] == stamp.run_id.as_str())
    );
    // Until the next run, the table holds the killed run's rows too: a
    // consistent snapshot whose files exist.
    assert_consistent(out);
    let (code, report) = verify(out);
    assert_eq!(
        code, 0,
        "a killed run's commit is noted, not failed: {report}"
    );
    assert!(report.contains("has not sealed"), "{report}");

    runs_through_the_library(out, 1, 0);
    let manifest = crate::chain_manifests(out).pop().unwrap();
    let entry = &manifest["delta"]["messages"];
    assert_eq!(entry["reverted"]["commits"][0]["version"], orphan);
    assert_eq!(entry["reverted"]["restore"]["version"], orphan + 1);
    assert_eq!(entry["version"], orphan + 2, "the rows taken over");
    assert_ne!(
        delta_rows(out),
        before,
        "the killed run's committed row is kept"
    );
    let rows = read_messages(out)["rows"].as_array().unwrap().len();
    assert_eq!(rows, jsonl_history(out).len());
    verify_ok(out);
}

/// Appends one history row to `store` and commits it.
pub(crate) fn one_more_row(store: &mut Store) {
    let row = xquik_dm::records::HistoryRow {
        record_type: xquik_dm::records::RecordType::History,
        message_id: "1999999999999999999".into(),
        conversation_user_id: "1000001".into(),
        account: ACCOUNT.into(),
        sender_id: "1000001".into(),
        receiver_id: "1612345678901234567".into(),
        created_at: Some(1_764_000_000_000_000),
        message_text: Some("late".into()),
        media_url: None,
    };
    store
        .append_history(&xquik_dm::records::HistoryBatch::of(&[row]))
        .unwrap();
    store.commit().unwrap();
}

#[test]
fn after_a_thousand_runs_readers_open_the_table_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    runs_through_the_library(out, 1_000, 1);
    let log = out.join("parquet/messages/_delta_log");
    let last: Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 900);
    // The commits before the checkpoint are not needed: a reader that
    // needed them would fail here.
    let moved = dir.path().with_extension("old");
    std::fs::create_dir_all(&moved).unwrap();
    for v in 0..900u64 {
        let name = format!("{v:020}.json");
        std::fs::rename(log.join(&name), moved.join(&name)).unwrap();
    }
    let script = r#"
import os, sys
from deltalake import DeltaTable
import polars as pl
path = sys.argv[1] + "/parquet/messages"
dt = DeltaTable(path)
print(dt.version(), dt.to_pyarrow_table().num_rows, pl.read_delta(path).height)
"#;
    let read = run_readers(script, &[out]);
    assert_eq!(
        read.split_whitespace().collect::<Vec<_>>(),
        ["999", "1000", "1000"]
    );
    // verify starts from the checkpoint too.
    verify_ok(out);
}

/// Copies of one output, each tampered with in one way.
#[test]
fn a_changed_a_missing_and_an_extra_commit_each_fail_verify() {
    let template = tempfile::tempdir().unwrap();
    runs_through_the_library(template.path(), 3, 10);
    verify_ok(template.path());
    let log = "parquet/messages/_delta_log";
    let commit = |v: u64| format!("{log}/{v:020}.json");
    type Tamper = fn(&Path, &str, &str);
    let cases: [(&str, Tamper, &str); 3] = [
        (
            "changed",
            |out, one, _| {
                let path = out.join(one);
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(&path, text.replacen("\"size\":", "\"size\":1", 1)).unwrap();
            },
            "SHA-256 differs",
        ),
        (
            "missing",
            |out, one, _| std::fs::remove_file(out.join(one)).unwrap(),
            "missing",
        ),
        (
            "extra",
            |out, _, extra| {
                let add = serde_json::json!({"add": {
                "path": "date=2026-11-01/part-x.parquet", "partitionValues": {"date": "2026-11-01"},
                "size": 1, "modificationTime": 0, "dataChange": true}});
                let info = serde_json::json!({"commitInfo": {"timestamp": 0, "operation": "WRITE", "runId": "someone"}});
                std::fs::write(out.join(extra), format!("{add}\n{info}\n")).unwrap();
            },
            "no manifest accounts for this commit",
        ),
    ];
    for (what, tamper, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        tamper(dir.path(), &commit(1), &commit(3));
        let (code, report) = verify(dir.path());
        assert_eq!(code, 5, "{what}: {report}");
        assert!(report.contains(reason), "{what}: {report}");
        assert!(
            report.contains("_delta_log/0000000000000000000"),
            "{what}: {report}"
        );
    }
}

/// The synthetic world `fixtures/pre-delta/` was written against (see its
/// README): 4 conversations of 20 messages, 3 more in conversation `i % 4`
/// before each of its 4 syncs, with the tests' key.
async fn pre_delta_world() -> MockServer {
    let mut config = synthetic_world(4, 20);
    config.api_key = Some(crate::KEY.to_owned());
    let server = MockServer::start(config).await.unwrap();
    for i in 0..4 {
        server.append_messages(SYNTHETIC_ACCOUNT, &synthetic_user(i % 4), 3);
    }
    server
}

/// A sync of the synthetic world's conversations into `out`, sealed.
async fn sync_synthetic(server: &MockServer, out: &Path) {
    let mut options = sync_options(server, out, &[]);
    options.targets = (0..4)
        .map(|i| sync::Target {
            account: xquik_dm::Account::parse(SYNTHETIC_ACCOUNT).unwrap(),
            user: xquik_dm::UserRef::Id(synthetic_user(i)),
        })
        .collect();
    let report = sync::run(options).await.unwrap();
    assert_eq!(report.exit_code(), 0);
}

/// The messages table's data files the sealed manifests list now: every
/// file listed, but those a later compaction removed.
fn listed_messages(manifests: &[Value]) -> Vec<String> {
    let mut listed = std::collections::BTreeSet::new();
    for m in manifests {
        for f in m["files"].as_array().unwrap() {
            listed.insert(f["path"].as_str().unwrap().to_owned());
        }
        for removed in m["compaction"]["removed"].as_array().into_iter().flatten() {
            assert!(
                listed.remove(removed["path"].as_str().unwrap()),
                "{removed}"
            );
        }
    }
    listed
        .into_iter()
        .filter_map(|p| p.strip_prefix("parquet/messages/").map(str::to_owned))
        .collect()
}

/// The paths a commit's actions add.
fn added(actions: &[Value]) -> Vec<String> {
    let mut paths: Vec<String> = actions
        .iter()
        .filter_map(|a| a["add"]["path"].as_str().map(str::to_owned))
        .collect();
    paths.sort();
    paths
}

/// An output written before the tables existed (by commit ba20297, see
/// `fixtures/pre-delta/README.md`: sealed manifests without a `delta`
/// field, a compaction among them, no `_delta_log`) becomes a table on its
/// next run: version 0 adds every file the sealed manifests list (not the
/// compacted-away ones) plus the run's own, the readers read exactly the
/// JSONL, `verify` passes, and the run after that is a normal commit.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_written_before_the_tables_becomes_a_table_on_its_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pre-delta/out"),
        &out,
    );
    let before = crate::chain_manifests(&out);
    assert_eq!(before.len(), 5, "four syncs and a compaction");
    assert!(before.iter().all(|m| m.get("delta").is_none()));
    assert!(before.iter().any(|m| m["command"] == "compact"));
    assert!(!out.join("parquet/messages/_delta_log").exists());
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(out.join("state/checkpoint.json")).unwrap()).unwrap();
    assert!(checkpoint.get("delta_converted").is_none(), "{checkpoint}");
    verify_ok(&out);

    let server = pre_delta_world().await;
    server.append_messages(SYNTHETIC_ACCOUNT, &synthetic_user(1), 5);
    sync_synthetic(&server, &out).await;
    let manifests = crate::chain_manifests(&out);
    let converting = manifests.last().unwrap();
    assert_eq!(converting["delta"]["messages"]["version"], 0);
    let (version, actions) = last_commit(&out);
    assert_eq!(version, 0);
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(info["operation"], "CONVERT");
    assert_eq!(info["runId"], converting["run_id"]);
    assert!(actions.iter().any(|a| a.get("protocol").is_some()));
    assert!(actions.iter().any(|a| a.get("metaData").is_some()));
    assert!(actions.iter().all(|a| a.get("remove").is_none()));
    let old = listed_messages(&before);
    assert_eq!(old.len(), 2, "the compacted day's file and the next day's");
    let all = listed_messages(&manifests);
    assert_eq!(all.len(), 3, "and the converting run's own");
    assert!(old.iter().all(|p| all.contains(p)));
    assert_eq!(added(&actions), all);
    assert_pre_delta_rows_read(&out, 1);
    verify_ok(&out);

    // The next run is a normal commit: its own file, nothing else.
    server.append_messages(SYNTHETIC_ACCOUNT, &synthetic_user(2), 4);
    sync_synthetic(&server, &out).await;
    let manifests = crate::chain_manifests(&out);
    let last = manifests.last().unwrap();
    let (version, actions) = last_commit(&out);
    assert_eq!(version, 1);
    assert_eq!(last["delta"]["messages"]["version"], 1);
    let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
    assert_eq!(info["operation"], "WRITE");
    assert_eq!(info["runId"], last["run_id"]);
    assert!(actions.iter().all(|a| a.get("protocol").is_none()));
    let own: Vec<String> = listed_messages(&manifests[manifests.len() - 1..]);
    assert_eq!(own.len(), 1);
    assert_eq!(added(&actions), own);
    assert_pre_delta_rows_read(&out, 2);
    verify_ok(&out);
}

/// delta-rs and Polars read exactly the JSONL's rows of `out`, whose
/// messages table is at `version`, with one history entry per version.
fn assert_pre_delta_rows_read(out: &Path, commits: u64) {
    let read = read_messages(out);
    assert_eq!(read["version"], commits - 1);
    assert_eq!(read["history"].as_array().unwrap().len() as u64, commits);
    let records = jsonl_history(out);
    assert!(records.len() > 80, "{}", records.len());
    for rows in [&read["rows"], &read["polars"]] {
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), records.len());
        for (row, record) in rows.iter().zip(&records) {
            assert_row_is_record(row, record);
        }
    }
}
