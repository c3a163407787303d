//! `xquik-dm load` into the machine's PostgreSQL 15, started by the test on
//! a private socket: the tables equal the JSONL exactly, each run is loaded
//! once, a killed load resumes exactly, a tampered segment stops the load
//! there, and bad input is refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use xquik_dm::commands::send::{self, BatchLine, SendRequest};
use xquik_dm::commands::sync;
use xquik_dm::mock::MockServer;

use crate::cli::{bin, run};
use crate::warehouse::Postgres;
use crate::{ACCOUNT, jsonl_records, sync_options, user_id, users, world};

/// `xquik-dm load --from OUT --to URL --json`.
fn load(out: &Path, url: &str) -> (i32, Value, String) {
    let (code, stdout, stderr) = run(bin()
        .args(["load", "--json", "--from"])
        .arg(out)
        .arg("--to")
        .arg(url));
    (
        code,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

/// The tables as JSON, keyed like the JSONL records: every column, times
/// as microseconds since the epoch.
pub fn tables(pg: &Postgres, cwd: &Path) -> (Vec<Value>, Vec<Value>) {
    tables_by(|sql| pg.query(cwd, sql))
}

/// [`tables`], read with `query` (SQL in, the one value out).
pub fn tables_by(query: impl Fn(&str) -> String) -> (Vec<Value>, Vec<Value>) {
    let messages = query(
        "SELECT coalesce(json_agg(json_build_object(
            'message_id', message_id, 'conversation_user_id', conversation_user_id,
            'account', account, 'sender_id', sender_id, 'receiver_id', receiver_id,
            'created_at', (extract(epoch FROM created_at) * 1000000)::bigint,
            'message_text', message_text, 'media_url', media_url)
            ORDER BY conversation_user_id, message_id), '[]') FROM xquik_dm.messages",
    );
    let sends = query(
        "SELECT coalesce(json_agg(json_build_object(
            'message_id', message_id, 'success', success, 'send_status', send_status,
            'sender_account', sender_account, 'recipient_user_id', recipient_user_id,
            'message_text', message_text,
            'sent_at', (extract(epoch FROM sent_at) * 1000000)::bigint,
            'media_id', media_id, 'media_ids', media_ids) ORDER BY message_id), '[]')
            FROM xquik_dm.sends",
    );
    (
        serde_json::from_str::<Vec<Value>>(&messages).unwrap(),
        serde_json::from_str::<Vec<Value>>(&sends).unwrap(),
    )
}

fn micros(text: &Value) -> Value {
    match text.as_str() {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_micros()
            .into(),
        None => Value::Null,
    }
}

/// What the tables must hold: the JSONL records of `out`, in the tables'
/// shape and order.
pub fn expected(out: &Path) -> (Vec<Value>, Vec<Value>) {
    let mut messages: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut sends: BTreeMap<String, Value> = BTreeMap::new();
    for r in jsonl_records(out) {
        let field = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
        if r["record_type"] == "history" {
            let key = (
                r["conversation_user_id"].as_str().unwrap().to_owned(),
                r["message_id"].as_str().unwrap().to_owned(),
            );
            messages.insert(
                key,
                serde_json::json!({
                    "message_id": field("message_id"),
                    "conversation_user_id": field("conversation_user_id"),
                    "account": field("account"),
                    "sender_id": field("sender_id"),
                    "receiver_id": field("receiver_id"),
                    "created_at": micros(&field("created_at")),
                    "message_text": field("message_text"),
                    "media_url": field("media_url"),
                }),
            );
        } else {
            sends.insert(
                r["message_id"].as_str().unwrap().to_owned(),
                serde_json::json!({
                    "message_id": field("message_id"),
                    "success": field("success"),
                    "send_status": field("send_status"),
                    "sender_account": field("sender_account"),
                    "recipient_user_id": field("recipient_user_id"),
                    "message_text": field("message_text"),
                    "sent_at": micros(&field("sent_at")),
                    "media_id": field("media_id"),
                    "media_ids": field("media_ids"),
                }),
            );
        }
    }
    (
        messages.into_values().collect(),
        sends.into_values().collect(),
    )
}

async fn send_two(server: &MockServer, out: &Path) {
    let picture = out.with_extension("png");
    std::fs::write(&picture, b"\x89PNG\r\n\x1a\n-not-really-an-image-").unwrap();
    let lines = vec![
        BatchLine::Valid(
            SendRequest::validate(
                ACCOUNT,
                &user_id(1),
                "thanks — ✓ \"quoted\"",
                None,
                None,
                None,
            )
            .unwrap(),
        ),
        BatchLine::Valid(
            SendRequest::validate(
                ACCOUNT,
                &user_id(2),
                "a picture",
                Some(&picture),
                None,
                None,
            )
            .unwrap(),
        ),
    ];
    let report = send::run(crate::send_options(server, out, lines))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tables_equal_the_jsonl_and_each_run_is_loaded_once() {
    let server = MockServer::start(world(&[230, 40], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let users = users(2);
    assert_eq!(
        sync::run(sync_options(&server, &out, &users))
            .await
            .unwrap()
            .exit_code(),
        0
    );
    send_two(&server, &out).await;
    // A compaction is a run of its own in the chain, with no records.
    let (code, _, stderr) = run(bin().args(["compact", "--out"]).arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let pg = Postgres::start();
    let (code, first, stderr) = load(&out, &pg.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["runs_loaded"], 3);
    assert_eq!(first["rows_inserted"], 272);
    assert_eq!(tables(&pg, dir.path()), expected(&out));

    // Again: nothing to do.
    let (code, again, _) = load(&out, &pg.url());
    assert_eq!(code, 0);
    assert_eq!(again["runs_loaded"], 0);
    assert_eq!(again["runs_already_loaded"], 3);

    // New messages (25, and the two DMs sent, which history now shows
    // too): only they are inserted.
    server.append_messages(ACCOUNT, &users[0], 25);
    assert_eq!(
        sync::run(sync_options(&server, &out, &users))
            .await
            .unwrap()
            .exit_code(),
        0
    );
    let (code, more, _) = load(&out, &pg.url());
    assert_eq!(code, 0);
    assert_eq!(more["runs_loaded"], 1);
    assert_eq!(more["rows_inserted"], 27);
    assert_eq!(tables(&pg, dir.path()), expected(&out));
    let ledger = pg.query(
        dir.path(),
        "SELECT count(*), sum(rows_inserted) FROM xquik_dm.loaded_runs",
    );
    assert_eq!(ledger, "4|299");
}

/// A segment changed after its run sealed: the load stops at that run
/// (exit 5, the file named); the runs before it stay loaded, it and later
/// ones are not.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_segment_stops_the_load_at_its_run() {
    let server = MockServer::start(world(&[100], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let users = users(1);
    sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    let first_len = std::fs::metadata(out.join("xquik-dm-handoff.jsonl"))
        .unwrap()
        .len();
    for _ in 0..2 {
        server.append_messages(ACCOUNT, &users[0], 10);
        sync::run(sync_options(&server, &out, &users))
            .await
            .unwrap();
    }
    // A byte of the second run's segment.
    let path = out.join("xquik-dm-handoff.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = first_len as usize + 20;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&path, bytes).unwrap();
    let pg = Postgres::start();
    let (code, report, stderr) = load(&out, &pg.url());
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(report["runs_loaded"], 1);
    assert_eq!(report["failure"]["path"], "xquik-dm-handoff.jsonl");
    assert_eq!(
        pg.query(dir.path(), "SELECT count(*) FROM xquik_dm.loaded_runs"),
        "1"
    );
    assert_eq!(
        pg.query(dir.path(), "SELECT count(*) FROM xquik_dm.messages"),
        "100"
    );
}

/// SIGKILL of `load` at random moments: each rerun leaves whole runs loaded
/// and the ledger consistent; the last one leaves the exact tables.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_load_resumes_exactly() {
    let server = MockServer::start(world(&[800, 600], 10)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let users = users(2);
    let mut options = sync_options(&server, &out, &users);
    options.max_pages = Some(1);
    // 80 runs of one page per conversation.
    loop {
        let report = sync::run(options.clone()).await.unwrap();
        if report.exit_code() == 0 {
            break;
        }
    }
    let pg = Postgres::start();
    let mut rng = fastrand::Rng::with_seed(5);
    let url = pg.url();
    let mut killed = 0;
    for _ in 0..6 {
        let mut child = bin()
            .args(["load", "--from"])
            .arg(&out)
            .arg("--to")
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(5..120)));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // Whole runs only: the ledger's rows are exactly what the tables
        // hold (once a load got as far as creating them).
        let created = pg.query(
            dir.path(),
            "SELECT to_regclass('xquik_dm.loaded_runs') IS NOT NULL
                AND to_regclass('xquik_dm.sends') IS NOT NULL",
        );
        if created == "t" {
            let consistent = pg.query(
                dir.path(),
                "SELECT (SELECT coalesce(sum(rows_inserted), 0) FROM xquik_dm.loaded_runs)
                      = (SELECT count(*) FROM xquik_dm.messages) + (SELECT count(*) FROM xquik_dm.sends)",
            );
            assert_eq!(consistent, "t");
        }
    }
    eprintln!("{killed} loads killed before they finished");
    assert!(killed >= 5, "only {killed} loads were interrupted");
    let (code, report, stderr) = load(&out, &url);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(tables(&pg, dir.path()), expected(&out));
    let chain = std::fs::read_to_string(out.join("audit/chain.jsonl")).unwrap();
    assert_eq!(
        pg.query(dir.path(), "SELECT count(*) FROM xquik_dm.loaded_runs"),
        chain.lines().count().to_string()
    );
    assert_eq!(report["rows_skipped"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_nothing_is_loaded() {
    let server = MockServer::start(world(&[20], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    sync::run(sync_options(&server, &out, &users(1)))
        .await
        .unwrap();
    // Nothing listening there (and no retry: --retry-connect 0).
    let (code, _, stderr) = run(bin()
        .args(["load", "--retry-connect", "0", "--from"])
        .arg(&out)
        .args([
            "--to",
            "host=/nonexistent/socket user=postgres dbname=postgres",
        ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot reach the database"), "{stderr}");
    // A folder that is not an output.
    let pg = Postgres::start_with(Some("right-password"));
    let (code, _, stderr) = load(dir.path(), &format!("{} password=right-password", pg.url()));
    assert_eq!(code, 2, "{stderr}");
    // The wrong password: refused (exit 3), and never printed.
    let (code, _, stderr) = load(&out, &format!("{} password=wrong-password", pg.url()));
    assert_eq!(code, 3, "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");
    // Nothing was loaded by any of them.
    let (code, report, stderr) = load(&out, &format!("{} password=right-password", pg.url()));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["runs_already_loaded"], 0);
}

/// A Parquet file of a run changed after it sealed: the load stops at that
/// run, naming the file, though the rows come from the JSONL.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_parquet_file_stops_the_load_too() {
    let server = MockServer::start(world(&[60], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    sync::run(sync_options(&server, &out, &users(1)))
        .await
        .unwrap();
    let parquet = crate::tamper_with_a_parquet_file(&out);
    let pg = Postgres::start();
    let (code, report, stderr) = load(&out, &pg.url());
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(report["failure"]["path"], parquet.as_str());
    assert_eq!(report["runs_loaded"], 0);
}

/// `xquik-dm forget --json --out OUT ARGS…`: the erasure run's ID.
fn forget(out: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(bin()
        .args(["forget", "--json", "--out"])
        .arg(out)
        .args(args)
        .args(["--reason", "erasure request 12 (ticket)"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    report["run_id"].as_str().unwrap().to_owned()
}

/// The ledger rows of `runs`: (run ID, rows deleted), in chain order.
fn ledger_of(pg: &Postgres, cwd: &Path, runs: &[&str]) -> String {
    let list = runs
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(",");
    pg.query(
        cwd,
        &format!(
            "SELECT string_agg(run_id || ':' || rows_deleted, ' ' ORDER BY seq) FROM xquik_dm.loaded_runs WHERE run_id IN ({list})"
        ),
    )
}

/// Load, forget (a whole conversation, with its sends), load again: the
/// erasure is applied once, in one transaction with its ledger row. Then
/// more runs and a second erasure (a single message), loaded together: the
/// runs before the last rewrite of the handoff file come from its new
/// generation. Both databases equal a fresh load of the folder, which
/// equals the JSONL; a rerun changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_loaded_before_an_erasure_equals_one_loaded_after_it() {
    let server = MockServer::start(world(&[120, 60, 40], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let users = users(3);
    let synced = sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    assert_eq!(synced.exit_code(), 0);
    send_two(&server, &out).await;
    let pg = Postgres::start();
    let (code, first, stderr) = load(&out, &pg.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["rows_inserted"], 222);

    // The conversation with user 2: its 60 messages and the DM sent to it.
    let forgotten = forget(&out, &["--user", &users[1]]);
    let (code, applied, stderr) = load(&out, &pg.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(applied["runs_loaded"], 1);
    assert_eq!(applied["erasures_applied"], 1);
    assert_eq!(applied["rows_deleted"], 61);
    assert_eq!(applied["rows_inserted"], 0);
    assert_eq!(tables(&pg, dir.path()), expected(&out));
    assert_eq!(
        ledger_of(&pg, dir.path(), &[&forgotten]),
        format!("{forgotten}:61")
    );

    // More messages, a single message erased, more messages again.
    let (one, three) = (vec![users[0].clone()], vec![users[2].clone()]);
    server.append_messages(ACCOUNT, &users[0], 7);
    sync::run(sync_options(&server, &out, &one)).await.unwrap();
    let message = jsonl_records(&out)
        .into_iter()
        .find(|r| r["record_type"] == "history" && r["conversation_user_id"] == users[0].as_str())
        .unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let single = forget(&out, &["--message", &message]);
    server.append_messages(ACCOUNT, &users[2], 5);
    sync::run(sync_options(&server, &out, &three))
        .await
        .unwrap();

    let (code, later, stderr) = load(&out, &pg.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(later["runs_loaded"], 3);
    assert_eq!(later["erasures_applied"], 1);
    assert_eq!(later["rows_deleted"], 1);
    let (code, _, stderr) = run(bin().arg("verify").arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let loaded_before = tables(&pg, dir.path());
    assert_eq!(loaded_before, expected(&out));
    assert!(
        !loaded_before
            .0
            .iter()
            .any(|m| m["message_id"] == message.as_str())
    );

    // A fresh database: every run at once.
    let fresh = Postgres::start();
    let (code, all, stderr) = load(&out, &fresh.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(all["runs_loaded"], 6);
    assert_eq!(all["erasures_applied"], 2);
    assert_eq!(tables(&fresh, dir.path()), loaded_before);
    // Each erasure once in each ledger; the fresh load had nothing to
    // delete.
    assert_eq!(
        ledger_of(&pg, dir.path(), &[&forgotten, &single]),
        format!("{forgotten}:61 {single}:1")
    );
    assert_eq!(
        ledger_of(&fresh, dir.path(), &[&forgotten, &single]),
        format!("{forgotten}:0 {single}:0")
    );

    // A rerun changes nothing.
    for db in [&pg, &fresh] {
        let (code, again, _) = load(&out, &db.url());
        assert_eq!(code, 0);
        assert_eq!(again["runs_loaded"], 0);
        assert_eq!(again["runs_already_loaded"], 6);
        assert_eq!(tables(db, dir.path()), loaded_before);
    }
}

/// An erasure killed right after its commit point (its manifest chained,
/// its new generation staged, the handoff file still the old one: built as
/// the erasure tests build it): a load of the runs up to it stops with a
/// message that says so (exit 5, nothing loaded), and once the next run
/// has installed the generation, the load equals the JSONL.
#[tokio::test(flavor = "multi_thread")]
async fn a_load_waits_for_an_erasure_killed_before_it_installed_its_generation() {
    let server = MockServer::start(world(&[40, 30], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (out, killed) = (dir.path().join("out"), dir.path().join("killed"));
    let users = users(2);
    sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    crate::copy_dir(&out, &killed);
    let run_id = forget(&out, &["--user", &users[1]]);
    std::fs::copy(
        out.join("audit/chain.jsonl"),
        killed.join("audit/chain.jsonl"),
    )
    .unwrap();
    for sub in ["audit/runs", "parquet"] {
        for file in crate::files_under(&out, sub) {
            if file.contains(&run_id) {
                std::fs::copy(out.join(&file), killed.join(&file)).unwrap();
            }
        }
    }
    let staged = format!(".xquik-dm-handoff.jsonl.{run_id}.generation");
    std::fs::copy(out.join("xquik-dm-handoff.jsonl"), killed.join(&staged)).unwrap();
    let path = killed.join("state/checkpoint.json");
    let mut checkpoint: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    checkpoint["run"] = run_id.clone().into();
    checkpoint["unsealed"] = serde_json::json!([{"run": run_id, "dirs": []}]);
    std::fs::write(&path, serde_json::to_vec(&checkpoint).unwrap()).unwrap();

    let pg = Postgres::start();
    let (code, report, stderr) = load(&killed, &pg.url());
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(report["runs_loaded"], 0);
    assert_eq!(report["failure"]["path"], staged.as_str());
    let reason = report["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("interrupted before it replaced"),
        "{reason}"
    );
    assert_eq!(
        pg.query(dir.path(), "SELECT count(*) FROM xquik_dm.loaded_runs"),
        "0"
    );

    // The next run installs the generation; then everything loads.
    sync::run(sync_options(&server, &killed, &users[..1]))
        .await
        .unwrap();
    let (code, report, stderr) = load(&killed, &pg.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["erasures_applied"], 1);
    assert_eq!(tables(&pg, dir.path()), expected(&killed));
    assert_eq!(tables(&pg, dir.path()).0.len(), 40);
}

/// An erasure run whose rows file was changed after it sealed: the load
/// stops there (exit 5, the rows file named) and deletes nothing; the runs
/// before it stay loaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_erasure_stops_the_load_and_deletes_nothing() {
    let server = MockServer::start(world(&[30, 20], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let users = users(2);
    sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    let pg = Postgres::start();
    assert_eq!(load(&out, &pg.url()).0, 0);
    let loaded = tables(&pg, dir.path());
    let run_id = forget(&out, &["--user", &users[1]]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("audit/runs/{run_id}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let rows = manifest["audit_rows"]["path"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(out.join(&rows)).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    std::fs::write(out.join(&rows), text.replacen(&first, "", 1)).unwrap();

    let (code, report, stderr) = load(&out, &pg.url());
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(report["failure"]["path"], rows.as_str(), "{report}");
    assert_eq!(report["runs_loaded"], 0);
    assert_eq!(tables(&pg, dir.path()), loaded);
    assert_eq!(
        pg.query(dir.path(), "SELECT count(*) FROM xquik_dm.loaded_runs"),
        "1"
    );
}
