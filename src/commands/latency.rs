//! `xquik-dm bench --latency`: a large sync against a mock that answers
//! like the real API does at a distance — every answer delayed (30, 100
//! and 250 ms), the per-account rate limit on (300 GET/s) — to show that
//! the pace, not a fixed number of workers, bounds the run. Then the same
//! with four accounts, each with its own limit.
//!
//! The mock and each sync run as child processes (as in the rest of the
//! benchmark); the sync runs with its defaults (pacing at the documented
//! limits, in-flight requests adapted to the latency). Printed per
//! scenario: wall time, pages per second, that rate as a fraction of what
//! the limit allows, and how many answers were 429.

use std::path::Path;

use serde::Serialize;

use super::bench::{MockChild, measure, parse_sync, sync_command};
use crate::commands::mock::{synthetic_account, synthetic_user};
use crate::error::{Error, Result};

/// The documented per-account read limit the mock enforces.
const LIMIT_PER_SEC: f64 = 300.0;

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// Mock latency per answer, ms.
    pub latency_ms: u64,
    /// Accounts, each with the conversations.
    pub accounts: u64,
    /// Pages fetched.
    pub pages: u64,
    /// Wall seconds of the sync.
    pub wall_s: f64,
    /// Pages per second.
    pub pages_per_s: f64,
    /// Pages per second over what the limit allows (300/s per account).
    pub of_limit: f64,
    /// Requests the mock answered 429.
    pub answered_429: u64,
    /// Requests the mock answered in all.
    pub requests: u64,
}

/// The scenarios' figures.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Conversations per account.
    pub conversations: u64,
    /// Messages per conversation.
    pub messages: u64,
    /// Page size.
    pub page_size: usize,
    /// One row per scenario.
    pub rows: Vec<LatencyRow>,
}

/// Runs the scenarios: one account at each latency, then four accounts at
/// 100 ms.
pub fn run(
    conversations: u64,
    messages: u64,
    page_size: usize,
    work_dir: Option<&Path>,
) -> Result<LatencyReport> {
    let exe = std::env::current_exe().map_err(|e| Error::io("<current exe>", e))?;
    let temp = tempfile::tempdir().map_err(|e| Error::io("<temp dir>", e))?;
    let scratch = work_dir.unwrap_or(temp.path());
    let mut rows = Vec::new();
    for (latency_ms, accounts) in [(30, 1), (100, 1), (250, 1), (100, 4)] {
        let mock = MockChild::start_with(
            &exe,
            &[
                "--conversations".into(),
                conversations.to_string(),
                "--messages".into(),
                messages.to_string(),
                "--page-size".into(),
                page_size.to_string(),
                "--accounts".into(),
                accounts.to_string(),
                "--latency-ms".into(),
                latency_ms.to_string(),
                // A spread around the figure, as a network has.
                "--latency-jitter-ms".into(),
                (latency_ms / 5).to_string(),
            ],
        )?;
        let name = format!("latency-{latency_ms}-{accounts}");
        let job = scratch.join(format!("{name}.toml"));
        write_job(&job, accounts, conversations)?;
        let out = scratch.join(&name);
        let _ = std::fs::remove_dir_all(&out);
        let (usage, stdout) = measure(&mut sync_command(&exe, &mock.base_url, &job, &out))?;
        let (_, pages) = parse_sync(&stdout)?;
        let ledger = mock.ledger()?;
        let by_status = ledger["responses_by_status"].as_object();
        let count = |status: &str| {
            by_status
                .and_then(|m| m.get(status))
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        let requests = by_status.map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
        let wall_s = usage.wall.as_secs_f64();
        let pages_per_s = pages as f64 / wall_s.max(1e-9);
        rows.push(LatencyRow {
            latency_ms,
            accounts,
            pages,
            wall_s,
            pages_per_s,
            of_limit: pages_per_s / (LIMIT_PER_SEC * accounts as f64),
            answered_429: count("429"),
            requests,
        });
        let _ = std::fs::remove_dir_all(&out);
        tracing::info!(latency_ms, accounts, "latency scenario done");
    }
    Ok(LatencyReport {
        conversations,
        messages,
        page_size,
        rows,
    })
}

/// A job of `conversations` conversations for each of `accounts` accounts,
/// with the default pace.
fn write_job(path: &Path, accounts: u64, conversations: u64) -> Result<()> {
    let users: Vec<String> = (0..conversations).map(synthetic_user).collect();
    let users = serde_json::to_string(&users).unwrap_or_default();
    let mut text = String::new();
    for a in 0..accounts {
        text.push_str(&format!(
            "[[conversations]]\naccount = \"{}\"\nusers = {users}\n\n",
            synthetic_account(a)
        ));
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

impl std::fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "latency: {} conversations x {} messages per account, page {}, rate limit 300 GET/s per account",
            self.conversations, self.messages, self.page_size
        )?;
        writeln!(
            f,
            "  {:>10} {:>8} {:>7} {:>8} {:>9} {:>9} {:>10}",
            "latency", "accounts", "pages", "wall s", "pages/s", "of limit", "429s"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "  {:>7} ms {:>8} {:>7} {:>8.2} {:>9.1} {:>8.1}% {:>5} of {}",
                r.latency_ms,
                r.accounts,
                r.pages,
                r.wall_s,
                r.pages_per_s,
                r.of_limit * 100.0,
                r.answered_429,
                r.requests
            )?;
        }
        Ok(())
    }
}
