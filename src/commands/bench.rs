//! `xquik-dm bench`: the reproducible benchmark. It starts the embedded
//! mock as a separate process with a synthetic world (by default 1,000
//! conversations of 1,000 messages, page size 100, no faults, no rate
//! limit), and measures, each in its own child process so that CPU time and
//! peak RSS are the child's alone:
//!
//! - fetch-only: page through every conversation, parse, discard — the wire
//!   limit the sync is compared with;
//! - a full sync into an empty folder;
//! - an incremental rerun after 1% new messages arrived (the mock restarted
//!   with more messages: its messages depend only on their position, so the
//!   old ones stay the same), with the credits it cost on the mock's ledger.
//!
//! With `--bucket URL`, the full sync also runs into that bucket prefix (a
//! new prefix below it per run), beside the folder, for the object storage
//! figure; `scripts/bench-bucket.sh` runs it against a local S3 server.
//!
//! Each scenario runs `--runs` times; the report gives medians.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::api::client::Client;
use crate::api::pagination::{Next, PageGuard};
use crate::api::{Account, Endpoint};
use crate::commands::mock::{SYNTHETIC_ACCOUNT, synthetic_user};
use crate::error::{Error, Result};

pub(crate) const BENCH_KEY: &str = "bench-key-not-a-secret";

/// Options of the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Conversations in the synthetic world.
    pub conversations: u64,
    /// Messages per conversation.
    pub messages: u64,
    /// Messages per page.
    pub page_size: usize,
    /// Repetitions of each scenario.
    pub runs: usize,
    /// New messages for the incremental rerun, in percent.
    pub new_percent: f64,
    /// Conversations paged at the same time.
    pub concurrency: usize,
    /// Where the output folders go (default: a temp dir, removed after).
    pub work_dir: Option<PathBuf>,
    /// A bucket prefix for the object storage scenario.
    pub bucket: Option<url::Url>,
}

/// What one child process used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Wall time.
    pub wall: Duration,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak resident set size, bytes.
    pub max_rss: u64,
}

/// One scenario's figures (medians over runs).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    /// Messages per second.
    pub messages_per_s: f64,
    /// Pages per second.
    pub pages_per_s: f64,
    /// Megabytes written per second (10^6 bytes).
    pub mb_per_s: f64,
    /// CPU seconds of the child.
    pub cpu_s: f64,
    /// Peak RSS of the child, MB (10^6 bytes).
    pub peak_rss_mb: f64,
    /// Wall seconds.
    pub wall_s: f64,
    /// Credits on the mock's ledger for this run.
    pub credits: u64,
    /// Messages fetched.
    pub messages: u64,
    /// Pages fetched.
    pub pages: u64,
}

/// The benchmark's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Conversations.
    pub conversations: u64,
    /// Messages per conversation.
    pub messages: u64,
    /// Page size.
    pub page_size: usize,
    /// Runs per scenario.
    pub runs: usize,
    /// New messages in the incremental rerun.
    pub new_messages: u64,
    /// Fetch-only.
    pub fetch_only: Figures,
    /// Full sync.
    pub full_sync: Figures,
    /// Incremental rerun.
    pub incremental: Figures,
    /// Full sync into the bucket, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_sync: Option<Figures>,
}

/// Runs the benchmark (blocking: it waits for child processes).
pub fn run(options: &BenchOptions) -> Result<BenchReport> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<current exe>", e))?;
    let scratch = match &options.work_dir {
        Some(dir) => Scratch::Kept(dir.clone()),
        None => Scratch::Temp(tempfile::tempdir().map_err(|e| Error::io("<temp dir>", e))?),
    };
    let job = scratch.path().join("bench-job.toml");
    write_job(&job, options)?;
    let per_conversation_new =
        ((options.messages as f64) * options.new_percent / 100.0).round() as u64;
    let total = options.conversations * options.messages;

    let (mut fetch, mut full, mut incr, mut bucket) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..options.runs.max(1) {
        let out = scratch.path().join(format!("run-{run}"));
        let _ = std::fs::remove_dir_all(&out);

        let mock = MockChild::start(&exe, options, options.messages)?;
        let fetched = measure(
            Command::new(&exe)
                .args([
                    "--base-url",
                    &mock.base_url,
                    "--log-format",
                    "json",
                    // The synthetic world has no rate limit: nothing to pace.
                    "--rate-get",
                    "0",
                    "bench-fetch",
                ])
                .arg("--conversations")
                .arg(options.conversations.to_string())
                .arg("--concurrency")
                .arg(options.concurrency.to_string())
                .env("XQUIK_API_KEY", BENCH_KEY),
        )?;
        let (messages, pages) = parse_fetch(&fetched.1)?;
        let credits_after_fetch = mock.ledger_history_credits()?;
        fetch.push(figures(fetched.0, messages, pages, 0, credits_after_fetch));

        let synced = measure(&mut sync_command(&exe, &mock.base_url, &job, &out))?;
        let (messages, pages) = parse_sync(&synced.1)?;
        let credits = mock.ledger_history_credits()? - credits_after_fetch;
        full.push(figures(synced.0, messages, pages, dir_bytes(&out), credits));
        if let Some(url) = &options.bucket {
            // A new prefix per run and per invocation: every run starts empty.
            let prefix = format!(
                "{}/bench-{}-{run}",
                url.as_str().trim_end_matches('/'),
                crate::store::RunStamp::now().run_id
            );
            let before = mock.ledger_history_credits()?;
            let synced = measure(&mut sync_command(
                &exe,
                &mock.base_url,
                &job,
                Path::new(&prefix),
            ))?;
            let (messages, pages) = parse_sync(&synced.1)?;
            let credits = mock.ledger_history_credits()? - before;
            bucket.push(figures(synced.0, messages, pages, 0, credits));
        }
        drop(mock);

        let mock = MockChild::start(&exe, options, options.messages + per_conversation_new)?;
        let before = dir_bytes(&out);
        let rerun = measure(&mut sync_command(&exe, &mock.base_url, &job, &out))?;
        let (messages, pages) = parse_sync(&rerun.1)?;
        let credits = mock.ledger_history_credits()?;
        incr.push(figures(
            rerun.0,
            messages,
            pages,
            dir_bytes(&out).saturating_sub(before),
            credits,
        ));
        drop(mock);
        let _ = std::fs::remove_dir_all(&out);
        tracing::info!(run, total, "benchmark run done");
    }
    Ok(BenchReport {
        conversations: options.conversations,
        messages: options.messages,
        page_size: options.page_size,
        runs: options.runs.max(1),
        new_messages: per_conversation_new * options.conversations,
        fetch_only: median(&fetch),
        full_sync: median(&full),
        incremental: median(&incr),
        bucket_sync: (!bucket.is_empty()).then(|| median(&bucket)),
    })
}

pub(crate) fn sync_command(exe: &Path, base_url: &str, job: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "--base-url",
        base_url,
        "--log-format",
        "json",
        "sync",
        "--json",
        "--job",
    ])
    .arg(job)
    .arg("--out")
    .arg(out)
    .env("XQUIK_API_KEY", BENCH_KEY);
    cmd
}

fn write_job(path: &Path, options: &BenchOptions) -> Result<()> {
    let users: Vec<String> = (0..options.conversations).map(synthetic_user).collect();
    let text = format!(
        // The synthetic world has no rate limit: nothing to pace.
        "concurrency = {}\nrate_get = 0\n\n[[conversations]]\naccount = \"{SYNTHETIC_ACCOUNT}\"\nusers = {}\n",
        options.concurrency,
        serde_json::to_string(&users).unwrap_or_default()
    );
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

enum Scratch {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Scratch {
    fn path(&self) -> &Path {
        match self {
            Scratch::Temp(t) => t.path(),
            Scratch::Kept(p) => p,
        }
    }
}

/// `xquik-dm mock` with the synthetic world, as a child process.
pub(crate) struct MockChild {
    child: Child,
    pub(crate) base_url: String,
}

impl MockChild {
    fn start(exe: &Path, options: &BenchOptions, messages: u64) -> Result<MockChild> {
        MockChild::start_with(
            exe,
            &[
                "--no-rate-limit".to_owned(),
                "--conversations".to_owned(),
                options.conversations.to_string(),
                "--messages".to_owned(),
                messages.to_string(),
                "--page-size".to_owned(),
                options.page_size.to_string(),
            ],
        )
    }

    /// The mock with these arguments after `mock --port 0`.
    pub(crate) fn start_with(exe: &Path, args: &[String]) -> Result<MockChild> {
        let mut child = Command::new(exe)
            .args(["--log-format", "json", "mock", "--port", "0"])
            .args(args)
            .env("XQUIK_MOCK_API_KEY", BENCH_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(exe, e))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(|e| Error::io("<mock stdout>", e))?;
        }
        let base_url = line.trim().to_owned();
        if !base_url.starts_with("http://127.0.0.1:") {
            let _ = child.kill();
            return Err(Error::io(
                "<mock>",
                std::io::Error::other("the mock did not start"),
            ));
        }
        Ok(MockChild { child, base_url })
    }

    /// Credits the mock charged for history pages so far.
    fn ledger_history_credits(&self) -> Result<u64> {
        Ok(
            self.ledger()?["credits_by_endpoint"][Endpoint::History.as_str()]
                .as_u64()
                .unwrap_or(0),
        )
    }

    /// The mock's ledger (`GET /__mock/ledger`).
    pub(crate) fn ledger(&self) -> Result<serde_json::Value> {
        let host = self
            .base_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&host).map_err(|e| Error::io(&host, e))?;
        write!(
            stream,
            "GET /__mock/ledger HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| Error::io(&host, e))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| Error::io(&host, e))?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).map_err(|_| Error::Decode {
            endpoint: Endpoint::History,
            reason: "the mock's ledger is not JSON".into(),
        })
    }
}

impl Drop for MockChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to its end and measures it with `wait4`, which reports
/// the child's own CPU time and peak RSS.
pub(crate) fn measure(cmd: &mut Command) -> Result<(Usage, String)> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("<bench child>", e))?;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .map_err(|e| Error::io("<bench child stdout>", e))?;
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is a plain C struct for which all-zero bytes are a
    // valid value, and wait4 only writes into the two out-pointers, which
    // point at live locals. The child is ours and not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if reaped != pid {
        return Err(Error::io("<bench child>", std::io::Error::last_os_error()));
    }
    // The child is reaped: keep std from waiting for it again.
    std::mem::forget(child);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(Error::io(
            "<bench child>",
            std::io::Error::other(format!("a benchmark step failed (wait status {status})")),
        ));
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    Ok((
        Usage {
            wall,
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            max_rss: usage.ru_maxrss as u64 * 1024,
        },
        stdout,
    ))
}

fn parse_fetch(stdout: &str) -> Result<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|_| decode("bench-fetch output"))?;
    Ok((
        v["messages"].as_u64().unwrap_or(0),
        v["pages"].as_u64().unwrap_or(0),
    ))
}

pub(crate) fn parse_sync(stdout: &str) -> Result<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|_| decode("sync report"))?;
    Ok((
        v["messages_fetched"].as_u64().unwrap_or(0),
        v["pages"].as_u64().unwrap_or(0),
    ))
}

fn decode(what: &str) -> Error {
    Error::Decode {
        endpoint: Endpoint::History,
        reason: format!("unreadable {what}"),
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn figures(usage: Usage, messages: u64, pages: u64, bytes: u64, credits: u64) -> Figures {
    let secs = usage.wall.as_secs_f64().max(1e-9);
    Figures {
        messages_per_s: messages as f64 / secs,
        pages_per_s: pages as f64 / secs,
        mb_per_s: bytes as f64 / 1e6 / secs,
        cpu_s: usage.cpu.as_secs_f64(),
        peak_rss_mb: usage.max_rss as f64 / 1e6,
        wall_s: secs,
        credits,
        messages,
        pages,
    }
}

/// The median of each figure over the runs.
fn median(runs: &[Figures]) -> Figures {
    fn med(mut v: Vec<f64>) -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    let f = |get: fn(&Figures) -> f64| med(runs.iter().map(get).collect());
    Figures {
        messages_per_s: f(|r| r.messages_per_s),
        pages_per_s: f(|r| r.pages_per_s),
        mb_per_s: f(|r| r.mb_per_s),
        cpu_s: f(|r| r.cpu_s),
        peak_rss_mb: f(|r| r.peak_rss_mb),
        wall_s: f(|r| r.wall_s),
        credits: f(|r| r.credits as f64) as u64,
        messages: f(|r| r.messages as f64) as u64,
        pages: f(|r| r.pages as f64) as u64,
    }
}

/// `bench-fetch`: pages through the synthetic world's conversations,
/// parses every page and discards it. Prints `{"messages", "pages"}`.
pub async fn fetch_only(
    client: Client,
    conversations: u64,
    concurrency: usize,
) -> Result<(u64, u64)> {
    let client = Arc::new(client);
    let account = Account::parse(SYNTHETIC_ACCOUNT)?;
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conversations {
        let (client, account, semaphore) = (client.clone(), account.clone(), semaphore.clone());
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let user = synthetic_user(i);
            let (mut messages, mut pages) = (0u64, 0u64);
            let mut cursor: Option<String> = None;
            let mut guard = PageGuard::new(None, 5);
            loop {
                let body = client
                    .history_page(&account, &user, cursor.as_deref())
                    .await?
                    .value;
                let page = body.page()?;
                messages += page.messages.len() as u64;
                pages += 1;
                match guard.next(
                    page.messages.iter().map(|m| &*m.id),
                    page.has_next_page,
                    &page.next_cursor,
                ) {
                    Next::Page(c) => cursor = Some(c),
                    Next::Stop(_) => return Ok::<_, Error>((messages, pages)),
                }
            }
        });
    }
    let (mut messages, mut pages) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (m, p) = joined.map_err(|e| Error::io("<fetch task>", std::io::Error::other(e)))??;
        messages += m;
        pages += p;
    }
    Ok((messages, pages))
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.conversations * self.messages;
        writeln!(
            f,
            "xquik-dm bench: {} conversations x {} messages = {total} messages, page size {}, medians of {} runs",
            self.conversations, self.messages, self.page_size, self.runs
        )?;
        writeln!(
            f,
            "{:<22} {:>12} {:>9} {:>8} {:>8} {:>12} {:>9} {:>10}",
            "scenario",
            "messages/s",
            "pages/s",
            "MB/s",
            "CPU s",
            "peak RSS MB",
            "wall s",
            "credits"
        )?;
        for (name, x) in [
            ("fetch-only (wire)", &self.fetch_only),
            ("full sync", &self.full_sync),
            ("incremental rerun", &self.incremental),
        ] {
            writeln!(
                f,
                "{name:<22} {:>12.0} {:>9.0} {:>8.1} {:>8.2} {:>12.1} {:>9.2} {:>10}",
                x.messages_per_s,
                x.pages_per_s,
                x.mb_per_s,
                x.cpu_s,
                x.peak_rss_mb,
                x.wall_s,
                x.credits
            )?;
        }
        if let Some(x) = &self.bucket_sync {
            writeln!(
                f,
                "{:<22} {:>12.0} {:>9.0} {:>8} {:>8.2} {:>12.1} {:>9.2} {:>10}",
                "full sync to bucket",
                x.messages_per_s,
                x.pages_per_s,
                "-",
                x.cpu_s,
                x.peak_rss_mb,
                x.wall_s,
                x.credits
            )?;
        }
        let ratio = self.full_sync.messages_per_s / self.fetch_only.messages_per_s.max(1e-9);
        let page_bound = self.new_messages + self.conversations * self.page_size as u64;
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        writeln!(f)?;
        writeln!(
            f,
            "full sync / fetch-only: {:.0}% (target >= 60%: {}; the first target, >= 80%: {})",
            ratio * 100.0,
            verdict(ratio >= 0.6),
            verdict(ratio >= 0.8)
        )?;
        let per_million = |x: &Figures| x.cpu_s / (x.messages.max(1) as f64) * 1e6;
        writeln!(
            f,
            "CPU per million messages: fetch-only {:.2} s, full sync {:.2} s (scripts/bench-ab.sh compares with an earlier commit)",
            per_million(&self.fetch_only),
            per_million(&self.full_sync)
        )?;
        if let Some(x) = &self.bucket_sync {
            let share = x.messages_per_s / self.full_sync.messages_per_s.max(1e-9);
            writeln!(
                f,
                "bucket / folder: {:.0}% (target >= 50%: {}); bucket peak RSS <= 150 MB: {}",
                share * 100.0,
                verdict(share >= 0.5),
                verdict(x.peak_rss_mb <= 150.0)
            )?;
        }
        writeln!(
            f,
            "targets: sync >= 250,000 msg/s: {}; peak RSS <= 150 MB: {}; incremental <= 2 s: {}; incremental credits {} <= new {} + one page per conversation ({}): {}",
            verdict(self.full_sync.messages_per_s >= 250_000.0),
            verdict(self.full_sync.peak_rss_mb <= 150.0),
            verdict(self.incremental.wall_s <= 2.0),
            self.incremental.credits,
            self.new_messages,
            page_bound,
            verdict(
                self.incremental.credits <= page_bound
                    && self.incremental.credits >= self.new_messages
            ),
        )
    }
}
