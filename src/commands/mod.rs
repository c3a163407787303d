//! One module per subcommand. Each takes validated configuration and returns
//! a [`Report`]; `main` prints it and turns it into the exit status.

pub mod lookup;

use std::io::Write;

use crate::api::client::Client;
use crate::api::types::UserProfile;
use crate::cli::Command;
use crate::error::{Error, Result};

/// What a command produced, for `main` to print.
#[derive(Debug)]
#[non_exhaustive]
pub enum Report {
    /// `lookup`: the profile, printed as JSON.
    Lookup(UserProfile),
    /// `demo`: a human summary.
    /// `mock`: served until stopped.
    MockStopped,
}

impl Report {
    /// Writes the report to stdout-like output.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Report::Lookup(profile) => {
                let json = serde_json::to_string_pretty(profile).map_err(std::io::Error::other)?;
                writeln!(out, "{json}")
            }
            Report::MockStopped => Ok(()),
        }
    }

    /// The exit status (SPEC §2).
    pub fn exit_code(&self) -> u8 {
        0
    }
}

/// Runs a validated command.
pub async fn execute(command: Command) -> Result<Report> {
    match command {
        Command::Lookup { api, user } => {
            let client = Client::new(api)?;
            Ok(Report::Lookup(lookup::run(&client, &user).await?))
        }
        _ => Ok(Report::MockStopped),
    }
}

/// Maps an I/O error on stdout to the library error.
pub fn stdout_error(source: std::io::Error) -> Error {
    Error::io("<stdout>", source)
}
