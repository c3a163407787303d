//! What a send is: one DM, validated before the first request (text
//! length, one media item, file type and size, recipient form), and the
//! idempotency keys it goes under.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::api::{Account, IdempotencyKey, UserRef};
use crate::error::{Error, Result};

/// Longest DM text the API accepts, in Unicode scalar values.
pub const MAX_TEXT_CHARS: usize = 10_000;

/// Where the one media item of a DM comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaSource {
    /// A local file, uploaded as multipart.
    File {
        /// The file.
        path: PathBuf,
        /// Its MIME type, from its content.
        mime: &'static str,
        /// SHA-256 of its content (part of the idempotency key).
        sha256: String,
    },
    /// A public https URL the API downloads.
    Url(String),
}

/// One validated outbound DM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// The connected sender account.
    pub account: Account,
    /// The recipient.
    pub to: UserRef,
    /// The text: non-empty, at most 10,000 characters.
    pub text: String,
    /// At most one media item.
    pub media: Option<MediaSource>,
    /// The caller's job key, if any (sending identical content again needs a new one).
    pub job_key: Option<String>,
}

/// A media file type the API takes, and its size limit.
struct MediaKind {
    mime: &'static str,
    max_bytes: u64,
}

const MIB: u64 = 1 << 20;

/// The media type of a file, from its first bytes (not its name).
fn sniff(head: &[u8]) -> Option<MediaKind> {
    let kind = |mime, max_bytes| Some(MediaKind { mime, max_bytes });
    match head {
        [0xFF, 0xD8, 0xFF, ..] => kind("image/jpeg", 5 * MIB),
        [0x89, b'P', b'N', b'G', ..] => kind("image/png", 5 * MIB),
        [b'G', b'I', b'F', b'8', ..] => kind("image/gif", 15 * MIB),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => kind("image/webp", 5 * MIB),
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => kind("video/mp4", 512 * MIB),
        _ => None,
    }
}

impl SendRequest {
    /// Validates one send. `media` and `media_url` are mutually exclusive.
    /// Reads the media file to check its type and size and to hash it.
    pub fn validate(
        account: &str,
        to: &str,
        text: &str,
        media: Option<&Path>,
        media_url: Option<&str>,
        job_key: Option<&str>,
    ) -> Result<SendRequest> {
        let account = Account::parse(account)?;
        let to = UserRef::parse(to, "--to")?;
        if text.trim().is_empty() {
            return Err(Error::invalid("--text", "the text is empty"));
        }
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(Error::invalid(
                "--text",
                format!("{chars} characters; the API takes at most {MAX_TEXT_CHARS}"),
            ));
        }
        if let Some(key) = job_key {
            IdempotencyKey::try_new(key)?;
        }
        let media = match (media, media_url) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "--media",
                    "a DM carries at most one media item: give --media or --media-url",
                ));
            }
            (Some(path), None) => Some(check_media_file(path)?),
            (None, Some(url)) => {
                let parsed =
                    url::Url::parse(url).map_err(|_| Error::invalid("--media-url", "not a URL"))?;
                if parsed.scheme() != "https" {
                    return Err(Error::invalid(
                        "--media-url",
                        "the API downloads https URLs only",
                    ));
                }
                Some(MediaSource::Url(url.to_owned()))
            }
            (None, None) => None,
        };
        Ok(SendRequest {
            account,
            to,
            text: text.to_owned(),
            media,
            job_key: job_key.map(str::to_owned),
        })
    }

    /// The DM's idempotency key for `attempt` (0 for the first). Length-
    /// prefixed parts, so no two different sends share a key; the text
    /// enters as a digest. A new attempt, after one that definitely failed,
    /// gets a new key: the old one would only replay the failure.
    pub(super) fn dm_key(&self, recipient_id: &str, attempt: u32) -> IdempotencyKey {
        let text_digest = Sha256::digest(self.text.as_bytes());
        let media = match &self.media {
            None => String::new(),
            Some(MediaSource::File { sha256, .. }) => format!("file:{sha256}"),
            Some(MediaSource::Url(url)) => format!("url:{url}"),
        };
        let attempt = if attempt == 0 {
            String::new()
        } else {
            format!("attempt:{attempt}")
        };
        IdempotencyKey::derive(&[
            b"send_dm",
            self.account.as_str().as_bytes(),
            recipient_id.as_bytes(),
            &text_digest,
            media.as_bytes(),
            self.job_key.as_deref().unwrap_or_default().as_bytes(),
            attempt.as_bytes(),
        ])
    }

    /// The upload's idempotency key: tied to the DM it is for.
    pub(super) fn media_key(&self, dm_key: &IdempotencyKey) -> IdempotencyKey {
        IdempotencyKey::derive(&[b"upload_media", dm_key.as_str().as_bytes()])
    }
}

/// Checks a media file. Errors do not name the path: in a batch file with
/// shifted fields, the "path" may be a message.
fn check_media_file(path: &Path) -> Result<MediaSource> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::invalid(
            "--media",
            format!("the media file cannot be read ({})", e.kind()),
        )
    })?;
    if !meta.is_file() {
        return Err(Error::invalid("--media", "the media path is not a file"));
    }
    if meta.len() == 0 {
        return Err(Error::invalid("--media", "the media file is empty"));
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 16];
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    let Some(kind) = sniff(&head[..n]) else {
        return Err(Error::invalid(
            "--media",
            "the media file is not a JPEG, PNG, GIF, WebP or MP4 file",
        ));
    };
    if meta.len() > kind.max_bytes {
        return Err(Error::invalid(
            "--media",
            format!(
                "the media file has {} bytes; {} files may be at most {} MiB",
                meta.len(),
                kind.mime,
                kind.max_bytes / MIB
            ),
        ));
    }
    let (sha256, _) = std::fs::File::open(path)
        .and_then(crate::audit::digest_reader)
        .map_err(|e| Error::io(path, e))?;
    Ok(MediaSource::File {
        path: path.to_owned(),
        mime: kind.mime,
        sha256,
    })
}

/// One line of a batch: a request, or why it was refused.
#[derive(Debug, Clone)]
pub enum BatchLine {
    /// Valid.
    Valid(SendRequest),
    /// Refused before any request.
    Invalid(String),
}
