//! The options every command takes (global in clap's sense), and the
//! [`Settings`] built from them once: how to reach the API and the audit
//! key, for the commands that need them.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::time::Duration;

use clap::ValueEnum;

use crate::api::client::{ApiKey, ClientConfig, DEFAULT_BASE_URL, check_base_url};
use crate::api::pace::Limits;
use crate::api::retry::RetryPolicy;
use crate::audit::AuditKey;
use crate::cli::job::JobFile;
use crate::error::{Error, Result};
use crate::logging::LogFormat;

/// The global options, as typed.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Base URL of the Xquik API (https, or http on loopback only).
    #[arg(long, global = true, env = "XQUIK_BASE_URL", default_value = DEFAULT_BASE_URL)]
    base_url: String,

    /// Log format on stderr: auto is human text on a terminal and JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Auto)]
    log_format: LogFormatArg,

    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Timeout of one HTTP request, in seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,

    /// Attempts per request before giving up on transient errors (429, 503, 502).
    #[arg(long, global = true, default_value_t = 8, value_name = "N")]
    max_attempts: u32,

    /// Total time one request may spend retrying, in seconds.
    #[arg(long, global = true, default_value_t = 600, value_name = "SECS")]
    max_retry_time: u64,

    /// Largest API answer read, in MiB; a larger one is refused as it streams in.
    #[arg(long, global = true, default_value_t = 32, value_name = "MIB")]
    max_response_mb: u64,

    /// Reads per second per connected account (the API's limit: 300); requests
    /// are paced just under it. 0: no pacing.
    #[arg(long, global = true, value_name = "PER_SEC")]
    rate_get: Option<f64>,

    /// Writes (DMs, uploads) per minute per connected account (the API's limit:
    /// 120); paced just under it. 0: no pacing.
    #[arg(long, global = true, value_name = "PER_MIN")]
    rate_post: Option<f64>,
}

/// Log format as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl GlobalArgs {
    /// Verbosity (0 info, 1 debug, 2+ trace).
    pub fn verbose(&self) -> u8 {
        self.verbose
    }

    /// The log format asked for.
    pub fn log(&self) -> LogFormat {
        match self.log_format {
            LogFormatArg::Auto => LogFormat::auto(),
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }

    /// Validates the options every command shares into [`Settings`].
    /// `api_key` is the value of `XQUIK_API_KEY`; a command that calls the
    /// API asks for it later ([`Settings::client_config`]).
    pub fn into_settings(
        self,
        api_key: Option<String>,
        audit_key: Option<AuditKey>,
    ) -> Result<Settings> {
        for (flag, rate) in [
            ("--rate-get", self.rate_get),
            ("--rate-post", self.rate_post),
        ] {
            if rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
                return Err(Error::invalid(
                    flag,
                    "must be a number of requests, 0 or more",
                ));
            }
        }
        Ok(Settings {
            base_url: self.base_url,
            api_key,
            timeout: Duration::from_secs(self.timeout.max(1)),
            retry: RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                max_elapsed: Duration::from_secs(self.max_retry_time),
                ..RetryPolicy::default()
            },
            max_response_mb: self.max_response_mb,
            rate_get: self.rate_get,
            rate_post: self.rate_post,
            audit_key,
        })
    }
}

/// What the commands share, built once from the global options and the
/// environment.
#[derive(Debug)]
pub struct Settings {
    base_url: String,
    api_key: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
    max_response_mb: u64,
    rate_get: Option<f64>,
    rate_post: Option<f64>,
    /// The manifest signing key (`XQUIK_DM_AUDIT_KEY`).
    pub audit_key: Option<AuditKey>,
}

impl Settings {
    /// How to reach the API, for a command that calls it: the base URL is
    /// checked first, then the key is required.
    pub fn client_config(&self, job: Option<&JobFile>) -> Result<ClientConfig> {
        check_base_url(&self.base_url)?;
        let key = ApiKey::new(self.api_key.clone().ok_or(Error::MissingApiKey)?)?;
        Ok(ClientConfig {
            base_url: self.base_url.clone(),
            api_key: key,
            timeout: self.timeout,
            retry: self.retry.clone(),
            max_response_bytes: self.max_response_mb.max(1) << 20,
            pace: self.pace(job),
        })
    }

    /// The pace of requests per account.
    fn pace(&self, job: Option<&JobFile>) -> Limits {
        // The command line wins over a job file, which wins over the API's
        // documented limits.
        let defaults = Limits::default();
        Limits {
            get_per_sec: self
                .rate_get
                .or(job.and_then(|j| j.rate_get))
                .unwrap_or(defaults.get_per_sec),
            post_per_min: self
                .rate_post
                .or(job.and_then(|j| j.rate_post))
                .unwrap_or(defaults.post_per_min),
        }
    }
}

/// The manifest signing key from `XQUIK_DM_AUDIT_KEY`, if set and non-empty.
pub fn audit_key_from_env() -> Option<AuditKey> {
    std::env::var_os(crate::audit::AUDIT_KEY_ENV)
        .filter(|k| !k.is_empty())
        .map(|k| AuditKey(k.into_encoded_bytes()))
}
