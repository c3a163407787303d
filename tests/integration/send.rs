//! `send` against the embedded mock: text and media DMs, validation before
//! any request, retries with one Idempotency-Key, a crash after the API
//! accepted, write-action polling, refusals, and batches.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use xquik_dm::commands::send::{self, BatchLine, SendOptions, SendRequest, SendStatus};
use xquik_dm::commands::verify;
use xquik_dm::mock::{Faults, MockConfig, MockServer, WriteMode};

use crate::{ACCOUNT, KEY, jsonl_records, user_id, world};

/// A world with two users: user1 accepts DMs, user2 does not (canDm false).
fn dm_world() -> MockConfig {
    let mut config = world(&[5, 5], 50);
    config.users[1].can_dm = Some(false);
    config
}

fn png(dir: &Path) -> PathBuf {
    let path = dir.join("pic.png");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\n-not-really-an-image-").unwrap();
    path
}

fn options(server: &MockServer, out: &Path, requests: Vec<SendRequest>) -> SendOptions {
    let mut options = crate::send_options(
        server,
        out,
        requests.into_iter().map(BatchLine::Valid).collect(),
    );
    options.batch = false;
    options
}

fn request(to: &str, text: &str, media: Option<&Path>) -> SendRequest {
    SendRequest::validate(ACCOUNT, to, text, media, None, None).unwrap()
}

fn calls(server: &MockServer, endpoint: &str) -> u64 {
    server
        .ledger()
        .calls_by_endpoint
        .get(endpoint)
        .copied()
        .unwrap_or(0)
}

fn send_records(out: &Path) -> Vec<Value> {
    jsonl_records(out)
        .into_iter()
        .filter(|r| r["record_type"] == "send")
        .collect()
}

#[tokio::test]
async fn a_text_send_and_a_media_send_write_the_right_records() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let text = "Hello \"there\"\n👩‍👩‍👧 مرحبا 漢字";
    let report = send::run(options(
        &server,
        &out,
        vec![
            request(&user_id(1), text, None),
            request("@user1", "with media", Some(&png(dir.path()))),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(calls(&server, "POST /x/media"), 1);
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 2);
    let sent = server.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent[0].media_ids.is_empty());
    assert_eq!(sent[1].media_ids.len(), 1);

    let records = send_records(&out);
    assert_eq!(records.len(), 2);
    let keys = |r: &Value| r.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    // Text-only: no media fields at all; SPEC §3 field set.
    let mut text_keys = keys(&records[0]);
    text_keys.sort();
    assert_eq!(
        text_keys,
        [
            "message_id",
            "message_text",
            "recipient_user_id",
            "record_type",
            "send_status",
            "sender_account",
            "sent_at",
            "success"
        ]
    );
    assert_eq!(records[0]["message_text"], text);
    assert_eq!(records[0]["message_id"], sent[0].message_id.as_str());
    assert_eq!(records[0]["recipient_user_id"], user_id(1));
    assert_eq!(records[0]["sender_account"], ACCOUNT);
    assert_eq!(records[0]["success"], true);
    assert_eq!(records[1]["media_id"], sent[1].media_ids[0].as_str());
    assert_eq!(
        records[1]["media_ids"],
        serde_json::json!([sent[1].media_ids[0]])
    );
    assert_eq!(records[1]["message_id"], sent[1].message_id.as_str());

    // The checkpoint: the guide's text-send and media checkpoints, no text.
    let checkpoint = std::fs::read_to_string(out.join("state/checkpoint.json")).unwrap();
    assert!(!checkpoint.contains("with media") && !checkpoint.contains("Hello"));
    let checkpoint: Value = serde_json::from_str(&checkpoint).unwrap();
    let sends = checkpoint["sends"].as_object().unwrap();
    assert_eq!(sends.len(), 2);
    let media_state = sends
        .values()
        .find(|s| s.get("media_id").is_some())
        .unwrap();
    assert_eq!(media_state["status"], "sent");
    assert_eq!(media_state["media_id"], sent[1].media_ids[0].as_str());
    assert_eq!(media_state["recorded"], true);

    // Parquet sends table and the audit trail verify.
    let report = verify::run(&out, None, None).unwrap();
    assert!(report.ok(), "{report}");
    let partitions = std::fs::read_dir(out.join("parquet/sends"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("date=")
        })
        .count();
    assert_eq!(partitions, 1);
}

#[tokio::test]
async fn rerunning_a_recorded_send_does_not_send_again() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(
        &server,
        dir.path(),
        vec![request(&user_id(1), "once", None)],
    );
    assert_eq!(send::run(opts.clone()).await.unwrap().exit_code(), 0);
    let again = send::run(opts).await.unwrap();
    assert_eq!(again.sends[0].status, SendStatus::AlreadySent);
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 1);
    assert_eq!(send_records(dir.path()).len(), 1);
    // A new job key is a new intended DM.
    let mut r = request(&user_id(1), "once", None);
    r.job_key = Some("second-time".into());
    let third = send::run(options(&server, dir.path(), vec![r]))
        .await
        .unwrap();
    assert_eq!(third.sends[0].status, SendStatus::Sent);
    assert_eq!(server.sent().len(), 2);
}

#[tokio::test]
async fn transient_failures_are_retried_with_one_key_and_one_dm() {
    let mut config = dm_world();
    config.faults = Faults {
        fail_first: 2,
        fail_status: Some(503),
        lost_write_responses: 1,
        retry_after_ms: 1,
        ..Faults::default()
    };
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = send::run(options(
        &server,
        dir.path(),
        vec![request(&user_id(1), "exactly once", None)],
    ))
    .await
    .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    // 2 scripted 503s, 1 write whose response was lost, 1 replay.
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 4);
    let sent = server.sent();
    assert_eq!(sent.len(), 1, "the DM took effect more than once");
    assert_eq!(
        report.sends[0].message_id.as_deref(),
        Some(sent[0].message_id.as_str())
    );
    assert_eq!(
        report.sends[0].idempotency_key.as_deref(),
        Some(sent[0].idempotency_key.as_str())
    );
    assert_eq!(send_records(dir.path()).len(), 1);

    let mut config = dm_world();
    config.faults = Faults {
        fail_first: 3,
        fail_status: Some(429),
        retry_after_ms: 1,
        ..Faults::default()
    };
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = send::run(options(
        &server,
        dir.path(),
        vec![request(&user_id(1), "after 429s", None)],
    ))
    .await
    .unwrap();
    assert_eq!(report.exit_code(), 0);
    assert_eq!(server.sent().len(), 1);
}

#[tokio::test]
async fn accepted_writes_are_polled_to_their_terminal_state() {
    let mut config = dm_world();
    config.write_mode = WriteMode::Accepted { polls: 3 };
    config.faults.retry_after_ms = 1;
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = send::run(options(
        &server,
        dir.path(),
        vec![request(&user_id(1), "polled", Some(&png(dir.path())))],
    ))
    .await
    .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    // The upload and the DM are each polled 3 times, then answered 200.
    assert_eq!(calls(&server, "GET /x/write-actions/{id}"), 8);
    let records = send_records(dir.path());
    assert_eq!(
        records[0]["message_id"],
        server.sent()[0].message_id.as_str()
    );
    assert_eq!(records[0]["send_status"], "success");
}

#[tokio::test]
async fn a_recipient_refusing_dms_is_refused_early_or_by_the_api_without_retry() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // canDm false from the lookup: no DM request at all.
    let report = send::run(options(
        &server,
        dir.path(),
        vec![request("@user2", "hi", None)],
    ))
    .await
    .unwrap();
    assert_eq!(report.exit_code(), 3);
    assert_eq!(report.sends[0].status, SendStatus::Refused);
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 0);

    // Overridden: the API answers 422 x_dm_not_allowed, which is not retried.
    let mut opts = options(&server, dir.path(), vec![request("@user2", "hi", None)]);
    opts.ignore_can_dm = true;
    let report = send::run(opts).await.unwrap();
    assert_eq!(report.exit_code(), 3, "{report}");
    assert_eq!(report.sends[0].code.as_deref(), Some("x_dm_not_allowed"));
    assert!(
        report.sends[0]
            .error
            .as_deref()
            .unwrap()
            .contains("allow messages")
    );
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 1);
    assert!(send_records(dir.path()).is_empty());
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state/checkpoint.json")).unwrap())
            .unwrap();
    let state = checkpoint["sends"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(state["status"], "failed");
    assert_eq!(state["error"], "x_dm_not_allowed");
}

#[tokio::test]
async fn running_out_of_credits_stops_the_batch_with_3() {
    let mut config = dm_world();
    config.credit_limit = Some(15);
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(
        &server,
        dir.path(),
        vec![
            request(&user_id(1), "one", None),
            request(&user_id(1), "two", None),
            request(&user_id(1), "three", None),
        ],
    );
    opts.batch = true;
    let report = send::run(opts).await.unwrap();
    assert_eq!(report.exit_code(), 3, "{report}");
    let statuses: Vec<SendStatus> = report.sends.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [
            SendStatus::Sent,
            SendStatus::Failed,
            SendStatus::NotAttempted
        ]
    );
    assert_eq!(
        report.sends[1].code.as_deref(),
        Some("insufficient_credits")
    );
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xquik-dm"));
    cmd.env("XQUIK_API_KEY", KEY)
        .env_remove("XQUIK_BASE_URL")
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_zero_requests() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let pic = png(dir.path());
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, "plain text").unwrap();
    let big = dir.path().join("big.png");
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.resize(6 << 20, 0);
    std::fs::write(&big, bytes).unwrap();
    let long = "x".repeat(10_001);
    let cases: Vec<Vec<String>> = vec![
        vec!["--to".into(), user_id(1), "--text".into(), "".into()],
        vec!["--to".into(), user_id(1), "--text".into(), "   ".into()],
        vec!["--to".into(), user_id(1), "--text".into(), long],
        vec![
            "--to".into(),
            "not a user".into(),
            "--text".into(),
            "hi".into(),
        ],
        vec![
            "--to".into(),
            user_id(1),
            "--text".into(),
            "hi".into(),
            "--media".into(),
            pic.display().to_string(),
            "--media-url".into(),
            "https://example.com/a.png".into(),
        ],
        vec![
            "--to".into(),
            user_id(1),
            "--text".into(),
            "hi".into(),
            "--media".into(),
            dir.path().join("missing.png").display().to_string(),
        ],
        vec![
            "--to".into(),
            user_id(1),
            "--text".into(),
            "hi".into(),
            "--media".into(),
            txt.display().to_string(),
        ],
        vec![
            "--to".into(),
            user_id(1),
            "--text".into(),
            "hi".into(),
            "--media".into(),
            big.display().to_string(),
        ],
        vec![
            "--to".into(),
            user_id(1),
            "--text".into(),
            "hi".into(),
            "--media-url".into(),
            "http://example.com/a.png".into(),
        ],
        vec![
            "--to".into(),
            user_id(1),
            "--text".into(),
            "hi".into(),
            "--idempotency-key".into(),
            "has space".into(),
        ],
    ];
    let base_url = server.base_url();
    for args in cases {
        let (base_url, out, args2) = (base_url.clone(), out.clone(), args.clone());
        let output = tokio::task::spawn_blocking(move || {
            bin()
                .args([
                    "--base-url",
                    &base_url,
                    "send",
                    "--account",
                    ACCOUNT,
                    "--out",
                ])
                .arg(&out)
                .args(&args2)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(server.ledger().calls_by_endpoint.values().sum::<u64>(), 0);
    assert_eq!(server.ledger().credits_total, 0);
    // Nothing was created either.
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_api_accepted_does_not_send_twice() {
    let server = MockServer::start(dm_world()).await.unwrap();
    // Every response is held back 30 s: the DM takes effect at once, the
    // answer never reaches the client before it is killed.
    server.set_faults(Faults {
        latency: Duration::from_secs(30),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let base_url = server.base_url();
    let send_cmd = move || {
        let mut cmd = bin();
        cmd.args([
            "--base-url",
            &base_url,
            "send",
            "--account",
            ACCOUNT,
            "--to",
            &user_id(1),
        ])
        .args(["--text", "accepted, then crashed", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd
    };
    let mut child = send_cmd().spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.sent().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the DM never reached the mock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        send_records(dir.path()).is_empty(),
        "a record was written before the answer"
    );

    server.set_faults(Faults::default());
    let cmd = send_cmd.clone();
    let status = tokio::task::spawn_blocking(move || cmd().status().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let sent = server.sent();
    assert_eq!(sent.len(), 1, "the rerun sent the DM again");
    let records = send_records(dir.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["message_id"], sent[0].message_id.as_str());
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 2);
    assert!(verify::run(dir.path(), None, None).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_good_and_bad_lines_reports_each_line() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    png(dir.path());
    let batch = dir.path().join("batch.jsonl");
    let lines = [
        serde_json::json!({"to": user_id(1), "text": "first", "key": "job-1"}),
        serde_json::json!({"to": user_id(1), "text": ""}),
        serde_json::json!({"to": "@user1", "text": "with a picture", "media": "pic.png"}),
        serde_json::json!({"to": user_id(1), "text": "two media", "media": "pic.png", "media_url": "https://example.com/x.png"}),
        serde_json::json!({"to": "@user2", "text": "refuses DMs"}),
        serde_json::json!({"text": "no recipient"}),
    ];
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.push_str("{not json\n");
    std::fs::write(&batch, text).unwrap();
    let (base_url, out) = (server.base_url(), dir.path().join("out"));
    let run_batch = move |extra: &'static [&'static str]| {
        bin()
            .args(["--base-url", &base_url, "send", "--account", ACCOUNT])
            .args(extra)
            .arg("--batch")
            .arg(&batch)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let run_again = run_batch.clone();
    // By default an invalid line refuses the whole batch: nothing is sent.
    let refused = tokio::task::spawn_blocking(move || run_batch(&[]))
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let statuses: Vec<String> = String::from_utf8(refused.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses,
        [
            "not_attempted",
            "invalid",
            "not_attempted",
            "invalid",
            "not_attempted",
            "invalid",
            "invalid"
        ]
    );
    assert_eq!(server.ledger().calls_by_endpoint.values().sum::<u64>(), 0);
    // With --skip-invalid the valid lines go out.
    let output = tokio::task::spawn_blocking(move || run_again(&["--skip-invalid"]))
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "sent", "invalid", "sent", "invalid", "refused", "invalid", "invalid"
        ]
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["line"], i + 1);
    }
    assert!(results[2]["media_id"].is_string());
    assert_eq!(server.sent().len(), 2);
    // No body in the per-line results.
    let all = serde_json::to_string(&results).unwrap();
    assert!(!all.contains("with a picture") && !all.contains("refuses DMs"));
}

#[tokio::test]
async fn an_unconnected_account_skips_its_own_lines_only() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ghost =
        |text: &str| SendRequest::validate("ghost", &user_id(1), text, None, None, None).unwrap();
    let mut opts = options(
        &server,
        dir.path(),
        vec![
            ghost("one"),
            request(&user_id(1), "from acme", None),
            ghost("two"),
        ],
    );
    opts.batch = true;
    let report = send::run(opts).await.unwrap();
    let statuses: Vec<SendStatus> = report.sends.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        [
            SendStatus::Failed,
            SendStatus::Sent,
            SendStatus::NotAttempted
        ]
    );
    assert_eq!(report.sends[0].code.as_deref(), Some("account_not_found"));
    assert_eq!(report.exit_code(), 4);
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 2);
}

#[tokio::test]
async fn a_rerun_after_a_definite_failure_tries_again_with_a_new_key() {
    let mut config = dm_world();
    config.credit_limit = Some(5);
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(
        &server,
        dir.path(),
        vec![request(&user_id(1), "after top-up", None)],
    );
    let first = send::run(opts.clone()).await.unwrap();
    assert_eq!(first.exit_code(), 3);
    assert_eq!(first.sends[0].code.as_deref(), Some("insufficient_credits"));
    // The person tops up; the rerun sends, under a new key (the old one
    // would only replay the refusal), exactly once.
    server.set_credit_limit(None);
    let second = send::run(opts.clone()).await.unwrap();
    assert_eq!(second.exit_code(), 0, "{second}");
    assert_ne!(
        second.sends[0].idempotency_key,
        first.sends[0].idempotency_key
    );
    assert_eq!(server.sent().len(), 1);
    let third = send::run(opts).await.unwrap();
    assert_eq!(third.sends[0].status, SendStatus::AlreadySent);
    assert_eq!(server.sent().len(), 1);
    assert_eq!(send_records(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_write_pending_at_the_deadline_is_partial_and_picked_up_by_polling() {
    let mut config = dm_world();
    config.write_mode = WriteMode::Accepted { polls: 12 };
    config.faults.retry_after_ms = 1;
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(
        &server,
        dir.path(),
        vec![request(&user_id(1), "slow to confirm", None)],
    );
    opts.api.retry.max_elapsed = Duration::from_millis(200);
    let first = send::run(opts.clone()).await.unwrap();
    assert_eq!(first.sends[0].code.as_deref(), Some("poll_deadline"));
    assert_eq!(first.exit_code(), 4, "{first}");
    assert!(send_records(dir.path()).is_empty());
    opts.api.retry.max_elapsed = Duration::from_secs(30);
    let second = send::run(opts).await.unwrap();
    assert_eq!(second.exit_code(), 0, "{second}");
    // Never submitted twice: the rerun polled the pending action.
    assert_eq!(calls(&server, "POST /x/dm/{userId}"), 1);
    assert_eq!(server.sent().len(), 1);
    assert_eq!(send_records(dir.path()).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_validation_errors_never_echo_a_message() {
    let server = MockServer::start(dm_world()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("batch.jsonl");
    // Shifted fields: the text ended up where the recipient and media go.
    std::fs::write(
        &batch,
        "{\"to\": \"Your PIN is 4411\", \"text\": \"x\"}\n{\"to\": \"7\", \"text\": \"y\", \"media\": \"Your PIN is 4411\"}\n",
    )
    .unwrap();
    let (base_url, out) = (server.base_url(), dir.path().join("out"));
    let outputs = tokio::task::spawn_blocking(move || {
        [
            bin()
                .args([
                    "--base-url",
                    &base_url,
                    "send",
                    "--account",
                    ACCOUNT,
                    "--to",
                    "7",
                ])
                .args(["--text", "Your", "PIN", "is", "4411", "--out"])
                .arg(&out)
                .output()
                .unwrap(),
            bin()
                .args([
                    "--base-url",
                    &base_url,
                    "send",
                    "--account",
                    ACCOUNT,
                    "--skip-invalid",
                    "--batch",
                ])
                .arg(&batch)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap(),
        ]
    })
    .await
    .unwrap();
    assert_eq!(outputs[0].status.code(), Some(2));
    for o in &outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains("PIN") && !text.contains("4411"), "{text}");
    }
    for rel in crate::files_under(&dir.path().join("out"), "audit") {
        let text = std::fs::read_to_string(dir.path().join("out").join(&rel)).unwrap();
        assert!(!text.contains("PIN"), "{rel}");
    }
}
