//! `xquik-dm demo`: the whole workflow offline, with no key and no network.
//! It starts the embedded mock in-process (with transient errors, overlapping
//! and unordered pages switched on), syncs every conversation the demo
//! account can read, lets new messages arrive and syncs again incrementally,
//! sends a text DM and a media DM, verifies the audit trail, checks the
//! outputs against the mock's ground truth, and says where the outputs are
//! and how to query them. Every run is signed with a throwaway SSH key made
//! for the demo; the check uses an `allowed_signers` file holding it, and
//! the demo shows the `ssh-keygen -Y verify` line a reviewer would run (and
//! runs it where `ssh-keygen` is installed), and writes the HTML report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::client::{ApiKey, ClientConfig};
use crate::api::retry::RetryPolicy;
use crate::api::{Account, UserRef};
use crate::commands::send::{self, BatchLine, SendOptions, SendReport, SendRequest};
use crate::commands::sync::{self, SyncOptions, SyncReport, Target};
use crate::commands::verify::{self, Trust, VerifyReport};
use crate::error::{Error, Result};
use crate::mock::{Faults, MockConfig, MockServer};
use crate::sinks::jsonl;
use crate::sshsig::{self, AllowedSigners, SigningKey};
use crate::storage::{Backend, Location};

/// What the demo did.
#[derive(Debug)]
pub struct DemoReport {
    /// Output folder or bucket prefix.
    pub out: Location,
    /// The first, full sync.
    pub full: SyncReport,
    /// The incremental rerun after new messages arrived.
    pub incremental: SyncReport,
    /// The text and media sends.
    pub sends: SendReport,
    /// The audit check of the folder, signatures included.
    pub verify: VerifyReport,
    /// The signing key, the reviewer's files and their check.
    pub review: Review,
    /// New messages that arrived between the runs.
    pub arrived: u64,
    /// Messages the mock serves in all (ground truth).
    pub expected: u64,
    /// History records in the JSONL after both runs.
    pub written: u64,
    /// Message IDs written more than once (must be 0).
    pub duplicates: u64,
}

impl DemoReport {
    /// 0 when the outputs match the ground truth, 4 otherwise.
    pub fn exit_code(&self) -> u8 {
        let ok = self.full.exit_code() == 0
            && self.incremental.exit_code() == 0
            && self.sends.exit_code() == 0
            && self.verify.ok()
            && self.review.ssh_keygen != Some(false)
            && self.expected == self.written
            && self.duplicates == 0;
        if ok { 0 } else { 4 }
    }
}

/// A 1x1 PNG.
const DEMO_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// The demo account and the key the in-process mock accepts.
const ACCOUNT: &str = "acme_support";
const DEMO_KEY: &str = "demo-key-not-a-secret";

/// Runs the demo into `out`, a folder or a bucket prefix (default: a new
/// folder under the temp dir).
pub async fn run(out: Option<Location>) -> Result<DemoReport> {
    let out = out.unwrap_or_else(|| {
        Location::Dir(std::env::temp_dir().join(format!(
            "xquik-dm-demo-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        )))
    });
    let world = world();
    // Every conversation the account participates in.
    let users: Vec<String> = world
        .conversations
        .iter()
        .filter(|c| c.account == ACCOUNT)
        .map(|c| c.user_id.clone())
        .collect();
    let server = MockServer::start(world)
        .await
        .map_err(|e| Error::io("127.0.0.1:0", e))?;
    let (key, review_dir) = review_key()?;
    let mut options = sync_options(&server, &out, &users)?;
    options.signing_key = Some(key.clone());

    let full = sync::run(options.clone()).await?;
    // New messages arrive in two conversations; the rerun fetches only those
    // (plus one boundary page per conversation).
    let mut arrived = 0;
    for (user, n) in users.iter().zip([25u64, 7]) {
        server.append_messages(ACCOUNT, user, n);
        arrived += n;
    }
    let incremental = sync::run(options.clone()).await?;
    // Ground truth before the sends (a sent DM joins the history too; the
    // next sync would fetch it as a history record beside its send record).
    let expected: u64 = users
        .iter()
        .map(|u| server.history(ACCOUNT, u).len() as u64)
        .sum();

    let sends = send_two(&options.api, &out, &key).await?;
    let review_out = out.clone();
    let (verify, review) =
        tokio::task::spawn_blocking(move || review(&review_out, &key, review_dir))
            .await
            .map_err(|e| Error::io("<verify>", std::io::Error::other(e)))??;

    let (written, duplicates) = count_history(out.open()?.as_ref())?;
    server.shutdown().await;
    Ok(DemoReport {
        out,
        full,
        incremental,
        sends,
        verify,
        review,
        arrived,
        expected,
        written,
        duplicates,
    })
}

/// What a reviewer of the demo's folder is handed, and what it showed.
#[derive(Debug)]
pub struct Review {
    /// The folder of the throwaway key, `allowed_signers` and the report.
    pub dir: PathBuf,
    /// The signing key's fingerprint.
    pub fingerprint: String,
    /// The HTML report.
    pub html: PathBuf,
    /// The `ssh-keygen -Y verify` line for the last run's manifest.
    pub command: String,
    /// Whether `ssh-keygen` accepted it; `None` where it could not run
    /// (not installed, or the outputs are in a bucket).
    pub ssh_keygen: Option<bool>,
}

/// The principal of the demo key in its `allowed_signers`.
const PRINCIPAL: &str = "demo@xquik-dm.invalid";

/// Makes the throwaway signing key, in a new private folder beside the
/// outputs' default place.
fn review_key() -> Result<(SigningKey, PathBuf)> {
    let dir = std::env::temp_dir().join(format!(
        "xquik-dm-demo-review-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        fastrand::u32(..)
    ));
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    // It holds a private key: readable by its owner only.
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
    folder.create(&dir).map_err(|e| Error::io(&dir, e))?;
    let key = SigningKey::generate(&dir.join("id_ed25519"), "xquik-dm demo")?;
    Ok((key, dir))
}

/// Writes the reviewer's `allowed_signers`, verifies the signed chain
/// with it (unsigned runs fail), writes the HTML report, and checks the
/// last manifest with `ssh-keygen` where it can.
fn review(out: &Location, key: &SigningKey, dir: PathBuf) -> Result<(VerifyReport, Review)> {
    let signers = dir.join("allowed_signers");
    let line = format!(
        "{PRINCIPAL} namespaces=\"{}\" {}\n",
        sshsig::NAMESPACE,
        key.public_openssh()?
    );
    std::fs::write(&signers, line).map_err(|e| Error::io(&signers, e))?;
    let trust = Trust {
        key: None,
        signers: Some(AllowedSigners::load(&signers, "allowed_signers")?),
        require_signatures: true,
    };
    let verify = verify::run_trusted(out.clone(), &trust, None, None)?;
    let html = dir.join("report.html");
    crate::commands::report::run(out, Some(&html), &trust, false)?;
    let (last, _) = crate::audit::read_chain_tail(out.open()?.as_ref(), 0)?;
    let manifest = last.last().map(|e| e.manifest.clone()).unwrap_or_default();
    let (command, ssh_keygen) = ssh_keygen_check(out, &signers, &manifest);
    let review = Review {
        dir,
        fingerprint: key.fingerprint().to_owned(),
        html,
        command,
        ssh_keygen,
    };
    Ok((verify, review))
}

/// The `ssh-keygen -Y verify` line of `manifest` in `out`, and whether
/// `ssh-keygen` accepts it (`None` where it cannot be run).
fn ssh_keygen_check(
    out: &Location,
    signers: &std::path::Path,
    manifest: &str,
) -> (String, Option<bool>) {
    let command = format!(
        "cd {out} && ssh-keygen -Y verify -f {} -I {PRINCIPAL} -n {} -s {manifest}{} < {manifest}",
        signers.display(),
        sshsig::NAMESPACE,
        sshsig::SIG_SUFFIX
    );
    let Some(dir) = out.as_dir() else {
        return (command, None);
    };
    let Ok(input) = std::fs::File::open(dir.join(manifest)) else {
        return (command, None);
    };
    let status = std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(signers)
        .args(["-I", PRINCIPAL, "-n", sshsig::NAMESPACE, "-s"])
        .arg(dir.join(format!("{manifest}{}", sshsig::SIG_SUFFIX)))
        .stdin(input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    (command, status.ok().map(|s| s.success()))
}

/// The demo world, with transient errors, overlapping and unordered pages
/// switched on.
fn world() -> MockConfig {
    MockConfig {
        api_key: Some(DEMO_KEY.to_owned()),
        faults: Faults {
            transient_rate: 0.05,
            retry_after_ms: 5,
            overlap: 3,
            unordered: true,
            ..Faults::default()
        },
        ..MockConfig::demo()
    }
}

/// A sync of the account's conversations with `users` into `out`, with
/// millisecond retries (the mock asks for short waits).
fn sync_options(server: &MockServer, out: &Location, users: &[String]) -> Result<SyncOptions> {
    let account = Account::parse(ACCOUNT)?;
    let mut api = ClientConfig::new(server.base_url(), ApiKey::new(DEMO_KEY)?);
    api.retry = RetryPolicy {
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(100),
        max_server_wait: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let targets: Vec<Target> = users
        .iter()
        .map(|id| Target {
            account: account.clone(),
            user: UserRef::Id(id.clone()),
        })
        .collect();
    Ok(SyncOptions::new(api, out.clone(), targets))
}

/// Sends a text DM and a media DM (a small PNG the demo writes to a
/// temporary folder: the mock takes any bytes), signed with `key`.
async fn send_two(api: &ClientConfig, out: &Location, key: &SigningKey) -> Result<SendReport> {
    let scratch = tempfile::tempdir().map_err(|e| Error::io("<temp dir>", e))?;
    let picture = scratch.path().join("demo-picture.png");
    std::fs::write(&picture, DEMO_PNG).map_err(|e| Error::io(&picture, e))?;
    let lines = vec![
        SendRequest::validate(
            ACCOUNT,
            "@ada_lovelace",
            "Thanks for your message! 🙏 We are on it.",
            None,
            None,
            None,
        )?,
        SendRequest::validate(
            ACCOUNT,
            "@grace_hopper",
            "Here is the screenshot you asked for.",
            Some(&picture),
            None,
            None,
        )?,
    ];
    send::run(SendOptions {
        api: api.clone(),
        out: out.clone(),
        lines: lines.into_iter().map(BatchLine::Valid).collect(),
        batch: false,
        ignore_can_dm: false,
        skip_invalid: false,
        max_credits: None,
        audit_key: None,
        signing_key: Some(key.clone()),
    })
    .await
}

/// Counts the history records in the JSONL and the IDs seen twice within a
/// conversation.
fn count_history(storage: &dyn Backend) -> Result<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Ids {
        record_type: String,
        message_id: String,
        conversation_user_id: Option<String>,
    }
    let path = storage.describe(jsonl::FILE_NAME);
    let len = storage.handoff_len()?;
    let mut seen = HashMap::new();
    let mut written = 0;
    let mut duplicates = 0;
    jsonl::for_each_line(storage, 0, len, |line| {
        let ids: Ids = serde_json::from_slice(line).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("unreadable record at line {}", e.line()),
        })?;
        if ids.record_type == "history" {
            written += 1;
            if seen
                .insert((ids.conversation_user_id, ids.message_id), ())
                .is_some()
            {
                duplicates += 1;
            }
        }
        Ok(())
    })?;
    Ok((written, duplicates))
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "xquik-dm demo: the embedded mock Xquik API, no key, no network"
        )?;
        writeln!(f)?;
        writeln!(f, "1. Full sync")?;
        write!(f, "{}", self.full)?;
        writeln!(f)?;
        writeln!(
            f,
            "2. {} new messages arrive; incremental sync",
            self.arrived
        )?;
        write!(f, "{}", self.incremental)?;
        writeln!(f)?;
        let verdict = if self.expected == self.written && self.duplicates == 0 {
            "OK"
        } else {
            "MISMATCH"
        };
        writeln!(f, "3. A text DM and a media DM")?;
        write!(f, "{}", self.sends)?;
        writeln!(f)?;
        write!(
            f,
            "4. Audit check (xquik-dm verify --allowed-signers --require-signatures): {}",
            self.verify
        )?;
        writeln!(f)?;
        write!(f, "{}", self.review)?;
        writeln!(
            f,
            "5. Check against the mock's ground truth: {verdict} ({} messages served, {} written, {} duplicates)",
            self.expected, self.written, self.duplicates
        )?;
        writeln!(f)?;
        let out = &self.out;
        writeln!(f, "Outputs in {out}")?;
        writeln!(f, "  {}  (private JSON Lines handoff)", jsonl::FILE_NAME)?;
        writeln!(
            f,
            "  parquet/messages/, parquet/sends/  (private, zstd, date=YYYY-MM-DD partitions)"
        )?;
        writeln!(
            f,
            "  audit/, SHA256SUMS  (body-free manifests and hash chain)"
        )?;
        writeln!(f, "  state/checkpoint.json  (no message bodies)")?;
        writeln!(f)?;
        writeln!(f, "Query them, e.g. with DuckDB:")?;
        writeln!(
            f,
            "  duckdb -c \"SELECT conversation_user_id, count(*) AS messages, max(created_at) AS latest FROM read_parquet('{out}/parquet/messages/date=*/*.parquet') GROUP BY 1 ORDER BY 2 DESC\""
        )
    }
}

impl std::fmt::Display for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "   Every run is signed with a throwaway key made for this demo ({}),",
            self.fingerprint
        )?;
        writeln!(
            f,
            "   in {}. A reviewer checks a manifest with ssh-keygen alone:",
            self.dir.display()
        )?;
        writeln!(f, "     {}", self.command)?;
        match self.ssh_keygen {
            Some(true) => writeln!(f, "   ssh-keygen -Y verify: Good signature")?,
            Some(false) => writeln!(f, "   ssh-keygen -Y verify: REJECTED")?,
            None => writeln!(f, "   (ssh-keygen was not run here)")?,
        }
        writeln!(f, "   HTML report: {}", self.html.display())?;
        writeln!(f)
    }
}
