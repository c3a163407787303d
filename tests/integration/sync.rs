//! `sync` against the embedded mock: each guarantee of SPEC §4 checked
//! against the mock's ground truth and credits ledger.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use arrow_array::{Array, StringArray, TimestampMicrosecondArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use xquik_dm::commands::sync::{self, ConversationStatus, SyncReport, Target};
use xquik_dm::mock::{Faults, MockServer};
use xquik_dm::{Account, UserRef};

use crate::{ACCOUNT, assert_ground_truth, history_by_conversation, user_id, users, world};

use crate::sync_options as options;

/// History credits the mock has charged so far.
pub fn history_credits(server: &MockServer) -> u64 {
    server
        .ledger()
        .credits_by_endpoint
        .get("GET /x/dm/{userId}/history")
        .copied()
        .unwrap_or(0)
}

fn status_of<'a>(report: &'a SyncReport, user: &str) -> &'a sync::ConversationReport {
    report
        .conversations
        .iter()
        .find(|c| c.user == user)
        .unwrap()
}

#[tokio::test]
async fn faulty_pages_under_transient_errors_give_exactly_the_ground_truth() {
    let mut config = world(&[700, 333, 1, 0, 1200], 50);
    config.faults = Faults {
        transient_rate: 0.2,
        retry_after_ms: 1,
        overlap: 7,
        unordered: true,
        empty_page_every: Some(4),
        ..Faults::default()
    };
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(5);
    let report = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert!(report.retries > 0, "the fault knob produced no retry");
    assert!(
        report.duplicates_dropped > 0,
        "overlapping pages produced no duplicate"
    );
    assert_eq!(report.new_messages, 700 + 333 + 1 + 1200);
    assert_ground_truth(dir.path(), &server, &users);
    assert_parquet_equals_jsonl(dir.path());
}

#[tokio::test]
async fn repeated_and_dangling_cursors_end_with_a_reason() {
    for (faults, reason) in [
        (
            Faults {
                repeated_cursor_after: Some(3),
                ..Faults::default()
            },
            "repeated_cursor",
        ),
        (
            Faults {
                dangling_cursor_after: Some(2),
                ..Faults::default()
            },
            "empty_cursor",
        ),
    ] {
        let mut config = world(&[1000], 50);
        config.faults = faults;
        let server = MockServer::start(config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let users = users(1);
        let report = tokio::time::timeout(
            Duration::from_secs(20),
            sync::run(options(&server, dir.path(), &users)),
        )
        .await
        .expect("paging must end")
        .unwrap();
        let c = status_of(&report, &users[0]);
        assert_eq!(c.status, ConversationStatus::Partial, "{report}");
        assert_eq!(c.reason, reason);
        assert!(report.pages <= 6, "{} pages", report.pages);
        assert_eq!(report.exit_code(), 4);
        // What was fetched is written once, and the checkpoint says why it stopped.
        history_by_conversation(dir.path());
        let checkpoint: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("state/checkpoint.json")).unwrap(),
        )
        .unwrap();
        let conv = &checkpoint["conversations"][format!("{ACCOUNT}/{}", users[0])];
        assert_eq!(conv["reason"], reason);
        // The broken cursor is not followed again: the next run checks the
        // newest page only, and is clean.
        let again = sync::run(options(&server, dir.path(), &users))
            .await
            .unwrap();
        assert_eq!(again.exit_code(), 0, "{again}");
        assert_eq!(again.pages, 1);
        history_by_conversation(dir.path());
    }
}

#[tokio::test]
async fn an_account_level_error_stops_that_account_only() {
    let mut config = world(&[100, 100, 100], 50);
    config.accounts.push(xquik_dm::mock::MockAccount {
        handle: "other".into(),
        user_id: "1612345678901234568".into(),
    });
    config.conversations.push(xquik_dm::mock::MockConversation {
        account: "other".into(),
        user_id: user_id(9),
        messages: 80,
    });
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(3);
    let mut opts = options(&server, dir.path(), &users);
    opts.concurrency = 1;
    // "ghost" is not connected: 404 account_not_found.
    for (account, user) in [
        ("ghost", user_id(2)),
        ("ghost", user_id(3)),
        ("other", user_id(9)),
    ] {
        opts.targets.push(Target {
            account: Account::parse(account).unwrap(),
            user: UserRef::Id(user),
        });
    }
    let report = sync::run(opts).await.unwrap();
    assert_eq!(report.exit_code(), 4, "{report}");
    let ghost: Vec<_> = report
        .conversations
        .iter()
        .filter(|c| c.account == "ghost")
        .collect();
    assert_eq!(ghost.len(), 2);
    for c in ghost {
        assert_eq!(c.status, ConversationStatus::Failed);
        assert_eq!(c.reason, "account_not_found");
    }
    // One request found the account missing; its other conversation was
    // not tried. Every other conversation is complete.
    assert_eq!(
        server.ledger().responses_by_status.get(&404).copied(),
        Some(1)
    );
    assert_eq!(
        report
            .conversations
            .iter()
            .filter(|c| c.status == ConversationStatus::Complete)
            .count(),
        4
    );
    assert_ground_truth(dir.path(), &server, &users);
}

#[tokio::test]
async fn one_forbidden_conversation_leaves_the_others_complete() {
    let mut config = world(&[120, 80, 60], 50);
    config.faults.forbidden = vec![(ACCOUNT.to_owned(), user_id(2))];
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(3);
    let report = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 4, "{report}");
    let failed = status_of(&report, &users[1]);
    assert_eq!(failed.status, ConversationStatus::Failed);
    assert_eq!(failed.reason, "dm_not_permitted");
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("participates in this conversation")
    );
    assert_ground_truth(dir.path(), &server, &[users[0].clone(), users[2].clone()]);
}

#[tokio::test]
async fn a_single_conversation_refused_for_a_person_exits_3() {
    let mut config = world(&[10], 50);
    config.faults.forbidden = vec![(ACCOUNT.to_owned(), user_id(1))];
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = sync::run(options(&server, dir.path(), &users(1)))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 3, "{report}");
}

#[tokio::test]
async fn running_out_of_credits_stops_with_3_and_the_rerun_completes() {
    let mut config = world(&[400, 400, 400], 50);
    config.credit_limit = Some(500);
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(3);
    let report = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 3, "{report}");
    assert!(
        report
            .stopped_by
            .as_deref()
            .unwrap()
            .contains("insufficient_credits")
    );
    assert!(report.new_messages <= 500);
    let written_before: usize = history_by_conversation(dir.path())
        .values()
        .map(|c| c.len())
        .sum();
    assert_eq!(
        written_before as u64, report.new_messages,
        "committed work is kept"
    );

    server.set_credit_limit(None);
    let report = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_ground_truth(dir.path(), &server, &users);
}

#[tokio::test]
async fn max_credits_stops_before_exceeding_and_the_rerun_continues() {
    let server = MockServer::start(world(&[300, 300], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(2);
    let mut opts = options(&server, dir.path(), &users);
    opts.max_credits = Some(260);
    let report = sync::run(opts.clone()).await.unwrap();
    assert_eq!(report.exit_code(), 4, "{report}");
    assert!(report.credits_total() <= 260, "{report}");
    assert!(history_credits(&server) <= 260);
    assert!(
        report
            .conversations
            .iter()
            .any(|c| c.reason == "max_credits")
    );

    opts.max_credits = None;
    let report = sync::run(opts).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_ground_truth(dir.path(), &server, &users);
}

#[tokio::test]
async fn an_incremental_rerun_fetches_only_new_messages_and_the_boundary_page() {
    let page = 50u64;
    let server = MockServer::start(world(&[500, 260, 75, 0], page as usize))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(4);
    let first = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(first.exit_code(), 0);
    assert_eq!(first.credits_total(), 500 + 260 + 75);

    // Nothing new: one page per conversation, and nothing written.
    let before = history_credits(&server);
    let idle = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(idle.new_messages, 0);
    assert_eq!(idle.pages, 4);
    assert!(history_credits(&server) - before <= 3 * page);

    // New messages in three conversations (one of them was empty).
    let arrived = [(0usize, 120u64), (1, 3), (3, 10)];
    for (i, n) in arrived {
        server.append_messages(ACCOUNT, &users[i], n);
    }
    let before = history_credits(&server);
    let calls_before = server.ledger().calls_by_endpoint["GET /x/dm/{userId}/history"];
    let rerun = sync::run(options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(rerun.exit_code(), 0, "{rerun}");
    assert_eq!(rerun.new_messages, 133);
    let spent = history_credits(&server) - before;
    let new: u64 = arrived.iter().map(|(_, n)| n).sum();
    // New messages plus at most one page of known ones per conversation.
    assert!(
        spent >= new && spent <= new + 4 * page,
        "spent {spent} for {new} new"
    );
    let calls = server.ledger().calls_by_endpoint["GET /x/dm/{userId}/history"] - calls_before;
    // 120 new at 50 per page: 3 pages; others 1 page each.
    assert_eq!(calls, 3 + 1 + 1 + 1);
    assert_ground_truth(dir.path(), &server, &users);
}

#[tokio::test]
async fn an_interrupted_backfill_is_finished_by_the_next_run() {
    let server = MockServer::start(world(&[600], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(1);
    let mut opts = options(&server, dir.path(), &users);
    opts.max_credits = Some(200);
    let partial = sync::run(opts.clone()).await.unwrap();
    assert_eq!(partial.new_messages, 200);
    server.append_messages(ACCOUNT, &users[0], 30);
    opts.max_credits = None;
    let rest = sync::run(opts).await.unwrap();
    assert_eq!(rest.exit_code(), 0, "{rest}");
    assert_eq!(rest.new_messages, 430);
    assert_ground_truth(dir.path(), &server, &users);
}

#[tokio::test]
async fn usernames_are_resolved_once_and_remembered() {
    let server = MockServer::start(world(&[20], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&server, dir.path(), &[]);
    opts.targets = vec![Target {
        account: Account::parse(ACCOUNT).unwrap(),
        user: UserRef::Username("User1".into()),
    }];
    sync::run(opts.clone()).await.unwrap();
    sync::run(opts).await.unwrap();
    assert_eq!(server.ledger().calls_by_endpoint["GET /x/users/{id}"], 1);
    assert_ground_truth(dir.path(), &server, &users(1));
}

#[tokio::test]
async fn outputs_are_private() {
    let server = MockServer::start(world(&[30], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    sync::run(options(&server, &out, &users(1))).await.unwrap();
    let mut seen = 0;
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700,
            "{d:?}"
        );
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{:?}", e.path());
                seen += 1;
            }
        }
    }
    assert!(seen >= 4, "{seen} files");
}

#[tokio::test]
async fn a_folder_in_use_is_refused_before_any_request() {
    let server = MockServer::start(world(&[30], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = xquik_dm::storage::Location::from(dir.path())
        .open()
        .unwrap();
    let _held = xquik_dm::store::Store::open(&storage, &xquik_dm::store::RunStamp::now()).unwrap();
    let err = sync::run(options(&server, dir.path(), &users(1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another xquik-dm run"), "{err}");
    assert_eq!(server.ledger().calls_by_endpoint.values().sum::<u64>(), 0);
}

#[tokio::test]
async fn an_unusable_output_folder_is_refused_before_any_request() {
    let server = MockServer::start(world(&[30], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let err = sync::run(options(&server, &file, &users(1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not-a-folder"), "{err}");
    assert_eq!(server.ledger().calls_by_endpoint.values().sum::<u64>(), 0);
}

/// Reads every Parquet file of `out/parquet/messages` back and checks it
/// holds exactly the JSONL's history records.
pub fn assert_parquet_equals_jsonl(out: &Path) {
    let jsonl = history_by_conversation(out);
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    let mut stack = vec![out.join("parquet/messages")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap();
            if p.is_dir() && name == "_delta_log" {
                // The table's Delta log: not rows (see tests/integration/delta.rs).
                continue;
            }
            if p.is_dir() {
                assert!(name.starts_with("date="), "{name}");
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for path in files {
        assert!(path.extension().is_some_and(|e| e == "parquet"), "{path:?}");
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (ids, convs, texts, media) = (
                col("message_id"),
                col("conversation_user_id"),
                col("message_text"),
                col("media_url"),
            );
            let created = batch
                .column_by_name("created_at")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            for i in 0..batch.num_rows() {
                let key = (convs.value(i).to_owned(), ids.value(i).to_owned());
                assert!(seen.insert(key.clone()), "duplicate row {key:?} in Parquet");
                let r = &jsonl[&key.0][&key.1];
                let text = (!texts.is_null(i)).then(|| texts.value(i));
                assert_eq!(text, r["message_text"].as_str());
                let m = (!media.is_null(i)).then(|| media.value(i));
                assert_eq!(m, r["media_url"].as_str());
                match r["created_at"].as_str() {
                    None => assert!(created.is_null(i)),
                    Some(t) => assert_eq!(
                        created.value(i),
                        chrono::DateTime::parse_from_rfc3339(t)
                            .unwrap()
                            .timestamp_micros()
                    ),
                }
            }
        }
    }
    let total: usize = jsonl.values().map(|c| c.len()).sum();
    assert_eq!(seen.len(), total, "Parquet rows vs JSONL history records");
}

/// A tmpfs of a given size, mounted on a temporary folder; unmounted on
/// drop. The tests run as root (as CI does), which may mount.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs failed (the tests need root)"
        );
        SmallDisk { dir }
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_with_a_clear_error_and_the_rerun_completes() {
    let server = MockServer::start(world(&[3000, 3000], 100)).await.unwrap();
    let users = users(2);
    let disk = SmallDisk::mount("700k");
    let out = disk.dir.path().join("out");
    let err = sync::run(options(&server, &out, &users)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("No space left on device"), "{text}");
    assert_eq!(err.exit_code(), 4);
    // What was committed is consistent: the checkpoint never points past
    // the data, and every committed record is whole.
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("state/checkpoint.json")).unwrap()).unwrap();
    let committed = checkpoint["jsonl"]["committed_bytes"].as_u64().unwrap();
    let on_disk = std::fs::metadata(out.join("xquik-dm-handoff.jsonl"))
        .unwrap()
        .len();
    assert!(
        committed > 0 && committed <= on_disk,
        "{committed} vs {on_disk}"
    );

    disk.grow("64m");
    let report = sync::run(options(&server, &out, &users)).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_ground_truth(&out, &server, &users);
    assert_parquet_equals_jsonl(&out);
    assert!(
        xquik_dm::commands::verify::run(&out, None, None)
            .unwrap()
            .ok()
    );
}

#[tokio::test]
async fn a_429_storm_ends_in_bounded_time_as_partial_and_the_rerun_completes() {
    let mut config = world(&[200, 200], 50);
    config.faults = Faults {
        fail_first: 1_000_000,
        fail_status: Some(429),
        retry_after_ms: 1,
        ..Faults::default()
    };
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = users(2);
    let mut opts = options(&server, dir.path(), &users);
    opts.api.retry.max_attempts = 4;
    let report = tokio::time::timeout(Duration::from_secs(20), sync::run(opts.clone()))
        .await
        .expect("a 429 storm must not hang the job")
        .unwrap();
    assert_eq!(report.exit_code(), 4, "{report}");
    for c in &report.conversations {
        assert_eq!(c.status, ConversationStatus::Partial);
        assert_eq!(c.reason, "retries_exhausted");
    }
    // Four attempts per conversation, then it is left for the next run.
    assert_eq!(
        server.ledger().calls_by_endpoint["GET /x/dm/{userId}/history"],
        8
    );

    server.set_faults(Faults::default());
    let report = sync::run(opts).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_ground_truth(dir.path(), &server, &users);
}

/// A server that answers every page with a fresh cursor and 100 messages
/// never seen before, each page newer than the last: without a guard the
/// scan would never end. Pages that bring nothing older than the scan has
/// seen count as empty, and the run of them ends the scan (SPEC §5).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_keeps_sending_newer_pages_cannot_keep_a_scan_going() {
    use crate::scripted::{Answer, Scripted};
    let page = |n: u64| {
        let messages: Vec<serde_json::Value> = (0..100)
            .map(|i| {
                serde_json::json!({
                    "id": (1_900_000_000_000_000_000u64 + n * 1_000 + i).to_string(),
                    "senderId": "1000001",
                    "receiverId": "1612345678901234567",
                    "text": format!("page {n} message {i}"),
                })
            })
            .collect();
        Answer::json(
            200,
            serde_json::json!({
                "messages": messages,
                "has_next_page": true,
                "next_cursor": format!("fresh-{n}"),
            }),
        )
    };
    let server = Scripted::start((0..40).map(page).collect()).await;
    crate::init();
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        let mut api = xquik_dm::ClientConfig::new(
            server.base_url(),
            xquik_dm::ApiKey::new(crate::KEY).unwrap(),
        );
        api.retry = xquik_dm::RetryPolicy::fast();
        let target = xquik_dm::commands::sync::Target {
            account: xquik_dm::Account::parse(ACCOUNT).unwrap(),
            user: xquik_dm::UserRef::Id(user_id(1)),
        };
        sync::SyncOptions::new(api, dir.path().to_owned(), vec![target])
    };
    let report = sync::run(options()).await.unwrap();
    // The first page moves the scan; five more that bring nothing older
    // end it.
    assert_eq!(server.calls(), 6);
    assert_eq!(report.exit_code(), 4);
    assert_eq!(report.conversations[0].reason, "empty_pages");
    // A backfill writes only what lies below what it has written: the
    // first page.
    assert_eq!(report.new_messages, 100);
    // The next run's incremental scan meets the same server and ends the
    // same way: bounded again.
    let calls = server.calls();
    sync::run(options()).await.unwrap();
    assert!(server.calls() - calls <= 6);
}

/// `--max-pages` bounds one run's pages per conversation; the next runs
/// continue where it stopped, and together they write every message once.
#[tokio::test(flavor = "multi_thread")]
async fn max_pages_leaves_the_rest_for_the_next_run() {
    let server = MockServer::start(world(&[500, 400], 50)).await.unwrap();
    let users = users(2);
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&server, dir.path(), &users);
    options.max_pages = Some(3);
    let first = sync::run(options.clone()).await.unwrap();
    assert_eq!(first.exit_code(), 4);
    for c in &first.conversations {
        assert_eq!(c.pages, 3, "{c:?}");
        assert_eq!(c.reason, "max_pages");
    }
    assert_eq!(first.new_messages, 300);
    let mut runs = 1;
    loop {
        let report = sync::run(options.clone()).await.unwrap();
        runs += 1;
        // At most 3 pages per scan: an incremental scan and a backfill.
        assert!(report.conversations.iter().all(|c| c.pages <= 6));
        if report.exit_code() == 0 {
            break;
        }
        assert!(runs < 10, "never finished");
    }
    assert_ground_truth(dir.path(), &server, &users);
    let report = xquik_dm::commands::verify::run(dir.path(), None, None).unwrap();
    assert!(report.ok(), "{report}");
}

/// With `--max-pages 1` the incremental scan's boundary page does not keep
/// the backfill from moving: each run makes progress until it is done.
#[tokio::test(flavor = "multi_thread")]
async fn max_pages_one_still_finishes_the_backfill() {
    let server = MockServer::start(world(&[300], 50)).await.unwrap();
    let users = users(1);
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&server, dir.path(), &users);
    options.max_pages = Some(1);
    let mut runs = 0;
    while sync::run(options.clone()).await.unwrap().exit_code() != 0 {
        runs += 1;
        assert!(runs < 12, "no progress after {runs} runs");
    }
    assert_ground_truth(dir.path(), &server, &users);
}
