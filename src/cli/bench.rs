//! The options of `bench` (and its latency and longevity scenarios) and of
//! its hidden helper `bench-fetch`.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;

use crate::cli::global::Settings;
use crate::commands::bench::BenchOptions;
use crate::commands::{Benchmark, Command};
use crate::error::{Error, Result};
use crate::storage::Location;

/// The options of `bench`, as typed.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Conversations in the synthetic world.
    #[arg(long, default_value_t = 1000)]
    conversations: u64,
    /// Messages per conversation.
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Messages per page.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Repetitions of each scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// New messages for the incremental rerun, in percent.
    #[arg(long, default_value_t = 1.0)]
    new_percent: f64,
    /// Conversations paged at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Keep the output folders here instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Also run the full sync into this bucket prefix (s3://, gs://, az://;
    /// credentials and endpoint from the environment), beside the folder.
    #[arg(long, value_name = "URL")]
    bucket: Option<String>,
    /// Instead, the longevity scenario: RUNS `sync --compact` runs of a
    /// 20-conversation job, stamped 5 minutes apart (a compaction per
    /// simulated day), a few new messages before each; prints the run time of
    /// the first and last 10%, the time to open the latest Delta snapshot at
    /// both ends, the Delta log kept, checkpoint size, verify times and the
    /// files before and after a final compact.
    #[arg(long, value_name = "RUNS", conflicts_with = "bucket")]
    longevity: Option<u64>,
    /// Instead, the latency scenario: a sync of --conversations x --messages
    /// against a mock that answers after 30, 100 and 250 ms with its rate limit
    /// on, then with 4 accounts; prints pages/s as a share of the limit and 429s.
    #[arg(long, conflicts_with_all = ["bucket", "longevity"])]
    latency: bool,
    /// With --latency, instead: many accounts from one process. The mock runs
    /// in this process with 1, 4, 16 and 64 accounts (those up to N, and N),
    /// each with --conversations x --messages and its 300 GET/s limit on,
    /// answering after 100 ms; prints each account's share of its limit,
    /// 429s, requests/s, CPU seconds per 1,000 requests and peak RSS. The
    /// README's figures: --page-size 20 --conversations 150 --messages 400.
    #[arg(long, value_name = "N", requires = "latency",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    accounts: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// The scenario asked for: latency, longevity, or the benchmark itself.
    pub fn into_command(self) -> Result<Command> {
        if let Some(accounts) = self.accounts {
            Ok(Command::Bench(Benchmark::Accounts {
                accounts,
                scenario: crate::commands::accounts::Scenario {
                    conversations: self.conversations.max(1),
                    messages: self.messages.max(1),
                    page_size: self.page_size.max(1),
                    latency: std::time::Duration::from_millis(100),
                },
                work_dir: self.work_dir,
                json: self.json,
            }))
        } else if self.latency {
            Ok(Command::Bench(Benchmark::Latency {
                conversations: self.conversations,
                messages: self.messages,
                page_size: self.page_size.max(1),
                work_dir: self.work_dir,
                json: self.json,
            }))
        } else if let Some(runs) = self.longevity {
            Ok(Command::Bench(Benchmark::Longevity {
                runs,
                work_dir: self.work_dir,
                json: self.json,
            }))
        } else {
            let json = self.json;
            Ok(Command::Bench(Benchmark::Full {
                options: self.into_options()?,
                json,
            }))
        }
    }

    /// Validates the benchmark's sizes and bucket.
    fn into_options(self) -> Result<BenchOptions> {
        let bucket = match self.bucket.map(|b| Location::parse(&b)) {
            None => None,
            Some(Location::Url(url)) => Some(url),
            Some(Location::Dir(_)) => {
                return Err(Error::invalid("--bucket", "expected s3://, gs:// or az://"));
            }
        };
        if self.conversations == 0 || self.messages == 0 || self.page_size == 0 || self.runs == 0 {
            return Err(Error::invalid(
                "bench",
                "sizes and --runs must be at least 1",
            ));
        }
        if !(0.0..=100.0).contains(&self.new_percent) {
            return Err(Error::invalid("--new-percent", "must be between 0 and 100"));
        }
        Ok(BenchOptions {
            conversations: self.conversations,
            messages: self.messages,
            page_size: self.page_size,
            runs: self.runs,
            new_percent: self.new_percent,
            concurrency: self.concurrency.max(1),
            work_dir: self.work_dir,
            bucket,
        })
    }
}

/// The options of `bench-fetch`, as typed.
#[derive(Debug, clap::Args)]
pub struct BenchFetchArgs {
    /// Conversations to page.
    #[arg(long)]
    conversations: u64,
    /// Conversations paged at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

impl BenchFetchArgs {
    /// The paging to run, through the API.
    pub fn into_command(self, settings: &Settings) -> Result<Command> {
        Ok(Command::Bench(Benchmark::Fetch {
            api: settings.client_config(None)?,
            conversations: self.conversations,
            concurrency: self.concurrency,
        }))
    }
}
