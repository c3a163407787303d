//! The options of `send`, and their validation into [`SendOptions`]: one
//! DM from the flags, or a batch file of them.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;

use crate::cli::global::Settings;
use crate::cli::signing::SigningArgs;
use crate::commands::send::{BatchLine, SendOptions, SendRequest};
use crate::commands::{Command, Recorded};
use crate::error::{Error, Result};
use crate::storage::Location;

/// The options of `send`, as typed.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
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
    #[command(flatten)]
    signing: SigningArgs,
}

impl SendArgs {
    /// Validates the DMs to send, then asks for the API key.
    pub fn into_command(self, settings: &Settings) -> Result<Command> {
        let (lines, batch) = self.lines()?;
        let options = SendOptions {
            api: settings.client_config(None)?,
            out: Location::from(self.out),
            lines,
            batch,
            ignore_can_dm: self.ignore_can_dm,
            skip_invalid: self.skip_invalid,
            max_credits: self.max_credits,
            audit_key: settings.audit_key.clone(),
            signing_key: self.signing.load(None)?,
        };
        Ok(Command::Send(Recorded {
            options,
            json: self.json,
            metrics_file: self.metrics_file,
        }))
    }

    /// The DMs to send, and whether they come from a batch file: its
    /// lines, or the one DM that --account, --to and --text describe.
    fn lines(&self) -> Result<(Vec<BatchLine>, bool)> {
        if let Some(path) = &self.batch {
            return Ok((read_batch(path, self.account.as_deref())?, true));
        }
        let (Some(account), Some(to), Some(text)) = (&self.account, &self.to, &self.text) else {
            return Err(Error::invalid(
                "send",
                "give --account, --to and --text (or --batch FILE)",
            ));
        };
        let request = SendRequest::validate(
            account,
            to,
            text,
            self.media.as_deref(),
            self.media_url.as_deref(),
            self.idempotency_key.as_deref(),
        )?;
        Ok((vec![BatchLine::Valid(request)], false))
    }
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
