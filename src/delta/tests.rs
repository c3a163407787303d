//! Unit tests of the Delta log: commits, replay, optimistic concurrency,
//! checkpoints, cleanup, statistics and malformed logs, on a real folder.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};

use super::*;
use crate::error::Error;
use crate::sinks::parquet::Columns;
use crate::storage::local::LocalDir;

const DAY: i64 = 86_400_000;

fn folder() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage: Storage = Arc::new(LocalDir::new(dir.path()));
    (dir, storage)
}

fn add(run: &str, n: u64) -> Add {
    let mut columns = std::collections::BTreeMap::new();
    columns.insert(
        "message_id".to_owned(),
        ColumnStats {
            min: serde_json::json!(format!("{n}0")),
            max: serde_json::json!(format!("{n}9")),
            null_count: 0,
        },
    );
    Add {
        path: format!("date=2026-12-03/part-{run}-{n:04}.parquet"),
        date: "2026-12-03".to_owned(),
        size: 1000 + n,
        modification_time: 1_764_700_000_000,
        data_change: true,
        stats: Some(
            FileStats {
                num_records: 10,
                columns,
            }
            .into(),
        ),
    }
}

fn write(run: &str, files: u64, at: i64) -> Change {
    Change {
        info: CommitInfo {
            run_id: run.to_owned(),
            operation: "WRITE".to_owned(),
            timestamp: at,
            part: None,
        },
        adds: (1..=files).map(|n| add(run, n)).collect(),
        removes: Vec::new(),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[test]
fn version_zero_creates_the_table_and_later_commits_append() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    assert_eq!(table.latest_version().unwrap(), None);
    assert_eq!(table.snapshot(None).unwrap(), None);

    let first = table.commit(&write("r1", 2, now())).unwrap();
    assert_eq!(first.version, 0);
    let second = table.commit(&write("r2", 1, now())).unwrap();
    assert_eq!(second.version, 1);
    assert_eq!(table.latest_version().unwrap(), Some(1));

    let (bytes, actions) = table.read_commit(0).unwrap().unwrap();
    assert_eq!(first.sha256, crate::sinks::sha256_hex(&bytes));
    assert!(matches!(&actions[0], Action::CommitInfo(i) if i.run_id == "r1"));
    assert!(
        matches!(&actions[1], Action::Protocol(p) if p.min_reader_version == 1 && p.min_writer_version == 2)
    );
    let Action::Metadata(meta) = &actions[2] else {
        panic!("{actions:?}")
    };
    assert_eq!(meta.partition_columns, ["date"]);
    assert!(meta.schema_string.contains("\"created_at\""));
    let (_, later) = table.read_commit(1).unwrap().unwrap();
    assert!(
        !later
            .iter()
            .any(|a| matches!(a, Action::Protocol(_) | Action::Metadata(_)))
    );

    let snapshot = table.snapshot(None).unwrap().unwrap();
    assert_eq!(snapshot.version, 1);
    let paths: Vec<&str> = snapshot.files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "date=2026-12-03/part-r1-0001.parquet",
            "date=2026-12-03/part-r1-0002.parquet",
            "date=2026-12-03/part-r2-0001.parquet"
        ]
    );
    assert_eq!(
        snapshot.files[paths[0]],
        add("r1", 1),
        "an add reads back as written"
    );
    assert_eq!(table.versions().unwrap(), [0, 1]);
    assert!(
        storage
            .size("parquet/messages/_delta_log/00000000000000000001.json")
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_compaction_replaces_files_in_one_commit_and_time_travel_sees_before() {
    let (_dir, storage) = folder();
    let table = Table::new(storage, TableKind::Sends);
    table.commit(&write("r1", 3, now())).unwrap();
    let before = table.snapshot(None).unwrap().unwrap();
    let compact = Change {
        info: CommitInfo {
            run_id: "c1".into(),
            operation: "OPTIMIZE".into(),
            timestamp: now(),
            part: None,
        },
        adds: vec![Add {
            data_change: false,
            ..add("c1", 1)
        }],
        removes: before
            .files
            .values()
            .map(|a| a.to_remove(now(), false))
            .collect(),
    };
    assert_eq!(table.commit(&compact).unwrap().version, 1);
    let after = table.snapshot(None).unwrap().unwrap();
    assert_eq!(
        after.files.keys().collect::<Vec<_>>(),
        ["date=2026-12-03/part-c1-0001.parquet"]
    );
    assert_eq!(after.removed.len(), 3);
    assert_eq!(
        table.snapshot(Some(0)).unwrap().unwrap().files,
        before.files
    );
    let missing = table.snapshot(Some(7)).unwrap_err();
    assert!(matches!(missing, Error::InvalidInput { .. }), "{missing}");

    // The repair's inverse puts the inputs back, with their statistics.
    let undo = compact.inverse(
        CommitInfo {
            run_id: "r2".into(),
            operation: "DELETE".into(),
            timestamp: now(),
            part: None,
        },
        Some(&before),
    );
    table.commit(&undo).unwrap();
    let undone = table.snapshot(None).unwrap().unwrap();
    assert_eq!(
        undone.files.keys().collect::<Vec<_>>(),
        before.files.keys().collect::<Vec<_>>()
    );
    assert!(undone.files.values().all(|a| a.stats.is_some()));
}

#[test]
fn a_taken_version_is_retried_at_the_next_free_one() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&write("r1", 1, now())).unwrap();
    // Two other writers take versions 1 and 2 after this writer read the
    // log (which then ended at version 0).
    for (v, run) in [(1, "shard-2"), (2, "shard-3")] {
        let theirs = encode_for_test(&write(run, 1, now()), v);
        storage.put_new(&table.commit_key(v), &theirs).unwrap();
    }
    let ours = commit::commit_from(
        &table.log,
        TableKind::Messages,
        &write("shard-1", 1, now()),
        1,
        None,
        now(),
    )
    .unwrap();
    assert_eq!(ours.version, 3);
    let (bytes, _) = table.read_commit(3).unwrap().unwrap();
    assert_eq!(ours.sha256, crate::sinks::sha256_hex(&bytes));
    let files = table.snapshot(None).unwrap().unwrap().files;
    assert_eq!(files.len(), 4, "no commit is lost: {files:?}");

    // A writer that keeps losing gives up with a clear error.
    let many = MAX_ATTEMPTS as u64 + 10;
    for v in 4..many {
        storage
            .put_new(
                &table.commit_key(v),
                &encode_for_test(&write("w", 1, now()), v),
            )
            .unwrap();
    }
    let err = commit::commit_from(
        &table.log,
        TableKind::Messages,
        &write("late", 1, now()),
        4,
        None,
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::DeltaConflict { .. }), "{err}");
    assert!(err.to_string().contains("taken by other writers"), "{err}");
}

fn encode_for_test(change: &Change, version: u64) -> Vec<u8> {
    commit::encode(TableKind::Messages, change, version, now())
}

#[test]
fn concurrent_writers_get_dense_versions_and_lose_nothing() {
    let (_dir, storage) = folder();
    let handles: Vec<_> = (0..4)
        .map(|shard| {
            let table = Table::new(storage.clone(), TableKind::Messages);
            std::thread::spawn(move || {
                (0..10)
                    .map(|run| {
                        table
                            .commit(&write(&format!("s{shard}-{run}"), 1, now()))
                            .unwrap()
                            .version
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (0..40).collect::<Vec<_>>());
    let table = Table::new(storage, TableKind::Messages);
    assert_eq!(table.snapshot(None).unwrap().unwrap().files.len(), 40);
    let zero = table.read_commit(0).unwrap().unwrap().1;
    let metas = zero
        .iter()
        .filter(|a| matches!(a, Action::Metadata(_)))
        .count();
    assert_eq!(metas, 1);
    for v in 1..40 {
        let actions = table.read_commit(v).unwrap().unwrap().1;
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Metadata(_))),
            "v{v}"
        );
    }
}

#[test]
fn a_concurrent_removal_of_the_same_file_is_a_conflict() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&write("r1", 2, now())).unwrap();
    let victim = add("r1", 1).to_remove(now(), false);
    let theirs = Change {
        removes: vec![victim.clone()],
        ..write("c-other", 1, now())
    };
    storage
        .put_new(&table.commit_key(1), &encode_for_test(&theirs, 1))
        .unwrap();
    // This writer read the log at version 0 and compacts the same file.
    let ours = Change {
        removes: vec![victim],
        ..write("c-ours", 1, now())
    };
    let err =
        commit::commit_from(&table.log, TableKind::Messages, &ours, 1, None, now()).unwrap_err();
    assert!(matches!(err, Error::DeltaConflict { .. }), "{err}");
    assert!(err.to_string().contains("part-r1-0001.parquet"), "{err}");
    assert_eq!(
        table.latest_version().unwrap(),
        Some(1),
        "nothing was committed"
    );
    // A blind append does not conflict with it.
    let blind = commit::commit_from(
        &table.log,
        TableKind::Messages,
        &write("r3", 1, now()),
        1,
        None,
        now(),
    );
    assert_eq!(blind.unwrap().version, 2);
}

#[test]
fn a_checkpoint_every_hundred_versions_keeps_replay_short() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    for run in 0..205 {
        table.commit(&write(&format!("r{run}"), 1, now())).unwrap();
    }
    assert_eq!(table.checkpoints().unwrap(), [100, 200]);
    let hint = storage
        .get("parquet/messages/_delta_log/_last_checkpoint")
        .unwrap()
        .unwrap();
    let hint: serde_json::Value = serde_json::from_slice(&hint.bytes).unwrap();
    assert_eq!(hint["version"], 200);
    assert_eq!(hint["numOfAddFiles"], 201);
    assert_eq!(hint["size"], 203, "protocol, metaData and 201 adds");
    assert_eq!(table.latest_version().unwrap(), Some(204));

    let full = table.snapshot(None).unwrap().unwrap();
    assert_eq!(full.files.len(), 205);
    assert_eq!(
        full.files["date=2026-12-03/part-r7-0001.parquet"],
        add("r7", 1)
    );
    // Time travel uses the checkpoint of its hundred, or replays from 0.
    assert_eq!(table.snapshot(Some(150)).unwrap().unwrap().files.len(), 151);
    assert_eq!(table.snapshot(Some(42)).unwrap().unwrap().files.len(), 43);

    // The latest snapshot reads the checkpoint and the four commits after
    // it: without the commits before it, it is the same.
    for v in 0..200 {
        storage.delete(&table.commit_key(v)).unwrap();
    }
    assert_eq!(table.snapshot(None).unwrap().unwrap(), full);
    assert_eq!(table.latest_version().unwrap(), Some(204));
}

/// A table of three files, one of which a compaction then removed: two
/// versions, one tombstone.
fn table_with_a_tombstone(storage: &Storage) -> Table {
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&write("r1", 3, now())).unwrap();
    let mut change = write("c1", 1, now());
    change.removes = vec![add("r1", 2).to_remove(now(), false)];
    table.commit(&change).unwrap();
    table
}

#[test]
fn a_checkpoint_reads_back_as_the_snapshot_it_was_written_from() {
    let (_dir, storage) = folder();
    let table = table_with_a_tombstone(&storage);
    let snapshot = table.snapshot(None).unwrap().unwrap();
    table.checkpoint_at(1, now()).unwrap();
    let back = checkpoint::read_rows(&table.log, 1, checkpoint::Rows::All).unwrap();
    assert_eq!(back, snapshot.to_actions(now() - 7 * DAY));
    // A path that needs escaping round-trips.
    let odd = Add {
        path: "date=2026-12-03/part run%1.parquet".to_owned(),
        ..add("x", 1)
    };
    let bytes = checkpoint::encode(&[Action::Add(odd.clone())]).unwrap();
    storage.put_new(&table.checkpoint_key(9), &bytes).unwrap();
    assert_eq!(
        checkpoint::read_rows(&table.log, 9, checkpoint::Rows::All).unwrap(),
        [Action::Add(odd)]
    );
}

#[test]
fn cleanup_deletes_only_expired_files_below_a_kept_checkpoint() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    let old = now() - 40 * DAY;
    for run in 0..150 {
        table.commit(&write(&format!("r{run}"), 1, old)).unwrap();
    }
    for run in 150..200 {
        table.commit(&write(&format!("r{run}"), 1, now())).unwrap();
    }
    // The checkpoint at 200 cleans: 0..99 are old and below checkpoint 100,
    // 100..149 are old too, but deleting them would leave 150..199 without
    // a checkpoint to replay from.
    table.commit(&write("r200", 1, now())).unwrap();
    assert_eq!(table.versions().unwrap(), (100..=200).collect::<Vec<_>>());
    assert_eq!(table.checkpoints().unwrap(), [100, 200]);
    assert_eq!(table.snapshot(None).unwrap().unwrap().files.len(), 201);
    assert_eq!(table.snapshot(Some(160)).unwrap().unwrap().files.len(), 161);
    let gone = table.snapshot(Some(50)).unwrap_err();
    assert!(
        gone.to_string().contains("00000000000000000000.json"),
        "{gone}"
    );

    // Everything old: only the newest checkpoint's version and later stay.
    table.checkpoint_at(200, now() + 40 * DAY).unwrap();
    assert_eq!(table.versions().unwrap(), [200]);
    assert_eq!(table.checkpoints().unwrap(), [200]);
    assert_eq!(table.latest_version().unwrap(), Some(200));
    assert_eq!(table.snapshot(None).unwrap().unwrap().files.len(), 201);
}

#[test]
fn retention_intervals_read_as_delta_writes_them() {
    assert_eq!(cleanup::parse_interval("interval 30 days"), Some(30 * DAY));
    assert_eq!(cleanup::parse_interval("interval 1 week"), Some(7 * DAY));
    assert_eq!(cleanup::parse_interval("2 hours"), Some(7_200_000));
    assert_eq!(cleanup::parse_interval("forever"), None);
    let mut config = std::collections::BTreeMap::new();
    let key = "delta.logRetentionDuration";
    assert_eq!(cleanup::retention(&config, key, 5), Some(5));
    config.insert(key.to_owned(), "interval 3 days".to_owned());
    assert_eq!(cleanup::retention(&config, key, 5), Some(3 * DAY));
}

#[test]
fn unknown_actions_and_fields_are_tolerated() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&write("r1", 1, now())).unwrap();
    let foreign = concat!(
        r#"{"commitInfo":{"timestamp":1,"operation":"WRITE","engineInfo":"spark","isolationLevel":"Serializable"}}"#,
        "\n",
        r#"{"txn":{"appId":"x","version":3}}"#,
        "\n",
        r#"{"add":{"path":"date=2026-12-04/part%20b.parquet","partitionValues":{"date":"2026-12-04"},"size":5,"modificationTime":2,"dataChange":true,"tags":{"a":"b"},"stats":"{\"numRecords\":4,\"tightBounds\":true}"}}"#,
        "\n",
        "\n",
    );
    storage
        .put_new(&table.commit_key(1), foreign.as_bytes())
        .unwrap();
    let (_, actions) = table.read_commit(1).unwrap().unwrap();
    assert!(matches!(&actions[1], Action::Other(v) if v["txn"]["appId"] == "x"));
    let snapshot = table.snapshot(None).unwrap().unwrap();
    let b = &snapshot.files["date=2026-12-04/part b.parquet"];
    assert_eq!(
        b.stats
            .as_ref()
            .and_then(Stats::parse)
            .map(|s| s.num_records),
        Some(4)
    );
    // A checkpoint carries another writer's statistics forward as it wrote
    // them (fields this tool does not know included), and a reader of the
    // checkpoint sees the same snapshot.
    table.checkpoint_at(1, now()).unwrap();
    let from_checkpoint = table.snapshot(None).unwrap().unwrap();
    let b = &from_checkpoint.files["date=2026-12-04/part b.parquet"];
    assert_eq!(
        b.stats.as_ref().map(Stats::json),
        Some(r#"{"numRecords":4,"tightBounds":true}"#)
    );
    assert_eq!(from_checkpoint.files, snapshot.files);
}

#[test]
fn a_malformed_log_is_an_error_naming_the_file() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&write("r1", 1, now())).unwrap();
    storage
        .put_new(&table.commit_key(1), b"{\"add\":{\"path\":3}}\n")
        .unwrap();
    let err = table.snapshot(None).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("00000000000000000001.json") && text.contains("line 1"),
        "{text}"
    );
    storage.delete(&table.commit_key(1)).unwrap();
    storage
        .put_new(&table.commit_key(1), b"not json\n")
        .unwrap();
    assert!(matches!(table.snapshot(None), Err(Error::Corrupt { .. })));
    storage.delete(&table.commit_key(1)).unwrap();

    storage
        .replace(
            "parquet/messages/_delta_log/_last_checkpoint",
            b"{\"vers",
            crate::storage::Expect::Any,
        )
        .unwrap();
    let err = table.latest_version().unwrap_err();
    assert!(err.to_string().contains("_last_checkpoint"), "{err}");
    storage
        .replace(
            "parquet/messages/_delta_log/_last_checkpoint",
            b"{\"version\":0,\"size\":3}",
            crate::storage::Expect::Any,
        )
        .unwrap();
    storage
        .put_new(&table.checkpoint_key(0), b"PAR1 not really")
        .unwrap();
    let err = table.snapshot(None).unwrap_err();
    assert!(err.to_string().contains("checkpoint.parquet"), "{err}");
}

#[test]
fn a_newer_reader_version_is_refused() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    table.commit(&write("r1", 1, now())).unwrap();
    let upgrade = r#"{"protocol":{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"]}}"#;
    storage
        .put_new(&table.commit_key(1), upgrade.as_bytes())
        .unwrap();
    let err = table.snapshot(None).unwrap_err();
    assert!(err.to_string().contains("reader version 3"), "{err}");
    // A writer upgrade alone still reads, but gets no checkpoint from here.
    storage.delete(&table.commit_key(1)).unwrap();
    let upgrade = r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":7,"writerFeatures":["rowTracking"]}}"#;
    storage
        .put_new(&table.commit_key(1), upgrade.as_bytes())
        .unwrap();
    assert_eq!(
        table
            .snapshot(None)
            .unwrap()
            .unwrap()
            .protocol
            .min_writer_version,
        7
    );
    let err = table.checkpoint_at(1, now()).unwrap_err();
    assert!(err.to_string().contains("writer version 7"), "{err}");
    assert!(table.checkpoints().unwrap().is_empty());
}

#[test]
fn statistics_cover_id_and_time_columns_only() {
    let schema = crate::sinks::parquet::MessageColumns::schema();
    let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let batch = |ids: Vec<Option<&str>>, times: Vec<Option<i64>>| {
        let n = ids.len();
        let same = |s: &'static str| text(vec![Some(s); n]);
        RecordBatch::try_new(
            schema.clone(),
            vec![
                same("history"),
                text(ids),
                same("42"),
                same("acme"),
                same("42"),
                same("7"),
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
                same("secret body"),
                text(vec![None; n]),
            ],
        )
        .unwrap()
    };
    let mut stats = StatsCollector::new(TableKind::Messages);
    stats
        .add_batch(&batch(
            vec![Some("9"), Some("10")],
            vec![Some(1_000_001), None],
        ))
        .unwrap();
    stats
        .add_batch(&batch(vec![Some("100")], vec![Some(86_400_000_000)]))
        .unwrap();
    let stats = stats.finish();
    assert_eq!(stats.num_records, 3);
    let ids = &stats.columns["message_id"];
    // Bytes order: "10" < "100" < "9".
    assert_eq!(
        (ids.min.as_str(), ids.max.as_str()),
        (Some("10"), Some("9"))
    );
    let times = &stats.columns["created_at"];
    assert_eq!(times.min, "1970-01-01T00:00:01.000001Z");
    assert_eq!(times.max, "1970-01-02T00:00:00.000000Z");
    assert_eq!(times.null_count, 1);
    let json = stats.to_json();
    assert!(
        !json.contains("secret") && !json.contains("message_text"),
        "{json}"
    );
    assert_eq!(FileStats::from_json(&json), Some(stats));

    let other = RecordBatch::try_new(
        crate::sinks::parquet::SendColumns::schema(),
        crate::sinks::parquet::SendColumns::new().take(),
    )
    .unwrap();
    assert!(
        StatsCollector::new(TableKind::Messages)
            .add_batch(&other)
            .is_err()
    );
}

#[test]
fn the_schema_string_matches_the_parquet_files() {
    use crate::sinks::parquet::{MessageColumns, SendColumns};
    for (kind, arrow) in [
        (TableKind::Messages, MessageColumns::schema()),
        (TableKind::Sends, SendColumns::schema()),
    ] {
        let delta: serde_json::Value = serde_json::from_str(&schema::schema_string(kind)).unwrap();
        let fields = delta["fields"].as_array().unwrap();
        assert_eq!(fields.len(), arrow.fields().len() + 1);
        for (field, column) in fields.iter().zip(arrow.fields()) {
            assert_eq!(field["name"], column.name().as_str());
            assert_eq!(field["nullable"], column.is_nullable(), "{}", column.name());
            let expected = match column.data_type() {
                arrow_schema::DataType::Utf8 => serde_json::json!("string"),
                arrow_schema::DataType::Boolean => serde_json::json!("boolean"),
                arrow_schema::DataType::Timestamp(_, Some(_)) => serde_json::json!("timestamp"),
                arrow_schema::DataType::List(_) => {
                    serde_json::json!({"type": "array", "elementType": "string", "containsNull": true})
                }
                other => panic!("unmapped {other}"),
            };
            assert_eq!(field["type"], expected, "{}", column.name());
        }
        assert_eq!(fields.last().unwrap()["name"], "date");
        for column in kind.stats_columns() {
            assert!(arrow.field_with_name(column).is_ok(), "{column}");
        }
    }
}

#[test]
fn a_commit_reads_only_the_checkpoint_hint_and_lists_nothing() {
    use crate::storage::counting::Counting;
    let (_dir, inner) = folder();
    let counting = Counting::new(inner);
    let table = Table::new(Arc::new(counting.clone()), TableKind::Messages);
    let mut costs = Vec::new();
    for run in 0..=200 {
        counting.take();
        table.commit(&write(&format!("r{run}"), 1, now())).unwrap();
        costs.push(counting.take());
    }
    let hint_bytes = inner_size(&table, "_last_checkpoint");
    for v in [120, 150, 199] {
        let cost = &costs[v];
        assert!(cost.listed.is_empty(), "v{v}: {cost:?}");
        assert_eq!(cost.read, hint_bytes, "v{v} reads the hint only: {cost:?}");
        let commit = table.read_commit(v as u64).unwrap().unwrap().0;
        assert_eq!(
            cost.written,
            commit.len() as u64,
            "v{v} writes its commit only"
        );
    }
    assert_eq!(
        costs[120].written,
        costs[150].written.min(costs[120].written)
    );
    // The checkpoint commit reads the previous checkpoint and the commits
    // since (O(live files)), and lists the log once, for cleanup.
    let at_200 = &costs[200];
    assert_eq!(at_200.listed.len(), 1, "{at_200:?}");
    let since: u64 = (101..200)
        .map(|v| table.read_commit(v).unwrap().unwrap().0.len() as u64)
        .sum();
    let previous = inner_size(&table, "00000000000000000100.checkpoint.parquet");
    assert!(at_200.read >= since + previous, "{at_200:?}");
    assert!(
        at_200.read <= since + previous + 4 * hint_bytes + 4096,
        "{at_200:?}"
    );
}

fn inner_size(table: &Table, name: &str) -> u64 {
    let key = format!("parquet/messages/_delta_log/{name}");
    table.storage().size(&key).unwrap().unwrap()
}

#[test]
fn a_gap_in_the_log_is_named_and_a_version_past_the_end_is_bad_input() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    for run in 0..4 {
        table.commit(&write(&format!("r{run}"), 1, now())).unwrap();
    }
    let err = table.snapshot(Some(9)).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("the latest is 3"), "{err}");
    storage.delete(&table.commit_key(2)).unwrap();
    let err = table.snapshot(Some(3)).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("00000000000000000002.json"),
        "{err}"
    );
    assert_eq!(table.snapshot(Some(1)).unwrap().unwrap().files.len(), 2);
}

#[test]
fn the_newest_version_is_found_by_probing_from_the_checkpoint_hint() {
    let (_dir, storage) = folder();
    let table = Table::new(storage.clone(), TableKind::Messages);
    let bytes = |v: u64| encode_for_test(&write(&format!("r{v}"), 1, now()), v);
    for v in 0..300 {
        storage.put_new(&table.commit_key(v), &bytes(v)).unwrap();
        assert_eq!(table.latest_version().unwrap(), Some(v));
        if v == 130 {
            // From here on the probe starts at a hint.
            table.checkpoint_at(100, now()).unwrap();
        }
    }
    let hint = storage
        .get("parquet/messages/_delta_log/_last_checkpoint")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&hint.bytes).contains("\"version\":100"));
    // A hint whose checkpoint and commit are both gone is a damaged log.
    storage.delete(&table.checkpoint_key(100)).unwrap();
    storage.delete(&table.commit_key(100)).unwrap();
    let err = table.latest_version().unwrap_err();
    assert!(err.to_string().contains("_last_checkpoint"), "{err}");
}

#[test]
fn a_reader_skips_the_tombstones_of_a_checkpoint_and_the_next_checkpoint_keeps_them() {
    let (_dir, storage) = folder();
    let table = table_with_a_tombstone(&storage);
    table.checkpoint_at(1, now()).unwrap();
    let bytes = storage
        .get(&table.checkpoint_key(1))
        .unwrap()
        .unwrap()
        .bytes;
    let file = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(bytes),
    )
    .unwrap();
    let groups: Vec<i64> = file
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(
        groups,
        [5, 1],
        "protocol, metaData, three adds; the tombstone"
    );
    let all = checkpoint::read_rows(&table.log, 1, checkpoint::Rows::All).unwrap();
    let live = checkpoint::read_rows(&table.log, 1, checkpoint::Rows::Live).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(live, all[..5]);
    let snapshot = table.snapshot(None).unwrap().unwrap();
    assert_eq!(snapshot.files.len(), 3);
    assert!(snapshot.removed.is_empty());
    // The checkpoint writer reads them, and keeps them within the retention.
    table.commit(&write("r2", 1, now())).unwrap();
    table.checkpoint_at(2, now()).unwrap();
    let next = checkpoint::read_rows(&table.log, 2, checkpoint::Rows::All).unwrap();
    let kept = next.iter().filter(|a| matches!(a, Action::Remove(_)));
    assert_eq!(kept.count(), 1);
}

#[test]
fn a_commit_that_removes_an_intervals_worth_of_files_is_checkpointed_at_once() {
    let (_dir, storage) = folder();
    let table = Table::new(storage, TableKind::Messages);
    let files = CHECKPOINT_INTERVAL;
    table.commit(&write("r1", files, now())).unwrap();
    let before = table.snapshot(None).unwrap().unwrap();
    let mut compact = write("c1", 1, now());
    compact.removes = before
        .files
        .values()
        .map(|a| a.to_remove(now(), false))
        .collect();
    assert_eq!(table.commit(&compact).unwrap().version, 1);
    // No reader parses those removes again: it starts from version 1.
    assert_eq!(table.checkpoints().unwrap(), [1]);
    let after = table.snapshot(None).unwrap().unwrap();
    assert_eq!(after.files.len(), 1);
    assert!(after.removed.is_empty());
    // A smaller removal waits for the interval.
    let mut small = write("c2", 1, now());
    small.removes = vec![add("c1", 1).to_remove(now(), false)];
    table.commit(&small).unwrap();
    assert_eq!(table.checkpoints().unwrap(), [1]);
}

#[test]
fn a_commit_line_is_one_action_or_an_error_naming_its_shape() {
    let add = r#"{"add":{"path":"date=2026-12-04/a.parquet","partitionValues":{"date":"2026-12-04"},"size":5,"modificationTime":2,"dataChange":true}}"#;
    assert!(matches!(Action::parse(add.as_bytes()), Ok(Action::Add(a)) if a.date == "2026-12-04"));
    let other = Action::parse(br#"{"cdc":{"path":"x"}}"#).unwrap();
    assert_eq!(
        other,
        Action::Other(serde_json::json!({"cdc": {"path": "x"}}))
    );
    let error = |line: &str| Action::parse(line.as_bytes()).unwrap_err();
    assert_eq!(error("{}"), "an empty action");
    assert_eq!(
        error(r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2},"txn":{}}"#),
        "an action line with more than one action"
    );
    assert_eq!(error(r#"{"add":{"path":3}}"#), "add: unexpected JSON shape");
    assert_eq!(
        error(r#"{"remove":{"path":"secret-value""#),
        "remove: truncated JSON"
    );
    assert_eq!(error("[1]"), "unexpected JSON shape");
    assert_eq!(error("{\"add\" 1}"), "add: malformed JSON");
    assert_eq!(
        error(r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}} x"#),
        "malformed JSON"
    );
}
