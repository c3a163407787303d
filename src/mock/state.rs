//! The mutable world of a running mock: conversations, the ledger, rate
//! limit windows, the fault dice, idempotency keys and write actions.
//!
//! All of it sits behind one `std::sync::Mutex` that request handlers take
//! for a few map operations and release before any message is generated or
//! serialized, so serving pages never contends on JSON work. The lock is never
//! held across an `.await`. The order in which handlers call these primitives
//! (validation, permission, faults, rate limit, credits, effect) lives in
//! `routes`, not here.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::data::{self, Thread, mix};
use super::{
    Faults, Ledger, LoggedRequest, MockAccount, MockConfig, MockMessage, MockUser, SentDm,
    WriteMode,
};

/// What a write costs, in credits.
pub(crate) const WRITE_COST: u64 = 10;

/// State shared by the server task and the [`super::MockServer`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    world: Mutex<World>,
}

/// The part of the configuration that never changes while serving.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) api_key: Option<String>,
    pub(crate) accounts: Vec<MockAccount>,
    pub(crate) users: Vec<MockUser>,
    pub(crate) page_size: usize,
    pub(crate) seed: u64,
    pub(crate) get_limit_per_sec: u32,
    pub(crate) post_limit_per_min: u32,
    pub(crate) post_window: Duration,
    pub(crate) write_mode: WriteMode,
    pub(crate) structured_errors: bool,
}

/// One conversation: its derivation, its current length and the DMs sent
/// into it (by index), which override the synthetic message at that index.
#[derive(Debug)]
pub(crate) struct Conversation {
    pub(crate) thread: Arc<Thread>,
    pub(crate) len: u64,
    sent: BTreeMap<u64, SentBody>,
}

#[derive(Debug, Clone)]
struct SentBody {
    text: String,
    media_url: Option<String>,
}

/// The part of a conversation a response needs, copied out of the lock so
/// the messages can be generated without holding it.
#[derive(Debug)]
pub(crate) struct Slice {
    pub(crate) thread: Arc<Thread>,
    sent: BTreeMap<u64, SentBody>,
}

/// A transient error to answer instead of the real response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transient {
    pub(crate) status: u16,
    /// Only for writes: let the write take effect first, then fail.
    pub(crate) after_effect: bool,
}

/// What an `Idempotency-Key` means for a new write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Never seen: perform the write.
    Fresh,
    /// Seen with the same request: answer the stored action.
    Same(String),
    /// Seen with a different request: 409.
    Conflict,
}

/// What a write does once admitted.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// Send `text` (and the uploaded `media_id`) to `recipient`.
    Dm {
        recipient: String,
        text: String,
        media_id: Option<String>,
    },
    /// Store an upload; `extension` picks the URL shape.
    Media { extension: &'static str },
}

/// A write request that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Intent {
    pub(crate) key: String,
    pub(crate) account: usize,
    pub(crate) action: &'static str,
    pub(crate) target: Option<String>,
    pub(crate) payload: Value,
    pub(crate) hash: String,
}

/// The durable record of a write, rendered as `XWriteAction`.
#[derive(Debug, Clone)]
pub(crate) struct WriteAction {
    pub(crate) id: String,
    action: &'static str,
    hash: String,
    payload: Value,
    account_id: String,
    account_handle: String,
    target: Option<String>,
    /// The message id or media id the write produced.
    result_id: String,
    media_url: Option<String>,
    polls_left: u32,
    pub(crate) completed: bool,
    created_at: String,
    completed_at: Option<String>,
}

#[derive(Debug)]
struct Media {
    account: usize,
    url: String,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
}

/// Everything that changes while serving.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) faults: Faults,
    pub(crate) credit_limit: Option<u64>,
    pub(crate) ledger: Ledger,
    pub(crate) sent: Vec<SentDm>,
    pub(crate) conversations: Vec<Conversation>,
    pairs: HashMap<(usize, String), usize>,
    seed: u64,
    rng: fastrand::Rng,
    fault_checks: u64,
    lost_writes: u32,
    windows: HashMap<(String, bool), Window>,
    idempotency: HashMap<String, (String, String)>,
    actions: HashMap<String, WriteAction>,
    media: HashMap<String, Media>,
    uploads: u64,
    requests: u64,
    /// Requests counted so far by each of `faults.cut_offs`.
    cut_off_counts: Vec<u64>,
    /// Where each request still in flight is in the request log.
    in_flight: HashMap<u64, usize>,
    started: Instant,
}

impl Shared {
    /// Builds the world of `config`, refusing inconsistent ones.
    pub(crate) fn new(config: MockConfig) -> io::Result<Shared> {
        let settings = Settings {
            api_key: config.api_key,
            accounts: config.accounts,
            users: config.users,
            page_size: config.page_size.max(1),
            seed: config.seed,
            get_limit_per_sec: config.get_limit_per_sec,
            post_limit_per_min: config.post_limit_per_min,
            post_window: config.post_window,
            write_mode: config.write_mode,
            structured_errors: config.structured_errors,
        };
        let mut world = World {
            faults: config.faults,
            credit_limit: config.credit_limit,
            ledger: Ledger::default(),
            sent: Vec::new(),
            conversations: Vec::new(),
            pairs: HashMap::new(),
            seed: config.seed,
            rng: fastrand::Rng::with_seed(mix(config.seed, 0x6661_756c)),
            fault_checks: 0,
            lost_writes: 0,
            windows: HashMap::new(),
            idempotency: HashMap::new(),
            actions: HashMap::new(),
            media: HashMap::new(),
            uploads: 0,
            requests: 0,
            cut_off_counts: Vec::new(),
            in_flight: HashMap::new(),
            started: Instant::now(),
        };
        for conversation in &config.conversations {
            let account = settings.account(&conversation.account).ok_or_else(|| {
                invalid_config(format!(
                    "conversation names account {:?}, which is not among the accounts",
                    conversation.account
                ))
            })?;
            if world.conversation(account, &conversation.user_id).is_some() {
                return Err(invalid_config(format!(
                    "conversation of {:?} with {:?} is listed twice",
                    conversation.account, conversation.user_id
                )));
            }
            let index = world.conversation_or_insert(&settings, account, &conversation.user_id);
            world.conversations[index].len = conversation.messages;
        }
        Ok(Shared {
            settings,
            world: Mutex::new(world),
        })
    }

    /// Locks the world. A panic while holding the lock cannot leave it
    /// half-updated in a way that matters to a mock, so poisoning is ignored.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn history(&self, account: &str, user_id: &str) -> Vec<MockMessage> {
        let Some(account) = self.settings.account(account) else {
            return Vec::new();
        };
        let (slice, len) = {
            let world = self.world();
            let Some(index) = world.conversation(account, user_id) else {
                return Vec::new();
            };
            let conversation = &world.conversations[index];
            (conversation.slice(0..conversation.len), conversation.len)
        };
        (0..len).rev().map(|i| slice.message(i)).collect()
    }

    pub(crate) fn append_messages(&self, account: &str, user_id: &str, n: u64) {
        if let Some(account) = self.settings.account(account) {
            let mut world = self.world();
            let index = world.conversation_or_insert(&self.settings, account, user_id);
            world.conversations[index].len += n;
        }
    }
}

fn invalid_config(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl Settings {
    /// Resolves an `account` value: a handle with or without `@`, in any
    /// case, or the account's user id, as the real API accepts.
    pub(crate) fn account(&self, raw: &str) -> Option<usize> {
        let raw = raw.trim();
        let handle = raw.strip_prefix('@').unwrap_or(raw);
        self.accounts
            .iter()
            .position(|a| a.handle.eq_ignore_ascii_case(handle) || a.user_id == raw)
    }

    /// Resolves a user by numeric id or by username (case-insensitive).
    pub(crate) fn user(&self, raw: &str) -> Option<&MockUser> {
        self.users.iter().find(|u| u.id == raw).or_else(|| {
            self.users
                .iter()
                .find(|u| u.username.eq_ignore_ascii_case(raw))
        })
    }

    /// Whether the presented key opens the API.
    pub(crate) fn key_accepted(&self, presented: Option<&str>) -> bool {
        match (presented, &self.api_key) {
            (Some(key), Some(expected)) => key == expected,
            (Some(key), None) => !key.is_empty(),
            (None, _) => false,
        }
    }

    /// Whether `(account, user_id)` is listed in `forbidden`.
    pub(crate) fn is_forbidden(&self, faults: &Faults, account: usize, user_id: &str) -> bool {
        faults
            .forbidden
            .iter()
            .any(|(a, u)| u == user_id && self.account(a) == Some(account))
    }
}

impl Conversation {
    /// Copies what generating messages `range` needs.
    pub(crate) fn slice(&self, range: Range<u64>) -> Slice {
        Slice {
            thread: Arc::clone(&self.thread),
            sent: self
                .sent
                .range(range)
                .map(|(&i, body)| (i, body.clone()))
                .collect(),
        }
    }
}

impl Slice {
    /// The message at index `i` (which must lie in the sliced range for a
    /// sent DM to show).
    pub(crate) fn message(&self, i: u64) -> MockMessage {
        match self.sent.get(&i) {
            Some(body) => self.thread.sent(i, &body.text, body.media_url.as_deref()),
            None => self.thread.synthetic(i),
        }
    }
}

impl World {
    /// Numbers the next request: its number in arrival order, and the
    /// value of its `X-Request-Id`.
    pub(crate) fn next_request(&mut self) -> (u64, u64) {
        self.requests += 1;
        (self.requests, mix(self.seed, self.requests))
    }

    /// The cut-off answer (status, code) for a request of `bucket`, if one
    /// of `faults.cut_offs` has reached it; counts the request.
    pub(crate) fn cut_off(&mut self, bucket: &str) -> Option<(u16, &'static str)> {
        self.cut_off_counts.resize(self.faults.cut_offs.len(), 0);
        let mut answer = None;
        for (cut, count) in self.faults.cut_offs.iter().zip(&mut self.cut_off_counts) {
            if cut.account.as_deref().is_some_and(|a| a != bucket) {
                continue;
            }
            *count += 1;
            if *count >= cut.from && answer.is_none() {
                answer = Some((cut.status, cut.code));
            }
        }
        answer
    }

    /// Logs a request that reached the rate limiter (or a cut-off): the
    /// log is for tests and benchmarks, and a mock serving for days stops
    /// adding to it at a million requests.
    pub(crate) fn log_request(&mut self, number: u64, bucket: &str, post: bool, limited: bool) {
        if self.ledger.requests.len() < 1_000_000 {
            self.in_flight.insert(number, self.ledger.requests.len());
            self.ledger.requests.push(LoggedRequest {
                number,
                at: self.started.elapsed(),
                answered: None,
                status: 0,
                bucket: bucket.to_owned(),
                post,
                limited,
            });
        }
    }

    /// Notes when request `number` was answered, and with what.
    pub(crate) fn answered(&mut self, number: u64, status: u16) {
        let now = self.started.elapsed();
        let Some(index) = self.in_flight.remove(&number) else {
            return;
        };
        if let Some(entry) = self.ledger.requests.get_mut(index) {
            entry.answered = Some(now);
            entry.status = status;
        }
    }

    /// This response's latency: the fixed part and a uniform random extra.
    pub(crate) fn latency(&mut self) -> Duration {
        let jitter = self.faults.latency_jitter;
        let extra = match jitter.is_zero() {
            true => Duration::ZERO,
            false => jitter.mul_f64(self.rng.f64()),
        };
        self.faults.latency + extra
    }

    pub(crate) fn count_call(&mut self, endpoint: &str) {
        bump(&mut self.ledger.calls_by_endpoint, endpoint, 1);
    }

    pub(crate) fn count_status(&mut self, status: u16) {
        *self.ledger.responses_by_status.entry(status).or_default() += 1;
    }

    pub(crate) fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
        self.fault_checks = 0;
        self.lost_writes = 0;
        self.cut_off_counts.clear();
    }

    /// Rolls the fault dice for a request that passed validation.
    pub(crate) fn transient(&mut self, write: bool) -> Option<Transient> {
        const ROTATION: [u16; 4] = [429, 503, 502, 424];
        let n = self.fault_checks;
        self.fault_checks += 1;
        if n < u64::from(self.faults.fail_first) {
            let status = self
                .faults
                .fail_status
                .unwrap_or(ROTATION[(n % 4) as usize]);
            return Some(Transient {
                status,
                after_effect: false,
            });
        }
        if self.faults.transient_rate <= 0.0 || self.rng.f64() >= self.faults.transient_rate {
            return None;
        }
        // Writes have a fourth outcome: the write happens, the answer is lost.
        let (status, after_effect) = match self.rng.u32(0..if write { 4 } else { 3 }) {
            0 => (429, false),
            1 => (503, false),
            2 => (502, false),
            _ => (503, true),
        };
        Some(Transient {
            status,
            after_effect,
        })
    }

    /// Counts a request against its fixed window of `span`, and logs it;
    /// `Err` holds the wait until the window ends. A `limit` of 0 never
    /// limits.
    pub(crate) fn rate_limit(
        &mut self,
        number: u64,
        bucket: &str,
        post: bool,
        limit: u32,
        span: Duration,
    ) -> Result<(), Duration> {
        let counted = self.count_window(bucket, post, limit, span);
        self.log_request(number, bucket, post, counted.is_err());
        counted
    }

    fn count_window(
        &mut self,
        bucket: &str,
        post: bool,
        limit: u32,
        span: Duration,
    ) -> Result<(), Duration> {
        if limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let window = self
            .windows
            .entry((bucket.to_owned(), post))
            .or_insert(Window {
                start: now,
                count: 0,
            });
        let elapsed = now.duration_since(window.start);
        if elapsed >= span {
            *window = Window {
                start: now,
                count: 0,
            };
        } else if window.count >= limit {
            return Err(span - elapsed);
        }
        window.count += 1;
        Ok(())
    }

    /// Charges `cost` credits to `endpoint`, or returns the balance left when
    /// they would exceed the limit (charging nothing).
    pub(crate) fn charge(&mut self, endpoint: &str, cost: u64) -> Result<(), u64> {
        if let Some(limit) = self.credit_limit {
            let balance = limit.saturating_sub(self.ledger.credits_total);
            if cost > balance {
                return Err(balance);
            }
        }
        if cost > 0 {
            self.ledger.credits_total += cost;
            bump(&mut self.ledger.credits_by_endpoint, endpoint, cost);
        }
        Ok(())
    }

    pub(crate) fn conversation(&self, account: usize, user_id: &str) -> Option<usize> {
        self.pairs.get(&(account, user_id.to_owned())).copied()
    }

    fn conversation_or_insert(
        &mut self,
        settings: &Settings,
        account: usize,
        user_id: &str,
    ) -> usize {
        if let Some(index) = self.conversation(account, user_id) {
            return index;
        }
        let index = self.conversations.len();
        let thread = Thread::new(
            settings.seed,
            index as u64,
            &settings.accounts[account].user_id,
            user_id,
        );
        self.conversations.push(Conversation {
            thread: Arc::new(thread),
            len: 0,
            sent: BTreeMap::new(),
        });
        self.pairs.insert((account, user_id.to_owned()), index);
        index
    }

    /// Whether `account` uploaded `media_id`.
    pub(crate) fn owns_media(&self, media_id: &str, account: usize) -> bool {
        self.media
            .get(media_id)
            .is_some_and(|m| m.account == account)
    }

    /// Looks the key up; keys are global to the API key, as in the real API.
    pub(crate) fn replay(&self, key: &str, hash: &str) -> Replay {
        match self.idempotency.get(key) {
            None => Replay::Fresh,
            Some((stored, id)) if stored == hash => Replay::Same(id.clone()),
            Some(_) => Replay::Conflict,
        }
    }

    /// Performs an admitted write: assigns ids, records the action and the
    /// key, and makes the DM visible in history and in `sent()`. Credits are
    /// charged by the caller before this.
    pub(crate) fn apply(
        &mut self,
        settings: &Settings,
        intent: Intent,
        effect: Effect,
    ) -> WriteAction {
        let account = &settings.accounts[intent.account];
        let (result_id, media_url) = match effect {
            Effect::Dm {
                recipient,
                text,
                media_id,
            } => {
                let media_url = media_id
                    .as_ref()
                    .and_then(|id| self.media.get(id))
                    .map(|m| m.url.clone());
                let index = self.conversation_or_insert(settings, intent.account, &recipient);
                let conversation = &mut self.conversations[index];
                let position = conversation.len;
                conversation.len += 1;
                conversation.sent.insert(
                    position,
                    SentBody {
                        text: text.clone(),
                        media_url,
                    },
                );
                let message_id = conversation.thread.message_id(position).to_string();
                self.sent.push(SentDm {
                    account: account.handle.clone(),
                    recipient_id: recipient,
                    message_id: message_id.clone(),
                    text,
                    media_ids: media_id.into_iter().collect(),
                    idempotency_key: intent.key.clone(),
                });
                (message_id, None)
            }
            Effect::Media { extension } => {
                let media_id = data::media_id(self.seed, self.uploads);
                self.uploads += 1;
                let url = if extension == "mp4" {
                    format!("https://video.twimg.com/dm_video/{media_id}/vid/avc1/{media_id}.mp4")
                } else {
                    format!("https://pbs.twimg.com/dm_media/{media_id}.{extension}")
                };
                self.media.insert(
                    media_id.clone(),
                    Media {
                        account: intent.account,
                        url: url.clone(),
                    },
                );
                (media_id, Some(url))
            }
        };
        let polls = match settings.write_mode {
            WriteMode::Accepted { polls } => Some(polls),
            WriteMode::Legacy | WriteMode::Completed => None,
        };
        let now = now_iso();
        let id = (100_000 + self.actions.len() as u64).to_string();
        let action = WriteAction {
            id: id.clone(),
            action: intent.action,
            hash: intent.hash.clone(),
            payload: intent.payload,
            account_id: account.user_id.clone(),
            account_handle: account.handle.clone(),
            target: intent.target,
            result_id,
            media_url,
            polls_left: polls.unwrap_or(0),
            completed: polls.is_none(),
            completed_at: polls.is_none().then(|| now.clone()),
            created_at: now,
        };
        self.idempotency
            .insert(intent.key, (intent.hash, id.clone()));
        self.actions.insert(id, action.clone());
        action
    }

    /// Whether this successful write's response is to be lost.
    pub(crate) fn take_lost_write(&mut self) -> bool {
        let lose = self.lost_writes < self.faults.lost_write_responses;
        if lose {
            self.lost_writes += 1;
        }
        lose
    }

    pub(crate) fn action(&self, id: &str) -> Option<&WriteAction> {
        self.actions.get(id)
    }

    /// One poll of an action's status URL: counts down the 202 answers of an
    /// accepted write, then completes it.
    pub(crate) fn poll(&mut self, id: &str) -> Option<WriteAction> {
        let action = self.actions.get_mut(id)?;
        if !action.completed {
            if action.polls_left > 0 {
                action.polls_left -= 1;
            } else {
                action.completed = true;
                action.completed_at = Some(now_iso());
            }
        }
        Some(action.clone())
    }
}

impl WriteAction {
    pub(crate) fn status_url(&self) -> String {
        format!("/api/v1/x/write-actions/{}", self.id)
    }

    /// The `XWriteAction` record, terminal once `completed`.
    pub(crate) fn record(&self, request_id: &str, replayed: bool, poll_after_ms: u64) -> Value {
        let done = self.completed;
        let cost = WRITE_COST.to_string();
        let charged = if done { cost.as_str() } else { "0" };
        let status_url = self.status_url();
        let (result_type, id_field) = if self.action == "send_dm" {
            ("direct_message", "messageId")
        } else {
            ("media", "mediaId")
        };
        let mut record = json!({
            "object": "x_write_action",
            "id": self.id,
            "writeActionId": self.id,
            "action": self.action,
            "status": if done { "success" } else { "dispatching" },
            "terminal": done,
            "retryable": false,
            "safeToRetry": false,
            "statusUrl": status_url,
            "pollAfterMs": if done { Value::Null } else { json!(poll_after_ms) },
            "charged": done,
            "chargedCredits": charged,
            "billing": {
                "status": if done { "charged" } else { "pending" },
                "charged": done,
                "plannedCredits": cost,
                "chargedCredits": charged,
            },
            "request": { "hash": self.hash, "payload": self.payload },
            "requestHash": self.hash,
            "requestId": request_id,
            "idempotent": replayed,
            "account": { "id": self.account_id, "username": self.account_handle },
            "target": self.target.as_ref().map(|id| json!({ "type": "user", "id": id })),
            "targetId": self.target,
            "result": done.then(|| json!({ "type": result_type, "id": self.result_id })),
            "nextAction": (!done).then(|| json!({
                "type": "poll",
                "url": status_url,
                "afterMs": poll_after_ms,
            })),
            "sendDispatched": true,
            "sendDispatchedAt": self.created_at,
            "createdAt": self.created_at,
            "updatedAt": self.completed_at.as_ref().unwrap_or(&self.created_at),
            "success": done,
        });
        if let (true, Some(map)) = (done, record.as_object_mut()) {
            map.insert(id_field.to_owned(), json!(self.result_id));
            if let Some(url) = &self.media_url {
                map.insert("mediaUrl".to_owned(), json!(url));
            }
            if let Some(at) = &self.completed_at {
                map.insert("completedAt".to_owned(), json!(at));
            }
        }
        record
    }

    /// The older `{messageId, success}` / `{mediaId, mediaUrl, success}`.
    pub(crate) fn legacy(&self) -> Value {
        match &self.media_url {
            Some(url) if self.action == "upload_media" => {
                json!({ "mediaId": self.result_id, "mediaUrl": url, "success": true })
            }
            _ => json!({ "messageId": self.result_id, "success": true }),
        }
    }
}

/// The stable fingerprint of a write: account, action, target and payload.
pub(crate) fn request_hash(
    account_id: &str,
    action: &str,
    target: Option<&str>,
    payload: &Value,
) -> String {
    let canonical = json!({
        "account": account_id,
        "action": action,
        "target": target,
        "payload": payload,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Adds to a counter without allocating the key when it already exists.
fn bump(map: &mut BTreeMap<String, u64>, key: &str, by: u64) {
    match map.get_mut(key) {
        Some(value) => *value += by,
        None => {
            map.insert(key.to_owned(), by);
        }
    }
}
