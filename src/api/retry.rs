//! Whether to retry (a pure classification of a failure) and when (a bounded
//! exponential backoff with jitter that honours the server's requested wait).
//!
//! The two are kept apart on purpose: the classification is the contract of
//! SPEC §1 and is tested case by case; the timing is policy and is tested
//! with millisecond settings.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::time::{Duration, SystemTime};

/// What to do with one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Transient: try again after a backoff.
    Retry,
    /// Do not try again with this request.
    Fatal,
}

/// Classifies an HTTP error answer. Retried: 429 (except `x_daily_limit`,
/// which lasts until tomorrow), 503, and 502/424 (`x_api_unavailable`, or no
/// code at all, which is what a proxy in front of the API answers). Never any
/// other 4xx: retrying them unchanged spends credits or time for nothing.
pub fn classify(status: u16, code: &str) -> Decision {
    if is_retryable_status(status, code) {
        Decision::Retry
    } else {
        Decision::Fatal
    }
}

/// The boolean form of [`classify`], shared with the error classes.
pub(crate) fn is_retryable_status(status: u16, code: &str) -> bool {
    match status {
        429 => code != "x_daily_limit",
        503 => true,
        502 | 424 => matches!(code, "x_api_unavailable" | "x_transient_error") || code.is_empty(),
        504 => true,
        _ => false,
    }
}

/// How far a fatal answer reaches: what else it stops besides the request
/// that got it. Decided from the answer alone, like [`classify`], and acted
/// on by the client (which closes lanes) and the commands (which report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Only this request, and what it was for (one conversation, one send):
    /// a transient answer, or one about this user, this input or this
    /// write (400, 403 `dm_not_permitted`, 404 `user_not_found`, 422).
    Request,
    /// Every request of the account that made it: the connected account
    /// itself cannot go on.
    Account,
    /// Every request of the run, whatever its account.
    Run,
}

/// The reach of an error answer (SPEC §6 "Scheduler").
///
/// - `Run`: 401 (the API key itself is refused), and the billing codes of
///   402. Credits and the subscription belong to the API key, not to a
///   connected account (the mock models it so too: one balance per key),
///   so once one account hears 402 every other account of the run would
///   only spend a request to hear it as well.
/// - `Account`: `x_daily_limit` (X's daily cap of that account), and the
///   connected-account answers `account_needs_reauth`, `account_restricted`
///   and `account_not_found`. These are 403/404 statuses, but their code
///   names the connected account, not the conversation: every request made
///   as that account would get the same answer until a person reconnects or
///   unlocks it (or the day turns), while the other accounts are unaffected.
/// - `Request`: everything else, retryable answers included (a 429 slows
///   its account's lane, it does not close it).
pub fn reach(status: u16, code: &str) -> Reach {
    match code {
        "unauthenticated"
        | "insufficient_credits"
        | "no_credits"
        | "no_subscription"
        | "subscription_inactive" => return Reach::Run,
        "x_daily_limit" | "account_needs_reauth" | "account_restricted" | "account_not_found" => {
            return Reach::Account;
        }
        _ => {}
    }
    match status {
        // A 401 or 402 with a code this client does not know yet is still
        // about the key or its billing.
        401 | 402 => Reach::Run,
        _ => Reach::Request,
    }
}

/// Bounds and pacing of retries for one request.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    /// First backoff; doubles on each retry.
    pub base_delay: Duration,
    /// Ceiling of the computed backoff.
    pub max_delay: Duration,
    /// Ceiling on a wait the server asks for; larger values are clamped so
    /// that one absurd `Retry-After` cannot park a scheduled job for hours.
    pub max_server_wait: Duration,
    /// Total time budget for one request, waits included. A wait that would
    /// overrun it ends the retries at once rather than sleeping in vain.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_server_wait: Duration::from_secs(120),
            max_elapsed: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// A fast policy for tests and the offline demo: millisecond waits.
    pub fn fast() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            max_server_wait: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(30),
        }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    ///
    /// Exponential from `base_delay`, capped at `max_delay`, with "equal
    /// jitter" (uniform in the upper half) so that concurrent workers hit by
    /// the same 429 spread out instead of returning in lockstep. A server
    /// hint is a floor, clamped to `max_server_wait`: `Retry-After: 0` thus
    /// still waits the backoff instead of hammering the API.
    pub fn delay(
        &self,
        retry: u32,
        server_hint: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        let half = exp / 2;
        let jitter =
            Duration::from_nanos(rng.u64(0..=half.as_nanos().min(u64::MAX as u128) as u64));
        let backoff = half + jitter;
        match server_hint {
            Some(hint) => hint.min(self.max_server_wait).max(backoff),
            None => backoff,
        }
    }
}

/// Parses a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110).
/// A date in the past means "now". Unparseable values are ignored (`None`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Lenient: some proxies send fractional seconds.
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e9)));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads the body fields `retryAfterMs` (preferred: most precise) or
/// `retryAfter` (seconds) from an error body.
pub fn body_retry_after(body: &serde_json::Value) -> Option<Duration> {
    if let Some(ms) = body.get("retryAfterMs").and_then(non_negative) {
        return Some(Duration::from_secs_f64(ms.min(1e12) / 1000.0));
    }
    body.get("retryAfter")
        .and_then(non_negative)
        .map(|s| Duration::from_secs_f64(s.min(1e9)))
}

fn non_negative(v: &serde_json::Value) -> Option<f64> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_429_except_daily_limit() {
        assert_eq!(classify(429, "rate_limit_exceeded"), Decision::Retry);
        assert_eq!(classify(429, "x_rate_limited"), Decision::Retry);
        assert_eq!(classify(429, ""), Decision::Retry);
        assert_eq!(classify(429, "x_daily_limit"), Decision::Fatal);
    }

    #[test]
    fn retries_503_whatever_the_code() {
        assert_eq!(classify(503, "x_transient_error"), Decision::Retry);
        assert_eq!(classify(503, "write_tracking_unavailable"), Decision::Retry);
        assert_eq!(classify(503, ""), Decision::Retry);
    }

    #[test]
    fn retries_502_and_424_only_when_unavailable() {
        assert_eq!(classify(502, "x_api_unavailable"), Decision::Retry);
        assert_eq!(classify(424, "x_api_unavailable"), Decision::Retry);
        assert_eq!(classify(502, ""), Decision::Retry);
        assert_eq!(classify(424, "x_api_unauthorized"), Decision::Fatal);
    }

    #[test]
    fn never_retries_other_client_errors() {
        for (status, code) in [
            (400, "invalid_input"),
            (400, "invalid_user_id"),
            (400, "account_required"),
            (401, "unauthenticated"),
            (402, "insufficient_credits"),
            (402, "no_credits"),
            (402, "no_subscription"),
            (402, "subscription_inactive"),
            (403, "dm_not_permitted"),
            (403, "account_needs_reauth"),
            (403, "account_restricted"),
            (404, "account_not_found"),
            (404, "user_not_found"),
            (409, "idempotency_conflict"),
            (422, "x_dm_not_allowed"),
            (422, "x_rejected"),
            (422, "media_download_failed"),
            (500, "x_write_failed"),
        ] {
            assert_eq!(classify(status, code), Decision::Fatal, "{status} {code}");
        }
    }

    #[test]
    fn reach_of_each_documented_answer() {
        for code in [
            "insufficient_credits",
            "no_credits",
            "no_subscription",
            "subscription_inactive",
        ] {
            assert_eq!(reach(402, code), Reach::Run, "{code}");
        }
        assert_eq!(reach(401, "unauthenticated"), Reach::Run);
        assert_eq!(reach(401, "http_401"), Reach::Run);
        assert_eq!(reach(402, "brand_new_billing_code"), Reach::Run);
        for (status, code) in [
            (429, "x_daily_limit"),
            (403, "account_needs_reauth"),
            (403, "account_restricted"),
            (404, "account_not_found"),
        ] {
            assert_eq!(reach(status, code), Reach::Account, "{code}");
        }
        for (status, code) in [
            (400, "invalid_input"),
            (403, "dm_not_permitted"),
            (403, "brand_new_code"),
            (404, "user_not_found"),
            (409, "idempotency_conflict"),
            (422, "x_dm_not_allowed"),
            (422, "x_rejected"),
            (429, "rate_limit_exceeded"),
            (503, "x_transient_error"),
            (502, "x_api_unavailable"),
        ] {
            assert_eq!(reach(status, code), Reach::Request, "{status} {code}");
        }
    }

    #[test]
    fn retry_after_as_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_as_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "retry now", not an error.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn body_retry_after_prefers_milliseconds() {
        let body = serde_json::json!({"retryAfter": 60, "retryAfterMs": 250});
        assert_eq!(body_retry_after(&body), Some(Duration::from_millis(250)));
        let body = serde_json::json!({"retryAfter": 2});
        assert_eq!(body_retry_after(&body), Some(Duration::from_secs(2)));
        let body = serde_json::json!({"retryAfter": "7"});
        assert_eq!(body_retry_after(&body), Some(Duration::from_secs(7)));
        let body = serde_json::json!({"retryAfter": -1});
        assert_eq!(body_retry_after(&body), None);
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..=40 {
            let expected = (100u64 << (retry - 1).min(20)).min(1000);
            let d = policy.delay(retry, None, &mut rng);
            assert!(
                d >= Duration::from_millis(expected / 2),
                "retry {retry}: {d:?}"
            );
            assert!(d <= Duration::from_millis(expected), "retry {retry}: {d:?}");
        }
    }

    #[test]
    fn jitter_spreads_concurrent_waits() {
        let policy = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let waits: std::collections::BTreeSet<_> =
            (0..20).map(|_| policy.delay(3, None, &mut rng)).collect();
        assert!(
            waits.len() > 15,
            "jitter gave only {} distinct waits",
            waits.len()
        );
    }

    #[test]
    fn server_hint_is_a_floor_and_is_capped() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            max_server_wait: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(5)), &mut rng),
            Duration::from_secs(5)
        );
        // Absurd values are clamped.
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(86_400 * 365)), &mut rng),
            Duration::from_secs(60)
        );
        // Retry-After: 0 still backs off a little instead of hammering.
        let d = policy.delay(1, Some(Duration::ZERO), &mut rng);
        assert!(
            d >= Duration::from_millis(5) && d <= Duration::from_millis(10),
            "{d:?}"
        );
    }
}
