//! The embedded mock of the Xquik API, served over HTTP on loopback.
//!
//! It speaks the DM slice of the real API (`GET /x/users/{id}`,
//! `GET /x/dm/{userId}/history`, `POST /x/media`, `POST /x/dm/{userId}`,
//! `GET /x/write-actions/{id}`) under `/api/v1`, with the real error bodies,
//! credit costs, rate limits and idempotency rules, plus fault knobs that
//! reproduce what a client must survive: transient errors, lost write
//! responses, overlapping, unordered, empty and looping pages. It backs the
//! `mock` and `demo` commands and the tests of the whole crate.
//!
//! The module is self-contained: it depends on no other module of the crate.
//! Its data is deterministic for a given [`MockConfig::seed`] and request
//! sequence. It never logs, and so never logs a message body.
//!
//! Layout: `data` derives messages, ids and cursors; `state` holds the
//! mutable world behind one short-held lock; `routes` is the HTTP surface.

mod data;
mod routes;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use state::Shared;

/// Everything a mock world is made of. Build one with struct update syntax
/// over [`MockConfig::default`] (an empty world) or [`MockConfig::demo`].
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// `Some(k)`: `x-api-key` must equal `k`. `None`: any non-empty key.
    pub api_key: Option<String>,
    /// The connected X accounts that may read and send.
    pub accounts: Vec<MockAccount>,
    /// The X users `GET /x/users/{id}` knows.
    pub users: Vec<MockUser>,
    /// The DM history each account can read with each user.
    pub conversations: Vec<MockConversation>,
    /// Messages per history page (at least 1).
    pub page_size: usize,
    /// Every synthetic value and every random fault derives from it.
    pub seed: u64,
    /// Credits the API key may spend; `None` is unlimited.
    pub credit_limit: Option<u64>,
    /// GET requests per second per account (`0` disables the limit).
    pub get_limit_per_sec: u32,
    /// POST requests per minute per account (`0` disables the limit).
    pub post_limit_per_min: u32,
    /// The window the POST limit counts in: a minute, as the API does
    /// (tests shorten it to keep "120 per minute" within seconds).
    pub post_window: Duration,
    /// Which response shape writes get.
    pub write_mode: WriteMode,
    /// Faults injected into responses; changeable at run time.
    pub faults: Faults,
    /// `true`: errors as `{"error": {code, message, type}}` (as if every
    /// request sent `xquik-api-contract: 2026-04-29`); `false`: the legacy
    /// `{"error": "code", "message": "..."}`.
    pub structured_errors: bool,
}

/// A connected X account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockAccount {
    /// The X handle, without `@`; requests may name it with or without `@`,
    /// in any case, or by [`MockAccount::user_id`].
    pub handle: String,
    /// The account's numeric X user id.
    pub user_id: String,
}

/// An X user known to the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockUser {
    /// Numeric X user id.
    pub id: String,
    /// Username without `@`.
    pub username: String,
    /// Display name.
    pub name: String,
    /// The `canDm` hint of the profile; `None` omits the field. `Some(false)`
    /// also makes DM sends to this user fail with `x_dm_not_allowed`.
    pub can_dm: Option<bool>,
}

/// The history an account can read with one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConversation {
    /// Handle of the connected account (one of [`MockConfig::accounts`]).
    pub account: String,
    /// The other participant's numeric user id.
    pub user_id: String,
    /// How many messages the history holds before any append or send.
    pub messages: u64,
}

/// Faults the mock injects. The default injects none.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Probability (seeded) that a request is answered with a transient
    /// error instead: 429 `rate_limit_exceeded`, 503 `x_transient_error` (or
    /// `write_tracking_unavailable` on writes) or 502 `x_api_unavailable`.
    /// Nothing is charged and nothing happens, except that a write may also
    /// fail this way after it took effect (as with `lost_write_responses`).
    pub transient_rate: f64,
    /// The wait the mock advertises: 429/503 bodies carry `retryAfterMs` =
    /// this and `retryAfter` = the `Retry-After` header = this in whole
    /// seconds, rounded up (0 gives `Retry-After: 0`). Accepted writes use it
    /// as their polling delay too.
    pub retry_after_ms: u64,
    /// The first N requests that pass validation (any endpoint) get a
    /// transient error: "fail N times, then succeed".
    pub fail_first: u32,
    /// Status used by `fail_first`: 429, 503, 502 or 424 (any other gives
    /// `internal_error`); `None` rotates through those four.
    pub fail_status: Option<u16>,
    /// The first N writes that take effect (charged, recorded, idempotency
    /// key stored) are answered 503 `write_tracking_unavailable`, as when the
    /// response is lost after the API accepted the write.
    pub lost_write_responses: u32,
    /// Each history page after the first also repeats the last `overlap`
    /// messages of the previous page (at most a page's worth).
    pub overlap: usize,
    /// Shuffle the messages within each history page.
    pub unordered: bool,
    /// Every Nth page of a history walk is empty, with `has_next_page: true`
    /// and a cursor that continues where it was. `Some(1)` makes every page
    /// empty; `Some(0)` disables the fault.
    pub empty_page_every: Option<u32>,
    /// Pages after the Nth of a walk carry the `next_cursor` of the page
    /// before them, so a client that never compares cursors loops forever.
    pub repeated_cursor_after: Option<u32>,
    /// Pages after the Nth of a walk answer `has_next_page: true` with
    /// `next_cursor: ""`.
    pub dangling_cursor_after: Option<u32>,
    /// Added to every response.
    pub latency: Duration,
    /// A uniform random extra of up to this much, per response.
    pub latency_jitter: Duration,
    /// GET limits per second for these account handles instead of
    /// [`MockConfig::get_limit_per_sec`] (one account throttled hard).
    pub get_limits: Vec<(String, u32)>,
    /// `(account handle, user id)` pairs whose history answers 403
    /// `dm_not_permitted` even though the conversation exists.
    pub forbidden: Vec<(String, String)>,
    /// Answers that end an account's run (or the key's) from its Nth
    /// request on.
    pub cut_offs: Vec<CutOff>,
}

/// From the `from`th request of `account` on (counted from 1, over every
/// request that names it and passes validation), the mock answers
/// `status` with `code` instead, charging nothing: credits that run out
/// (402 `no_credits`), the day's limit (429 `x_daily_limit`), an account
/// that needs reconnecting (403 `account_needs_reauth`), a key revoked
/// mid-run (401 `unauthenticated`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutOff {
    /// The account handle; `None` counts every request of the key
    /// (lookups and polls included).
    pub account: Option<String>,
    /// The first request answered so.
    pub from: u64,
    /// The status...
    pub status: u16,
    /// ...and the error code answered.
    pub code: &'static str,
}

/// One request as the rate limiter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Its number in the order requests reached the mock, from 1.
    pub number: u64,
    /// When it arrived, since the mock started.
    pub at: Duration,
    /// When its answer left (after the latency fault), since the mock
    /// started; `None` while it is in flight.
    pub answered: Option<Duration>,
    /// The status it was answered with (0 while in flight).
    pub status: u16,
    /// What it counted against: an account handle, or `key:<api key>` for
    /// lookups and polls.
    pub bucket: String,
    /// A write (POST) rather than a read.
    pub post: bool,
    /// Whether it was refused with 429 `rate_limit_exceeded`.
    pub limited: bool,
}

/// The response shape of writes (`POST /x/dm/{userId}`, `POST /x/media`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// 200 `{messageId, success}` / `{mediaId, mediaUrl, success}`.
    Legacy,
    /// 200 with the terminal `XWriteAction` record.
    Completed,
    /// 202 with a non-terminal `XWriteAction` record, `Location` and
    /// `Retry-After`; the first `polls` polls of its `statusUrl` answer 202
    /// again, the next one 200 with the terminal record.
    Accepted {
        /// How many polls answer 202 before the action completes.
        polls: u32,
    },
}

/// One DM message as the history endpoint serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MockMessage {
    /// 19-digit snowflake id.
    pub id: String,
    /// User id of the sender.
    pub sender_id: String,
    /// User id of the receiver.
    pub receiver_id: String,
    /// Body; absent on media-only messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// ISO-8601 timestamp, exactly as served; sometimes absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Attached media, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
}

/// A DM that took effect through `POST /x/dm/{userId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentDm {
    /// Handle of the sending account.
    pub account: String,
    /// Recipient user id from the path.
    pub recipient_id: String,
    /// Id the message got (it also appears in the history).
    pub message_id: String,
    /// The text sent.
    pub text: String,
    /// The attached media ids (zero or one).
    pub media_ids: Vec<String>,
    /// The `Idempotency-Key` it was sent with.
    pub idempotency_key: String,
}

/// What the mock counted. Endpoint keys are route templates such as
/// `"GET /x/dm/{userId}/history"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ledger {
    /// Every request counted against a rate limit, in arrival order.
    #[serde(skip)]
    pub requests: Vec<LoggedRequest>,
    /// All credits charged.
    pub credits_total: u64,
    /// Credits charged per endpoint.
    pub credits_by_endpoint: BTreeMap<String, u64>,
    /// Requests that reached each route, errors included.
    pub calls_by_endpoint: BTreeMap<String, u64>,
    /// Every response by HTTP status.
    pub responses_by_status: BTreeMap<u16, u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            api_key: None,
            accounts: Vec::new(),
            users: Vec::new(),
            conversations: Vec::new(),
            page_size: 100,
            seed: 42,
            credit_limit: None,
            get_limit_per_sec: 300,
            post_limit_per_min: 120,
            post_window: Duration::from_secs(60),
            write_mode: WriteMode::Completed,
            faults: Faults::default(),
            structured_errors: false,
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            transient_rate: 0.0,
            retry_after_ms: 1_000,
            fail_first: 0,
            fail_status: None,
            lost_write_responses: 0,
            overlap: 0,
            unordered: false,
            empty_page_every: None,
            repeated_cursor_after: None,
            dangling_cursor_after: None,
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            get_limits: Vec::new(),
            forbidden: Vec::new(),
            cut_offs: Vec::new(),
        }
    }
}

impl MockConfig {
    /// The world of `xquik-dm mock` and `xquik-dm demo`: the account
    /// `acme_support` and six users. Its conversations hold 1200, 350, 60, 1
    /// and 0 messages; `quiet_quinn` does not accept DMs, `mina_kato` has no
    /// `canDm` hint, and `stranger_sam` shares no conversation with the
    /// account (history answers 403 `dm_not_permitted`).
    pub fn demo() -> MockConfig {
        const ACCOUNT: &str = "acme_support";
        let users = [
            (
                "2244994945",
                "ada_lovelace",
                "Ada Lovelace",
                Some(true),
                Some(1200),
            ),
            (
                "783214",
                "grace_hopper",
                "Grace Hopper 🐛",
                Some(true),
                Some(350),
            ),
            (
                "1098765432109876543",
                "mina_kato",
                "加藤 美奈",
                None,
                Some(60),
            ),
            (
                "44196397",
                "quiet_quinn",
                "Quinn (no DMs)",
                Some(false),
                Some(1),
            ),
            (
                "1349149096909668363",
                "new_customer",
                "New Customer",
                Some(true),
                Some(0),
            ),
            ("5551234", "stranger_sam", "Sam", Some(true), None),
        ];
        MockConfig {
            accounts: vec![MockAccount {
                handle: ACCOUNT.to_owned(),
                user_id: "1612345678901234567".to_owned(),
            }],
            users: users
                .iter()
                .map(|&(id, username, name, can_dm, _)| MockUser {
                    id: id.to_owned(),
                    username: username.to_owned(),
                    name: name.to_owned(),
                    can_dm,
                })
                .collect(),
            conversations: users
                .iter()
                .filter_map(|&(id, _, _, _, messages)| {
                    Some(MockConversation {
                        account: ACCOUNT.to_owned(),
                        user_id: id.to_owned(),
                        messages: messages?,
                    })
                })
                .collect(),
            ..MockConfig::default()
        }
    }
}

/// A running mock. Dropping it stops serving, like [`MockServer::shutdown`]
/// without waiting.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl MockServer {
    /// Serves `config` on `127.0.0.1` at a free port.
    pub async fn start(config: MockConfig) -> io::Result<MockServer> {
        MockServer::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Serves `config` on `addr` in a task of the current tokio runtime.
    /// Fails when the address cannot be bound or the config is inconsistent
    /// (a conversation of an unknown account, a conversation listed twice).
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> io::Result<MockServer> {
        let shared = Arc::new(Shared::new(config)?);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = routes::router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // A dropped sender stops the server too.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(MockServer {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/api/v1`, the base URL a client is given.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// A snapshot of what was called and charged so far.
    pub fn ledger(&self) -> Ledger {
        self.shared.world().ledger.clone()
    }

    /// Every request counted against a rate limit so far, in arrival
    /// order: what a test of pacing reads.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.world().ledger.requests.clone()
    }

    /// The full history of a conversation, newest first: exactly the
    /// messages paging serves (without faults). Empty when there is none.
    pub fn history(&self, account: &str, user_id: &str) -> Vec<MockMessage> {
        self.shared.history(account, user_id)
    }

    /// New messages arrive at the newest end of a conversation (created if
    /// it did not exist yet). Does nothing when `account` is not connected.
    pub fn append_messages(&self, account: &str, user_id: &str, n: u64) {
        self.shared.append_messages(account, user_id, n);
    }

    /// The DMs that took effect, in order.
    pub fn sent(&self) -> Vec<SentDm> {
        self.shared.world().sent.clone()
    }

    /// Replaces the faults; `fail_first` and `lost_write_responses` count
    /// afresh from this call.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.world().set_faults(faults);
    }

    /// Changes the credit limit; credits already charged stay charged.
    pub fn set_credit_limit(&self, limit: Option<u64>) {
        self.shared.world().credit_limit = limit;
    }

    /// Stops accepting connections, lets in-flight requests finish (for up
    /// to two seconds) and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            finish(task).await;
        }
    }

    /// Serves until Ctrl-C, then shuts down: the `xquik-dm mock` command.
    /// Returns the error that stopped the server, if it stopped by itself.
    pub async fn run_until_ctrl_c(mut self) -> io::Result<()> {
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(());
                }
                finish(task).await;
                signal
            }
            joined = &mut task => match joined {
                Ok(served) => served,
                Err(join) => Err(io::Error::other(join)),
            },
        }
    }
}

/// Waits for the server task; a connection that outlives the grace period is
/// cut by aborting the task, so shutdown never hangs a test.
async fn finish(mut task: JoinHandle<io::Result<()>>) {
    if tokio::time::timeout(Duration::from_secs(2), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}
