//! The store's tests: runs killed at each point of the commit protocol
//! and what the next run repairs and takes over, run IDs, the lock, and a
//! run's cost after many runs.

use super::*;
use std::path::Path;

use crate::records::HistoryRow;

impl Store {
    /// Rolls both Parquet tables over every `rows` rows (tests).
    fn set_file_rows(&mut self, rows: u64) {
        self.messages.set_file_rows(rows);
        self.sends.set_file_rows(rows);
    }
}

fn local(dir: &Path) -> Storage {
    Arc::new(crate::storage::local::LocalDir::new(dir))
}
use crate::records::RecordType;

fn row(i: u64) -> HistoryRow {
    HistoryRow {
        record_type: RecordType::History,
        message_id: (1_900_000_000_000_000_000u64 + i).to_string(),
        conversation_user_id: "42".into(),
        account: "acme".into(),
        sender_id: "42".into(),
        receiver_id: "7".into(),
        created_at: None,
        message_text: Some(format!("text {i}")),
        media_url: None,
    }
}

fn stamp(run_id: &str) -> RunStamp {
    RunStamp {
        run_id: run_id.into(),
        date: "2026-11-26".into(),
        started_at: "2026-11-26T00:00:00Z".into(),
    }
}

fn body() -> ManifestBody {
    ManifestBody::empty("sync")
}

#[test]
fn uncommitted_appends_vanish_and_committed_ones_reach_parquet_and_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    // Run 1 commits 3 rows, appends 2 more and dies before committing,
    // closing its Parquet file or sealing.
    let mut store = Store::open(&local(out), &stamp("run1")).unwrap();
    let first: Vec<_> = (0..3).map(row).collect();
    store.append_history(&HistoryBatch::of(&first)).unwrap();
    store.commit().unwrap();
    let lost: Vec<_> = (3..5).map(row).collect();
    store.append_history(&HistoryBatch::of(&lost)).unwrap();
    drop(store);

    // Run 2 repairs and takes run 1's committed rows over.
    let store = Store::open(&local(out), &stamp("run2")).unwrap();
    let repair = store.repair().clone();
    assert_eq!(
        repair.jsonl_bytes_cut,
        HistoryBatch::of(&lost).lines().len() as u64
    );
    assert_eq!(repair.parquet_rebuilt_rows, 3);
    let mut removed = repair.audit_removed.clone();
    removed.sort();
    // The rows file vanished with its writer (a killed process would
    // leave its temporary, which goes the same way); the page log,
    // empty, holds nothing to recover.
    assert_eq!(removed, vec!["audit/runs/.run1.pages.jsonl.tmp"]);
    let sealed = store.seal(body()).unwrap();
    assert_eq!(sealed.files.len(), 2, "{:?}", sealed.files);
    assert_eq!(sealed.files[0].offset, Some(0));
    assert_eq!(sealed.files[0].rows, 3);
    assert_eq!(sealed.files[1].rows, 3);
    assert_eq!(sealed.audit_rows.rows, 3);
    assert_eq!(
        std::fs::read(out.join(jsonl::FILE_NAME)).unwrap(),
        HistoryBatch::of(&first).lines()
    );
    let checkpoint = Checkpoint::load(&*local(out)).unwrap();
    assert_eq!(
        checkpoint.parquet.messages_covered_bytes,
        checkpoint.jsonl.committed_bytes
    );
    assert_eq!(checkpoint.jsonl.history_rows, 3);
    assert_eq!(
        checkpoint.audit.coverage.jsonl_bytes,
        checkpoint.jsonl.committed_bytes
    );
    assert_eq!(checkpoint.audit.last_digest, Some(sealed.chain.sha256));
}

#[test]
fn a_second_run_manifest_covers_only_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let mut store = Store::open(&local(out), &stamp("a")).unwrap();
    let first: Vec<_> = (0..3).map(row).collect();
    store.append_history(&HistoryBatch::of(&first)).unwrap();
    let a = store.seal(body()).unwrap();
    let mut store = Store::open(&local(out), &stamp("b")).unwrap();
    let second: Vec<_> = (3..4).map(row).collect();
    store.append_history(&HistoryBatch::of(&second)).unwrap();
    let b = store.seal(body()).unwrap();
    let len_a = HistoryBatch::of(&first).lines().len() as u64;
    assert_eq!(b.files[0].offset, Some(len_a));
    assert_eq!(b.files[0].rows, 1);
    assert_eq!(b.chain.previous_sha256, Some(a.chain.sha256));
    assert_eq!(b.chain.seq, 2);
}

fn send_row() -> SendRow {
    SendRow {
        record_type: RecordType::Send,
        message_id: "1900000000000000999".into(),
        success: true,
        send_status: "success".into(),
        sender_account: "acme".into(),
        recipient_user_id: "7".into(),
        message_text: "sent".into(),
        sent_at: 1_764_000_000_000_000,
        media_id: None,
        media_ids: None,
    }
}

/// Rows of `table` in the Parquet files the sealed runs list.
fn parquet_rows(out: &Path, table: &str) -> u64 {
    let storage = local(out);
    let (chain, _) = audit::read_chain(&*storage).unwrap();
    chain
        .iter()
        .flat_map(|e| {
            audit::read_manifest(&*storage, &e.manifest)
                .unwrap()
                .0
                .files
        })
        .filter(|f| f.path.starts_with(&format!("parquet/{table}/")))
        .map(|f| f.rows)
        .sum()
}

/// A table whose file rolls over while the other table still has rows
/// waiting is covered on its own: nothing is rebuilt twice.
#[test]
fn tables_are_covered_separately_across_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    // A send is committed, then the run dies before sealing.
    let mut store = Store::open(&local(out), &stamp("a")).unwrap();
    store.append_send(&send_row()).unwrap();
    store.commit().unwrap();
    drop(store);
    // The next run takes the send over (pending in its sends table),
    // writes history until the messages file rolls over, commits, dies.
    let mut store = Store::open(&local(out), &stamp("b")).unwrap();
    store.set_file_rows(2);
    let rows: Vec<_> = (0..3).map(row).collect();
    store.append_history(&HistoryBatch::of(&rows)).unwrap();
    store.commit().unwrap();
    drop(store);
    let store = Store::open(&local(out), &stamp("c")).unwrap();
    store.seal(body()).unwrap();
    assert_eq!(parquet_rows(out, "messages"), 3);
    assert_eq!(parquet_rows(out, "sends"), 1);
}

#[test]
fn a_run_id_already_used_is_replaced_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let id = "20261126T000000Z-0000000000000001";
    let first = Store::open(&local(out), &stamp(id))
        .unwrap()
        .seal(body())
        .unwrap();
    let manifest = std::fs::read(out.join(&first.chain.manifest)).unwrap();
    let store = Store::open(&local(out), &stamp(id)).unwrap();
    assert_ne!(store.run_id(), id);
    assert!(store.run_id().starts_with("20261126T000000Z-"));
    let second = store.seal(body()).unwrap();
    assert_ne!(second.chain.manifest, first.chain.manifest);
    assert_eq!(
        std::fs::read(out.join(&first.chain.manifest)).unwrap(),
        manifest
    );
}

#[test]
fn a_folder_whose_checkpoint_was_removed_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let mut store = Store::open(&local(out), &stamp("a")).unwrap();
    let rows: Vec<_> = (0..3).map(row).collect();
    store.append_history(&HistoryBatch::of(&rows)).unwrap();
    store.seal(body()).unwrap();
    let jsonl = std::fs::read(out.join(jsonl::FILE_NAME)).unwrap();
    std::fs::remove_file(out.join(checkpoint::KEY)).unwrap();
    let err = Store::open(&local(out), &stamp("b")).unwrap_err();
    assert!(err.to_string().contains("xquik-dm rebuild"), "{err}");
    assert_eq!(err.exit_code(), 3);
    assert_eq!(std::fs::read(out.join(jsonl::FILE_NAME)).unwrap(), jsonl);
    assert!(!Checkpoint::exists(&*local(out)).unwrap());
}

/// A killed run's files are found by the names it gives them: the
/// repair lists neither `parquet/` nor `audit/runs/`, keeps what was
/// committed and removes the rest.
#[test]
fn a_killed_run_is_cleaned_up_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let store = Store::open(&local(out), &stamp("a")).unwrap();
    store.seal(body()).unwrap();
    let mut store = Store::open(&local(out), &stamp("b")).unwrap();
    store.set_file_rows(2);
    let rows: Vec<_> = (0..2).map(row).collect();
    store.append_history(&HistoryBatch::of(&rows)).unwrap();
    store.commit().unwrap();
    let more: Vec<_> = (2..4).map(row).collect();
    store.append_history(&HistoryBatch::of(&more)).unwrap();
    store
        .page_log()
        .push(&serde_json::json!({"endpoint": "GET /x/users/{id}", "status": 200, "credits": 1}))
        .unwrap();
    store.page_log().sync().unwrap();
    drop(store);
    let folder = crate::sinks::parquet::partition::<MessageColumns>("2026-11-26");
    let file = |n| crate::sinks::parquet::file_key(&folder, "b", n);
    assert!(out.join(file(1)).exists() && out.join(file(2)).exists());

    let counting = crate::storage::counting::Counting::new(local(out));
    let storage: Storage = Arc::new(counting.clone());
    let store = Store::open(&storage, &stamp("c")).unwrap();
    // The killed run's commits are looked for in each table's log; a
    // table with no log yet is listed to be sure (an empty folder). No
    // folder that grows with the history is listed.
    let listed = counting.take().listed;
    assert!(
        listed.iter().all(|p| p.ends_with("/_delta_log/")),
        "{listed:?}"
    );
    assert_eq!(store.repair().parquet_removed, vec![file(2)]);
    assert_eq!(store.recovered.len(), 1);
    assert_eq!(store.recovered[0].run_id, "b");
    let sealed = store.seal(body()).unwrap();
    assert!(out.join(file(1)).exists() && !out.join(file(2)).exists());
    assert!(sealed.files.iter().any(|f| f.path == file(1)));
    let report = crate::commands::verify::check(&local(out), None, None);
    assert!(report.ok(), "{report}");
}

/// A folder written by the version whose checkpoint listed every
/// Parquet file and named no runs (format 1) is upgraded by one listing
/// repair: listed files stay, a killed run's unlisted file goes, and
/// from then on the checkpoint holds only what is not sealed.
#[test]
fn a_format_1_checkpoint_is_upgraded_by_one_listing_repair() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let mut store = Store::open(&local(out), &stamp("a")).unwrap();
    let rows: Vec<_> = (0..3).map(row).collect();
    store.append_history(&HistoryBatch::of(&rows)).unwrap();
    let sealed = store.seal(body()).unwrap();
    let listed = sealed.files[1].clone();
    // What format 1 looked like, and a file a killed run left.
    let mut v1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(checkpoint::KEY)).unwrap()).unwrap();
    v1["version"] = 1.into();
    v1.as_object_mut().unwrap().remove("unsealed");
    v1["parquet"]["files"] = serde_json::json!([listed]);
    v1["parquet"]
        .as_object_mut()
        .unwrap()
        .remove("listed_before");
    std::fs::write(out.join(checkpoint::KEY), v1.to_string()).unwrap();
    let folder = crate::sinks::parquet::partition::<MessageColumns>("2026-11-26");
    let orphan = crate::sinks::parquet::file_key(&folder, "killed", 1);
    std::fs::write(out.join(&orphan), b"PAR1").unwrap();

    let store = Store::open(&local(out), &stamp("b")).unwrap();
    assert_eq!(store.repair().parquet_removed, vec![orphan.clone()]);
    assert!(store.checkpoint().parquet.files.is_empty());
    assert_eq!(store.checkpoint().parquet.listed_before, 1);
    store.seal(body()).unwrap();
    assert!(out.join(&listed.path).exists() && !out.join(&orphan).exists());
    let upgraded = Checkpoint::load(&*local(out)).unwrap();
    assert_eq!(upgraded.version, 2);
    assert_eq!(upgraded.unsealed, Some(Vec::new()));
    let report = crate::commands::verify::check(&local(out), None, None);
    assert!(report.ok(), "{report}");
}

/// A scratch folder in memory where there is one (`/dev/shm`), so that
/// thousands of runs do not wait for a disk.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap(),
        false => tempfile::tempdir().unwrap(),
    }
}

/// 10,000 small runs in a row: what a run reads, writes and lists, and
/// the checkpoint's size, are the same at the end as at the start. The
/// bench's `longevity` scenario prints the wall times.
#[test]
fn a_run_costs_the_same_after_ten_thousand_runs() {
    let dir = scratch();
    let counting = crate::storage::counting::Counting::new(local(dir.path()));
    let storage: Storage = Arc::new(counting.clone());
    let sample = |run: u64| {
        counting.take();
        let mut store =
            Store::open(&storage, &stamp(&format!("20261126T000000Z-{run:016x}"))).unwrap();
        let rows: Vec<_> = (run * 2..run * 2 + 2).map(row).collect();
        store.append_history(&HistoryBatch::of(&rows)).unwrap();
        store.commit().unwrap();
        store.seal(body()).unwrap();
        let counts = counting.take();
        let checkpoint = std::fs::metadata(dir.path().join(checkpoint::KEY))
            .unwrap()
            .len();
        (counts, checkpoint)
    };
    // Samples between Delta checkpoints (every 100th commit writes one
    // and cleans the log up, which lists it).
    for run in 0..150 {
        sample(run);
    }
    let (first, first_checkpoint) = sample(150);
    for run in 151..9_950 {
        sample(run);
    }
    let (last, last_checkpoint) = sample(9_950);
    // Run numbers, offsets and sequence numbers gain digits; nothing
    // else may grow.
    assert!(last.read <= first.read + 256, "{first:?} {last:?}");
    assert!(last.written <= first.written + 256, "{first:?} {last:?}");
    assert!(
        last_checkpoint <= first_checkpoint + 64,
        "{first_checkpoint} {last_checkpoint}"
    );
    assert_eq!(last.listed, first.listed);
    assert!(
        last.listed_objects <= first.listed_objects + 2,
        "{first:?} {last:?}"
    );
    for prefix in &last.listed {
        assert!(
            !prefix.starts_with("parquet") && !prefix.starts_with(audit::RUNS_DIR),
            "{prefix}"
        );
    }
}

#[test]
fn a_second_store_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(&local(dir.path()), &stamp("a")).unwrap();
    assert!(matches!(
        Store::open(&local(dir.path()), &stamp("b")),
        Err(Error::Locked { .. })
    ));
}
