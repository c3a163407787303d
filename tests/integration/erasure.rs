//! Erasure (`forget`): complete (no byte of an erased body left anywhere the
//! tool wrote, in a folder and in a bucket), verifiable (verify passes
//! across it and still catches tampering), sticky (tombstones and
//! forgotten conversations), crash-safe (SIGKILLs at random moments).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use xquik_dm::commands::sync;
use xquik_dm::commands::verify;

use crate::{ACCOUNT, KEY, jsonl_records, sync_options, users, world};

/// The binary, with no API key unless a test sets one.
fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xquik-dm"));
    cmd.env_remove("XQUIK_API_KEY")
        .env_remove("XQUIK_DM_SIGNING_KEY_FILE")
        .stdin(Stdio::null());
    cmd
}

/// `forget --out <out> <args> --reason <reason> --json`; returns the exit
/// status and the report (or stderr).
pub fn forget(out: &str, args: &[&str]) -> (i32, Value, String) {
    let output = bin()
        .args(["forget", "--json", "--out", out])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), report, stderr)
}

/// Every text a file holds, decoded: a Parquet file's string values, a JSON
/// Lines file's string values (unescaped) and its raw bytes, any other
/// file's raw bytes. What a search for a body must look through: a
/// compressed Parquet page or a JSON escape would hide a text from a plain
/// byte search.
pub fn decoded_texts(name: &str, bytes: Vec<u8>) -> String {
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if name.ends_with(".parquet") {
        text.push_str(&parquet_strings(bytes));
        return text;
    }
    for line in bytes.split(|b| *b == b'\n') {
        if let Ok(value) = serde_json::from_slice::<Value>(line) {
            strings_of(&value, &mut text);
        }
    }
    text
}

fn strings_of(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push('\u{1}');
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|v| strings_of(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings_of(v, out)),
        _ => {}
    }
}

/// The record batches of a Parquet file.
fn batches(bytes: Vec<u8>) -> impl Iterator<Item = arrow_array::RecordBatch> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(
        bytes,
    ))
    .unwrap()
    .build()
    .unwrap()
    .map(Result::unwrap)
}

/// A text column of a batch.
fn strings(batch: &arrow_array::RecordBatch, name: &str) -> arrow_array::StringArray {
    let column = batch.column_by_name(name).unwrap().as_any();
    column
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap()
        .clone()
}

/// Every string value of a Parquet file, each after a separator.
fn parquet_strings(bytes: Vec<u8>) -> String {
    use arrow_array::{Array, StringArray};
    let mut out = String::new();
    for batch in batches(bytes) {
        for column in batch.columns() {
            if let Some(strings) = column.as_any().downcast_ref::<StringArray>() {
                for i in 0..strings.len() {
                    if !strings.is_null(i) {
                        out.push('\u{1}');
                        out.push_str(strings.value(i));
                    }
                }
            }
        }
    }
    out
}

/// Every file under `dir` (hidden ones too), with its decoded texts.
pub fn folder_texts(dir: &Path) -> Vec<(String, String)> {
    crate::files_under(dir, "")
        .into_iter()
        .map(|name| {
            let text = decoded_texts(&name, std::fs::read(dir.join(&name)).unwrap());
            (name, text)
        })
        .collect()
}

/// The texts of `erased` that say something only they say (no kept text
/// contains them), and the kept texts; each at least 6 characters.
pub fn texts_to_search(erased: &[Value], kept: &[Value]) -> (Vec<String>, Vec<String>) {
    let text = |r: &Value| r["message_text"].as_str().map(str::to_owned);
    let kept: Vec<String> = kept
        .iter()
        .filter_map(text)
        .filter(|t| t.len() >= 6)
        .collect();
    let unique: Vec<String> = erased
        .iter()
        .filter_map(text)
        .filter(|t| t.len() >= 6 && !kept.iter().any(|k| k.contains(t.as_str())))
        .collect();
    (unique, kept)
}

/// Asserts that no file of `files` holds any of `gone`, and that every
/// text of `kept` is still in the handoff file and in a Parquet file.
pub fn assert_search(files: &[(String, String)], gone: &[String], kept: &[String]) {
    for text in gone {
        let hits: Vec<&str> = files
            .iter()
            .filter(|(_, t)| t.contains(text.as_str()))
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(hits.is_empty(), "an erased text is still in {hits:?}");
    }
    let in_kind = |suffix: &str| -> String {
        files
            .iter()
            .filter(|(n, _)| n.contains(suffix))
            .map(|(_, t)| t.as_str())
            .collect()
    };
    let (handoff, parquet) = (in_kind("handoff"), in_kind(".parquet"));
    for text in kept {
        assert!(
            handoff.contains(text.as_str()),
            "a kept text left the handoff file"
        );
        assert!(
            parquet.contains(text.as_str()),
            "a kept text left the Parquet files"
        );
    }
}

/// Asserts that DuckDB and pyarrow, reading `parquet/messages/**` as any
/// warehouse would, see exactly the history records of `kept`.
pub fn assert_readers_see(out: &Path, kept: &[Value]) {
    let script = r#"
import duckdb, json, sys, pyarrow.dataset as ds
glob = f"{sys.argv[1]}/parquet/messages/**/*.parquet"
duck = duckdb.connect().execute(
    f"SELECT conversation_user_id, message_id, message_text FROM read_parquet('{glob}', hive_partitioning=false)"
).fetchall()
arrow = ds.dataset(f"{sys.argv[1]}/parquet/messages", format="parquet").to_table(
    columns=["conversation_user_id", "message_id", "message_text"]).to_pylist()
print(json.dumps({"duckdb": sorted(map(list, duck)), "pyarrow": sorted([r["conversation_user_id"], r["message_id"], r["message_text"]] for r in arrow)}))
"#;
    let text = crate::run_python(crate::python_with(&["duckdb", "pyarrow"]), script, &[out]);
    let read: Value = serde_json::from_str(text.trim()).unwrap();
    assert_rows_read(&read, &["duckdb", "pyarrow"], kept);
}

/// Asserts that each of `readers` in `read` (a reader's name → its
/// `[conversation, message ID, text]` rows) holds exactly the history
/// records of `kept`.
fn assert_rows_read(read: &Value, readers: &[&str], kept: &[Value]) {
    let mut expected: Vec<Value> = kept
        .iter()
        .filter(|r| r["record_type"] == "history")
        .map(|r| {
            serde_json::json!([
                r["conversation_user_id"],
                r["message_id"],
                r["message_text"]
            ])
        })
        .collect();
    expected.sort_by_key(|v| v.to_string());
    for reader in readers {
        let mut rows = read[*reader].as_array().unwrap().clone();
        rows.sort_by_key(|v| v.to_string());
        assert_eq!(rows.len(), expected.len(), "{reader} row count");
        assert!(
            rows == expected,
            "{reader} does not read exactly the remaining rows"
        );
    }
}

/// Asserts what delta-rs and Polars read of `out`'s Delta tables after the
/// erasure run `run`: the messages table's latest snapshot is exactly the
/// history records of `kept` (and the sends table holds no erased send),
/// the erasure is one DELETE commit naming its run, and the snapshot before
/// it can no longer be read: its files are physically gone.
fn assert_delta_tables_see(out: &Path, kept: &[Value], run: &str) {
    let script = r#"
import json, os, sys
import polars as pl
from deltalake import DeltaTable
root = sys.argv[1] + "/parquet/"
dt = DeltaTable(root + "messages")
cols = ["conversation_user_id", "message_id", "message_text"]
rows = sorted(map(list, zip(*[dt.to_pyarrow_table(columns=cols).column(c).to_pylist() for c in cols])))
polars = sorted(map(list, pl.read_delta(root + "messages").select(cols).rows()))
last = dt.history(1)[0]
try:
    DeltaTable(root + "messages", version=dt.version() - 1).to_pyarrow_table()
    before = "readable"
except Exception as e:
    before = type(e).__name__
sends = DeltaTable(root + "sends").to_pyarrow_table(columns=["message_id"]).column("message_id").to_pylist()
print(json.dumps({"rows": rows, "polars": polars, "operation": last.get("operation"),
                  "run": last.get("runId"), "before": before, "sends": sends}))
sys.stdout.flush()
os._exit(0)
"#;
    let text = crate::run_python(
        crate::python_with(&["deltalake", "polars", "pyarrow"]),
        script,
        &[out],
    );
    let read: Value = serde_json::from_str(text.trim()).unwrap();
    assert_rows_read(&read, &["rows", "polars"], kept);
    assert_eq!(read["operation"], "DELETE", "{read}");
    assert_eq!(read["run"], run);
    assert_ne!(read["before"], "readable", "time travel reads erased data");
    let kept_sends: BTreeSet<&str> = kept
        .iter()
        .filter(|r| r["record_type"] == "send")
        .filter_map(|r| r["message_id"].as_str())
        .collect();
    for id in read["sends"].as_array().unwrap() {
        assert!(
            kept_sends.contains(id.as_str().unwrap()),
            "erased send {id}"
        );
    }
}

/// The verify report of `out`, asserted clean.
fn assert_verifies(out: &Path) {
    let report = verify::run(out, None, None).unwrap();
    assert_eq!(report.exit_code(), 0, "{:#?}", report.failures);
}

/// Sends one text DM to `to` into `out`.
async fn send_text(
    server: &xquik_dm::mock::MockServer,
    out: &Path,
    to: &str,
    text: &str,
) -> xquik_dm::commands::send::SendReport {
    use xquik_dm::commands::send::{self, BatchLine, SendRequest};
    let dm = SendRequest::validate(ACCOUNT, to, text, None, None, None).unwrap();
    send::run(crate::send_options(server, out, vec![BatchLine::Valid(dm)]))
        .await
        .unwrap()
}

/// Sync, forget one conversation and two messages of another: nothing of
/// them is left in any file of the output, everything else is, DuckDB reads
/// exactly the remaining rows, verify passes; a later sync (the mock still
/// serves them) writes none of them again and skips the forgotten
/// conversation with reason `forgotten`.
#[tokio::test(flavor = "multi_thread")]
async fn forget_erases_completely_and_stays_erased() {
    let server = xquik_dm::mock::MockServer::start(world(&[40, 60, 25], 7))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let users = users(3);
    sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    // A DM sent to the conversation that will be forgotten: its send
    // record goes too.
    let sent = send_text(
        &server,
        &out,
        &users[1],
        "a send that must be erased, Zürich 7f3e",
    )
    .await;
    assert_eq!(sent.exit_code(), 0);
    let head = verify::run(&out, None, None).unwrap().head.unwrap();
    let before = jsonl_records(&out);
    let of = |user: &str| -> Vec<Value> {
        before
            .iter()
            .filter(|r| r["conversation_user_id"] == user || r["recipient_user_id"] == user)
            .cloned()
            .collect()
    };
    let single: Vec<String> = of(&users[0])
        .iter()
        .take(2)
        .map(|r| r["message_id"].as_str().unwrap().to_owned())
        .collect();
    let out_s = out.to_str().unwrap().to_owned();
    let (status, report, stderr) = tokio::task::spawn_blocking({
        let (out_s, u, m0, m1) = (
            out_s.clone(),
            users[1].clone(),
            single[0].clone(),
            single[1].clone(),
        );
        move || {
            forget(
                &out_s,
                &[
                    "--user",
                    &u,
                    "--message",
                    &m0,
                    &m1,
                    "--reason",
                    "ticket 4711",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(report["erasure"]["erased"], 63, "{report}");
    assert_eq!(report["erasure"]["sends_erased"], 1);
    assert_eq!(report["erasure"]["by_conversation"][&users[1]], 61);
    assert_eq!(report["erasure"]["by_conversation"][&users[0]], 2);
    let erased_ids: BTreeSet<String> = of(&users[1])
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_owned())
        .chain(single.iter().cloned())
        .collect();
    let (erased, kept): (Vec<Value>, Vec<Value>) = before
        .iter()
        .cloned()
        .partition(|r| erased_ids.contains(r["message_id"].as_str().unwrap()));
    let (gone, kept_texts) = texts_to_search(&erased, &kept);
    assert!(
        gone.len() >= 20,
        "too few distinctive texts to search: {}",
        gone.len()
    );
    assert_search(&folder_texts(&out), &gone, &kept_texts);
    assert_eq!(
        jsonl_records(&out),
        kept,
        "the handoff file lost or reordered a kept record"
    );
    assert_readers_see(&out, &kept);
    assert_delta_tables_see(&out, &kept, report["run_id"].as_str().unwrap());
    assert_verifies(&out);
    // A reviewer who verified up to the head before the erasure checks
    // only what came after it.
    let since = verify::run_since(&out, None, None, Some(&head)).unwrap();
    assert_eq!(since.exit_code(), 0, "{:#?}", since.failures);
    crate::assert_manifests_match_schema(&out);

    // The mock still serves every message: a full sync writes none of the
    // erased ones again and skips the forgotten conversation.
    server.append_messages(ACCOUNT, &users[0], 3);
    let fresh = tempfile::tempdir().unwrap();
    let report = sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    let skipped = report
        .conversations
        .iter()
        .find(|c| c.user == users[1])
        .unwrap();
    assert_eq!(skipped.reason, "forgotten");
    let after = jsonl_records(&out);
    assert_eq!(after.len(), kept.len() + 3);
    assert!(
        after
            .iter()
            .all(|r| !erased_ids.contains(r["message_id"].as_str().unwrap()))
    );
    assert_search(&folder_texts(&out), &gone, &kept_texts);
    assert_verifies(&out);

    // A DM to the forgotten person is refused before any request: it
    // would put a new body about them into the output.
    let refused = send_text(&server, &out, &users[1], "a DM to someone forgotten").await;
    assert_eq!(refused.exit_code(), 3);
    let outcome = &refused.sends[0];
    assert_eq!(
        outcome.status,
        xquik_dm::commands::send::SendStatus::Refused
    );
    assert!(
        outcome.error.as_deref().unwrap().contains("forgotten"),
        "{outcome:?}"
    );
    assert_eq!(jsonl_records(&out).len(), kept.len() + 3);
    assert_verifies(&out);

    // A removed checkpoint, rebuilt: the erasure stays in force.
    std::fs::remove_file(out.join("state/checkpoint.json")).unwrap();
    let rebuilt = bin().args(["rebuild", "--out", &out_s]).output().unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let report = sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0);
    let again = jsonl_records(&out);
    assert!(
        again
            .iter()
            .all(|r| !erased_ids.contains(r["message_id"].as_str().unwrap()))
    );
    assert_eq!(again.len(), kept.len() + 3);
    assert_verifies(&out);

    // An audited undo: the conversation is synced again, what is new in it
    // is written, what was erased stays erased.
    let (status, report, stderr) = tokio::task::spawn_blocking({
        let (out_s, u) = (out_s.clone(), users[1].clone());
        move || {
            forget(
                &out_s,
                &[
                    "--undo-user",
                    &u,
                    "--reason",
                    "consent renewed, ticket 4712",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(report["erasure"]["kind"], "undo_forget");
    assert_eq!(report["erasure"]["undone_users"][0], users[1].as_str());
    assert_eq!(report["erasure"]["erased"], 0);
    server.append_messages(ACCOUNT, &users[1], 4);
    let report = sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    let resumed = report
        .conversations
        .iter()
        .find(|c| c.user == users[1])
        .unwrap();
    assert_ne!(resumed.reason, "forgotten");
    let last = jsonl_records(&out);
    assert_eq!(
        last.len(),
        kept.len() + 3 + 4,
        "only the new messages come back"
    );
    assert!(
        last.iter()
            .all(|r| !erased_ids.contains(r["message_id"].as_str().unwrap()))
    );
    assert_search(&folder_texts(&out), &gone, &kept_texts);
    assert_verifies(&out);
    drop(fresh);
    let _ = (KEY, PathBuf::new());
}

/// What forgetting `users[1]` and two messages of `users[0]` erases from
/// the records `before`: those two message IDs, the records erased and
/// the records kept.
fn split(before: Vec<Value>, users: &[String]) -> (Vec<String>, Vec<Value>, Vec<Value>) {
    let single: Vec<String> = before
        .iter()
        .filter(|r| r["conversation_user_id"] == users[0].as_str())
        .skip(3)
        .step_by(5)
        .take(2)
        .map(|r| r["message_id"].as_str().unwrap().to_owned())
        .collect();
    let erases = |r: &Value| {
        r["conversation_user_id"] == users[1].as_str()
            || single.iter().any(|m| r["message_id"] == m.as_str())
    };
    let (erased, kept) = before.into_iter().partition(erases);
    (single, erased, kept)
}

/// A synced folder and what forgetting `users[1]` and two messages of
/// `users[0]` must leave: the forget arguments, the records kept and the
/// erased texts to search for.
struct Case {
    dir: tempfile::TempDir,
    args: Vec<String>,
    kept: Vec<Value>,
    gone: Vec<String>,
    kept_texts: Vec<String>,
}

impl Case {
    async fn new(sizes: &[u64]) -> (Case, xquik_dm::mock::MockServer) {
        let server = xquik_dm::mock::MockServer::start(world(sizes, 50))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let users = users(sizes.len());
        sync::run(sync_options(&server, dir.path(), &users))
            .await
            .unwrap();
        let (single, erased, kept) = split(jsonl_records(dir.path()), &users);
        let (gone, kept_texts) = texts_to_search(&erased, &kept);
        let mut args = vec![
            "--user".to_owned(),
            users[1].clone(),
            "--message".to_owned(),
        ];
        args.extend(single);
        args.extend(["--reason".to_owned(), "DSR-2026-118".to_owned()]);
        let case = Case {
            dir,
            args,
            kept,
            gone,
            kept_texts,
        };
        (case, server)
    }

    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// A copy of the synced folder.
    fn copy(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        crate::copy_dir(self.dir.path(), dir.path());
        dir
    }

    /// Asserts the erasure is complete in `out` and nothing else was lost.
    fn assert_erased(&self, out: &Path) {
        self.assert_still_erased(out);
        let mut ids = parquet_ids(out);
        ids.sort();
        let mut kept: Vec<(String, String)> = self
            .kept
            .iter()
            .map(|r| {
                (
                    r["conversation_user_id"].as_str().unwrap().to_owned(),
                    r["message_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        kept.sort();
        assert_eq!(
            ids, kept,
            "the Parquet files do not hold exactly the kept rows"
        );
        assert_verifies(out);
    }
}

impl Case {
    /// Asserts the handoff file holds exactly the kept records and no file
    /// of `out` an erased text.
    fn assert_still_erased(&self, out: &Path) {
        assert_eq!(
            jsonl_records(out),
            self.kept,
            "the handoff file is not the kept records"
        );
        assert_search(&folder_texts(out), &self.gone, &self.kept_texts);
    }
}

/// (conversation, message ID) of every row of the data files under
/// `parquet/messages/` (not the Delta log's).
fn parquet_ids(out: &Path) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for path in crate::files_under(out, "parquet/messages") {
        if path.contains("_delta_log/") {
            continue;
        }
        for batch in batches(std::fs::read(out.join(&path)).unwrap()) {
            let users = strings(&batch, "conversation_user_id");
            let messages = strings(&batch, "message_id");
            for i in 0..batch.num_rows() {
                ids.push((users.value(i).to_owned(), messages.value(i).to_owned()));
            }
        }
    }
    ids
}

/// SIGKILL at random moments of `forget` (10 times, at least 6 of them
/// before it finished): after each rerun the
/// erasure is complete (no erased text in any file), every other record is
/// there once in the handoff file and in Parquet, and verify passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_forget_is_finished_or_undone_by_the_rerun() {
    let (case, _server) = Case::new(&[300, 400, 200, 250]).await;
    let timing = case.copy();
    let started = std::time::Instant::now();
    let out = timing.path().to_str().unwrap().to_owned();
    let (status, _, stderr) = forget(&out, &case.args());
    assert_eq!(status, 0, "{stderr}");
    let full = started.elapsed().as_millis().max(20) as u64;
    case.assert_erased(timing.path());
    let mut rng = fastrand::Rng::with_seed(21);
    let mut killed = 0;
    for _ in 0..10 {
        let dir = case.copy();
        let out = dir.path().to_str().unwrap().to_owned();
        let mut child = bin()
            .args(["forget", "--out", &out])
            .args(case.args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Most of the run's time is the process starting and reading: the
        // kills spread over the first nine tenths of it.
        std::thread::sleep(std::time::Duration::from_millis(rng.u64(0..full * 9 / 10)));
        let _ = child.kill();
        killed += u32::from(!child.wait().unwrap().success());
        // Whatever moment it was killed at, the trail verifies.
        assert_verifies(dir.path());
        let (status, _, stderr) = forget(&out, &case.args());
        assert_eq!(status, 0, "rerun: {stderr}");
        case.assert_erased(dir.path());
    }
    assert!(killed >= 6, "only {killed} of 10 forgets were interrupted");
}

/// Tampering after an erasure: an edited erasure manifest, a record removed
/// by hand, an erasure whose counts do not match (its chain made
/// consistent), a tombstone removed from the state — each found.
#[tokio::test(flavor = "multi_thread")]
async fn tampering_after_an_erasure_is_caught() {
    let (case, server) = Case::new(&[40, 30]).await;
    let erased = case.copy();
    let out = erased.path().to_str().unwrap().to_owned();
    let (status, report, stderr) = forget(&out, &case.args());
    assert_eq!(status, 0, "{stderr}");
    let manifest_key = report["manifest"].as_str().unwrap().to_owned();
    let rows_key = manifest_key.replace(".manifest.json", ".rows.jsonl");
    let failures = |dir: &Path| -> Vec<String> {
        let report = verify::run(dir, None, None).unwrap();
        assert_eq!(report.exit_code(), 5, "tampering not caught");
        report
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.path, f.reason))
            .collect()
    };
    let copy = || {
        let dir = tempfile::tempdir().unwrap();
        crate::copy_dir(erased.path(), dir.path());
        dir
    };

    // An edited erasure manifest (its reason).
    let dir = copy();
    let path = dir.path().join(&manifest_key);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("DSR-2026-118", "DSR-2026-119")).unwrap();
    failures(dir.path());

    // A kept record removed by hand from the handoff file.
    let dir = copy();
    let path = dir.path().join("xquik-dm-handoff.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(lines.len() / 2);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let found = failures(dir.path());
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("xquik-dm-handoff.jsonl")),
        "{found:?}"
    );

    // An erasure whose counts do not match, its chain, checkpoint and
    // checksums made consistent with the edit: only the counts are wrong.
    let dir = copy();
    forge_counts(dir.path(), &manifest_key);
    let found = failures(dir.path());
    assert!(found.iter().any(|f| f.contains("erasure")), "{found:?}");

    // A tombstone removed from its rows file: the next sync still keeps
    // the message out (it reads the index), and verify names the file.
    let drop_tombstone = |dir: &Path| {
        let path = dir.join(&rows_key);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"history\""))
            .skip(1)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    };
    let sync_exit = |dir: &Path| {
        let mut cmd = crate::protocol::sync(&server, dir, &users(2));
        let output = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let index = |dir: &Path| -> PathBuf {
        let found = crate::files_under(dir, "state");
        let name = found.iter().find(|f| f.contains("tombstones-")).unwrap();
        dir.join(name)
    };
    let dir = copy();
    drop_tombstone(dir.path());
    let (code, stderr) = tokio::task::block_in_place(|| sync_exit(dir.path()));
    assert_eq!(code, Some(0), "{stderr}");
    case.assert_still_erased(dir.path());
    let found = failures(dir.path());
    assert!(found.iter().any(|f| f.contains(".rows.jsonl")), "{found:?}");

    // The same with the index gone too: the sync reads the rows file, finds
    // it changed and refuses (exit 3, naming it) before it could write the
    // message again.
    let dir = copy();
    drop_tombstone(dir.path());
    std::fs::remove_file(index(dir.path())).unwrap();
    let (code, stderr) = tokio::task::block_in_place(|| sync_exit(dir.path()));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("tombstones") && stderr.contains(".rows.jsonl"),
        "{stderr}"
    );
    failures(dir.path());

    // A damaged index: the sync reads the rows files instead (nothing
    // comes back), and verify names the index.
    let dir = copy();
    let path = index(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 16);
    std::fs::write(&path, bytes).unwrap();
    let found = failures(dir.path());
    assert!(found.iter().any(|f| f.contains("tombstones-")), "{found:?}");
    let (code, stderr) = tokio::task::block_in_place(|| sync_exit(dir.path()));
    assert_eq!(code, Some(0), "{stderr}");
    case.assert_still_erased(dir.path());

    // The tombstones dropped from the checkpoint: verify names it.
    let dir = copy();
    let path = dir.path().join("state/checkpoint.json");
    let mut checkpoint: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    checkpoint["erasure"]["tombstones"] = serde_json::json!([]);
    std::fs::write(&path, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    let found = failures(dir.path());
    assert!(found.iter().any(|f| f.contains("tombstones")), "{found:?}");
}

/// Adds one to the erasure's count and to one conversation's in the last
/// run's manifest `key`, and rewrites what pins the manifest (its chain
/// entry, the checkpoint's pointer, its checksum file, `SHA256SUMS`) so
/// that only the counts are wrong.
fn forge_counts(out: &Path, key: &str) {
    use sha2::{Digest, Sha256};
    let sha = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let path = out.join(key);
    let old = std::fs::read(&path).unwrap();
    let mut manifest: Value = serde_json::from_slice(&old).unwrap();
    let erasure = &mut manifest["erasure"];
    erasure["erased"] = (erasure["erased"].as_u64().unwrap() + 1).into();
    let by = erasure["by_conversation"].as_object_mut().unwrap();
    let first = by.keys().next().unwrap().clone();
    by[&first] = (by[&first].as_u64().unwrap() + 1).into();
    let new = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::write(&path, &new).unwrap();
    let (old_sha, new_sha) = (sha(&old), sha(&new));
    for file in ["audit/chain.jsonl", "state/checkpoint.json"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        std::fs::write(out.join(file), text.replace(&old_sha, &new_sha)).unwrap();
    }
    let sums = key.replace(".manifest.json", ".sha256");
    let text = std::fs::read_to_string(out.join(&sums)).unwrap();
    std::fs::write(out.join(&sums), text.replace(&old_sha, &new_sha)).unwrap();
    let checkpoint = sha(&std::fs::read(out.join("state/checkpoint.json")).unwrap());
    let text = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    let fixed: Vec<String> = text
        .lines()
        .map(|l| match l.split_once("  ") {
            Some((_, "state/checkpoint.json")) => format!("{checkpoint}  state/checkpoint.json"),
            _ => l.to_owned(),
        })
        .collect();
    std::fs::write(out.join("SHA256SUMS"), fixed.join("\n") + "\n").unwrap();
}

/// Bad input is refused before the output is touched (exit 2): no reason,
/// a reason over 200 characters, nothing named, a username no recipient
/// of the output has and no key to look it up.
#[test]
fn forget_refuses_bad_input_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let long = "x".repeat(201);
    for args in [
        vec!["--user", "1000001"],
        vec!["--user", "1000001", "--reason", ""],
        vec!["--user", "1000001", "--reason", &long],
        vec!["--reason", "ticket 1"],
        vec!["--message", "12ab", "--reason", "ticket 1"],
        vec!["--user", "@nobody", "--reason", "ticket 1"],
    ] {
        let (status, _, stderr) = forget(out, &args);
        assert_eq!(status, 2, "{args:?}: {stderr}");
    }
    let (_, _, stderr) = forget(out, &["--user", "@nobody", "--reason", "ticket 1"]);
    assert!(stderr.contains("XQUIK_API_KEY"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the output was touched"
    );
}

/// The states an erasure killed after its commit point leaves (its
/// manifest chained, the checkpoint still the old one), built from a
/// finished erasure, at each moment of its seal: its new generation staged
/// and its new Parquet files written beside the old ones; the generation
/// installed and the old files gone; and `SHA256SUMS` rewritten too. Each
/// verifies, and the next run of any command finishes it (repair) — here a
/// sync, which then writes nothing erased again.
#[tokio::test(flavor = "multi_thread")]
async fn an_erasure_killed_after_its_commit_point_is_finished_by_the_next_run() {
    let (case, server) = Case::new(&[60, 45, 30]).await;
    let done = case.copy();
    let out = done.path().to_str().unwrap().to_owned();
    let (status, report, stderr) = forget(&out, &case.args());
    assert_eq!(status, 0, "{stderr}");
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let staged = format!(".xquik-dm-handoff.jsonl.{run_id}.generation");
    for moment in ["staged", "installed", "sums written"] {
        let killed = case.copy();
        let (from, to) = (done.path(), killed.path());
        // What the erasure had written by its commit point: its manifest
        // and chain entry, its Parquet files and its Delta commits (made
        // before its manifest).
        std::fs::copy(from.join("audit/chain.jsonl"), to.join("audit/chain.jsonl")).unwrap();
        for file in crate::files_under(from, "audit/runs") {
            if file.contains(&run_id) {
                std::fs::copy(from.join(&file), to.join(&file)).unwrap();
            }
        }
        for file in crate::files_under(from, "parquet") {
            if file.contains(&run_id) || file.contains("_delta_log/") {
                std::fs::copy(from.join(&file), to.join(&file)).unwrap();
            }
        }
        if moment == "staged" {
            std::fs::copy(from.join("xquik-dm-handoff.jsonl"), to.join(&staged)).unwrap();
        } else {
            // Installed: the new generation is the file, the files it
            // rewrote are gone.
            std::fs::copy(
                from.join("xquik-dm-handoff.jsonl"),
                to.join("xquik-dm-handoff.jsonl"),
            )
            .unwrap();
            for file in crate::files_under(to, "parquet") {
                if !from.join(&file).exists() {
                    std::fs::remove_file(to.join(&file)).unwrap();
                }
            }
        }
        if moment == "sums written" {
            std::fs::copy(from.join("SHA256SUMS"), to.join("SHA256SUMS")).unwrap();
        }
        // The checkpoint names the erasure run, which had claimed the output.
        let path = to.join("state/checkpoint.json");
        let mut checkpoint: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        checkpoint["run"] = run_id.clone().into();
        checkpoint["unsealed"] = serde_json::json!([{"run": run_id, "dirs": []}]);
        std::fs::write(&path, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
        let report = verify::run(to, None, None).unwrap();
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("interrupted after it sealed")),
            "{moment}: {:#?} {:#?}",
            report.notes,
            report.failures
        );
        assert_eq!(report.exit_code(), 0, "{moment}: {:#?}", report.failures);
        let all = users(3);
        sync::run(sync_options(&server, to, &all)).await.unwrap();
        case.assert_erased(to);
        assert!(!to.join(&staged).exists(), "{moment}");
    }
}

/// The binary with `args` and the bucket's environment, asserted to
/// succeed.
fn in_bucket(moto: &crate::bucket::Moto, args: &[String]) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(args).env("XQUIK_API_KEY", KEY);
    moto.env(&mut cmd);
    let output = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{args:?}: {text}");
    output
}

/// Every object of `bucket`, each saved under its key in `to` (handoff
/// segments too, one file each): what a search of the bucket looks at.
fn dump_bucket(moto: &crate::bucket::Moto, bucket: &str, to: &Path) {
    let script = r#"
import sys, os, boto3
endpoint, bucket, to = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
n = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for obj in page.get("Contents", []):
        path = os.path.join(to, obj["Key"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
        n += 1
print(n)
"#;
    crate::run_python(
        crate::python_with(&["moto[server]:moto", "boto3", "pyarrow"]),
        script,
        &[Path::new(&moto.endpoint()), Path::new(bucket), to],
    );
}

/// In a bucket: sync in three runs (three handoff segments), forget a
/// conversation and two messages; then no object of the bucket holds an
/// erased text (every old segment is gone), every other text is there,
/// pyarrow and DuckDB read exactly the remaining rows, verify passes, and
/// a later sync writes nothing erased again.
#[tokio::test(flavor = "multi_thread")]
async fn forget_in_a_bucket_leaves_no_erased_byte_in_any_object() {
    let moto = std::sync::Arc::new(
        tokio::task::spawn_blocking(crate::bucket::Moto::start)
            .await
            .unwrap(),
    );
    let bucket = moto.bucket("dm-erasure");
    let url = format!("s3://{bucket}/team/dm");
    let server = xquik_dm::mock::MockServer::start(world(&[90, 70, 40], 20))
        .await
        .unwrap();
    let all = users(3);
    let sync_args: Vec<String> = [
        "--base-url",
        &server.base_url(),
        "sync",
        "--account",
        ACCOUNT,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(all.iter().flat_map(|u| ["--user".to_owned(), u.clone()]))
    .chain(["--out".to_owned(), url.clone()])
    .collect();
    let run_sync = || {
        let (m, args) = (moto.clone(), sync_args.clone());
        tokio::task::spawn_blocking(move || in_bucket(&m, &args))
    };
    run_sync().await.unwrap();
    for n in [5, 4] {
        server.append_messages(ACCOUNT, &all[0], n);
        server.append_messages(ACCOUNT, &all[1], n);
        run_sync().await.unwrap();
    }
    let before_dir = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "team/dm", before_dir.path());
    let (single, erased, kept) = split(jsonl_records(before_dir.path()), &all);
    let (gone, kept_texts) = texts_to_search(&erased, &kept);
    assert!(gone.len() >= 20, "{}", gone.len());

    let mut args: Vec<String> = [
        "forget",
        "--json",
        "--out",
        &url,
        "--user",
        &all[1],
        "--message",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.extend(single);
    args.extend(["--reason".to_owned(), "erasure request 77".to_owned()]);
    let (m, url2) = (moto.clone(), url.clone());
    let report = tokio::task::spawn_blocking(move || {
        let output = in_bucket(&m, &args);
        // verify, from a fresh process, on the bucket itself.
        in_bucket(&m, &["verify".to_owned(), url2]);
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(report["erasure"]["erased"], erased.len(), "{report}");

    let objects = tempfile::tempdir().unwrap();
    dump_bucket(&moto, &bucket, objects.path());
    let files = folder_texts(objects.path());
    let segments = files
        .iter()
        .filter(|(n, _)| n.contains("xquik-dm-handoff/part-"))
        .count();
    assert_eq!(segments, 1, "the old segments are not all gone");
    assert_search(&files, &gone, &kept_texts);
    let after = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "team/dm", after.path());
    assert_eq!(jsonl_records(after.path()), kept);
    assert_readers_see(after.path(), &kept);

    // A later sync (the mock serves everything) writes nothing erased again.
    run_sync().await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    dump_bucket(&moto, &bucket, objects.path());
    assert_search(&folder_texts(objects.path()), &gone, &kept_texts);
}

/// 100,000 tombstones: a conversation of 100,000 messages erased by ID
/// (`--ids-file`), then syncs that go on: the tombstones load once per run
/// into a hash set (checked here: all of them, in well under a second even
/// in a debug build), the mock serves every erased message again and none
/// is written, and what is new is.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_tombstones_keep_syncs_working() {
    let server = xquik_dm::mock::MockServer::start(world(&[100_000, 30], 1000))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let all = users(2);
    sync::run(sync_options(&server, out, &all)).await.unwrap();
    let ids: Vec<String> = jsonl_records(out)
        .iter()
        .filter(|r| r["conversation_user_id"] == all[0].as_str())
        .map(|r| r["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 100_000);
    let ids_file = dir.path().join("erase.txt");
    std::fs::write(&ids_file, ids.join("\n")).unwrap();
    let out_s = out.to_str().unwrap().to_owned();
    let file = ids_file.to_str().unwrap().to_owned();
    let (status, report, stderr) = tokio::task::spawn_blocking(move || {
        forget(
            &out_s,
            &["--ids-file", &file, "--reason", "retention backlog"],
        )
    })
    .await
    .unwrap();
    std::fs::remove_file(&ids_file).unwrap();
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(report["erasure"]["tombstones"], 100_000);

    let storage = xquik_dm::storage::Location::from(out).open().unwrap();
    let checkpoint = xquik_dm::checkpoint::Checkpoint::load(storage.as_ref()).unwrap();
    let started = std::time::Instant::now();
    let tombstones =
        xquik_dm::erasure::tombstones::Tombstones::load(storage.as_ref(), &checkpoint.erasure)
            .unwrap();
    let load = started.elapsed();
    assert_eq!(tombstones.len(), 100_000);
    assert!(
        load < std::time::Duration::from_secs(3),
        "loading took {load:?}"
    );

    // A full re-read of the erased conversation (its paging state
    // dropped, as a backfill from scratch would): the mock serves all
    // 100,000 again, none is written.
    let path = out.join("state/checkpoint.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let key = format!("{ACCOUNT}/{}", all[0]);
    assert!(
        state["conversations"]
            .as_object_mut()
            .unwrap()
            .remove(&key)
            .is_some()
    );
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    server.append_messages(ACCOUNT, &all[0], 7);
    server.append_messages(ACCOUNT, &all[1], 5);
    let report = sync::run(sync_options(&server, out, &all)).await.unwrap();
    assert_eq!(report.exit_code(), 0);
    let refetched = report.conversations.iter().map(|c| c.fetched).sum::<u64>();
    assert!(refetched >= 100_007, "{refetched}");
    let records = jsonl_records(out);
    assert_eq!(records.len(), 30 + 7 + 5);
    let erased: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert!(
        records
            .iter()
            .all(|r| !erased.contains(r["message_id"].as_str().unwrap()))
    );
    assert_verifies(out);
}

/// Copies every object under `from/` to `to/` in `bucket`: a fresh copy of
/// an output, since an output does not depend on where it lives.
fn copy_prefix(moto: &crate::bucket::Moto, bucket: &str, from: &str, to: &str) {
    let script = r#"
import sys, boto3
endpoint, bucket, src, dst = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=src + "/"):
    for obj in page.get("Contents", []):
        key = dst + obj["Key"][len(src):]
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": obj["Key"]})
"#;
    crate::run_python(
        crate::python_with(&["moto[server]:moto", "boto3", "pyarrow"]),
        script,
        &[
            Path::new(&moto.endpoint()),
            Path::new(bucket),
            Path::new(from),
            Path::new(to),
        ],
    );
}

/// SIGKILL at random moments of `forget` in a bucket (7 times, at least 5
/// of them before it finished), each on a fresh copy of the same output:
/// after each kill `verify` passes on the bucket; after each rerun no
/// object holds an erased text, one handoff segment is left, and the
/// handoff file holds exactly the kept records.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_forget_in_a_bucket_is_finished_by_the_rerun() {
    let moto = std::sync::Arc::new(
        tokio::task::spawn_blocking(crate::bucket::Moto::start)
            .await
            .unwrap(),
    );
    let bucket = moto.bucket("dm-erasure-kills");
    let server = xquik_dm::mock::MockServer::start(world(&[90, 70, 40], 20))
        .await
        .unwrap();
    let all = users(3);
    let sync_args = |prefix: &str| -> Vec<String> {
        [
            "--base-url",
            &server.base_url(),
            "sync",
            "--account",
            ACCOUNT,
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(all.iter().flat_map(|u| ["--user".to_owned(), u.clone()]))
        .chain(["--out".to_owned(), format!("s3://{bucket}/{prefix}")])
        .collect()
    };
    for n in [0, 5] {
        server.append_messages(ACCOUNT, &all[0], n);
        let (m, args) = (moto.clone(), sync_args("base"));
        tokio::task::spawn_blocking(move || in_bucket(&m, &args))
            .await
            .unwrap();
    }
    let before = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "base", before.path());
    let (single, erased, kept) = split(jsonl_records(before.path()), &all);
    let (gone, kept_texts) = texts_to_search(&erased, &kept);
    let (user, bucket_name) = (all[1].clone(), bucket.clone());
    let forget_args = move |prefix: &str| -> Vec<String> {
        let mut args: Vec<String> = ["forget", "--out", &format!("s3://{bucket_name}/{prefix}")]
            .into_iter()
            .map(str::to_owned)
            .chain(["--user".to_owned(), user.clone(), "--message".to_owned()])
            .collect();
        args.extend(single.iter().cloned());
        args.extend(["--reason".to_owned(), "erasure request 78".to_owned()]);
        args
    };
    let moto2 = moto.clone();
    let (bucket2, kept2) = (bucket.clone(), kept.clone());
    tokio::task::spawn_blocking(move || {
        let moto = moto2;
        let started = std::time::Instant::now();
        copy_prefix(&moto, &bucket2, "base", "timing");
        let copied = started.elapsed();
        in_bucket(&moto, &forget_args("timing"));
        let full = (started.elapsed() - copied).as_millis().max(50) as u64;
        let mut rng = fastrand::Rng::with_seed(17);
        let mut killed = 0;
        for i in 0..7 {
            let prefix = format!("kill-{i}");
            copy_prefix(&moto, &bucket2, "base", &prefix);
            let mut cmd = bin();
            cmd.args(forget_args(&prefix))
                .env("XQUIK_API_KEY", KEY)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            moto.env(&mut cmd);
            let mut child = cmd.spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(rng.u64(0..full * 9 / 10)));
            let _ = child.kill();
            killed += u32::from(!child.wait().unwrap().success());
            in_bucket(
                &moto,
                &["verify".to_owned(), format!("s3://{bucket2}/{prefix}")],
            );
            in_bucket(&moto, &forget_args(&prefix));
            let objects = tempfile::tempdir().unwrap();
            dump_bucket(&moto, &bucket2, objects.path());
            let files: Vec<(String, String)> = folder_texts(objects.path())
                .into_iter()
                .filter(|(n, _)| n.starts_with(&format!("{prefix}/")))
                .collect();
            let segments = files
                .iter()
                .filter(|(n, _)| n.contains("xquik-dm-handoff/part-"))
                .count();
            assert_eq!(segments, 1, "kill {i}: the old segments are not all gone");
            assert_search(&files, &gone, &kept_texts);
            let after = tempfile::tempdir().unwrap();
            moto.mirror(&bucket2, &prefix, after.path());
            assert_eq!(jsonl_records(after.path()), kept2, "kill {i}");
            in_bucket(
                &moto,
                &["verify".to_owned(), format!("s3://{bucket2}/{prefix}")],
            );
        }
        assert!(killed >= 5, "only {killed} of 7 forgets were interrupted");
    })
    .await
    .unwrap();
}
