//! The API client against a scripted server: which failures are retried and
//! how often, the waits it honours, the Idempotency-Key it reuses, and the
//! write-action polling.

use std::time::Duration;

use serde_json::json;
use xquik_dm::api::types::SendDmRequest;
use xquik_dm::{
    Account, ApiKey, Client, ClientConfig, Error, IdempotencyKey, RetryPolicy, UserRef,
};

use crate::scripted::{Answer, Scripted, flaky_tcp};

const KEY: &str = "test-key-5f2c9a";

fn client(base_url: &str, retry: RetryPolicy) -> Client {
    crate::init();
    let mut config = ClientConfig::new(base_url, ApiKey::new(KEY).unwrap());
    config.retry = retry;
    config.timeout = Duration::from_secs(5);
    Client::new(config).unwrap()
}

fn profile() -> Answer {
    Answer::json(
        200,
        json!({"id": "42", "username": "jack", "name": "Jack", "canDm": true}),
    )
}

fn acme() -> Account {
    Account::parse("acme").unwrap()
}

#[tokio::test]
async fn retried_failures_are_retried_until_success() {
    for (status, code) in [
        (429, "rate_limit_exceeded"),
        (429, "x_rate_limited"),
        (503, "x_transient_error"),
        (503, "write_tracking_unavailable"),
        (502, "x_api_unavailable"),
        (424, "x_api_unavailable"),
    ] {
        let server = Scripted::start(vec![
            Answer::error(status, code),
            Answer::error(status, code),
            profile(),
        ])
        .await;
        let c = client(&server.base_url(), RetryPolicy::fast());
        let reply = c.user(&UserRef::Id("42".into()), None).await.unwrap();
        assert_eq!(server.calls(), 3, "{status} {code}");
        assert_eq!(reply.meta.attempts, 3);
        assert_eq!(reply.meta.status, 200);
        assert_eq!(reply.value.username, "jack");
    }
}

#[tokio::test]
async fn other_client_errors_are_never_retried() {
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
        (429, "x_daily_limit"),
        (500, "internal_error"),
    ] {
        let server = Scripted::start(vec![Answer::error(status, code), profile()]).await;
        let c = client(&server.base_url(), RetryPolicy::fast());
        let err = c.user(&UserRef::Id("42".into()), None).await.unwrap_err();
        assert_eq!(server.calls(), 1, "{status} {code} was retried");
        let Error::Api(api) = &err else {
            panic!("{status} {code}: {err}")
        };
        assert_eq!((api.status, api.code.as_str()), (status, code));
        assert!(!err.to_string().contains(KEY));
    }
}

#[tokio::test]
async fn structured_error_objects_are_read() {
    let server = Scripted::start(vec![Answer::json(
        403,
        json!({"error": {"code": "account_needs_reauth", "message": "m", "type": "permission_error"}}),
    )])
    .await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    let err = c.user(&UserRef::Id("42".into()), None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("403 account_needs_reauth: reconnect the sender account"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test]
async fn attempts_are_bounded() {
    let server = Scripted::start(vec![Answer::error(503, "x_transient_error"); 10]).await;
    let policy = RetryPolicy {
        max_attempts: 4,
        ..RetryPolicy::fast()
    };
    let c = client(&server.base_url(), policy);
    let err = c.user(&UserRef::Id("42".into()), None).await.unwrap_err();
    assert_eq!(server.calls(), 4);
    let Error::RetriesExhausted { attempts, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(attempts, 4);
}

#[tokio::test]
async fn a_wait_beyond_the_time_budget_gives_up_at_once() {
    let server = Scripted::start(vec![
        Answer::error(429, "rate_limit_exceeded").header("retry-after", "30"),
        profile(),
    ])
    .await;
    let policy = RetryPolicy {
        max_server_wait: Duration::from_secs(60),
        max_elapsed: Duration::from_millis(200),
        ..RetryPolicy::fast()
    };
    let c = client(&server.base_url(), policy);
    let started = std::time::Instant::now();
    let err = c.user(&UserRef::Id("42".into()), None).await.unwrap_err();
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 1, .. }),
        "{err}"
    );
    assert_eq!(server.calls(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn server_requested_waits_are_honoured_and_capped() {
    let in_two_hours =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(7200));
    // (answer, expected wait): max_server_wait is 50 ms and the computed
    // backoff never exceeds 1 ms on the first retry, so each wait is exact.
    let cases = [
        (
            Answer::error(429, "rate_limit_exceeded").header("retry-after", "1"),
            50,
        ),
        (
            Answer::error(429, "rate_limit_exceeded").header("retry-after", in_two_hours),
            50,
        ),
        (
            Answer::json(
                429,
                json!({"error": "rate_limit_exceeded", "retryAfter": 60, "retryAfterMs": 30}),
            ),
            30,
        ),
        (
            Answer::json(
                503,
                json!({"error": "x_transient_error", "retryAfterMs": 12}),
            )
            .header("retry-after", "1"),
            12,
        ),
    ];
    for (answer, expected_ms) in cases {
        let server = Scripted::start(vec![answer, profile()]).await;
        let c = client(&server.base_url(), RetryPolicy::fast());
        let reply = c.user(&UserRef::Id("42".into()), None).await.unwrap();
        assert_eq!(reply.meta.waited, Duration::from_millis(expected_ms));
        assert_eq!(server.calls(), 2);
    }
}

#[tokio::test]
async fn retry_after_zero_still_backs_off() {
    let server = Scripted::start(vec![
        Answer::error(429, "rate_limit_exceeded").header("retry-after", "0"),
        Answer::error(429, "rate_limit_exceeded").header("retry-after", "0"),
        profile(),
    ])
    .await;
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(4),
        max_delay: Duration::from_millis(100),
        ..RetryPolicy::fast()
    };
    let c = client(&server.base_url(), policy);
    let reply = c.user(&UserRef::Id("42".into()), None).await.unwrap();
    // Retry 1 waits in [2, 4] ms, retry 2 in [4, 8] ms.
    assert!(
        reply.meta.waited >= Duration::from_millis(6),
        "{:?}",
        reply.meta.waited
    );
    assert!(
        reply.meta.waited <= Duration::from_millis(12),
        "{:?}",
        reply.meta.waited
    );
}

#[tokio::test]
async fn connection_resets_are_retried() {
    let (base_url, accepted) = flaky_tcp(
        2,
        Answer::json(200, json!({"id": "42", "username": "jack", "name": "Jack"})),
    )
    .await;
    let c = client(&base_url, RetryPolicy::fast());
    let reply = c
        .user(&UserRef::Username("jack".into()), None)
        .await
        .unwrap();
    assert_eq!(reply.value.can_dm, None);
    assert_eq!(reply.meta.attempts, 3);
    assert_eq!(*accepted.lock().unwrap(), 3);
}

#[tokio::test]
async fn a_refused_connection_ends_as_retries_exhausted() {
    // Bind then drop: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::fast()
    };
    let c = client(&format!("http://127.0.0.1:{port}/api/v1"), policy);
    let err = c.user(&UserRef::Id("42".into()), None).await.unwrap_err();
    let Error::RetriesExhausted { attempts, last, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(
            **last,
            Error::Transport {
                kind: "connection failed",
                ..
            }
        ),
        "{last}"
    );
    assert_eq!(err.exit_code(), 4);
}

#[tokio::test]
async fn a_write_reuses_one_idempotency_key_on_every_retry() {
    let server = Scripted::start(vec![
        Answer::error(503, "write_tracking_unavailable"),
        Answer::error(429, "rate_limit_exceeded").header("retry-after", "0"),
        Answer::error(502, "x_api_unavailable"),
        Answer::json(
            200,
            json!({"messageId": "1900000000000000001", "success": true}),
        ),
    ])
    .await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    let key = IdempotencyKey::derive(&[b"acme", b"42", b"hello"]);
    let request = SendDmRequest {
        account: "acme".into(),
        text: "hello".into(),
        media_ids: None,
    };
    let reply = c.send_dm("42", &request, &key).await.unwrap();
    assert_eq!(reply.value.message_id(), Some("1900000000000000001"));
    let received = server.received();
    assert_eq!(received.len(), 4);
    for r in &received {
        assert_eq!(r.method, "POST");
        assert_eq!(r.uri.path(), "/api/v1/x/dm/42");
        assert_eq!(r.headers["idempotency-key"], key.as_str());
        assert_eq!(r.headers["x-api-key"], KEY);
        assert_eq!(r.body, received[0].body);
    }
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body, json!({"account": "acme", "text": "hello"}));
}

#[tokio::test]
async fn accepted_writes_are_polled_until_terminal() {
    let accepted = json!({
        "object": "x_write_action", "id": "77", "writeActionId": "77", "action": "send_dm",
        "status": "dispatching", "terminal": false, "success": false,
        "statusUrl": "/api/v1/x/write-actions/77", "pollAfterMs": 1, "result": null
    });
    let pending = json!({
        "object": "x_write_action", "id": "77", "status": "pending_confirmation",
        "terminal": false, "success": false, "statusUrl": "/api/v1/x/write-actions/77"
    });
    let done = json!({
        "object": "x_write_action", "id": "77", "writeActionId": "77", "status": "success",
        "terminal": true, "success": true, "statusUrl": "/api/v1/x/write-actions/77",
        "result": {"type": "direct_message", "id": "1900000000000000777"}
    });
    let server = Scripted::start(vec![
        Answer::json(202, accepted)
            .header("location", "/api/v1/x/write-actions/77")
            .header("retry-after", "0"),
        Answer::json(202, pending).header("retry-after", "0"),
        Answer::json(200, done),
    ])
    .await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    let key = IdempotencyKey::try_new("job-1").unwrap();
    let request = SendDmRequest {
        account: "acme".into(),
        text: "hi".into(),
        media_ids: Some(["555".into()]),
    };
    let reply = c.send_dm("42", &request, &key).await.unwrap();
    assert_eq!(reply.value.message_id(), Some("1900000000000000777"));
    assert_eq!(reply.meta.attempts, 3);
    let paths: Vec<String> = server
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri.path()))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /api/v1/x/dm/42",
            "GET /api/v1/x/write-actions/77",
            "GET /api/v1/x/write-actions/77"
        ]
    );
    for r in server.received() {
        assert_eq!(r.headers["x-api-key"], KEY);
    }
}

#[tokio::test]
async fn a_failed_terminal_write_is_an_error_with_advice() {
    let failed = json!({
        "object": "x_write_action", "id": "78", "status": "failed", "terminal": true,
        "success": false, "error": "x_dm_not_allowed", "statusUrl": "/api/v1/x/write-actions/78"
    });
    let server = Scripted::start(vec![Answer::json(200, failed)]).await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    let key = IdempotencyKey::try_new("job-2").unwrap();
    let request = SendDmRequest {
        account: "acme".into(),
        text: "a private body".into(),
        media_ids: None,
    };
    let err = c.send_dm("42", &request, &key).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("write action 78 ended as failed (x_dm_not_allowed)"),
        "{text}"
    );
    assert!(!text.contains("a private body"));
    assert_eq!(err.exit_code(), 3);
}

#[tokio::test]
async fn status_urls_on_another_origin_are_not_followed() {
    let accepted = json!({
        "object": "x_write_action", "id": "79", "status": "accepted", "terminal": false,
        "success": false, "statusUrl": "https://attacker.example/steal"
    });
    let server =
        Scripted::start(vec![Answer::json(202, accepted).header("retry-after", "0")]).await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    let key = IdempotencyKey::try_new("job-3").unwrap();
    let err = c
        .upload_media_url(&acme(), "https://example.com/a.png", &key)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another origin"), "{err}");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn history_sends_account_and_opaque_cursor_verbatim() {
    let page = json!({"messages": [], "has_next_page": false, "next_cursor": ""});
    let server = Scripted::start(vec![
        Answer::json(200, page.clone()),
        Answer::json(200, page),
    ])
    .await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    c.history_page(&acme(), "42", None).await.unwrap();
    c.history_page(&acme(), "42", Some("DAAC+/=&x y"))
        .await
        .unwrap();
    let received = server.received();
    assert_eq!(received[0].uri.query(), Some("account=acme"));
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(received[1].uri.query().unwrap().as_bytes())
            .into_owned()
            .collect();
    assert_eq!(
        query,
        [
            ("account".to_owned(), "acme".to_owned()),
            ("cursor".to_owned(), "DAAC+/=&x y".to_owned())
        ]
    );
}

#[tokio::test]
async fn multipart_upload_sends_account_and_file() {
    let server = Scripted::start(vec![Answer::json(
        200,
        json!({"mediaId": "1234567890123456789", "mediaUrl": "https://pbs.twimg.com/media/x.png", "success": true}),
    )])
    .await;
    let c = client(&server.base_url(), RetryPolicy::fast());
    let key = IdempotencyKey::try_new("media-1").unwrap();
    let reply = c
        .upload_media_file(
            &acme(),
            "x.png",
            "image/png",
            b"\x89PNG fake".to_vec(),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(reply.value.media_id(), Some("1234567890123456789"));
    let r = &server.received()[0];
    let content_type = r.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("multipart/form-data"),
        "{content_type}"
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("name=\"account\"\r\n\r\nacme"), "{body}");
    assert!(body.contains("filename=\"x.png\""), "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("content-type: image/png"),
        "{body}"
    );
    assert!(body.contains("\u{FFFD}PNG fake"), "{body}");
    assert_eq!(r.headers["idempotency-key"], "media-1");
}

#[tokio::test]
async fn a_429_holds_back_every_request_of_that_account() {
    let page = json!({"messages": [], "has_next_page": false, "next_cursor": ""});
    let server = Scripted::start(vec![
        Answer::json(
            429,
            json!({"error": "rate_limit_exceeded", "retryAfterMs": 300}),
        ),
        Answer::json(200, page.clone()),
        Answer::json(200, page),
    ])
    .await;
    let policy = RetryPolicy {
        max_attempts: 1,
        max_server_wait: Duration::from_secs(5),
        ..RetryPolicy::fast()
    };
    let c = client(&server.base_url(), policy);
    // The first request gives up at once (one attempt), but the server
    // asked the account to wait 300 ms.
    let failed_at = std::time::Instant::now();
    assert!(c.history_page(&acme(), "42", None).await.is_err());
    // Another account is not held back...
    let other = Account::parse("other").unwrap();
    let free = c.history_page(&other, "44", None).await.unwrap();
    assert_eq!(free.meta.waited, Duration::ZERO);
    // ...but the same account is, whichever conversation asks.
    let reply = c.history_page(&acme(), "43", None).await.unwrap();
    assert!(
        failed_at.elapsed() >= Duration::from_millis(290),
        "{:?}",
        failed_at.elapsed()
    );
    assert!(
        reply.meta.waited >= Duration::from_millis(100),
        "{:?}",
        reply.meta.waited
    );
}
