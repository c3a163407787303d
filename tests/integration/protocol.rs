//! The commit protocol's data-loss regressions, through the binary: a folder
//! whose state was removed, run IDs within one second, the durability of a
//! new JSONL's folder entry (seen with strace), and the credits of a killed
//! run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use xquik_dm::mock::MockServer;

use crate::cli::{bin, run};
use crate::sync::{assert_parquet_equals_jsonl, history_credits};
use crate::{ACCOUNT, KEY, assert_ground_truth, files_under, jsonl_records, user_id, users, world};

/// `xquik-dm sync` of `users` into `out` (a folder or a bucket URL)
/// against `server`.
pub fn sync(server: &MockServer, out: impl AsRef<std::ffi::OsStr>, users: &[String]) -> Command {
    let mut cmd = bin();
    cmd.args([
        "--base-url",
        &server.base_url(),
        "sync",
        "--account",
        ACCOUNT,
    ]);
    for u in users {
        cmd.args(["--user", u]);
    }
    cmd.arg("--out").arg(out).env("XQUIK_API_KEY", KEY);
    cmd
}

/// `xquik-dm send` of one text DM to the first test user.
fn send(server: &MockServer, out: &Path, text: &str) -> Command {
    let mut cmd = bin();
    cmd.args([
        "--base-url",
        &server.base_url(),
        "send",
        "--account",
        ACCOUNT,
    ])
    .args(["--to", &user_id(1), "--text", text])
    .arg("--out")
    .arg(out)
    .env("XQUIK_API_KEY", KEY);
    cmd
}

fn verify(out: &Path) -> (i32, String) {
    let (code, stdout, stderr) = run(bin().arg("verify").arg(out));
    (code, format!("{stdout}{stderr}"))
}

fn manifests(out: &Path) -> Vec<Value> {
    files_under(out, "audit/runs")
        .into_iter()
        .filter(|f| f.ends_with(".manifest.json"))
        .map(|f| serde_json::from_slice(&std::fs::read(out.join(f)).unwrap()).unwrap())
        .collect()
}

/// Gap 1: with `state/` and `audit/` removed, `sync` refuses and changes
/// nothing; `rebuild` brings the checkpoint back from the JSONL, and the job
/// goes on without refetching, duplicating or losing a message.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_folder_is_refused_then_rebuilt_and_continues_without_refetching() {
    let server = Arc::new(MockServer::start(world(&[300, 120], 50)).await.unwrap());
    let users = users(2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let (s, o, u) = (server.clone(), out.clone(), users.clone());
    tokio::task::spawn_blocking(move || {
        let (code, _, stderr) = run(&mut sync(&s, &o, &u));
        assert_eq!(code, 0, "{stderr}");
        let (code, _, stderr) = run(&mut send(&s, &o, "a DM sent before the reset"));
        assert_eq!(code, 0, "{stderr}");

        let jsonl = std::fs::read(o.join("xquik-dm-handoff.jsonl")).unwrap();
        // The data files (the Delta logs beside them move with them).
        let everything = files_under(&o, "parquet");
        let parquet: Vec<&String> = everything
            .iter()
            .filter(|p| !p.contains("/_delta_log/"))
            .collect();
        let logs = everything.len() - parquet.len();
        std::fs::remove_dir_all(o.join("state")).unwrap();
        std::fs::remove_dir_all(o.join("audit")).unwrap();
        let credits = s.ledger().credits_total;

        let (code, _, stderr) = run(&mut sync(&s, &o, &u));
        assert_eq!(code, 3, "{stderr}");
        assert!(stderr.contains("xquik-dm rebuild --out"), "{stderr}");
        assert_eq!(
            std::fs::read(o.join("xquik-dm-handoff.jsonl")).unwrap(),
            jsonl,
            "the refused run changed the JSONL"
        );
        assert_eq!(files_under(&o, "parquet"), everything);
        assert_eq!(
            s.ledger().credits_total,
            credits,
            "the refused run spent credits"
        );
        let (code, _, _) = run(&mut send(&s, &o, "another DM"));
        assert_eq!(code, 3, "send must refuse too");

        let (code, stdout, stderr) = run(bin().args(["rebuild", "--json", "--out"]).arg(&o));
        assert_eq!(code, 0, "{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["history_rows"], 420);
        assert_eq!(report["send_rows"], 1);
        assert_eq!(report["conversations"], 2);
        assert_eq!(report["jsonl_bytes"], jsonl.len());
        let moved = report["parquet_moved"].as_array().unwrap().len();
        assert_eq!(moved, parquet.len(), "{report}");
        assert!(
            files_under(&o, "parquet").is_empty(),
            "moved, not left for a glob"
        );
        assert_eq!(files_under(&o, "recovered").len(), parquet.len() + logs);
        // A second rebuild is refused: the checkpoint is there now.
        let (code, _, _) = run(bin().args(["rebuild", "--out"]).arg(&o));
        assert_eq!(code, 2);

        // New messages arrive; the next sync fetches only what is new.
        s.append_messages(ACCOUNT, &u[0], 7);
        let before = history_credits(&s);
        let (code, _, stderr) = run(&mut sync(&s, &o, &u));
        assert_eq!(code, 0, "{stderr}");
        let spent = history_credits(&s) - before;
        assert!(
            (7..=7 + 2 * 50).contains(&spent),
            "{spent} credits: more than the new messages and one page per conversation"
        );
        // The same send again: not sent, not recorded twice.
        let (code, _, stderr) = run(&mut send(&s, &o, "a DM sent before the reset"));
        assert_eq!(code, 0, "{stderr}");
    })
    .await
    .unwrap();
    assert_ground_truth(&out, &server, &users);
    assert_parquet_equals_jsonl(&out);
    let sends = jsonl_records(&out)
        .into_iter()
        .filter(|r| r["record_type"] == "send")
        .count();
    assert_eq!(sends, 1, "a send recorded twice");
    assert_eq!(server.sent().len(), 1, "a DM sent twice");
    let (code, report) = verify(&out);
    assert_eq!(code, 0, "{report}");

    // A file the tool did not write is never removed.
    let mine = out.join("parquet/messages/analyst-extract.parquet");
    std::fs::write(&mine, b"not ours").unwrap();
    let (s, o, u) = (server.clone(), out.clone(), users.clone());
    let code = tokio::task::spawn_blocking(move || run(&mut sync(&s, &o, &u)).0)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(std::fs::read(&mine).unwrap(), b"not ours");
}

/// Gap 2: runs started in the same second (a script calling `send` in a
/// loop) get distinct run IDs; no manifest is overwritten.
#[tokio::test(flavor = "multi_thread")]
async fn runs_in_the_same_second_never_share_an_id() {
    let server = Arc::new(MockServer::start(world(&[5], 50)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let s = server.clone();
    let o = out.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..24 {
            let (code, _, stderr) = run(&mut send(&s, &o, &format!("loop message {i}")));
            assert_eq!(code, 0, "{stderr}");
        }
    })
    .await
    .unwrap();
    let ids: Vec<String> = manifests(&out)
        .iter()
        .map(|m| m["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 24);
    let seconds: std::collections::BTreeSet<&str> =
        ids.iter().map(|id| id.split('-').next().unwrap()).collect();
    assert!(
        seconds.len() < ids.len(),
        "no two runs started in the same second: the test proves nothing"
    );
    let chain = std::fs::read_to_string(out.join("audit/chain.jsonl")).unwrap();
    assert_eq!(chain.lines().count(), 24);
    let (code, report) = verify(&out);
    assert_eq!(code, 0, "{report}");
}

/// strace, installed when the machine lacks it.
fn strace() -> PathBuf {
    crate::debian_tool("strace", "strace", "-V")
}

/// Gap 3: the folder entry of a newly created JSONL file is fsynced before
/// any checkpoint names its bytes. Read from the system calls the binary
/// makes.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_jsonl_is_durable_in_its_folder_before_the_checkpoint_counts_it() {
    let server = Arc::new(MockServer::start(world(&[120], 50)).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dm");
    // A provisioned folder whose audit folder already exists: creating it
    // cannot make the JSONL's entry durable by accident.
    std::fs::create_dir_all(out.join("audit/runs")).unwrap();
    let trace = dir.path().join("trace.txt");
    let (s, o, t) = (server.clone(), out.clone(), trace.clone());
    tokio::task::spawn_blocking(move || {
        let inner = sync(&s, &o, &users(1));
        let mut cmd = Command::new(strace());
        cmd.args(["-f", "-y", "-qq", "-o"])
            .arg(&t)
            .args([
                "-e",
                "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
            ])
            .arg(inner.get_program())
            .args(inner.get_args())
            .env("XQUIK_API_KEY", KEY)
            .stdin(Stdio::null());
        let (code, _, stderr) = run(&mut cmd);
        assert_eq!(code, 0, "{stderr}");
    })
    .await
    .unwrap();
    let trace = std::fs::read_to_string(&trace).unwrap();
    let out = out.to_string_lossy().into_owned();
    let lines: Vec<&str> = trace.lines().collect();
    let created = lines
        .iter()
        .position(|l| {
            l.contains("openat(") && l.contains("xquik-dm-handoff.jsonl") && l.contains("O_CREAT")
        })
        .expect("the JSONL was never created");
    let counted = created
        + lines[created..]
            .iter()
            .position(|l| l.contains("rename") && l.contains("/state/checkpoint.json\""))
            .expect("no checkpoint after the JSONL was created");
    let dir_synced = lines[created..counted]
        .iter()
        .any(|l| l.contains("fsync(") && l.contains(&format!("<{out}>")));
    assert!(
        dir_synced,
        "no fsync of {out} between the JSONL's creation and the checkpoint:\n{}",
        lines[created..=counted].join("\n")
    );
}

/// Gap 4: a run killed mid-sync leaves its page log; the next run seals it
/// into its manifest, so every credit the API charged appears in some
/// manifest (up to the requests in flight at the kill).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_runs_requests_and_credits_are_sealed_by_the_next_run() {
    let mut config = world(&[4_000, 4_000], 50);
    config.faults.latency = Duration::from_millis(5);
    let server = Arc::new(MockServer::start(config).await.unwrap());
    let users = users(2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let (s, o, u) = (server.clone(), out.clone(), users.clone());
    let killed = tokio::task::spawn_blocking(move || {
        let mut killed = 0;
        for wait in [60, 60] {
            // Killed once it has been answered (a new page log holds a
            // line), then `wait` more: on a busy machine a fixed delay alone
            // could kill it before it asked anything.
            let logs = || -> Vec<String> {
                std::fs::read_dir(o.join("audit/runs"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.ends_with(".pages.jsonl.tmp"))
                    .collect()
            };
            let before = logs();
            let logged = || logs().iter().any(|name| !before.contains(name));
            let mut child = sync(&s, &o, &u)
                .args(["--concurrency", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !logged() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(wait));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                killed += 1;
            }
            child.wait().unwrap();
        }
        let (code, _, stderr) = run(&mut sync(&s, &o, &u));
        assert_eq!(code, 0, "{stderr}");
        killed
    })
    .await
    .unwrap();
    assert_eq!(killed, 2, "the runs finished before they could be killed");
    assert_ground_truth(&out, &server, &users);
    let manifests = manifests(&out);
    let recovered: Vec<&Value> = manifests
        .iter()
        .flat_map(|m| m["recovered"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(recovered.len(), 2, "both killed runs' logs: {recovered:?}");
    let history = |credits: &Value| credits["GET /x/dm/{userId}/history"].as_u64().unwrap_or(0);
    let sealed: u64 = manifests.iter().map(|m| history(&m["credits"])).sum();
    let recovered_credits: u64 = recovered.iter().map(|r| history(&r["credits"])).sum();
    assert!(recovered_credits > 0);
    let charged = history_credits(&server);
    // At most the pages in flight at each kill (2 conversations of 50) are
    // charged without an answer the run could log.
    let accounted = sealed + recovered_credits;
    assert!(
        accounted <= charged && charged - accounted <= 2 * 2 * 50,
        "charged {charged}, accounted {accounted} ({sealed} sealed + {recovered_credits} recovered)"
    );
    let (code, report) = verify(&out);
    assert_eq!(code, 0, "{report}");
}
