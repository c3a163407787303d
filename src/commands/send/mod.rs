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

//!
//! The folder: `request` validates what a send is and derives its keys;
//! this file runs the sends — set-up, the per-line loop, and per send the
//! stages recipient → upload → send → confirm → record; `report` holds
//! their outcomes, the exit status and the summary.

mod report;
mod request;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

pub use report::{SendOutcome, SendReport, SendStatus};
pub use request::{BatchLine, MAX_TEXT_CHARS, MediaSource, SendRequest};

use crate::api::client::{Client, ClientConfig, Reply};
use crate::api::types::{SendDmRequest, WriteResponse};
use crate::api::{Endpoint, IdempotencyKey, UserRef};
use crate::audit::AuditKey;
use crate::checkpoint::{Recipient, SendState};
use crate::commands::sync::LaneClosed;
use crate::error::{Error, ErrorClass, Result};
use crate::records::{RecordType, SendRow};
use crate::storage::Location;
use crate::store::{ManifestBody, RunStamp, Store};

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
    /// SSH key for signing the manifest (`--signing-key`).
    pub signing_key: Option<crate::sshsig::SigningKey>,
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
        let storage = crate::shard::open(&options.out)?;
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
            lanes_closed: LaneClosed::all_of(self.client.pacer()),
        };
        LaneClosed::log(&report.lanes_closed);
        let body = manifest_body(&report, options);
        let sealed = self.store.seal_async(body).await?;
        report.manifest = sealed.chain.manifest;
        Ok(report)
    }
}

/// The manifest content of a send run: its options, each send's outcome
/// (no text), counts and credits.
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
        counts: send_counts(report),
        signing_key: options.audit_key.clone(),
        ssh_key: options.signing_key.clone(),
    }
}

/// The manifest's counts of a send run; the lanes an answer closed, when
/// one did.
fn send_counts(report: &SendReport) -> serde_json::Value {
    let mut counts = serde_json::json!({
        "sent": report.sends.iter().filter(|s| s.status == SendStatus::Sent).count(),
        "already_sent": report.sends.iter().filter(|s| s.status == SendStatus::AlreadySent).count(),
        "not_sent": report.sends.iter().filter(|s| !matches!(s.status, SendStatus::Sent | SendStatus::AlreadySent)).count(),
    });
    if !report.lanes_closed.is_empty() {
        counts["lanes_closed"] = serde_json::to_value(&report.lanes_closed).unwrap_or_default();
    }
    counts
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
        lanes_closed: Vec::new(),
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
        if let Some(run) = self.store.checkpoint().erasure.forgotten.get(&recipient_id) {
            let e = Error::RecipientForgotten {
                recipient: request.to.to_string(),
                run: run.clone(),
            };
            return Err((outcome.fail(SendStatus::Refused, &e), e));
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
        dm.state.sent_at = crate::timestamp::format_micros(row.sent_at);
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
