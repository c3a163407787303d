//! The options of the commands that work on the output folder of
//! sync/send, and call no API: `verify`, `report`, `load`, `compact` and
//! `rebuild`.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;

use crate::audit::AuditKey;
use crate::cli::signing::{SigningArgs, load_allowed_signers};
use crate::commands::Command;
use crate::commands::verify::Trust;
use crate::error::Result;
use crate::storage::Location;

/// The options of `verify`, as typed.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
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
    /// OpenSSH allowed_signers file: check each manifest's SSH signature against
    /// the key valid when its run finished (exit 5 on a missing, bad, unknown
    /// or expired one).
    #[arg(long, value_name = "FILE")]
    allowed_signers: Option<PathBuf>,
    /// With --allowed-signers: fail runs sealed without a signature too (by
    /// default those before the first signed run are only reported).
    #[arg(long, requires = "allowed_signers")]
    require_signatures: bool,
}

impl VerifyArgs {
    /// The check to run; manifest HMACs are checked with `key`, SSH
    /// signatures with the allowed signers file.
    pub fn into_command(self, key: Option<AuditKey>) -> Result<Command> {
        Ok(Command::Verify {
            dir: Location::from(self.dir),
            trust: Trust {
                key,
                signers: load_allowed_signers(self.allowed_signers.as_deref())?,
                require_signatures: self.require_signatures,
            },
            expect_head: self.expect_head,
            since: self.since,
            json: self.json,
        })
    }
}

/// The options of `report`, as typed.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The output folder (or bucket URL) of sync/send.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Write the self-contained HTML page here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// OpenSSH allowed_signers file: show each run's SSH signature as verified
    /// (or failed) against it.
    #[arg(long, value_name = "FILE")]
    allowed_signers: Option<PathBuf>,
    /// Show the IDs of the people erasures concerned (the conversations and
    /// recipients erased from, the users forgotten) in the page and the JSON.
    /// Hidden by default: a report is shared more widely than the data.
    #[arg(long)]
    erased_ids: bool,
}

impl ReportArgs {
    /// The report to build.
    pub fn into_command(self) -> Result<Command> {
        Ok(Command::Report {
            dir: Location::from(self.dir),
            html: self.html,
            trust: Trust {
                signers: load_allowed_signers(self.allowed_signers.as_deref())?,
                ..Trust::default()
            },
            erased_ids: self.erased_ids,
            json: self.json,
        })
    }
}

/// The options of `load`, as typed.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
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
}

impl LoadArgs {
    /// The load to run.
    pub fn into_command(self) -> Command {
        Command::Load {
            from: Location::from(self.from),
            to: self.to,
            retry_connect: self.retry_connect,
            json: self.json,
        }
    }
}

/// The options of `compact`, as typed.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// The output folder (or bucket URL) of sync/send.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Merge a partition only when it holds at least this many files.
    #[arg(long, value_name = "N", default_value_t = crate::commands::compact::MIN_FILES)]
    min_files: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    signing: SigningArgs,
}

impl CompactArgs {
    /// The compaction to run.
    pub fn into_command(self) -> Result<Command> {
        Ok(Command::Compact {
            out: Location::from(self.out),
            min_files: self.min_files,
            key: self.signing.load(None)?,
            json: self.json,
        })
    }
}

/// The options of `rebuild`, as typed.
#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The output folder of sync/send.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl RebuildArgs {
    /// The rebuild to run.
    pub fn into_command(self) -> Command {
        Command::Rebuild {
            out: Location::from(self.out),
            json: self.json,
        }
    }
}
