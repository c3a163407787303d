//! Pacing against the embedded mock with its rate limits on: what reached
//! the mock is read from its request log (arrival times per account), not
//! from timings measured here.

use std::time::Duration;

use xquik_dm::api::pace::Limits;
use xquik_dm::commands::send::{self, BatchLine, SendRequest};
use xquik_dm::commands::sync::{self, Target};
use xquik_dm::mock::{Faults, LoggedRequest, MockAccount, MockConversation, MockServer};
use xquik_dm::{Account, UserRef};

use crate::{ACCOUNT, sync_options, user_id, users, world};

/// The most requests of `bucket` that arrived within any one window of
/// `span` (a sliding window: every request starts one).
fn busiest_window(log: &[LoggedRequest], bucket: &str, span: Duration) -> usize {
    let times: Vec<Duration> = log
        .iter()
        .filter(|r| r.bucket == bucket)
        .map(|r| r.at)
        .collect();
    let mut most = 0;
    let mut end = 0;
    for (start, t) in times.iter().enumerate() {
        while end < times.len() && times[end] < *t + span {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

/// A sync of many conversations at the mock's limit draws (almost) no 429,
/// and no one-second window holds more of the account's requests than its
/// limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_paced_sync_stays_under_the_limit_in_every_window() {
    let mut config = world(&[50; 30], 10);
    config.get_limit_per_sec = 100;
    config.faults.latency = Duration::from_millis(20);
    config.faults.latency_jitter = Duration::from_millis(20);
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = sync_options(&server, dir.path(), &users(30));
    options.concurrency = 64;
    options.api.pace = Limits {
        get_per_sec: 100.0,
        post_per_min: 0.0,
    };
    let report = sync::run(options).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(report.new_messages, 1_500);
    let log = server.request_log();
    let limited = log.iter().filter(|r| r.limited).count();
    assert!(
        limited * 100 <= log.len(),
        "{limited} of {} answered 429",
        log.len()
    );
    let busiest = busiest_window(&log, ACCOUNT, Duration::from_secs(1));
    assert!(busiest <= 100, "{busiest} requests in one second");
    // The pace, not a fixed concurrency, bounded it: more than one
    // conversation was in flight at 20-40 ms per answer.
    assert!(
        busiest >= 60,
        "only {busiest} requests in the busiest second"
    );
}

/// One account throttled hard by the server does not hold back another
/// account of the same job: that one finishes at its own pace, with no
/// 429, while the throttled one is still being refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_account_does_not_slow_another() {
    let mut config = world(&[], 10);
    config.accounts.push(MockAccount {
        handle: "other".into(),
        user_id: "1612345678901234999".into(),
    });
    for i in 1..=8 {
        config.users.push(xquik_dm::mock::MockUser {
            id: user_id(i),
            username: format!("user{i}"),
            name: format!("User {i}"),
            can_dm: Some(true),
        });
        for (account, messages) in [(ACCOUNT, 20), ("other", 100)] {
            config.conversations.push(MockConversation {
                account: account.into(),
                user_id: user_id(i),
                messages,
            });
        }
    }
    config.get_limit_per_sec = 100;
    config.faults = Faults {
        get_limits: vec![(ACCOUNT.into(), 3)],
        retry_after_ms: 300,
        latency: Duration::from_millis(5),
        ..Faults::default()
    };
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = sync_options(&server, dir.path(), &[]);
    options.targets = [ACCOUNT, "other"]
        .iter()
        .flat_map(|account| {
            (1..=8).map(move |i| Target {
                account: Account::parse(account).unwrap(),
                user: UserRef::Id(user_id(i)),
            })
        })
        .collect();
    options.api.pace = Limits {
        get_per_sec: 100.0,
        post_per_min: 0.0,
    };
    options.api.retry.max_attempts = 4;
    let report = sync::run(options).await.unwrap();
    let other: Vec<_> = report
        .conversations
        .iter()
        .filter(|c| c.account == "other")
        .collect();
    assert!(
        other
            .iter()
            .all(|c| c.status == sync::ConversationStatus::Complete),
        "{report}"
    );
    let log = server.request_log();
    let of = |bucket: &'static str| log.iter().filter(move |r| r.bucket == bucket);
    assert_eq!(of("other").filter(|r| r.limited).count(), 0);
    assert!(of(ACCOUNT).filter(|r| r.limited).count() > 0);
    assert_eq!(of("other").count(), 80);
    let other_done = of("other").map(|r| r.at).max().unwrap();
    let throttled_last = of(ACCOUNT).map(|r| r.at).max().unwrap();
    assert!(
        other_done < throttled_last,
        "the free account finished at {other_done:?}, after the throttled one's last request at {throttled_last:?}"
    );
    // 80 requests at 95 a second take about 0.85 s: the free account kept
    // its pace while the other was held back.
    let other_first = of("other").map(|r| r.at).min().unwrap();
    assert!(
        other_done - other_first < Duration::from_secs(3),
        "{:?}",
        other_done - other_first
    );
}

/// A batch of sends is paced at the account's write limit: the mock counts
/// "per minute" in a window shortened to one second here (10 per second
/// stands for 600 per minute), and refuses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sends_are_paced_at_the_write_limit_without_a_429() {
    let mut config = world(&[5], 10);
    config.post_limit_per_min = 10;
    config.post_window = Duration::from_secs(1);
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines = (0..25)
        .map(|i| {
            BatchLine::Valid(
                SendRequest::validate(
                    ACCOUNT,
                    &user_id(1),
                    &format!("paced {i}"),
                    None,
                    None,
                    None,
                )
                .unwrap(),
            )
        })
        .collect();
    let mut options = crate::send_options(&server, dir.path(), lines);
    options.api.pace = Limits {
        get_per_sec: 0.0,
        post_per_min: 600.0,
    };
    let report = send::run(options).await.unwrap();
    assert_eq!(report.exit_code(), 0);
    let log = server.request_log();
    let posts: Vec<_> = log.iter().filter(|r| r.post).collect();
    assert_eq!(posts.len(), 25);
    assert!(
        posts.iter().all(|r| !r.limited),
        "a send was refused with 429"
    );
    let busiest = busiest_window(&log, ACCOUNT, Duration::from_secs(1));
    assert!(busiest <= 10, "{busiest} sends in one second");
}
