//! The outputs of a fixed workflow, pinned by a golden file: past runs on
//! fixed stamps, two syncs against the embedded mock (new messages arriving
//! in between), a text and a media send, then a compaction of the closed
//! partitions. What is compared is everything that does not depend on the
//! clock: the sorted JSONL, every Parquet row (read back by DuckDB), and
//! each manifest's body-free fields in chain order, with run IDs, times,
//! today's date and the digests of time-stamped bytes replaced by
//! placeholders.
//!
//! It holds the behaviour still while the code moves: a change to any
//! written byte, row, count, coverage or repair figure shows up here as a
//! diff. `XQUIK_DM_UPDATE_GOLDEN=1 cargo test --test integration golden` rewrites
//! the file after an intended change.

use std::path::Path;

use serde_json::Value;
use xquik_dm::commands::send::{BatchLine, SendRequest};
use xquik_dm::commands::{compact, send, sync, verify};
use xquik_dm::mock::MockServer;

use crate::compact::past_runs;
use crate::{ACCOUNT, python_with, run_python, sync_options, users, world};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/outputs.txt");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_workflow_writes_the_golden_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    workflow(&out).await;
    let got = describe(&out);
    if std::env::var_os("XQUIK_DM_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &got).unwrap();
    }
    let want = std::fs::read_to_string(GOLDEN).unwrap();
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "outputs differ from {GOLDEN} at line {}:\n  got:  {:?}\n  want: {:?}",
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

/// Past runs, sync, new messages, sync, two sends, compaction; each step's
/// outcome checked as it goes.
async fn workflow(out: &Path) {
    past_runs(out, 2, 2, 9);
    let server = MockServer::start(world(&[0, 1, 37, 120], 25))
        .await
        .unwrap();
    let people = users(4);
    // One conversation at a time: the JSONL's byte order, and so every
    // segment digest, is then fixed too.
    let sync_once = || {
        let mut options = sync_options(&server, out, &people);
        options.concurrency = 1;
        sync::run(options)
    };
    assert_eq!(sync_once().await.unwrap().exit_code(), 0);
    server.append_messages(ACCOUNT, &people[2], 6);
    server.append_messages(ACCOUNT, &people[3], 30);
    assert_eq!(sync_once().await.unwrap().exit_code(), 0);

    let media = out.with_file_name("pic.png");
    std::fs::write(&media, b"\x89PNG\r\n\x1a\n-not-really-an-image-").unwrap();
    let lines = [
        ("@user3", "hello ✓ \"quoted\"", None),
        ("@user4", "with media", Some(media.as_path())),
    ]
    .into_iter()
    .map(|(to, text, media)| {
        BatchLine::Valid(SendRequest::validate(ACCOUNT, to, text, media, None, None).unwrap())
    })
    .collect();
    let sent = send::run(crate::send_options(&server, out, lines))
        .await
        .unwrap();
    assert_eq!(sent.exit_code(), 0);

    let compacted = tokio::task::spawn_blocking({
        let out = out.to_owned();
        move || compact::run(&out.into(), 2, None)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        !compacted.partitions.is_empty(),
        "the closed partitions are merged"
    );
    let report = verify::run(out, None, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// The clock-free description of an output folder.
fn describe(out: &Path) -> String {
    let runs = run_ids(out);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let mask = |text: &str| {
        let mut text = text.replace(&today, "TODAY");
        for (i, run) in runs.iter().enumerate() {
            text = text.replace(run, &format!("RUN{}", i + 1));
        }
        text
    };
    let mut lines = vec!["== JSONL, sorted".to_owned()];
    let mut jsonl: Vec<String> = std::fs::read_to_string(out.join("xquik-dm-handoff.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut record: Value = serde_json::from_str(l).unwrap();
            clock_free(&mut record);
            record.to_string()
        })
        .collect();
    jsonl.sort();
    lines.extend(jsonl);
    lines.push("== Parquet rows, as DuckDB reads them".to_owned());
    lines.extend(parquet_rows(out).lines().map(str::to_owned));
    lines.push("== manifests, in chain order".to_owned());
    // A send record's `sent_at` is written with as many fractional digits
    // as the clock gave it, so from the first send on, the handoff file's
    // length (and each later segment's offset) depends on the clock.
    let mut sent = false;
    for run in &runs {
        let text =
            std::fs::read_to_string(out.join(format!("audit/runs/{run}.manifest.json"))).unwrap();
        let mut manifest: Value = serde_json::from_str(&text).unwrap();
        clock_free(&mut manifest);
        // The page log holds the waits the pacer made; a send's segment and
        // Parquet file hold the time it was sent.
        let mut timed = vec!["/page_log/sha256".to_owned(), "/page_log/bytes".to_owned()];
        // A Delta commit holds its time (commitInfo, modificationTime).
        for table in ["messages", "sends"] {
            timed.push(format!("/delta/{table}/sha256"));
        }
        if manifest["command"] == "send" {
            let files = manifest["files"].as_array().map_or(0, Vec::len);
            timed.extend((0..files).map(|i| format!("/files/{i}/sha256")));
            sent = true;
        }
        if sent {
            timed.push("/coverage/jsonl_bytes".to_owned());
            let files = manifest["files"].as_array().cloned().unwrap_or_default();
            for (i, file) in files.iter().enumerate() {
                if file["path"] == "xquik-dm-handoff.jsonl" {
                    timed.extend(
                        ["bytes", "length", "offset", "sha256"]
                            .map(|key| format!("/files/{i}/{key}")),
                    );
                }
            }
        }
        for pointer in timed {
            if let Some(v) = manifest.pointer_mut(&pointer).filter(|v| !v.is_null()) {
                *v = Value::String("…".to_owned());
            }
        }
        lines.push(mask(&manifest.to_string()));
    }
    lines.extend(delta_logs(out));
    lines.push(String::new());
    mask(&lines.join("\n"))
}

/// Each table's Delta log, commit by commit, with the clock's fields
/// (times, the table's random ID) masked.
fn delta_logs(out: &Path) -> Vec<String> {
    const CLOCK: [&str; 5] = [
        "timestamp",
        "modificationTime",
        "deletionTimestamp",
        "createdTime",
        "id",
    ];
    let mut lines = Vec::new();
    for table in ["messages", "sends"] {
        lines.push(format!("== Delta log of {table}"));
        let log = out.join(format!("parquet/{table}/_delta_log"));
        let mut names: Vec<String> = std::fs::read_dir(&log)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        for name in names {
            lines.push(format!("-- {name}"));
            for line in std::fs::read_to_string(log.join(&name)).unwrap().lines() {
                let mut action: Value = serde_json::from_str(line).unwrap();
                for (_, body) in action.as_object_mut().unwrap().iter_mut() {
                    for key in CLOCK {
                        if let Some(v) = body.get_mut(key) {
                            *v = Value::String("…".to_owned());
                        }
                    }
                    // A send's statistics hold the time it was sent.
                    if let Some(stats) = body.get_mut("stats") {
                        let mut parsed: Value =
                            serde_json::from_str(stats.as_str().unwrap()).unwrap();
                        clock_free(&mut parsed);
                        *stats = parsed;
                    }
                }
                lines.push(action.to_string());
            }
        }
    }
    lines
}

/// The run IDs of the chain, in order.
fn run_ids(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("audit/chain.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let entry: Value = serde_json::from_str(l).unwrap();
            entry["run_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Replaces, at any depth, the fields that depend on the clock (times,
/// waits, the mock's port, the digest of the previous manifest, which
/// holds its times) with a placeholder.
fn clock_free(value: &mut Value) {
    const CLOCK: [&str; 7] = [
        "started_at",
        "finished_at",
        "sent_at",
        "base_url",
        "previous_manifest_sha256",
        "waited_ms",
        "duration_ms",
    ];
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if CLOCK.contains(&key.as_str()) && !v.is_null() {
                    *v = Value::String("…".to_owned());
                } else {
                    clock_free(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clock_free),
        _ => {}
    }
}

/// Every row of both tables, as DuckDB reads their data files, ordered by
/// message ID, with the send time masked.
fn parquet_rows(out: &Path) -> String {
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
for table in ["messages", "sends"]:
    cur = con.execute(
        f"SELECT * FROM read_parquet('{sys.argv[1]}/parquet/{table}/date=*/*.parquet', hive_partitioning=false) ORDER BY message_id"
    )
    names = [d[0] for d in cur.description]
    print(f"-- {table}: {names}")
    for row in cur.fetchall():
        record = dict(zip(names, row))
        if "sent_at" in record:
            record["sent_at"] = "…"
        print(json.dumps(record, default=str, ensure_ascii=False))
"#;
    run_python(python_with(&["duckdb"]), script, &[out])
}
