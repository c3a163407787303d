//! The command line, in two stages: clap parses raw [`Args`], then
//! [`Args::into_config`] validates them into a [`Config`] of library types.
//! Nothing past this module sees a clap type, and everything refused here is
//! refused before any request is made (exit status 2).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::client::{ApiKey, ClientConfig, DEFAULT_BASE_URL, check_base_url};
use crate::api::pace::Limits;
use crate::api::retry::RetryPolicy;
use crate::api::{Account, UserRef};
use crate::audit::AuditKey;
use crate::commands::bench::BenchOptions;
use crate::commands::mock::MockOptions;
use crate::commands::send::{BatchLine, SendOptions, SendRequest};
use crate::commands::sync::{SyncOptions, Target};
use crate::error::{Error, Result};
use crate::logging::LogFormat;
use crate::shard::Shard;
use crate::storage::Location;

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

    /// Largest API answer read, in MiB; a larger one is refused as it streams in.
    #[arg(long, global = true, default_value_t = 32, value_name = "MIB")]
    pub max_response_mb: u64,

    /// Reads per second per connected account (the API's limit: 300); requests
    /// are paced just under it. 0: no pacing.
    #[arg(long, global = true, value_name = "PER_SEC")]
    pub rate_get: Option<f64>,

    /// Writes (DMs, uploads) per minute per connected account (the API's limit:
    /// 120); paced just under it. 0: no pacing.
    #[arg(long, global = true, value_name = "PER_MIN")]
    pub rate_post: Option<f64>,

    /// What to do.
    #[command(subcommand)]
    pub command: CommandArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum CommandArgs {
    /// Page DM history into deduplicated JSONL and Parquet, with a resumable checkpoint.
    ///
    /// Name conversations with --account and --user, or list them in a job file
    /// (--job), or both. Reruns fetch only what is new and finish any interrupted
    /// backfill. Exit status: 0 done, 2 bad input, 3 a person must act (credits,
    /// auth, permissions), 4 partial (rerun to continue).
    Sync {
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
    },
    /// Send a text DM, optionally with one media item; or a batch of DMs.
    ///
    /// Each DM carries an Idempotency-Key derived from the account, recipient,
    /// text, media and --idempotency-key, reused on every retry and rerun, so a
    /// DM is never sent twice: to send identical content again on purpose, give
    /// a new --idempotency-key. Everything is validated before any request.
    Send {
        /// Connected account (X handle) that sends; the default for batch lines.
        #[arg(long, value_name = "HANDLE")]
        account: Option<String>,
        /// Recipient: numeric ID or @username.
        #[arg(long, value_name = "ID or @username", conflicts_with = "batch")]
        to: Option<String>,
        /// The message text (at most 10,000 characters); quote it.
        #[arg(long, conflicts_with = "batch", allow_hyphen_values = true)]
        text: Option<String>,
        /// One media file to attach (JPEG, PNG, GIF, WebP or MP4).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["media_url", "batch"])]
        media: Option<PathBuf>,
        /// One public https media URL for the API to download and attach.
        #[arg(long, value_name = "URL", conflicts_with = "batch")]
        media_url: Option<String>,
        /// The job's key for this DM (part of the Idempotency-Key).
        #[arg(long, value_name = "KEY", conflicts_with = "batch")]
        idempotency_key: Option<String>,
        /// JSON Lines file, one DM per line: {"to", "text", "account"?, "media"?, "media_url"?, "key"?}.
        #[arg(long, value_name = "FILE.jsonl")]
        batch: Option<PathBuf>,
        /// Output folder (the same as sync's).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Send even when the recipient's profile says canDm: false.
        #[arg(long)]
        ignore_can_dm: bool,
        /// With --batch: send the valid lines even if others are invalid
        /// (by default an invalid line refuses the whole batch, exit 2).
        #[arg(long, requires = "batch")]
        skip_invalid: bool,
        /// Stop before this run spends more credits (exit 4; rerun to continue).
        #[arg(long, value_name = "CREDITS")]
        max_credits: Option<u64>,
        /// Write the run's outcome to this file in Prometheus text format (replaced
        /// atomically), for the node_exporter textfile collector.
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every manifest, digest and the chain of runs in an output folder.
    ///
    /// For audit reviewers: reads no message body. Exit status 0 when
    /// everything verifies, 5 on any integrity failure. Manifest signatures
    /// are checked when XQUIK_DM_AUDIT_KEY is set.
    Verify {
        /// The output folder of sync/send.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// A chain head (SHA-256 printed by an earlier verify) that must still
        /// be in the chain: detects runs removed from the end.
        #[arg(long, value_name = "SHA256")]
        expect_head: Option<String>,
        /// Check only what came after this chain head (printed by an earlier verify):
        /// in time proportional to the new runs. The full verify also checks the
        /// earlier runs, SHA256SUMS and that nothing extra exists.
        #[arg(long, value_name = "SHA256")]
        since: Option<String>,
    },
    /// Show what the audit trail says: an HTML page to look at, or JSON.
    ///
    /// Built from the manifests, the chain and the checkpoint only (no message
    /// text): the chain head and verify's result, a timeline of runs, every
    /// conversation's state and every send. Exit status: 0 verified, 5 the trail
    /// failed verification (the report names the files), 2 bad input.
    Report {
        /// The output folder (or bucket URL) of sync/send.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Write the self-contained HTML page here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load every sealed run not loaded yet into PostgreSQL, exactly once.
    ///
    /// In chain order, each run in one transaction with its ledger row in
    /// xquik_dm.loaded_runs, after its handoff segment and manifest pass their
    /// digests. Tables xquik_dm.messages and xquik_dm.sends are created when
    /// missing. Exit status: 0 loaded, 2 bad input or an unreachable database,
    /// 3 the database refused, 5 a run failed its check (earlier runs stay loaded).
    Load {
        /// The output folder (or bucket URL) of sync/send.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// postgresql://USER@HOST:PORT/DB (the PG* variables fill in the rest; a
        /// password is better in PGPASSWORD than on a command line).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
        to: String,
        /// Connection attempts after the first, with backoff, while the server cannot be
        /// reached (a restart, a failover). A connection lost once loading has begun ends
        /// the load with exit 4: whole runs are loaded, and a rerun loads the rest.
        #[arg(long, value_name = "N", default_value_t = crate::commands::load::RETRY_CONNECT)]
        retry_connect: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Merge the small Parquet files of closed date partitions into large ones.
    ///
    /// A job that runs every few minutes writes a file or two per run; compaction
    /// merges each partition whose date has passed into one file per table, the
    /// same rows in the same order, as an audited run of its own (its manifest
    /// names the files removed and added, with digests; verify checks both). A
    /// kill at any moment leaves either the old or the new files listed; the
    /// next run finishes or undoes it. Exit status: 0 done, 2 bad input, 3 a
    /// damaged file (named; nothing is compacted).
    Compact {
        /// The output folder (or bucket URL) of sync/send.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Merge a partition only when it holds at least this many files.
        #[arg(long, value_name = "N", default_value_t = crate::commands::compact::MIN_FILES)]
        min_files: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a lost state/checkpoint.json from the folder's JSONL and audit trail.
    ///
    /// For a folder whose state/ was removed: sync and send refuse to run there
    /// (they would start over and overwrite the data). The JSONL holds every
    /// committed record, so the rebuilt checkpoint lets the job continue without
    /// refetching. Nothing is deleted: Parquet files no manifest lists are moved
    /// to recovered/. Exit status: 0 rebuilt, 2 nothing to rebuild or a
    /// checkpoint exists, 3 a damaged file (named).
    Rebuild {
        /// The output folder of sync/send.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
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
    },
    /// Benchmark: the embedded mock as a separate process, fetch-only vs full sync vs incremental rerun.
    ///
    /// Prints messages/s, pages/s, MB/s written, CPU seconds, peak RSS and credits
    /// (medians of --runs) and compares them with the performance targets. Build
    /// with --release for meaningful figures.
    Bench {
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
        /// Instead, the longevity scenario: RUNS syncs of a 20-conversation job,
        /// stamped 5 minutes apart, a few new messages before each; prints the run
        /// time of the first and last 10%, checkpoint size, verify times and the
        /// files before and after compact.
        #[arg(long, value_name = "RUNS", conflicts_with = "bucket")]
        longevity: Option<u64>,
        /// Instead, the latency scenario: a sync of --conversations x --messages
        /// against a mock that answers after 30, 100 and 250 ms with its rate limit
        /// on, then with 4 accounts; prints pages/s as a share of the limit and 429s.
        #[arg(long, conflicts_with_all = ["bucket", "longevity"])]
        latency: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark helper: page the synthetic world, parse, discard.
    #[command(hide = true)]
    BenchFetch {
        /// Conversations to page.
        #[arg(long)]
        conversations: u64,
        /// Conversations paged at the same time.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Run the whole workflow offline against the embedded mock: no key, no network.
    Demo {
        /// Output folder or bucket prefix (default: a new folder under the system temp dir).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the shell completion script for bash, zsh or fish.
    ///
    /// bash: xquik-dm completions bash > /etc/bash_completion.d/xquik-dm;
    /// zsh: xquik-dm completions zsh > "${fpath[1]}/_xquik-dm";
    /// fish: xquik-dm completions fish > ~/.config/fish/completions/xquik-dm.fish.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a folder.
    ///
    /// xquik-dm man > /usr/local/share/man/man1/xquik-dm.1; or
    /// xquik-dm man --dir /usr/local/share/man/man1 for xquik-dm-sync.1 and the others too.
    Man {
        /// Write xquik-dm.1 and xquik-dm-<command>.1 into this folder.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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
    /// `sync`.
    Sync {
        /// Everything the run needs.
        options: SyncOptions,
        /// Report as JSON.
        json: bool,
        /// Where to write the run's metrics.
        metrics_file: Option<PathBuf>,
    },
    /// `send`.
    Send {
        /// Everything the run needs.
        options: SendOptions,
        /// Report as JSON.
        json: bool,
        /// Where to write the run's metrics.
        metrics_file: Option<PathBuf>,
    },
    /// `verify`.
    Verify {
        /// The folder or bucket.
        dir: Location,
        /// Signature key.
        key: Option<AuditKey>,
        /// Chain head that must still be in the chain.
        expect_head: Option<String>,
        /// Check only what came after this chain head.
        since: Option<String>,
        /// Report as JSON.
        json: bool,
    },
    /// `load`.
    Load {
        /// The folder or bucket.
        from: Location,
        /// The database.
        to: String,
        /// Connection attempts after the first.
        retry_connect: u32,
        /// Report as JSON.
        json: bool,
    },
    /// `report`.
    Report {
        /// The folder or bucket.
        dir: Location,
        /// Where the HTML page goes.
        html: Option<PathBuf>,
        /// Report as JSON.
        json: bool,
    },
    /// `compact`.
    Compact {
        /// The folder.
        out: Location,
        /// Files a partition needs to be merged.
        min_files: usize,
        /// Report as JSON.
        json: bool,
    },
    /// `rebuild`.
    Rebuild {
        /// The folder.
        out: Location,
        /// Report as JSON.
        json: bool,
    },
    /// `lookup`.
    Lookup {
        /// How to reach the API.
        api: ClientConfig,
        /// Who to look up.
        user: UserRef,
    },
    /// `mock`.
    Mock(MockOptions),
    /// `bench`.
    Bench {
        /// Options.
        options: BenchOptions,
        /// Report as JSON.
        json: bool,
    },
    /// `bench --latency`.
    Latency {
        /// Conversations per account.
        conversations: u64,
        /// Messages per conversation.
        messages: u64,
        /// Page size.
        page_size: usize,
        /// Where the folders go.
        work_dir: Option<PathBuf>,
        /// Report as JSON.
        json: bool,
    },
    /// `bench --longevity`.
    Longevity {
        /// Runs.
        runs: u64,
        /// Where the folder goes.
        work_dir: Option<PathBuf>,
        /// Report as JSON.
        json: bool,
    },
    /// `bench-fetch`.
    BenchFetch {
        /// How to reach the API.
        api: ClientConfig,
        /// Conversations.
        conversations: u64,
        /// Concurrency.
        concurrency: usize,
    },
    /// `demo`.
    Demo {
        /// Output folder.
        out: Option<PathBuf>,
    },
    /// `completions`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// `man`.
    Man {
        /// Where the pages go; stdout when `None`.
        dir: Option<PathBuf>,
    },
}

/// The options of requests to the API, global so that they may stand before
/// or after the command name, but listed in the help of only the commands
/// that call the API.
const API_OPTIONS: [&str; 7] = [
    "base_url",
    "timeout",
    "max_attempts",
    "max_retry_time",
    "max_response_mb",
    "rate_get",
    "rate_post",
];
/// The commands that make no request of their own to the API.
const NO_API_COMMANDS: [&str; 10] = [
    "verify",
    "load",
    "report",
    "compact",
    "rebuild",
    "mock",
    "demo",
    "bench",
    "completions",
    "man",
];

impl Args {
    /// The command line as the parser, the completions and the man page see
    /// it: the API options hidden from the commands they do not apply to.
    pub fn clap_command() -> clap::Command {
        let mut cmd = <Args as clap::CommandFactory>::command();
        // A command that has an argument of its own by a global one's name
        // is not given the global one: these hidden copies keep the
        // options accepted there (a job's wrapper may pass them to every
        // command) but out of that command's help.
        let hidden: Vec<clap::Arg> = cmd
            .get_arguments()
            .filter(|a| API_OPTIONS.contains(&a.get_id().as_str()))
            .map(|a| a.clone().global(false).hide(true))
            .collect();
        for name in NO_API_COMMANDS {
            cmd = cmd.mut_subcommand(name, |sub| {
                hidden.iter().fold(sub, |sub, arg| sub.arg(arg.clone()))
            });
        }
        cmd
    }

    /// Parses the process's arguments.
    pub fn parse_args() -> std::result::Result<Args, clap::Error> {
        let matches = Self::clap_command().try_get_matches()?;
        <Args as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// Validates the arguments. `api_key` is the value of `XQUIK_API_KEY`;
    /// it is required only by commands that call the API.
    pub fn into_config(self, api_key: Option<String>) -> Result<Config> {
        self.into_config_with(api_key, audit_key_from_env())
    }

    /// [`Args::into_config`] with the audit key given explicitly.
    pub fn into_config_with(
        self,
        api_key: Option<String>,
        audit_key: Option<AuditKey>,
    ) -> Result<Config> {
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
        let max_response_mb = self.max_response_mb;
        let (rate_get, rate_post) = (self.rate_get, self.rate_post);
        for (flag, rate) in [("--rate-get", rate_get), ("--rate-post", rate_post)] {
            if rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
                return Err(Error::invalid(
                    flag,
                    "must be a number of requests, 0 or more",
                ));
            }
        }
        // The command line wins over a job file, which wins over the API's
        // documented limits.
        let pace = |job: Option<&JobFile>| {
            let defaults = Limits::default();
            Limits {
                get_per_sec: rate_get
                    .or(job.and_then(|j| j.rate_get))
                    .unwrap_or(defaults.get_per_sec),
                post_per_min: rate_post
                    .or(job.and_then(|j| j.rate_post))
                    .unwrap_or(defaults.post_per_min),
            }
        };
        let api = |key: Option<String>, job: Option<&JobFile>| -> Result<ClientConfig> {
            check_base_url(&base_url)?;
            let key = ApiKey::new(key.ok_or(Error::MissingApiKey)?)?;
            Ok(ClientConfig {
                base_url: base_url.clone(),
                api_key: key,
                timeout,
                retry: retry.clone(),
                max_response_bytes: max_response_mb.max(1) << 20,
                pace: pace(job),
            })
        };
        let command = match self.command {
            CommandArgs::Sync {
                account,
                users,
                out,
                job,
                concurrency,
                max_credits,
                max_empty_pages,
                max_pages,
                shard,
                compact,
                metrics_file,
                json,
                commit_interval_ms,
            } => {
                let shard = shard.as_deref().map(Shard::parse).transpose()?;
                let job = match job {
                    Some(path) => Some(JobFile::load(&path)?),
                    None => None,
                };
                let mut targets = Vec::new();
                match (&account, users.is_empty()) {
                    (Some(account), false) => {
                        let account = Account::parse(account)?;
                        for user in &users {
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
                if let Some(job) = &job {
                    targets.extend(job.targets()?);
                }
                if targets.is_empty() {
                    return Err(Error::invalid(
                        "--user",
                        "name conversations with --account and --user, or with --job",
                    ));
                }
                let out = out
                    .or_else(|| job.as_ref().and_then(|j| j.out.clone()))
                    .ok_or_else(|| Error::invalid("--out", "name the output folder"))?;
                let concurrency = concurrency
                    .or(job.as_ref().and_then(|j| j.concurrency))
                    .unwrap_or(crate::commands::sync::DEFAULT_CONCURRENCY);
                if !(1..=1024).contains(&concurrency) {
                    return Err(Error::invalid(
                        "--concurrency",
                        "must be between 1 and 1024",
                    ));
                }
                let mut options =
                    SyncOptions::new(api(api_key, job.as_ref())?, Location::from(out), targets);
                options.concurrency = concurrency;
                options.max_credits = max_credits.or(job.as_ref().and_then(|j| j.max_credits));
                options.max_empty_pages = max_empty_pages.max(1);
                options.progress = !json;
                options.audit_key = audit_key;
                options.commit_interval = Duration::from_millis(commit_interval_ms.max(1));
                options.shard = shard;
                options.max_pages = max_pages.map(|n| n.max(1));
                options.compact = compact || job.as_ref().is_some_and(|j| j.compact);
                Command::Sync {
                    options,
                    json,
                    metrics_file,
                }
            }
            CommandArgs::Lookup { user } => {
                // Input first, then the key: both are checked before any request.
                let user = UserRef::parse(&user, "<ID or @username>")?;
                Command::Lookup {
                    api: api(api_key, None)?,
                    user,
                }
            }
            CommandArgs::Mock {
                port,
                seed,
                page_size,
                transient_rate,
                api_key,
                conversations,
                messages,
                accounts,
                latency_ms,
                latency_jitter_ms,
                no_rate_limit,
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
                Command::Mock(MockOptions {
                    port,
                    seed,
                    page_size,
                    transient_rate,
                    api_key,
                    conversations,
                    messages,
                    accounts: accounts.max(1),
                    latency: Duration::from_millis(latency_ms),
                    latency_jitter: Duration::from_millis(latency_jitter_ms),
                    no_rate_limit,
                })
            }
            CommandArgs::Send {
                account,
                to,
                text,
                media,
                media_url,
                idempotency_key,
                batch,
                out,
                ignore_can_dm,
                skip_invalid,
                max_credits,
                metrics_file,
                json,
            } => {
                let (lines, is_batch) = match batch {
                    Some(path) => (read_batch(&path, account.as_deref())?, true),
                    None => {
                        let (Some(account), Some(to), Some(text)) = (account, to, text) else {
                            return Err(Error::invalid(
                                "send",
                                "give --account, --to and --text (or --batch FILE)",
                            ));
                        };
                        let request = SendRequest::validate(
                            &account,
                            &to,
                            &text,
                            media.as_deref(),
                            media_url.as_deref(),
                            idempotency_key.as_deref(),
                        )?;
                        (vec![BatchLine::Valid(request)], false)
                    }
                };
                Command::Send {
                    options: SendOptions {
                        api: api(api_key, None)?,
                        out: Location::from(out),
                        lines,
                        batch: is_batch,
                        ignore_can_dm,
                        skip_invalid,
                        max_credits,
                        audit_key: audit_key.clone(),
                    },
                    json,
                    metrics_file,
                }
            }
            CommandArgs::Bench {
                conversations,
                messages,
                page_size,
                runs,
                new_percent,
                concurrency,
                work_dir,
                bucket,
                longevity,
                latency,
                json,
            } => {
                if latency {
                    Command::Latency {
                        conversations,
                        messages,
                        page_size: page_size.max(1),
                        work_dir,
                        json,
                    }
                } else if let Some(runs) = longevity {
                    Command::Longevity {
                        runs,
                        work_dir,
                        json,
                    }
                } else {
                    let bucket = match bucket.map(|b| Location::parse(&b)) {
                        None => None,
                        Some(Location::Url(url)) => Some(url),
                        Some(Location::Dir(_)) => {
                            return Err(Error::invalid(
                                "--bucket",
                                "expected s3://, gs:// or az://",
                            ));
                        }
                    };
                    if conversations == 0 || messages == 0 || page_size == 0 || runs == 0 {
                        return Err(Error::invalid(
                            "bench",
                            "sizes and --runs must be at least 1",
                        ));
                    }
                    if !(0.0..=100.0).contains(&new_percent) {
                        return Err(Error::invalid("--new-percent", "must be between 0 and 100"));
                    }
                    Command::Bench {
                        options: BenchOptions {
                            conversations,
                            messages,
                            page_size,
                            runs,
                            new_percent,
                            concurrency: concurrency.max(1),
                            work_dir,
                            bucket,
                        },
                        json,
                    }
                }
            }
            CommandArgs::BenchFetch {
                conversations,
                concurrency,
            } => Command::BenchFetch {
                api: api(api_key, None)?,
                conversations,
                concurrency,
            },
            CommandArgs::Demo { out } => Command::Demo { out },
            CommandArgs::Completions { shell } => Command::Completions { shell },
            CommandArgs::Man { dir } => Command::Man { dir },
            CommandArgs::Load {
                from,
                to,
                retry_connect,
                json,
            } => Command::Load {
                from: Location::from(from),
                to,
                retry_connect,
                json,
            },
            CommandArgs::Report { dir, html, json } => Command::Report {
                dir: Location::from(dir),
                html,
                json,
            },
            CommandArgs::Compact {
                out,
                min_files,
                json,
            } => Command::Compact {
                out: Location::from(out),
                min_files,
                json,
            },
            CommandArgs::Rebuild { out, json } => Command::Rebuild {
                out: Location::from(out),
                json,
            },
            CommandArgs::Verify {
                dir,
                json,
                expect_head,
                since,
            } => Command::Verify {
                dir: Location::from(dir),
                key: audit_key,
                expect_head,
                since,
                json,
            },
        };
        Ok(Config {
            log,
            verbose: self.verbose,
            command,
        })
    }
}

/// A usage error, described without echoing what was typed: clap quotes
/// the offending word, which may be part of a message text that the shell
/// split (an unquoted `--text Your PIN is 4411`). Only argument names, which
/// come from this program, are shown.
pub fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let what = e.kind().as_str().unwrap_or("invalid usage");
    let named_by_us = matches!(
        e.kind(),
        ErrorKind::MissingRequiredArgument
            | ErrorKind::ArgumentConflict
            | ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
            | ErrorKind::TooManyValues
            | ErrorKind::TooFewValues
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::NoEquals
    );
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(name)) if named_by_us => format!(" ({name})"),
        Some(ContextValue::Strings(names)) if named_by_us => format!(" ({})", names.join(", ")),
        _ => String::new(),
    };
    format!("{what}{arg}: see xquik-dm --help (quote message texts: --text \"...\")")
}

/// One line of a `send --batch` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFileLine {
    account: Option<String>,
    to: String,
    text: String,
    media: Option<PathBuf>,
    media_url: Option<String>,
    key: Option<String>,
}

/// Reads a batch file; each line is validated on its own, so one bad line
/// refuses that line only. Relative media paths are read from the batch
/// file's folder. An unreadable or empty file is refused whole.
fn read_batch(path: &std::path::Path, default_account: Option<&str>) -> Result<Vec<BatchLine>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("--batch", format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let lines = parse_batch(&text, base, default_account);
    if lines.is_empty() {
        return Err(Error::invalid(
            "--batch",
            format!("{} has no lines", path.display()),
        ));
    }
    Ok(lines)
}

/// Parses the text of a batch file, one [`BatchLine`] per non-blank line;
/// relative media paths are taken from `base`. Never fails as a whole: a bad
/// line is an invalid line.
pub fn parse_batch(
    text: &str,
    base: &std::path::Path,
    default_account: Option<&str>,
) -> Vec<BatchLine> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let parsed: std::result::Result<BatchFileLine, _> = serde_json::from_str(raw);
        let line = match parsed {
            Err(e) => BatchLine::Invalid(format!(
                "line {}: not a batch line ({})",
                i + 1,
                crate::error::json_error_category(&e)
            )),
            Ok(l) => {
                let account = l.account.as_deref().or(default_account);
                match account {
                    None => BatchLine::Invalid(format!(
                        "line {}: no account (give \"account\" or --account)",
                        i + 1
                    )),
                    Some(account) => {
                        let media = l
                            .media
                            .map(|m| if m.is_absolute() { m } else { base.join(m) });
                        match SendRequest::validate(
                            account,
                            &l.to,
                            &l.text,
                            media.as_deref(),
                            l.media_url.as_deref(),
                            l.key.as_deref(),
                        ) {
                            Ok(r) => BatchLine::Valid(r),
                            Err(e) => BatchLine::Invalid(format!("line {}: {e}", i + 1)),
                        }
                    }
                }
            }
        };
        lines.push(line);
    }
    lines
}

/// The manifest signing key from `XQUIK_DM_AUDIT_KEY`, if set and non-empty.
pub fn audit_key_from_env() -> Option<AuditKey> {
    std::env::var_os(crate::audit::AUDIT_KEY_ENV)
        .filter(|k| !k.is_empty())
        .map(|k| AuditKey(k.into_encoded_bytes()))
}

/// A job file for scheduled runs:
///
/// ```toml
/// out = "/data/xquik-dm"      # optional; --out wins
/// concurrency = 8             # optional
/// max_credits = 50000         # optional
///
/// [[conversations]]
/// account = "acme_support"
/// users = ["@jack", "1234567890"]
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Output folder.
    pub out: Option<PathBuf>,
    /// Conversations paged at the same time.
    pub concurrency: Option<usize>,
    /// Credit ceiling per run.
    pub max_credits: Option<u64>,
    /// Compact closed date partitions after each run (`--compact`).
    #[serde(default)]
    pub compact: bool,
    /// Reads per second per account (`--rate-get`).
    pub rate_get: Option<f64>,
    /// Writes per minute per account (`--rate-post`).
    pub rate_post: Option<f64>,
    /// Accounts and their conversations.
    #[serde(default)]
    pub conversations: Vec<JobConversations>,
}

/// One account's conversations in a job file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConversations {
    /// The connected account.
    pub account: String,
    /// The other participants.
    pub users: Vec<String>,
}

impl JobFile {
    /// Reads and parses a job file.
    pub fn load(path: &std::path::Path) -> Result<JobFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("--job", format!("{}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|reason| Error::invalid("--job", format!("{}: {reason}", path.display())))
    }

    /// Parses job file text.
    pub fn parse(text: &str) -> std::result::Result<JobFile, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// The conversations it names, validated.
    pub fn targets(&self) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        for group in &self.conversations {
            let account = Account::parse(&group.account)?;
            for user in &group.users {
                targets.push(Target {
                    account: account.clone(),
                    user: UserRef::parse(user, "--job users")?,
                });
            }
        }
        Ok(targets)
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
    fn sync_config_from_flags_and_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.toml");
        std::fs::write(
            &job,
            "out = \"/tmp/x\"\nmax_credits = 500\n[[conversations]]\naccount = \"@other\"\nusers = [\"@jack\", \"7\"]\n",
        )
        .unwrap();
        let config = parse(&[
            "sync",
            "--account",
            "acme",
            "--user",
            "42",
            "--job",
            job.to_str().unwrap(),
        ])
        .into_config(Some("k".into()))
        .unwrap();
        let Command::Sync { options, .. } = config.command else {
            panic!("sync expected")
        };
        assert_eq!(options.targets.len(), 3);
        assert_eq!(options.targets[1].user, UserRef::Username("jack".into()));
        assert_eq!(options.targets[1].account.as_str(), "other");
        assert_eq!(options.out, Location::Dir(PathBuf::from("/tmp/x")));
        assert_eq!(options.max_credits, Some(500));
    }

    #[test]
    fn sync_refuses_bad_input_before_the_key_is_needed() {
        for args in [
            &["sync", "--account", "acme", "--out", "/tmp/x"][..],
            &["sync", "--user", "42", "--out", "/tmp/x"][..],
            &[
                "sync",
                "--account",
                "acme",
                "--user",
                "not valid",
                "--out",
                "/tmp/x",
            ][..],
            &["sync", "--account", "acme", "--user", "42"][..],
            &[
                "sync",
                "--account",
                "acme",
                "--user",
                "42",
                "--out",
                "/x",
                "--concurrency",
                "0",
            ][..],
        ] {
            let err = parse(args).into_config(Some("k".into())).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn job_files_with_unknown_keys_are_refused() {
        let err =
            JobFile::parse("[[conversations]]\naccount = \"a\"\nuser = [\"1\"]\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn demo_needs_no_key() {
        assert!(parse(&["demo"]).into_config(None).is_ok());
    }
}
