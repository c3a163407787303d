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

/// Every string value of a Parquet file, each after a separator.
fn parquet_strings(bytes: Vec<u8>) -> String {
    use arrow_array::{Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut out = String::new();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap();
    for batch in reader {
        let batch = batch.unwrap();
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

/// Every file under `dir`, with its decoded texts.
pub fn folder_texts(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                found.push((
                    name.clone(),
                    decoded_texts(&name, std::fs::read(&p).unwrap()),
                ));
            }
        }
    }
    found
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
    for reader in ["duckdb", "pyarrow"] {
        let mut rows = read[reader].as_array().unwrap().clone();
        rows.sort_by_key(|v| v.to_string());
        assert_eq!(rows.len(), expected.len(), "{reader} row count");
        assert!(
            rows == expected,
            "{reader} does not read exactly the remaining rows"
        );
    }
}

/// The verify report of `out`, asserted clean.
fn assert_verifies(out: &Path) {
    let report = verify::run(out, None, None).unwrap();
    assert_eq!(report.exit_code(), 0, "{:#?}", report.failures);
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
    let before = jsonl_records(&out);
    let of = |user: &str| -> Vec<Value> {
        before
            .iter()
            .filter(|r| r["conversation_user_id"] == user)
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
    assert_eq!(report["erasure"]["erased"], 62, "{report}");
    assert_eq!(report["erasure"]["by_conversation"][&users[1]], 60);
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
    assert_verifies(&out);
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
    drop(fresh);
    let _ = (KEY, PathBuf::new());
}
