//! Hostile and broken API answers, through the binary against a server on
//! 127.0.0.1 that answers badly on purpose: a page far too large (streamed,
//! never held by the test), records whose IDs are not IDs, and a server that
//! hands out fresh cursors with newer messages forever. Each run ends with a
//! defined outcome and bounded memory, writes nothing it should not, and the
//! next run against an honest server completes with `verify` exit 0.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xquik_dm::mock::MockServer;

use crate::cli::{bin, run};
use crate::{ACCOUNT, KEY, jsonl_records, user_id, world};

/// What the hostile server answers to one history request.
enum Answer {
    /// A JSON body.
    Json(String),
    /// A page that never ends: a chunked body of `bytes` bytes, written as
    /// long as the client reads.
    Endless { bytes: u64 },
}

/// A server answering every request with `answer(n)`, n counting requests;
/// returns its base URL and the request counter.
async fn hostile(
    answer: impl Fn(u64) -> Answer + Send + Sync + 'static,
) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (answer, calls) = (Arc::new(answer), Arc::new(AtomicU64::new(0)));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (answer, counter) = (answer.clone(), counter.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                match answer(n) {
                    Answer::Json(body) => {
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                    }
                    Answer::Endless { bytes } => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                        if socket.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let record = format!(
                            "{{\"id\":\"1\",\"senderId\":\"1\",\"receiverId\":\"2\",\"text\":\"{}\"}},",
                            "x".repeat(1000)
                        );
                        let mut chunk = String::from("{\"messages\":[");
                        while chunk.len() < 1 << 16 {
                            chunk.push_str(&record);
                        }
                        let mut sent = 0u64;
                        while sent < bytes {
                            let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                            if socket.write_all(frame.as_bytes()).await.is_err() {
                                return; // the client stopped reading
                            }
                            sent += chunk.len() as u64;
                        }
                        let _ = socket.write_all(b"0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/api/v1"), calls)
}

/// Runs the binary, returning its exit status, stdout, stderr and peak RSS
/// in bytes. The binary is started by a small Python process and measured
/// there (`getrusage` of its children, from `wait4`): a child started from
/// this large test process directly would inherit its peak RSS through the
/// shared address space it is spawned with.
fn run_measured(cmd: &mut Command) -> (i32, String, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let rss_file = dir.path().join("rss");
    let script = "import resource, subprocess, sys\n\
        code = subprocess.run(sys.argv[2:]).returncode\n\
        open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n\
        sys.exit(code)\n";
    let mut wrapped = Command::new("python3");
    wrapped
        .arg("-c")
        .arg(script)
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    let (code, stdout, stderr) = run(wrapped.stdin(Stdio::null()));
    let kib: u64 = std::fs::read_to_string(&rss_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (code, stdout, stderr, kib * 1024)
}

fn sync(base_url: &str, out: &std::path::Path) -> Command {
    let mut cmd = bin();
    cmd.args([
        "--base-url",
        base_url,
        "--max-attempts",
        "2",
        "sync",
        "--account",
        ACCOUNT,
    ])
    .args(["--user", &user_id(1), "--out"])
    .arg(out)
    .env("XQUIK_API_KEY", KEY);
    cmd
}

/// The next run against an honest server completes, and the folder verifies.
async fn honest_run_completes(out: &std::path::Path) {
    let server = MockServer::start(world(&[120], 50)).await.unwrap();
    let (base, out) = (server.base_url(), out.to_owned());
    tokio::task::spawn_blocking(move || {
        let (code, _, stderr) = run(&mut sync(&base, &out));
        assert_eq!(code, 0, "{stderr}");
        let (code, stdout, _) = run(bin().arg("verify").arg(&out));
        assert_eq!(code, 0, "{stdout}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_mb_page_is_refused_as_it_streams_in_with_bounded_memory() {
    let (base, calls) = hostile(|_| Answer::Endless { bytes: 400 << 20 }).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let (code, stdout, stderr, rss) =
        tokio::task::spawn_blocking(move || run_measured(&mut sync(&base, &out)))
            .await
            .unwrap();
    assert_eq!(code, 4, "{stdout}{stderr}");
    assert!(stderr.contains("larger than the 32 MiB cap"), "{stderr}");
    eprintln!("peak RSS of the refused 400 MB page: {} MB", rss >> 20);
    assert!(rss < 200 << 20, "peak RSS {} MB", rss >> 20);
    // Not retried: the same answer would come again.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(jsonl_records(dir.path()).is_empty());
    honest_run_completes(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_whose_ids_are_not_ids_are_never_written() {
    let page = serde_json::json!({
        "messages": [
            {"id": "1000003", "senderId": "1000001", "receiverId": "7", "text": "kept 3"},
            {"id": "", "senderId": "1000001", "receiverId": "7", "text": "empty id"},
            {"id": "1/2", "senderId": "1000001", "receiverId": "7", "text": "slash"},
            {"id": "1000002", "senderId": "1000001", "receiverId": "7", "text": "kept 2"},
            {"id": "../../../../tmp/evil", "senderId": "1000001", "receiverId": "7"},
            {"id": "9".repeat(400), "senderId": "1000001", "receiverId": "7"},
            {"id": "1000004", "senderId": "../x", "receiverId": "7", "text": "bad sender"},
            {"id": "1000001", "senderId": "1000001", "receiverId": "7", "text": "kept 1"},
        ],
        "has_next_page": false,
        "next_cursor": ""
    })
    .to_string();
    let (base, _) = hostile(move |_| Answer::Json(page.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let (code, stdout, stderr, rss) =
        tokio::task::spawn_blocking(move || run_measured(sync(&base, &out).arg("--json")))
            .await
            .unwrap();
    assert_eq!(code, 4, "{stderr}");
    assert!(rss < 200 << 20, "peak RSS {} MB", rss >> 20);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["invalid_records"], 5);
    assert_eq!(report["conversations"][0]["reason"], "invalid_ids");
    let ids: Vec<String> = jsonl_records(dir.path())
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        ids.iter()
            .all(|id| ["1000001", "1000002", "1000003"].contains(&id.as_str()))
    );
    // The page log says where they were and why, without a body.
    let log = crate::files_under(dir.path(), "audit/runs")
        .into_iter()
        .find(|f| f.ends_with(".pages.jsonl"))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join(log))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let positions: Vec<u64> = line["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 2, 4, 5, 6]);
    assert!(!line.to_string().contains("slash") && !line.to_string().contains("evil\"}"));
    honest_run_completes(dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_cursors_with_newer_messages_forever_cannot_keep_a_run_going() {
    let (base, calls) = hostile(|n| {
        let messages: Vec<serde_json::Value> = (0..100)
            .map(|i| {
                serde_json::json!({"id": (1_000_000_000 + n * 1_000 + i).to_string(),
                                   "senderId": "1000001", "receiverId": "7", "text": "newer"})
            })
            .collect();
        Answer::Json(
            serde_json::json!({"messages": messages, "has_next_page": true,
                               "next_cursor": format!("fresh-{n}")})
            .to_string(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let (code, stdout, stderr, rss) = tokio::task::spawn_blocking(move || {
        let measured = run_measured(sync(&base, &out).arg("--json"));
        // The partial run was sealed: the folder verifies as it is.
        let (verified, report, _) = run(bin().arg("verify").arg(&out));
        assert_eq!(verified, 0, "{report}");
        measured
    })
    .await
    .unwrap();
    assert_eq!(code, 4, "{stderr}");
    assert!(rss < 200 << 20, "peak RSS {} MB", rss >> 20);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["conversations"][0]["reason"], "empty_pages");
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    honest_run_completes(dir.path()).await;
}
