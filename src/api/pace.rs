//! Per-account pacing at the API's documented limits (300 GET/s and 120
//! POST/min per connected account): every request of an account takes the
//! next free slot of its account's lane, so that the pace — not a fixed
//! number of workers, and not a storm of 429s — is what bounds a large sync.
//!
//! - Each lane hands out slots one interval apart (no bursts), at
//!   [`HEADROOM`] of the limit: jitter between this clock and the server's
//!   can then never put one request too many into one of its windows.
//! - Each request reserves its own slot, so waiting requests leave in order,
//!   one interval apart, instead of all waking at the same instant.
//! - A request that could only leave late (this process stalled) does not
//!   leave in a burst with every other overdue one: a small allowance, the
//!   headroom, caps how many leave at once, so that no second holds more
//!   requests than the limit however late they leave.
//! - A 429 closes its account's lane for the wait the server asked for (plus
//!   jitter) and slows that lane down; a request that reserved a slot before
//!   the 429 checks again after its wait. Other accounts are not touched.
//!   The lane speeds up again with each answer, up to the limit.
//! - The lane also keeps the latency of its answers, from which the sync
//!   derives how many requests to keep in flight (Little's law).
//! - An answer that says the account cannot go on (SPEC §6 "Scheduler")
//!   closes the account's lanes for good: the requests waiting for a slot
//!   are woken at once and dropped unsent (counted), and every later
//!   request of the account is refused before it leaves the process. An
//!   answer fatal for the run closes every account's lanes, and those of
//!   accounts not seen yet. The decision is `retry::reach`; this file only
//!   acts on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ApiError;

/// The share of a limit the pacer uses.
pub const HEADROOM: f64 = 0.97;
/// A 429 slows its lane by this factor...
const SLOW_DOWN: f64 = 1.5;
/// ...up to this much...
const SLOWEST: f64 = 8.0;
/// ...and each answer takes this share of the slowdown back.
const RECOVER: f64 = 0.02;

/// The per-account limits to pace at; 0 switches pacing off for a kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// GET requests per second per account.
    pub get_per_sec: f64,
    /// POST requests per minute per account.
    pub post_per_min: f64,
}

impl Default for Limits {
    /// The API's documented limits.
    fn default() -> Self {
        Limits {
            get_per_sec: 300.0,
            post_per_min: 120.0,
        }
    }
}

impl Limits {
    /// No pacing at all (a server without limits: the benchmark's mock).
    pub fn unlimited() -> Limits {
        Limits {
            get_per_sec: 0.0,
            post_per_min: 0.0,
        }
    }

    /// The time between two slots of `kind`, or `None` when unpaced.
    fn interval(&self, kind: Kind) -> Option<Duration> {
        let per_sec = match kind {
            Kind::Get => self.get_per_sec,
            Kind::Post => self.post_per_min / 60.0,
        };
        (per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / (per_sec * HEADROOM)))
    }
}

/// Which of an account's limits a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Reads (history pages, lookups, write-action polls).
    Get,
    /// Writes (DMs, media uploads).
    Post,
}

/// One account's lane of one kind.
#[derive(Debug, Clone, Copy)]
struct Lane {
    /// The next free slot.
    next: Instant,
    /// No request before this (a 429's wait).
    closed_until: Instant,
    /// Interval multiplier: 1 at the limit's pace, more after 429s.
    slow: f64,
    /// Smoothed latency of the answers, seconds.
    latency: Option<f64>,
    /// Answers of 429 so far.
    refused: u64,
    /// The burst allowance left (see [`Lane::take`]), and when it was
    /// last refilled.
    tokens: f64,
    refilled: Instant,
}

impl Lane {
    fn new(now: Instant) -> Lane {
        Lane {
            next: now,
            closed_until: now,
            slow: 1.0,
            latency: None,
            refused: 0,
            tokens: 1.0,
            refilled: now,
        }
    }

    /// Takes one request's worth of the lane's burst allowance at `now`;
    /// `Some(due)` when none is left until `due`.
    ///
    /// Why: slots are reserved one interval apart, but a request can only
    /// leave when its task runs. When this process stalls (a loaded
    /// machine, a long commit on a busy core), every slot that fell due
    /// meanwhile fires at once, and the server's one-second window then
    /// counts the burst on top of the slots before it: a paced sync on a
    /// loaded machine was seen to put 103 requests into a window of 100.
    /// The allowance refills at the pace and holds at most the headroom
    /// (3% of the limit, at least one request): a second then holds at most
    /// the pace plus the headroom, the limit itself, however late requests
    /// leave. In steady state the allowance is never short, since slots are
    /// already one interval apart.
    fn take(&mut self, now: Instant, interval: Duration) -> Option<Instant> {
        let per_interval = 1.0 / interval.as_secs_f64();
        let capacity = (per_interval * (1.0 / HEADROOM - 1.0)).max(1.0);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_interval).min(capacity);
        self.refilled = now;
        // Float rounding must not make a request due exactly on time wait
        // a few nanoseconds more on every turn.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return None;
        }
        Some(now + interval.mul_f64(1.0 - self.tokens))
    }
}

/// Why an account's lanes closed, and what that dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// The answer that closed them (status, code, endpoint; never a body).
    pub cause: ApiError,
    /// Whether the answer closed the whole run (and so this account with
    /// it) rather than this account alone.
    pub run: bool,
    /// Requests of the account dropped unsent: those waiting for a slot
    /// when the lanes closed, and those asked for after.
    pub dropped: u64,
}

/// One account's gate: open until a fatal answer closes it.
#[derive(Debug, Default)]
struct Gate {
    /// Wakes the account's waiting requests when the gate closes.
    wake: Arc<Notify>,
    closed: Option<Closure>,
}

/// The lanes and gates, under one lock.
#[derive(Debug, Default)]
struct Lanes {
    lanes: HashMap<(String, Kind), Lane>,
    gates: HashMap<String, Gate>,
    /// The answer that closed the whole run, for accounts not seen yet.
    run_closed: Option<ApiError>,
}

impl Lanes {
    /// `account`'s gate; an account first seen after the run closed is
    /// born closed.
    fn gate(&mut self, account: &str) -> &mut Gate {
        let run_closed = &self.run_closed;
        self.gates
            .entry(account.to_owned())
            .or_insert_with(|| Gate {
                wake: Arc::default(),
                closed: run_closed.clone().map(|cause| Closure {
                    cause,
                    run: true,
                    dropped: 0,
                }),
            })
    }

    /// Counts a request of `account` dropped at a closed gate; returns the
    /// answer that closed it, or `None` while it is open.
    fn refuse(&mut self, account: &str) -> Option<ApiError> {
        let closed = self.gate(account).closed.as_mut()?;
        closed.dropped += 1;
        Some(closed.cause.clone())
    }
}

/// The pacer of every account a client talks for.
#[derive(Debug)]
pub struct Pacer {
    limits: Limits,
    lanes: Mutex<Lanes>,
}

impl Pacer {
    /// A pacer at `limits`.
    pub fn new(limits: Limits) -> Pacer {
        Pacer {
            limits,
            lanes: Mutex::new(Lanes::default()),
        }
    }

    /// The limits it paces at.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_lane<R>(&self, account: &str, kind: Kind, f: impl FnOnce(&mut Lane) -> R) -> R {
        let mut lanes = self.locked();
        let lane = lanes
            .lanes
            .entry((account.to_owned(), kind))
            .or_insert_with(|| Lane::new(Instant::now()));
        f(lane)
    }

    /// Waits for the next slot of `account`'s `kind` lane; returns the time
    /// waited. `Err` holds the answer that closed the account's lanes: the
    /// request must not be sent (it is counted as dropped).
    pub async fn acquire(&self, account: &str, kind: Kind) -> Result<Duration, ApiError> {
        let started = Instant::now();
        let interval = self.limits.interval(kind);
        let mut waited = false;
        loop {
            let wake = self.locked().gate(account).wake.clone();
            // Registered before the gate is checked: a close from here on
            // wakes this request, whether it is sleeping yet or not.
            let closing = wake.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            let (slot, now) = {
                let mut lanes = self.locked();
                if let Some(cause) = lanes.refuse(account) {
                    return Err(cause);
                }
                let lane = lanes
                    .lanes
                    .entry((account.to_owned(), kind))
                    .or_insert_with(|| Lane::new(Instant::now()));
                let now = Instant::now();
                let slot = now.max(lane.next).max(lane.closed_until);
                if let Some(interval) = interval {
                    lane.next = slot + interval.mul_f64(lane.slow);
                }
                (slot, now)
            };
            if slot > now {
                tokio::select! {
                    () = tokio::time::sleep_until(slot) => {}
                    // Closed while waiting: the next turn drops the request.
                    () = &mut closing => continue,
                }
                waited = true;
                // A 429 may have closed the lane while this request waited.
                let closed_until = self.with_lane(account, kind, |lane| lane.closed_until);
                if closed_until > Instant::now() || self.closure(account).is_some() {
                    continue;
                }
            }
            if let Some(interval) = interval {
                waited |= self.allowance(account, kind, interval, closing).await?;
            }
            return Ok(if waited {
                started.elapsed()
            } else {
                Duration::ZERO
            });
        }
    }

    /// Waits, if it must, for the burst allowance of the lane (see
    /// [`Lane::take`]); returns whether it waited. `closing` is the
    /// account's close signal.
    async fn allowance(
        &self,
        account: &str,
        kind: Kind,
        interval: Duration,
        mut closing: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Result<bool, ApiError> {
        let mut waited = false;
        loop {
            let due = self.with_lane(account, kind, |lane| lane.take(Instant::now(), interval));
            let Some(due) = due else {
                return Ok(waited);
            };
            waited = true;
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = &mut closing => {
                    if let Some(cause) = self.locked().refuse(account) {
                        return Err(cause);
                    }
                }
            }
        }
    }

    /// Sleeps `wait` (a retry's backoff) unless `account`'s lanes close
    /// first; `Err` holds the answer that closed them.
    pub async fn sleep(&self, account: &str, wait: Duration) -> Result<(), ApiError> {
        let wake = self.locked().gate(account).wake.clone();
        let closing = wake.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if let Some(cause) = self.locked().refuse(account) {
            return Err(cause);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = closing => match self.locked().refuse(account) {
                Some(cause) => Err(cause),
                None => Ok(()),
            },
        }
    }

    /// Closes `account`'s lanes on `cause`, for good, and wakes the
    /// requests waiting in them. The first cause is the one kept.
    pub fn close(&self, account: &str, cause: &ApiError) {
        let mut lanes = self.locked();
        let gate = lanes.gate(account);
        if gate.closed.is_some() {
            return;
        }
        tracing::error!(
            account,
            status = cause.status,
            code = %cause.code,
            endpoint = cause.endpoint.as_str(),
            "the account cannot go on: its queued requests are dropped, no further request is sent for it"
        );
        gate.closed = Some(Closure {
            cause: cause.clone(),
            run: false,
            dropped: 0,
        });
        gate.wake.notify_waiters();
    }

    /// Closes every account's lanes on `cause` (an answer fatal for the
    /// run), those of accounts not seen yet included.
    pub fn close_all(&self, cause: &ApiError) {
        let mut lanes = self.locked();
        if lanes.run_closed.is_some() {
            return;
        }
        tracing::error!(
            status = cause.status,
            code = %cause.code,
            endpoint = cause.endpoint.as_str(),
            "the run cannot go on: every queued request is dropped, no further request is sent"
        );
        lanes.run_closed = Some(cause.clone());
        for gate in lanes.gates.values_mut() {
            if gate.closed.is_none() {
                gate.closed = Some(Closure {
                    cause: cause.clone(),
                    run: true,
                    dropped: 0,
                });
            }
            gate.wake.notify_waiters();
        }
    }

    /// The answer that closed the whole run, if one did; a request made
    /// for no account is refused after it.
    pub fn run_closed(&self) -> Option<ApiError> {
        self.locked().run_closed.clone()
    }

    /// Why `account`'s lanes are closed, if they are.
    pub fn closure(&self, account: &str) -> Option<Closure> {
        self.locked()
            .gates
            .get(account)
            .and_then(|g| g.closed.clone())
    }

    /// Every closed account, with why and what it dropped.
    pub fn closures(&self) -> BTreeMap<String, Closure> {
        self.locked()
            .gates
            .iter()
            .filter_map(|(account, gate)| Some((account.clone(), gate.closed.clone()?)))
            .collect()
    }

    /// The server refused a request of `account` with 429 and asked for
    /// `wait`: the lane closes until then (`jitter` more, so that accounts
    /// and runs refused together do not return together) and slows down.
    pub fn throttled(&self, account: &str, kind: Kind, wait: Duration, jitter: Duration) {
        self.with_lane(account, kind, |lane| {
            let until = Instant::now() + wait + jitter;
            lane.closed_until = lane.closed_until.max(until);
            lane.next = lane.next.max(lane.closed_until);
            lane.slow = (lane.slow * SLOW_DOWN).min(SLOWEST);
            lane.refused += 1;
        });
    }

    /// Answers of 429 so far, by account.
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        let lanes = self.locked();
        let mut by_account = BTreeMap::new();
        for ((account, _), lane) in lanes.lanes.iter() {
            *by_account.entry(account.clone()).or_default() += lane.refused;
        }
        by_account
    }

    /// An answer came back (any but a 429) after `latency`.
    pub fn answered(&self, account: &str, kind: Kind, latency: Duration) {
        self.with_lane(account, kind, |lane| {
            lane.slow = 1.0 + (lane.slow - 1.0) * (1.0 - RECOVER);
            let seconds = latency.as_secs_f64();
            lane.latency = Some(match lane.latency {
                Some(ewma) => ewma + 0.2 * (seconds - ewma),
                None => seconds,
            });
        });
    }

    /// How many reads of `account` to keep in flight so that its lane is
    /// never idle: its pace times the latency of its answers (Little's
    /// law), doubled for the time a task spends between two requests and
    /// for latency that varies; `cap` when the lane is unpaced, and up to 64
    /// while no latency is known (the lane spaces them: starting wide only
    /// avoids a slow first round trip). More than needed costs nothing but memory (the
    /// lane spaces them all the same); fewer leaves the limit unused.
    pub fn in_flight(&self, account: &str, cap: usize) -> usize {
        let cap = cap.max(1);
        let Some(interval) = self.limits.interval(Kind::Get) else {
            return cap;
        };
        let (latency, slow) = self.with_lane(account, Kind::Get, |lane| (lane.latency, lane.slow));
        let Some(latency) = latency else {
            return cap.min(64);
        };
        let rate = 1.0 / (interval.as_secs_f64() * slow);
        let wanted = (rate * latency * 2.0).ceil() as usize + 8;
        wanted.clamp(1, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_one_interval_apart_at_the_headroom() {
        let pacer = Pacer::new(Limits {
            get_per_sec: 100.0,
            post_per_min: 60.0,
        });
        let start = tokio::time::Instant::now();
        for _ in 0..98 {
            pacer.acquire("a", Kind::Get).await.unwrap();
        }
        // 97 intervals of 1 / 97 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= ms(999) && elapsed <= ms(1_001), "{elapsed:?}");
        // Posts: 60/min at 97% is one every 1.031 s.
        let start = tokio::time::Instant::now();
        pacer.acquire("a", Kind::Post).await.unwrap();
        pacer.acquire("a", Kind::Post).await.unwrap();
        let elapsed = start.elapsed();
        assert!(elapsed >= ms(1_030) && elapsed <= ms(1_032), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_back_its_account_only_and_waiters_check_again() {
        let pacer = std::sync::Arc::new(Pacer::new(Limits {
            get_per_sec: 10.0,
            post_per_min: 0.0,
        }));
        let start = tokio::time::Instant::now();
        pacer.acquire("a", Kind::Get).await.unwrap();
        pacer.answered("a", Kind::Get, ms(1_000));
        let before = pacer.in_flight("a", 64);
        // A request reserves the next slot (~105 ms), then a 429 closes the
        // lane for 2 s: it waits the 2 s, not just its slot.
        let waiter = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.acquire("a", Kind::Get).await })
        };
        tokio::time::sleep(ms(10)).await;
        pacer.throttled("a", Kind::Get, Duration::from_secs(2), ms(100));
        waiter.await.unwrap().unwrap();
        assert!(start.elapsed() >= ms(2_100), "{:?}", start.elapsed());
        // Another account was never held back.
        let other = tokio::time::Instant::now();
        pacer.acquire("b", Kind::Get).await.unwrap();
        assert_eq!(other.elapsed(), Duration::ZERO);
        // The refused account is slower now, and recovers with answers.
        let slowed = pacer.in_flight("a", 64);
        assert!(slowed < before, "{slowed} {before}");
        for _ in 0..200 {
            pacer.answered("a", Kind::Get, ms(1_000));
        }
        assert!(pacer.in_flight("a", 64) > slowed);
    }

    fn cause(status: u16, code: &str) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            endpoint: crate::api::Endpoint::History,
            request_id: None,
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_account_drops_its_queue_at_once_and_others_go_on() {
        let pacer = std::sync::Arc::new(Pacer::new(Limits {
            get_per_sec: 10.0,
            post_per_min: 0.0,
        }));
        // Ten requests queue up, the last about a second away.
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.acquire("a", Kind::Get).await })
            })
            .collect();
        let backoff = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.sleep("a", Duration::from_secs(30)).await })
        };
        tokio::time::sleep(ms(1)).await;
        let closed_at = tokio::time::Instant::now();
        pacer.close("a", &cause(429, "x_daily_limit"));
        let mut sent = 0;
        for waiter in waiters {
            match waiter.await.unwrap() {
                Ok(_) => sent += 1,
                Err(e) => assert_eq!(e.code, "x_daily_limit"),
            }
        }
        assert!(backoff.await.unwrap().is_err());
        // Woken at once, not at their slots; only the one with the free
        // slot left before the close.
        assert_eq!(closed_at.elapsed(), Duration::ZERO);
        assert_eq!(sent, 1);
        // Later requests are refused too, and counted.
        assert!(pacer.acquire("a", Kind::Post).await.is_err());
        let closure = pacer.closure("a").unwrap();
        assert_eq!((closure.dropped, closure.run), (9 + 1 + 1, false));
        // The other account goes on.
        assert!(pacer.acquire("b", Kind::Get).await.is_ok());
        assert!(pacer.closure("b").is_none() && pacer.run_closed().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_wide_answer_closes_every_account_even_new_ones() {
        let pacer = Pacer::new(Limits::default());
        pacer.acquire("a", Kind::Get).await.unwrap();
        pacer.close_all(&cause(401, "unauthenticated"));
        assert!(pacer.acquire("a", Kind::Get).await.is_err());
        assert!(pacer.acquire("new", Kind::Get).await.is_err());
        let closures = pacer.closures();
        assert_eq!(closures.len(), 2);
        assert!(closures.values().all(|c| c.run && c.dropped == 1));
        assert_eq!(pacer.run_closed().unwrap().status, 401);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_leave_late_do_not_burst_past_the_limit() {
        let pacer = std::sync::Arc::new(Pacer::new(Limits {
            get_per_sec: 100.0,
            post_per_min: 0.0,
        }));
        let start = tokio::time::Instant::now();
        let waiters: Vec<_> = (0..30)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.acquire("a", Kind::Get).await.unwrap();
                    tokio::time::Instant::now()
                })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // The process stalls for 200 ms: about 20 slots fall due meanwhile.
        tokio::time::advance(ms(200)).await;
        let mut left = Vec::new();
        for waiter in waiters {
            left.push(waiter.await.unwrap());
        }
        left.sort();
        // Only the headroom (3% of 100/s, 3 requests) leaves at once; the
        // others follow one interval apart, so no window of the server
        // counts more than the limit.
        let at_once = left.iter().filter(|t| **t == start + ms(200)).count();
        assert!((1..=3).contains(&at_once), "{at_once} left at once");
        let after: Vec<_> = left.iter().filter(|t| **t > start + ms(200)).collect();
        for pair in after.windows(2) {
            assert!(*pair[1] - *pair[0] >= ms(10), "{:?}", *pair[1] - *pair[0]);
        }
    }

    #[test]
    fn in_flight_follows_latency() {
        let pacer = Pacer::new(Limits::default());
        assert_eq!(pacer.in_flight("a", 256), 64);
        pacer.answered("a", Kind::Get, ms(100));
        // 291/s x 0.1 s x 2 + 8 = 67.
        assert_eq!(pacer.in_flight("a", 256), 67);
        assert_eq!(pacer.in_flight("a", 16), 16);
        let unpaced = Pacer::new(Limits::unlimited());
        assert_eq!(unpaced.in_flight("a", 64), 64);
    }
}
