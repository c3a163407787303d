//! One conversation's task: the scans a run makes of its history, each a
//! state machine over pages. A scan starts at its cursor; before each
//! request its guards (the job, the account, `--max-pages`, the credit
//! budget) may halt it; each page it fetches is taken — invalid IDs refused,
//! new messages admitted, the page logged, rows built — and the transition
//! moves the scan and the conversation's checkpoint state past it; the rows
//! go to the writer with that state, and the scan ends at the first stop.
//!
//! Per conversation, a run first finishes an interrupted incremental scan,
//! then scans from the newest page down to what is already written (at most
//! one page of known messages), then continues any unfinished backfill.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::report::{
    ConversationReport, ConversationStatus, InvalidRecord, PageRecord, serde_plain,
};
use super::shared::Run;
use super::writer::Event;
use crate::api::client::CallMeta;
use crate::api::pagination::{Next, PageGuard, StopReason};
use crate::api::types::HistoryPage;
use crate::api::{Account, Endpoint};
use crate::checkpoint::{Conversation, PageState, TopScan, conversation_key};
use crate::dedupe::{Admission, admit};
use crate::error::{Error, ErrorClass};
use crate::normalize::normalize;
use crate::records::HistoryBatch;

/// Which scan a conversation runs next.
enum Scan {
    /// Downward from the bottom of what is written (or from the top).
    Backfill,
    /// From the top down to what is written.
    Top,
}

/// Why a conversation stopped before completing.
enum Halt {
    Anomaly(StopReason),
    Budget,
    PageLimit,
    JobStopped,
    AccountStopped {
        code: String,
        class: ErrorClass,
        error: String,
    },
    Failed(Error),
}

/// One conversation's task: what each of its pages needs and does not
/// change.
struct ConversationTask<'a> {
    run: &'a Run,
    account: &'a Account,
    user_id: &'a str,
    /// `account/user_id`, the conversation's key in the checkpoint.
    key: &'a str,
    /// To the writer.
    tx: &'a mpsc::Sender<Event>,
}

/// Pages one conversation until it is complete, stopped or failed.
pub(super) async fn sync_conversation(
    run: &Run,
    account: Account,
    user_id: String,
    mut state: Conversation,
    tx: mpsc::Sender<Event>,
) -> ConversationReport {
    let key = conversation_key(account.as_str(), &user_id);
    let mut report = ConversationReport {
        account: account.to_string(),
        user: user_id.clone(),
        status: ConversationStatus::Complete,
        reason: "end".into(),
        error: None,
        class: None,
        pages: 0,
        fetched: 0,
        new_messages: 0,
        invalid_records: 0,
    };
    let task = ConversationTask {
        run,
        account: &account,
        user_id: &user_id,
        key: &key,
        tx: &tx,
    };
    let outcome = task.scans(&mut state, &mut report).await;
    conclude(&mut report, outcome, &key);
    state.status = Some(serde_plain(report.status));
    state.reason = Some(report.reason.clone());
    let _ = tx
        .send(Event::Done {
            key,
            state: Box::new(state),
        })
        .await;
    report
}

impl ConversationTask<'_> {
    /// Runs the conversation's scans, one after the other, until none is
    /// left or one halts.
    async fn scans(
        &self,
        state: &mut Conversation,
        report: &mut ConversationReport,
    ) -> Result<(), Halt> {
        // A conversation with nothing written starts over from the newest page:
        // an earlier run may have found it empty.
        // Its backfill then starts at the newest page, so no incremental scan
        // is needed in this run.
        let mut top_scan_started = false;
        if state.written.is_none() && state.top_scan.is_none() {
            state.backfill = Default::default();
            top_scan_started = true;
        }
        while let Some(scan) = next_scan(state, &mut top_scan_started) {
            let stop = PageScan::start(self, state, report, scan).run().await?;
            if stop.is_anomaly() {
                return Err(Halt::Anomaly(stop));
            }
            report.reason = serde_plain(stop);
        }
        Ok(())
    }
}

/// The scan to run next, if any: an interrupted incremental scan, else a
/// new one (once a run, when something is written), else an unfinished
/// backfill.
fn next_scan(state: &mut Conversation, top_scan_started: &mut bool) -> Option<Scan> {
    if state.top_scan.is_some() {
        Some(Scan::Top)
    } else if state.written.is_some() && !*top_scan_started {
        *top_scan_started = true;
        state.top_scan = Some(TopScan::default());
        Some(Scan::Top)
    } else if !state.backfill.done {
        Some(Scan::Backfill)
    } else {
        None
    }
}

/// Puts how the conversation ended in its report.
fn conclude(report: &mut ConversationReport, outcome: Result<(), Halt>, key: &str) {
    match outcome {
        Ok(()) if report.invalid_records > 0 => {
            report.status = ConversationStatus::Partial;
            report.reason = "invalid_ids".into();
        }
        Ok(()) => {}
        Err(Halt::Anomaly(reason)) => {
            report.status = ConversationStatus::Partial;
            report.reason = serde_plain(reason);
        }
        Err(Halt::Budget) => {
            report.status = ConversationStatus::Partial;
            report.reason = "max_credits".into();
        }
        Err(Halt::PageLimit) => {
            report.status = ConversationStatus::Partial;
            report.reason = "max_pages".into();
        }
        Err(Halt::JobStopped) => {
            report.status = ConversationStatus::Partial;
            report.reason = "job_stopped".into();
        }
        Err(Halt::AccountStopped { code, class, error }) => {
            report.status = ConversationStatus::Failed;
            report.reason = code;
            report.class = Some(class);
            report.error = Some(format!("not attempted: {error}"));
        }
        Err(Halt::Failed(e)) => {
            report.reason = match &e {
                Error::Api(api) | Error::NotSent { cause: api, .. } => api.code.clone(),
                Error::RetriesExhausted { .. } => "retries_exhausted".into(),
                _ => "error".into(),
            };
            report.class = Some(e.class());
            // Transient failures and job stops (402, ...) leave the
            // conversation for a later run; the rest need a person.
            report.status = if e.class() == ErrorClass::Retryable || e.stops_job() {
                ConversationStatus::Partial
            } else {
                ConversationStatus::Failed
            };
            tracing::warn!(conversation = %key, error = %e, "conversation stopped");
            report.error = Some(e.to_string());
        }
    }
}

/// Accounts for a page that could not be fetched or read, stopping the job
/// or the account when the error says so.
fn failed_page(run: &Run, account: &Account, reserved: u64, e: Error) -> Halt {
    run.settle(Endpoint::History, reserved, 0);
    if let Error::RetriesExhausted { attempts, .. } = &e {
        run.retries
            .fetch_add(u64::from(attempts.saturating_sub(1)), Ordering::Relaxed);
    }
    if e.stops_job() {
        run.stop_job(&e);
    } else if e.stops_account() {
        run.stop_account(account, &e);
    }
    Halt::Failed(e)
}

/// One scan of a conversation, between two pages: which scan it is, the
/// cursor it asks for next, the guard that ends it and the pages it has
/// taken, with the conversation's state and report it moves forward.
struct PageScan<'a> {
    task: &'a ConversationTask<'a>,
    state: &'a mut Conversation,
    report: &'a mut ConversationReport,
    scan: Scan,
    cursor: Option<String>,
    guard: PageGuard,
    /// `--max-pages` bounds each scan of the run on its own, so that the
    /// incremental scan's boundary page never leaves a backfill no page.
    pages: u64,
}

impl<'a> PageScan<'a> {
    /// A scan starting where the conversation's state says it stands.
    fn start(
        task: &'a ConversationTask<'a>,
        state: &'a mut Conversation,
        report: &'a mut ConversationReport,
        scan: Scan,
    ) -> PageScan<'a> {
        let cursor = match scan {
            Scan::Top => state.top_scan.as_ref().and_then(|t| t.cursor.clone()),
            Scan::Backfill => state.backfill.cursor.clone(),
        };
        let guard = PageGuard::new(cursor.as_deref(), task.run.options.max_empty_pages);
        PageScan {
            task,
            state,
            report,
            scan,
            cursor,
            guard,
            pages: 0,
        }
    }

    /// Runs one scan to its end. Returns why it stopped.
    async fn run(mut self) -> Result<StopReason, Halt> {
        let (run, account) = (self.task.run, self.task.account);
        loop {
            let reserve = self.may_fetch()?;
            let reply = run
                .client
                .history_page(account, self.task.user_id, self.cursor.as_deref())
                .await
                .map_err(|e| failed_page(run, account, reserve, e))?;
            let mut page = reply
                .value
                .page()
                .map_err(|e| failed_page(run, account, reserve, e))?;
            let (batch, stop) = self.take(&mut page, &reply.meta, reserve)?;
            self.hand_off(batch).await?;
            if let Some(reason) = stop {
                return Ok(reason);
            }
        }
    }

    /// The guards before each request, in order: the job and the account
    /// still running, `--max-pages` not reached, the page's credits reserved
    /// under `--max-credits`. Returns the credits reserved.
    fn may_fetch(&self) -> Result<u64, Halt> {
        let run = self.task.run;
        if run.stopped() {
            return Err(Halt::JobStopped);
        }
        if let Some((code, class, error)) = run.account_stop(self.task.account) {
            return Err(Halt::AccountStopped { code, class, error });
        }
        let reserve = run.page_reservation();
        if run.options.max_pages.is_some_and(|max| self.pages >= max) {
            // The state already holds the next cursor: the next run
            // continues this scan where it stopped.
            return Err(Halt::PageLimit);
        }
        if !run.reserve(reserve) {
            return Err(Halt::Budget);
        }
        Ok(reserve)
    }

    /// Takes a fetched page: invalid IDs refused, its cost settled, its new
    /// messages admitted, the page logged, its rows built, and the scan
    /// moved past it. Returns the rows, and why the scan ends if it ends
    /// here.
    fn take(
        &mut self,
        page: &mut HistoryPage<'_>,
        meta: &CallMeta,
        reserve: u64,
    ) -> Result<(HistoryBatch, Option<StopReason>), Halt> {
        let count = page.messages.len() as u64;
        let invalid = self.refuse_invalid_ids(page);
        self.task.run.settle_page(reserve, count, meta.attempts);

        let admission = self.admission(page);
        let step = self.step(page, admission.boundary);
        let stop = match &step {
            Next::Stop(reason) => Some(*reason),
            Next::Page(_) => None,
        };
        // The page goes to the page log at once, before its rows are
        // written: a run killed from here on still accounts for it.
        let record = self.record(page, count, &admission, meta, stop, invalid);
        if let Err(e) = self.task.run.page_log.push(&record) {
            self.task.run.stop_job(&e);
            return Err(Halt::JobStopped);
        }

        let batch = self.task.rows(page, &admission.keep);
        let new_count = batch.len() as u64;
        self.advance(step);
        self.state.messages_written += new_count;
        self.state.last_page = Some(PageState {
            messages_count: count,
            next_cursor: page.next_cursor.to_string(),
            has_next_page: page.has_next_page,
            stop,
        });
        self.count(count, new_count, admission.dropped);
        Ok((batch, stop))
    }

    /// Takes the messages whose ID is not an X ID off the page, and counts
    /// them. Returns where they were, for the page log.
    fn refuse_invalid_ids(&mut self, page: &mut HistoryPage<'_>) -> Vec<InvalidRecord> {
        // Messages with an ID that is not an X ID are never written (an
        // empty ID cannot dedupe; a path or 400 digits fail far away, in a
        // warehouse): counted, and placed on the page in the page log.
        let mut invalid = Vec::new();
        let mut position = 0u64;
        page.messages.retain(|m| {
            let bad = crate::normalize::invalid_id_field(m);
            if let Some(field) = bad {
                invalid.push(InvalidRecord {
                    position,
                    field,
                    reason: "not 1-20 decimal digits",
                });
            }
            position += 1;
            bad.is_none()
        });
        if !invalid.is_empty() {
            self.report.invalid_records += invalid.len() as u64;
            self.task
                .run
                .invalid_records
                .fetch_add(invalid.len() as u64, Ordering::Relaxed);
        }
        invalid
    }

    /// Which of the page's messages are new to the scan's block: for an
    /// incremental scan, only those above what was written before.
    fn admission(&mut self, page: &HistoryPage<'_>) -> Admission {
        let ids: Vec<&str> = page.messages.iter().map(|m| &*m.id).collect();
        match self.scan {
            Scan::Backfill => admit(ids, None, &mut self.state.written),
            Scan::Top => {
                let floor = self.state.written.as_ref().map(|b| b.newest.clone());
                let top = self.state.top_scan.get_or_insert_with(TopScan::default);
                admit(ids, floor.as_deref(), &mut top.block)
            }
        }
    }

    /// Where the page leads: the next cursor, or why the scan ends here —
    /// the guard's reason, or for an incremental scan the boundary with
    /// what is written.
    fn step(&mut self, page: &HistoryPage<'_>, boundary: bool) -> Next {
        let next = self.guard.next(
            page.messages.iter().map(|m| &*m.id),
            page.has_next_page,
            &page.next_cursor,
        );
        match self.scan {
            Scan::Top if boundary => Next::Stop(StopReason::Boundary),
            _ => next,
        }
    }

    /// The transition: moves the scan, and the conversation state this
    /// page's rows commit together with, to where the page leads.
    fn advance(&mut self, step: Next) {
        // Every stop ends its scan, anomalies included: their reason is
        // reported (the conversation is partial in this run), and no later
        // run follows the broken cursor again — it would pay for the same
        // page on every run, and a stuck incremental scan would keep newer
        // messages from ever being fetched.
        let state = &mut *self.state;
        match (&self.scan, step) {
            (Scan::Backfill, Next::Page(c)) => {
                state.backfill.cursor = Some(c.clone());
                self.cursor = Some(c);
            }
            (Scan::Backfill, Next::Stop(_)) => {
                state.backfill.done = true;
                state.backfill.cursor = None;
            }
            (Scan::Top, Next::Stop(_)) => {
                if let Some(block) = state.top_scan.take().and_then(|t| t.block) {
                    match &mut state.written {
                        Some(written) => written.newest = block.newest,
                        None => state.written = Some(block),
                    }
                }
            }
            (Scan::Top, Next::Page(c)) => {
                if let Some(top) = state.top_scan.as_mut() {
                    top.cursor = Some(c.clone());
                }
                self.cursor = Some(c);
            }
        }
    }

    /// The page as the run's page log records it.
    fn record(
        &self,
        page: &HistoryPage<'_>,
        count: u64,
        admission: &Admission,
        meta: &CallMeta,
        stop: Option<StopReason>,
        invalid: Vec<InvalidRecord>,
    ) -> PageRecord {
        PageRecord {
            conversation: self.task.key.to_owned(),
            endpoint: Endpoint::History,
            cursor_in: self.cursor.clone(),
            next_cursor: page.next_cursor.to_string(),
            has_next_page: page.has_next_page,
            messages_count: count,
            new_count: admission.keep.iter().filter(|k| **k).count() as u64,
            status: meta.status,
            attempts: meta.attempts,
            waited_ms: meta.waited.as_millis() as u64,
            stop,
            invalid,
        }
    }

    /// Counts the page in the conversation's report and the run's totals.
    fn count(&mut self, count: u64, new_count: u64, dropped: usize) {
        self.report.pages += 1;
        self.pages += 1;
        self.report.fetched += count;
        self.report.new_messages += new_count;
        self.task.run.count_page(count, new_count, dropped);
    }

    /// Hands the page's rows to the writer, with the conversation state
    /// they commit together with.
    async fn hand_off(&self, batch: HistoryBatch) -> Result<(), Halt> {
        let event = Event::Page {
            key: self.task.key.to_owned(),
            batch,
            state: Box::new(self.state.clone()),
        };
        if self.task.tx.send(event).await.is_err() {
            // The writer is gone (it failed and said why).
            return Err(Halt::JobStopped);
        }
        Ok(())
    }
}

impl ConversationTask<'_> {
    /// The rows of the page's new messages (`keep`), in a batch from the
    /// run's spares.
    fn rows(&self, page: &HistoryPage<'_>, keep: &[bool]) -> HistoryBatch {
        // Sized once: a row's strings are its text and about 64 bytes more.
        let bytes: usize = page
            .messages
            .iter()
            .map(|m| {
                64 + m.text.as_ref().map_or(0, |t| t.len())
                    + m.media_url.as_ref().map_or(0, |u| u.len())
            })
            .sum();
        let mut batch = self.run.batch(page.messages.len(), bytes);
        for (msg, keep) in page.messages.iter().zip(keep) {
            if !keep {
                continue;
            }
            let n = normalize(msg, self.account.as_str(), self.user_id);
            if n.bad_created_at {
                self.run.bad_timestamps.fetch_add(1, Ordering::Relaxed);
            }
            batch.push(&n.row);
        }
        batch
    }
}
