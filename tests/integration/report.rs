//! `xquik-dm report`: the numbers on the page and in the JSON are the
//! manifests' (recomputed here from the manifest files), a tampered file is
//! named, nothing private appears; a real browser (Debian's chromium,
//! headless) renders the page: a screenshot with the chart drawn, and a DOM
//! whose figures are the manifests'.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use xquik_dm::commands::send::{self, BatchLine, SendRequest};
use xquik_dm::commands::sync;
use xquik_dm::mock::{MockServer, WriteMode};

use crate::cli::{bin, run};
use crate::{
    ACCOUNT, KEY, debian_tool, python_with, run_python, sync_options, user_id, users, world,
};

fn credits_of(m: &Value) -> u64 {
    let own: u64 = m["credits"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let recovered: u64 = m["recovered"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["credits"].as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    own + recovered
}

/// `xquik-dm report OUT --json --html HTML`.
fn report_of(out: &Path, html: &Path) -> (i32, String, String) {
    run(bin()
        .arg("report")
        .arg(out)
        .arg("--json")
        .arg("--html")
        .arg(html))
}

fn chromium() -> PathBuf {
    debian_tool("chromium", "chromium", "--version")
}

/// Renders `html` headless: (the DOM as the browser built it, a PNG).
fn render(html: &Path, dir: &Path) -> (String, PathBuf) {
    let browser = chromium();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ];
    let url = format!("file://{}", html.display());
    let dom = Command::new(&browser)
        .args(flags)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let png = dir.join("report.png");
    let shot = Command::new(&browser)
        .args(flags)
        .args(["--window-size=1280,1600"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(shot.status.success() && png.exists(), "no screenshot");
    (String::from_utf8(dom.stdout).unwrap(), png)
}

/// `(attribute of the element, its data-value)` for every `attr="..."`
/// that is followed by `data-<field>="..."` in the same tag.
fn attributes(dom: &str, key_attr: &str, field: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for tag in dom
        .split('<')
        .filter(|t| t.contains(&format!("{key_attr}=\"")))
    {
        let value_of = |name: &str| {
            let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
            let end = tag[start..].find('"')? + start;
            Some(tag[start..end].to_owned())
        };
        if let (Some(key), Some(v)) = (value_of(key_attr), value_of(&format!("data-{field}"))) {
            found.push((key, v.parse().unwrap()));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_shows_the_manifests_names_a_tampered_file_and_holds_no_body() {
    let mut config = world(&[120, 30, 10], 10);
    config.write_mode = WriteMode::Completed;
    config
        .faults
        .forbidden
        .push((ACCOUNT.to_owned(), user_id(3)));
    let server = MockServer::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A partial run, then one with a failed conversation, then a text DM
    // and a media DM.
    let mut options = sync_options(&server, &out, &users(3));
    options.max_pages = Some(1);
    assert_eq!(sync::run(options).await.unwrap().exit_code(), 4);
    let options = sync_options(&server, &out, &users(3));
    sync::run(options).await.unwrap();
    let picture = dir.path().join("pic.png");
    std::fs::write(&picture, b"\x89PNG\r\n\x1a\n-not-really-an-image-").unwrap();
    let texts = ["a private reply, never shown", "a private picture caption"];
    let lines = vec![
        BatchLine::Valid(
            SendRequest::validate(ACCOUNT, &user_id(1), texts[0], None, None, None).unwrap(),
        ),
        BatchLine::Valid(
            SendRequest::validate(ACCOUNT, &user_id(2), texts[1], Some(&picture), None, None)
                .unwrap(),
        ),
    ];
    let sent = send::run(crate::send_options(&server, &out, lines))
        .await
        .unwrap();
    assert_eq!(sent.exit_code(), 0);
    // Tamper with one Parquet file.
    let parquet = crate::tamper_with_a_parquet_file(&out);

    let html = dir.path().join("report.html");
    let (code, stdout, stderr) = report_of(&out, &html);
    assert_eq!(code, 5, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let page = std::fs::read_to_string(&html).unwrap();

    // Every number is the manifests'.
    let manifests = crate::chain_manifests(&out);
    let sum = |f: &dyn Fn(&Value) -> u64| manifests.iter().map(f).sum::<u64>();
    let totals = &report["totals"];
    assert_eq!(totals["runs"], manifests.len() as u64);
    assert_eq!(
        totals["rows"],
        sum(&|m| m["audit_rows"]["rows"].as_u64().unwrap())
    );
    assert_eq!(totals["credits"], sum(&credits_of));
    assert_eq!(
        totals["pages"],
        sum(&|m| m["counts"]["pages"].as_u64().unwrap_or(0))
    );
    assert_eq!(totals["sends"], 2);
    assert_eq!(totals["partial"], sum(&|m| u64::from(m["exit_code"] == 4)));
    for (row, m) in report["runs"].as_array().unwrap().iter().zip(&manifests) {
        assert_eq!(row["run_id"], m["run_id"]);
        assert_eq!(row["rows"], m["audit_rows"]["rows"]);
        assert_eq!(row["credits"], credits_of(m));
    }
    // The failed conversation and its reason; the media DM's reference.
    let failed = report["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user_id"] == user_id(3).as_str())
        .unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["reason"], "dm_not_permitted");
    assert!(
        report["sends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["media_id"].is_string())
    );
    // The tampered file is named, on the page too.
    let failures = report["verify"]["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|f| f["path"] == parquet.as_str()),
        "{failures:?}"
    );
    assert!(page.contains(&format!("data-path=\"{parquet}\"")));
    // Nothing private: no message text, no key.
    let mut private: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    for user in users(3) {
        private.extend(
            server
                .history(ACCOUNT, &user)
                .into_iter()
                .filter_map(|m| m.text)
                .filter(|t| t.chars().count() >= 8),
        );
    }
    private.push(KEY.to_owned());
    for secret in &private {
        assert!(
            !page.contains(secret.as_str()) && !stdout.contains(secret.as_str()),
            "leaked"
        );
    }

    // The browser: the DOM carries the manifests' figures...
    let (dom, png) = render(&html, dir.path());
    let rows: std::collections::BTreeMap<String, u64> =
        attributes(&dom, "data-run", "rows").into_iter().collect();
    assert_eq!(rows.len(), manifests.len());
    for m in &manifests {
        assert_eq!(
            rows[m["run_id"].as_str().unwrap()],
            m["audit_rows"]["rows"].as_u64().unwrap()
        );
    }
    let total: Vec<(String, u64)> = attributes(&dom, "id", "value");
    assert!(total.contains(&("total-credits".to_owned(), sum(&credits_of))));
    // ...and the screenshot is not blank: the chart's bars are drawn in the
    // colours of a good (green) and a partial (amber) run.
    let script = r#"
import sys
from PIL import Image
image = Image.open(sys.argv[1]).convert("RGB")
colours = image.getcolors(maxcolors=1 << 24)
count = {c: n for n, c in colours}
print(len(colours), count.get((0x38, 0xa1, 0x69), 0), count.get((0xd6, 0x9e, 0x2e), 0))
"#;
    let seen = run_python(python_with(&["pillow:PIL"]), script, &[&png]);
    let numbers: Vec<u64> = seen
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(numbers[0] > 10, "a blank page: {seen}");
    assert!(numbers[1] > 50 && numbers[2] > 50, "no chart bars: {seen}");
}

/// 10,000 small runs: the report is built in seconds (printed), the chart
/// shows days, the tables show the latest rows, and the page stays small.
#[test]
fn a_report_of_ten_thousand_runs_stays_small() {
    let shm = Path::new("/dev/shm");
    let dir = match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap(),
        false => tempfile::tempdir().unwrap(),
    };
    let storage: xquik_dm::storage::Storage =
        Arc::new(xquik_dm::storage::local::LocalDir::new(dir.path()));
    let mut n = 0;
    for run in 0..10_000u64 {
        // Five-minute runs over 35 days.
        let at = chrono::DateTime::from_timestamp(1_761_955_200 + run as i64 * 300, 0).unwrap();
        let stamp = xquik_dm::store::RunStamp::at(at);
        let store = xquik_dm::store::Store::open(&storage, &stamp).unwrap();
        n = crate::compact::one_run(store, n, 1, false);
    }
    let html = dir.path().join("report.html");
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = report_of(dir.path(), &html);
    let took = started.elapsed();
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["totals"]["runs"], 10_000);
    assert_eq!(report["runs"].as_array().unwrap().len(), 10_000);
    assert_eq!(report["days"].as_array().unwrap().len(), 35);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("data-by=\"day\""));
    assert_eq!(page.matches("class=\"run ").count(), 200);
    eprintln!(
        "report of 10,000 runs: {:.2} s (debug build), page {} bytes, JSON {} bytes",
        took.as_secs_f64(),
        page.len(),
        stdout.len()
    );
    assert!(page.len() < 1 << 20, "{} bytes", page.len());
}

/// The demo's folder: three runs (two syncs and a send), verified, every
/// conversation and both DMs shown.
#[test]
fn the_report_of_the_demo_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (code, _, stderr) = run(bin()
        .arg("demo")
        .arg("--out")
        .arg(&out)
        .env("TMPDIR", dir.path()));
    assert_eq!(code, 0, "{stderr}");
    let html = dir.path().join("report.html");
    let (code, stdout, stderr) = report_of(&out, &html);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let manifests = crate::chain_manifests(&out);
    assert_eq!(report["verify"]["ok"], true);
    assert_eq!(report["totals"]["runs"], manifests.len() as u64);
    assert_eq!(
        report["totals"]["rows"],
        manifests
            .iter()
            .map(|m| m["audit_rows"]["rows"].as_u64().unwrap())
            .sum::<u64>()
    );
    assert_eq!(report["sends"].as_array().unwrap().len(), 2);
    assert!(!report["conversations"].as_array().unwrap().is_empty());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("this page contains no message text"));
}

/// After a `forget`, the report lists the erasure (kind, reason, counts,
/// time) and says retention is not in force; the forgotten user's ID is
/// nowhere on the page nor in the JSON unless `--erased-ids` asks for it.
#[tokio::test(flavor = "multi_thread")]
async fn erasures_are_reported_without_the_ids_of_the_people_concerned() {
    let server = MockServer::start(world(&[30, 20], 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let users = users(2);
    let synced = sync::run(sync_options(&server, &out, &users))
        .await
        .unwrap();
    assert_eq!(synced.exit_code(), 0);
    let (code, stdout, stderr) = run(bin().args(["forget", "--out"]).arg(&out).args([
        "--user",
        &users[1],
        "--reason",
        "GDPR Art. 17 request",
    ]));
    assert_eq!(code, 0, "{stdout}{stderr}");

    let html = dir.path().join("report.html");
    let (code, stdout, stderr) = run(bin()
        .args(["report", "--json", "--html"])
        .arg(&html)
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains(&users[1]), "a forgotten ID on the page");
    assert!(!stdout.contains(&users[1]), "a forgotten ID in the JSON");
    assert!(page.contains(&users[0]), "the other conversation is shown");
    assert!(page.contains("GDPR Art. 17 request"));
    assert!(page.contains("data-in-force=\"false\""));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    // The erased records are not counted as written.
    assert_eq!(report["totals"]["rows"], 50);
    assert_eq!(report["totals"]["runs"], 2);
    let privacy = &report["privacy"];
    assert_eq!(privacy["retention"]["in_force"], false);
    let erasure = &privacy["erasures"][0];
    assert_eq!(erasure["kind"], "forget");
    assert_eq!(erasure["erased"], 20);
    assert_eq!(erasure["conversations"], 1);
    assert_eq!(erasure["forgotten"], 1);
    assert_eq!(erasure["seq"], 2);
    let at = crate::chain_manifests(&out)[1]["erasure"]["erased_at"].clone();
    assert_eq!(erasure["erased_at"], at);

    let (code, stdout, _) = run(bin()
        .args(["report", "--json", "--erased-ids", "--html"])
        .arg(&html)
        .arg(&out));
    assert_eq!(code, 0);
    assert!(std::fs::read_to_string(&html).unwrap().contains(&users[1]));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["privacy"]["erasures"][0]["ids"]["forgotten_users"],
        serde_json::json!([users[1]])
    );
}
