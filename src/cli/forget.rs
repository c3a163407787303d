//! The options of `forget`, and their validation into a
//! [`ForgetOptions`]: what to erase (conversations, single messages, an IDs
//! file, or conversations to stop forgetting), and the required reason.
//! Everything is checked here, before the output is touched (exit 2).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::{Path, PathBuf};

use crate::api::UserRef;
use crate::cli::global::Settings;
use crate::cli::signing::SigningArgs;
use crate::commands::Command;
use crate::commands::forget::ForgetOptions;
use crate::erasure::check_reason;
use crate::error::{Error, Result};
use crate::normalize::is_valid_id;
use crate::storage::Location;

/// The options of `forget`, as typed.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The output folder (or bucket URL) of sync/send.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Erase whole conversations: numeric ID or @username (a username is resolved
    /// from the output's recipients, else looked up with XQUIK_API_KEY). Later
    /// syncs skip them (reason `forgotten`) until --undo-user.
    #[arg(long, value_name = "ID or @username", num_args = 1..)]
    user: Vec<String>,
    /// Erase single messages (history or send records) by message ID.
    #[arg(long, value_name = "ID", num_args = 1..)]
    message: Vec<String>,
    /// Erase the message IDs listed in this file, one per line (blank lines and
    /// lines starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    ids_file: Option<PathBuf>,
    /// Stop forgetting these conversations (numeric IDs): later syncs fetch what
    /// is new again; messages erased before stay erased.
    #[arg(long, value_name = "ID", num_args = 1.., conflicts_with_all = ["user", "message", "ids_file"])]
    undo_user: Vec<String>,
    /// Why (required, at most 200 characters; stored in the manifest, so a
    /// reference such as a ticket, never a message's text).
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    reason: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    signing: SigningArgs,
}

impl ForgetArgs {
    /// Validates what to erase and the reason; the API key is taken when
    /// one is set (for usernames the output does not know).
    pub fn into_command(self, settings: &Settings) -> Result<Command> {
        check_reason(&self.reason)?;
        let users = self
            .user
            .iter()
            .map(|u| UserRef::parse(u, "--user"))
            .collect::<Result<Vec<_>>>()?;
        let mut messages = ids(&self.message, "--message")?;
        if let Some(path) = &self.ids_file {
            messages.extend(ids_file(path)?);
        }
        let undo_users = ids(&self.undo_user, "--undo-user")?;
        if users.is_empty() && messages.is_empty() && undo_users.is_empty() {
            return Err(Error::invalid(
                "--user",
                "name what to erase: --user, --message or --ids-file (or --undo-user)",
            ));
        }
        let api = match settings.client_config(None) {
            Ok(api) => Some(api),
            Err(Error::MissingApiKey) => None,
            Err(e) => return Err(e),
        };
        Ok(Command::Forget {
            options: ForgetOptions {
                out: Location::from(self.out),
                users,
                messages,
                undo_users,
                reason: self.reason,
                api,
                key: self.signing.load(None)?,
            },
            json: self.json,
        })
    }
}

/// Numeric IDs given with `field`.
fn ids(values: &[String], field: &'static str) -> Result<Vec<String>> {
    values
        .iter()
        .map(|v| {
            let v = v.trim();
            if is_valid_id(v) {
                Ok(v.to_owned())
            } else {
                // Not echoed: a misplaced argument may be a message's text.
                Err(Error::invalid(field, "not a numeric ID (1-20 digits)"))
            }
        })
        .collect()
}

/// The IDs of an IDs file.
fn ids_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(
            "--ids-file",
            format!("{} cannot be read: {e}", path.display()),
        )
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !is_valid_id(line) {
            return Err(Error::invalid(
                "--ids-file",
                format!(
                    "line {} of {} is not a numeric message ID",
                    n + 1,
                    path.display()
                ),
            ));
        }
        out.push(line.to_owned());
    }
    Ok(out)
}
