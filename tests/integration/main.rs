//! Integration tests, built as one binary. Every test talks only to servers
//! on 127.0.0.1 port 0: the embedded mock, or a scripted server when a test
//! needs exact control over each answer.

mod bucket;
mod cli;
mod client;
mod compact;
mod delta;
mod delta_log;
mod erasure;
mod fuzz;
mod golden;
mod hostile;
mod load;
mod load_tls;
mod metrics;
mod pacing;
mod protocol;
mod report;
mod retention;
mod scheduler;
mod scripted;
mod send;
mod shards;
mod signing;
mod sync;
mod verify;
mod warehouse;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use xquik_dm::commands::sync::{SyncOptions, Target};
use xquik_dm::mock::{MockAccount, MockConfig, MockConversation, MockServer, MockUser};
use xquik_dm::{Account, ApiKey, ClientConfig, RetryPolicy, UserRef};

/// The key the test mocks accept.
pub const KEY: &str = "xq-test-key-8d1f0e";
/// The account of the test worlds.
pub const ACCOUNT: &str = "acme";

/// Installs the TLS provider reqwest needs before any client is built.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A world with one account and conversations of the given sizes with users
/// `1000001`, `1000002`, ... (username `user1`, `user2`, ...). No rate limit:
/// tests that page fast must not be throttled unless they ask to be.
pub fn world(sizes: &[u64], page_size: usize) -> MockConfig {
    let users: Vec<MockUser> = (1..=sizes.len())
        .map(|i| MockUser {
            id: user_id(i),
            username: format!("user{i}"),
            name: format!("User {i}"),
            can_dm: Some(true),
        })
        .collect();
    MockConfig {
        api_key: Some(KEY.to_owned()),
        accounts: vec![MockAccount {
            handle: ACCOUNT.to_owned(),
            user_id: "1612345678901234567".to_owned(),
        }],
        conversations: sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| MockConversation {
                account: ACCOUNT.to_owned(),
                user_id: user_id(i + 1),
                messages: n,
            })
            .collect(),
        users,
        page_size,
        get_limit_per_sec: 0,
        post_limit_per_min: 0,
        ..MockConfig::default()
    }
}

/// The ID of the i-th test user (1-based).
pub fn user_id(i: usize) -> String {
    format!("{}", 1_000_000 + i)
}

/// The IDs of the first `n` test users.
pub fn users(n: usize) -> Vec<String> {
    (1..=n).map(user_id).collect()
}

/// Sync options for the conversations of `ACCOUNT` with `users`, against
/// `server`, with fast retries and frequent commits.
pub fn sync_options(server: &MockServer, out: &Path, users: &[String]) -> SyncOptions {
    let targets = users
        .iter()
        .map(|u| Target {
            account: Account::parse(ACCOUNT).unwrap(),
            user: UserRef::Id(u.clone()),
        })
        .collect();
    let mut options = SyncOptions::new(api(server), out.to_owned(), targets);
    options.concurrency = 4;
    options.commit_interval = Duration::from_millis(5);
    options
}

/// Options of a send run of `lines` into `out` against `server`.
pub fn send_options(
    server: &MockServer,
    out: &Path,
    lines: Vec<xquik_dm::commands::send::BatchLine>,
) -> xquik_dm::commands::send::SendOptions {
    xquik_dm::commands::send::SendOptions {
        api: api(server),
        out: out.to_owned().into(),
        batch: lines.len() > 1,
        lines,
        ignore_can_dm: false,
        skip_invalid: false,
        max_credits: None,
        audit_key: None,
        signing_key: None,
    }
}

/// Flips a byte in the middle of the first Parquet file of `out`; returns
/// its path relative to `out`.
pub fn tamper_with_a_parquet_file(out: &Path) -> String {
    let parquet = files_under(out, "parquet")
        .into_iter()
        .find(|p| p.ends_with(".parquet"))
        .unwrap();
    let mut bytes = std::fs::read(out.join(&parquet)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(out.join(&parquet), bytes).unwrap();
    parquet
}

/// Every regular file below `dir/sub`, relative to `dir`, sorted.
pub fn files_under(dir: &Path, sub: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.join(sub)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

/// A client configuration for `server` with millisecond retries, unpaced
/// (the test worlds have no rate limit unless a test sets one, and then it
/// sets the pace too).
pub fn api(server: &MockServer) -> ClientConfig {
    init();
    let mut config = ClientConfig::new(server.base_url(), ApiKey::new(KEY).unwrap());
    config.retry = RetryPolicy {
        max_attempts: 12,
        ..RetryPolicy::fast()
    };
    config.timeout = Duration::from_secs(10);
    config.pace = xquik_dm::api::pace::Limits::unlimited();
    config
}

/// Every JSONL record of an output folder, parsed independently of the
/// library's own types.
pub fn jsonl_records(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("xquik-dm-handoff.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l:?}: {e}")))
        .collect()
}

/// History records by conversation, then by message ID; panics on a
/// duplicate ID within a conversation.
pub fn history_by_conversation(out: &Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut by: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for r in jsonl_records(out) {
        if r["record_type"] != "history" {
            continue;
        }
        let conv = r["conversation_user_id"].as_str().unwrap().to_owned();
        let id = r["message_id"].as_str().unwrap().to_owned();
        let previous = by.entry(conv.clone()).or_default().insert(id.clone(), r);
        assert!(
            previous.is_none(),
            "duplicate message {id} in conversation {conv}"
        );
    }
    by
}

/// Asserts that the outputs hold exactly the mock's ground truth for the
/// conversations with `users`: every message, byte for byte, once.
pub fn assert_ground_truth(out: &Path, server: &MockServer, users: &[String]) {
    let written = history_by_conversation(out);
    for user in users {
        let truth = server.history(ACCOUNT, user);
        let got = written.get(user).cloned().unwrap_or_default();
        assert_eq!(got.len(), truth.len(), "conversation {user}: message count");
        for m in &truth {
            let r = got
                .get(&m.id)
                .unwrap_or_else(|| panic!("conversation {user}: message {} missing", m.id));
            assert_eq!(r["sender_id"], m.sender_id.as_str());
            assert_eq!(r["receiver_id"], m.receiver_id.as_str());
            assert_eq!(r["account"], ACCOUNT);
            assert_eq!(
                r["message_text"].as_str(),
                m.text.as_deref(),
                "text of {}",
                m.id
            );
            assert_eq!(r["media_url"].as_str(), m.media_url.as_deref());
            match &m.created_at {
                None => assert!(r["created_at"].is_null()),
                Some(t) => {
                    let expected = chrono::DateTime::parse_from_rfc3339(t)
                        .unwrap()
                        .with_timezone(&chrono::Utc);
                    let got =
                        chrono::DateTime::parse_from_rfc3339(r["created_at"].as_str().unwrap())
                            .unwrap();
                    assert_eq!(got, expected, "created_at of {}", m.id);
                    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
                }
            }
        }
    }
}

static PYDEPS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `python3` command that can import `modules`, installing them from PyPI
/// into the test target folder on first use. A module given as
/// `package:import` is installed as `package` and imported as `import`.
pub fn python_with(modules: &[&str]) -> std::process::Command {
    use std::process::{Command, Stdio};
    let target = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pydeps");
    let _guard = PYDEPS.lock().unwrap_or_else(|p| p.into_inner());
    let (packages, imports): (Vec<&str>, Vec<&str>) = modules
        .iter()
        .map(|m| m.split_once(':').unwrap_or((m, m)))
        .unzip();
    let import = format!("import {}", imports.join(", "));
    let importable = Command::new("python3")
        .args(["-c", &import])
        .env("PYTHONPATH", &target)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&target)
            .args(&packages)
            .status()
            .expect("python3 is needed for these tests");
        assert!(status.success(), "pip could not install {packages:?}");
    }
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", &target);
    cmd
}

/// Every manifest of `out`, parsed, in chain order.
pub fn chain_manifests(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("audit/chain.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let entry: Value = serde_json::from_str(line).unwrap();
            let path = out.join(entry["manifest"].as_str().unwrap());
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        })
        .collect()
}

/// Runs a Python script with arguments; returns its stdout, failing the
/// test with its stderr if it fails.
pub fn run_python(mut cmd: std::process::Command, script: &str, args: &[&Path]) -> String {
    let output = cmd.arg("-c").arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The program `program` of Debian's package `package`, installed with
/// apt-get when the machine lacks it (`probe` is an argument it answers
/// with success, such as `--version`).
pub fn debian_tool(program: &str, package: &str, probe: &str) -> std::path::PathBuf {
    use std::process::{Command, Stdio};
    let found = || {
        Command::new(program)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _guard = PYDEPS.lock().unwrap_or_else(|p| p.into_inner());
    if !found() {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        let status = Command::new("apt-get")
            .args(["install", "-y", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success() && found(), "cannot install {package}");
    }
    std::path::PathBuf::from(program)
}

/// Copies the folder `from` to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Asserts that every manifest of `out` matches `schemas/manifest.schema.json`
/// (checked by jsonschema, independently of the library's types).
pub fn assert_manifests_match_schema(out: &Path) {
    let script = r#"
import glob, json, os, sys
import jsonschema
validator = jsonschema.Draft202012Validator(json.load(open(sys.argv[1])))
for path in glob.glob(os.path.join(sys.argv[2], "audit/runs/*.manifest.json")):
    errors = list(validator.iter_errors(json.load(open(path))))
    if errors:
        sys.exit(f"{path}: {errors[0].json_path}: {errors[0].message}")
print("ok")
"#;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/manifest.schema.json");
    let checked = run_python(python_with(&["jsonschema"]), script, &[&schema, out]);
    assert_eq!(checked.trim(), "ok");
}
