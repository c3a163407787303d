//! The `xquik-dm` binary end to end: exit statuses, stdout/stderr, the mock
//! as a separate process, and a sync killed with SIGKILL at random moments.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use xquik_dm::mock::{Faults, MockServer};

use crate::sync::assert_parquet_equals_jsonl;
use crate::{ACCOUNT, KEY, assert_ground_truth, user_id, world};

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xquik-dm"));
    cmd.env_remove("XQUIK_API_KEY")
        .env_remove("XQUIK_BASE_URL")
        .env_remove("XQUIK_DM_LOG")
        .env_remove("XQUIK_DM_SIGNING_KEY_FILE")
        .stdin(Stdio::null());
    cmd
}

/// `xquik-dm mock --port 0` as a child process; killed on drop.
struct MockProcess {
    child: Child,
    base_url: String,
}

impl MockProcess {
    fn start() -> MockProcess {
        let mut child = bin()
            .args(["mock", "--port", "0"])
            .env("XQUIK_MOCK_API_KEY", KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base_url = line.trim().to_owned();
        assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url:?}");
        MockProcess { child, base_url }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

#[test]
fn lookup_against_the_mock_process() {
    let mock = MockProcess::start();
    let lookup = |user: &str| {
        run(bin()
            .args(["--base-url", &mock.base_url, "lookup", user])
            .env("XQUIK_API_KEY", KEY))
    };

    let (code, stdout, stderr) = lookup("@ada_lovelace");
    assert_eq!(code, 0, "{stderr}");
    let profile: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(profile["id"], "2244994945");
    assert_eq!(profile["username"], "ada_lovelace");
    assert_eq!(profile["canDm"], true);
    assert!(!stderr.contains(KEY) && !stdout.contains(KEY));

    // By numeric ID; no canDm hint on this profile: the field is absent.
    let (code, stdout, _) = lookup("1098765432109876543");
    assert_eq!(code, 0);
    let profile: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(profile["username"], "mina_kato");
    assert!(profile.get("canDm").is_none(), "{profile}");

    let (code, _, stderr) = lookup("@nobody_here");
    assert_eq!(code, 3);
    assert!(stderr.contains("404 user_not_found"), "{stderr}");

    let (code, _, stderr) = run(bin()
        .args(["--base-url", &mock.base_url, "lookup", "@ada_lovelace"])
        .env("XQUIK_API_KEY", "wrong-key"));
    assert_eq!(code, 3);
    assert!(stderr.contains("401 unauthenticated"), "{stderr}");
    assert!(!stderr.contains("wrong-key"), "{stderr}");
}

#[test]
fn bad_input_exits_2_before_any_request() {
    // Nothing listens at this base URL: any request would fail differently.
    let base = ["--base-url", "http://127.0.0.1:9/api/v1"];
    let (code, _, stderr) = run(bin()
        .args(base)
        .args(["lookup", "not a user"])
        .env("XQUIK_API_KEY", KEY));
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid <ID or @username>"), "{stderr}");

    let (code, _, stderr) = run(bin().args(base).args(["lookup", "@jack"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("XQUIK_API_KEY is not set"), "{stderr}");

    let (code, _, stderr) = run(bin()
        .args(["--base-url", "http://example.com/api/v1", "lookup", "@jack"])
        .env("XQUIK_API_KEY", KEY));
    assert_eq!(code, 2);
    assert!(stderr.contains("refusing to send the API key"), "{stderr}");

    let (code, _, _) = run(bin().args(["sync", "--account", "acme"]));
    assert_eq!(code, 2);
    let (code, _, _) = run(bin().args(["no-such-command"]));
    assert_eq!(code, 2);
    let (code, stdout, _) = run(bin().args(["--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("sync") && stdout.contains("lookup") && stdout.contains("demo"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_binary_reports_and_exits_per_spec() {
    let mut config = world(&[250, 40], 50);
    config.faults.forbidden = vec![(ACCOUNT.to_owned(), user_id(2))];
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let base_url = server.base_url();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(bin()
            .args(["--base-url", &base_url, "sync", "--account", ACCOUNT])
            .args(["--user", &user_id(1), "--user", &user_id(2), "--json"])
            .arg("--out")
            .arg(&out)
            .env("XQUIK_API_KEY", KEY))
    })
    .await
    .unwrap();
    assert_eq!(code, 4, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["new_messages"], 250);
    let convs = report["conversations"].as_array().unwrap();
    assert_eq!(convs.len(), 2);
    assert_eq!(convs[1]["reason"], "dm_not_permitted");
    // Logs are JSON lines when stderr is not a terminal.
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    assert_no_bodies(&server, &[user_id(1)], dir.path(), &[&stdout, &stderr]);
}

/// Asserts that no message body of 8+ characters appears in the state
/// folder or in the given texts (logs, reports).
fn assert_no_bodies(server: &MockServer, users: &[String], out: &Path, texts: &[&str]) {
    let mut haystacks: Vec<(String, String)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("output #{i}"), (*t).to_owned()))
        .collect();
    for entry in std::fs::read_dir(out.join("state")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        haystacks.push((
            path.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
        ));
    }
    let mut checked = 0;
    for user in users {
        for m in server.history(ACCOUNT, user) {
            let Some(text) = m.text.filter(|t| t.chars().count() >= 8) else {
                continue;
            };
            checked += 1;
            for (name, hay) in &haystacks {
                assert!(!hay.contains(&text), "a message body leaked into {name}");
                // JSON escaping must not hide a leak either.
                let escaped = serde_json::to_string(&text).unwrap();
                assert!(
                    !hay.contains(escaped.trim_matches('"')),
                    "an escaped body leaked into {name}"
                );
            }
        }
    }
    assert!(checked > 10, "only {checked} bodies checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_then_rerun_converges_to_the_ground_truth() {
    let sizes = vec![2_500u64; 40];
    let mut config = world(&sizes, 100);
    config.faults = Faults {
        transient_rate: 0.02,
        retry_after_ms: 1,
        overlap: 2,
        unordered: true,
        ..Faults::default()
    };
    let server = MockServer::start(config).await.unwrap();
    let users: Vec<String> = (1..=sizes.len()).map(user_id).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    let base_url = server.base_url();
    let sync_cmd = {
        let users = users.clone();
        move || {
            let mut cmd = bin();
            cmd.args([
                "--base-url",
                &base_url,
                "--max-attempts",
                "20",
                "sync",
                "--account",
                ACCOUNT,
            ]);
            for u in &users {
                cmd.args(["--user", u]);
            }
            cmd.arg("--out")
                .arg(&out)
                .args(["--concurrency", "8", "--commit-interval-ms", "15"])
                .env("XQUIK_API_KEY", KEY)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        }
    };
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let cmd = sync_cmd.clone();
    let out = dir.path().to_owned();
    let (kills, torn, progressed) = tokio::task::spawn_blocking(move || {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut killed_mid_run, mut torn_tails, mut progressed) = (0, 0, 0);
        let mut last_committed = 0;
        for _ in 0..12 {
            let mut child = cmd().spawn().unwrap();
            std::thread::sleep(Duration::from_millis(rng.u64(5..500)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                killed_mid_run += 1;
            }
            child.wait().unwrap();
            // What the kill left: committed bytes vs bytes on disk.
            let committed = std::fs::read(out.join("state/checkpoint.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|c| c["jsonl"]["committed_bytes"].as_u64())
                .unwrap_or(0);
            let on_disk =
                std::fs::metadata(out.join("xquik-dm-handoff.jsonl")).map_or(0, |m| m.len());
            assert!(on_disk >= committed, "the checkpoint points past the data");
            torn_tails += usize::from(on_disk > committed);
            progressed += usize::from(committed > last_committed);
            last_committed = committed;
        }
        (killed_mid_run, torn_tails, progressed)
    })
    .await
    .unwrap();
    // The scenario must really cover the cases: kills mid-run, uncommitted
    // tails left behind, and runs that committed before being killed.
    assert!(
        kills >= 6,
        "only {kills} runs were killed mid-run (seed {seed})"
    );
    assert!(
        torn >= 2,
        "only {torn} kills left an uncommitted tail (seed {seed})"
    );
    assert!(
        progressed >= 3,
        "only {progressed} killed runs committed anything (seed {seed})"
    );

    let cmd = sync_cmd.clone();
    let status = tokio::task::spawn_blocking(move || cmd().status().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "final run (seed {seed})");
    assert_ground_truth(dir.path(), &server, &users);
    assert_parquet_equals_jsonl(dir.path());
}

#[test]
fn demo_runs_offline_and_checks_itself() {
    // The demo runs the reviewer's check where ssh-keygen is installed.
    drop(crate::signing::ssh_keygen());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (code, stdout, stderr) = run(bin()
        .args([
            "--base-url",
            "https://unreachable.invalid/api/v1",
            "demo",
            "--out",
        ])
        .arg(&out)
        // Its throwaway key and report go to the temp dir: this test's.
        .env("TMPDIR", dir.path()));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Check against the mock's ground truth: OK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Audit check (xquik-dm verify --allowed-signers --require-signatures): OK"),
        "{stdout}"
    );
    // Every run signed; ssh-keygen accepts the line the demo prints.
    assert!(
        stdout.contains("3 manifest SSH signatures verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ssh-keygen -Y verify: Good signature"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("cd ") && l.contains("ssh-keygen -Y verify"))
        .unwrap();
    let status = Command::new("sh").args(["-c", line]).status().unwrap();
    assert!(status.success(), "{line}");
    let review = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("xquik-dm-demo-review-"))
        .unwrap();
    assert!(review.join("report.html").exists());
    let secret = std::fs::read_to_string(review.join("id_ed25519")).unwrap();
    for line in secret.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stdout.contains(line) && !stderr.contains(line));
    }
    assert!(stdout.contains("duckdb -c"), "{stdout}");
    // The demo's own bodies never reach the terminal or the logs.
    for body in ["Thanks for your message!", "Here is the screenshot"] {
        assert!(!stdout.contains(body) && !stderr.contains(body));
    }
    let sends = std::fs::read_to_string(out.join("xquik-dm-handoff.jsonl")).unwrap();
    assert_eq!(sends.matches("\"record_type\":\"send\"").count(), 2);
}

/// Every file under `sub` (recursively), as (relative path, text).
fn texts_under(dir: &Path, sub: &str) -> Vec<(String, String)> {
    crate::files_under(dir, sub)
        .into_iter()
        .map(|rel| {
            let text =
                String::from_utf8_lossy(&std::fs::read(dir.join(&rel)).unwrap()).into_owned();
            (rel, text)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_body_and_no_key_outside_the_private_outputs() {
    let mut config = world(&[400, 60], 50);
    config.faults.transient_rate = 0.1;
    config.faults.retry_after_ms = 1;
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let picture = dir.path().join("p.png");
    std::fs::write(&picture, b"\x89PNG\r\n\x1a\nbytes").unwrap();
    let sent_texts = [
        "A private reply: «ne pas diffuser» 🤐".to_owned(),
        "Media caption with\nnewline and \"quotes\"".to_owned(),
    ];
    let base_url = server.base_url();
    let (o, p, texts) = (out.clone(), picture.clone(), sent_texts.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let base = [
            "--base-url",
            base_url.as_str(),
            "--log-format",
            "json",
            "-v",
        ];
        all.push(run(bin()
            .args(base)
            .args([
                "sync",
                "--account",
                ACCOUNT,
                "--user",
                &user_id(1),
                "--user",
                "@user2",
                "--out",
            ])
            .arg(&o)
            .env("XQUIK_API_KEY", KEY)));
        all.push(run(bin()
            .args(base)
            .args([
                "send",
                "--account",
                ACCOUNT,
                "--to",
                &user_id(1),
                "--text",
                &texts[0],
                "--out",
            ])
            .arg(&o)
            .env("XQUIK_API_KEY", KEY)));
        all.push(run(bin()
            .args(base)
            .args([
                "send",
                "--account",
                ACCOUNT,
                "--to",
                "@user2",
                "--text",
                &texts[1],
                "--media",
            ])
            .arg(&p)
            .arg("--out")
            .arg(&o)
            .env("XQUIK_API_KEY", KEY)));
        all.push(run(bin().args(["verify", "--json"]).arg(&o)));
        all
    })
    .await
    .unwrap();
    for (code, _, stderr) in &outputs {
        assert_eq!(*code, 0, "{stderr}");
    }
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for (i, (_, stdout, stderr)) in outputs.iter().enumerate() {
        haystacks.push((format!("stdout of step {i}"), stdout.clone()));
        haystacks.push((format!("stderr of step {i}"), stderr.clone()));
    }
    haystacks.extend(texts_under(&out, "audit"));
    haystacks.extend(texts_under(&out, "state"));
    haystacks.push((
        "SHA256SUMS".into(),
        std::fs::read_to_string(out.join("SHA256SUMS")).unwrap(),
    ));

    let mut bodies: Vec<String> = sent_texts.to_vec();
    for user in [user_id(1), user_id(2)] {
        bodies.extend(
            server
                .history(ACCOUNT, &user)
                .into_iter()
                .filter_map(|m| m.text),
        );
    }
    bodies.retain(|b| b.chars().count() >= 8);
    assert!(bodies.len() > 300);
    for (name, hay) in &haystacks {
        assert!(!hay.contains(KEY), "the API key leaked into {name}");
        for body in &bodies {
            let escaped = serde_json::to_string(body).unwrap();
            assert!(
                !hay.contains(body.as_str()) && !hay.contains(escaped.trim_matches('"')),
                "a message body leaked into {name}"
            );
        }
    }
    // And the private outputs do hold them.
    let jsonl = std::fs::read_to_string(out.join("xquik-dm-handoff.jsonl")).unwrap();
    for text in &sent_texts {
        assert!(jsonl.contains(serde_json::to_string(text).unwrap().trim_matches('"')));
    }
}

#[test]
fn bench_runs_small_and_reports_consistent_figures() {
    let (code, stdout, stderr) = run(bin().args([
        "bench",
        "--conversations",
        "6",
        "--messages",
        "150",
        "--page-size",
        "50",
        "--runs",
        "1",
        "--new-percent",
        "10",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["fetch_only"]["messages"], 900);
    assert_eq!(r["fetch_only"]["pages"], 18);
    assert_eq!(r["full_sync"]["messages"], 900);
    assert_eq!(r["full_sync"]["credits"], 900);
    assert!(r["full_sync"]["peak_rss_mb"].as_f64().unwrap() > 1.0);
    assert!(r["full_sync"]["cpu_s"].as_f64().unwrap() > 0.0);
    // 15 new messages per conversation, found on the first page of 50:
    // one page each, 50 credits each.
    assert_eq!(r["new_messages"], 90);
    assert_eq!(r["incremental"]["pages"], 6);
    assert_eq!(r["incremental"]["credits"], 300);
}

/// `--help` is part of the interface: it is pinned by golden files
/// (`tests/golden/help-*.txt`); regenerate them with
/// `XQUIK_DM_UPDATE_GOLDEN=1 cargo test golden`.
#[test]
fn help_matches_the_golden_files() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for command in [
        "main",
        "sync",
        "send",
        "verify",
        "report",
        "load",
        "compact",
        "forget",
        "rebuild",
        "completions",
        "man",
        "lookup",
        "mock",
        "demo",
        "bench",
    ] {
        let mut cmd = bin();
        if command != "main" {
            cmd.arg(command);
        }
        let (code, stdout, _) = run(cmd.arg("--help").env_remove("XQUIK_MOCK_API_KEY"));
        assert_eq!(code, 0);
        let path = golden.join(format!("help-{command}.txt"));
        if std::env::var_os("XQUIK_DM_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &stdout).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            stdout,
            expected,
            "{command} --help differs from {}",
            path.display()
        );
    }
}

/// Shell completions and man pages come from the same definition as the
/// parser: every command is in them, bash accepts the script, groff
/// renders the page, and the API options are listed only where they apply.
#[test]
fn completions_and_man_pages_are_generated() {
    let commands = [
        "sync", "send", "verify", "compact", "rebuild", "lookup", "demo",
    ];
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run(bin().args(["completions", shell]));
        assert_eq!(code, 0, "{stderr}");
        for command in commands {
            assert!(script.contains(command), "{shell}: {command} missing");
        }
        assert!(script.contains("metrics-file"), "{shell}");
    }
    let (_, bash, _) = run(bin().args(["completions", "bash"]));
    let checked = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bash.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(checked.success(), "bash rejects the completion script");

    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(bin().args(["man", "--dir"]).arg(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    for command in commands {
        assert!(dir.path().join(format!("xquik-dm-{command}.1")).exists());
    }
    let rendered = Command::new(crate::debian_tool("groff", "groff", "--version"))
        .args(["-man", "-Tutf8"])
        .arg(dir.path().join("xquik-dm-sync.1"))
        .output()
        .unwrap();
    // Bold and underline come as overstrikes (a character, a backspace).
    let raw = String::from_utf8_lossy(&rendered.stdout);
    let mut text = String::new();
    for c in raw.chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        text.contains("SYNOPSIS") && text.contains("--metrics-file"),
        "{text}"
    );
    // The API's options are where requests are made, not elsewhere.
    let (_, verify_help, _) = run(bin().args(["verify", "--help"]));
    assert!(!verify_help.contains("--rate-get") && !verify_help.contains("--base-url"));
    let (_, sync_help, _) = run(bin().args(["sync", "--help"]));
    assert!(sync_help.contains("--rate-get") && sync_help.contains("--base-url"));
}
