//! The command line, in two stages: clap parses raw [`Args`], then
//! [`Args::into_config`] validates them into a [`Config`] of library types.
//! Nothing past this module sees a clap type, and everything refused here is
//! refused before any request is made (exit status 2).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::UserRef;
use crate::api::client::{ApiKey, ClientConfig, DEFAULT_BASE_URL, check_base_url};
use crate::api::retry::RetryPolicy;
use crate::error::{Error, Result};
use crate::logging::LogFormat;

/// Moves X direct messages between the Xquik API and private storage.
///
/// The API key is read from the XQUIK_API_KEY environment variable (never
/// from the command line, where other users of the machine could see it).
#[derive(Debug, Parser)]
#[command(name = "xquik-dm", version, about, long_about = None, max_term_width = 100)]
pub struct Args {
    /// Base URL of the Xquik API (https, or http on loopback only).
    #[arg(long, global = true, env = "XQUIK_BASE_URL", default_value = DEFAULT_BASE_URL)]
    pub base_url: String,

    /// Log format on stderr: auto is human text on a terminal and JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Auto)]
    pub log_format: LogFormatArg,

    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Timeout of one HTTP request, in seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,

    /// Attempts per request before giving up on transient errors (429, 503, 502).
    #[arg(long, global = true, default_value_t = 8, value_name = "N")]
    pub max_attempts: u32,

    /// Total time one request may spend retrying, in seconds.
    #[arg(long, global = true, default_value_t = 600, value_name = "SECS")]
    pub max_retry_time: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: CommandArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CommandArgs {
    /// Print a user's profile (id, username, name, canDm) as JSON. 1 credit.
    Lookup {
        /// Numeric user ID or @username.
        #[arg(value_name = "ID or @username")]
        user: String,
    },
    /// Serve the embedded mock Xquik API on loopback (for trials and tests).
    Mock {
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
    },
    /// Run the whole workflow offline against the embedded mock: no key, no network.
    Demo {
        /// Output folder (default: a new folder under the system temp dir).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
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

/// A validated invocation.
#[derive(Debug)]
pub struct Config {
    /// Log format and level.
    pub log: LogFormat,
    /// Verbosity (0 info, 1 debug, 2+ trace).
    pub verbose: u8,
    /// The command to run.
    pub command: Command,
}

/// A validated command.
#[derive(Debug)]
pub enum Command {
    /// `lookup`.
    Lookup {
        /// How to reach the API.
        api: ClientConfig,
        /// Who to look up.
        user: UserRef,
    },
    /// `mock`.
    Mock {
        /// Port on 127.0.0.1.
        port: u16,
        /// Seed.
        seed: u64,
        /// Page size.
        page_size: usize,
        /// Transient error probability.
        transient_rate: f64,
        /// Accepted key, if fixed.
        api_key: Option<String>,
    },
    /// `demo`.
    Demo {
        /// Output folder.
        out: Option<PathBuf>,
    },
}

impl Args {
    /// Validates the arguments. `api_key` is the value of `XQUIK_API_KEY`;
    /// it is required only by commands that call the API.
    pub fn into_config(self, api_key: Option<String>) -> Result<Config> {
        let log = match self.log_format {
            LogFormatArg::Auto => LogFormat::auto(),
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
        let retry = RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            max_elapsed: Duration::from_secs(self.max_retry_time),
            ..RetryPolicy::default()
        };
        let timeout = Duration::from_secs(self.timeout.max(1));
        let base_url = self.base_url;
        let api = |key: Option<String>| -> Result<ClientConfig> {
            check_base_url(&base_url)?;
            let key = ApiKey::new(key.ok_or(Error::MissingApiKey)?)?;
            Ok(ClientConfig {
                base_url: base_url.clone(),
                api_key: key,
                timeout,
                retry: retry.clone(),
            })
        };
        let command = match self.command {
            CommandArgs::Lookup { user } => {
                // Input first, then the key: both are checked before any request.
                let user = UserRef::parse(&user, "<ID or @username>")?;
                Command::Lookup {
                    api: api(api_key)?,
                    user,
                }
            }
            CommandArgs::Mock {
                port,
                seed,
                page_size,
                transient_rate,
                api_key,
            } => {
                if !(0.0..=1.0).contains(&transient_rate) {
                    return Err(Error::invalid(
                        "--transient-rate",
                        "must be between 0 and 1",
                    ));
                }
                if page_size == 0 {
                    return Err(Error::invalid("--page-size", "must be at least 1"));
                }
                Command::Mock {
                    port,
                    seed,
                    page_size,
                    transient_rate,
                    api_key,
                }
            }
            CommandArgs::Demo { out } => Command::Demo { out },
        };
        Ok(Config {
            log,
            verbose: self.verbose,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("xquik-dm").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn lookup_needs_a_key() {
        let err = parse(&["lookup", "@jack"]).into_config(None).unwrap_err();
        assert!(matches!(err, Error::MissingApiKey));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn lookup_refuses_bad_user_before_anything() {
        let err = parse(&["lookup", "not a user"])
            .into_config(Some("k".into()))
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn insecure_base_url_is_refused() {
        let err = parse(&["--base-url", "http://example.com/api/v1", "lookup", "42"])
            .into_config(Some("k".into()))
            .unwrap_err();
        assert!(matches!(err, Error::InsecureBaseUrl { .. }));
    }

    #[test]
    fn lookup_config() {
        let config = parse(&["--base-url", "http://127.0.0.1:9/api/v1", "lookup", "@jack"])
            .into_config(Some("k".into()))
            .unwrap();
        let Command::Lookup { api, user } = config.command else {
            panic!("lookup expected")
        };
        assert_eq!(user, UserRef::Username("jack".into()));
        assert_eq!(api.base_url, "http://127.0.0.1:9/api/v1");
    }

    #[test]
    fn demo_needs_no_key() {
        assert!(parse(&["demo"]).into_config(None).is_ok());
    }
}
