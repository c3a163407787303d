//! `xquik-dm mock`: serves the embedded mock Xquik API on loopback until
//! Ctrl-C, for trying the tool without a key and for black-box tests. The
//! first line on stdout is the base URL to pass as `--base-url`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::mock::{Faults, MockConfig, MockServer};

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
}

/// Serves until Ctrl-C.
pub async fn run(options: MockOptions) -> Result<()> {
    let config = MockConfig {
        seed: options.seed,
        page_size: options.page_size,
        api_key: options.api_key,
        faults: Faults {
            transient_rate: options.transient_rate,
            retry_after_ms: 200,
            ..Faults::default()
        },
        ..MockConfig::demo()
    };
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
