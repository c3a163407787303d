//! The signed audit trail (SPEC §6 "Signed audit"), checked with the
//! machine's own `ssh-keygen`: it makes the keys, verifies every signature
//! the tool writes and signs manifests the tool must accept or reject; on
//! every case `verify --allowed-signers` and `ssh-keygen -Y verify` agree.

use crate::copy_dir;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use xquik_dm::commands::verify::{self, Trust, VerifyReport};
use xquik_dm::error::Result;
use xquik_dm::sshsig::{AllowedSigners, NAMESPACE, SigFailure, SigningKey};
use xquik_dm::storage::local::LocalDir;
use xquik_dm::storage::{
    Backend, ChainBytes, Expect, HandoffLog, Journal, Listed, Location, NewObject, Storage, Stored,
};
use xquik_dm::store::{ManifestBody, RunStamp, Store};

use crate::cli::{bin, run};
use crate::compact::{one_run, past_runs};
use crate::{ACCOUNT, KEY, files_under, user_id, world};

/// `ssh-keygen`, from Debian's openssh-client, installed when missing.
pub fn ssh_keygen() -> Command {
    let missing = Command::new("ssh-keygen")
        .arg("-?")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err();
    if missing {
        // `ssh -V` answers with success; `ssh-keygen` has no such probe.
        crate::debian_tool("ssh", "openssh-client", "-V");
    }
    Command::new("ssh-keygen")
}

/// A key pair made by `ssh-keygen -t ed25519 -N ''`.
struct Keypair {
    private: PathBuf,
    public: String,
}

fn keygen(dir: &Path, name: &str) -> Keypair {
    let private = dir.join(name);
    let status = ssh_keygen()
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    Keypair {
        private,
        public: public.trim().to_owned(),
    }
}

fn load(key: &Keypair) -> SigningKey {
    SigningKey::load(&key.private, "--signing-key").unwrap()
}

/// Writes an `allowed_signers` file of `(principal, options, key)` lines.
fn allowed(dir: &Path, lines: &[(&str, &str, &Keypair)]) -> PathBuf {
    let path = dir.join(format!("allowed_signers.{}", fastrand::u64(..)));
    let text: String = lines
        .iter()
        .map(|(principal, options, key)| format!("{principal} {options} {}\n", key.public))
        .collect();
    std::fs::write(&path, text.replace("  ", " ")).unwrap();
    path
}

/// `verify` with the allowed signers at `signers`.
fn verify_with(out: &Path, signers: &Path, require: bool) -> VerifyReport {
    let trust = Trust {
        key: None,
        signers: Some(AllowedSigners::load(signers, "--allowed-signers").unwrap()),
        require_signatures: require,
    };
    verify::run_trusted(out, &trust, None, None).unwrap()
}

/// The signed runs of `out`: (run ID, manifest path, signature path).
fn signed_runs(out: &Path) -> Vec<(String, PathBuf, PathBuf)> {
    files_under(out, "audit/runs")
        .into_iter()
        .filter(|f| f.ends_with(".manifest.json.sig"))
        .map(|sig| {
            let manifest = sig.strip_suffix(".sig").unwrap().to_owned();
            let run = Path::new(&manifest)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .split('.')
                .next()
                .unwrap()
                .to_owned();
            (run, out.join(manifest), out.join(sig))
        })
        .collect()
}

/// `ssh-keygen -Y verify` of `sig` over `manifest` as `principal`, at the
/// run's `finished_at` (as the reviewer's README line does).
fn ssh_keygen_verifies(signers: &Path, principal: &str, manifest: &Path, sig: &Path) -> bool {
    let bytes = std::fs::read(manifest).unwrap();
    let at = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map(|m| m["finished_at"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let mut time: String = at.chars().take(19).filter(char::is_ascii_digit).collect();
    time.push('Z');
    let mut child = ssh_keygen()
        .args(["-Y", "verify", "-f"])
        .arg(signers)
        .args(["-I", principal, "-n", NAMESPACE, "-s"])
        .arg(sig)
        .arg(format!("-Overify-time={time}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    child.wait().unwrap().success()
}

/// `ssh-keygen -Y sign` of `file` with `key`: writes `<file>.sig`.
fn ssh_keygen_sign(key: &Keypair, file: &Path) {
    let _ = std::fs::remove_file(format!("{}.sig", file.display()));
    let status = ssh_keygen()
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(&key.private)
        .arg(file)
        .status()
        .unwrap();
    assert!(status.success());
}

fn stamp(day: u32, hour: u32, n: u64) -> RunStamp {
    let date = format!("2026-11-{day:02}");
    RunStamp {
        run_id: format!("202611{day:02}T{hour:02}0000Z-{n:016x}"),
        date: date.clone(),
        started_at: format!("{date}T{hour:02}:00:00.000Z"),
    }
}

/// A run of `rows` records sealed at `stamp`, signed with `key`.
fn signed_run(storage: &Storage, stamp: &RunStamp, n: u64, key: Option<&SigningKey>) -> u64 {
    let mut store = Store::open(storage, stamp).unwrap();
    let rows: Vec<_> = (0..3).map(|i| row(n + i)).collect();
    store
        .append_history(&xquik_dm::records::HistoryBatch::of(&rows))
        .unwrap();
    store.commit().unwrap();
    let mut body = ManifestBody::empty("sync");
    body.ssh_key = key.cloned();
    store.seal(body).unwrap();
    n + 3
}

fn row(n: u64) -> xquik_dm::records::HistoryRow {
    xquik_dm::records::HistoryRow {
        record_type: xquik_dm::records::RecordType::History,
        message_id: (1_900_000_000_000_000_000 + n).to_string(),
        conversation_user_id: "1000001".into(),
        account: "acme".into(),
        sender_id: "1000001".into(),
        receiver_id: "1612345678901234567".into(),
        created_at: Some(1_764_000_000_000_000 + n as i64),
        message_text: Some(format!("text {n}")),
        media_url: None,
    }
}

fn local(out: &Path) -> Storage {
    Arc::new(LocalDir::new(out))
}

/// Applies `tamper` to a copy of `base`; asserts `verify` exits 5 with a
/// failure on `path` whose reason contains `reason`, and that `ssh-keygen`
/// rejects the signature too.
fn assert_rejected(
    base: &Path,
    signers: &Path,
    (path, reason): (&str, &str),
    tamper: impl FnOnce(&Path),
) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(base, copy.path());
    tamper(copy.path());
    let report = verify_with(copy.path(), signers, false);
    assert_eq!(report.exit_code(), 5, "{reason}: not caught");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.path == path && f.reason.contains(reason)),
        "{path}: {reason:?} not in {:?}",
        report.failures
    );
    let manifest = copy.path().join(path.strip_suffix(".sig").unwrap_or(path));
    let sig = copy.path().join(format!("{}.sig", manifest.display()));
    if sig.exists() {
        assert!(
            !ssh_keygen_verifies(signers, "ops@example.com", &manifest, &sig),
            "{reason}: ssh-keygen accepts what verify rejects"
        );
    }
}

/// Sync, send and compact through the binary, each with `--signing-key`,
/// after runs sealed before signing began: every signature verifies with
/// `ssh-keygen -Y verify` and with ours, the earlier runs are reported
/// unsigned (a failure only with `--require-signatures`), and the private
/// key is nowhere in the output, the logs or the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn signed_runs_of_every_kind_verify_with_ssh_keygen_and_ours() {
    let keys = tempfile::tempdir().unwrap();
    let key = keygen(keys.path(), "job");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    past_runs(&out, 3, 2, 20);
    let server = xquik_dm::mock::MockServer::start(world(&[120, 30], 50))
        .await
        .unwrap();
    let base_url = server.base_url();
    let metrics = keys.path().join("metrics.prom");
    let (private, out2, metrics2) = (key.private.clone(), out.clone(), metrics.clone());
    let outputs = tokio::task::spawn_blocking(move || {
        let compact = run(bin()
            .args(["compact", "--min-files", "2", "--out"])
            .arg(&out2)
            .arg("--signing-key")
            .arg(&private));
        let sync = run(bin()
            .args(["--base-url", &base_url, "sync", "--account", ACCOUNT])
            .args(["--user", &user_id(1), "--user", &user_id(2), "--out"])
            .arg(&out2)
            .arg("--metrics-file")
            .arg(&metrics2)
            .env("XQUIK_DM_SIGNING_KEY_FILE", &private)
            .env("XQUIK_API_KEY", KEY));
        let send = run(bin()
            .args(["--base-url", &base_url, "send", "--account", ACCOUNT])
            .args(["--to", &user_id(1), "--text", "signed hello", "--out"])
            .arg(&out2)
            .arg("--signing-key")
            .arg(&private)
            .env("XQUIK_API_KEY", KEY));
        [compact, sync, send]
    })
    .await
    .unwrap();
    for (code, stdout, stderr) in &outputs {
        assert_eq!(*code, 0, "{stdout}{stderr}");
    }
    let signers = allowed(keys.path(), &[("ops@example.com", "", &key)]);
    let report = verify_with(&out, &signers, false);
    assert!(report.ok(), "{report}");
    assert_eq!(report.ssh_signatures, 3, "{report}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("6 runs sealed before SSH signing began")),
        "{report}"
    );
    let signed = signed_runs(&out);
    assert_eq!(signed.len(), 3);
    for (run, manifest, sig) in &signed {
        assert!(
            ssh_keygen_verifies(&signers, "ops@example.com", manifest, sig),
            "ssh-keygen rejects run {run}"
        );
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        assert_eq!(m["signer"]["fingerprint"], load(&key).fingerprint());
        assert_eq!(m["signer"]["namespace"], NAMESPACE);
        // The run's checksum file lists the signature: sha256sum -c checks it.
        let sums = std::fs::read_to_string(out.join(format!("audit/runs/{run}.sha256"))).unwrap();
        assert!(sums.contains(".manifest.json.sig"), "{sums}");
    }
    let sums = Command::new("sh")
        .current_dir(&out)
        .args(["-c", "cat audit/runs/*.sha256 | sha256sum -c --quiet -"])
        .status()
        .unwrap();
    assert!(sums.success());

    crate::assert_manifests_match_schema(&out);

    let required = verify_with(&out, &signers, true);
    assert_eq!(required.exit_code(), 5);
    let unsigned: Vec<_> = required
        .failures
        .iter()
        .filter(|f| f.reason.contains("is not signed (--require-signatures)"))
        .collect();
    assert_eq!(unsigned.len(), 6, "{required}");

    // The private key's bytes are nowhere: not in the tree, the logs or
    // the metrics.
    let secret = std::fs::read_to_string(&key.private).unwrap();
    let body: Vec<&str> = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut haystack = String::new();
    for file in files_under(&out, "") {
        haystack.push_str(&String::from_utf8_lossy(
            &std::fs::read(out.join(file)).unwrap(),
        ));
    }
    haystack.push_str(&std::fs::read_to_string(&metrics).unwrap());
    for (_, stdout, stderr) in &outputs {
        haystack.push_str(stdout);
        haystack.push_str(stderr);
    }
    for line in body {
        assert!(!haystack.contains(line), "a private key line leaked");
    }
}

/// A folder of three signed runs, and the allowed signers that trust its
/// key (`ops@example.com`).
fn three_signed_runs(dir: &Path) -> (PathBuf, Keypair, PathBuf) {
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let key = keygen(dir, "job");
    let signing = load(&key);
    let storage = local(&out);
    let mut n = 0;
    for hour in 0..3 {
        n = signed_run(&storage, &stamp(1, hour, n), n, Some(&signing));
    }
    let signers = allowed(dir, &[("ops@example.com", "", &key)]);
    (out, key, signers)
}

#[test]
fn every_tampering_with_a_signed_run_exits_5_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (out, key, signers) = three_signed_runs(dir.path());
    assert!(verify_with(&out, &signers, false).ok());
    let runs = signed_runs(&out);
    let rel = |p: &Path| p.strip_prefix(&out).unwrap().to_string_lossy().into_owned();
    let (first, second) = (&runs[0], &runs[1]);
    let sig = rel(&second.2);

    assert_rejected(&out, &signers, (&sig, "bad signature"), |copy| {
        let manifest = copy.join(rel(&second.1));
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, text.replacen("\"sync\"", "\"sYnc\"", 1)).unwrap();
    });
    assert_rejected(&out, &signers, (&sig, "bad signature"), |copy| {
        std::fs::copy(copy.join(rel(&first.2)), copy.join(&sig)).unwrap();
    });
    assert_rejected(&out, &signers, (&sig, "missing"), |copy| {
        std::fs::remove_file(copy.join(&sig)).unwrap();
    });
    let stranger = keygen(dir.path(), "stranger");
    assert_rejected(
        &out,
        &signers,
        (&sig, "which the allowed signers do not hold"),
        |copy| {
            ssh_keygen_sign(&stranger, &copy.join(rel(&second.1)));
        },
    );
    let expired = allowed(
        dir.path(),
        &[("ops@example.com", "valid-before=\"20261031Z\"", &key)],
    );
    assert_rejected(
        &out,
        &expired,
        (&sig, "was not valid when the run finished"),
        |_| {},
    );
    let only_stranger = allowed(dir.path(), &[("ops@example.com", "", &stranger)]);
    assert_rejected(&out, &only_stranger, (&sig, "do not hold"), |_| {});
    let other_namespace = allowed(
        dir.path(),
        &[("ops@example.com", "namespaces=\"git\"", &key)],
    );
    assert_rejected(
        &out,
        &other_namespace,
        (&sig, "not allowed to sign"),
        |_| {},
    );
}

/// `verify` and `report` through the binary: exit 0 on a signed chain,
/// exit 5 naming the run whose signature was removed; `report` shows each
/// run's signer and what became of its signature.
#[test]
fn verify_and_report_show_each_runs_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (out, key, signers) = three_signed_runs(dir.path());
    let verify = |out: &Path, extra: &[&str]| {
        run(bin()
            .arg("verify")
            .arg(out)
            .arg("--allowed-signers")
            .arg(&signers)
            .args(extra))
    };
    let (code, stdout, _) = verify(&out, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("3 manifest SSH signatures verified"),
        "{stdout}"
    );
    let (code, stdout, _) = verify(&out, &["--require-signatures"]);
    assert_eq!(code, 0, "{stdout}");
    let (code, _, stderr) = run(bin().arg("verify").arg(&out).arg("--require-signatures"));
    assert_eq!(code, 2, "{stderr}");

    let report = run(bin()
        .args(["report", "--json", "--allowed-signers"])
        .arg(&signers)
        .arg(&out));
    assert_eq!(report.0, 0, "{}", report.2);
    let json: serde_json::Value = serde_json::from_str(&report.1).unwrap();
    for r in json["runs"].as_array().unwrap() {
        assert_eq!(r["signature"], "verified");
        assert_eq!(r["signer"], load(&key).fingerprint());
    }

    let (run_id, _, sig) = &signed_runs(&out)[2];
    std::fs::remove_file(sig).unwrap();
    let (code, stdout, _) = verify(&out, &[]);
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.contains(&format!("{run_id}.manifest.json.sig: missing")),
        "{stdout}"
    );
    let (code, stdout, _) = run(bin().arg("report").arg(&out));
    assert_eq!(code, 5, "{stdout}");
    assert!(
        stdout.contains("3 of 3 runs signed; 0 verified, 1 failed"),
        "{stdout}"
    );
}

/// A signature that `ssh-keygen -Y sign` made verifies with ours, over the
/// same bytes only.
#[test]
fn a_signature_made_by_ssh_keygen_verifies_with_ours() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "job");
    let file = dir.path().join("m.json");
    std::fs::write(&file, b"{\"run_id\":\"r1\"}\n").unwrap();
    ssh_keygen_sign(&key, &file);
    let sig = std::fs::read(dir.path().join("m.json.sig")).unwrap();
    let signers = AllowedSigners::parse(&format!("ops@example.com {}\n", key.public)).unwrap();
    let at = chrono::Utc::now();
    let (fingerprint, principals) = signers.verify(b"{\"run_id\":\"r1\"}\n", &sig, at).unwrap();
    assert_eq!(fingerprint, load(&key).fingerprint());
    assert_eq!(principals, "ops@example.com");
    assert_eq!(
        signers.verify(b"{\"run_id\":\"r2\"}\n", &sig, at),
        Err(SigFailure::Bad)
    );
    // Made in another namespace (a git commit signature), it is refused.
    std::fs::remove_file(dir.path().join("m.json.sig")).unwrap();
    let status = ssh_keygen()
        .args(["-q", "-Y", "sign", "-n", "git", "-f"])
        .arg(&key.private)
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let git = std::fs::read(dir.path().join("m.json.sig")).unwrap();
    assert_eq!(
        signers.verify(b"{\"run_id\":\"r1\"}\n", &git, at),
        Err(SigFailure::Namespace("git".into()))
    );
}

/// Key A, then key B: with both in `allowed_signers`, each valid in its
/// window, the whole chain verifies; with only B, the runs A signed fail,
/// each named.
#[test]
fn rotating_from_key_a_to_key_b_verifies_with_both_windows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (a, b) = (keygen(dir.path(), "a"), keygen(dir.path(), "b"));
    let storage = local(&out);
    let mut n = signed_run(&storage, &stamp(1, 0, 0), 0, None);
    n = signed_run(&storage, &stamp(1, 1, n), n, Some(&load(&a)));
    n = signed_run(&storage, &stamp(1, 2, n), n, Some(&load(&a)));
    n = signed_run(&storage, &stamp(3, 0, n), n, Some(&load(&b)));
    signed_run(&storage, &stamp(3, 1, n), n, Some(&load(&b)));
    let both = allowed(
        dir.path(),
        &[
            ("ops@example.com", "valid-before=\"20261102Z\"", &a),
            ("ops@example.com", "valid-after=\"20261102Z\"", &b),
        ],
    );
    let report = verify_with(&out, &both, false);
    assert!(report.ok(), "{report}");
    assert_eq!(report.ssh_signatures, 4);
    let head = report.head.unwrap();
    for (run, manifest, sig) in signed_runs(&out) {
        assert!(
            ssh_keygen_verifies(&both, "ops@example.com", &manifest, &sig),
            "ssh-keygen rejects {run}"
        );
    }
    let only_b = allowed(dir.path(), &[("ops@example.com", "", &b)]);
    let report = verify_with(&out, &only_b, false);
    assert_eq!(report.exit_code(), 5);
    let failed: Vec<&str> = report.failures.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(failed.len(), 2, "{report}");
    // ssh-keygen agrees, run by run.
    for (run, manifest, sig) in signed_runs(&out) {
        let ours = !failed.iter().any(|p| p.contains(&run));
        let theirs = ssh_keygen_verifies(&only_b, "ops@example.com", &manifest, &sig);
        assert_eq!(ours, theirs, "{run}");
    }
    for run in [stamp(1, 1, 3).run_id, stamp(1, 2, 6).run_id] {
        assert!(failed.iter().any(|p| p.contains(&run)), "{run}: {report}");
    }
    // B signing before its window opened is caught the same way.
    let late = allowed(
        dir.path(),
        &[
            ("ops@example.com", "", &a),
            ("ops@example.com", "valid-after=\"20261205Z\"", &b),
        ],
    );
    let report = verify_with(&out, &late, false);
    assert_eq!(report.failures.len(), 2, "{report}");
    // An unsigned run after the signed ones is a failure.
    signed_run(&storage, &stamp(4, 0, 100), 100, None);
    let report = verify_with(&out, &both, false);
    let downgrade = |report: &VerifyReport| {
        report
            .failures
            .iter()
            .any(|f| f.reason.contains("though an earlier run was"))
    };
    assert!(downgrade(&report), "{report}");
    // Also when only the runs after the signed head are checked.
    let trust = Trust {
        key: None,
        signers: Some(AllowedSigners::load(&both, "--allowed-signers").unwrap()),
        require_signatures: false,
    };
    let since = verify::run_trusted(&out, &trust, None, Some(&head)).unwrap();
    assert!(downgrade(&since), "{since}");
}

/// A run killed after its signature, checksum file and manifest are
/// durable and before its chain entry: the next run removes them, and the
/// chain verifies, signatures and all.
#[test]
fn a_run_killed_between_its_signature_and_its_chain_entry_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (out, key, signers) = three_signed_runs(dir.path());
    let signing = load(&key);
    let killed: Storage = Arc::new(KillAtChain(local(&out)));
    let stamp_b = stamp(2, 0, 50);
    let mut store = Store::open(&killed, &stamp_b).unwrap();
    let rows: Vec<_> = (50..53).map(row).collect();
    store
        .append_history(&xquik_dm::records::HistoryBatch::of(&rows))
        .unwrap();
    store.commit().unwrap();
    let mut body = ManifestBody::empty("sync");
    body.ssh_key = Some(signing.clone());
    assert!(store.seal(body).is_err(), "the chain append was not cut");
    let sig = out.join(format!("audit/runs/{}.manifest.json.sig", stamp_b.run_id));
    assert!(sig.exists());
    let before = verify_with(&out, &signers, false);
    assert!(before.ok(), "{before}");
    assert!(
        before
            .notes
            .iter()
            .any(|n| n.contains(".manifest.json.sig was left by an interrupted run")),
        "{before}"
    );
    signed_run(&local(&out), &stamp(2, 1, 60), 60, Some(&signing));
    assert!(!sig.exists());
    let after = verify_with(&out, &signers, true);
    assert!(after.ok(), "{after}");
    assert_eq!(after.ssh_signatures, 4);
}

/// Key files the tool must refuse, with exit 2 and without quoting them.
#[test]
fn unusable_key_files_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "job");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    past_runs(&out, 1, 1, 3);
    let secret = std::fs::read_to_string(&key.private).unwrap();
    let refused = |path: &Path, expect: &str| {
        let (code, stdout, stderr) = run(bin()
            .args(["compact", "--out"])
            .arg(&out)
            .arg("--signing-key")
            .arg(path));
        assert_eq!(code, 2, "{stdout}{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        for line in secret.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!stderr.contains(line) && !stdout.contains(line));
        }
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key.private, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&key.private, "too open");
    std::fs::set_permissions(&key.private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let encrypted = dir.path().join("encrypted");
    let status = ssh_keygen()
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(status.success());
    refused(&encrypted, "encrypted");
    let ecdsa = dir.path().join("ecdsa");
    let status = ssh_keygen()
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&ecdsa)
        .status()
        .unwrap();
    assert!(status.success());
    refused(&ecdsa, "Ed25519 keys only");
    let public = dir.path().join("public");
    std::fs::write(&public, &key.public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(&public, "not an OpenSSH private key");
    refused(&dir.path().join("absent"), "--signing-key");
}

/// A job file's `signing_key` signs its runs; `--signing-key` wins over
/// it, and a bad one is refused before any request.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_files_signing_key_signs_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (job_key, flag_key) = (keygen(dir.path(), "job"), keygen(dir.path(), "flag"));
    let server = xquik_dm::mock::MockServer::start(world(&[30], 50))
        .await
        .unwrap();
    let out = dir.path().join("out");
    let job = dir.path().join("job.toml");
    let text = format!(
        "out = {:?}\nsigning_key = {:?}\n[[conversations]]\naccount = \"{ACCOUNT}\"\nusers = [\"{}\"]\n",
        out.display().to_string(),
        job_key.private.display().to_string(),
        user_id(1)
    );
    std::fs::write(&job, text).unwrap();
    let base_url = server.base_url();
    let sync = move |extra: Vec<PathBuf>| {
        run(bin()
            .args(["--base-url", &base_url, "sync", "--job"])
            .arg(&job)
            .args(extra)
            .env("XQUIK_API_KEY", KEY))
    };
    let sync2 = sync.clone();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || sync(vec![]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let flag = flag_key.private.clone();
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || sync2(vec!["--signing-key".into(), flag]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let signers = allowed(
        dir.path(),
        &[
            ("job@example.com", "", &job_key),
            ("ops@example.com", "", &flag_key),
        ],
    );
    let report = verify_with(&out, &signers, true);
    assert!(report.ok(), "{report}");
    // Two runs in the same second sort by their random part: compare sets.
    let signed: std::collections::BTreeSet<String> = signed_runs(&out)
        .iter()
        .map(|(_, m, _)| {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
            m["signer"]["fingerprint"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected = [load(&job_key), load(&flag_key)].map(|k| k.fingerprint().to_owned());
    assert_eq!(signed, expected.into());

    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o640);
    std::fs::set_permissions(&job_key.private, open).unwrap();
    let job = dir.path().join("job.toml");
    let (code, _, stderr) = run(bin()
        .args(["sync", "--job"])
        .arg(&job)
        .env("XQUIK_API_KEY", KEY));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid signing_key") && stderr.contains("too open"),
        "{stderr}"
    );
}

/// A backend that fails the chain append, as a run killed just before it:
/// everything before it (signature, checksum file, manifest) is durable.
#[derive(Debug)]
pub(crate) struct KillAtChain(pub(crate) Storage);

impl Backend for KillAtChain {
    fn location(&self) -> Location {
        self.0.location()
    }
    fn prepare(&self) -> Result<()> {
        self.0.prepare()
    }
    fn lock(&self, run_id: &str) -> Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.0.lock(run_id)
    }
    fn is_locked(&self) -> bool {
        self.0.is_locked()
    }
    fn get(&self, key: &str) -> Result<Option<Stored>> {
        self.0.get(key)
    }
    fn reader(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Box<dyn std::io::Read + Send>> {
        self.0.reader(key, range)
    }
    fn size(&self, key: &str) -> Result<Option<u64>> {
        self.0.size(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.0.list(prefix)
    }
    fn create(&self, key: &str) -> Result<Box<dyn NewObject>> {
        self.0.create(key)
    }
    fn replace(&self, key: &str, bytes: &[u8], expect: Expect<'_>) -> Result<Option<String>> {
        self.0.replace(key, bytes, expect)
    }
    fn chain_append(&self, _seq: u64, _line: &[u8]) -> Result<()> {
        Err(xquik_dm::Error::io(
            "audit/chain.jsonl",
            std::io::Error::other("killed before the chain entry"),
        ))
    }
    fn chain_read(&self, from: Option<u64>) -> Result<Option<ChainBytes>> {
        self.0.chain_read(from)
    }
    fn chain_cut(&self, len: u64) -> Result<()> {
        self.0.chain_cut(len)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.0.rename(from, to)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key)
    }
    fn handoff(&self, committed: u64) -> Result<Box<dyn HandoffLog>> {
        self.0.handoff(committed)
    }
    fn handoff_reader(&self, range: std::ops::Range<u64>) -> Result<Box<dyn std::io::Read + Send>> {
        self.0.handoff_reader(range)
    }
    fn handoff_len(&self) -> Result<u64> {
        self.0.handoff_len()
    }
    fn handoff_install(&self, staged: &str) -> Result<()> {
        self.0.handoff_install(staged)
    }
    fn journal(&self, key: &str) -> Result<Box<dyn Journal>> {
        self.0.journal(key)
    }
    fn journal_pieces(&self, key: &str) -> Result<Vec<String>> {
        self.0.journal_pieces(key)
    }
    fn sweep_temporaries(&self, names: &[&str]) -> Result<Vec<String>> {
        self.0.sweep_temporaries(names)
    }
    fn table_part(&self) -> Option<&str> {
        self.0.table_part()
    }
}

/// Runs sealed before signing and a folder never signed still verify as
/// they did, also with `--allowed-signers`.
#[test]
fn unsigned_folders_verify_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let storage = local(&out);
    one_run(Store::open(&storage, &stamp(1, 0, 0)).unwrap(), 0, 4, true);
    assert!(verify::run(&out, None, None).unwrap().ok());
    let key = keygen(dir.path(), "job");
    let signers = allowed(dir.path(), &[("ops@example.com", "", &key)]);
    let report = verify_with(&out, &signers, false);
    assert!(report.ok(), "{report}");
    assert_eq!(report.ssh_signatures, 0);
    let chain = std::fs::read_to_string(out.join("audit/chain.jsonl")).unwrap();
    assert!(!chain.contains("signature_sha256"));
}

/// Signed runs into a bucket: each signature is an object next to its
/// manifest; a fresh container verifies them, `ssh-keygen` accepts them
/// read back, and a signature removed from the bucket is named.
#[tokio::test(flavor = "multi_thread")]
async fn signed_runs_in_a_bucket_verify_from_a_fresh_container() {
    use crate::bucket::Moto;
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-signed");
    let url = format!("s3://{bucket}/team/dm");
    let server = Arc::new(
        xquik_dm::mock::MockServer::start(world(&[90, 20], 50))
            .await
            .unwrap(),
    );
    let keys = tempfile::tempdir().unwrap();
    let key = keygen(keys.path(), "job");
    let signers = allowed(keys.path(), &[("ops@example.com", "", &key)]);
    let (m, s, out, private) = (
        moto.clone(),
        server.clone(),
        url.clone(),
        key.private.clone(),
    );
    let signers2 = signers.clone();
    let verify_code = tokio::task::spawn_blocking(move || {
        for appended in [0, 7] {
            s.append_messages(ACCOUNT, &user_id(1), appended);
            let cwd = tempfile::tempdir().unwrap();
            let mut cmd = crate::protocol::sync(&s, &out, &crate::users(2));
            cmd.current_dir(cwd.path())
                .arg("--signing-key")
                .arg(&private);
            m.env(&mut cmd);
            let (code, _, stderr) = run(&mut cmd);
            assert_eq!(code, 0, "{stderr}");
        }
        let verify = |m: &Moto| {
            let fresh = tempfile::tempdir().unwrap();
            let mut cmd = bin();
            cmd.current_dir(fresh.path())
                .args(["verify", &out, "--require-signatures", "--allowed-signers"])
                .arg(&signers2);
            m.env(&mut cmd);
            run(&mut cmd)
        };
        let (code, stdout, stderr) = verify(&m);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(
            stdout.contains("2 manifest SSH signatures verified"),
            "{stdout}"
        );
        let store = m.store(&out);
        let sig = store
            .list("audit/runs/")
            .unwrap()
            .into_iter()
            .map(|l| l.key)
            .find(|k| k.ends_with(".manifest.json.sig"))
            .unwrap();
        let local = tempfile::tempdir().unwrap();
        m.mirror(&bucket, "team/dm", local.path());
        store.delete(&sig).unwrap();
        let (code, stdout, _) = verify(&m);
        assert!(stdout.contains(&format!("{sig}: missing")), "{stdout}");
        (code, local)
    })
    .await
    .unwrap();
    assert_eq!(verify_code.0, 5);
    let runs = signed_runs(verify_code.1.path());
    assert_eq!(runs.len(), 2);
    for (run, manifest, sig) in runs {
        assert!(
            ssh_keygen_verifies(&signers, "ops@example.com", &manifest, &sig),
            "ssh-keygen rejects {run} read back from the bucket"
        );
    }
}
