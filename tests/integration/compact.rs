//! `xquik-dm compact` through the binary, on folders whose runs span past
//! dates (closed partitions): DuckDB reads the same rows before and after,
//! `verify` passes, and a SIGKILL at random moments leaves one file set
//! that a rerun completes.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xquik_dm::records::{HistoryRow, RecordType, SendRow};
use xquik_dm::storage::Storage;
use xquik_dm::storage::local::LocalDir;
use xquik_dm::store::{ManifestBody, RunStamp, Store};

use crate::cli::bin;
use crate::{python_with, run_python};

/// `days` dates of `runs` runs each, every run writing `rows` history
/// records (Unicode and null fields among them) and one send: files small
/// enough to want merging.
pub fn past_runs(out: &Path, days: u32, runs: u32, rows: u64) {
    past_runs_into(&(Arc::new(LocalDir::new(out)) as Storage), days, runs, rows);
}

/// [`past_runs`] into any output root (a bucket too).
pub fn past_runs_into(storage: &Storage, days: u32, runs: u32, rows: u64) {
    let mut n = 0u64;
    for day in 1..=days {
        let date = format!("2026-11-{day:02}");
        for run in 0..runs {
            let stamp = RunStamp {
                run_id: format!("202611{day:02}T{run:02}0000Z-{n:016x}"),
                date: date.clone(),
                started_at: format!("{date}T{run:02}:00:00.000Z"),
            };
            let store = Store::open(storage, &stamp).unwrap();
            n = one_run(store, n, rows, true);
        }
    }
}

/// Writes `rows` history records numbered after `n` (and a send, if
/// `send`) in `store`, and seals it. Returns the last number used.
pub fn one_run(mut store: Store, mut n: u64, rows: u64, send: bool) -> u64 {
    let batch: Vec<HistoryRow> = (0..rows)
        .map(|i| {
            n += 1;
            HistoryRow {
                record_type: RecordType::History,
                message_id: (1_900_000_000_000_000_000 + n).to_string(),
                conversation_user_id: format!("{}", 1_000_000 + i % 7),
                account: "acme".into(),
                sender_id: format!("{}", 1_000_000 + i % 7),
                receiver_id: "1612345678901234567".into(),
                created_at: (i % 5 != 0).then_some(1_764_000_000_000_000 + n as i64),
                message_text: (i % 11 != 0).then(|| format!("héllo ✓ {n} \"quoted\"")),
                media_url: (i % 13 == 0).then(|| format!("https://media.example/{n}.jpg")),
            }
        })
        .collect();
    store
        .append_history(&xquik_dm::records::HistoryBatch::of(&batch))
        .unwrap();
    if send {
        n += 1;
        store
            .append_send(&SendRow {
                record_type: RecordType::Send,
                message_id: (1_900_000_000_000_000_000 + n).to_string(),
                success: true,
                send_status: "success".into(),
                sender_account: "acme".into(),
                recipient_user_id: "1000001".into(),
                message_text: format!("sent ✓ {n}"),
                sent_at: 1_764_000_000_000_000 + n as i64,
                media_id: None,
                media_ids: None,
            })
            .unwrap();
    }
    store.commit().unwrap();
    store.seal(ManifestBody::empty("sync")).unwrap();
    n
}

/// Every row of both tables as DuckDB reads their data files, sorted: counts,
/// distinct IDs and a digest of all columns.
pub fn duckdb_rows(out: &Path) -> String {
    let script = r#"
import duckdb, hashlib, sys
con = duckdb.connect()
out = []
for table in ["messages", "sends"]:
    rows = con.execute(
        f"SELECT * FROM read_parquet('{sys.argv[1]}/parquet/{table}/date=*/*.parquet', hive_partitioning=false) ORDER BY message_id"
    ).fetchall()
    ids = {r[1] for r in rows}
    out.append(f"{table}: {len(rows)} rows, {len(ids)} ids, {hashlib.sha256(repr(rows).encode()).hexdigest()}")
print("\n".join(out))
"#;
    run_python(python_with(&["duckdb"]), script, &[out])
}

/// Parquet files per partition folder.
pub fn files_per_partition(out: &Path) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for table in ["messages", "sends"] {
        let Ok(dirs) = std::fs::read_dir(out.join("parquet").join(table)) else {
            continue;
        };
        for dir in dirs {
            let dir = dir.unwrap().path();
            if dir.ends_with("_delta_log") {
                continue;
            }
            let n = std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".parquet")
                })
                .count();
            counts.insert(
                format!("{table}/{}", dir.file_name().unwrap().to_string_lossy()),
                n,
            );
        }
    }
    counts
}

fn verify_ok(out: &Path) {
    let output = bin().arg("verify").arg(out).output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn compact(out: &Path) -> serde_json::Value {
    let output = bin()
        .args(["compact", "--json", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn compaction_keeps_every_row_merges_closed_partitions_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    past_runs(out, 3, 6, 40);
    let before = duckdb_rows(out);
    assert!(before.contains("messages: 720 rows, 720 ids"), "{before}");
    assert!(before.contains("sends: 18 rows, 18 ids"), "{before}");
    assert!(files_per_partition(out).values().all(|&n| n == 6));

    let report = compact(out);
    assert_eq!(report["files_removed"], 36);
    assert_eq!(report["files_added"], 6);
    assert_eq!(report["rows"], 738);
    assert_eq!(duckdb_rows(out), before);
    assert!(
        files_per_partition(out).values().all(|&n| n == 1),
        "{:?}",
        files_per_partition(out)
    );
    verify_ok(out);
    // The manifest names what was removed and added, with digests.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(report["manifest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["command"], "compact");
    assert_eq!(
        manifest["compaction"]["removed"].as_array().unwrap().len(),
        36
    );
    assert_eq!(manifest["compaction"]["added"].as_array().unwrap().len(), 6);
    assert!(manifest["compaction"]["removed"][0]["sha256"].is_string());
    // Every manifest, the compaction's among them, matches its schema.
    crate::assert_manifests_match_schema(out);

    // Nothing left to merge: a second compaction changes no file.
    let again = compact(out);
    assert_eq!(again["files_removed"], 0);
    assert_eq!(duckdb_rows(out), before);
    verify_ok(out);

    // Runs go on after it, and a rebuilt checkpoint knows the merged files.
    past_runs_after(out);
    verify_ok(out);
    std::fs::remove_file(out.join("state/checkpoint.json")).unwrap();
    let rebuilt = bin().args(["rebuild", "--out"]).arg(out).output().unwrap();
    assert!(rebuilt.status.success());
    assert!(
        !out.join("recovered").exists(),
        "a merged file was taken for an unlisted one"
    );
    past_runs_after(out);
    verify_ok(out);
}

/// One more run, on a later date.
fn past_runs_after(out: &Path) {
    let storage: Storage = Arc::new(LocalDir::new(out));
    let stamp = RunStamp::now();
    Store::open(&storage, &stamp)
        .unwrap()
        .seal(ManifestBody::empty("sync"))
        .unwrap();
}

/// A SIGKILL at random moments of a compaction leaves the old or the new
/// file set listed (verify passes either way); a rerun completes it, with
/// every row once.
#[test]
fn sigkill_during_compaction_leaves_one_file_set_and_a_rerun_completes() {
    let template = tempfile::tempdir().unwrap();
    past_runs(template.path(), 4, 12, 300);
    let before = duckdb_rows(template.path());
    // How long an uninterrupted compaction takes here.
    let timing = tempfile::tempdir().unwrap();
    copy_dir(template.path(), timing.path());
    let started = Instant::now();
    compact(timing.path());
    let full = started.elapsed().as_millis().max(20) as u64;
    let mut rng = fastrand::Rng::with_seed(11);
    let mut outcomes = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        copy_dir(template.path(), out);
        let mut child = bin()
            .args(["compact", "--out"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(0..full)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        outcomes.insert(status.success());
        // Old or new, never both listed nor neither.
        verify_ok(out);
        compact(out);
        assert_eq!(duckdb_rows(out), before);
        assert!(files_per_partition(out).values().all(|&n| n == 1));
        verify_ok(out);
    }
    assert!(outcomes.contains(&false), "no compaction was interrupted");
}

/// `sync --compact`: after a sync, the dates that closed since the last
/// compaction are compacted in a run of their own — once a day.
#[tokio::test(flavor = "multi_thread")]
async fn sync_with_compact_merges_closed_dates_once_a_day() {
    let server = xquik_dm::mock::MockServer::start(crate::world(&[60], 50))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_owned();
    past_runs(&out, 2, 4, 10);
    let users = crate::users(1);
    let sync = move |out: std::path::PathBuf, users: Vec<String>, base: String| {
        let mut cmd = bin();
        cmd.args(["--base-url", &base, "sync", "--compact", "--json"])
            .args(["--account", crate::ACCOUNT, "--user", &users[0]])
            .arg("--out")
            .arg(&out)
            .env("XQUIK_API_KEY", crate::KEY);
        let output = cmd.output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let base = server.base_url();
    let (o, u, b) = (out.clone(), users.clone(), base.clone());
    let first = tokio::task::spawn_blocking(move || sync(o, u, b))
        .await
        .unwrap();
    assert_eq!(first["new_messages"], 60);
    assert_eq!(first["compaction"]["files_removed"], 16, "{first}");
    assert_eq!(first["compaction"]["files_added"], 4);
    let counts = files_per_partition(&out);
    assert!(
        counts
            .iter()
            .all(|(dir, &n)| n == 1 || !dir.contains("date=2026-11-0")),
        "{counts:?}"
    );
    // The same day again: nothing has closed since.
    let second = tokio::task::spawn_blocking(move || sync(out.clone(), users, base))
        .await
        .unwrap();
    assert!(second.get("compaction").is_none(), "{second}");
    verify_ok(dir.path());
}

/// Copies the folder `from` to `to` as it is: modes and times too.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}
