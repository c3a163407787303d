//! `xquik-dm mock`: serves the embedded mock Xquik API on loopback until
//! Ctrl-C, for trying the tool without a key and for black-box tests. The
//! first line on stdout is the base URL to pass as `--base-url`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::mock::{Faults, MockAccount, MockConfig, MockConversation, MockServer, MockUser};

/// Options of the `mock` command.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Seed of the synthetic world.
    pub seed: u64,
    /// Messages per history page.
    pub page_size: usize,
    /// Probability of a transient error per request.
    pub transient_rate: f64,
    /// The only key accepted, if set.
    pub api_key: Option<String>,
    /// Serve a synthetic world of this many conversations (of
    /// `messages` each) instead of the demo world.
    pub conversations: Option<u64>,
    /// Messages per conversation of the synthetic world.
    pub messages: u64,
    /// Connected accounts of the synthetic world.
    pub accounts: u64,
    /// Added to every answer.
    pub latency: std::time::Duration,
    /// Up to this much more, at random.
    pub latency_jitter: std::time::Duration,
    /// Switch the per-account rate limits off (benchmarks).
    pub no_rate_limit: bool,
}

/// The account of the synthetic world.
pub const SYNTHETIC_ACCOUNT: &str = "bench";

/// The handle of account `i` (0-based) of the synthetic world.
pub fn synthetic_account(i: u64) -> String {
    match i {
        0 => SYNTHETIC_ACCOUNT.to_owned(),
        i => format!("{SYNTHETIC_ACCOUNT}{i}"),
    }
}

/// The user ID of conversation `i` (0-based) of the synthetic world.
pub fn synthetic_user(i: u64) -> String {
    (2_000_000_001 + i).to_string()
}

/// A world of one account with `conversations` conversations of `messages`
/// messages each. Messages depend only on their position, so the same
/// world started with more messages is the old one plus newer messages.
pub fn synthetic_world(conversations: u64, messages: u64) -> MockConfig {
    synthetic_world_of(1, conversations, messages)
}

/// [`synthetic_world`] with `accounts` accounts, each reading the same
/// `conversations` users.
pub fn synthetic_world_of(accounts: u64, conversations: u64, messages: u64) -> MockConfig {
    let users: Vec<MockUser> = (0..conversations)
        .map(|i| MockUser {
            id: synthetic_user(i),
            username: format!("user_{i}"),
            name: format!("User {i}"),
            can_dm: Some(true),
        })
        .collect();
    MockConfig {
        accounts: (0..accounts)
            .map(|a| MockAccount {
                handle: synthetic_account(a),
                user_id: (1_700_000_000_000_000_001 + a).to_string(),
            })
            .collect(),
        conversations: (0..accounts)
            .flat_map(|a| {
                users.iter().map(move |u| MockConversation {
                    account: synthetic_account(a),
                    user_id: u.id.clone(),
                    messages,
                })
            })
            .collect(),
        users,
        ..MockConfig::default()
    }
}

/// Serves until Ctrl-C.
pub async fn run(options: MockOptions) -> Result<()> {
    let world = match options.conversations {
        Some(n) => synthetic_world_of(options.accounts, n, options.messages),
        None => MockConfig::demo(),
    };
    let mut config = MockConfig {
        seed: options.seed,
        page_size: options.page_size,
        api_key: options.api_key,
        faults: Faults {
            transient_rate: options.transient_rate,
            retry_after_ms: 200,
            latency: options.latency,
            latency_jitter: options.latency_jitter,
            ..Faults::default()
        },
        ..world
    };
    if options.no_rate_limit {
        config.get_limit_per_sec = 0;
        config.post_limit_per_min = 0;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, options.port));
    let server = MockServer::bind(addr, config)
        .await
        .map_err(|e| Error::io(format!("127.0.0.1:{}", options.port), e))?;
    {
        let mut stdout = std::io::stdout().lock();
        // The URL line is what scripts and tests wait for: flush it now.
        writeln!(stdout, "{}", server.base_url())
            .and_then(|()| stdout.flush())
            .map_err(super::stdout_error)?;
    }
    tracing::info!(base_url = %server.base_url(), "mock Xquik API serving; Ctrl-C stops it");
    server
        .run_until_ctrl_c()
        .await
        .map_err(|e| Error::io(addr.to_string(), e))
}
