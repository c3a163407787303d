//! `xquik-dm send`: text and media DMs, never sent twice.
//!
//! Everything is validated before the first request (text length, one media
//! item, file type and size, recipient form), so bad input costs nothing.
//! Each send carries an `Idempotency-Key` derived from the account, the
//! recipient, the payload and the job key, reused on every retry and on
//! every rerun: a rerun after a crash, even one that struck after the API
//! accepted the DM, gets the same DM back instead of a second one. The
//! checkpoint remembers uploaded media (reused on a rerun, not uploaded
//! again) and recorded sends (not repeated).
//!
//! Per send: optional `POST /x/media`, then `POST /x/dm/{userId}` with
//! exactly one `media_ids` item, polled to its terminal state; then one
//! send record in the JSONL and `parquet/sends/`, an audit row, and the
//! checkpoint — and at the end of the run a manifest like sync's.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::client::{Client, ClientConfig, Reply};
use crate::api::types::{SendDmRequest, WriteResponse};
use crate::api::{Account, Endpoint, IdempotencyKey, UserRef};
use crate::audit::AuditKey;
use crate::checkpoint::{Recipient, SendState};
use crate::error::{Error, ErrorClass, Result};
use crate::records::{RecordType, SendRow};
use crate::storage::Location;
use crate::store::{ManifestBody, RunStamp, Store};

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
    fn dm_key(&self, recipient_id: &str, attempt: u32) -> IdempotencyKey {
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
    fn media_key(&self, dm_key: &IdempotencyKey) -> IdempotencyKey {
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

/// Validated options of a send run.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// How to reach the API.
    pub api: ClientConfig,
    /// Output folder.
    pub out: Location,
    /// The sends, in order (one for `--to`, one per line for `--batch`).
    pub lines: Vec<BatchLine>,
    /// Whether this is a batch (results are reported per line).
    pub batch: bool,
    /// Send even to a recipient whose profile says `canDm: false`.
    pub ignore_can_dm: bool,
    /// Send the valid lines of a batch that has invalid ones (by default an
    /// invalid line refuses the whole batch before any request).
    pub skip_invalid: bool,
    /// Stop before the run spends more credits than this.
    pub max_credits: Option<u64>,
    /// Key for signing the manifest.
    pub audit_key: Option<AuditKey>,
}

/// How one send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendStatus {
    /// Sent now.
    Sent,
    /// Recorded as sent by an earlier run: not sent again.
    AlreadySent,
    /// Refused before any request.
    Invalid,
    /// Refused by the `canDm: false` preflight.
    Refused,
    /// The API refused it or it failed.
    Failed,
    /// Not tried: an earlier error stopped the job.
    NotAttempted,
}

/// The outcome of one send (body-free: it goes to the manifest).
#[derive(Debug, Clone, Serialize)]
pub struct SendOutcome {
    /// 1-based line of the batch (1 for a single send).
    pub line: usize,
    /// Outcome.
    pub status: SendStatus,
    /// The sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The numeric recipient ID, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_user_id: Option<String>,
    /// The DM's idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The sent DM's ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The uploaded media's ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    /// The uploaded media's URL, or the URL it was downloaded from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    /// The endpoint of the last call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Its final HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Requests made for the DM (polls included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The API's error code, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The error, rendered (no body, no key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    class: Option<ErrorClass>,
}

impl SendOutcome {
    fn new(line: usize, status: SendStatus) -> SendOutcome {
        SendOutcome {
            line,
            status,
            account: None,
            recipient_user_id: None,
            idempotency_key: None,
            message_id: None,
            media_id: None,
            media_url: None,
            endpoint: None,
            http_status: None,
            attempts: None,
            code: None,
            error: None,
            class: None,
        }
    }

    /// A line refused before any request.
    fn invalid(line: usize, reason: &str) -> SendOutcome {
        let mut o = SendOutcome::new(line, SendStatus::Invalid);
        o.error = Some(reason.to_owned());
        o.class = Some(ErrorClass::BadInput);
        o
    }

    fn fail(mut self, status: SendStatus, e: &Error) -> SendOutcome {
        self.status = status;
        self.code = match e {
            Error::Api(api) => Some(api.code.clone()),
            Error::WriteFailed { code, .. } => code.clone(),
            _ => None,
        };
        self.class = Some(e.class());
        self.error = Some(e.to_string());
        self
    }
}

/// The outcome of a send run.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    /// The run's ID.
    pub run_id: String,
    /// Output folder.
    pub out: Location,
    /// Whether it was a batch.
    #[serde(skip)]
    pub batch: bool,
    /// One per request.
    pub sends: Vec<SendOutcome>,
    /// Credits spent by endpoint.
    pub credits: BTreeMap<Endpoint, u64>,
    /// The run's manifest.
    pub manifest: String,
    /// The error that stopped the job, if one did.
    pub stopped_by: Option<String>,
    #[serde(skip)]
    stop_needs_person: bool,
    /// Whether the batch was refused whole for invalid lines.
    #[serde(skip)]
    refused: bool,
    /// Requests answered 429, by account.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limited: BTreeMap<String, u64>,
}

impl SendReport {
    /// Exit status (SPEC §2): 0 all sent; 2 all refused as bad input; 3 a
    /// person must act and nothing else is left; 4 partial.
    pub fn exit_code(&self) -> u8 {
        if self.refused {
            return 2;
        }
        if self.stopped_by.is_some() {
            return if self.stop_needs_person { 3 } else { 4 };
        }
        let done = |s: &SendOutcome| matches!(s.status, SendStatus::Sent | SendStatus::AlreadySent);
        let bad: Vec<&SendOutcome> = self.sends.iter().filter(|s| !done(s)).collect();
        if bad.is_empty() {
            0
        } else if bad.len() < self.sends.len() {
            4
        } else if bad.iter().all(|s| s.status == SendStatus::Invalid) {
            2
        } else if bad.iter().all(|s| {
            matches!(
                s.class,
                Some(ErrorClass::NeedsPerson | ErrorClass::NotFound | ErrorClass::Rejected)
            )
        }) {
            3
        } else {
            4
        }
    }
}

/// Runs the sends, in order.
pub async fn run(options: SendOptions) -> Result<SendReport> {
    let invalid = options
        .lines
        .iter()
        .filter(|l| matches!(l, BatchLine::Invalid(_)))
        .count();
    if invalid > 0 && !options.skip_invalid {
        return Ok(refuse_batch(&options, invalid));
    }
    let mut session = Session::open(&options).await?;
    let tally = session.send_all(&options).await;
    session.finish(&options, tally).await
}

/// What the sends of one run share: the API client, the store and the
/// credits spent so far.
struct Session {
    client: Client,
    store: Store,
    credits: BTreeMap<Endpoint, u64>,
}

/// The sends of a run so far: their outcomes, and what keeps the later
/// lines from being tried.
#[derive(Default)]
struct Tally {
    outcomes: Vec<SendOutcome>,
    /// The error that stopped the job.
    stop: Option<Error>,
    /// Accounts stopped by an account-level error: its class and rendering.
    stopped_accounts: HashMap<String, (ErrorClass, String)>,
}

impl Tally {
    /// The outcome of a line that is not tried, if it is not: the job
    /// stopped, its account stopped, or it could cost more than
    /// `--max-credits` leaves.
    fn skip(
        &self,
        request: &SendRequest,
        number: usize,
        credits: &BTreeMap<Endpoint, u64>,
        max_credits: Option<u64>,
    ) -> Option<SendOutcome> {
        if self.stop.is_some() {
            return Some(SendOutcome::new(number, SendStatus::NotAttempted));
        }
        // An account-level error (not connected, reauthentication, daily
        // limit) skips that account's later lines; other accounts go on.
        if let Some((class, error)) = self.stopped_accounts.get(request.account.as_str()) {
            let mut o = SendOutcome::new(number, SendStatus::NotAttempted);
            o.account = Some(request.account.to_string());
            o.class = Some(*class);
            o.error = Some(format!("not attempted: {error}"));
            return Some(o);
        }
        let spent: u64 = credits.values().sum();
        if max_credits.is_some_and(|max| spent + max_cost(request) > max) {
            let mut o = SendOutcome::new(number, SendStatus::NotAttempted);
            o.account = Some(request.account.to_string());
            o.class = Some(ErrorClass::Retryable);
            o.code = Some("max_credits".into());
            o.error = Some("not attempted: --max-credits reached; rerun to continue".into());
            return Some(o);
        }
        None
    }

    /// Takes the outcome of a line that was tried. A failure that stops the
    /// job, or the account, keeps the later lines (of that account) from
    /// being tried.
    fn add(
        &mut self,
        request: &SendRequest,
        number: usize,
        sent: std::result::Result<SendOutcome, Failed>,
    ) {
        match sent {
            Ok(o) => self.outcomes.push(o),
            Err((o, e)) => {
                tracing::warn!(line = number, error = %e, "send failed");
                if e.stops_job() {
                    self.stop = Some(e);
                } else if e.stops_account() {
                    self.stopped_accounts
                        .insert(request.account.to_string(), (e.class(), e.to_string()));
                }
                self.outcomes.push(o);
            }
        }
    }
}

impl Session {
    /// The set-up: the run's stamp, the API client, and the output folder
    /// opened as a store.
    async fn open(options: &SendOptions) -> Result<Session> {
        let stamp = RunStamp::now();
        let client = Client::new(options.api.clone())?;
        let storage = options.out.open()?;
        let store = Store::open_async(&storage, &stamp).await?;
        Ok(Session {
            client,
            store,
            credits: BTreeMap::new(),
        })
    }

    /// The per-line loop: each line sent, skipped or refused, in order.
    async fn send_all(&mut self, options: &SendOptions) -> Tally {
        let mut tally = Tally::default();
        let started = Instant::now();
        for (i, line) in options.lines.iter().enumerate() {
            let number = i + 1;
            let request = match line {
                BatchLine::Invalid(reason) => {
                    tally.outcomes.push(SendOutcome::invalid(number, reason));
                    continue;
                }
                BatchLine::Valid(r) => r,
            };
            if let Some(skipped) = tally.skip(request, number, &self.credits, options.max_credits) {
                tally.outcomes.push(skipped);
                continue;
            }
            let sent = self.send_one(request, number, options).await;
            tally.add(request, number, sent);
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sends done"
        );
        tally
    }

    /// The outcome: the run's report, sealed in its manifest.
    async fn finish(self, options: &SendOptions, tally: Tally) -> Result<SendReport> {
        let mut report = SendReport {
            run_id: self.store.run_id().to_owned(),
            out: options.out.clone(),
            batch: options.batch,
            sends: tally.outcomes,
            credits: self.credits,
            manifest: String::new(),
            stop_needs_person: tally.stop.as_ref().is_some_and(|e| e.exit_code() == 3),
            stopped_by: tally.stop.map(|e| e.to_string()),
            refused: false,
            rate_limited: self.client.pacer().refusals(),
        };
        let body = manifest_body(&report, options);
        let sealed = self.store.seal_async(body).await?;
        report.manifest = sealed.chain.manifest;
        Ok(report)
    }
}

/// The manifest content of a send run: IDs, keys, statuses, counts and
/// credits.
fn manifest_body(report: &SendReport, options: &SendOptions) -> ManifestBody {
    ManifestBody {
        command: "send",
        exit_code: report.exit_code(),
        options: serde_json::json!({
            "base_url": options.api.base_url,
            "batch": options.batch,
            "lines": options.lines.len(),
            "ignore_can_dm": options.ignore_can_dm,
        }),
        conversations: serde_json::json!([]),
        sends: serde_json::to_value(&report.sends).unwrap_or_default(),
        credits: report.credits.clone(),
        counts: serde_json::json!({
            "sent": report.sends.iter().filter(|s| s.status == SendStatus::Sent).count(),
            "already_sent": report.sends.iter().filter(|s| s.status == SendStatus::AlreadySent).count(),
            "not_sent": report.sends.iter().filter(|s| !matches!(s.status, SendStatus::Sent | SendStatus::AlreadySent)).count(),
        }),
        signing_key: options.audit_key.clone(),
    }
}

/// The report of a batch refused before any request because some lines
/// are invalid: each invalid line says why, the others are not attempted.
fn refuse_batch(options: &SendOptions, invalid: usize) -> SendReport {
    let sends = options
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| match line {
            BatchLine::Invalid(reason) => SendOutcome::invalid(i + 1, reason),
            BatchLine::Valid(r) => {
                let mut o = SendOutcome::new(i + 1, SendStatus::NotAttempted);
                o.account = Some(r.account.to_string());
                o.error = Some(format!(
                    "not attempted: {invalid} invalid lines refuse the batch (fix them, or pass --skip-invalid)"
                ));
                o
            }
        })
        .collect();
    SendReport {
        run_id: String::new(),
        out: options.out.clone(),
        batch: options.batch,
        sends,
        credits: BTreeMap::new(),
        manifest: String::new(),
        stopped_by: None,
        stop_needs_person: false,
        refused: true,
        rate_limited: BTreeMap::new(),
    }
}

/// The most a send can cost: the DM, an upload, a recipient lookup.
fn max_cost(request: &SendRequest) -> u64 {
    Endpoint::SendDm.credits(0)
        + request
            .media
            .as_ref()
            .map_or(0, |_| Endpoint::Media.credits(0))
        + Endpoint::User.credits(0)
}

type Failed = (SendOutcome, Error);

/// The outcome so far, failed with `e`, and `e`.
fn failed(outcome: &SendOutcome, e: Error) -> Failed {
    (outcome.clone().fail(SendStatus::Failed, &e), e)
}

/// A DM between its stages: who it goes to, the keys it goes under, its
/// state in the checkpoint and its outcome so far.
struct Dm {
    /// The numeric recipient ID.
    recipient_id: String,
    /// The key the checkpoint knows the DM by: its first attempt's.
    base_key: IdempotencyKey,
    /// The current attempt's key.
    key: IdempotencyKey,
    state: SendState,
    outcome: SendOutcome,
}

impl Dm {
    /// The outcome so far, failed with `e`, and `e`.
    fn failed(&self, e: Error) -> Failed {
        failed(&self.outcome, e)
    }
}

impl Session {
    /// One send: recipient, preflight, media, DM, record. On failure the
    /// outcome says how far it got; committed state stays committed.
    async fn send_one(
        &mut self,
        request: &SendRequest,
        line: usize,
        options: &SendOptions,
    ) -> std::result::Result<SendOutcome, Failed> {
        let mut outcome = SendOutcome::new(line, SendStatus::Failed);
        outcome.account = Some(request.account.to_string());
        let (recipient_id, can_dm) = self.recipient(request, &outcome).await?;
        outcome.recipient_user_id = Some(recipient_id.clone());
        // The checkpoint knows each intended DM by its first key; the key of the
        // current attempt may differ (see `dm_key`).
        let base_key = request.dm_key(&recipient_id, 0);
        let previous = self
            .store
            .checkpoint()
            .sends
            .get(base_key.as_str())
            .cloned();
        if let Some(state) = &previous
            && state.status == "sent"
            && state.recorded
        {
            return Ok(already_sent(outcome, state, &base_key));
        }
        if can_dm == Some(false) && !options.ignore_can_dm {
            let e = Error::RecipientRefuses {
                recipient: request.to.to_string(),
            };
            return Err((outcome.fail(SendStatus::Refused, &e), e));
        }
        let state = attempt_state(previous, request, &recipient_id);
        let key = request.dm_key(&recipient_id, state.attempt);
        let mut dm = Dm {
            recipient_id,
            base_key,
            key,
            state,
            outcome,
        };
        dm.state.idempotency_key = Some(dm.key.as_str().to_owned());
        dm.outcome.idempotency_key = Some(dm.key.as_str().to_owned());

        // Media first; an upload that already succeeded is reused, not repeated.
        let media_id = self.upload(request, &mut dm).await?;
        dm.outcome.media_id = media_id.clone();
        dm.outcome.media_url = dm.state.media_url.clone();
        let reply = match self.send(request, &mut dm, media_id.clone()).await? {
            Ok(reply) => reply,
            Err(e) => return Err(self.remember_failure(dm, e)),
        };
        let message_id = self.confirm(&mut dm, &reply).map_err(|e| dm.failed(e))?;
        self.record(request, &mut dm, &reply.value, &message_id, media_id)
            .map_err(|e| dm.failed(e))?;
        tracing::info!(line, message_id = %message_id, recipient = %dm.recipient_id, "DM sent");
        dm.outcome.status = SendStatus::Sent;
        dm.outcome.message_id = Some(message_id);
        Ok(dm.outcome)
    }

    /// The recipient's numeric ID and `canDm`: usernames are resolved once,
    /// then remembered. A remembered `canDm: false` is looked up again,
    /// since the refusal tells the person to have the recipient change it.
    async fn recipient(
        &mut self,
        request: &SendRequest,
        outcome: &SendOutcome,
    ) -> std::result::Result<(String, Option<bool>), Failed> {
        let cached = match &request.to {
            UserRef::Id(id) => self
                .store
                .checkpoint()
                .recipients
                .values()
                .find(|r| &r.id == id),
            UserRef::Username(name) => self.store.checkpoint().recipients.get(&name.to_lowercase()),
        }
        .cloned();
        match (cached, &request.to) {
            (Some(r), _) if r.can_dm != Some(false) => Ok((r.id, r.can_dm)),
            (None, UserRef::Id(id)) => Ok((id.clone(), None)),
            _ => self.look_up(request, outcome).await,
        }
    }

    /// Looks the recipient's profile up, and remembers it in the checkpoint.
    async fn look_up(
        &mut self,
        request: &SendRequest,
        outcome: &SendOutcome,
    ) -> std::result::Result<(String, Option<bool>), Failed> {
        let result = self.client.user(&request.to, Some(&request.account)).await;
        self.store
            .log_request(Endpoint::User, &request.to.to_string(), &result)
            .map_err(|e| failed(outcome, e))?;
        let reply = result.map_err(|e| failed(outcome, e))?;
        if !crate::normalize::is_valid_id(&reply.value.id) {
            let e = Error::Decode {
                endpoint: Endpoint::User,
                reason: "the profile's id is not 1-20 decimal digits".into(),
            };
            return Err(failed(outcome, e));
        }
        *self.credits.entry(Endpoint::User).or_default() += 1;
        let profile = reply.value;
        self.store.checkpoint_mut().recipients.insert(
            profile.username.to_lowercase(),
            Recipient {
                id: profile.id.clone(),
                username: profile.username.clone(),
                can_dm: profile.can_dm,
            },
        );
        Ok((profile.id, profile.can_dm))
    }

    /// Upload: the media ID the DM carries, if it carries one; a new upload
    /// is checkpointed at once.
    async fn upload(
        &mut self,
        request: &SendRequest,
        dm: &mut Dm,
    ) -> std::result::Result<Option<String>, Failed> {
        let source = match (&request.media, &dm.state.media_id) {
            (None, _) => return Ok(None),
            (Some(_), Some(id)) => return Ok(Some(id.clone())),
            (Some(source), None) => source,
        };
        let media_key = request.media_key(&dm.key);
        let uploaded = match source {
            MediaSource::File { path, mime, .. } => {
                let bytes = std::fs::read(path).map_err(|e| dm.failed(Error::io(path, e)))?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "media".into());
                self.client
                    .upload_media_file(&request.account, &name, mime, bytes, &media_key)
                    .await
            }
            MediaSource::Url(url) => {
                self.client
                    .upload_media_url(&request.account, url, &media_key)
                    .await
            }
        };
        self.store
            .log_request(Endpoint::Media, request.account.as_str(), &uploaded)
            .map_err(|e| dm.failed(e))?;
        let reply = uploaded.map_err(|e| {
            let mut o = dm.outcome.clone();
            o.endpoint = Some(Endpoint::Media);
            (o.fail(SendStatus::Failed, &e), e)
        })?;
        *self.credits.entry(Endpoint::Media).or_default() += 10;
        let id = answer_id(
            reply.value.media_id(),
            Endpoint::Media,
            "the upload answer has no mediaId",
            "the upload answer's mediaId is not 1-20 decimal digits",
        )
        .map_err(|e| dm.failed(e))?;
        dm.state.status = "media_uploaded".into();
        dm.state.media_id = Some(id.clone());
        dm.state.media_url = reply.value.media_url.clone().or_else(|| match source {
            MediaSource::Url(url) => Some(url.clone()),
            MediaSource::File { .. } => None,
        });
        // The media checkpoint: a rerun reuses this upload.
        self.store
            .checkpoint_mut()
            .sends
            .insert(dm.base_key.as_str().to_owned(), dm.state.clone());
        self.store.commit().map_err(|e| dm.failed(e))?;
        Ok(Some(id))
    }

    /// Send: `POST /x/dm/{userId}` polled to its terminal state, or the poll
    /// of a write an earlier run left pending. The inner result is the API's
    /// answer; the outer error, a request that could not be logged.
    async fn send(
        &mut self,
        request: &SendRequest,
        dm: &mut Dm,
        media_id: Option<String>,
    ) -> std::result::Result<Result<Reply<WriteResponse>>, Failed> {
        let body = SendDmRequest {
            account: request.account.as_str().to_owned(),
            text: request.text.clone(),
            media_ids: media_id.map(|id| [id]),
        };
        dm.outcome.endpoint = Some(Endpoint::SendDm);
        // A write an earlier run left pending is polled, not submitted again.
        let sent = match dm
            .state
            .status_url
            .clone()
            .filter(|_| dm.state.status == "pending")
        {
            Some(url) => {
                self.client
                    .resume_write(Endpoint::SendDm, &request.account, &url)
                    .await
            }
            None => self.client.send_dm(&dm.recipient_id, &body, &dm.key).await,
        };
        self.store
            .log_request(Endpoint::SendDm, &dm.recipient_id, &sent)
            .map_err(|e| dm.failed(e))?;
        Ok(sent)
    }

    /// A send that failed, remembered in the checkpoint for the rerun: one
    /// that definitely failed is tried anew, a pending one is polled, any
    /// other is asked again under the same key.
    fn remember_failure(&mut self, mut dm: Dm, e: Error) -> Failed {
        dm.state.error = Some(match &e {
            Error::Api(api) => api.code.clone(),
            Error::WriteFailed { code, .. } => code.clone().unwrap_or_else(|| "failed".into()),
            _ => "error".into(),
        });
        dm.state.status_url = None;
        dm.state.status = if e.write_definitely_failed() {
            "failed".into()
        } else if let Error::WriteFailed {
            status_url: Some(url),
            ..
        } = &e
        {
            dm.state.status_url = Some(url.clone());
            "pending".into()
        } else {
            "retry".into()
        };
        self.store
            .checkpoint_mut()
            .sends
            .insert(dm.base_key.as_str().to_owned(), dm.state);
        let committed = self.store.commit();
        let o = dm.outcome.fail(SendStatus::Failed, &e);
        match committed {
            Ok(()) => (o, e),
            Err(io) => (o, io),
        }
    }

    /// Confirm: the DM was accepted; its cost, status and attempts noted,
    /// and its message ID checked.
    fn confirm(&mut self, dm: &mut Dm, reply: &Reply<WriteResponse>) -> Result<String> {
        *self.credits.entry(Endpoint::SendDm).or_default() += 10;
        dm.outcome.http_status = Some(reply.meta.status);
        dm.outcome.attempts = Some(reply.meta.attempts);
        answer_id(
            reply.value.message_id(),
            Endpoint::SendDm,
            "the send answer has neither messageId nor result.id",
            "the send answer's message ID is not 1-20 decimal digits",
        )
    }

    /// Record: the send record and the checkpoint that says it is recorded,
    /// committed together.
    fn record(
        &mut self,
        request: &SendRequest,
        dm: &mut Dm,
        answer: &WriteResponse,
        message_id: &str,
        media_id: Option<String>,
    ) -> Result<()> {
        let row = send_row(request, &dm.recipient_id, answer, message_id, media_id);
        // The record and the checkpoint that says it is recorded commit
        // together: a crash before this commit makes the rerun ask the API
        // again with the same key, which answers with this same DM.
        // A DM already on record under another key (a checkpoint rebuilt from
        // the JSONL knows sends by message ID) is not recorded twice.
        let on_record = self
            .store
            .checkpoint()
            .sends
            .values()
            .any(|s| s.recorded && s.message_id.as_deref() == Some(message_id));
        if !on_record {
            self.store.append_send(&row)?;
        }
        dm.state.status = "sent".into();
        dm.state.message_id = Some(message_id.to_owned());
        dm.state.send_status = Some(row.send_status);
        dm.state.sent_at = crate::normalize::format_micros(row.sent_at);
        dm.state.recorded = true;
        dm.state.error = None;
        dm.state.status_url = None;
        let state = std::mem::take(&mut dm.state);
        self.store
            .checkpoint_mut()
            .sends
            .insert(dm.base_key.as_str().to_owned(), state);
        self.store.commit()
    }
}

/// The outcome of a DM an earlier run sent and recorded: not sent again.
fn already_sent(
    mut outcome: SendOutcome,
    state: &SendState,
    base_key: &IdempotencyKey,
) -> SendOutcome {
    outcome.status = SendStatus::AlreadySent;
    outcome.idempotency_key = state
        .idempotency_key
        .clone()
        .or(Some(base_key.as_str().to_owned()));
    outcome.message_id = state.message_id.clone();
    outcome.media_id = state.media_id.clone();
    outcome
}

/// The checkpoint state an attempt starts from: the DM's earlier state, or
/// a new one.
fn attempt_state(
    previous: Option<SendState>,
    request: &SendRequest,
    recipient_id: &str,
) -> SendState {
    let mut state = previous.unwrap_or_else(|| SendState {
        account: request.account.to_string(),
        recipient_user_id: recipient_id.to_owned(),
        ..SendState::default()
    });
    if state.status == "failed" {
        // The last attempt definitely did not send: try anew, with a new key
        // and, if the media was what failed, a new upload.
        state.attempt += 1;
        if matches!(
            state.error.as_deref(),
            Some("media_download_failed" | "invalid_input")
        ) {
            state.media_id = None;
            state.media_url = None;
        }
        state.error = None;
    }
    state
}

/// An ID from a write's answer: present and 1-20 decimal digits, or a
/// decode error that says which it is not.
fn answer_id(id: Option<&str>, endpoint: Endpoint, missing: &str, invalid: &str) -> Result<String> {
    let Some(id) = id.map(str::to_owned) else {
        return Err(Error::Decode {
            endpoint,
            reason: missing.into(),
        });
    };
    if !crate::normalize::is_valid_id(&id) {
        return Err(Error::Decode {
            endpoint,
            reason: invalid.into(),
        });
    }
    Ok(id)
}

/// The send record of a DM the API accepted, stamped now.
fn send_row(
    request: &SendRequest,
    recipient_id: &str,
    answer: &WriteResponse,
    message_id: &str,
    media_id: Option<String>,
) -> SendRow {
    let send_status = answer.status.clone().unwrap_or_else(|| {
        if answer.succeeded() {
            "success".into()
        } else {
            "failed".into()
        }
    });
    SendRow {
        record_type: RecordType::Send,
        message_id: message_id.to_owned(),
        success: answer.succeeded(),
        send_status,
        sender_account: request.account.to_string(),
        recipient_user_id: recipient_id.to_owned(),
        message_text: request.text.clone(),
        sent_at: chrono::Utc::now().timestamp_micros(),
        media_id: media_id.clone(),
        media_ids: media_id.map(|id| vec![id]),
    }
}

impl std::fmt::Display for SendReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.batch {
            // One JSON result per batch line, in order.
            for s in &self.sends {
                let line = serde_json::to_string(s).map_err(|_| std::fmt::Error)?;
                writeln!(f, "{line}")?;
            }
            return Ok(());
        }
        for s in &self.sends {
            let to = s.recipient_user_id.as_deref().unwrap_or("?");
            match s.status {
                SendStatus::Sent | SendStatus::AlreadySent => {
                    let verb = if s.status == SendStatus::Sent {
                        "sent"
                    } else {
                        "already sent (not sent again)"
                    };
                    write!(
                        f,
                        "{verb}: DM {} to {to}",
                        s.message_id.as_deref().unwrap_or("?")
                    )?;
                    if let Some(media) = &s.media_id {
                        write!(f, " with media {media}")?;
                    }
                    writeln!(f)?;
                }
                _ => writeln!(
                    f,
                    "not sent to {to}: {}",
                    s.error.as_deref().unwrap_or("not attempted")
                )?,
            }
        }
        if let Some(stop) = &self.stopped_by {
            writeln!(f, "stopped: {stop}")?;
        }
        if self.manifest.is_empty() {
            return Ok(());
        }
        writeln!(f, "audit: {}", self.manifest)
    }
}
