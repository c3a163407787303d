//! The options of the commands that run the embedded mock: `mock` serves
//! it, `demo` runs the whole workflow against it.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;
use std::time::Duration;

use crate::commands::Command;
use crate::commands::mock::MockOptions;
use crate::error::{Error, Result};

/// The options of `mock`, as typed.
#[derive(Debug, clap::Args)]
pub struct MockArgs {
    /// Port on 127.0.0.1; 0 picks a free one. The URL is printed on stdout.
    #[arg(long, default_value_t = 8787)]
    port: u16,
    /// Seed of the synthetic conversations and faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Messages per history page.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Probability that a request gets a transient 429/503/502.
    #[arg(long, default_value_t = 0.0)]
    transient_rate: f64,
    /// The API key the mock accepts (default: any non-empty key).
    #[arg(long, env = "XQUIK_MOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve a synthetic world of N conversations with the account `bench`
    /// (users 2000000001, ...) instead of the demo world.
    #[arg(long, value_name = "N")]
    conversations: Option<u64>,
    /// Messages per conversation of the synthetic world.
    #[arg(long, default_value_t = 1000, value_name = "M")]
    messages: u64,
    /// Connected accounts of the synthetic world (`bench`, `bench1`, ...), each
    /// with the N conversations.
    #[arg(long, default_value_t = 1, value_name = "A")]
    accounts: u64,
    /// Delay every answer by this many milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_ms: u64,
    /// And by up to this many more, uniformly at random.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_jitter_ms: u64,
    /// Switch the per-account rate limits off.
    #[arg(long)]
    no_rate_limit: bool,
}

impl MockArgs {
    /// Validates the synthetic world and its faults.
    pub fn into_command(self) -> Result<Command> {
        if !(0.0..=1.0).contains(&self.transient_rate) {
            return Err(Error::invalid(
                "--transient-rate",
                "must be between 0 and 1",
            ));
        }
        if self.page_size == 0 {
            return Err(Error::invalid("--page-size", "must be at least 1"));
        }
        Ok(Command::Mock(MockOptions {
            port: self.port,
            seed: self.seed,
            page_size: self.page_size,
            transient_rate: self.transient_rate,
            api_key: self.api_key,
            conversations: self.conversations,
            messages: self.messages,
            accounts: self.accounts.max(1),
            latency: Duration::from_millis(self.latency_ms),
            latency_jitter: Duration::from_millis(self.latency_jitter_ms),
            no_rate_limit: self.no_rate_limit,
        }))
    }
}

/// The options of `demo`, as typed.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Output folder or bucket prefix (default: a new folder under the system temp dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl DemoArgs {
    /// The demo to run.
    pub fn into_command(self) -> Command {
        Command::Demo { out: self.out }
    }
}
