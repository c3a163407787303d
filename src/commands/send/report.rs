//! The outcome of a send run: how each send ended (body-free: it goes to
//! the manifest), the run's exit status, and its summary for a person.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::api::Endpoint;
use crate::commands::sync::LaneClosed;
use crate::error::{Error, ErrorClass};
use crate::storage::Location;

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
    /// Refused by the `canDm: false` preflight, or because the recipient's
    /// conversation is forgotten.
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
    pub(super) class: Option<ErrorClass>,
}

impl SendOutcome {
    /// An outcome with nothing known yet but its line and status.
    pub(super) fn new(line: usize, status: SendStatus) -> SendOutcome {
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
    pub(super) fn invalid(line: usize, reason: &str) -> SendOutcome {
        let mut o = SendOutcome::new(line, SendStatus::Invalid);
        o.error = Some(reason.to_owned());
        o.class = Some(ErrorClass::BadInput);
        o
    }

    /// The outcome failed with `e`: its status, the API's code, the class
    /// and the rendering of `e`.
    pub(super) fn fail(mut self, status: SendStatus, e: &Error) -> SendOutcome {
        self.status = status;
        self.code = match e {
            Error::Api(api) | Error::NotSent { cause: api, .. } => Some(api.code.clone()),
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
    pub(super) stop_needs_person: bool,
    /// Whether the batch was refused whole for invalid lines.
    #[serde(skip)]
    pub(super) refused: bool,
    /// Requests answered 429, by account.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limited: BTreeMap<String, u64>,
    /// Accounts whose lane an answer closed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lanes_closed: Vec<LaneClosed>,
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
        for lane in &self.lanes_closed {
            writeln!(f, "lane closed: {lane}")?;
        }
        if self.manifest.is_empty() {
            return Ok(());
        }
        writeln!(f, "audit: {}", self.manifest)
    }
}
