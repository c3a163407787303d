//! The outcome of a sync run: each conversation's, each page's (as the
//! page log records it), and the run's — its exit status, its manifest
//! content and its summary for a person.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::options::SyncOptions;
use super::shared::Run;
use crate::api::Endpoint;
use crate::api::pagination::StopReason;
use crate::commands::compact::CompactReport;
use crate::erasure::ErasureReport;
use crate::error::ErrorClass;
use crate::sinks::WrittenFile;
use crate::storage::Location;
use crate::store::{ManifestBody, Repair};

/// How a conversation ended in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    /// Everything the API serves is written.
    Complete,
    /// Stopped early; a later run continues (credits, anomaly, job stop).
    Partial,
    /// Failed on an error; nothing more can be done without a person.
    Failed,
}

/// One conversation's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationReport {
    /// The account.
    pub account: String,
    /// The user ID, or the username when it could not be resolved.
    pub user: String,
    /// Outcome.
    pub status: ConversationStatus,
    /// Why it stopped: a stop reason or an error code.
    pub reason: String,
    /// The error, rendered (no bodies), when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Error class, when it failed.
    #[serde(skip)]
    pub class: Option<ErrorClass>,
    /// Pages fetched this run.
    pub pages: u64,
    /// Records refused for an invalid ID this run (not written).
    #[serde(skip_serializing_if = "is_zero")]
    pub invalid_records: u64,
    /// Messages the API returned this run.
    pub fetched: u64,
    /// New messages written this run.
    pub new_messages: u64,
}

/// One history page fetched, as the audit manifest records it.
#[derive(Debug, Clone, Serialize)]
pub struct PageRecord {
    /// `account/user_id`.
    pub conversation: String,
    /// Always `GET /x/dm/{userId}/history`.
    pub endpoint: Endpoint,
    /// The cursor sent (`null` for the newest page).
    pub cursor_in: Option<String>,
    /// The `next_cursor` received.
    pub next_cursor: String,
    /// The `has_next_page` received.
    pub has_next_page: bool,
    /// Messages the page returned.
    pub messages_count: u64,
    /// Of which new.
    pub new_count: u64,
    /// Final HTTP status.
    pub status: u16,
    /// Requests made for it.
    pub attempts: u32,
    /// Time waited between attempts, in milliseconds.
    pub waited_ms: u64,
    /// Why paging stopped after it, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopReason>,
    /// Messages of the page refused for an invalid ID: where they were on
    /// the page and which field (never a body).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<InvalidRecord>,
}

/// A message refused for an invalid ID.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidRecord {
    /// Its position on the page, from 0.
    pub position: u64,
    /// The field at fault (`id`, `senderId`, `receiverId`).
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How far the answer that closed a lane reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneScope {
    /// This account alone.
    Account,
    /// Every account of the run.
    Run,
}

/// An account whose lane an answer closed during the run (SPEC §6
/// "Scheduler"): which answer, and how many requests it dropped unsent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaneClosed {
    /// The account.
    pub account: String,
    /// Whether the answer closed this account alone or the whole run.
    pub scope: LaneScope,
    /// The endpoint that answered.
    pub endpoint: Endpoint,
    /// Its HTTP status.
    pub status: u16,
    /// Its error code (never a body).
    pub code: String,
    /// Requests of the account dropped unsent: those queued in its lane
    /// when it closed, and any asked for after.
    pub dropped: u64,
}

impl LaneClosed {
    /// Every lane the client closed, by account.
    pub(crate) fn all_of(pacer: &crate::api::pace::Pacer) -> Vec<LaneClosed> {
        pacer
            .closures()
            .into_iter()
            .map(|(account, closure)| LaneClosed {
                account,
                scope: if closure.run {
                    LaneScope::Run
                } else {
                    LaneScope::Account
                },
                endpoint: closure.cause.endpoint,
                status: closure.cause.status,
                code: closure.cause.code,
                dropped: closure.dropped,
            })
            .collect()
    }

    /// Says in the log which answer closed the lane and what it dropped.
    pub(crate) fn log(lanes: &[LaneClosed]) {
        for lane in lanes {
            tracing::warn!(
                account = %lane.account,
                scope = serde_plain(lane.scope),
                endpoint = lane.endpoint.as_str(),
                status = lane.status,
                code = %lane.code,
                dropped = lane.dropped,
                "lane closed: queued requests dropped unsent"
            );
        }
    }
}

impl std::fmt::Display for LaneClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {} from {} closed the {}; {} queued requests dropped unsent",
            self.account,
            self.status,
            self.code,
            self.endpoint,
            match self.scope {
                LaneScope::Run => "run",
                LaneScope::Account => "account's lane",
            },
            self.dropped
        )
    }
}

/// The outcome of a sync run.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// This run's ID.
    pub run_id: String,
    /// Output folder.
    pub out: Location,
    /// Per conversation.
    pub conversations: Vec<ConversationReport>,
    /// Pages fetched.
    pub pages: u64,
    /// Messages the API returned.
    pub messages_fetched: u64,
    /// New messages written.
    pub new_messages: u64,
    /// Messages dropped as already written (overlaps, repeats, boundary).
    pub duplicates_dropped: u64,
    /// Messages whose `createdAt` could not be parsed (written as null).
    pub bad_timestamps: u64,
    /// Records refused for an invalid ID (not written; the run is partial).
    pub invalid_records: u64,
    /// Retried requests.
    pub retries: u64,
    /// Credits spent, by endpoint.
    pub credits: BTreeMap<Endpoint, u64>,
    /// Files and segments written (as the manifest lists them).
    pub files: Vec<WrittenFile>,
    /// The run's manifest, relative to the output folder.
    pub manifest: String,
    /// What opening the folder repaired.
    #[serde(skip)]
    pub repair: Repair,
    /// Wall time.
    pub elapsed: Duration,
    /// The error that stopped the whole job, if one did.
    pub stopped_by: Option<String>,
    /// The compaction that followed the run (`--compact`), when a date
    /// had closed since the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactReport>,
    /// Why that compaction failed (the run itself is sealed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_error: Option<String>,
    #[serde(skip)]
    pub(super) compaction_exit: u8,
    /// The retention erasure that followed the run (`--retain-days`), when
    /// it was due (at most once a day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<ErasureReport>,
    /// Why that erasure failed (the run itself is sealed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_error: Option<String>,
    #[serde(skip)]
    pub(super) retention_exit: u8,
    /// Requests answered 429, by account.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limited: BTreeMap<String, u64>,
    /// Accounts whose lane an answer closed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lanes_closed: Vec<LaneClosed>,
    /// Whether the job stop was an error a person must fix.
    #[serde(skip)]
    stop_needs_person: bool,
}

impl SyncReport {
    /// Total credits spent.
    pub fn credits_total(&self) -> u64 {
        self.credits.values().sum()
    }

    /// The exit status (SPEC §2): 0 all done; 3 stopped on an error a
    /// person must fix with nothing else left to do; 4 partial.
    pub fn exit_code(&self) -> u8 {
        match self.fetch_exit_code() {
            // A failed retention or compaction after a complete run says
            // what it needs.
            0 => match self.retention_exit {
                0 => self.compaction_exit,
                code => code,
            },
            code => code,
        }
    }

    fn fetch_exit_code(&self) -> u8 {
        if self.stopped_by.is_some() {
            return if self.stop_needs_person { 3 } else { 4 };
        }
        let unfinished: Vec<_> = self
            .conversations
            .iter()
            .filter(|c| c.status != ConversationStatus::Complete)
            .collect();
        if unfinished.is_empty() {
            return 0;
        }
        let all_failed_for_a_person = unfinished.len() == self.conversations.len()
            && unfinished.iter().all(|c| {
                c.status == ConversationStatus::Failed
                    && matches!(
                        c.class,
                        Some(ErrorClass::NeedsPerson | ErrorClass::NotFound | ErrorClass::Rejected)
                    )
            });
        if all_failed_for_a_person { 3 } else { 4 }
    }

    /// The report of a run whose tasks and writer are done, before it is
    /// sealed: the conversations in order, the run's totals and what
    /// stopped it.
    pub(super) fn of_run(
        run: &Run,
        run_id: String,
        repair: Repair,
        mut reports: Vec<ConversationReport>,
    ) -> SyncReport {
        reports.sort_by(|a, b| (&a.account, &a.user).cmp(&(&b.account, &b.user)));
        let stop_error = run
            .stop_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let credits = run
            .credits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SyncReport {
            run_id,
            out: run.options.out.clone(),
            conversations: reports,
            pages: run.pages.load(Ordering::SeqCst),
            messages_fetched: run.fetched.load(Ordering::SeqCst),
            new_messages: run.new_messages.load(Ordering::SeqCst),
            duplicates_dropped: run.dropped.load(Ordering::SeqCst),
            bad_timestamps: run.bad_timestamps.load(Ordering::SeqCst),
            invalid_records: run.invalid_records.load(Ordering::SeqCst),
            retries: run.retries.load(Ordering::SeqCst),
            credits,
            files: Vec::new(),
            manifest: String::new(),
            repair,
            elapsed: Duration::ZERO,
            stop_needs_person: stop_error.as_ref().is_some_and(|(_, code)| *code == 3),
            stopped_by: stop_error.map(|(text, _)| text),
            compaction: None,
            compaction_error: None,
            compaction_exit: 0,
            retention: None,
            retention_error: None,
            retention_exit: 0,
            rate_limited: run.client.pacer().refusals(),
            lanes_closed: LaneClosed::all_of(run.client.pacer()),
        }
    }
}

/// The manifest content of a sync run: IDs, cursors, statuses, counts and
/// credits — no message body, no key.
pub(super) fn manifest_body(report: &SyncReport, options: &SyncOptions) -> ManifestBody {
    let accounts: std::collections::BTreeSet<&str> =
        options.targets.iter().map(|t| t.account.as_str()).collect();
    let mut counts = serde_json::json!({
        "pages": report.pages,
        "messages_fetched": report.messages_fetched,
        "new_messages": report.new_messages,
        "duplicates_dropped": report.duplicates_dropped,
        "bad_timestamps": report.bad_timestamps,
        "invalid_records": report.invalid_records,
        "retries": report.retries,
    });
    // Only when an answer closed a lane, so that the manifests of runs
    // that went their course keep their shape.
    if !report.lanes_closed.is_empty() {
        counts["lanes_closed"] = serde_json::to_value(&report.lanes_closed).unwrap_or_default();
    }
    let mut recorded = serde_json::json!({
        "base_url": options.api.base_url,
        "accounts": accounts,
        "conversations": options.targets.len(),
        "concurrency": options.concurrency,
        "max_credits": options.max_credits,
        "max_empty_pages": options.max_empty_pages,
    });
    // Only when set, like `lanes_closed`: `report` reads from it whether
    // retention is in force.
    if let Some(days) = options.retain_days {
        recorded["retain_days"] = days.into();
    }
    ManifestBody {
        command: "sync",
        exit_code: report.exit_code(),
        options: recorded,
        conversations: serde_json::to_value(&report.conversations).unwrap_or_default(),
        sends: serde_json::json!([]),
        credits: report.credits.clone(),
        counts,
        signing_key: options.audit_key.clone(),
        ssh_key: options.signing_key.clone(),
    }
}

pub(super) fn serde_plain<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fmt_totals(f)?;
        self.fmt_ends(f)
    }
}

impl SyncReport {
    /// The summary's totals: conversations, messages, credits, files.
    fn fmt_totals(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count =
            |s: ConversationStatus| self.conversations.iter().filter(|c| c.status == s).count();
        writeln!(f, "sync run {} -> {}", self.run_id, self.out)?;
        writeln!(
            f,
            "  conversations  {} ({} complete, {} partial, {} failed)",
            self.conversations.len(),
            count(ConversationStatus::Complete),
            count(ConversationStatus::Partial),
            count(ConversationStatus::Failed)
        )?;
        writeln!(
            f,
            "  messages       {} fetched in {} pages: {} new, {} duplicates dropped",
            self.messages_fetched, self.pages, self.new_messages, self.duplicates_dropped
        )?;
        if self.bad_timestamps > 0 {
            writeln!(
                f,
                "  timestamps     {} unparseable createdAt written as null",
                self.bad_timestamps
            )?;
        }
        if self.invalid_records > 0 {
            writeln!(
                f,
                "  invalid IDs    {} records refused (not 1-20 decimal digits); positions in the manifest's page log",
                self.invalid_records
            )?;
        }
        let by_endpoint: Vec<String> = self
            .credits
            .iter()
            .map(|(e, c)| format!("{e}: {c}"))
            .collect();
        writeln!(
            f,
            "  credits        {} ({})",
            self.credits_total(),
            if by_endpoint.is_empty() {
                "none".to_owned()
            } else {
                by_endpoint.join(", ")
            }
        )?;
        writeln!(f, "  retries        {}", self.retries)?;
        for file in &self.files {
            writeln!(
                f,
                "  wrote          {} ({} rows, {} bytes)",
                file.path, file.rows, file.bytes
            )?;
        }
        writeln!(f, "  audit          {}", self.manifest)?;
        writeln!(f, "  elapsed        {:.2} s", self.elapsed.as_secs_f64())?;
        Ok(())
    }

    /// The summary's end: the conversations not complete, what stopped the
    /// job, and the compaction that followed.
    fn fmt_ends(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self
            .conversations
            .iter()
            .filter(|c| c.status != ConversationStatus::Complete)
        {
            writeln!(
                f,
                "  {:<13}  {}/{}: {}",
                serde_plain(c.status),
                c.account,
                c.user,
                c.error.as_deref().unwrap_or(&c.reason)
            )?;
        }
        if let Some(stop) = &self.stopped_by {
            writeln!(f, "  stopped        {stop}")?;
        }
        for lane in &self.lanes_closed {
            writeln!(f, "  lane closed    {lane}")?;
        }
        if let Some(r) = &self.retention {
            let e = &r.erasure;
            writeln!(
                f,
                "  retention      {} records older than {} days erased ({})",
                e.erased,
                e.retain_days.unwrap_or_default(),
                r.manifest
            )?;
        }
        if let Some(e) = &self.retention_error {
            writeln!(f, "  retention      failed: {e}")?;
        }
        if let Some(c) = &self.compaction {
            writeln!(
                f,
                "  compacted      {} partitions: {} files merged into {} ({})",
                c.partitions.len(),
                c.files_removed,
                c.files_added,
                c.manifest
            )?;
        }
        if let Some(e) = &self.compaction_error {
            writeln!(f, "  compaction     failed: {e}")?;
        }
        Ok(())
    }
}
