//! The Delta log module (`xquik_dm::delta`) against independent readers:
//! real Parquet data files written by the tool's `ParquetSink`, committed
//! through `delta::Table`, then read by delta-rs (the Python `deltalake`
//! package), Polars (`pl.read_delta`) and DuckDB's `delta_scan` (its delta
//! extension from PyPI's `duckdb-ext-delta`), all installed from PyPI into
//! the test target folder on first use.

use std::path::Path;
use std::sync::Arc;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use xquik_dm::delta::{Add, Change, CommitInfo, StatsCollector, Table, TableKind};
use xquik_dm::records::{HistoryRow, RecordType};
use xquik_dm::sinks::parquet::{MessageColumns, ParquetSink};
use xquik_dm::storage::Storage;
use xquik_dm::storage::local::LocalDir;

use crate::{python_with, run_python};

/// Readers of the tables: delta-rs, Polars, and pyarrow for datasets.
const READERS: &[&str] = &["deltalake", "polars", "pyarrow"];

/// A `python3` with the readers, on one thread where a reader lets it be
/// said: the tests of pacing and scheduling run beside these on few cores.
fn readers() -> std::process::Command {
    let mut cmd = python_with(READERS);
    cmd.env("POLARS_MAX_THREADS", "1")
        .env("OMP_NUM_THREADS", "1");
    cmd
}

/// Microseconds of 2026-12-01T00:00:00Z.
const DEC_1: i64 = 1_796_083_200_000_000;
const HOUR: i64 = 3_600_000_000;

/// Row `i` of run `run`: created in hour `run` of 2026-12-01 (so each
/// run's files cover a distinct time range), one in seven without a time.
fn row(run: u64, i: u64) -> HistoryRow {
    HistoryRow {
        record_type: RecordType::History,
        message_id: format!("{}", 1_900_000_000_000_000_000u64 + run * 1000 + i),
        conversation_user_id: format!("{}", 42 + i % 3),
        account: "acme".into(),
        sender_id: "42".into(),
        receiver_id: "7".into(),
        created_at: (!(i + 1).is_multiple_of(7))
            .then_some(DEC_1 + run as i64 * HOUR + i as i64 * 1_000_000),
        message_text: Some(format!("body {run}/{i} ünï")),
        media_url: None,
    }
}

/// The `add` of a data file the sink wrote, with statistics gathered from
/// its rows as read back.
fn add_of(storage: &Storage, key: &str, rows: u64, size: u64) -> Add {
    let bytes = storage.get(key).unwrap().unwrap().bytes;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap();
    let mut stats = StatsCollector::new(TableKind::Messages);
    for batch in reader {
        stats.add_batch(&batch.unwrap()).unwrap();
    }
    let stats = stats.finish();
    assert_eq!(stats.num_records, rows);
    let path = key.strip_prefix("parquet/messages/").unwrap().to_owned();
    let date = path
        .split('/')
        .next()
        .unwrap()
        .trim_start_matches("date=")
        .to_owned();
    Add {
        path,
        date,
        size,
        modification_time: 1_796_083_200_000,
        data_change: true,
        stats: Some(stats.into()),
    }
}

/// One run: `rows` messages into files of `per_file` rows, committed as one
/// Delta commit. Returns the version.
fn run(storage: &Storage, run: u64, rows: u64, per_file: u64, at: i64) -> u64 {
    let date = if run.is_multiple_of(2) {
        "2026-12-01"
    } else {
        "2026-12-02"
    };
    let run_id = format!("20261201T{run:02}0000Z-{run:016x}");
    let mut sink = ParquetSink::<MessageColumns>::new(storage, date, &run_id);
    sink.set_file_rows(per_file);
    let mut adds = Vec::new();
    for i in 0..rows {
        sink.push(&row(run, i)).unwrap();
        if sink.is_full() {
            let f = sink.close().unwrap().unwrap();
            adds.push(add_of(storage, &f.path, f.rows, f.bytes));
        }
    }
    if let Some(f) = sink.close().unwrap() {
        adds.push(add_of(storage, &f.path, f.rows, f.bytes));
    }
    let change = Change {
        info: CommitInfo {
            run_id,
            operation: "WRITE".into(),
            timestamp: at,
            part: None,
        },
        adds,
        removes: Vec::new(),
    };
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&change).unwrap().version
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const READ_SCRIPT: &str = r#"
import sys, json, datetime
import deltalake, polars as pl, pyarrow as pa, pyarrow.dataset as ds
path = sys.argv[1]
dt = deltalake.DeltaTable(path)
adds = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
table = dt.to_pyarrow_table()
cut = datetime.datetime(2026, 12, 1, 3, tzinfo=datetime.timezone.utc)
dataset = dt.to_pyarrow_dataset()
late = list(dataset.get_fragments(filter=ds.field("created_at") >= pa.scalar(cut, pa.timestamp("us", "UTC"))))
out = {
    "version": dt.version(),
    "rows": table.num_rows,
    "columns": {f.name: str(f.type) for f in table.schema},
    "history": [{"version": h.get("version"), "operation": h.get("operation"), "runId": h.get("runId")} for h in dt.history()],
    "paths": sorted(a["path"] for a in adds),
    "stats_rows": sum(a["num_records"] for a in adds),
    "min_created": str(min(a["min.created_at"] for a in adds)),
    "fragments": len(list(dataset.get_fragments())),
    "fragments_late": len(late),
    "rows_late": dataset.to_table(filter=ds.field("created_at") >= pa.scalar(cut, pa.timestamp("us", "UTC"))).num_rows,
    "by_version": {v: deltalake.DeltaTable(path, version=v).to_pyarrow_table().num_rows for v in range(dt.version() + 1)},
    "polars": pl.read_delta(path).height,
    "polars_by_version": {v: pl.read_delta(path, version=v).height for v in range(dt.version() + 1)},
    "polars_late": pl.scan_delta(path).filter(pl.col("created_at") >= cut).collect().height,
}
print(json.dumps(out))
"#;

#[test]
fn delta_rs_and_polars_read_the_table_its_history_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let storage: Storage = Arc::new(LocalDir::new(out));
    let mut cumulative = Vec::new();
    let mut total = 0;
    for r in 0..5 {
        let version = run(&storage, r, 25, 10, now());
        assert_eq!(version, r);
        total += 25;
        cumulative.push(total);
    }
    let table = Table::new(storage.clone(), TableKind::Messages);
    let snapshot = table.snapshot(None).unwrap().unwrap();
    assert_eq!(snapshot.files.len(), 15);

    let seen = run_python(readers(), READ_SCRIPT, &[&out.join("parquet/messages")]);
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["version"], 4);
    assert_eq!(seen["rows"], 125);
    assert_eq!(seen["stats_rows"], 125);
    assert_eq!(seen["polars"], 125);
    assert_eq!(seen["columns"]["created_at"], "timestamp[us, tz=UTC]");
    assert_eq!(seen["columns"]["date"], "string");
    let history = seen["history"].as_array().unwrap();
    assert_eq!(history.len(), 5, "{history:?}");
    for h in history {
        let v = h["version"].as_u64().unwrap();
        assert_eq!(h["operation"], "WRITE");
        assert_eq!(h["runId"], format!("20261201T{v:02}0000Z-{v:016x}"));
    }
    let paths: Vec<&str> = seen["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = snapshot.files.keys().map(String::as_str).collect();
    assert_eq!(paths, ours);
    for (v, rows) in cumulative.iter().enumerate() {
        assert_eq!(
            seen["by_version"][v.to_string()],
            *rows,
            "delta-rs at version {v}"
        );
        assert_eq!(
            seen["polars_by_version"][v.to_string()],
            *rows,
            "polars at version {v}"
        );
    }
    // Runs 3 and 4 are the only ones with times from 03:00 on: their six
    // files are all a reader needs for that filter.
    assert_eq!(seen["fragments"], 15);
    assert_eq!(seen["fragments_late"], 6, "{seen}");
    let late_rows = (3..5)
        .flat_map(|r| (0..25).map(move |i| row(r, i)))
        .filter(|m| m.created_at.is_some())
        .count();
    assert_eq!(seen["rows_late"], late_rows);
    assert_eq!(seen["polars_late"], late_rows);
}

const CHECKPOINT_SCRIPT: &str = r#"
import sys, json, datetime
import deltalake, polars as pl, pyarrow as pa, pyarrow.dataset as ds
path = sys.argv[1]
dt = deltalake.DeltaTable(path)
cut = datetime.datetime(2026, 12, 5, 0, tzinfo=datetime.timezone.utc)
dataset = dt.to_pyarrow_dataset()
late = dataset.get_fragments(filter=ds.field("created_at") >= pa.scalar(cut, pa.timestamp("us", "UTC")))
out = {
    "version": dt.version(),
    "rows": dt.to_pyarrow_table().num_rows,
    "files": len(pa.table(dt.get_add_actions(flatten=True))),
    "history": sorted(h["version"] for h in dt.history()),
    "at_102": deltalake.DeltaTable(path, version=102).to_pyarrow_table().num_rows,
    "fragments_late": len(list(late)),
    "polars": pl.read_delta(path).height,
}
print(json.dumps(out))
"#;

/// Writes `runs` runs of three rows each, run `r` created on day `r` after
/// 2026-12-01 (hour resolution), the first `old` of them committed 40 days
/// ago, and a compaction at version 50 that merges runs 0 and 1.
fn long_table(out: &Path, runs: u64, old: u64) -> Storage {
    let storage: Storage = Arc::new(LocalDir::new(out));
    long_table_in(&storage, runs, old);
    storage
}

/// [`long_table`] in any output root.
fn long_table_in(storage: &Storage, runs: u64, old: u64) {
    let forty_days_ago = now() - 40 * 86_400_000;
    for r in 0..runs {
        let at = if r < old { forty_days_ago } else { now() };
        if r == 50 {
            compact_first_two(storage, at);
            continue;
        }
        run_at_day(storage, r, at);
    }
}

fn run_at_day(storage: &Storage, r: u64, at: i64) {
    let run_id = format!("r{r:04}");
    let mut sink = ParquetSink::<MessageColumns>::new(storage, "2026-12-01", &run_id);
    for i in 0..3 {
        let mut m = row(r, i);
        m.created_at = Some(DEC_1 + r as i64 * 24 * HOUR + i as i64);
        sink.push(&m).unwrap();
    }
    let f = sink.close().unwrap().unwrap();
    let change = Change {
        info: CommitInfo {
            run_id,
            operation: "WRITE".into(),
            timestamp: at,
            part: None,
        },
        adds: vec![add_of(storage, &f.path, f.rows, f.bytes)],
        removes: Vec::new(),
    };
    Table::new(storage.clone(), TableKind::Messages)
        .commit(&change)
        .unwrap();
}

/// One commit: the files of runs 0 and 1 out, one merged file in.
fn compact_first_two(storage: &Storage, at: i64) {
    let table = Table::new(storage.clone(), TableKind::Messages);
    let before = table.snapshot(None).unwrap().unwrap();
    let inputs: Vec<&Add> = before
        .files
        .values()
        .filter(|a| a.path.contains("-r0000-") || a.path.contains("-r0001-"))
        .collect();
    assert_eq!(inputs.len(), 2);
    let mut sink = ParquetSink::<MessageColumns>::new(storage, "2026-12-01", "c0050");
    for input in &inputs {
        let key = format!("parquet/messages/{}", input.path);
        let bytes = bytes::Bytes::from(storage.get(&key).unwrap().unwrap().bytes);
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            sink.push_batch(&batch.unwrap()).unwrap();
        }
    }
    let f = sink.close().unwrap().unwrap();
    let change = Change {
        info: CommitInfo {
            run_id: "c0050".into(),
            operation: "OPTIMIZE".into(),
            timestamp: at,
            part: None,
        },
        adds: vec![Add {
            data_change: false,
            ..add_of(storage, &f.path, f.rows, f.bytes)
        }],
        removes: inputs.iter().map(|a| a.to_remove(at, false)).collect(),
    };
    assert_eq!(table.commit(&change).unwrap().version, 50);
}

#[test]
fn past_a_hundred_versions_readers_load_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    // 105 versions, all but the last five made 40 days ago: the checkpoint
    // at version 100, made now (retentions count from the commit's time),
    // lets cleanup delete versions 0 to 99, so a reader can only load the
    // table through the checkpoint.
    let storage = long_table(out, 105, 100);
    let table = Table::new(storage.clone(), TableKind::Messages);
    assert_eq!(table.latest_version().unwrap(), Some(104));
    assert_eq!(table.checkpoints().unwrap(), [100]);
    assert_eq!(table.versions().unwrap(), (100..=104).collect::<Vec<_>>());
    let hint = std::fs::read(out.join("parquet/messages/_delta_log/_last_checkpoint")).unwrap();
    let hint: Value = serde_json::from_slice(&hint).unwrap();
    assert_eq!(hint["version"], 100);
    // Runs 0 to 100 but the compaction at 50, less two merged, plus one.
    assert_eq!(hint["numOfAddFiles"], 99);

    let seen = run_python(
        readers(),
        CHECKPOINT_SCRIPT,
        &[&out.join("parquet/messages")],
    );
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["version"], 104);
    assert_eq!(seen["files"], 103);
    assert_eq!(seen["rows"], 104 * 3);
    assert_eq!(seen["polars"], 104 * 3);
    assert_eq!(
        seen["history"],
        serde_json::json!([100, 101, 102, 103, 104])
    );
    assert_eq!(seen["at_102"], 102 * 3);
    // Runs from day 4 on (r >= 4): statistics survive the checkpoint.
    assert_eq!(seen["fragments_late"], 100, "{seen}");
}

/// A `python3` that imports DuckDB with its delta extension: DuckDB's
/// extensions are built for one DuckDB version, so this pairs the
/// extension package from PyPI with its DuckDB in a folder of their own
/// (other tests use the newest DuckDB). Returns the command and the
/// extension directory to point DuckDB at.
pub(crate) fn duckdb_with_delta() -> (std::process::Command, std::path::PathBuf) {
    const PACKAGES: [&str; 2] = ["duckdb==1.4.4", "duckdb-ext-delta==1.4.4.20260205"];
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pydeps-duckdb-delta");
    let extensions = target.join("duckdb_ext/extensions");
    if !extensions.is_dir() {
        let mut pip = std::process::Command::new("python3");
        pip.args(["-m", "pip", "install", "--quiet", "--target"]);
        let status = pip.arg(&target).args(PACKAGES).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "pip could not install {PACKAGES:?}"
        );
    }
    let mut cmd = std::process::Command::new("python3");
    cmd.env("PYTHONPATH", &target);
    (cmd, extensions)
}

const DUCKDB_SCRIPT: &str = r#"
import sys, json, duckdb
table, extensions = sys.argv[1], sys.argv[2]
con = duckdb.connect(config={"threads": 1})
con.execute(f"SET extension_directory = '{extensions}'")
con.execute("LOAD delta")
rows = con.execute("SELECT count(*), count(DISTINCT message_id), min(date) FROM delta_scan(?)", [table]).fetchone()
late = con.execute("SELECT count(*) FROM delta_scan(?) WHERE created_at >= TIMESTAMPTZ '2026-12-05 00:00:00+00'", [table]).fetchone()
print(json.dumps({"rows": rows[0], "ids": rows[1], "min_date": rows[2], "late": late[0]}))
"#;

#[test]
fn duckdb_delta_scan_reads_the_table_through_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    long_table(out, 105, 100);
    let (python, extensions) = duckdb_with_delta();
    let seen = run_python(
        python,
        DUCKDB_SCRIPT,
        &[&out.join("parquet/messages"), &extensions],
    );
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["rows"], 104 * 3);
    assert_eq!(seen["ids"], 104 * 3);
    assert_eq!(seen["min_date"], "2026-12-01");
    // Runs 4 to 104 but the compaction at 50, three rows each.
    assert_eq!(seen["late"], 100 * 3);
}

#[test]
fn a_checkpoint_written_by_delta_rs_reads_back_as_the_same_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let storage = long_table(out, 53, 0);
    let table = Table::new(storage, TableKind::Messages);
    let ours = table.snapshot(None).unwrap().unwrap();
    assert_eq!(ours.version, 52);
    let script = r#"
import sys, deltalake
deltalake.DeltaTable(sys.argv[1]).create_checkpoint()
"#;
    run_python(readers(), script, &[&out.join("parquet/messages")]);
    assert_eq!(table.checkpoints().unwrap(), [52]);
    // Replay now starts at delta-rs's checkpoint: the same files, the same
    // statistics, the same protocol and schema.
    for v in 0..52 {
        std::fs::remove_file(out.join(table.commit_key(v))).unwrap();
    }
    let theirs = table.snapshot(None).unwrap().unwrap();
    assert_eq!(theirs.version, 52);
    assert_eq!(theirs.files, ours.files);
    assert_eq!(theirs.protocol, ours.protocol);
    assert_eq!(theirs.metadata.schema_string, ours.metadata.schema_string);
    assert_eq!(theirs.metadata.partition_columns, ["date"]);
    // A reader skips a checkpoint's tombstones.
    assert!(theirs.removed.is_empty(), "{:?}", theirs.removed);
    assert_eq!(ours.removed.len(), 2, "the compaction's inputs");
    // And this module commits on top of it; its own checkpoint carries
    // delta-rs's tombstones forward, which delta-rs reads back.
    run_at_day(table.storage(), 53, now());
    assert_eq!(
        table.snapshot(None).unwrap().unwrap().files.len(),
        ours.files.len() + 1
    );
    table.checkpoint_at(53, now()).unwrap();
    let script = r#"
import sys, json, pyarrow.parquet as pq
rows = pq.read_table(sys.argv[1]).to_pylist()
print(json.dumps(sorted(r["remove"]["path"] for r in rows if r["remove"] is not None)))
"#;
    let tombstones = run_python(readers(), script, &[&out.join(table.checkpoint_key(53))]);
    let tombstones: Vec<String> = serde_json::from_str(&tombstones).unwrap();
    assert_eq!(
        tombstones.iter().collect::<Vec<_>>(),
        ours.removed.keys().collect::<Vec<_>>()
    );
}

const BUCKET_SCRIPT: &str = r#"
import sys, json, deltalake, polars as pl
uri, endpoint = sys.argv[1], sys.argv[2]
options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
dt = deltalake.DeltaTable(uri, storage_options=options)
ids = dt.to_pyarrow_table(columns=["message_id"]).column("message_id").to_pylist()
print(json.dumps({
    "version": dt.version(),
    "rows": len(ids),
    "distinct": len(set(ids)),
    "history": len(dt.history()),
    "polars": pl.read_delta(uri, storage_options=options).height,
}))
"#;

/// In a bucket, writers that race for versions through S3's create-only
/// put (moto) all land, once each, at dense versions; delta-rs and Polars
/// read the table from the bucket.
#[test]
fn concurrent_writers_in_a_bucket_land_once_each_and_delta_rs_reads_it() {
    let moto = crate::bucket::Moto::start();
    let bucket = moto.bucket("dm-delta");
    let url = format!("s3://{bucket}/dm");
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let storage: Storage = Arc::new(moto.store(&url));
            std::thread::spawn(move || {
                (0..5u64)
                    .map(|n| run(&storage, w * 100 + n, 4, 10, now()))
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (0..20).collect::<Vec<_>>());
    let storage: Storage = Arc::new(moto.store(&url));
    let table = Table::new(storage, TableKind::Messages);
    assert_eq!(table.snapshot(None).unwrap().unwrap().files.len(), 20);

    let uri = format!("s3://{bucket}/dm/parquet/messages");
    let endpoint = moto.endpoint();
    let script_args = [Path::new(&uri), Path::new(&endpoint)];
    let seen = run_python(readers(), BUCKET_SCRIPT, &script_args);
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    assert_eq!(seen["version"], 19);
    assert_eq!(seen["rows"], 80);
    assert_eq!(seen["distinct"], 80);
    assert_eq!(seen["history"], 20);
    assert_eq!(seen["polars"], 80);
}

/// A log delta-rs wrote (its own commit fields, statistics of every
/// column): this module reads it, and a commit of its own lands on top.
#[test]
fn a_log_written_by_delta_rs_is_read_and_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet/messages");
    let script = r#"
import sys, json, datetime
import deltalake, pyarrow as pa
path = sys.argv[1]
for day in (1, 2):
    t = pa.table({
        "message_id": pa.array([f"{day}{i}" for i in range(5)]),
        "created_at": pa.array([datetime.datetime(2026, 12, day, i, tzinfo=datetime.timezone.utc) for i in range(5)], pa.timestamp("us", "UTC")),
        "date": pa.array([f"2026-12-0{day}"] * 5),
    })
    deltalake.write_deltalake(path, t, mode="append", partition_by=["date"])
dt = deltalake.DeltaTable(path)
adds = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
print(json.dumps({"version": dt.version(), "paths": sorted(a["path"] for a in adds)}))
"#;
    let seen = run_python(readers(), script, &[&root]);
    let seen: Value = serde_json::from_str(seen.trim()).unwrap();
    let storage: Storage = Arc::new(LocalDir::new(dir.path()));
    let table = Table::new(storage.clone(), TableKind::Messages);
    assert_eq!(
        Some(seen["version"].as_u64().unwrap()),
        table.latest_version().unwrap()
    );
    let snapshot = table.snapshot(None).unwrap().unwrap();
    let paths: Vec<&str> = snapshot.files.keys().map(String::as_str).collect();
    let theirs: Vec<&str> = seen["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(paths, theirs);
    for add in snapshot.files.values() {
        assert!(
            ["2026-12-01", "2026-12-02"].contains(&add.date.as_str()),
            "{add:?}"
        );
        let stats = add
            .stats
            .as_ref()
            .and_then(|s| s.parse())
            .expect("delta-rs writes statistics");
        assert_eq!(stats.num_records, 5);
        assert!(stats.columns["created_at"].min.is_string(), "{stats:?}");
    }
    let next = table
        .commit(&Change {
            info: CommitInfo {
                run_id: "r-after".into(),
                operation: "WRITE".into(),
                timestamp: now(),
                part: None,
            },
            adds: vec![Add {
                path: "date=2026-12-03/part-x.parquet".into(),
                ..snapshot.files.values().next().unwrap().clone()
            }],
            removes: Vec::new(),
        })
        .unwrap();
    assert_eq!(Some(next.version), table.latest_version().unwrap());
    assert_eq!(
        table.snapshot(None).unwrap().unwrap().files.len(),
        paths.len() + 1
    );
}
