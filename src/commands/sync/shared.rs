//! The state the tasks of one sync run share: the client and page log,
//! the job and account stops, the credit budget, the spare page buffers
//! and the run's counters. Every method takes `&self`: the tasks hold it in
//! an `Arc` and run at the same time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::options::SyncOptions;
use crate::api::client::Client;
use crate::api::{Account, Endpoint};
use crate::error::{Error, ErrorClass};
use crate::records::HistoryBatch;
use crate::store::PageLog;

/// Credits reserved for a page before any page size is known: the API's
/// usual page size.
const FIRST_PAGE_ESTIMATE: u64 = 100;

/// State shared by the tasks of one run.
pub(super) struct Run {
    pub(super) client: Client,
    /// The run's page log (written by the tasks, sealed by the store).
    pub(super) page_log: PageLog,
    pub(super) options: SyncOptions,
    /// Set when the whole job must stop (402, 401, disk full, ...).
    stop: AtomicBool,
    /// The job-stopping error, rendered, and its exit status.
    pub(super) stop_error: Mutex<Option<(String, u8)>>,
    /// Credits spent plus credits reserved by requests in flight.
    credits_committed: AtomicU64,
    /// Largest page seen (0 before the first): the reservation for the next
    /// page request, since a page's cost is only known once it is served.
    page_estimate: AtomicU64,
    /// Batches the writer is done with, for the tasks to fill again: a page
    /// buffer is then allocated once per run rather than once per page.
    spare_batches: Mutex<Vec<HistoryBatch>>,
    pub(super) credits: Mutex<BTreeMap<Endpoint, u64>>,
    pub(super) retries: AtomicU64,
    pub(super) pages: AtomicU64,
    pub(super) fetched: AtomicU64,
    pub(super) new_messages: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) bad_timestamps: AtomicU64,
    pub(super) invalid_records: AtomicU64,
    /// Accounts stopped by an account-level error (not connected, needs
    /// reauthentication, restricted, daily limit): code, class, rendering.
    stopped_accounts: Mutex<HashMap<String, (String, ErrorClass, String)>>,
    /// Conversations finished (any outcome) and in all.
    pub(super) done: AtomicU64,
    pub(super) total: AtomicU64,
}

impl Run {
    /// The shared state of a run that has not begun.
    pub(super) fn new(client: Client, page_log: PageLog, options: SyncOptions) -> Run {
        Run {
            client,
            page_log,
            options,
            stop: AtomicBool::new(false),
            stop_error: Mutex::new(None),
            credits_committed: AtomicU64::new(0),
            page_estimate: AtomicU64::new(0),
            spare_batches: Mutex::new(Vec::new()),
            credits: Mutex::new(BTreeMap::new()),
            retries: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            new_messages: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            bad_timestamps: AtomicU64::new(0),
            invalid_records: AtomicU64::new(0),
            stopped_accounts: Mutex::new(HashMap::new()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// An empty batch with room for `rows` rows of `bytes` bytes of text.
    pub(super) fn batch(&self, rows: usize, bytes: usize) -> HistoryBatch {
        let spare = self
            .spare_batches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match spare {
            Some(mut batch) => {
                batch.reserve(rows, bytes);
                batch
            }
            None => HistoryBatch::with_capacity(rows, bytes),
        }
    }

    /// Takes back a batch the writer is done with.
    pub(super) fn spare_batch(&self, mut batch: HistoryBatch) {
        // As many as can be in flight at once, and none grown by an
        // unusually large page: more would only hold memory.
        const SPARE: usize = 128;
        const SPARE_BYTES: usize = 1 << 20;
        if batch.capacity() > SPARE_BYTES {
            return;
        }
        let mut spare = self.spare_batches.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE {
            batch.clear();
            spare.push(batch);
        }
    }

    /// Stops the whole job; the first error to do so is the one reported.
    pub(super) fn stop_job(&self, error: &Error) {
        let mut slot = self.stop_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(error = %error, "stopping the job");
            *slot = Some((error.to_string(), error.exit_code()));
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the whole job is stopped.
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Stops every conversation of `account` (the others go on).
    pub(super) fn stop_account(&self, account: &Account, error: &Error) {
        let code = match error {
            Error::Api(api) | Error::NotSent { cause: api, .. } => api.code.clone(),
            Error::RetriesExhausted { last, .. } => match last.as_ref() {
                Error::Api(api) => api.code.clone(),
                _ => "error".into(),
            },
            _ => "error".into(),
        };
        let mut stopped = self
            .stopped_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stopped
            .entry(account.as_str().to_owned())
            .or_insert_with(|| (code, error.class(), error.to_string()));
    }

    /// Why `account` was stopped, if it was.
    pub(super) fn account_stop(&self, account: &Account) -> Option<(String, ErrorClass, String)> {
        let stopped = self
            .stopped_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stopped.get(account.as_str()).cloned()
    }

    /// Reserves `amount` credits under `--max-credits`; false when the
    /// reservation would exceed it.
    pub(super) fn reserve(&self, amount: u64) -> bool {
        let Some(limit) = self.options.max_credits else {
            self.credits_committed.fetch_add(amount, Ordering::SeqCst);
            return true;
        };
        self.credits_committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |spent| {
                (spent + amount <= limit).then_some(spent + amount)
            })
            .is_ok()
    }

    /// Settles a reservation: `reserved` is released, `spent` charged.
    pub(super) fn settle(&self, endpoint: Endpoint, reserved: u64, spent: u64) {
        self.credits_committed.fetch_add(spent, Ordering::SeqCst);
        self.credits_committed.fetch_sub(reserved, Ordering::SeqCst);
        if spent > 0 {
            let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
            *credits.entry(endpoint).or_default() += spent;
        }
    }

    /// The credits to reserve for the next page request: the largest page
    /// seen, or the usual page size before the first.
    pub(super) fn page_reservation(&self) -> u64 {
        match self.page_estimate.load(Ordering::SeqCst) {
            0 => FIRST_PAGE_ESTIMATE,
            seen => seen,
        }
    }

    /// Settles a served page of `count` messages: its reservation, the
    /// estimate for the next page, and the retries it took.
    pub(super) fn settle_page(&self, reserved: u64, count: u64, attempts: u32) {
        self.settle(Endpoint::History, reserved, count);
        self.page_estimate.fetch_max(count, Ordering::SeqCst);
        self.retries
            .fetch_add(u64::from(attempts - 1), Ordering::Relaxed);
    }

    /// Counts a page in the run's totals.
    pub(super) fn count_page(&self, count: u64, new_count: u64, dropped: usize) {
        self.pages.fetch_add(1, Ordering::Relaxed);
        self.fetched.fetch_add(count, Ordering::Relaxed);
        self.new_messages.fetch_add(new_count, Ordering::Relaxed);
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
    }
}
