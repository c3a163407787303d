//! The options of `forget`, and their validation into a
//! [`ForgetOptions`]: what to erase (conversations, single messages, an IDs
//! file, or conversations to stop forgetting), and the required reason.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;

use crate::api::UserRef;
use crate::cli::global::Settings;
use crate::cli::signing::SigningArgs;
use crate::commands::Command;
use crate::commands::forget::ForgetOptions;
use crate::error::Result;
use crate::storage::Location;

/// The options of `forget`, as typed.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The output folder (or bucket URL) of sync/send.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Erase whole conversations (numeric ID or @username; a username is
    /// resolved from the output's recipients, else looked up with XQUIK_API_KEY).
    /// Later syncs skip them (reason `forgotten`) until --undo-user.
    #[arg(long, value_name = "ID or @username", num_args = 1..)]
    user: Vec<String>,
    /// Erase single messages (history or send records) by message ID.
    #[arg(long, value_name = "ID", num_args = 1..)]
    message: Vec<String>,
    /// Erase the message IDs listed in this file, one per line.
    #[arg(long, value_name = "FILE")]
    ids_file: Option<PathBuf>,
    /// Stop forgetting these conversations: later syncs fetch them again.
    #[arg(long, value_name = "ID", num_args = 1.., conflicts_with_all = ["user", "message", "ids_file"])]
    undo_user: Vec<String>,
    /// Why (required, at most 200 characters; stored in the manifest, so no
    /// message text).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    signing: SigningArgs,
}

impl ForgetArgs {
    /// Validates what to erase and the reason.
    pub fn into_command(self, settings: &Settings) -> Result<Command> {
        let _ = (settings, UserRef::Id(String::new()));
        let _ = (
            self.out,
            self.user,
            self.message,
            self.ids_file,
            self.undo_user,
            self.reason,
            self.json,
            self.signing,
        );
        let _: Option<ForgetOptions> = None;
        let _: Option<Location> = None;
        todo!()
    }
}
