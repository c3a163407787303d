//! `xquik-dm sync`: page the DM history of many conversations into the
//! store, deduplicated, resumable and crash-safe.
//!
//! Shape of a run: validate and lock the output folder (before any request),
//! resolve usernames once (remembered in the checkpoint), then one task per
//! conversation pages the history and sends each page's new rows to a
//! single writer thread, which owns the store and commits every second or
//! so. Each account runs as many conversations at a time as it takes to
//! keep its requests at the account's pace (the rate limit) at the latency
//! its answers come back with, up to `--concurrency`. A conversation's state in the checkpoint
//! always travels with the rows it covers, so a crash at any instant resumes
//! exactly where the committed data ends.
//!
//! Per conversation, a run first finishes an interrupted incremental scan,
//! then scans from the newest page down to what is already written (at most
//! one page of known messages), then continues any unfinished backfill.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::client::{Client, ClientConfig};
use crate::api::pagination::{Next, PageGuard, StopReason};
use crate::api::{Account, Endpoint, UserRef};
use crate::audit::AuditKey;
use crate::checkpoint::{Conversation, PageState, Recipient, TopScan, conversation_key};
use crate::dedupe::admit;
use crate::error::{Error, ErrorClass, Result};
use crate::normalize::normalize;
use crate::records::HistoryBatch;
use crate::shard::Shard;
use crate::sinks::WrittenFile;
use crate::storage::Location;
use crate::store::{ManifestBody, PageLog, Repair, RunStamp, Store};

/// Most conversations of one account paged at the same time, unless
/// `--concurrency` says otherwise: at 300 reads/s and 300 ms per answer,
/// about 90 are needed to keep the pace, twice that to keep it steady.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Most conversations paged at the same time in all.
const MAX_TASKS: usize = 1024;

/// One conversation to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The connected account reading it.
    pub account: Account,
    /// The other participant.
    pub user: UserRef,
}

/// Validated options of a sync run.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// How to reach the API.
    pub api: ClientConfig,
    /// Output folder.
    pub out: Location,
    /// Only this shard of the job's conversations, in `<out>/shard=K/`.
    pub shard: Option<Shard>,
    /// Pages fetched per scan of a conversation in one run at most (an
    /// incremental scan and a backfill each); the rest is left for the next
    /// run.
    pub max_pages: Option<u64>,
    /// Conversations.
    pub targets: Vec<Target>,
    /// Most conversations paged at the same time per account.
    pub concurrency: usize,
    /// Stop before the run spends more credits than this.
    pub max_credits: Option<u64>,
    /// Consecutive empty pages that end a scan.
    pub max_empty_pages: u32,
    /// Longest time between commits.
    pub commit_interval: Duration,
    /// Print progress lines while running.
    pub progress: bool,
    /// Key for signing the run's manifest.
    pub audit_key: Option<AuditKey>,
    /// Compact the partitions of dates that closed since the last
    /// compaction, after the run (`--compact`).
    pub compact: bool,
    /// The run's ID and start time; `None` for now. The longevity bench
    /// sets it to simulate a job running every five minutes for days.
    pub stamp: Option<RunStamp>,
}

impl SyncOptions {
    /// Options with the defaults for everything but the essentials.
    pub fn new(api: ClientConfig, out: impl Into<Location>, targets: Vec<Target>) -> SyncOptions {
        SyncOptions {
            api,
            out: out.into(),
            shard: None,
            max_pages: None,
            targets,
            concurrency: DEFAULT_CONCURRENCY,
            max_credits: None,
            max_empty_pages: 5,
            commit_interval: Duration::from_secs(1),
            progress: false,
            compact: false,
            stamp: None,
            audit_key: None,
        }
    }
}

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
    pub compaction: Option<super::compact::CompactReport>,
    /// Why that compaction failed (the run itself is sealed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_error: Option<String>,
    #[serde(skip)]
    compaction_exit: u8,
    /// Requests answered 429, by account.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limited: BTreeMap<String, u64>,
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
            // A failed compaction after a complete run says what it needs.
            0 => self.compaction_exit,
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
}

/// What a conversation task sends to the writer.
enum Event {
    /// A page's new rows and the conversation state after it.
    Page {
        key: String,
        batch: HistoryBatch,
        state: Box<Conversation>,
    },
    /// The final state of a conversation (status and reason).
    Done {
        key: String,
        state: Box<Conversation>,
    },
}

/// State shared by the tasks of one run.
struct Run {
    client: Client,
    /// The run's page log (written by the tasks, sealed by the store).
    page_log: PageLog,
    options: SyncOptions,
    /// Set when the whole job must stop (402, 401, disk full, ...).
    stop: AtomicBool,
    /// The job-stopping error, rendered, and its exit status.
    stop_error: Mutex<Option<(String, u8)>>,
    /// Credits spent plus credits reserved by requests in flight.
    credits_committed: AtomicU64,
    /// Largest page seen (0 before the first): the reservation for the next
    /// page request, since a page's cost is only known once it is served.
    page_estimate: AtomicU64,
    /// Batches the writer is done with, for the tasks to fill again: a page
    /// buffer is then allocated once per run rather than once per page.
    spare_batches: Mutex<Vec<HistoryBatch>>,
    credits: Mutex<BTreeMap<Endpoint, u64>>,
    retries: AtomicU64,
    pages: AtomicU64,
    fetched: AtomicU64,
    new_messages: AtomicU64,
    dropped: AtomicU64,
    bad_timestamps: AtomicU64,
    invalid_records: AtomicU64,
    /// Accounts stopped by an account-level error (not connected, needs
    /// reauthentication, restricted, daily limit): code, class, rendering.
    stopped_accounts: Mutex<HashMap<String, (String, ErrorClass, String)>>,
    /// Conversations finished (any outcome) and in all.
    done: AtomicU64,
    total: AtomicU64,
}

impl Run {
    /// An empty batch with room for `rows` rows of `bytes` bytes of text.
    fn batch(&self, rows: usize, bytes: usize) -> HistoryBatch {
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
    fn spare_batch(&self, mut batch: HistoryBatch) {
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

    fn stop_job(&self, error: &Error) {
        let mut slot = self.stop_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(error = %error, "stopping the job");
            *slot = Some((error.to_string(), error.exit_code()));
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Stops every conversation of `account` (the others go on).
    fn stop_account(&self, account: &Account, error: &Error) {
        let code = match error {
            Error::Api(api) => api.code.clone(),
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
    fn account_stop(&self, account: &Account) -> Option<(String, ErrorClass, String)> {
        let stopped = self
            .stopped_accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        stopped.get(account.as_str()).cloned()
    }

    /// Reserves `amount` credits under `--max-credits`; false when the
    /// reservation would exceed it.
    fn reserve(&self, amount: u64) -> bool {
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
    fn settle(&self, endpoint: Endpoint, reserved: u64, spent: u64) {
        self.credits_committed.fetch_add(spent, Ordering::SeqCst);
        self.credits_committed.fetch_sub(reserved, Ordering::SeqCst);
        if spent > 0 {
            let mut credits = self.credits.lock().unwrap_or_else(|p| p.into_inner());
            *credits.entry(endpoint).or_default() += spent;
        }
    }
}

/// Runs a sync.
pub async fn run(options: SyncOptions) -> Result<SyncReport> {
    if options.targets.is_empty() {
        return Err(Error::invalid("--user", "name at least one conversation"));
    }
    let started = Instant::now();
    let stamp = options.stamp.clone().unwrap_or_else(RunStamp::now);
    let client = Client::new(options.api.clone())?;

    // The folder is opened, locked and repaired before any request: an
    // unusable folder costs no credit.
    let (options, storage) = shard_of(options)?;
    let mut store = Store::open_async(&storage, &stamp).await?;
    let run_id = store.run_id().to_owned();
    let repair = store.repair().clone();
    if repair != Repair::default() {
        tracing::warn!(
            jsonl_bytes_cut = repair.jsonl_bytes_cut,
            parquet_removed = repair.parquet_removed.len(),
            parquet_rebuilt_rows = repair.parquet_rebuilt_rows,
            "repaired what an interrupted run left"
        );
    }

    let run = Arc::new(Run {
        client,
        page_log: store.page_log(),
        options: options.clone(),
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
    });

    let (resolved, mut reports) = resolve_targets(&run, &mut store).await;

    let (tx, rx) = mpsc::channel::<Event>(64);
    let writer_run = run.clone();
    let writer = std::thread::Builder::new()
        .name("xquik-dm-writer".into())
        .spawn(move || writer_loop(store, rx, &writer_run))
        .map_err(|e| Error::io("<writer thread>", e))?;

    run.total
        .store((resolved.len() + reports.len()) as u64, Ordering::SeqCst);
    run.done.store(reports.len() as u64, Ordering::SeqCst);
    let progress = options
        .progress
        .then(|| spawn_progress(run.clone(), started));
    // Each account runs as many conversations as its pace needs at the
    // latency seen so far (re-read as answers come in), up to the cap; a
    // task exists only while its conversation runs, so memory does not grow
    // with the number of conversations waiting.
    let cap = options.concurrency.max(1);
    let mut waiting: BTreeMap<String, std::collections::VecDeque<(Account, String, Conversation)>> =
        BTreeMap::new();
    for item in resolved {
        waiting
            .entry(item.0.as_str().to_owned())
            .or_default()
            .push_back(item);
    }
    let mut running: HashMap<String, usize> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        for (account, queue) in waiting.iter_mut() {
            let busy = running.entry(account.clone()).or_default();
            let mut target = run.client.pacer().in_flight(account, cap);
            // The last conversations start together: a history is paged one
            // page after another, so ones started late would finish late,
            // with the lane idle meanwhile.
            if queue.len() + *busy <= 2 * target {
                target = cap;
            }
            while *busy < target && tasks.len() < MAX_TASKS {
                let Some((account, user_id, state)) = queue.pop_front() else {
                    break;
                };
                *busy += 1;
                let (run, tx) = (run.clone(), tx.clone());
                tasks.spawn(
                    async move { sync_conversation(&run, account, user_id, state, tx).await },
                );
            }
        }
        waiting.retain(|_, queue| !queue.is_empty());
        if tasks.is_empty() && waiting.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            // The pace may allow more now (latency learned, a 429 past).
            _ = tick.tick(), if !waiting.is_empty() => continue,
        };
        let Some(joined) = joined else {
            continue;
        };
        match joined {
            Ok(report) => {
                if let Some(busy) = running.get_mut(report.account.as_str()) {
                    *busy = busy.saturating_sub(1);
                }
                reports.push(report);
            }
            Err(e) => run.stop_job(&Error::io("<conversation task>", std::io::Error::other(e))),
        }
        run.done.fetch_add(1, Ordering::Relaxed);
    }
    drop(tx);
    if let Some((task, bar)) = progress {
        task.abort();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
    let writer_result = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| Error::io("<writer thread>", std::io::Error::other(e)))?
        .map_err(|_| Error::io("<writer thread>", std::io::Error::other("writer panicked")))?;
    let store = writer_result?;

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
    let mut report = SyncReport {
        run_id,
        out: options.out.clone(),
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
        rate_limited: run.client.pacer().refusals(),
    };
    let body = manifest_body(&report, &options);
    let sealed = store.seal_async(body).await?;
    report.files = sealed.files;
    report.manifest = sealed.chain.manifest;
    if options.compact {
        // A run of its own, after this one is sealed and has let go of
        // the output.
        let compacted = tokio::task::spawn_blocking(move || super::compact::auto(&storage))
            .await
            .map_err(|e| Error::io("<compact>", std::io::Error::other(e)))?;
        match compacted {
            Ok(compaction) => report.compaction = compaction,
            Err(e) => {
                tracing::error!(error = %e, "compaction after the run failed; the run is sealed");
                report.compaction_exit = e.exit_code();
                report.compaction_error = Some(e.to_string());
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The options and output root of this run: for a shard, only its
/// conversations, in its own root under the prefix (registered there first,
/// so that a prefix is never split two ways).
fn shard_of(mut options: SyncOptions) -> Result<(SyncOptions, crate::storage::Storage)> {
    let Some(shard) = options.shard else {
        let storage = options.out.open()?;
        return Ok((options, storage));
    };
    let root = options.out.open()?;
    root.prepare()?;
    shard.register(root.as_ref())?;
    options
        .targets
        .retain(|t| shard.contains(&t.account, &t.user));
    options.out = options.out.join(&shard.dir());
    let storage = options.out.open()?;
    Ok((options, storage))
}

/// The manifest content of a sync run: IDs, cursors, statuses, counts and
/// credits — no message body, no key.
fn manifest_body(report: &SyncReport, options: &SyncOptions) -> ManifestBody {
    let accounts: std::collections::BTreeSet<&str> =
        options.targets.iter().map(|t| t.account.as_str()).collect();
    ManifestBody {
        command: "sync",
        exit_code: report.exit_code(),
        options: serde_json::json!({
            "base_url": options.api.base_url,
            "accounts": accounts,
            "conversations": options.targets.len(),
            "concurrency": options.concurrency,
            "max_credits": options.max_credits,
            "max_empty_pages": options.max_empty_pages,
        }),
        conversations: serde_json::to_value(&report.conversations).unwrap_or_default(),
        sends: serde_json::json!([]),
        credits: report.credits.clone(),
        counts: serde_json::json!({
            "pages": report.pages,
            "messages_fetched": report.messages_fetched,
            "new_messages": report.new_messages,
            "duplicates_dropped": report.duplicates_dropped,
            "bad_timestamps": report.bad_timestamps,
            "invalid_records": report.invalid_records,
            "retries": report.retries,
        }),
        signing_key: options.audit_key.clone(),
    }
}

/// Resolves usernames to IDs (once: remembered in the checkpoint) and loads
/// each conversation's state. Targets that cannot be resolved are reported
/// as failed; the others go on.
async fn resolve_targets(
    run: &Run,
    store: &mut Store,
) -> (
    Vec<(Account, String, Conversation)>,
    Vec<ConversationReport>,
) {
    let mut resolved: Vec<(Account, String, Conversation)> = Vec::new();
    let mut failed = Vec::new();
    for target in &run.options.targets {
        let user_id = match &target.user {
            UserRef::Id(id) => id.clone(),
            UserRef::Username(name) => {
                let key = name.to_lowercase();
                if let Some(r) = store.checkpoint().recipients.get(&key) {
                    r.id.clone()
                } else if run.stopped() || !run.reserve(1) {
                    failed.push(unresolved(target, "not_started", None));
                    continue;
                } else {
                    let result = run.client.user(&target.user, Some(&target.account)).await;
                    run.settle(Endpoint::User, 1, u64::from(result.is_ok()));
                    let logged =
                        store.log_request(Endpoint::User, &target.user.to_string(), &result);
                    if let Err(e) = logged {
                        run.stop_job(&e);
                    }
                    match result {
                        Ok(reply) if !crate::normalize::is_valid_id(&reply.value.id) => {
                            let e = Error::Decode {
                                endpoint: Endpoint::User,
                                reason: "the profile's id is not 1-20 decimal digits".into(),
                            };
                            failed.push(unresolved(target, "lookup_failed", Some(e)));
                            continue;
                        }
                        Ok(reply) => {
                            let profile = reply.value;
                            store.checkpoint_mut().recipients.insert(
                                key,
                                Recipient {
                                    id: profile.id.clone(),
                                    username: profile.username,
                                    can_dm: profile.can_dm,
                                },
                            );
                            profile.id
                        }
                        Err(e) => {
                            if e.stops_job() {
                                run.stop_job(&e);
                            }
                            failed.push(unresolved(target, "lookup_failed", Some(e)));
                            continue;
                        }
                    }
                }
            }
        };
        if resolved
            .iter()
            .any(|(a, u, _)| a == &target.account && u == &user_id)
        {
            continue; // the same conversation named twice
        }
        let key = conversation_key(target.account.as_str(), &user_id);
        let state = store
            .checkpoint()
            .conversations
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Conversation {
                account: target.account.as_str().to_owned(),
                user_id: user_id.clone(),
                ..Conversation::default()
            });
        resolved.push((target.account.clone(), user_id, state));
    }
    (resolved, failed)
}

fn unresolved(target: &Target, reason: &str, error: Option<Error>) -> ConversationReport {
    ConversationReport {
        account: target.account.to_string(),
        user: target.user.to_string(),
        status: match &error {
            Some(e) if e.class() != ErrorClass::Retryable && !e.stops_job() => {
                ConversationStatus::Failed
            }
            _ => ConversationStatus::Partial,
        },
        reason: match &error {
            Some(Error::Api(api)) => api.code.clone(),
            _ => reason.to_owned(),
        },
        class: error.as_ref().map(Error::class),
        error: error.map(|e| e.to_string()),
        pages: 0,
        invalid_records: 0,
        fetched: 0,
        new_messages: 0,
    }
}

/// Which scan a conversation runs next.
enum Scan {
    /// Downward from the bottom of what is written (or from the top).
    Backfill,
    /// From the top down to what is written.
    Top,
}

/// Pages one conversation until it is complete, stopped or failed.
async fn sync_conversation(
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
    // A conversation with nothing written starts over from the newest page:
    // an earlier run may have found it empty.
    // Its backfill then starts at the newest page, so no incremental scan
    // is needed in this run.
    let mut top_scan_started = false;
    if state.written.is_none() && state.top_scan.is_none() {
        state.backfill = Default::default();
        top_scan_started = true;
    }
    let outcome: std::result::Result<(), Halt> = async {
        loop {
            let scan = if state.top_scan.is_some() {
                Scan::Top
            } else if state.written.is_some() && !top_scan_started {
                top_scan_started = true;
                state.top_scan = Some(TopScan::default());
                Scan::Top
            } else if !state.backfill.done {
                Scan::Backfill
            } else {
                return Ok(());
            };
            let stop = page_scan(
                run,
                &account,
                &user_id,
                &key,
                &mut state,
                scan,
                &tx,
                &mut report,
            )
            .await?;
            if stop.is_anomaly() {
                return Err(Halt::Anomaly(stop));
            }
            report.reason = serde_plain(stop);
        }
    }
    .await;
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
                Error::Api(api) => api.code.clone(),
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

/// Credits reserved for a page before any page size is known: the API's
/// usual page size.
const FIRST_PAGE_ESTIMATE: u64 = 100;

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

fn serde_plain<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
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

/// Runs one scan to its end. Returns why it stopped.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces are the scan's context"
)]
async fn page_scan(
    run: &Run,
    account: &Account,
    user_id: &str,
    key: &str,
    state: &mut Conversation,
    scan: Scan,
    tx: &mpsc::Sender<Event>,
    report: &mut ConversationReport,
) -> std::result::Result<StopReason, Halt> {
    let mut cursor = match scan {
        Scan::Top => state.top_scan.as_ref().and_then(|t| t.cursor.clone()),
        Scan::Backfill => state.backfill.cursor.clone(),
    };
    let mut guard = PageGuard::new(cursor.as_deref(), run.options.max_empty_pages);
    // `--max-pages` bounds each scan of the run on its own, so that the
    // incremental scan's boundary page never leaves a backfill no page.
    let mut scan_pages = 0u64;
    loop {
        if run.stopped() {
            return Err(Halt::JobStopped);
        }
        if let Some((code, class, error)) = run.account_stop(account) {
            return Err(Halt::AccountStopped { code, class, error });
        }
        let reserve = match run.page_estimate.load(Ordering::SeqCst) {
            0 => FIRST_PAGE_ESTIMATE,
            seen => seen,
        };
        if run.options.max_pages.is_some_and(|max| scan_pages >= max) {
            // The state already holds the next cursor: the next run
            // continues this scan where it stopped.
            return Err(Halt::PageLimit);
        }
        if !run.reserve(reserve) {
            return Err(Halt::Budget);
        }
        let reply = match run
            .client
            .history_page(account, user_id, cursor.as_deref())
            .await
        {
            Ok(reply) => reply,
            Err(e) => return Err(failed_page(run, account, reserve, e)),
        };
        let mut page = match reply.value.page() {
            Ok(page) => page,
            Err(e) => return Err(failed_page(run, account, reserve, e)),
        };
        let count = page.messages.len() as u64;
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
            report.invalid_records += invalid.len() as u64;
            run.invalid_records
                .fetch_add(invalid.len() as u64, Ordering::Relaxed);
        }
        run.settle(Endpoint::History, reserve, count);
        run.page_estimate.fetch_max(count, Ordering::SeqCst);
        run.retries
            .fetch_add(u64::from(reply.meta.attempts - 1), Ordering::Relaxed);

        let ids: Vec<&str> = page.messages.iter().map(|m| &*m.id).collect();
        let admission = match scan {
            Scan::Backfill => admit(ids, None, &mut state.written),
            Scan::Top => {
                let floor = state.written.as_ref().map(|b| b.newest.clone());
                let top = state.top_scan.get_or_insert_with(TopScan::default);
                admit(ids, floor.as_deref(), &mut top.block)
            }
        };
        let next = guard.next(
            page.messages.iter().map(|m| &*m.id),
            page.has_next_page,
            &page.next_cursor,
        );
        let stop = match (&scan, &next) {
            (Scan::Top, _) if admission.boundary => Some(StopReason::Boundary),
            (_, Next::Stop(reason)) => Some(*reason),
            (_, Next::Page(_)) => None,
        };

        // The page goes to the page log at once, before its rows are
        // written: a run killed from here on still accounts for it.
        let record = PageRecord {
            conversation: key.to_owned(),
            endpoint: Endpoint::History,
            cursor_in: cursor.clone(),
            next_cursor: page.next_cursor.to_string(),
            has_next_page: page.has_next_page,
            messages_count: count,
            new_count: admission.keep.iter().filter(|k| **k).count() as u64,
            status: reply.meta.status,
            attempts: reply.meta.attempts,
            waited_ms: reply.meta.waited.as_millis() as u64,
            stop,
            invalid,
        };
        if let Err(e) = run.page_log.push(&record) {
            run.stop_job(&e);
            return Err(Halt::JobStopped);
        }

        // Sized once: a row's strings are its text and about 64 bytes more.
        let bytes: usize = page
            .messages
            .iter()
            .map(|m| {
                64 + m.text.as_ref().map_or(0, |t| t.len())
                    + m.media_url.as_ref().map_or(0, |u| u.len())
            })
            .sum();
        let mut batch = run.batch(page.messages.len(), bytes);
        for (msg, keep) in page.messages.iter().zip(&admission.keep) {
            if !keep {
                continue;
            }
            let n = normalize(msg, account.as_str(), user_id);
            if n.bad_created_at {
                run.bad_timestamps.fetch_add(1, Ordering::Relaxed);
            }
            batch.push(&n.row);
        }
        let new_count = batch.len() as u64;

        // Advance the state this page's rows commit together with. Every
        // stop ends its scan, anomalies included: their reason is reported
        // (the conversation is partial in this run), and no later run
        // follows the broken cursor again — it would pay for the same page
        // on every run, and a stuck incremental scan would keep newer
        // messages from ever being fetched.
        match (&scan, stop, &next) {
            (Scan::Backfill, None, Next::Page(c)) => state.backfill.cursor = Some(c.clone()),
            (Scan::Backfill, Some(_), _) => {
                state.backfill.done = true;
                state.backfill.cursor = None;
            }
            (Scan::Top, Some(_), _) => {
                if let Some(block) = state.top_scan.take().and_then(|t| t.block) {
                    match &mut state.written {
                        Some(written) => written.newest = block.newest,
                        None => state.written = Some(block),
                    }
                }
            }
            (Scan::Top, None, Next::Page(c)) => {
                if let Some(top) = state.top_scan.as_mut() {
                    top.cursor = Some(c.clone());
                }
            }
            (_, None, Next::Stop(_)) => {}
        }
        state.messages_written += new_count;
        state.last_page = Some(PageState {
            messages_count: count,
            next_cursor: page.next_cursor.to_string(),
            has_next_page: page.has_next_page,
            stop,
        });

        report.pages += 1;
        scan_pages += 1;
        report.fetched += count;
        report.new_messages += new_count;
        run.pages.fetch_add(1, Ordering::Relaxed);
        run.fetched.fetch_add(count, Ordering::Relaxed);
        run.new_messages.fetch_add(new_count, Ordering::Relaxed);
        run.dropped
            .fetch_add(admission.dropped as u64, Ordering::Relaxed);

        let event = Event::Page {
            key: key.to_owned(),
            batch,
            state: Box::new(state.clone()),
        };
        if tx.send(event).await.is_err() {
            // The writer is gone (it failed and said why).
            return Err(Halt::JobStopped);
        }
        match stop {
            None => {
                if let Next::Page(c) = next {
                    cursor = Some(c);
                }
            }
            Some(reason) => return Ok(reason),
        }
    }
}

/// The writer thread: owns the store, appends every page, commits at most
/// every `commit_interval` (and whenever 16 MiB are pending), and hands the
/// store back, committed, when the tasks are done.
fn writer_loop(mut store: Store, mut rx: mpsc::Receiver<Event>, run: &Run) -> Result<Store> {
    const COMMIT_BYTES: u64 = 16 << 20;
    let mut last_commit = Instant::now();
    let result = (|| {
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Page { key, batch, state } => {
                    store.append_history(&batch)?;
                    run.spare_batch(batch);
                    store.set_conversation(key, *state);
                }
                Event::Done { key, state } => store.set_conversation(key, *state),
            }
            if store.uncommitted_bytes() >= COMMIT_BYTES
                || last_commit.elapsed() >= run.options.commit_interval
            {
                store.commit()?;
                last_commit = Instant::now();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Stop the tasks; what was committed stays committed.
        run.stop_job(&e);
        rx.close();
        return Err(e);
    }
    store.commit()?;
    Ok(store)
}

/// Progress while a run goes on: a live line on a terminal, a log line every
/// few seconds otherwise (what a scheduler's log keeps). Counts only.
fn spawn_progress(
    run: Arc<Run>,
    started: Instant,
) -> (tokio::task::JoinHandle<()>, Option<indicatif::ProgressBar>) {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar
    });
    let line = bar.clone();
    let task = tokio::spawn(async move {
        let period = if line.is_some() { 200 } else { 5_000 };
        let mut tick = tokio::time::interval(Duration::from_millis(period));
        tick.tick().await;
        loop {
            tick.tick().await;
            let fetched = run.fetched.load(Ordering::Relaxed);
            let rate = (fetched as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
            let (done, total) = (
                run.done.load(Ordering::Relaxed),
                run.total.load(Ordering::Relaxed),
            );
            let new = run.new_messages.load(Ordering::Relaxed);
            let retries = run.retries.load(Ordering::Relaxed);
            match &line {
                Some(bar) => bar.set_message(format!(
                    "{done}/{total} conversations · {fetched} messages ({new} new) · {rate}/s · {retries} retries"
                )),
                None => tracing::info!(
                    conversations_done = done,
                    conversations = total,
                    pages = run.pages.load(Ordering::Relaxed),
                    messages = fetched,
                    new,
                    rate_per_s = rate,
                    retries,
                    "syncing"
                ),
            }
        }
    });
    (task, bar)
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
