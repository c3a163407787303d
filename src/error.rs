//! The one error type of the library, and how each error maps to an exit
//! status and to what the person running the job must do.
//!
//! Two rules shape every variant here:
//! - **No message body and no API key ever reaches an error.** API errors keep
//!   only the status, the error code, the endpoint template and the request
//!   ID; the server's free-text `message` is dropped because nothing promises
//!   it never echoes the request. JSON decoding errors keep only the position,
//!   because `serde_json` quotes offending values.
//! - **Every API error says what to fix.** The advice comes from the code the
//!   API returned (SPEC §1), not from the HTTP status alone.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::PathBuf;
use std::time::Duration;

use crate::api::endpoint::Endpoint;
use crate::api::retry::Reach;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in xquik-dm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input refused before anything was sent to the API.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The option or field at fault (`--to`, `text`, ...).
        field: &'static str,
        /// What is wrong with it; never contains a message body.
        reason: String,
    },

    /// `XQUIK_API_KEY` is missing or empty.
    #[error("XQUIK_API_KEY is not set: export the API key from the Xquik dashboard")]
    MissingApiKey,

    /// The base URL would send the key in clear text to a remote host.
    #[error(
        "refusing to send the API key to {url}: use an https:// base URL (plain http is allowed only for loopback hosts)"
    )]
    InsecureBaseUrl {
        /// The rejected base URL.
        url: String,
    },

    /// The API answered with an error status.
    #[error("{0}")]
    Api(#[from] ApiError),

    /// The request was never sent: an earlier answer closed its account's
    /// lane, or the whole run's (SPEC §6 "Scheduler").
    #[error("not sent: {} stopped on {cause}", account.as_deref().map_or_else(|| "the run".to_owned(), |a| format!("account {a}")))]
    NotSent {
        /// The account whose lane is closed; `None` for a request made for
        /// no account (a lookup) after the run closed.
        account: Option<String>,
        /// The answer that closed the lane.
        cause: ApiError,
    },

    /// A retryable failure persisted until the retry budget ran out.
    #[error("{endpoint} still failing after {attempts} attempts over {}s: {last}", elapsed.as_secs())]
    RetriesExhausted {
        /// Which endpoint.
        endpoint: Endpoint,
        /// Requests made, the first one included.
        attempts: u32,
        /// Time spent, waits included.
        elapsed: Duration,
        /// The last failure seen.
        last: Box<Error>,
    },

    /// The request never got an HTTP answer (connect, reset, timeout).
    #[error("{endpoint}: {kind} ({detail})")]
    Transport {
        /// Which endpoint.
        endpoint: Endpoint,
        /// `timed out`, `connection failed`, ...
        kind: &'static str,
        /// The transport's own words; URLs carry no key (it travels in a header).
        detail: String,
    },

    /// The API answered 2xx with a body this client cannot read.
    #[error("{endpoint}: unreadable response ({reason})")]
    Decode {
        /// Which endpoint.
        endpoint: Endpoint,
        /// The category and position of the decoding error, without the values.
        reason: String,
    },

    /// A write reached a terminal state other than success.
    #[error(
        "{endpoint}: write action {write_action_id} ended as {status}{}: {advice}",
        code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
    )]
    WriteFailed {
        /// Which endpoint.
        endpoint: Endpoint,
        /// The durable write-action ID, for support.
        write_action_id: String,
        /// `failed` or `expired`.
        status: String,
        /// The error code on the record, if any (`poll_deadline` when it
        /// was still pending when polling had to stop).
        code: Option<String>,
        /// Where to poll a still-pending write (API path, no secret).
        status_url: Option<String>,
        /// What the person should do next.
        advice: &'static str,
    },

    /// An output no longer matches what the checkpoint committed.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What does not match, and what to do.
        reason: String,
    },

    /// The recipient's profile says it accepts no DMs from this account.
    #[error(
        "{recipient} does not accept DMs from this account (canDm: false): ask them to allow messages, or pass --ignore-can-dm to try anyway"
    )]
    RecipientRefuses {
        /// The recipient as given.
        recipient: String,
    },

    /// The recipient's conversation was forgotten (`forget --user`): a DM to
    /// them would put a new body about them into the output.
    #[error(
        "{recipient}: this conversation was forgotten by an erasure run ({run}); run `xquik-dm forget --undo-user` first if the person's consent allows it"
    )]
    RecipientForgotten {
        /// The recipient as given.
        recipient: String,
        /// The erasure run that forgot them.
        run: String,
    },

    /// Another run holds the output folder.
    #[error("{}: another xquik-dm run is using this output folder; wait for it to finish (scheduled runs must not overlap)", path.display())]
    Locked {
        /// The output folder.
        path: PathBuf,
    },

    /// Another run committed to the same output concurrently: this run's
    /// commit lost the race and was not made.
    #[error("{}: another xquik-dm run committed here at the same time; this run stopped without committing over it (scheduled runs must not overlap)", path.display())]
    Conflict {
        /// The object whose version changed.
        path: PathBuf,
    },

    /// A Delta commit could not be made: other writers kept taking the next
    /// version, or a concurrent commit removed the same files.
    #[error("{}: Delta commit not made: {reason}", path.display())]
    DeltaConflict {
        /// The table's log.
        path: PathBuf,
        /// What happened, and what to do.
        reason: String,
    },

    /// The output storage refused access.
    #[error("{}: {reason}", path.display())]
    Storage {
        /// Where.
        path: PathBuf,
        /// What to fix.
        reason: String,
    },

    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// The error class, which decides the exit status and the wording.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidInput { .. } | Error::MissingApiKey | Error::InsecureBaseUrl { .. } => {
                ErrorClass::BadInput
            }
            Error::Api(api) | Error::NotSent { cause: api, .. } => api.class(),
            Error::RetriesExhausted { .. }
            | Error::Transport { .. }
            | Error::Locked { .. }
            | Error::Conflict { .. }
            | Error::DeltaConflict { .. } => ErrorClass::Retryable,
            // A write still pending is left for a later run to pick up.
            Error::WriteFailed { code, .. } if code.as_deref() == Some("poll_deadline") => {
                ErrorClass::Retryable
            }
            Error::WriteFailed { .. }
            | Error::Corrupt { .. }
            | Error::RecipientRefuses { .. }
            | Error::RecipientForgotten { .. }
            | Error::Storage { .. } => ErrorClass::NeedsPerson,
            Error::Decode { .. } | Error::Io { .. } => ErrorClass::Internal,
        }
    }

    /// Whether this error must stop the whole job, not only the conversation
    /// or send it happened in: the API key and billing apply to every
    /// request the job would make next ([`crate::api::retry::reach`]), and
    /// the output itself failing stops every writer.
    pub fn stops_job(&self) -> bool {
        match self {
            Error::Api(_) | Error::NotSent { .. } | Error::RetriesExhausted { .. } => {
                self.reach() == Some(Reach::Run)
            }
            Error::MissingApiKey
            | Error::InsecureBaseUrl { .. }
            | Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::Conflict { .. }
            | Error::DeltaConflict { .. }
            | Error::Storage { .. } => true,
            _ => false,
        }
    }

    /// How far the API answer behind this error reaches, when there is one.
    pub fn reach(&self) -> Option<Reach> {
        match self {
            Error::Api(api) | Error::NotSent { cause: api, .. } => {
                Some(crate::api::retry::reach(api.status, &api.code))
            }
            Error::RetriesExhausted { last, .. } => last.reach(),
            _ => None,
        }
    }

    /// Whether this error proves that a write did not and will not happen
    /// (the API refused it, or its write action ended failed or expired), so
    /// that trying the same intent again needs a new idempotency key: the old
    /// one would only replay this answer. Transient failures and pending
    /// writes are not: the write may have happened, so the key must stay.
    pub fn write_definitely_failed(&self) -> bool {
        match self {
            Error::Api(api) => api.class() != ErrorClass::Retryable,
            Error::WriteFailed { status, .. } => matches!(status.as_str(), "failed" | "expired"),
            _ => false,
        }
    }

    /// Whether this error concerns the connected account itself (not
    /// connected, needs reauthentication, restricted, out of its daily
    /// limit): the account's other conversations and sends would fail the
    /// same way, other accounts are unaffected.
    pub fn stops_account(&self) -> bool {
        self.reach() == Some(Reach::Account)
    }

    /// The process exit status for a run that ended on this error alone
    /// (SPEC §2): 2 bad input, 3 a person must act, 4 otherwise (the work can
    /// be resumed by a later run).
    pub fn exit_code(&self) -> u8 {
        match self.class() {
            ErrorClass::BadInput => 2,
            ErrorClass::NeedsPerson | ErrorClass::NotFound | ErrorClass::Rejected => 3,
            ErrorClass::Retryable | ErrorClass::Internal => 4,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

/// What kind of failure an error is, from the point of view of the person
/// or scheduler that has to react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: trying again later can succeed unchanged.
    Retryable,
    /// A person must act: credentials, billing, account state, permissions.
    NeedsPerson,
    /// The request itself is wrong and must be fixed.
    BadInput,
    /// The account, user or resource does not exist.
    NotFound,
    /// X refused this specific write (recipient settings, content, limits).
    Rejected,
    /// A defect or an unexpected answer; worth a bug report.
    Internal,
}

/// An error status answered by the Xquik API, reduced to what is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{endpoint} returned {status} {code}: {}{}", self.advice(), request_id.as_deref().map(|r| format!(" (request id {r})")).unwrap_or_default())]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The API's error code (`dm_not_permitted`, ...), or `http_<status>` when
    /// the body carried none.
    pub code: String,
    /// Which endpoint answered.
    pub endpoint: Endpoint,
    /// The `X-Request-Id` header, for support.
    pub request_id: Option<String>,
    /// The wait the server asked for, if any (header or body).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// The class of this error, from its code first and its status second.
    pub fn class(&self) -> ErrorClass {
        if crate::api::retry::is_retryable_status(self.status, &self.code) {
            return ErrorClass::Retryable;
        }
        match self.code.as_str() {
            "unauthenticated"
            | "insufficient_credits"
            | "no_credits"
            | "no_subscription"
            | "subscription_inactive"
            | "account_needs_reauth"
            | "account_restricted"
            | "dm_not_permitted"
            | "x_daily_limit"
            | "idempotency_conflict"
            | "idempotency_key_conflict" => ErrorClass::NeedsPerson,
            "account_not_found" | "user_not_found" | "not_found" | "x_target_not_found" => {
                ErrorClass::NotFound
            }
            "x_dm_not_allowed"
            | "x_rejected"
            | "media_download_failed"
            | "x_content_too_long"
            | "x_duplicate_action"
            | "x_account_suspended"
            | "x_account_protected"
            | "x_account_feature_required" => ErrorClass::Rejected,
            "invalid_input"
            | "invalid_user_id"
            | "account_required"
            | "unknown_field"
            | "unsupported_field"
            | "invalid_idempotency_key"
            | "missing_idempotency_key"
            | "body_too_large"
            | "unsupported_media_type"
            | "invalid_json" => ErrorClass::BadInput,
            _ => match self.status {
                401..=403 => ErrorClass::NeedsPerson,
                404 => ErrorClass::NotFound,
                422 => ErrorClass::Rejected,
                400..=499 => ErrorClass::BadInput,
                _ => ErrorClass::Internal,
            },
        }
    }

    /// What the person must do about this error, in one sentence.
    pub fn advice(&self) -> &'static str {
        advice_for(self.status, &self.code)
    }
}

/// The advice for an API error code (falling back on the status).
pub(crate) fn advice_for(status: u16, code: &str) -> &'static str {
    match code {
        "unauthenticated" => "check XQUIK_API_KEY: the API rejected it",
        "insufficient_credits" | "no_credits" => {
            "top up credits on the Xquik dashboard, then rerun; finished work is kept"
        }
        "no_subscription" | "subscription_inactive" => {
            "subscribe or reactivate the Xquik subscription, then rerun"
        }
        "account_needs_reauth" => "reconnect the sender account from the Xquik dashboard",
        "account_restricted" => {
            "the connected X account is locked, suspended or recovering: resolve it on X, then reconnect"
        }
        "dm_not_permitted" => {
            "use a connected account that participates in this conversation, or reconnect the account"
        }
        "account_not_found" => "connect this X account on the Xquik dashboard, or fix --account",
        "user_not_found" => "check the username or user ID: X has no such user",
        "x_target_not_found" => "check the recipient: X could not find that user",
        "account_required" => "pass the connected sender handle with --account",
        "invalid_user_id" => "pass a numeric user ID or an @username",
        "invalid_input" | "unknown_field" | "unsupported_field" => {
            "fix the request: account, text, user ID and a one-item media_ids"
        }
        "idempotency_conflict" | "idempotency_key_conflict" => {
            "this idempotency key was already used for a different message: use a new job key"
        }
        "x_dm_not_allowed" => {
            "the recipient does not accept DMs from this account: ask them to allow messages, or use another permitted account"
        }
        "x_rejected" => {
            "X rejected the write: check the recipient, the account state and the message content before retrying"
        }
        "media_download_failed" => {
            "the media could not be fetched: check the URL is public https and within size limits"
        }
        "x_content_too_long" => "shorten the message text",
        "x_daily_limit" => "the account hit X's daily limit: rerun tomorrow",
        "x_duplicate_action" => "X saw this exact write already: it was not sent again",
        "rate_limit_exceeded" | "x_rate_limited" => "rate limited: wait and rerun",
        "x_api_unavailable" | "x_transient_error" | "write_tracking_unavailable" => {
            "the service is temporarily unavailable: rerun later"
        }
        _ => match status {
            401 => "the API refused the credentials: check XQUIK_API_KEY",
            402 => "top up credits or subscribe, then rerun",
            403 => "the account may not do this: check the account and its permissions",
            404 => "check the account and user IDs",
            422 => "X rejected the request: check the recipient and content",
            400..=499 => "fix the request",
            _ => "unexpected server error: rerun later, and report it if it persists",
        },
    }
}

/// A JSON error's category, without the offending value: `serde_json`
/// messages quote values, which may be message bodies.
pub fn json_error_category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            endpoint: Endpoint::History,
            request_id: None,
            retry_after: None,
        }
    }

    /// Every code SPEC §1 names, with its status and the class it must land in.
    const DOCUMENTED: &[(u16, &str, ErrorClass)] = &[
        (400, "invalid_input", ErrorClass::BadInput),
        (400, "invalid_user_id", ErrorClass::BadInput),
        (400, "account_required", ErrorClass::BadInput),
        (401, "unauthenticated", ErrorClass::NeedsPerson),
        (402, "insufficient_credits", ErrorClass::NeedsPerson),
        (402, "no_credits", ErrorClass::NeedsPerson),
        (402, "no_subscription", ErrorClass::NeedsPerson),
        (402, "subscription_inactive", ErrorClass::NeedsPerson),
        (403, "dm_not_permitted", ErrorClass::NeedsPerson),
        (403, "account_needs_reauth", ErrorClass::NeedsPerson),
        (403, "account_restricted", ErrorClass::NeedsPerson),
        (404, "account_not_found", ErrorClass::NotFound),
        (404, "user_not_found", ErrorClass::NotFound),
        (409, "idempotency_conflict", ErrorClass::NeedsPerson),
        (422, "x_dm_not_allowed", ErrorClass::Rejected),
        (422, "x_rejected", ErrorClass::Rejected),
        (422, "media_download_failed", ErrorClass::Rejected),
        (429, "rate_limit_exceeded", ErrorClass::Retryable),
        (429, "x_rate_limited", ErrorClass::Retryable),
        (429, "x_daily_limit", ErrorClass::NeedsPerson),
        (502, "x_api_unavailable", ErrorClass::Retryable),
        (424, "x_api_unavailable", ErrorClass::Retryable),
        (503, "x_transient_error", ErrorClass::Retryable),
        (503, "write_tracking_unavailable", ErrorClass::Retryable),
    ];

    #[test]
    fn every_documented_code_is_classified() {
        for &(status, code, class) in DOCUMENTED {
            assert_eq!(api(status, code).class(), class, "{status} {code}");
        }
    }

    #[test]
    fn every_documented_code_has_specific_advice() {
        for &(status, code, _) in DOCUMENTED {
            let advice = api(status, code).advice();
            let generic = advice_for(status, "some_unknown_code");
            assert_ne!(
                advice, generic,
                "{status} {code} falls back to generic advice"
            );
        }
    }

    #[test]
    fn rendering_names_endpoint_status_code_and_advice() {
        let mut e = api(402, "insufficient_credits");
        e.request_id = Some("req-7".into());
        let text = Error::Api(e).to_string();
        assert_eq!(
            text,
            "GET /x/dm/{userId}/history returned 402 insufficient_credits: top up credits on the Xquik dashboard, then rerun; finished work is kept (request id req-7)"
        );
    }

    #[test]
    fn exit_codes_follow_the_spec() {
        assert_eq!(Error::MissingApiKey.exit_code(), 2);
        assert_eq!(Error::invalid("--to", "not a user").exit_code(), 2);
        for status_code in [
            (401, "unauthenticated"),
            (402, "no_credits"),
            (403, "dm_not_permitted"),
            (404, "user_not_found"),
            (422, "x_dm_not_allowed"),
            (429, "x_daily_limit"),
        ] {
            assert_eq!(Error::Api(api(status_code.0, status_code.1)).exit_code(), 3);
        }
        assert_eq!(Error::Api(api(503, "x_transient_error")).exit_code(), 4);
    }

    #[test]
    fn unknown_codes_fall_back_on_status() {
        assert_eq!(api(403, "brand_new_code").class(), ErrorClass::NeedsPerson);
        assert_eq!(api(404, "brand_new_code").class(), ErrorClass::NotFound);
        assert_eq!(api(418, "brand_new_code").class(), ErrorClass::BadInput);
        assert_eq!(api(500, "internal_error").class(), ErrorClass::Internal);
        assert_eq!(api(503, "brand_new_code").class(), ErrorClass::Retryable);
    }

    #[test]
    fn billing_and_auth_stop_the_job_account_errors_the_account() {
        assert!(Error::Api(api(402, "insufficient_credits")).stops_job());
        assert!(Error::Api(api(401, "unauthenticated")).stops_job());
        for code in [
            "account_not_found",
            "account_needs_reauth",
            "account_restricted",
            "x_daily_limit",
        ] {
            let e = Error::Api(api(403, code));
            assert!(!e.stops_job() && e.stops_account(), "{code}");
        }
        for code in ["dm_not_permitted", "user_not_found"] {
            let e = Error::Api(api(403, code));
            assert!(!e.stops_job() && !e.stops_account(), "{code}");
        }
    }
}
