//! `--metrics-file`: read back with the official Prometheus parser
//! (`prometheus_client` from PyPI) after a run that succeeded, one that was
//! partial (exit 4) and one that stopped for a person (exit 3); the values
//! equal the run reports.

use std::path::Path;

use serde_json::Value;
use xquik_dm::mock::MockServer;

use crate::cli::run;
use crate::protocol::sync;
use crate::{ACCOUNT, python_with, run_python, users, world};

/// Every sample of the file, as `name{label=value,...} value` lines sorted,
/// parsed by `prometheus_client`.
fn samples(path: &Path) -> Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let text = run_python(python_with(&["prometheus_client"]), script, &[path]);
    serde_json::from_str(&text).unwrap()
}

fn value(samples: &Value, key: &str) -> f64 {
    samples[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {samples}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_file_follows_success_partial_and_stopped_runs() {
    let server = MockServer::start(world(&[120, 30], 10)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let metrics = dir.path().join("xquik_dm.prom");
    let users = users(2);
    let sync_with = |extra: &[&str]| {
        let mut cmd = sync(&server, &out, &users);
        cmd.args(["--json", "--metrics-file"])
            .arg(&metrics)
            .args(extra);
        let (code, stdout, stderr) = run(&mut cmd);
        let report: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (code, report, stderr)
    };
    let account = format!("account={ACCOUNT},command=sync");

    // Partial: one page per conversation (exit 4).
    let (code, partial, stderr) = sync_with(&["--max-pages", "1"]);
    assert_eq!(code, 4, "{stderr}");
    let after_partial = samples(&metrics);
    assert_eq!(
        value(
            &after_partial,
            "xquik_dm_last_run_exit_status{command=sync}"
        ),
        4.0
    );
    assert!(after_partial["xquik_dm_last_success_timestamp_seconds{command=sync}"].is_null());
    let rows = partial["new_messages"].as_f64().unwrap();
    assert_eq!(
        value(
            &after_partial,
            &format!("xquik_dm_rows_written_total{{{account}}}")
        ),
        rows
    );

    // Success: the rest.
    let (code, done, stderr) = sync_with(&[]);
    assert_eq!(code, 0, "{stderr}");
    let after_success = samples(&metrics);
    assert_eq!(
        value(
            &after_success,
            "xquik_dm_last_run_exit_status{command=sync}"
        ),
        0.0
    );
    let rows = rows + done["new_messages"].as_f64().unwrap();
    assert_eq!(rows, 150.0);
    assert_eq!(
        value(
            &after_success,
            &format!("xquik_dm_rows_written_total{{{account}}}")
        ),
        rows
    );
    let pages: f64 = [&partial, &done]
        .iter()
        .map(|r| r["pages"].as_f64().unwrap())
        .sum();
    assert_eq!(
        value(
            &after_success,
            &format!("xquik_dm_pages_fetched_total{{{account}}}")
        ),
        pages
    );
    let history = "command=sync,endpoint=GET /x/dm/{userId}/history";
    let credits: f64 = [&partial, &done]
        .iter()
        .map(|r| {
            r["credits"]["GET /x/dm/{userId}/history"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(
        value(
            &after_success,
            &format!("xquik_dm_credits_spent_total{{{history}}}")
        ),
        credits
    );
    let succeeded = value(
        &after_success,
        "xquik_dm_last_success_timestamp_seconds{command=sync}",
    );
    let ended = value(
        &after_success,
        "xquik_dm_last_run_end_timestamp_seconds{command=sync}",
    );
    assert_eq!(succeeded, ended);

    // Stopped for a person: out of credits (402, exit 3). New messages
    // wait; the last success stays the one before.
    server.append_messages(ACCOUNT, &users[0], 50);
    server.set_credit_limit(Some(0));
    let (code, _, stderr) = sync_with(&[]);
    assert_eq!(code, 3, "{stderr}");
    let after_stop = samples(&metrics);
    assert_eq!(
        value(&after_stop, "xquik_dm_last_run_exit_status{command=sync}"),
        3.0
    );
    assert_eq!(
        value(
            &after_stop,
            "xquik_dm_last_success_timestamp_seconds{command=sync}"
        ),
        succeeded
    );
    assert_eq!(
        value(
            &after_stop,
            &format!("xquik_dm_rows_written_total{{{account}}}")
        ),
        rows
    );
    // Nothing but counts and names: no body, no key.
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(!text.contains(crate::KEY));
    for m in server.history(ACCOUNT, &users[0]) {
        if let Some(body) = m.text.filter(|t| t.len() >= 8) {
            assert!(!text.contains(&body));
        }
    }
}
