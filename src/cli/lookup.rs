//! The options of `lookup`.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::api::UserRef;
use crate::cli::global::Settings;
use crate::commands::Command;
use crate::error::Result;

/// The options of `lookup`, as typed.
#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// Numeric user ID or @username.
    #[arg(value_name = "ID or @username")]
    user: String,
}

impl LookupArgs {
    /// Validates the user, then asks for the API key.
    pub fn into_command(self, settings: &Settings) -> Result<Command> {
        // Input first, then the key: both are checked before any request.
        let user = UserRef::parse(&self.user, "<ID or @username>")?;
        Ok(Command::Lookup {
            api: settings.client_config(None)?,
            user,
        })
    }
}
