//! The options of `sync`, and their validation into [`SyncOptions`]
//! (completed by the job file, which the command line overrides).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;
use std::time::Duration;

use crate::api::{Account, UserRef};
use crate::cli::global::Settings;
use crate::cli::job::JobFile;
use crate::cli::signing::SigningArgs;
use crate::commands::sync::{DEFAULT_CONCURRENCY, MAX_RETAIN_DAYS, SyncOptions, Target};
use crate::commands::{Command, Recorded};
use crate::error::{Error, Result};
use crate::shard::Shard;
use crate::storage::Location;

/// The options of `sync`, as typed.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Connected account (X handle) that reads the conversations.
    #[arg(long, value_name = "HANDLE")]
    account: Option<String>,
    /// Other participant of a conversation: numeric ID or @username (repeatable).
    #[arg(long = "user", value_name = "ID or @username")]
    users: Vec<String>,
    /// Output folder (created private, mode 0700).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Job file (TOML) listing accounts and conversations for scheduled runs.
    #[arg(long, value_name = "FILE")]
    job: Option<PathBuf>,
    /// Most conversations paged at the same time per account (default 256). How
    /// many run is set by the pace: enough to keep each account at its rate
    /// limit at the latency its answers come back with.
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Stop before this run spends more credits (exit 4; rerun to continue).
    #[arg(long, value_name = "CREDITS")]
    max_credits: Option<u64>,
    /// Consecutive empty pages that end a conversation's paging.
    #[arg(long, default_value_t = 5, value_name = "N")]
    max_empty_pages: u32,
    /// Fetch at most N pages per scan of a conversation in this run (the scan for
    /// new messages and the backfill each); the next run continues where it
    /// stopped (exit 4 while pages remain).
    #[arg(long, value_name = "N")]
    max_pages: Option<u64>,
    /// Run only shard K of N (0-based) of the job's conversations, chosen by a
    /// stable hash of (account, user), in <out>/shard=K/ (Kubernetes:
    /// --shard $JOB_COMPLETION_INDEX/N).
    #[arg(long, value_name = "K/N")]
    shard: Option<String>,
    /// After the run, merge the Parquet files of dates that closed since the last
    /// compaction (at most once a day; see `xquik-dm compact`).
    #[arg(long)]
    compact: bool,
    /// Erase every message older than DAYS days (by its created_at, or by the time
    /// in its ID when the API gave none) from every output, at most once a day, in
    /// an audited erasure run of its own right after the sync's (as `xquik-dm
    /// forget` does; later syncs do not write them again). 1 to 36500.
    #[arg(long, value_name = "DAYS")]
    retain_days: Option<u32>,
    /// Write the run's outcome to this file in Prometheus text format (replaced
    /// atomically), for the node_exporter textfile collector.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    /// Print the run report as JSON on stdout instead of a summary.
    #[arg(long)]
    json: bool,
    /// Longest time between commits, in milliseconds (tests shorten it).
    #[arg(long, default_value_t = 1000, hide = true)]
    commit_interval_ms: u64,
    #[command(flatten)]
    signing: SigningArgs,
}

impl SyncArgs {
    /// Validates the options, the job file's included, into the run's
    /// options; the API key is asked for last.
    pub fn into_command(self, settings: &Settings) -> Result<Command> {
        let shard = self.shard.as_deref().map(Shard::parse).transpose()?;
        let job = self.job.as_deref().map(JobFile::load).transpose()?;
        let job = job.as_ref();
        let targets = self.targets(job)?;
        let out = self
            .out
            .or_else(|| job.and_then(|j| j.out.clone()))
            .ok_or_else(|| Error::invalid("--out", "name the output folder"))?;
        let concurrency = self
            .concurrency
            .or(job.and_then(|j| j.concurrency))
            .unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=1024).contains(&concurrency) {
            return Err(Error::invalid(
                "--concurrency",
                "must be between 1 and 1024",
            ));
        }
        let api = settings.client_config(job)?;
        let mut options = SyncOptions::new(api, Location::from(out), targets);
        options.concurrency = concurrency;
        options.max_credits = self.max_credits.or(job.and_then(|j| j.max_credits));
        options.max_empty_pages = self.max_empty_pages.max(1);
        options.progress = !self.json;
        options.audit_key = settings.audit_key.clone();
        options.signing_key = self
            .signing
            .load(job.and_then(|j| j.signing_key.as_deref()))?;
        options.commit_interval = Duration::from_millis(self.commit_interval_ms.max(1));
        options.shard = shard;
        options.max_pages = self.max_pages.map(|n| n.max(1));
        options.compact = self.compact || job.is_some_and(|j| j.compact);
        options.retain_days = retain_days(self.retain_days, job)?;
        Ok(Command::Sync(Recorded {
            options,
            json: self.json,
            metrics_file: self.metrics_file,
        }))
    }

    /// The conversations to page: those of --account and --user, then the
    /// job file's; at least one.
    fn targets(&self, job: Option<&JobFile>) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        match (&self.account, self.users.is_empty()) {
            (Some(account), false) => {
                let account = Account::parse(account)?;
                for user in &self.users {
                    targets.push(Target {
                        account: account.clone(),
                        user: UserRef::parse(user, "--user")?,
                    });
                }
            }
            (Some(_), true) => {
                return Err(Error::invalid(
                    "--user",
                    "name at least one conversation with --user",
                ));
            }
            (None, false) => {
                return Err(Error::invalid(
                    "--account",
                    "--user needs the --account that reads it",
                ));
            }
            (None, true) => {}
        }
        if let Some(job) = job {
            targets.extend(job.targets()?);
        }
        if targets.is_empty() {
            return Err(Error::invalid(
                "--user",
                "name conversations with --account and --user, or with --job",
            ));
        }
        Ok(targets)
    }
}

/// `--retain-days`, else the job file's `retain_days`: at least a day (a
/// window of 0 would erase what the run just wrote) and at most a century.
fn retain_days(flag: Option<u32>, job: Option<&JobFile>) -> Result<Option<u32>> {
    let Some(days) = flag.or(job.and_then(|j| j.retain_days)) else {
        return Ok(None);
    };
    if !(1..=MAX_RETAIN_DAYS).contains(&days) {
        return Err(Error::invalid(
            "--retain-days",
            format!("must be between 1 and {MAX_RETAIN_DAYS} days, not {days}"),
        ));
    }
    Ok(Some(days))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_window_is_one_day_to_a_century() {
        assert_eq!(retain_days(None, None).unwrap(), None);
        assert_eq!(retain_days(Some(30), None).unwrap(), Some(30));
        for bad in [0, MAX_RETAIN_DAYS + 1] {
            let err = retain_days(Some(bad), None).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            assert!(err.to_string().contains("--retain-days"), "{err}");
        }
        let job = JobFile::parse("retain_days = 400\n").unwrap();
        assert_eq!(retain_days(None, Some(&job)).unwrap(), Some(400));
        // The command line wins over the job file.
        assert_eq!(retain_days(Some(7), Some(&job)).unwrap(), Some(7));
        let job = JobFile::parse("retain_days = 0\n").unwrap();
        assert!(retain_days(None, Some(&job)).is_err());
        assert!(JobFile::parse("retain_days = -3\n").is_err());
    }
}
