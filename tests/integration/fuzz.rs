//! Property-based fuzzing of every parser that reads bytes the API or a
//! file supplies: none may panic; each parses or returns an error. Inputs
//! are both raw bytes and structured-but-hostile JSON (values of the wrong
//! type, huge numbers, deep nesting, odd strings), so that the parsers are
//! exercised past the first byte.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;
use xquik_dm::api::types::{ErrorBody, HistoryPage};
use xquik_dm::checkpoint::Checkpoint;
use xquik_dm::cli::job::JobFile;
use xquik_dm::cli::send::parse_batch;
use xquik_dm::storage::Backend;
use xquik_dm::storage::local::LocalDir;

/// Cases per target (`PROPTEST_CASES` overrides).
fn cases(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings an attacker would try: IDs that are not IDs, paths, controls,
/// huge digit runs, Unicode.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("../../../../tmp/evil".to_owned()),
        Just("1/2".to_owned()),
        Just("9".repeat(400)),
        Just("-1".to_owned()),
        Just("\u{0}\u{1b}[31m".to_owned()),
        "[0-9]{1,25}",
        ".{0,40}",
    ]
}

/// Arbitrary JSON values, a few levels deep, biased towards the fields the
/// parsers look for.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(Value::from(u64::MAX)),
        odd_string().prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("messages"),
        Just("has_next_page"),
        Just("next_cursor"),
        Just("id"),
        Just("senderId"),
        Just("receiverId"),
        Just("text"),
        Just("createdAt"),
        Just("mediaUrl"),
        Just("error"),
        Just("code"),
        Just("message"),
        Just("retryAfter"),
        Just("retryAfterMs"),
        Just("version"),
        Just("jsonl"),
        Just("conversations"),
        Just("x"),
    ]
    .prop_map(str::to_owned);
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A history page whose messages have hostile fields.
fn hostile_page() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        odd_string().prop_map(Value::String),
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
    ];
    let message = (
        odd_string(),
        odd_string(),
        odd_string(),
        field.clone(),
        field,
    )
        .prop_map(|(id, sender, receiver, text, created)| {
            serde_json::json!({"id": id, "senderId": sender, "receiverId": receiver,
                               "text": text, "createdAt": created})
        });
    (
        prop::collection::vec(message, 0..20),
        prop_oneof![any::<bool>().prop_map(Value::Bool), Just(Value::Null), Just(Value::from("yes"))],
        odd_string(),
    )
        .prop_map(|(messages, more, cursor)| {
            serde_json::json!({"messages": messages, "has_next_page": more, "next_cursor": cursor})
        })
}

fn bytes_or_json() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    ]
}

/// What the sync does with a page's bytes, up to the rows it would write.
fn consume_page(bytes: &[u8]) {
    let Ok(page) = HistoryPage::from_body(bytes) else {
        return;
    };
    let mut guard = xquik_dm::api::pagination::PageGuard::new(None, 5);
    let _ = guard.next(
        page.messages.iter().map(|m| &*m.id),
        page.has_next_page,
        &page.next_cursor,
    );
    let mut batch = xquik_dm::records::HistoryBatch::default();
    for message in &page.messages {
        if xquik_dm::normalize::invalid_id_field(message).is_none() {
            let row = xquik_dm::normalize::normalize(message, "acme", "42").row;
            assert!(xquik_dm::normalize::is_valid_id(row.message_id));
            batch.push(&row);
        }
    }
    // Every line written reads back as the row it was written from.
    let lines: Vec<&[u8]> = batch.lines().split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), batch.len());
    for (line, row) in lines.into_iter().zip(batch.rows()) {
        let back: xquik_dm::records::HistoryRow = serde_json::from_slice(line).unwrap();
        assert_eq!(back.as_ref(), row);
    }
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn history_pages_never_panic(bytes in bytes_or_json()) {
        consume_page(&bytes);
    }

    #[test]
    fn hostile_history_pages_never_panic(page in hostile_page()) {
        consume_page(&serde_json::to_vec(&page).unwrap_or_default());
    }

    #[test]
    fn error_bodies_never_panic(bytes in bytes_or_json()) {
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let _ = ErrorBody::from_json(&value);
        let _ = xquik_dm::api::retry::body_retry_after(&value);
    }

    #[test]
    fn job_files_never_panic(text in ".{0,300}", value in json()) {
        for text in [text, format!("[[conversations]]\naccount = {value}\nusers = [{value}]\n")] {
            if let Ok(job) = JobFile::parse(&text) {
                let _ = job.targets();
            }
        }
    }

    #[test]
    fn batch_files_never_panic(lines in prop::collection::vec(json(), 0..6), raw in ".{0,200}") {
        let mut text: String = lines.iter().map(|v| format!("{v}\n")).collect();
        text.push_str(&raw);
        let _ = parse_batch(&text, Path::new("/nonexistent"), Some("acme"));
    }

    #[test]
    fn small_parsers_never_panic(text in ".{0,60}") {
        let _ = xquik_dm::timestamp::parse_timestamp(&text);
        let _ = xquik_dm::shard::Shard::parse(&text);
        let _ = xquik_dm::storage::Location::parse(&text);
        let _ = xquik_dm::UserRef::parse(&text, "user");
        let _ = xquik_dm::Account::parse(&text);
        let _ = xquik_dm::storage::object::segment_offset(&text);
    }
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn checkpoints_never_panic(bytes in bytes_or_json()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/checkpoint.json"), &bytes).unwrap();
        let _ = Checkpoint::load(&LocalDir::new(dir.path()));
    }

    #[test]
    fn chains_and_manifests_never_panic_verify(chain in bytes_or_json(), manifest in bytes_or_json(), sums in ".{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalDir::new(dir.path());
        let run = "20261130T000000Z-0000000000000001";
        let manifest_key = format!("audit/runs/{run}.manifest.json");
        // The entry names the manifest's real digest, so that verify goes on
        // to parse it and check what it lists.
        let digest = xquik_dm::sinks::sha256_hex(&manifest);
        let entry = serde_json::json!({"seq": 1, "run_id": run, "manifest": manifest_key,
                                       "sha256": digest, "previous_sha256": null});
        for chain in [chain.clone(), format!("{entry}\n").into_bytes(), [format!("{entry}\n").into_bytes(), chain].concat()] {
            storage.put_new(&manifest_key, &manifest).ok();
            std::fs::create_dir_all(dir.path().join("audit")).unwrap();
            std::fs::write(dir.path().join("audit/chain.jsonl"), &chain).unwrap();
            std::fs::write(dir.path().join("SHA256SUMS"), &sums).unwrap();
            let _ = xquik_dm::audit::read_chain(&storage);
            let _ = xquik_dm::audit::read_manifest(&storage, &manifest_key);
            let shared: xquik_dm::storage::Storage = std::sync::Arc::new(LocalDir::new(dir.path()));
            let report = xquik_dm::commands::verify::check(&shared, None, None);
            prop_assert!(!report.ok());
        }
    }
}
