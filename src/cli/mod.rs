//! The command line, in two stages: clap parses raw [`Args`], then
//! [`Args::into_config`] validates them into a [`Config`]: a library
//! [`Command`] (or a request for the completions or the man page, which
//! are rendered here from the clap definition). Nothing past this module
//! sees a clap type, and everything refused here is refused before any
//! request is made (exit status 2). Each command's options and their
//! validation live in the submodule of that command; [`global`] holds the
//! options every command takes and the settings built from them.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bench;
pub mod folder;
pub mod forget;
pub mod global;
pub mod job;
pub mod lookup;
pub mod mock;
pub mod send;
pub mod signing;
pub mod sync;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::audit::AuditKey;
use crate::cli::bench::{BenchArgs, BenchFetchArgs};
use crate::cli::folder::{CompactArgs, LoadArgs, RebuildArgs, ReportArgs, VerifyArgs};
use crate::cli::forget::ForgetArgs;
use crate::cli::global::{GlobalArgs, Settings, audit_key_from_env};
use crate::cli::lookup::LookupArgs;
use crate::cli::mock::{DemoArgs, MockArgs};
use crate::cli::send::SendArgs;
use crate::cli::sync::SyncArgs;
use crate::commands::{self, Command, Report};
use crate::error::{Error, Result};
use crate::logging::LogFormat;

/// Moves X direct messages between the Xquik API and private storage.
///
/// The API key is read from the XQUIK_API_KEY environment variable (never
/// from the command line, where other users of the machine could see it).
#[derive(Debug, Parser)]
#[command(name = "xquik-dm", version, about, long_about = None, max_term_width = 100)]
pub struct Args {
    /// The options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,

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
    Sync(SyncArgs),
    /// Send a text DM, optionally with one media item; or a batch of DMs.
    ///
    /// Each DM carries an Idempotency-Key derived from the account, recipient,
    /// text, media and --idempotency-key, reused on every retry and rerun, so a
    /// DM is never sent twice: to send identical content again on purpose, give
    /// a new --idempotency-key. Everything is validated before any request.
    Send(SendArgs),
    /// Check every manifest, digest and the chain of runs in an output folder.
    ///
    /// For audit reviewers: reads no message body. Exit status 0 when
    /// everything verifies, 5 on any integrity failure. Manifest signatures
    /// are checked when XQUIK_DM_AUDIT_KEY is set.
    Verify(VerifyArgs),
    /// Show what the audit trail says: an HTML page to look at, or JSON.
    ///
    /// Built from the manifests, the chain and the checkpoint only (no message
    /// text): the chain head and verify's result, a timeline of runs, every
    /// conversation's state and every send. Exit status: 0 verified, 5 the trail
    /// failed verification (the report names the files), 2 bad input.
    Report(ReportArgs),
    /// Load every sealed run not loaded yet into PostgreSQL, exactly once.
    ///
    /// In chain order, each run in one transaction with its ledger row in
    /// xquik_dm.loaded_runs, after its handoff segment and manifest pass their
    /// digests. Tables xquik_dm.messages and xquik_dm.sends are created when
    /// missing. Exit status: 0 loaded, 2 bad input or an unreachable database,
    /// 3 the database refused (a password, a certificate, TLS), 4 the connection
    /// was lost mid-load (whole runs stay loaded; a rerun loads the rest), 5 a run
    /// failed its check (earlier runs stay loaded).
    Load(LoadArgs),
    /// Merge the small Parquet files of closed date partitions into large ones.
    ///
    /// A job that runs every few minutes writes a file or two per run; compaction
    /// merges each partition whose date has passed into one file per table, the
    /// same rows in the same order, as an audited run of its own (its manifest
    /// names the files removed and added, with digests; verify checks both). A
    /// kill at any moment leaves either the old or the new files listed; the
    /// next run finishes or undoes it. Exit status: 0 done, 2 bad input, 3 a
    /// damaged file (named; nothing is compacted).
    Compact(CompactArgs),
    /// Erase conversations or single messages from every output, with evidence.
    ///
    /// Takes the records out of the handoff file (a new generation; the old
    /// bytes are deleted, every old segment in a bucket), rewrites the Parquet
    /// files that held them, cleans temporary and recovered files, and records
    /// the erasure as an audited run: counts per conversation, a Merkle root
    /// over the erased IDs, the reason and the time, never a body. Erased IDs
    /// become tombstones no later sync writes again; forgotten conversations are
    /// skipped until --undo-user. Exit status: 0 done, 2 bad input, 3 a damaged
    /// file (named; nothing is erased).
    Forget(ForgetArgs),
    /// Rebuild a lost state/checkpoint.json from the folder's JSONL and audit trail.
    ///
    /// For a folder whose state/ was removed: sync and send refuse to run there
    /// (they would start over and overwrite the data). The JSONL holds every
    /// committed record, so the rebuilt checkpoint lets the job continue without
    /// refetching. Nothing is deleted: Parquet files no manifest lists are moved
    /// to recovered/. Exit status: 0 rebuilt, 2 nothing to rebuild or a
    /// checkpoint exists, 3 a damaged file (named).
    Rebuild(RebuildArgs),
    /// Print a user's profile (id, username, name, canDm) as JSON. 1 credit.
    Lookup(LookupArgs),
    /// Serve the embedded mock Xquik API on loopback (for trials and tests).
    Mock(MockArgs),
    /// Benchmark: the embedded mock as a separate process, fetch-only vs full sync vs incremental rerun.
    ///
    /// Prints messages/s, pages/s, MB/s written, CPU seconds, peak RSS and credits
    /// (medians of --runs) and compares them with the performance targets. Build
    /// with --release for meaningful figures.
    Bench(BenchArgs),
    /// Benchmark helper: page the synthetic world, parse, discard.
    #[command(hide = true)]
    BenchFetch(BenchFetchArgs),
    /// Run the whole workflow offline against the embedded mock: no key, no network.
    Demo(DemoArgs),
    /// Print the shell completion script for bash, zsh or fish.
    ///
    /// bash: xquik-dm completions bash > /etc/bash_completion.d/xquik-dm;
    /// zsh: xquik-dm completions zsh > "${fpath[1]}/_xquik-dm";
    /// fish: xquik-dm completions fish > ~/.config/fish/completions/xquik-dm.fish.
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a folder.
    ///
    /// xquik-dm man > /usr/local/share/man/man1/xquik-dm.1; or
    /// xquik-dm man --dir /usr/local/share/man/man1 for xquik-dm-sync.1 and the others too.
    Man(ManArgs),
}

/// The options of `completions`, as typed.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// The options of `man`, as typed.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write xquik-dm.1 and xquik-dm-<command>.1 into this folder.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// A validated invocation.
#[derive(Debug)]
pub struct Config {
    /// Log format and level.
    pub log: LogFormat,
    /// Verbosity (0 info, 1 debug, 2+ trace).
    pub verbose: u8,
    /// What to do.
    pub invocation: Invocation,
}

/// What the command line asks for: a command of the library, or a
/// description of the command line itself.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per process, moved once: a box would buy nothing"
)]
pub enum Invocation {
    /// A command.
    Run(Command),
    /// `completions`: the completion script of this shell.
    Completions(clap_complete::Shell),
    /// `man`: the man page on stdout, or one page per command into this
    /// folder.
    Man(Option<PathBuf>),
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
        let log = self.global.log();
        let verbose = self.global.verbose();
        let settings = self.global.into_settings(api_key, audit_key)?;
        Ok(Config {
            log,
            verbose,
            invocation: self.command.into_invocation(&settings)?,
        })
    }
}

impl CommandArgs {
    /// Validates the options of the command.
    fn into_invocation(self, settings: &Settings) -> Result<Invocation> {
        let command = match self {
            CommandArgs::Sync(args) => args.into_command(settings)?,
            CommandArgs::Send(args) => args.into_command(settings)?,
            CommandArgs::Verify(args) => args.into_command(settings.audit_key.clone())?,
            CommandArgs::Report(args) => args.into_command()?,
            CommandArgs::Load(args) => args.into_command(),
            CommandArgs::Compact(args) => args.into_command()?,
            CommandArgs::Forget(args) => args.into_command(settings)?,
            CommandArgs::Rebuild(args) => args.into_command(),
            CommandArgs::Lookup(args) => args.into_command(settings)?,
            CommandArgs::Mock(args) => args.into_command()?,
            CommandArgs::Bench(args) => args.into_command()?,
            CommandArgs::BenchFetch(args) => args.into_command(settings)?,
            CommandArgs::Demo(args) => args.into_command(),
            CommandArgs::Completions(args) => return Ok(Invocation::Completions(args.shell)),
            CommandArgs::Man(args) => return Ok(Invocation::Man(args.dir)),
        };
        Ok(Invocation::Run(command))
    }
}

impl Invocation {
    /// Runs it: a command through [`commands::execute`]; the completions
    /// and the man page are rendered here, from the clap definition.
    pub async fn run(self) -> Result<Report> {
        match self {
            Invocation::Run(command) => commands::execute(command).await,
            Invocation::Completions(shell) => Ok(completions(shell)),
            Invocation::Man(dir) => man(dir.as_deref()),
        }
    }
}

/// The completion script of `shell`.
fn completions(shell: clap_complete::Shell) -> Report {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Args::clap_command(), "xquik-dm", &mut script);
    Report::Text(script)
}

/// The man page, or one page per command written into `dir`.
fn man(dir: Option<&Path>) -> Result<Report> {
    let cmd = Args::clap_command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| Error::io(dir, e))?;
            Ok(Report::Text(
                format!("man pages written to {}\n", dir.display()).into_bytes(),
            ))
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| Error::io("<man page>", e))?;
            Ok(Report::Text(page))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::UserRef;
    use crate::storage::Location;
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
        let Invocation::Run(Command::Lookup { api, user }) = config.invocation else {
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
        let Invocation::Run(Command::Sync(sync)) = config.invocation else {
            panic!("sync expected")
        };
        let options = sync.options;
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
    fn demo_needs_no_key() {
        assert!(parse(&["demo"]).into_config(None).is_ok());
    }
}
