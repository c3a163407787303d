//! The job file of `sync --job`: accounts and conversations for scheduled
//! runs, with defaults for some options (the command line wins).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;

use crate::api::{Account, UserRef};
use crate::commands::sync::Target;
use crate::error::{Error, Result};

/// A job file for scheduled runs:
///
/// ```toml
/// out = "/data/xquik-dm"      # optional; --out wins
/// concurrency = 8             # optional
/// max_credits = 50000         # optional
/// signing_key = "/etc/xquik-dm/id_ed25519"   # optional; --signing-key wins
/// retain_days = 400           # optional; --retain-days wins
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
    /// SSH key that signs each run's manifest (`--signing-key`).
    pub signing_key: Option<PathBuf>,
    /// Erase messages older than this many days (`--retain-days`).
    pub retain_days: Option<u32>,
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

    #[test]
    fn job_files_with_unknown_keys_are_refused() {
        let err =
            JobFile::parse("[[conversations]]\naccount = \"a\"\nuser = [\"1\"]\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }
}
