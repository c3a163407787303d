//! HTTP-level tests of the mock: a real `MockServer` on `127.0.0.1:0`, driven
//! with reqwest, one test per behaviour the rest of the crate relies on.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use super::*;

const KEY: &str = "xq_test_key";
const ACCOUNT: &str = "acme_support";
const ACCOUNT_ID: &str = "1612345678901234567";
const ADA: &str = "2244994945";
const GRACE: &str = "783214";
const MINA: &str = "1098765432109876543";
const QUINN: &str = "44196397";
const NEW: &str = "1349149096909668363";
const SAM: &str = "5551234";

/// The demo world behind a fixed key.
fn config() -> MockConfig {
    MockConfig {
        api_key: Some(KEY.to_owned()),
        ..MockConfig::demo()
    }
}

fn faults(faults: Faults) -> MockConfig {
    MockConfig { faults, ..config() }
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    fn page(&self) -> (Vec<MockMessage>, bool, String) {
        let messages = serde_json::from_value(self.body["messages"].clone()).expect("messages");
        let has_next = self.body["has_next_page"].as_bool().expect("has_next_page");
        let cursor = self.body["next_cursor"]
            .as_str()
            .expect("next_cursor")
            .to_owned();
        (messages, has_next, cursor)
    }
}

struct Harness {
    server: MockServer,
    client: reqwest::Client,
}

impl Harness {
    async fn new(config: MockConfig) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Harness {
            server: MockServer::start(config).await.expect("mock starts"),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Reply {
        self.send(
            self.client
                .get(self.url(path))
                .header("x-api-key", KEY)
                .query(query),
        )
        .await
    }

    async fn user(&self, id: &str) -> Reply {
        self.get(&format!("/x/users/{id}"), &[]).await
    }

    async fn page(&self, user: &str, cursor: Option<&str>) -> Reply {
        let mut query = vec![("account", ACCOUNT)];
        query.extend(cursor.map(|c| ("cursor", c)));
        self.get(&format!("/x/dm/{user}/history"), &query).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        let request = self
            .client
            .post(self.url(path))
            .header("x-api-key", KEY)
            .header("idempotency-key", key)
            .json(&body);
        self.send(request).await
    }

    async fn dm(&self, user: &str, key: &str, body: Value) -> Reply {
        self.post(&format!("/x/dm/{user}"), key, body).await
    }

    async fn upload(&self, key: &str, bytes: &[u8]) -> Reply {
        let part = Part::bytes(bytes.to_vec())
            .file_name("photo.png")
            .mime_str("image/png")
            .expect("mime");
        let form = Form::new().text("account", ACCOUNT).part("file", part);
        let request = self
            .client
            .post(self.url("/x/media"))
            .header("x-api-key", KEY)
            .header("idempotency-key", key)
            .multipart(form);
        self.send(request).await
    }

    /// Follows cursors until the end, or `max_pages`; returns the messages
    /// and the `(has_next_page, next_cursor)` of every page.
    async fn walk(&self, user: &str, max_pages: usize) -> (Vec<MockMessage>, Vec<(bool, String)>) {
        let (mut all, mut pages, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
        for _ in 0..max_pages {
            let reply = self.page(user, cursor.as_deref()).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            let (messages, has_next, next) = reply.page();
            all.extend(messages);
            pages.push((has_next, next.clone()));
            if !has_next || next.is_empty() {
                break;
            }
            cursor = Some(next);
        }
        (all, pages)
    }
}

fn dm_body(text: &str) -> Value {
    json!({ "account": ACCOUNT, "text": text })
}

fn field_paths(reply: &Reply) -> Vec<String> {
    reply.body["fieldErrors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn missing_or_wrong_key_is_unauthenticated() {
    let h = Harness::new(config()).await;
    let missing = h
        .send(h.client.get(h.url(&format!("/x/users/{ADA}"))))
        .await;
    let wrong = h
        .send(
            h.client
                .get(h.url(&format!("/x/users/{ADA}")))
                .header("x-api-key", "nope"),
        )
        .await;
    for reply in [&missing, &wrong] {
        assert_eq!(reply.status, 401);
        assert_eq!(reply.code(), "unauthenticated");
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"xquik\"")
        );
    }
    let bearer = h
        .send(
            h.client
                .get(h.url(&format!("/x/users/{ADA}")))
                .bearer_auth(KEY),
        )
        .await;
    assert_eq!(bearer.status, 200);
    let ledger = h.server.ledger();
    assert_eq!(ledger.calls_by_endpoint["GET /x/users/{id}"], 3);
    assert_eq!(ledger.credits_total, 1);
}

#[tokio::test]
async fn any_non_empty_key_opens_a_keyless_world() {
    let h = Harness::new(MockConfig::demo()).await;
    assert_eq!(h.user(ADA).await.status, 200);
    let empty = h
        .send(
            h.client
                .get(h.url(&format!("/x/users/{ADA}")))
                .header("x-api-key", ""),
        )
        .await;
    assert_eq!(empty.status, 401);
}

#[tokio::test]
async fn users_resolve_by_id_and_username() {
    let h = Harness::new(config()).await;
    let by_id = h.user(ADA).await;
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.body["username"], "ada_lovelace");
    assert_eq!(by_id.body["canDm"], true);
    assert!(by_id.body["followers"].is_u64());
    let by_name = h.user("GRACE_HOPPER").await;
    assert_eq!(by_name.body["id"], GRACE);
    let no_hint = h.user("mina_kato").await;
    assert_eq!(no_hint.body["id"], MINA);
    assert!(
        no_hint.body.get("canDm").is_none(),
        "canDm omitted when unknown"
    );
    assert_eq!(h.user(QUINN).await.body["canDm"], false);
}

#[tokio::test]
async fn unknown_user_is_404_and_malformed_is_400() {
    let h = Harness::new(config()).await;
    let unknown = h.user("nobody_here").await;
    assert_eq!((unknown.status, unknown.code()), (404, "user_not_found"));
    for bad in ["@ada_lovelace", "way_too_long_username", "a-b", "%20"] {
        let reply = h.user(bad).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_user_id"),
            "{bad}"
        );
    }
    assert_eq!(h.server.ledger().credits_total, 0);
}

#[tokio::test]
async fn paging_to_the_end_returns_exactly_the_history() {
    let h = Harness::new(config()).await;
    let (messages, pages) = h.walk(ADA, 100).await;
    assert_eq!(pages.len(), 12);
    assert_eq!(pages.last(), Some(&(false, String::new())));
    for (_, cursor) in &pages[..11] {
        assert!(cursor.parse::<u64>().is_err(), "opaque cursor {cursor}");
    }
    let truth = h.server.history(ACCOUNT, ADA);
    assert_eq!(truth.len(), 1200);
    assert_eq!(messages, truth);
    let ids: Vec<u64> = messages
        .iter()
        .map(|m| m.id.parse().expect("numeric"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    // The wire shape: camelCase keys, absent rather than null.
    let first = h.page(ADA, None).await.body["messages"][0].clone();
    assert!(first["senderId"].is_string() && first["receiverId"].is_string());
    assert!(
        first
            .as_object()
            .expect("object")
            .values()
            .all(|v| !v.is_null())
    );
    assert_eq!(
        h.server.ledger().credits_by_endpoint["GET /x/dm/{userId}/history"],
        1300
    );
}

#[tokio::test]
async fn empty_conversation_is_one_empty_last_page() {
    let h = Harness::new(config()).await;
    let (messages, pages) = h.walk(NEW, 5).await;
    assert!(messages.is_empty());
    assert_eq!(pages, vec![(false, String::new())]);
}

#[tokio::test]
async fn history_validates_before_reading() {
    let h = Harness::new(config()).await;
    let path = format!("/x/dm/{ADA}/history");
    let no_account = h.get(&path, &[]).await;
    assert_eq!(
        (no_account.status, no_account.code()),
        (400, "account_required")
    );
    assert!(
        no_account.body["message"]
            .as_str()
            .expect("message")
            .contains("?account=")
    );
    let blank = h.get(&path, &[("account", "")]).await;
    assert_eq!(blank.code(), "account_required");
    let bad_user = h.get("/x/dm/ada/history", &[("account", ACCOUNT)]).await;
    assert_eq!((bad_user.status, bad_user.code()), (400, "invalid_user_id"));
    let unknown = h.get(&path, &[("account", "someone_else")]).await;
    assert_eq!((unknown.status, unknown.code()), (404, "account_not_found"));
    let stranger = h.page(SAM, None).await;
    assert_eq!(
        (stranger.status, stranger.code()),
        (403, "dm_not_permitted")
    );
    // Handle spellings the API accepts.
    for spelling in ["@acme_support", "ACME_SUPPORT", ACCOUNT_ID] {
        assert_eq!(
            h.get(&path, &[("account", spelling)]).await.status,
            200,
            "{spelling}"
        );
    }
    assert_eq!(h.server.ledger().credits_total, 300);
}

#[tokio::test]
async fn forbidden_pair_is_403_even_with_a_conversation() {
    let h = Harness::new(faults(Faults {
        forbidden: vec![(ACCOUNT.to_owned(), GRACE.to_owned())],
        ..Faults::default()
    }))
    .await;
    let reply = h.page(GRACE, None).await;
    assert_eq!((reply.status, reply.code()), (403, "dm_not_permitted"));
    assert_eq!(h.page(ADA, None).await.status, 200);
}

#[tokio::test]
async fn tampered_cursor_is_400() {
    let h = Harness::new(config()).await;
    let (_, _, cursor) = h.page(ADA, None).await.page();
    let mut bytes = cursor.clone().into_bytes();
    bytes[2] = if bytes[2] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    for bad in [tampered.as_str(), "12345", "not a cursor"] {
        let reply = h.page(ADA, Some(bad)).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_input"),
            "{bad}"
        );
    }
    // A cursor of one conversation is no cursor of another.
    assert_eq!(h.page(GRACE, Some(&cursor)).await.status, 400);
}

#[tokio::test]
async fn cursors_stay_valid_after_new_messages_arrive() {
    let h = Harness::new(config()).await;
    let (_, _, cursor) = h.page(GRACE, None).await.page();
    let (before, _, _) = h.page(GRACE, Some(&cursor)).await.page();
    h.server.append_messages(ACCOUNT, GRACE, 7);
    let (after, _, _) = h.page(GRACE, Some(&cursor)).await.page();
    assert_eq!(before, after);
    let (newest, _, _) = h.page(GRACE, None).await.page();
    let truth = h.server.history(ACCOUNT, GRACE);
    assert_eq!(truth.len(), 357);
    assert_eq!(newest[..7], truth[..7]);
    assert_eq!(h.walk(GRACE, 10).await.0, truth);
}

#[tokio::test]
async fn legacy_max_id_pages_below_the_id() {
    let h = Harness::new(config()).await;
    let truth = h.server.history(ACCOUNT, GRACE);
    let reply = h
        .get(
            &format!("/x/dm/{GRACE}/history"),
            &[("account", ACCOUNT), ("maxId", &truth[9].id)],
        )
        .await;
    let (messages, has_next, _) = reply.page();
    assert_eq!(messages, truth[10..110]);
    assert!(has_next);
}

#[tokio::test]
async fn transient_rate_answers_some_requests_with_retryable_errors() {
    let h = Harness::new(MockConfig {
        seed: 7,
        ..faults(Faults {
            transient_rate: 0.5,
            ..Faults::default()
        })
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let reply = h.user(ADA).await;
        if reply.status == 429 {
            assert_eq!(reply.header("retry-after"), Some("1"));
        }
        statuses.push(reply.status);
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count() as u64;
    for status in [200, 429, 502, 503] {
        assert!(statuses.contains(&status), "{status} in {statuses:?}");
    }
    assert!(statuses.iter().all(|s| [200, 429, 502, 503].contains(s)));
    assert_eq!(h.server.ledger().credits_total, ok, "errors charge nothing");
    // The same seed and request sequence give the same faults.
    let again = Harness::new(MockConfig {
        seed: 7,
        ..faults(Faults {
            transient_rate: 0.5,
            ..Faults::default()
        })
    })
    .await;
    let mut replay = Vec::new();
    for _ in 0..60 {
        replay.push(again.user(ADA).await.status);
    }
    assert_eq!(statuses, replay);
}

#[tokio::test]
async fn fail_first_fails_with_each_status_then_succeeds() {
    for (status, code) in [
        (429, "rate_limit_exceeded"),
        (503, "x_transient_error"),
        (502, "x_api_unavailable"),
        (424, "x_api_unavailable"),
    ] {
        let h = Harness::new(faults(Faults {
            fail_first: 2,
            fail_status: Some(status),
            retry_after_ms: 1_500,
            ..Faults::default()
        }))
        .await;
        for _ in 0..2 {
            let reply = h.page(ADA, None).await;
            assert_eq!((reply.status, reply.code()), (status, code));
            if matches!(status, 429 | 503) {
                assert_eq!(reply.header("retry-after"), Some("2"));
                assert_eq!(reply.body["retryAfter"], 2);
                assert_eq!(reply.body["retryAfterMs"], 1_500);
            }
        }
        assert_eq!(h.page(ADA, None).await.status, 200);
        assert_eq!(h.server.ledger().credits_total, 100);
    }
}

#[tokio::test]
async fn fail_first_rotates_and_zero_wait_says_zero() {
    let h = Harness::new(faults(Faults {
        fail_first: 4,
        retry_after_ms: 0,
        ..Faults::default()
    }))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = h.user(ADA).await;
        if reply.status == 429 {
            assert_eq!(reply.header("retry-after"), Some("0"));
            assert_eq!(reply.body["retryAfterMs"], 0);
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses, [429, 503, 502, 424, 200]);
}

#[tokio::test]
async fn writes_fail_first_with_write_tracking_unavailable() {
    let h = Harness::new(faults(Faults {
        fail_first: 1,
        fail_status: Some(503),
        ..Faults::default()
    }))
    .await;
    let reply = h.dm(ADA, "k-1", dm_body("hello")).await;
    assert_eq!(
        (reply.status, reply.code()),
        (503, "write_tracking_unavailable")
    );
    assert_eq!(reply.body["safeToRetry"], false);
    assert!(h.server.sent().is_empty(), "no effect");
    assert_eq!(h.dm(ADA, "k-1", dm_body("hello")).await.status, 200);
    assert_eq!(h.server.sent().len(), 1);
}

#[tokio::test]
async fn lost_write_response_took_effect_and_replays() {
    let h = Harness::new(faults(Faults {
        lost_write_responses: 1,
        ..Faults::default()
    }))
    .await;
    let lost = h.dm(ADA, "key-lost", dm_body("did it arrive?")).await;
    assert_eq!(
        (lost.status, lost.code()),
        (503, "write_tracking_unavailable")
    );
    assert!(lost.header("retry-after").is_some());
    let sent = h.server.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(h.server.ledger().credits_total, 10);
    let retry = h.dm(ADA, "key-lost", dm_body("did it arrive?")).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.body["messageId"], sent[0].message_id.as_str());
    assert_eq!(retry.body["idempotent"], true);
    assert_eq!(h.server.sent().len(), 1);
    assert_eq!(h.server.ledger().credits_total, 10);
    assert_eq!(h.server.history(ACCOUNT, ADA)[0].id, sent[0].message_id);
}

#[tokio::test]
async fn overlap_repeats_the_tail_of_the_previous_page() {
    let h = Harness::new(MockConfig {
        page_size: 50,
        ..faults(Faults {
            overlap: 3,
            ..Faults::default()
        })
    })
    .await;
    let (first, _, cursor) = h.page(GRACE, None).await.page();
    let (second, _, _) = h.page(GRACE, Some(&cursor)).await.page();
    assert_eq!(first.len(), 50);
    assert_eq!(second.len(), 53);
    assert_eq!(second[..3], first[47..]);
    let (all, _) = h.walk(GRACE, 20).await;
    assert_eq!(all.len(), 350 + 6 * 3);
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<MockMessage> = all
        .into_iter()
        .filter(|m| seen.insert(m.id.clone()))
        .collect();
    assert_eq!(unique, h.server.history(ACCOUNT, GRACE));
}

#[tokio::test]
async fn unordered_pages_hold_the_same_messages_shuffled() {
    let h = Harness::new(faults(Faults {
        unordered: true,
        ..Faults::default()
    }))
    .await;
    let (page, _, cursor) = h.page(ADA, None).await.page();
    let truth = h.server.history(ACCOUNT, ADA);
    assert_ne!(page, truth[..100]);
    let mut sorted = page.clone();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.id.parse::<u64>().expect("numeric")));
    assert_eq!(sorted, truth[..100]);
    assert_eq!(
        h.page(ADA, None).await.page(),
        (page, true, cursor),
        "stable on retry"
    );
}

#[tokio::test]
async fn empty_pages_keep_their_place() {
    let h = Harness::new(MockConfig {
        page_size: 50,
        ..faults(Faults {
            empty_page_every: Some(3),
            ..Faults::default()
        })
    })
    .await;
    let (all, pages) = h.walk(GRACE, 30).await;
    assert_eq!(all, h.server.history(ACCOUNT, GRACE));
    assert_eq!(pages.len(), 7 + 3);
    // Page 3 is fetched with the cursor page 2 returned.
    let (messages, has_next, next) = h.page(GRACE, Some(&pages[1].1)).await.page();
    assert!(messages.is_empty() && has_next && !next.is_empty());
}

#[tokio::test]
async fn repeated_cursor_loops_back_to_an_earlier_page() {
    let h = Harness::new(MockConfig {
        page_size: 50,
        ..faults(Faults {
            repeated_cursor_after: Some(2),
            ..Faults::default()
        })
    })
    .await;
    let (_, pages) = h.walk(GRACE, 6).await;
    assert_eq!(pages.len(), 6, "a naive walk never ends");
    // Page 2 was fetched with pages[0].1; page 3 points back to it.
    assert_eq!(pages[2].1, pages[0].1);
    assert_eq!(pages[3].1, pages[1].1);
    assert!(pages.iter().all(|(has_next, _)| *has_next));
}

#[tokio::test]
async fn dangling_cursor_says_more_but_gives_no_cursor() {
    let h = Harness::new(MockConfig {
        page_size: 50,
        ..faults(Faults {
            dangling_cursor_after: Some(2),
            ..Faults::default()
        })
    })
    .await;
    let (all, pages) = h.walk(GRACE, 10).await;
    assert_eq!(all.len(), 150);
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[2], (true, String::new()));
}

#[tokio::test]
async fn latency_delays_every_response() {
    let h = Harness::new(faults(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    }))
    .await;
    let started = Instant::now();
    assert_eq!(h.user(ADA).await.status, 200);
    assert_eq!(
        h.send(h.client.get(h.url("/x/users/ada"))).await.status,
        401
    );
    assert!(started.elapsed() >= Duration::from_millis(40));
}

#[tokio::test]
async fn ledger_counts_credits_and_calls_by_endpoint() {
    let h = Harness::new(config()).await;
    h.user(ADA).await;
    h.page(ADA, None).await;
    h.page(SAM, None).await;
    let media = h.upload("m-1", b"\x89PNG fake").await;
    let media_id = media.body["mediaId"].as_str().expect("mediaId").to_owned();
    h.dm(
        ADA,
        "d-1",
        json!({ "account": ACCOUNT, "text": "hi", "media_ids": [media_id] }),
    )
    .await;
    let poll = h.get("/x/write-actions/100001", &[]).await;
    assert_eq!(poll.status, 200);
    let ledger = h.server.ledger();
    let credits: Vec<(&str, u64)> = ledger
        .credits_by_endpoint
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        credits,
        [
            ("GET /x/dm/{userId}/history", 100),
            ("GET /x/users/{id}", 1),
            ("POST /x/dm/{userId}", 10),
            ("POST /x/media", 10),
        ]
    );
    assert_eq!(ledger.credits_total, 121);
    let calls: Vec<(&str, u64)> = ledger
        .calls_by_endpoint
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET /x/dm/{userId}/history", 2),
            ("GET /x/users/{id}", 1),
            ("GET /x/write-actions/{id}", 1),
            ("POST /x/dm/{userId}", 1),
            ("POST /x/media", 1),
        ]
    );
    assert_eq!(ledger.responses_by_status[&200], 5);
    assert_eq!(ledger.responses_by_status[&403], 1);
}

#[tokio::test]
async fn credit_limit_refuses_with_402_and_charges_nothing() {
    let h = Harness::new(MockConfig {
        credit_limit: Some(105),
        ..config()
    })
    .await;
    assert_eq!(h.user(ADA).await.status, 200);
    let (_, _, cursor) = h.page(ADA, None).await.page();
    let refused = h.page(ADA, Some(&cursor)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (402, "insufficient_credits")
    );
    assert_eq!(refused.body["balance"], "4");
    assert_eq!(refused.body["required"], "100");
    assert_eq!(refused.body["top_up_url"], "POST /api/v1/credits/topup");
    assert!(refused.body["payment_options"]["credits"]["create_checkout"].is_object());
    let dm = h.dm(ADA, "k", dm_body("hi")).await;
    assert_eq!(dm.status, 402);
    assert!(h.server.sent().is_empty());
    assert_eq!(h.server.ledger().credits_total, 101);
    h.server.set_credit_limit(None);
    assert_eq!(h.page(ADA, Some(&cursor)).await.status, 200);
    assert_eq!(h.dm(ADA, "k", dm_body("hi")).await.status, 200);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let h = Harness::new(MockConfig {
        get_limit_per_sec: 3,
        post_limit_per_min: 2,
        ..config()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(h.page(GRACE, None).await.status, 200);
    }
    let limited = h.page(GRACE, None).await;
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limit_exceeded")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.body["retryAfter"], 1);
    let wait = limited.body["retryAfterMs"].as_u64().expect("retryAfterMs");
    assert!((1..=1_000).contains(&wait), "{wait}");
    // User lookups are bucketed by API key, not by account.
    assert_eq!(h.user(ADA).await.status, 200);
    for key in ["a", "b"] {
        assert_eq!(h.dm(ADA, key, dm_body(key)).await.status, 200);
    }
    let posts = h.dm(ADA, "c", dm_body("c")).await;
    assert_eq!(posts.status, 429);
    let seconds: u64 = posts
        .header("retry-after")
        .expect("header")
        .parse()
        .expect("int");
    assert!((1..=60).contains(&seconds));
    assert_eq!(h.server.ledger().credits_total, 301 + 20);
}

#[tokio::test]
async fn media_uploads_by_multipart_and_by_url() {
    let h = Harness::new(config()).await;
    let file = h.upload("up-1", b"\x89PNG\r\n\x1a\n pixels").await;
    assert_eq!(file.status, 200, "{}", file.body);
    assert_eq!(file.body["action"], "upload_media");
    assert_eq!(file.body["result"]["type"], "media");
    let media_id = file.body["mediaId"].as_str().expect("mediaId");
    assert_eq!(media_id.len(), 19);
    assert!(media_id.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        file.body["mediaUrl"]
            .as_str()
            .expect("url")
            .starts_with("https://")
    );
    let by_url = h
        .post(
            "/x/media",
            "up-2",
            json!({ "account": ACCOUNT, "url": "https://example.com/cat.gif" }),
        )
        .await;
    assert_eq!(by_url.status, 200);
    assert_ne!(by_url.body["mediaId"], file.body["mediaId"]);
    let http = h
        .post(
            "/x/media",
            "up-3",
            json!({ "account": ACCOUNT, "url": "http://example.com/cat.gif" }),
        )
        .await;
    assert_eq!((http.status, http.code()), (422, "media_download_failed"));
    let empty = h.upload("up-4", b"").await;
    assert_eq!(
        (empty.status, field_paths(&empty)),
        (400, vec!["file".to_owned()])
    );
    let unknown = h
        .post(
            "/x/media",
            "up-5",
            json!({ "account": "ghost", "url": "https://example.com/a.png" }),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "account_not_found"));
    let no_key = h
        .send(
            h.client
                .post(h.url("/x/media"))
                .header("x-api-key", KEY)
                .json(&json!({ "account": ACCOUNT, "url": "https://example.com/a.png" })),
        )
        .await;
    assert_eq!(no_key.status, 400);
    assert!(
        no_key.body["message"]
            .as_str()
            .expect("message")
            .contains("Idempotency-Key")
    );
    let bad_key = h
        .post(
            "/x/media",
            "has space",
            json!({ "account": ACCOUNT, "url": "https://e.com/a.png" }),
        )
        .await;
    assert_eq!((bad_key.status, bad_key.code()), (400, "invalid_input"));
    assert_eq!(h.server.ledger().credits_total, 20);
}

#[tokio::test]
async fn dm_send_refuses_invalid_requests() {
    let h = Harness::new(config()).await;
    let upload = h.upload("media", b"jpeg").await;
    let media_id = upload.body["mediaId"].as_str().expect("mediaId").to_owned();
    let long = "é".repeat(10_001);
    let cases = [
        (json!({ "account": ACCOUNT, "text": "" }), "text"),
        (json!({ "account": ACCOUNT }), "text"),
        (json!({ "account": ACCOUNT, "text": long }), "text"),
        (json!({ "text": "hi" }), "account"),
        (
            json!({ "account": ACCOUNT, "text": "hi", "media_ids": [] }),
            "media_ids",
        ),
        (
            json!({ "account": ACCOUNT, "text": "hi", "media_ids": [media_id, media_id] }),
            "media_ids",
        ),
        (
            json!({ "account": ACCOUNT, "text": "hi", "media_ids": ["1234567890123456789"] }),
            "media_ids[0]",
        ),
        (
            json!({ "account": ACCOUNT, "text": "hi", "reply_to_message_id": "1" }),
            "reply_to_message_id",
        ),
        (
            json!({ "account": ACCOUNT, "text": "hi", "mediaIds": [] }),
            "mediaIds",
        ),
    ];
    for (i, (body, path)) in cases.into_iter().enumerate() {
        let reply = h.dm(ADA, &format!("bad-{i}"), body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "invalid_input"),
            "case {i}"
        );
        assert!(
            field_paths(&reply).contains(&path.to_owned()),
            "case {i}: {}",
            reply.body
        );
        assert_eq!(reply.body["charged"], false);
        assert!(reply.header("x-request-id").is_some());
    }
    let bad_user = h.dm("ada_lovelace", "bad-user", dm_body("hi")).await;
    assert_eq!((bad_user.status, bad_user.code()), (400, "invalid_user_id"));
    let limit = "字".repeat(10_000);
    assert_eq!(h.dm(ADA, "exact", dm_body(&limit)).await.status, 200);
    assert_eq!(h.server.sent().len(), 1);
    assert_eq!(h.server.ledger().credits_total, 20);
}

#[tokio::test]
async fn recipients_x_refuses_are_422() {
    let h = Harness::new(config()).await;
    let closed = h.dm(QUINN, "q", dm_body("hi")).await;
    assert_eq!((closed.status, closed.code()), (422, "x_dm_not_allowed"));
    assert!(
        closed.body["message"]
            .as_str()
            .expect("message")
            .contains("allow messages")
    );
    let missing = h.dm("999", "m", dm_body("hi")).await;
    assert_eq!(
        (missing.status, missing.code()),
        (422, "x_target_not_found")
    );
    let unknown_account = h
        .dm(ADA, "a", json!({ "account": "ghost", "text": "hi" }))
        .await;
    assert_eq!(
        (unknown_account.status, unknown_account.code()),
        (404, "account_not_found")
    );
    assert_eq!(h.server.ledger().credits_total, 0);
}

#[tokio::test]
async fn idempotency_replays_the_same_write_and_refuses_a_different_one() {
    let h = Harness::new(config()).await;
    let first = h.dm(ADA, "same-key", dm_body("once")).await;
    let again = h.dm(ADA, "same-key", dm_body("once")).await;
    assert_eq!(first.status, 200);
    assert_eq!(again.status, 200);
    assert_eq!(first.body["messageId"], again.body["messageId"]);
    assert_eq!(first.body["id"], again.body["id"]);
    assert_eq!(again.body["idempotent"], true);
    assert_eq!(h.server.sent().len(), 1);
    assert_eq!(h.server.ledger().credits_total, 10);
    let other = h.dm(ADA, "same-key", dm_body("twice")).await;
    assert_eq!((other.status, other.code()), (409, "idempotency_conflict"));
    assert_eq!(other.body["nextAction"]["requiresNewIdempotencyKey"], true);
    assert_eq!(other.body["chargedCredits"], "0");
    assert!(other.header("x-request-id").is_some());
    let upload = h.upload("same-key", b"bytes").await;
    assert_eq!(upload.status, 409, "a key is bound to its action");
    assert_eq!(h.server.sent()[0].idempotency_key, "same-key");
}

#[tokio::test]
async fn legacy_write_mode_answers_the_older_shape() {
    let h = Harness::new(MockConfig {
        write_mode: WriteMode::Legacy,
        ..config()
    })
    .await;
    let upload = h.upload("u", b"gif89a").await;
    let keys: Vec<&String> = upload.body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["mediaId", "mediaUrl", "success"]);
    let dm = h
        .dm(
            ADA,
            "d",
            json!({ "account": ACCOUNT, "text": "hi", "media_ids": [upload.body["mediaId"]] }),
        )
        .await;
    assert_eq!(dm.status, 200);
    assert_eq!(dm.body["success"], true);
    assert_eq!(dm.body.as_object().expect("object").len(), 2);
    assert_eq!(dm.body["messageId"], h.server.sent()[0].message_id.as_str());
}

#[tokio::test]
async fn completed_write_mode_answers_a_terminal_record() {
    let h = Harness::new(config()).await;
    let dm = h.dm(ADA, "c", dm_body("hi")).await;
    assert_eq!(dm.status, 200);
    let record = &dm.body;
    assert_eq!(record["object"], "x_write_action");
    assert_eq!(record["action"], "send_dm");
    assert_eq!(
        (record["status"].as_str(), record["terminal"].as_bool()),
        (Some("success"), Some(true))
    );
    assert_eq!(record["result"]["type"], "direct_message");
    assert_eq!(record["result"]["id"], record["messageId"]);
    assert_eq!(record["targetId"], ADA);
    assert_eq!(record["chargedCredits"], "10");
    assert_eq!(record["account"]["username"], ACCOUNT);
    assert_eq!(record["request"]["hash"].as_str().map(str::len), Some(64));
    let location = dm.header("location").expect("location");
    assert_eq!(location, record["statusUrl"].as_str().expect("statusUrl"));
    let poll = h
        .send(
            h.client
                .get(format!("http://{}{location}", h.server.addr()))
                .header("x-api-key", KEY),
        )
        .await;
    assert_eq!(poll.status, 200);
    assert_eq!(poll.body["messageId"], record["messageId"]);
}

#[tokio::test]
async fn accepted_write_mode_completes_after_polls() {
    let h = Harness::new(MockConfig {
        write_mode: WriteMode::Accepted { polls: 2 },
        ..faults(Faults {
            retry_after_ms: 250,
            ..Faults::default()
        })
    })
    .await;
    let accepted = h.dm(ADA, "p", dm_body("hi")).await;
    assert_eq!(accepted.status, 202);
    assert_eq!(accepted.body["status"], "dispatching");
    assert_eq!(accepted.body["terminal"], false);
    assert_eq!(accepted.body["pollAfterMs"], 250);
    assert_eq!(accepted.header("retry-after"), Some("1"));
    assert!(accepted.body.get("messageId").is_none());
    let status_url = accepted.body["statusUrl"]
        .as_str()
        .expect("statusUrl")
        .to_owned();
    assert_eq!(accepted.header("location"), Some(status_url.as_str()));
    assert!(status_url.starts_with("/api/v1/x/write-actions/"));
    let path = status_url.trim_start_matches("/api/v1");
    let statuses = [h.get(path, &[]).await, h.get(path, &[]).await];
    assert!(statuses.iter().all(|r| r.status == 202));
    let done = h.get(path, &[]).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.body["terminal"], true);
    assert_eq!(
        done.body["messageId"],
        h.server.sent()[0].message_id.as_str()
    );
    let replay = h.dm(ADA, "p", dm_body("hi")).await;
    assert_eq!(
        (replay.status, replay.body["terminal"].as_bool()),
        (200, Some(true))
    );
    let unknown = h.get("/x/write-actions/424242", &[]).await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));
}

#[tokio::test]
async fn sent_dms_appear_in_history() {
    let h = Harness::new(config()).await;
    let newest_before: u64 = h.server.history(ACCOUNT, ADA)[0].id.parse().expect("id");
    let text = "multi\nline \"quoted\" 👩\u{200d}💻";
    let dm = h.dm(ADA, "s1", dm_body(text)).await;
    let message_id = dm.body["messageId"].as_str().expect("messageId");
    assert!(message_id.parse::<u64>().expect("id") > newest_before);
    let (page, _, _) = h.page(ADA, None).await.page();
    assert_eq!(page[0].id, message_id);
    assert_eq!(page[0].text.as_deref(), Some(text));
    assert_eq!(page[0].sender_id, ACCOUNT_ID);
    assert_eq!(page[0].receiver_id, ADA);

    let upload = h.upload("s2", b"png").await;
    let media = h
        .dm(NEW, "s3", json!({ "account": ACCOUNT, "text": "see attached", "media_ids": [upload.body["mediaId"]] }))
        .await;
    let history = h.server.history(ACCOUNT, NEW);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].id, media.body["messageId"].as_str().expect("id"));
    assert_eq!(
        history[0].media_url.as_deref(),
        upload.body["mediaUrl"].as_str()
    );
    let sent = h.server.sent();
    assert_eq!(
        sent[1].media_ids,
        [upload.body["mediaId"].as_str().expect("id")]
    );
    assert_eq!(sent[1].recipient_id, NEW);
    assert_eq!(sent[1].account, ACCOUNT);
}

#[tokio::test]
async fn structured_errors_nest_code_message_and_type() {
    let h = Harness::new(MockConfig {
        structured_errors: true,
        ..config()
    })
    .await;
    let stranger = h.page(SAM, None).await;
    assert_eq!(stranger.body["error"]["code"], "dm_not_permitted");
    assert_eq!(stranger.body["error"]["type"], "permission_error");
    assert!(stranger.body["error"]["message"].is_string());
    let unauthenticated = h.send(h.client.get(h.url("/x/users/ada"))).await;
    assert_eq!(
        unauthenticated.body["error"]["type"],
        "authentication_error"
    );
    // A legacy world answers structured errors to clients that ask for them.
    let legacy = Harness::new(config()).await;
    let asked = legacy
        .send(
            legacy
                .client
                .get(legacy.url("/x/users/nobody"))
                .header("x-api-key", KEY)
                .header("xquik-api-contract", "2026-04-29"),
        )
        .await;
    assert_eq!(asked.body["error"]["code"], "user_not_found");
    assert_eq!(asked.body["error"]["type"], "invalid_request_error");
    assert_eq!(legacy.user("nobody").await.body["error"], "user_not_found");
}

#[tokio::test]
async fn unknown_routes_are_404_and_every_response_has_a_request_id() {
    let h = Harness::new(config()).await;
    let reply = h.get("/x/tweets", &[]).await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
    let ids = [
        reply.header("x-request-id").map(str::to_owned),
        h.user(ADA).await.header("x-request-id").map(str::to_owned),
    ];
    assert!(ids.iter().all(Option::is_some));
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn same_seed_same_world() {
    let a = Harness::new(MockConfig {
        seed: 99,
        ..config()
    })
    .await;
    let b = Harness::new(MockConfig {
        seed: 99,
        ..config()
    })
    .await;
    let c = Harness::new(MockConfig {
        seed: 100,
        ..config()
    })
    .await;
    assert_eq!(
        a.server.history(ACCOUNT, ADA),
        b.server.history(ACCOUNT, ADA)
    );
    assert_ne!(
        a.server.history(ACCOUNT, ADA),
        c.server.history(ACCOUNT, ADA)
    );
    assert_eq!(a.page(MINA, None).await.body, b.page(MINA, None).await.body);
    assert_eq!(a.user(ADA).await.body, b.user(ADA).await.body);
}

#[tokio::test]
async fn inconsistent_config_is_refused() {
    let orphan = MockConfig {
        conversations: vec![MockConversation {
            account: "ghost".to_owned(),
            user_id: ADA.to_owned(),
            messages: 1,
        }],
        ..config()
    };
    let error = MockServer::start(orphan).await.expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let h = Harness::new(config()).await;
    assert_eq!(h.user(ADA).await.status, 200);
    let url = h.url(&format!("/x/users/{ADA}"));
    h.server.shutdown().await;
    assert!(
        h.client
            .get(url)
            .header("x-api-key", KEY)
            .send()
            .await
            .is_err()
    );
}

/// Serving rate with the client in the same process: run with
/// `cargo test --release serving_rate -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn serving_rate() {
    let pages = 2_000u64;
    let h = Harness::new(MockConfig {
        get_limit_per_sec: 0,
        conversations: vec![MockConversation {
            account: ACCOUNT.to_owned(),
            user_id: ADA.to_owned(),
            messages: pages * 100,
        }],
        ..config()
    })
    .await;
    // A typed client, as the product's is: no intermediate `Value`.
    #[derive(serde::Deserialize)]
    struct Wire {
        messages: Vec<MockMessage>,
        has_next_page: bool,
        next_cursor: String,
    }
    let url = h.url(&format!("/x/dm/{ADA}/history"));
    let (mut count, mut cursor) = (0u64, String::new());
    let started = Instant::now();
    loop {
        let bytes = h
            .client
            .get(&url)
            .header("x-api-key", KEY)
            .query(&[("account", ACCOUNT), ("cursor", &cursor)])
            .send()
            .await
            .expect("request")
            .bytes()
            .await
            .expect("body");
        let page: Wire = serde_json::from_slice(&bytes).expect("page");
        count += page.messages.len() as u64;
        if !page.has_next_page {
            break;
        }
        cursor = page.next_cursor;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(count, pages * 100);
    println!(
        "{count} messages in {elapsed:.2}s: {:.0} messages/s, {:.0} pages/s",
        count as f64 / elapsed,
        pages as f64 / elapsed
    );
}
