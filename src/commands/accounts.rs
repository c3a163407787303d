//! `xquik-dm bench --latency --accounts N`: many accounts from one process.
//! The embedded mock runs in this process, every account with its own
//! documented limit (300 GET/s) and every answer 100 ms away (±20 ms); one
//! sync reads every account's conversations, at each account's pace, for
//! 1, 4, 16 and 64 accounts (those up to N, and N).
//!
//! The sync serves every account from one client — one connection pool,
//! one task per conversation running, no thread per account — so what
//! grows with the accounts is only their tasks and lanes. Printed per
//! scenario: each account's share of its limit (the lowest and the median),
//! the answers that were 429, the total requests per second, the CPU
//! seconds per 1,000 requests (this process: client and mock together) and
//! the peak RSS of the scenario.
//!
//! An account's share is its answered requests over the time from its
//! first request to its last answer, against 300/s: ramp-up and tail
//! included, so a run long enough (`--conversations` x `--messages`) is
//! what shows the steady pace.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::mock::{synthetic_account, synthetic_user, synthetic_world_of};
use super::sync::{self, SyncOptions, Target};
use crate::api::client::{ApiKey, ClientConfig};
use crate::api::pace::Limits;
use crate::api::{Account, UserRef};
use crate::error::{Error, Result};
use crate::mock::{Faults, LoggedRequest, MockServer};

/// The documented per-account read limit, which the mock enforces.
const LIMIT_PER_SEC: f64 = 300.0;
/// The scenarios' account counts.
const ACCOUNT_COUNTS: [u64; 4] = [1, 4, 16, 64];
/// The most accounts a scenario may have.
pub const MAX_ACCOUNTS: u64 = 64;

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct AccountsRow {
    /// Accounts, each with the conversations.
    pub accounts: u64,
    /// Requests the mock answered (429s included).
    pub requests: u64,
    /// Of which 429.
    pub answered_429: u64,
    /// Wall seconds of the sync.
    pub wall_s: f64,
    /// Requests per second, all accounts.
    pub requests_per_s: f64,
    /// The lowest share of its limit an account reached.
    pub min_of_limit: f64,
    /// The median share.
    pub median_of_limit: f64,
    /// CPU seconds (client and mock) per 1,000 requests.
    pub cpu_s_per_1000: f64,
    /// Peak RSS during the scenario, MB (10^6 bytes).
    pub peak_rss_mb: f64,
    /// The sync's exit status (0 unless something failed).
    pub exit_code: u8,
}

/// The scenarios' figures.
#[derive(Debug, Clone, Serialize)]
pub struct AccountsReport {
    /// Conversations per account.
    pub conversations: u64,
    /// Messages per conversation.
    pub messages: u64,
    /// Page size.
    pub page_size: usize,
    /// Mock latency per answer, ms.
    pub latency_ms: u64,
    /// One row per scenario.
    pub rows: Vec<AccountsRow>,
}

/// The world and job of one scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Conversations per account.
    pub conversations: u64,
    /// Messages per conversation.
    pub messages: u64,
    /// Page size.
    pub page_size: usize,
    /// Mock latency per answer.
    pub latency: Duration,
}

/// Runs the scenarios of up to `max_accounts` accounts.
pub async fn run(
    max_accounts: u64,
    scenario: Scenario,
    work_dir: Option<&Path>,
) -> Result<AccountsReport> {
    if !(1..=MAX_ACCOUNTS).contains(&max_accounts) {
        return Err(Error::invalid("--accounts", "must be between 1 and 64"));
    }
    let temp = tempfile::tempdir().map_err(|e| Error::io("<temp dir>", e))?;
    let scratch = work_dir.unwrap_or(temp.path());
    let mut counts: Vec<u64> = ACCOUNT_COUNTS
        .into_iter()
        .filter(|n| *n <= max_accounts)
        .collect();
    if !counts.contains(&max_accounts) {
        counts.push(max_accounts);
    }
    let mut rows = Vec::new();
    for accounts in counts {
        let out = scratch.join(format!("accounts-{accounts}"));
        let _ = std::fs::remove_dir_all(&out);
        rows.push(one(accounts, scenario, &out).await?);
        let _ = std::fs::remove_dir_all(&out);
        tracing::info!(accounts, "accounts scenario done");
    }
    Ok(AccountsReport {
        conversations: scenario.conversations,
        messages: scenario.messages,
        page_size: scenario.page_size,
        latency_ms: scenario.latency.as_millis() as u64,
        rows,
    })
}

/// One scenario: the mock of `accounts` accounts started here, one sync of
/// all their conversations, measured.
async fn one(accounts: u64, scenario: Scenario, out: &Path) -> Result<AccountsRow> {
    let mut config = synthetic_world_of(accounts, scenario.conversations, scenario.messages);
    config.page_size = scenario.page_size;
    config.faults = Faults {
        latency: scenario.latency,
        latency_jitter: scenario.latency / 5,
        ..Faults::default()
    };
    let server = MockServer::start(config)
        .await
        .map_err(|e| Error::io("<mock>", e))?;
    let mut api = ClientConfig::new(server.base_url(), ApiKey::new("bench")?);
    api.pace = Limits::default();
    let targets = (0..accounts)
        .flat_map(|a| {
            (0..scenario.conversations).map(move |c| (synthetic_account(a), synthetic_user(c)))
        })
        .map(|(account, user)| {
            Ok(Target {
                account: Account::parse(&account)?,
                user: UserRef::Id(user),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let options = SyncOptions::new(api, out.to_owned(), targets);

    reset_peak_rss();
    let cpu = cpu_time();
    let started = Instant::now();
    let report = sync::run(options).await?;
    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu);
    let peak_rss = peak_rss();
    let log = server.request_log();
    server.shutdown().await;

    let shares = shares(&log);
    let requests = log.len() as u64;
    Ok(AccountsRow {
        accounts,
        requests,
        answered_429: log.iter().filter(|r| r.limited).count() as u64,
        wall_s: wall.as_secs_f64(),
        requests_per_s: requests as f64 / wall.as_secs_f64().max(1e-9),
        min_of_limit: shares.first().copied().unwrap_or(0.0),
        median_of_limit: shares.get(shares.len() / 2).copied().unwrap_or(0.0),
        cpu_s_per_1000: cpu.as_secs_f64() * 1000.0 / (requests.max(1) as f64),
        peak_rss_mb: peak_rss as f64 / 1e6,
        exit_code: report.exit_code(),
    })
}

/// Each account's share of its limit, sorted: its answered requests over
/// the time from its first request to its last answer.
fn shares(log: &[LoggedRequest]) -> Vec<f64> {
    let mut spans: BTreeMap<&str, (Duration, Duration, u64)> = BTreeMap::new();
    for r in log.iter().filter(|r| !r.limited) {
        let end = r.answered.unwrap_or(r.at);
        let span = spans.entry(&r.bucket).or_insert((r.at, end, 0));
        span.0 = span.0.min(r.at);
        span.1 = span.1.max(end);
        span.2 += 1;
    }
    let mut shares: Vec<f64> = spans
        .values()
        .map(|(first, last, n)| {
            let seconds = last.saturating_sub(*first).as_secs_f64().max(1e-3);
            *n as f64 / seconds / LIMIT_PER_SEC
        })
        .collect();
    shares.sort_by(f64::total_cmp);
    shares
}

/// CPU time (user and system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: `rusage` is a plain C struct for which all-zero bytes are a
    // valid value; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let done = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if done != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Resets the peak RSS the kernel keeps for this process (Linux: writing
/// 5 to `clear_refs`), so that each scenario reports its own peak. Where
/// that is not possible, the peak is the process's so far.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak RSS since the last reset, in bytes (`VmHWM`), or the
/// process's peak from getrusage.
fn peak_rss() -> u64 {
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        });
    hwm.unwrap_or_else(|| {
        // SAFETY: as in `cpu_time`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let _ = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        usage.ru_maxrss as u64 * 1024
    })
}

impl std::fmt::Display for AccountsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "accounts: {} conversations x {} messages per account, page {}, {} ms answers, 300 GET/s per account, mock in this process",
            self.conversations, self.messages, self.page_size, self.latency_ms
        )?;
        writeln!(
            f,
            "  {:>8} {:>9} {:>8} {:>10} {:>10} {:>8} {:>10} {:>12} {:>9}",
            "accounts",
            "requests",
            "wall s",
            "requests/s",
            "min share",
            "median",
            "429s",
            "CPU s/1000",
            "peak RSS"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "  {:>8} {:>9} {:>8.2} {:>10.0} {:>9.1}% {:>7.1}% {:>9.2}% {:>12.3} {:>6.0} MB{}",
                r.accounts,
                r.requests,
                r.wall_s,
                r.requests_per_s,
                r.min_of_limit * 100.0,
                r.median_of_limit * 100.0,
                r.answered_429 as f64 * 100.0 / (r.requests.max(1) as f64),
                r.cpu_s_per_1000,
                r.peak_rss_mb,
                match r.exit_code {
                    0 => String::new(),
                    code => format!("  (sync exit {code})"),
                }
            )?;
        }
        Ok(())
    }
}
