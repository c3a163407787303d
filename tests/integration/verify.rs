//! `verify` and the audit trail: an untouched folder verifies (also with
//! coreutils' `sha256sum -c`), and every kind of tampering is caught and
//! named; no message body ever reaches `audit/` or `state/`.

use crate::copy_dir;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

use xquik_dm::audit::AuditKey;
use xquik_dm::commands::sync::{self};
use xquik_dm::commands::verify;
use xquik_dm::mock::MockServer;

use crate::{ACCOUNT, files_under, sync_options, user_id, users, world};

/// A folder with two sealed sync runs (the second incremental), signed
/// with `key` when given.
async fn two_runs(key: Option<&[u8]>) -> (tempfile::TempDir, MockServer) {
    let server = MockServer::start(world(&[700, 120, 5], 100)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = sync_options(&server, dir.path(), &users(3));
    options.audit_key = key.map(|k| AuditKey(k.to_vec()));
    assert_eq!(sync::run(options.clone()).await.unwrap().exit_code(), 0);
    server.append_messages(ACCOUNT, &user_id(1), 40);
    assert_eq!(sync::run(options).await.unwrap().exit_code(), 0);
    (dir, server)
}

fn files(dir: &Path, sub: &str, suffix: &str) -> Vec<String> {
    let mut found = files_under(dir, sub);
    found.retain(|f| f.ends_with(suffix));
    found
}

/// Applies `tamper` to a copy of `base` and asserts that verify fails and
/// names `expect_path`.
fn assert_caught(base: &Path, what: &str, expect_path: &str, tamper: impl FnOnce(&Path)) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base, copy.path());
    tamper(copy.path());
    let report = verify::run(copy.path(), None, None).unwrap();
    assert_eq!(report.exit_code(), 5, "{what}: not caught");
    // Caught by the manifests and the chain themselves, not only by
    // SHA256SUMS (which whoever tampers could rewrite as well).
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.path == expect_path && !f.reason.contains("SHA256SUMS")),
        "{what}: {expect_path} not named in {:?}",
        report.failures
    );
}

fn flip(path: &Path, at: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = ((bytes.len() - 1) as f64 * at) as usize;
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untouched_folder_verifies_also_with_sha256sum() {
    let (dir, _server) = two_runs(None).await;
    let report = verify::run(dir.path(), None, None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.runs, 2);
    // SHA256SUMS lists the files that change; each run's own checksum
    // file, the files it added.
    let mut args = vec!["-c".to_owned(), "--strict".into(), "SHA256SUMS".into()];
    for entry in std::fs::read_dir(dir.path().join("audit/runs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".sha256") {
            args.push(format!("audit/runs/{name}"));
        }
    }
    assert_eq!(args.len(), 5, "{args:?}");
    let out = Command::new("sha256sum")
        .args(&args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    // JSONL, checkpoint, 2 Parquet files, 2 manifests, 2 rows files, 2 page
    // logs.
    assert_eq!(listed, 10, "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_tampering_is_caught_and_named() {
    let (dir, _server) = two_runs(None).await;
    let base = dir.path();
    let jsonl = "xquik-dm-handoff.jsonl";
    let mut targets: Vec<String> = vec![jsonl.into(), "audit/chain.jsonl".into()];
    targets.extend(files(base, "parquet", ".parquet"));
    targets.extend(files(base, "audit/runs", ".manifest.json"));
    targets.extend(files(base, "audit/runs", ".rows.jsonl"));
    targets.extend(files(base, "audit/runs", ".pages.jsonl"));
    assert_eq!(targets.len(), 10);
    for target in &targets {
        for at in [0.0, 0.37, 0.5, 0.81, 1.0] {
            // A flipped chain byte is named by the chain itself or by the
            // manifest it no longer matches.
            assert_caught(base, &format!("flip {target} at {at}"), target, |d| {
                flip(&d.join(target), at)
            });
        }
    }
    let manifests = files(base, "audit/runs", ".manifest.json");
    assert_caught(base, "delete a manifest", &manifests[0], |d| {
        std::fs::remove_file(d.join(&manifests[0])).unwrap()
    });
    assert_caught(base, "reorder the chain", "audit/chain.jsonl", |d| {
        let text = std::fs::read_to_string(d.join("audit/chain.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(
            d.join("audit/chain.jsonl"),
            format!("{}\n{}\n", lines[1], lines[0]),
        )
        .unwrap();
    });
    assert_caught(
        base,
        "drop the first run from the chain",
        "audit/chain.jsonl",
        |d| {
            let text = std::fs::read_to_string(d.join("audit/chain.jsonl")).unwrap();
            let second = text.lines().nth(1).unwrap().to_owned();
            std::fs::write(d.join("audit/chain.jsonl"), format!("{second}\n")).unwrap();
        },
    );
    assert_caught(base, "truncate the JSONL", jsonl, |d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(jsonl))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 1).unwrap();
    });
    assert_caught(base, "extend the JSONL", jsonl, |d| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join(jsonl))
            .unwrap();
        f.write_all(b"{\"record_type\":\"history\"}\n").unwrap();
    });
    let parquet = files(base, "parquet", ".parquet");
    assert_caught(base, "delete a Parquet file", &parquet[0], |d| {
        std::fs::remove_file(d.join(&parquet[0])).unwrap()
    });
    assert_caught(
        base,
        "add an unlisted Parquet file",
        "parquet/messages/date=2020-01-01/extra.parquet",
        |d| {
            let extra = d.join("parquet/messages/date=2020-01-01");
            std::fs::create_dir_all(&extra).unwrap();
            std::fs::copy(d.join(&parquet[0]), extra.join("extra.parquet")).unwrap();
        },
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_manifests_verify_with_the_key_and_a_mismatch_is_caught() {
    let key = b"audit-key-for-tests";
    let (dir, _server) = two_runs(Some(key)).await;
    let good = verify::run(dir.path(), Some(&AuditKey(key.to_vec())), None).unwrap();
    assert!(good.ok(), "{good}");
    assert_eq!(good.signatures_checked, 2);
    let without = verify::run(dir.path(), None, None).unwrap();
    assert!(without.ok());
    assert!(
        without
            .notes
            .iter()
            .any(|n| n.contains("XQUIK_DM_AUDIT_KEY")),
        "{without}"
    );
    let wrong = verify::run(dir.path(), Some(&AuditKey(b"another key".to_vec())), None).unwrap();
    assert_eq!(wrong.exit_code(), 5);
    assert!(
        wrong.failures.iter().all(|f| f.reason.contains("HMAC")),
        "{wrong}"
    );
    assert_eq!(wrong.failures.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exits_5_naming_the_file() {
    let (dir, _server) = two_runs(None).await;
    let parquet = files(dir.path(), "parquet", ".parquet");
    flip(&dir.path().join(&parquet[1]), 0.5);
    let out: PathBuf = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_xquik-dm"))
            .arg("verify")
            .arg(&out)
            .env_remove("XQUIK_DM_AUDIT_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(5));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("FAILED"), "{stdout}");
    assert!(stdout.contains(&parquet[1]), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_message_body_reaches_the_audit_trail_or_the_state() {
    let (dir, server) = two_runs(None).await;
    let mut haystacks = Vec::new();
    for sub in ["audit", "state"] {
        for rel in files(dir.path(), sub, "") {
            haystacks.push((
                rel.clone(),
                std::fs::read_to_string(dir.path().join(&rel)).unwrap(),
            ));
        }
    }
    haystacks.push((
        "SHA256SUMS".into(),
        std::fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap(),
    ));
    let mut checked = 0;
    for i in 1..=3 {
        for m in server.history(ACCOUNT, &user_id(i)) {
            let Some(text) = m.text.filter(|t| t.chars().count() >= 8) else {
                continue;
            };
            checked += 1;
            let escaped = serde_json::to_string(&text).unwrap();
            for (name, hay) in &haystacks {
                assert!(!hay.contains(&text), "a message body leaked into {name}");
                assert!(
                    !hay.contains(escaped.trim_matches('"')),
                    "an escaped body leaked into {name}"
                );
            }
        }
    }
    assert!(checked > 500, "{checked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn temporaries_of_a_killed_run_neither_fail_verify_nor_stay() {
    let (dir, server) = two_runs(None).await;
    let strays = [
        "state/tmp/.audit~runs~20261126T000000Z-dead.manifest.json.4242.tmp",
        "state/.checkpoint.json.4242.tmp",
        ".SHA256SUMS.4242.tmp",
    ];
    for stray in strays {
        std::fs::write(dir.path().join(stray), b"half written").unwrap();
    }
    let report = verify::run(dir.path(), None, None).unwrap();
    assert!(report.ok(), "{report}");
    let rerun = sync::run(sync_options(&server, dir.path(), &users(3)))
        .await
        .unwrap();
    assert_eq!(rerun.exit_code(), 0);
    for stray in strays {
        assert!(!dir.path().join(stray).exists(), "{stray} was left behind");
    }
    assert!(verify::run(dir.path(), None, None).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_refuses_to_build_on_a_truncated_chain() {
    let (dir, server) = two_runs(None).await;
    let chain = dir.path().join("audit/chain.jsonl");
    let text = std::fs::read_to_string(&chain).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    std::fs::write(&chain, format!("{first}\n")).unwrap();
    let err = sync::run(sync_options(&server, dir.path(), &users(3)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("restore audit/ from backup"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);
    // Nothing was deleted: the second run's manifest is still there.
    assert_eq!(files(dir.path(), "audit/runs", ".manifest.json").len(), 2);
    assert_eq!(verify::run(dir.path(), None, None).unwrap().exit_code(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_signing_on_later_keeps_an_honest_folder_valid() {
    let (dir, server) = two_runs(None).await;
    let key = AuditKey(b"turned on later".to_vec());
    let mut options = sync_options(&server, dir.path(), &users(3));
    options.audit_key = Some(key.clone());
    sync::run(options).await.unwrap();
    let report = verify::run(dir.path(), Some(&key), None).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.signatures_checked, 1);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("2 runs from before signing")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_head_detects_the_last_run_being_rolled_back() {
    let (dir, server) = two_runs(None).await;
    // A copy of the folder before the third run: what rolling back restores.
    let before = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), before.path());
    sync::run(sync_options(&server, dir.path(), &users(3)))
        .await
        .unwrap();
    let head = verify::run(dir.path(), None, None).unwrap().head.unwrap();
    assert!(verify::run(dir.path(), None, Some(&head)).unwrap().ok());
    let rolled_back = verify::run(before.path(), None, Some(&head)).unwrap();
    assert_eq!(rolled_back.exit_code(), 5);
    assert!(
        rolled_back
            .failures
            .iter()
            .any(|f| f.reason.contains("expected head"))
    );
}

/// A run killed after it committed but before it sealed leaves data no
/// manifest covers yet: `verify` checks it against the checkpoint, says so
/// in a note and passes (the next sync seals it). What the killed run left
/// uncommitted is noted too (the next sync removes it). Records slipped in
/// under a raised committed length, bytes appended after a sealed run and
/// files named like a run in a sealed folder fail.
#[test]
fn an_interrupted_run_is_told_from_tampering() {
    use xquik_dm::records::{HistoryRow, RecordType};
    use xquik_dm::store::{ManifestBody, RunStamp, Store};
    let row = |i: u64| HistoryRow {
        record_type: RecordType::History,
        message_id: (1_900_000_000_000_000_000u64 + i).to_string(),
        conversation_user_id: "42".into(),
        account: "acme".into(),
        sender_id: "42".into(),
        receiver_id: "7".into(),
        created_at: None,
        message_text: Some(format!("text {i}")),
        media_url: None,
    };
    let append = |store: &mut Store, range: std::ops::Range<u64>| {
        let rows: Vec<HistoryRow> = range.map(row).collect();
        store
            .append_history(&xquik_dm::records::HistoryBatch::of(&rows))
            .unwrap();
    };
    let sealed_folder = || {
        let dir = tempfile::tempdir().unwrap();
        let storage = xquik_dm::storage::Location::from(dir.path())
            .open()
            .unwrap();
        let mut store = Store::open(&storage, &RunStamp::now()).unwrap();
        append(&mut store, 0..3);
        store.seal(ManifestBody::empty("sync")).unwrap();
        (dir, storage)
    };
    let append_bytes = |dir: &Path, bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("xquik-dm-handoff.jsonl"))
            .unwrap()
            .write_all(bytes)
            .unwrap();
    };
    let has_note =
        |report: &verify::VerifyReport, start: &str| report.notes.iter().any(|n| n.contains(start));

    // Killed after committing, and with an uncommitted tail.
    let (dir, storage) = sealed_folder();
    let mut store = Store::open(&storage, &RunStamp::now()).unwrap();
    append(&mut store, 3..5);
    store.commit().unwrap();
    append(&mut store, 5..6);
    drop(store);
    let report = verify::run(dir.path(), None, None).unwrap();
    assert!(report.ok(), "{report}");
    assert!(
        has_note(&report, "was interrupted after committing"),
        "{report}"
    );
    assert!(
        has_note(&report, "after the last commit were left"),
        "{report}"
    );
    // A raised committed length over slipped-in records: caught.
    let path = dir.path().join("state/checkpoint.json");
    let mut checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let len = std::fs::metadata(dir.path().join("xquik-dm-handoff.jsonl"))
        .unwrap()
        .len();
    checkpoint["jsonl"]["committed_bytes"] = len.into();
    std::fs::write(&path, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    let report = verify::run(dir.path(), None, None).unwrap();
    assert_eq!(report.exit_code(), 5, "{report}");
    assert!(
        report.to_string().contains("do not match its digest"),
        "{report}"
    );

    // Killed before its first commit: only the claim changed the checkpoint.
    let (dir, storage) = sealed_folder();
    drop(Store::open(&storage, &RunStamp::now()).unwrap());
    let report = verify::run(dir.path(), None, None).unwrap();
    assert!(report.ok(), "{report}");

    // After a sealed run nothing may be added: bytes, or a file named like
    // a run's.
    let (dir, _) = sealed_folder();
    append_bytes(dir.path(), b"{\"record_type\":\"history\"}\n");
    let report = verify::run(dir.path(), None, None).unwrap();
    assert_eq!(report.exit_code(), 5, "{report}");
    let (dir, _) = sealed_folder();
    let stray = dir
        .path()
        .join("parquet/messages/date=2024-01-01/part-20990101T000000Z-abcd-0001.parquet");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"PAR1").unwrap();
    let report = verify::run(dir.path(), None, None).unwrap();
    assert_eq!(report.exit_code(), 5, "{report}");
}

/// `verify --since HEAD` checks what came after a head a reviewer verified:
/// a change to a later run is caught, while the earlier runs are left to
/// the full verify (which still catches a change there).
#[tokio::test(flavor = "multi_thread")]
async fn verify_since_checks_only_the_runs_after_a_verified_head() {
    let (dir, server) = two_runs(None).await;
    let first = verify::run(dir.path(), None, None).unwrap();
    assert!(first.ok(), "{first}");
    let head = first.head.clone().unwrap();
    // Two more runs after the verified head.
    let mut options = sync_options(&server, dir.path(), &users(3));
    options.audit_key = None;
    for n in [15, 9] {
        server.append_messages(ACCOUNT, &user_id(2), n);
        assert_eq!(sync::run(options.clone()).await.unwrap().exit_code(), 0);
    }
    let since = verify::run_since(dir.path(), None, None, Some(&head)).unwrap();
    assert!(since.ok(), "{since}");
    assert!(
        since
            .notes
            .iter()
            .any(|n| n.starts_with("checked the 2 runs after")),
        "{since}"
    );
    // An earlier run's Parquet file changed: out of --since's scope, caught
    // by the full verify.
    // The first run's manifest, by the chain (run IDs of one second do not
    // sort by time).
    let chain = std::fs::read_to_string(dir.path().join("audit/chain.jsonl")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(chain.lines().next().unwrap()).unwrap();
    let first_manifest = entry["manifest"].as_str().unwrap();
    let first_run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(first_manifest)).unwrap()).unwrap();
    let early = first_run["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(".parquet"))
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_owned();
    flip(&dir.path().join(&early), 0.5);
    assert!(
        verify::run_since(dir.path(), None, None, Some(&head))
            .unwrap()
            .ok()
    );
    assert!(!verify::run(dir.path(), None, None).unwrap().ok());
    // A later run's segment changed: caught by --since.
    let jsonl = dir.path().join("xquik-dm-handoff.jsonl");
    flip(&jsonl, 0.99);
    let report = verify::run_since(dir.path(), None, None, Some(&head)).unwrap();
    assert_eq!(report.exit_code(), 5, "{report}");
    // A head that is not in the chain is a failure, not a pass.
    let report = verify::run_since(dir.path(), None, None, Some("00")).unwrap();
    assert_eq!(report.exit_code(), 5, "{report}");
}

/// A sync killed after its seal wrote `SHA256SUMS` and before its
/// checkpoint followed (the checkpoint still points at the run before, and
/// lists the run's Parquet files): verify passes with a note, also when the
/// next run was killed right after its claim, and the next run completes
/// the seal.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_between_its_checksums_and_its_checkpoint_verifies() {
    let (dir, server) = two_runs(None).await;
    let chain = std::fs::read_to_string(dir.path().join("audit/chain.jsonl")).unwrap();
    let entries: Vec<Value> = chain
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (&entries[0], &entries[1]);
    let manifest = |entry: &Value| -> Value {
        let path = dir.path().join(entry["manifest"].as_str().unwrap());
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let (before, sealed) = (manifest(first), manifest(last));
    let path = dir.path().join("state/checkpoint.json");
    let mut checkpoint: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    checkpoint["audit"] = serde_json::json!({
        "runs": 1,
        "last_manifest": first["manifest"],
        "last_digest": first["sha256"],
        "coverage": before["coverage"],
    });
    checkpoint["run"] = last["run_id"].clone();
    checkpoint["unsealed"] = serde_json::json!([{"run": last["run_id"], "dirs": []}]);
    checkpoint["parquet"]["files"] = sealed["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"].as_str().unwrap().ends_with(".parquet"))
        .cloned()
        .collect();
    checkpoint["parquet"]["listed_before"] = before["coverage"]["parquet_files"].clone();
    std::fs::write(&path, serde_json::to_vec_pretty(&checkpoint).unwrap()).unwrap();
    let verifies_interrupted = || {
        let report = verify::run(dir.path(), None, None).unwrap();
        assert_eq!(report.exit_code(), 0, "{report}");
        assert!(
            report
                .notes
                .iter()
                .any(|n| n.contains("interrupted after it sealed")),
            "{report}"
        );
    };
    verifies_interrupted();
    // The next run claims the output before it completes the seal: killed
    // in between, it leaves its claim over the same pointer.
    let next = "20991231T000000Z-0123456789abcdef";
    checkpoint["run"] = serde_json::json!(next);
    checkpoint["unsealed"] = serde_json::json!([{"run": next, "dirs": []}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&checkpoint).unwrap()).unwrap();
    verifies_interrupted();
    // A claim by a run the chain holds is not that state.
    checkpoint["run"] = first["run_id"].clone();
    checkpoint["unsealed"] = serde_json::json!([{"run": first["run_id"], "dirs": []}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&checkpoint).unwrap()).unwrap();
    assert_eq!(verify::run(dir.path(), None, None).unwrap().exit_code(), 5);
    checkpoint["run"] = serde_json::json!(next);
    checkpoint["unsealed"] = serde_json::json!([{"run": next, "dirs": []}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&checkpoint).unwrap()).unwrap();
    let rerun = sync::run(sync_options(&server, dir.path(), &users(3)))
        .await
        .unwrap();
    assert_eq!(rerun.exit_code(), 0);
    assert!(verify::run(dir.path(), None, None).unwrap().ok());
}
