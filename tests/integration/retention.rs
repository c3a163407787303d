//! Retention (`sync --retain-days N`): a 30-day window over messages spread
//! across 90 days takes out exactly the old ones, from the JSONL and the
//! Parquet files, at most once a day; `verify` passes; the report says
//! retention is in force; bad windows are refused.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;

use arrow_array::{Array, StringArray};
use chrono::{DateTime, Duration, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use xquik_dm::commands::sync::{self, SyncOptions, Target};
use xquik_dm::store::RunStamp;

use crate::cli::{bin, run};
use crate::scripted::{Answer, Scripted};
use crate::{ACCOUNT, KEY, files_under, jsonl_records, user_id};

/// X's snowflake epoch, in Unix milliseconds.
const SNOWFLAKE_EPOCH_MS: i64 = 1_288_834_974_657;

/// A message ID carrying the time `at` (and `n` in its low bits).
fn snowflake(at: DateTime<Utc>, n: u64) -> String {
    ((((at.timestamp_millis() - SNOWFLAKE_EPOCH_MS) as u64) << 22) | n).to_string()
}

/// The run's clock: the syncs of this test start at chosen instants.
fn noon() -> DateTime<Utc> {
    "2026-06-15T12:00:00Z".parse().unwrap()
}

/// One message of the scripted conversation: its ID carries `id_at`, its
/// `createdAt` is `created` (absent when `None`).
fn message(n: u64, id_at: DateTime<Utc>, created: Option<DateTime<Utc>>) -> Value {
    let mut m = json!({
        "id": snowflake(id_at, n),
        "senderId": user_id(1),
        "receiverId": "1612345678901234567",
        "text": format!("retention probe {n}"),
    });
    if let Some(at) = created {
        m["createdAt"] = at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into();
    }
    m
}

/// 92 messages: one a day for 90 days before noon (each an hour before its
/// day's noon; those of days 5, 15, …, 85 without `createdAt`, so their
/// ID's time decides), and two whose `createdAt` and ID disagree (the
/// `createdAt` decides). Returns the page and the texts that a 30-day
/// window keeps.
fn history() -> (Value, BTreeSet<String>) {
    let mut messages = Vec::new();
    let mut kept = BTreeSet::new();
    for d in 0..90u64 {
        let at = noon() - Duration::days(d as i64) - Duration::hours(1);
        let created = (d % 10 != 5).then_some(at);
        messages.push(message(d, at, created));
        if d < 30 {
            kept.insert(format!("retention probe {d}"));
        }
    }
    // Old by its createdAt, recent by its ID: it goes.
    messages.push(message(
        100,
        noon() - Duration::days(1),
        Some(noon() - Duration::days(60)),
    ));
    // Recent by its createdAt, old by its ID: it stays.
    messages.push(message(
        101,
        noon() - Duration::days(60),
        Some(noon() - Duration::days(2)),
    ));
    kept.insert("retention probe 101".into());
    messages.sort_by_key(|m| std::cmp::Reverse(m["id"].as_str().unwrap().parse::<u64>().unwrap()));
    let page = json!({"messages": messages, "has_next_page": false, "next_cursor": ""});
    (page, kept)
}

/// A sync of the scripted conversation into `out`, started at `at`, with a
/// 30-day window.
fn options(server: &Scripted, out: &Path, at: DateTime<Utc>) -> SyncOptions {
    crate::init();
    let mut api =
        xquik_dm::ClientConfig::new(server.base_url(), xquik_dm::ApiKey::new(KEY).unwrap());
    api.retry = xquik_dm::RetryPolicy::fast();
    let target = Target {
        account: xquik_dm::Account::parse(ACCOUNT).unwrap(),
        user: xquik_dm::UserRef::Id(user_id(1)),
    };
    let mut options = SyncOptions::new(api, out.to_owned(), vec![target]);
    options.commit_interval = std::time::Duration::from_millis(5);
    options.stamp = Some(RunStamp::at(at));
    options.retain_days = Some(30);
    options
}

/// The texts of the history records in the JSONL.
fn jsonl_texts(out: &Path) -> BTreeSet<String> {
    jsonl_records(out)
        .iter()
        .filter_map(|r| r["message_text"].as_str().map(str::to_owned))
        .collect()
}

/// The texts of every row of every `parquet/messages/` file, read back.
fn parquet_texts(out: &Path) -> BTreeSet<String> {
    let mut texts = BTreeSet::new();
    for path in files_under(out, "parquet/messages") {
        if !path.ends_with(".parquet") {
            continue;
        }
        let file = File::open(out.join(&path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column_by_name("message_text").unwrap();
            let column = column.as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..column.len() {
                assert!(
                    texts.insert(column.value(i).to_owned()),
                    "a row twice in Parquet"
                );
            }
        }
    }
    texts
}

/// Manifests of erasure runs in the chain, oldest first.
fn erasures(out: &Path) -> Vec<Value> {
    let chain = std::fs::read_to_string(out.join("audit/chain.jsonl")).unwrap();
    chain
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|entry| {
            let path = out.join(entry["manifest"].as_str().unwrap());
            serde_json::from_slice::<Value>(&std::fs::read(path).unwrap()).unwrap()
        })
        .filter(|m| m.get("erasure").is_some_and(|e| !e.is_null()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_day_window_erases_exactly_the_old_messages_once_a_day() {
    let (page, kept) = history();
    let server = Scripted::start(vec![Answer::json(200, page); 40]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    let first = sync::run(options(&server, &out, noon())).await.unwrap();
    assert_eq!(first.exit_code(), 0, "{first}");
    assert_eq!(first.new_messages, 92);
    let retention = first.retention.as_ref().expect("retention ran");
    assert_eq!(retention.erasure.erased, 61, "{retention}");
    assert_eq!(retention.erasure.retain_days, Some(30));
    assert_eq!(jsonl_texts(&out), kept);
    assert_eq!(parquet_texts(&out), kept);
    let sealed = erasures(&out);
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0]["erasure"]["kind"], "retention");
    assert_eq!(sealed[0]["erasure"]["erased"], 61);

    // Later the same day: no second erasure, nothing written again
    // (the API still serves every old message).
    let again = sync::run(options(&server, &out, noon() + Duration::hours(3)))
        .await
        .unwrap();
    assert_eq!(again.exit_code(), 0, "{again}");
    assert!(again.retention.is_none());
    assert_eq!(again.new_messages, 0);
    assert_eq!(erasures(&out).len(), 1);
    assert_eq!(jsonl_texts(&out), kept);

    // The next day, the window has moved by a day: day 29's message goes.
    let next = sync::run(options(&server, &out, noon() + Duration::days(1)))
        .await
        .unwrap();
    assert_eq!(next.exit_code(), 0, "{next}");
    assert_eq!(next.retention.as_ref().unwrap().erasure.erased, 1);
    let mut kept = kept;
    kept.remove("retention probe 29");
    assert_eq!(jsonl_texts(&out), kept);
    assert_eq!(parquet_texts(&out), kept);
    assert_eq!(erasures(&out).len(), 2);

    let (code, stdout, stderr) = run(bin().arg("verify").arg(&out));
    assert_eq!(code, 0, "{stdout}{stderr}");

    // The report: retention in force, its two runs, no user ID unless asked.
    let (code, stdout, stderr) = run(bin().args(["report", "--json"]).arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let privacy = &report["privacy"];
    assert_eq!(privacy["retention"]["in_force"], true, "{privacy}");
    assert_eq!(privacy["retention"]["retain_days"], 30);
    assert_eq!(privacy["retention"]["runs"], 2);
    assert_eq!(privacy["erased"], 62);
    let rows = privacy["erasures"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["erased"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [61, 1]
    );
    assert!(
        rows.iter()
            .all(|r| r["kind"] == "retention" && r.get("ids").is_none())
    );
    let (_, stdout, _) = run(bin().args(["report", "--json", "--erased-ids"]).arg(&out));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let ids = &report["privacy"]["erasures"][0]["ids"]["by_conversation"];
    assert_eq!(ids[user_id(1)], 61, "{ids}");
}

/// A window of 0 days, or one past a century, is refused before anything
/// happens (exit 2), on the command line and in a job file.
#[test]
fn bad_windows_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sync = |extra: &[&str]| {
        run(bin()
            .env("XQUIK_API_KEY", KEY)
            .args(["sync", "--account", ACCOUNT, "--user", "1000001", "--out"])
            .arg(&out)
            .args(extra))
    };
    for bad in ["0", "36501", "-1", "thirty"] {
        let (code, _, stderr) = sync(&[&format!("--retain-days={bad}")]);
        assert_eq!(code, 2, "--retain-days {bad}: {stderr}");
        assert!(stderr.contains("retain-days"), "{stderr}");
    }
    let job = dir.path().join("job.toml");
    std::fs::write(&job, "retain_days = 0\n").unwrap();
    let (code, _, stderr) = sync(&["--job", job.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("retain-days"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a refused run");
}

/// The day's retention run is remembered by its ID: when its manifest is
/// missing (the erasure failed, or was killed and undone), a later sync the
/// same day applies retention again, and then not again.
#[tokio::test(flavor = "multi_thread")]
async fn a_retention_run_that_did_not_seal_is_tried_again_the_same_day() {
    let (page, kept) = history();
    let server = Scripted::start(vec![Answer::json(200, page); 40]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let first = sync::run(options(&server, &out, noon())).await.unwrap();
    assert_eq!(first.retention.as_ref().unwrap().erasure.erased, 61);

    // As if that erasure had never sealed: the state names a run that is
    // not in the chain.
    let path = out.join("state/checkpoint.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(state["retention"]["last_day"], "2026-06-15");
    state["retention"]["run"] = "20260615T120000Z-00000000000000aa".into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let retried = sync::run(options(&server, &out, noon() + Duration::hours(1)))
        .await
        .unwrap();
    assert_eq!(retried.exit_code(), 0, "{retried}");
    let retention = retried.retention.as_ref().expect("retention tried again");
    assert_eq!(retention.erasure.erased, 0);
    let then = sync::run(options(&server, &out, noon() + Duration::hours(2)))
        .await
        .unwrap();
    assert!(then.retention.is_none());
    assert_eq!(erasures(&out).len(), 2);
    assert_eq!(jsonl_texts(&out), kept);
}
