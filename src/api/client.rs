//! The HTTP client of the Xquik API: authentication, one method per
//! endpoint, the retry loop, and write-action polling.
//!
//! Every call returns the decoded value with a [`CallMeta`] (final status,
//! attempts, time spent waiting) because the audit manifest records exactly
//! that for each page and each write.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;

use super::pace::{Limits, Pacer};
use super::retry::{self, Decision, RetryPolicy};
use bytes::Bytes;

use super::types::{ErrorBody, HistoryPage, PageError, SendDmRequest, UserProfile, WriteResponse};
use super::{Account, Endpoint, IdempotencyKey, UserRef};
use crate::error::{ApiError, Error, Result};

/// The production API.
pub const DEFAULT_BASE_URL: &str = "https://xquik.com/api/v1";

/// The API key. Its `Debug` is redacted and it has no `Display`, so it cannot
/// be formatted into a log line or an error by accident.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; an empty or blank key is refused.
    pub fn new(key: impl Into<String>) -> Result<ApiKey> {
        let key = key.into();
        if key.trim().is_empty() {
            return Err(Error::MissingApiKey);
        }
        Ok(ApiKey(key))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How to reach the API.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://xquik.com/api/v1`.
    pub base_url: String,
    /// The API key.
    pub api_key: ApiKey,
    /// Timeout of one request (connect to last body byte).
    pub timeout: Duration,
    /// Retry bounds.
    pub retry: RetryPolicy,
    /// The largest answer read, in bytes: a larger one is refused while it
    /// streams in, never held whole (an honest history page is at most a
    /// few MiB).
    pub max_response_bytes: u64,
    /// The per-account pace (the API's limits by default).
    pub pace: Limits,
}

/// The default cap on one answer: 32 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 32 << 20;

impl ClientConfig {
    /// A configuration with default timeout and retry policy.
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            pace: Limits::default(),
        }
    }
}

/// What happened on the wire for one logical call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallMeta {
    /// The final HTTP status.
    pub status: u16,
    /// Requests made, the first one included.
    pub attempts: u32,
    /// Time spent waiting between attempts.
    pub waited: Duration,
    /// The final response's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The final response's `Location` header (202 write actions).
    pub location: Option<String>,
    /// The final response's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

/// A decoded answer and how it was obtained.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The decoded body.
    pub value: T,
    /// Status, attempts, waits.
    pub meta: CallMeta,
}

/// A history page's answer as received. Read it with [`PageBody::page`]:
/// the page borrows its strings from these bytes.
#[derive(Debug, Clone)]
pub struct PageBody(Bytes);

impl PageBody {
    /// The page the body holds.
    pub fn page(&self) -> Result<HistoryPage<'_>> {
        HistoryPage::from_body(&self.0).map_err(|e| Error::Decode {
            endpoint: Endpoint::History,
            reason: match e {
                PageError::NotUtf8 => "the answer is not UTF-8".to_owned(),
                PageError::Json(e) => describe_json_error(&e),
            },
        })
    }
}

impl From<Vec<u8>> for PageBody {
    fn from(body: Vec<u8>) -> PageBody {
        PageBody(body.into())
    }
}

/// The Xquik API client. Cheap to share behind an `Arc`; the connection pool
/// is reused across calls.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    base_str: String,
    key: HeaderValue,
    retry: RetryPolicy,
    max_response_bytes: u64,
    rng: Mutex<fastrand::Rng>,
    /// Every request of an account goes through its lane: the API's rate
    /// limit is per account, so a 429 seen by one conversation holds back
    /// every request of that account, and no other account's.
    pacer: Pacer,
}

impl Client {
    /// Builds a client. Refuses a base URL that would send the key in clear
    /// text to anything but a loopback host.
    pub fn new(config: ClientConfig) -> Result<Client> {
        let base = check_base_url(&config.base_url)?;
        let mut key = HeaderValue::from_str(&config.api_key.0).map_err(|_| {
            Error::invalid(
                "XQUIK_API_KEY",
                "contains characters not allowed in an HTTP header",
            )
        })?;
        key.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("xquik-dm/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // A redirect could carry the key header to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Transport {
                endpoint: Endpoint::User,
                kind: "client setup failed",
                detail: error_chain(&e),
            })?;
        Ok(Client {
            http,
            base_str: base.as_str().trim_end_matches('/').to_owned(),
            base,
            key,
            retry: config.retry,
            max_response_bytes: config.max_response_bytes,
            rng: Mutex::new(fastrand::Rng::new()),
            pacer: Pacer::new(config.pace),
        })
    }

    /// The base URL in use.
    pub fn base_url(&self) -> &str {
        &self.base_str
    }

    /// The per-account pacer (for how many requests to keep in flight).
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// `GET /x/users/{id}`: a profile by numeric ID or username. 1 credit.
    /// Paced with the reads of `account`, the one it is looked up for.
    pub async fn user(
        &self,
        user: &UserRef,
        account: Option<&Account>,
    ) -> Result<Reply<UserProfile>> {
        let url = format!("{}/x/users/{}", self.base_str, user.as_path());
        self.call(Endpoint::User, account, None, || self.http.get(&url))
            .await
    }

    /// `GET /x/dm/{userId}/history`: one page, older than `cursor` when
    /// given. 1 credit per message returned.
    pub async fn history_page(
        &self,
        account: &Account,
        user_id: &str,
        cursor: Option<&str>,
    ) -> Result<Reply<PageBody>> {
        let url = format!("{}/x/dm/{}/history", self.base_str, path_id(user_id)?);
        self.call_raw(Endpoint::History, Some(account), None, || {
            let mut req = self.http.get(&url).query(&[("account", account.as_str())]);
            if let Some(c) = cursor.filter(|c| !c.is_empty()) {
                req = req.query(&[("cursor", c)]);
            }
            req
        })
        .await
        .map(|reply| Reply {
            value: PageBody(reply.value),
            meta: reply.meta,
        })
    }

    /// `POST /x/media` with a file (multipart). 10 credits. Polls a 202
    /// answer to its terminal state.
    pub async fn upload_media_file(
        &self,
        account: &Account,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
        key: &IdempotencyKey,
    ) -> Result<Reply<WriteResponse>> {
        let url = format!("{}/x/media", self.base_str);
        let bytes = bytes::Bytes::from(bytes);
        let mime: reqwest::header::HeaderValue = mime
            .parse()
            .map_err(|_| Error::invalid("--media", format!("{mime:?} is not a MIME type")))?;
        let reply = self
            .call(Endpoint::Media, Some(account), Some(key), || {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(reqwest::header::CONTENT_TYPE, mime.clone());
                let part = reqwest::multipart::Part::stream(reqwest::Body::from(bytes.clone()))
                    .file_name(file_name.to_owned())
                    .headers(headers);
                let form = reqwest::multipart::Form::new()
                    .text("account", account.as_str().to_owned())
                    .part("file", part);
                self.http.post(&url).multipart(form)
            })
            .await?;
        self.finish_write(Endpoint::Media, account, reply).await
    }

    /// `POST /x/media` with a public https URL the API downloads. 10 credits.
    pub async fn upload_media_url(
        &self,
        account: &Account,
        media_url: &str,
        key: &IdempotencyKey,
    ) -> Result<Reply<WriteResponse>> {
        let url = format!("{}/x/media", self.base_str);
        let body = serde_json::json!({ "account": account.as_str(), "url": media_url });
        let reply = self
            .call(Endpoint::Media, Some(account), Some(key), || {
                self.http.post(&url).json(&body)
            })
            .await?;
        self.finish_write(Endpoint::Media, account, reply).await
    }

    /// `POST /x/dm/{userId}`: one DM, polled to its terminal state. 10 credits.
    pub async fn send_dm(
        &self,
        recipient_id: &str,
        request: &SendDmRequest,
        key: &IdempotencyKey,
    ) -> Result<Reply<WriteResponse>> {
        let url = format!("{}/x/dm/{}", self.base_str, path_id(recipient_id)?);
        let account = Account(request.account.clone());
        let reply = self
            .call(Endpoint::SendDm, Some(&account), Some(key), || {
                self.http.post(&url).json(request)
            })
            .await?;
        self.finish_write(Endpoint::SendDm, &account, reply).await
    }

    /// `GET /x/write-actions/{id}` by the `statusUrl` or `Location` the API
    /// gave. Only URLs on the API's own origin are followed, since the key
    /// goes with the request. Paced with the reads of `account`, whose
    /// write it polls.
    pub async fn write_action(
        &self,
        status_url: &str,
        account: &Account,
    ) -> Result<Reply<WriteResponse>> {
        let url = self.base.join(status_url).map_err(|_| Error::Decode {
            endpoint: Endpoint::WriteAction,
            reason: "statusUrl is not a URL".into(),
        })?;
        if url.origin() != self.base.origin() {
            return Err(Error::Decode {
                endpoint: Endpoint::WriteAction,
                reason: format!(
                    "statusUrl points to another origin ({})",
                    url.origin().ascii_serialization()
                ),
            });
        }
        self.call(Endpoint::WriteAction, Some(account), None, || {
            self.http.get(url.clone())
        })
        .await
    }

    /// Picks up a write an earlier run left pending: polls its status URL
    /// until terminal instead of submitting the write again.
    pub async fn resume_write(
        &self,
        endpoint: Endpoint,
        account: &Account,
        status_url: &str,
    ) -> Result<Reply<WriteResponse>> {
        let reply = self.write_action(status_url, account).await?;
        self.finish_write(endpoint, account, reply).await
    }

    /// Polls a non-terminal write until it is terminal, honouring
    /// `Retry-After` / `pollAfterMs`, within the policy's total time budget.
    /// A terminal failure becomes [`Error::WriteFailed`].
    async fn finish_write(
        &self,
        endpoint: Endpoint,
        account: &Account,
        mut reply: Reply<WriteResponse>,
    ) -> Result<Reply<WriteResponse>> {
        let started = Instant::now();
        let mut polls = 0u32;
        while !reply.value.is_terminal() {
            let Some(url) = reply
                .value
                .status_url
                .clone()
                .or_else(|| reply.meta.location.clone())
            else {
                return Err(Error::Decode {
                    endpoint,
                    reason: "a pending write came without statusUrl or Location".into(),
                });
            };
            let hint = reply
                .meta
                .retry_after
                .or(reply.value.poll_after_ms.map(Duration::from_millis));
            polls += 1;
            let wait = self.with_rng(|rng| self.retry.delay(polls.min(6), hint, rng));
            if started.elapsed() + wait > self.retry.max_elapsed {
                return Err(Error::WriteFailed {
                    endpoint,
                    write_action_id: reply.value.action_id().unwrap_or("?").to_owned(),
                    status: reply
                        .value
                        .status
                        .clone()
                        .unwrap_or_else(|| "pending".into()),
                    code: Some("poll_deadline".into()),
                    status_url: Some(url),
                    advice: "the write is still pending: rerun later to pick up its result (it is not sent again)",
                });
            }
            tokio::time::sleep(wait).await;
            let attempts = reply.meta.attempts;
            reply = self.write_action(&url, account).await?;
            reply.meta.attempts += attempts;
        }
        if !reply.value.succeeded() {
            return Err(Error::WriteFailed {
                endpoint,
                write_action_id: reply.value.action_id().unwrap_or("?").to_owned(),
                status: reply
                    .value
                    .status
                    .clone()
                    .unwrap_or_else(|| "failed".into()),
                code: reply.value.error.clone(),
                status_url: None,
                advice: crate::error::advice_for(422, reply.value.error.as_deref().unwrap_or("")),
            });
        }
        Ok(reply)
    }

    /// Sends one logical request, retrying transient failures per the
    /// policy. `make` builds a fresh request for each attempt (a multipart
    /// body cannot be replayed); the `Idempotency-Key` is the same on all.
    async fn call<T, F>(
        &self,
        endpoint: Endpoint,
        account: Option<&Account>,
        key: Option<&IdempotencyKey>,
        make: F,
    ) -> Result<Reply<T>>
    where
        T: DeserializeOwned,
        F: Fn() -> reqwest::RequestBuilder,
    {
        // A body that does not decode is not retried: the same request
        // would get the same answer.
        let reply = self.call_raw(endpoint, account, key, make).await?;
        let value = serde_json::from_slice(&reply.value).map_err(|e| Error::Decode {
            endpoint,
            reason: describe_json_error(&e),
        })?;
        Ok(Reply {
            value,
            meta: reply.meta,
        })
    }

    /// [`Client::call`] up to the successful answer's body, undecoded.
    async fn call_raw<F>(
        &self,
        endpoint: Endpoint,
        account: Option<&Account>,
        key: Option<&IdempotencyKey>,
        make: F,
    ) -> Result<Reply<Bytes>>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let mut attempts = 0u32;
        let kind = endpoint.pace_kind();
        loop {
            attempts += 1;
            waited += self.admit(account, kind).await?;
            let mut req = make().header("x-api-key", self.key.clone());
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key.as_str());
            }
            let sent = Instant::now();
            let outcome = self.attempt(endpoint, req).await;
            let throttled = matches!(&outcome, Err((Error::Api(api), _)) if api.status == 429);
            if let (Some(account), false) = (account, throttled) {
                self.pacer.answered(account.as_str(), kind, sent.elapsed());
            }
            let (err, hint) = match outcome {
                Ok((value, mut meta)) => {
                    meta.attempts = attempts;
                    meta.waited = waited;
                    return Ok(Reply { value, meta });
                }
                Err(failure) => failure,
            };
            let retryable = match &err {
                Error::Api(api) => retry::classify(api.status, &api.code) == Decision::Retry,
                Error::Transport { .. } => true,
                _ => false,
            };
            if !retryable {
                self.close_on(account, &err);
                return Err(err);
            }
            let wait = self.with_rng(|rng| self.retry.delay(attempts, hint, rng));
            let status = match &err {
                Error::Api(api) => api.status,
                _ => 0,
            };
            // The account's other requests wait too, even if this one gives up.
            if let (Some(account), 429) = (account, status) {
                let jitter = self.with_rng(|rng| wait.mul_f64(rng.f64() * 0.2));
                self.pacer.throttled(account.as_str(), kind, wait, jitter);
            }
            if attempts >= self.retry.max_attempts
                || started.elapsed() + wait > self.retry.max_elapsed
            {
                return Err(Error::RetriesExhausted {
                    endpoint,
                    attempts,
                    elapsed: started.elapsed(),
                    last: Box::new(err),
                });
            }
            tracing::warn!(
                endpoint = endpoint.as_str(),
                attempt = attempts,
                status,
                wait_ms = wait.as_millis() as u64,
                "transient failure, retrying"
            );
            match account {
                // A lane closed meanwhile ends the backoff at once.
                Some(account) => self
                    .pacer
                    .sleep(account.as_str(), wait)
                    .await
                    .map_err(|cause| not_sent(Some(account), cause))?,
                None => tokio::time::sleep(wait).await,
            }
            waited += wait;
        }
    }

    /// The pacer's leave to send the next attempt: the wait for `account`'s
    /// slot, or [`Error::NotSent`] when its lane (or the run) is closed. A
    /// request made for no account is only refused once the run is closed.
    async fn admit(&self, account: Option<&Account>, kind: super::pace::Kind) -> Result<Duration> {
        match account {
            Some(account) => self
                .pacer
                .acquire(account.as_str(), kind)
                .await
                .map_err(|cause| not_sent(Some(account), cause)),
            None => match self.pacer.run_closed() {
                Some(cause) => Err(not_sent(None, cause)),
                None => Ok(Duration::ZERO),
            },
        }
    }

    /// Acts on a fatal answer's reach ([`retry::reach`]): an answer fatal
    /// for the account closes its lanes, one fatal for the run closes them
    /// all. Requests already on the wire are not touched: their answers are
    /// kept as usual.
    fn close_on(&self, account: Option<&Account>, err: &Error) {
        let Error::Api(api) = err else {
            return;
        };
        match (retry::reach(api.status, &api.code), account) {
            (retry::Reach::Run, _) => self.pacer.close_all(api),
            (retry::Reach::Account, Some(account)) => self.pacer.close(account.as_str(), api),
            _ => {}
        }
    }

    /// One HTTP exchange. On failure, also returns the wait the server asked
    /// for, if any.
    async fn attempt(
        &self,
        endpoint: Endpoint,
        req: reqwest::RequestBuilder,
    ) -> std::result::Result<(Bytes, CallMeta), (Error, Option<Duration>)> {
        let resp = req
            .send()
            .await
            .map_err(|e| (transport(endpoint, &e), None))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let header_wait = header_str(&headers, "retry-after")
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let request_id = header_str(&headers, "x-request-id").map(str::to_owned);
        // An error's body is read only this far: past it, the status alone
        // speaks (a hostile 32 MiB error body is not parsed into a tree).
        const ERROR_BODY_BYTES: u64 = 64 << 10;
        let body = if (200..300).contains(&status) {
            read_capped(resp, endpoint, self.max_response_bytes).await?
        } else {
            read_capped(resp, endpoint, ERROR_BODY_BYTES)
                .await
                .unwrap_or_default()
        };
        if (200..300).contains(&status) {
            let meta = CallMeta {
                status,
                request_id,
                location: header_str(&headers, "location").map(str::to_owned),
                retry_after: header_wait,
                ..CallMeta::default()
            };
            return Ok((body, meta));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let code = ErrorBody::from_json(&json).code;
        // The body's millisecond figure is the most precise; then the header;
        // then the body's seconds.
        let wait = if json.get("retryAfterMs").is_some() {
            retry::body_retry_after(&json)
        } else {
            header_wait.or_else(|| retry::body_retry_after(&json))
        };
        let code = if code.is_empty() {
            format!("http_{status}")
        } else {
            code
        };
        let err = ApiError {
            status,
            code,
            endpoint,
            request_id,
            retry_after: wait,
        };
        Err((Error::Api(err), wait))
    }

    fn with_rng<R>(&self, f: impl FnOnce(&mut fastrand::Rng) -> R) -> R {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut rng)
    }
}

/// The error of a request that was not sent because `cause` closed its
/// lane.
fn not_sent(account: Option<&Account>, cause: ApiError) -> Error {
    Error::NotSent {
        account: account.map(|a| a.as_str().to_owned()),
        cause,
    }
}

/// Checks the base URL: https anywhere, plain http only on loopback.
pub fn check_base_url(base_url: &str) -> Result<url::Url> {
    let url = url::Url::parse(base_url.trim())
        .map_err(|e| Error::invalid("--base-url", format!("{base_url:?} is not a URL ({e})")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(Error::InsecureBaseUrl {
            url: url.as_str().to_owned(),
        }),
        _ => Err(Error::invalid(
            "--base-url",
            format!("{base_url:?} must be an https:// URL"),
        )),
    }
}

/// A user ID for a URL path: numeric only, so nothing can escape the path.
fn path_id(id: &str) -> Result<&str> {
    if super::is_numeric_id(id) {
        Ok(id)
    } else {
        Err(Error::invalid("user ID", "not a numeric user ID"))
    }
}

/// Reads an answer's body, refusing it once it is larger than `cap`: by its
/// `Content-Length` before reading, else by the bytes counted as they
/// stream in. Memory never holds more than the cap.
async fn read_capped(
    mut resp: reqwest::Response,
    endpoint: Endpoint,
    cap: u64,
) -> std::result::Result<Bytes, (Error, Option<Duration>)> {
    let too_large = || {
        (
            Error::Decode {
                endpoint,
                reason: format!(
                    "the answer is larger than the {} MiB cap (--max-response-mb)",
                    cap.div_ceil(1 << 20)
                ),
            },
            None,
        )
    };
    if resp.content_length().is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    // Chunks are kept as they arrive and joined once: an answer that comes
    // in one chunk (most, once the connection's read buffer has grown) is
    // never copied.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| (transport(endpoint, &e), None))?
    {
        len += chunk.len() as u64;
        if len > cap {
            return Err(too_large());
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    })
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn transport(endpoint: Endpoint, e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection lost while reading the response"
    } else {
        "request failed"
    };
    Error::Transport {
        endpoint,
        kind,
        detail: error_chain(e),
    }
}

/// The error and its sources, without the URL (which carries no secret but
/// adds noise).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Describes a JSON error by category and position only: `serde_json`
/// messages quote the offending value, which may be a message body.
fn describe_json_error(e: &serde_json::Error) -> String {
    let category = crate::error::json_error_category(e);
    format!("{category} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_must_be_https_or_loopback() {
        assert!(check_base_url("https://xquik.com/api/v1").is_ok());
        assert!(check_base_url("http://127.0.0.1:8080/api/v1").is_ok());
        assert!(check_base_url("http://127.9.9.9/api/v1").is_ok());
        assert!(check_base_url("http://localhost:1/api/v1").is_ok());
        assert!(check_base_url("http://[::1]:1/api/v1").is_ok());
        assert!(matches!(
            check_base_url("http://xquik.com/api/v1"),
            Err(Error::InsecureBaseUrl { .. })
        ));
        assert!(matches!(
            check_base_url("http://10.0.0.1/api/v1"),
            Err(Error::InsecureBaseUrl { .. })
        ));
        assert!(check_base_url("ftp://xquik.com").is_err());
        assert!(check_base_url("not a url").is_err());
    }

    #[test]
    fn api_key_is_redacted() {
        let key = ApiKey::new("sk-live-secret").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        let config = ClientConfig::new(DEFAULT_BASE_URL, key);
        assert!(!format!("{config:?}").contains("secret"));
        assert!(matches!(ApiKey::new("  "), Err(Error::MissingApiKey)));
    }

    #[test]
    fn json_errors_do_not_quote_values() {
        let e = serde_json::from_str::<UserProfile>(r#"{"id": "1", "username": 12345678901}"#)
            .unwrap_err();
        let text = describe_json_error(&e);
        assert!(!text.contains("12345678901"), "{text}");
        assert!(text.starts_with("unexpected JSON shape"), "{text}");
    }

    #[test]
    fn path_ids_are_numeric() {
        assert!(path_id("123").is_ok());
        assert!(path_id("../admin").is_err());
        assert!(path_id("").is_err());
    }
}
