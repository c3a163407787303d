//! `xquik-dm load --from <DIR or URL> --to postgresql://…`: loads every
//! sealed run that is not loaded yet into PostgreSQL, in chain order, each
//! in one transaction with its row in the ledger `xquik_dm.loaded_runs`.
//!
//! - The rows come from the run's own segment of the handoff file (the
//!   manifest names its offset, length and SHA-256): the JSONL holds every
//!   committed record, also after `compact` merged the Parquet files, and
//!   in a bucket too. The manifest is checked against the chain, the run's
//!   Parquet files (where a compaction has not merged them) and its
//!   segment against the manifest; the segment is hashed as it streams in
//!   and a mismatch rolls the run back.
//! - Each run: binary `COPY` into temporary tables, then `INSERT … ON
//!   CONFLICT DO NOTHING` into `xquik_dm.messages` and `xquik_dm.sends`
//!   (primary keys make a duplicate impossible), then the ledger row
//!   (run ID, manifest SHA-256, rows inserted, rows already there), then
//!   `COMMIT`. A killed load leaves whole runs loaded or not; a rerun loads
//!   what is missing.
//! - The ledger must agree with the folder: a recorded run whose manifest
//!   digest the chain no longer holds means the folder was replaced or
//!   rolled back — exit 5, nothing loaded.
//! - A run whose segment or manifest fails its check stops the load there
//!   (exit 5, the file named); the runs before it stay loaded.
//! - A connection lost once loading has begun (a restart, a failover)
//!   ends the load as partial, exit 4: the runs before the cut one are
//!   loaded, the cut one was rolled back by the server, and a rerun loads
//!   the rest exactly once (the ledger says where to resume).
//! - Progress: a bar on a terminal, a log line per run otherwise.
//!
//! Connection (`connect`): the URL (or `DATABASE_URL`), completed by the
//! usual `PG*` variables, over TLS as libpq's `sslmode` words say (`tls`).
//! The password and key contents are never printed.

mod connect;
mod tls;

use std::io::BufRead;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::audit::{self, ChainEntry};
use crate::commands::verify::Failure;
use crate::error::{Error, Result};
use crate::records::{HistoryRow, RecordType, SendRow};
use crate::sinks::sha256_hex;
use crate::storage::{Location, Storage};
use connect::{Session, Target};

/// Connection attempts after the first, by default, while the server
/// cannot be reached (`--retry-connect`).
pub const RETRY_CONNECT: u32 = 3;

/// The tables, created when missing.
const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS xquik_dm;
CREATE TABLE IF NOT EXISTS xquik_dm.messages (
    message_id text NOT NULL,
    conversation_user_id text NOT NULL,
    account text NOT NULL,
    sender_id text NOT NULL,
    receiver_id text NOT NULL,
    created_at timestamptz,
    message_text text,
    media_url text,
    PRIMARY KEY (conversation_user_id, message_id)
);
CREATE TABLE IF NOT EXISTS xquik_dm.sends (
    message_id text PRIMARY KEY,
    success boolean NOT NULL,
    send_status text NOT NULL,
    sender_account text NOT NULL,
    recipient_user_id text NOT NULL,
    message_text text NOT NULL,
    sent_at timestamptz NOT NULL,
    media_id text,
    media_ids text[]
);
CREATE TABLE IF NOT EXISTS xquik_dm.loaded_runs (
    seq bigint PRIMARY KEY,
    run_id text NOT NULL UNIQUE,
    manifest_sha256 text NOT NULL,
    rows_inserted bigint NOT NULL,
    rows_present bigint NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
";

/// What a load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Runs loaded now.
    pub runs_loaded: u64,
    /// Runs the ledger already held.
    pub runs_already_loaded: u64,
    /// Rows inserted.
    pub rows_inserted: u64,
    /// Rows skipped because they were there already.
    pub rows_skipped: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// The file that failed its check, when one stopped the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The connection lost, when that stopped the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
}

/// A connection lost during the load.
#[derive(Debug, Clone, Serialize)]
pub struct Interruption {
    /// The run being loaded when it was lost (rolled back), if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// How the connection ended.
    pub reason: String,
}

impl LoadReport {
    /// 0 loaded (or nothing to load), 4 the connection was lost (partial:
    /// whole runs loaded, a rerun loads the rest), 5 a check failed.
    pub fn exit_code(&self) -> u8 {
        match (&self.failure, &self.interrupted) {
            (Some(_), _) => 5,
            (None, Some(_)) => 4,
            (None, None) => 0,
        }
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loaded {} runs ({} loaded before): {} rows inserted, {} already there, in {:.2} s",
            self.runs_loaded,
            self.runs_already_loaded,
            self.rows_inserted,
            self.rows_skipped,
            self.seconds
        )?;
        if let Some(failure) = &self.failure {
            writeln!(
                f,
                "  STOPPED: {}: {} (this run and later ones are not loaded)",
                failure.path, failure.reason
            )?;
        }
        if let Some(cut) = &self.interrupted {
            let during = match &cut.run_id {
                Some(run) => format!(" during run {run}"),
                None => String::new(),
            };
            writeln!(
                f,
                "  INTERRUPTED: the connection to the database was lost{during} ({}): the runs before are loaded, the rest are not; run load again to load them",
                cut.reason
            )?;
        }
        Ok(())
    }
}

/// A variable of the environment, unset when empty (as libpq reads them).
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Loads every sealed run of `from` not loaded yet into `to`, trying to
/// connect `retry_connect` more times while the server cannot be reached.
pub async fn run(from: &Location, to: &str, retry_connect: u32) -> Result<LoadReport> {
    let started = Instant::now();
    from.require_existing("--from")?;
    let storage = crate::shard::open(from)?;
    if from.as_dir().is_none() {
        storage.prepare()?;
    }
    let (chain, _) = audit::read_chain(storage.as_ref())?;
    if chain.is_empty() {
        return Err(Error::invalid(
            "--from",
            format!("{from} holds no sealed run of xquik-dm: nothing to load"),
        ));
    }
    let target = Target::new(to, &env_var)?;
    let mut session = connect::open(&target, retry_connect).await?;
    let mut report = LoadReport::default();
    let outcome = match prepare(&session.client, &chain).await {
        Ok(Ledger::Agrees(loaded)) => {
            report.runs_already_loaded = loaded as u64;
            let todo = chain.get(loaded..).unwrap_or_default();
            load_runs(&mut session, &storage, todo, &mut report).await
        }
        Ok(Ledger::Disagrees(failure)) => {
            report.failure = Some(failure);
            Ok(())
        }
        Err(e) => Err((e, None)),
    };
    if let Err((e, run)) = outcome {
        // A connection gone mid-load is a partial load (exit 4), reported;
        // anything else the server said is an error. The cut run's
        // transaction is rolled back by the server; if the loss hit its
        // COMMIT, the commit may have landed, and then its ledger row
        // landed with it: the rerun reads the ledger and does not load it
        // twice either way.
        if !connect::is_lost(&e) {
            return Err(connect::session_error(&target, &e));
        }
        report.interrupted = Some(Interruption {
            run_id: run.map(|entry| entry.run_id.clone()),
            reason: connect::lost_reason(&e),
        });
    }
    session.close().await;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What the ledger says of the chain.
enum Ledger {
    /// The first this many runs of the chain are loaded.
    Agrees(usize),
    /// It holds a run the chain does not: nothing may be loaded.
    Disagrees(Failure),
}

/// Creates the tables when missing, takes the load lock and reads the
/// ledger.
async fn prepare(
    client: &tokio_postgres::Client,
    chain: &[ChainEntry],
) -> std::result::Result<Ledger, tokio_postgres::Error> {
    client.batch_execute(SCHEMA).await?;
    // One load at a time per database: a second one waits here.
    client
        .execute("SELECT pg_advisory_lock(7813021906)", &[])
        .await?;
    let ledger = client
        .query(
            "SELECT seq, run_id, manifest_sha256 FROM xquik_dm.loaded_runs ORDER BY seq",
            &[],
        )
        .await?;
    for row in &ledger {
        let (seq, run_id, sha): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let matches = usize::try_from(seq - 1)
            .ok()
            .and_then(|i| chain.get(i))
            .is_some_and(|e| e.run_id == run_id && e.sha256 == sha);
        if !matches {
            return Ok(Ledger::Disagrees(Failure {
                path: audit::CHAIN.to_owned(),
                reason: format!(
                    "the database holds run {run_id} (manifest {sha}) as loaded, but the folder's chain does not: the folder was replaced or rolled back; nothing was loaded"
                ),
            }));
        }
    }
    Ok(Ledger::Agrees(ledger.len()))
}

/// Loads `todo` in chain order, each run in its own transaction. A run
/// that fails its check ends the load there, in the report; a database
/// error ends it too, returned with the run it cut.
async fn load_runs<'a>(
    session: &mut Session,
    storage: &Storage,
    todo: &'a [ChainEntry],
    report: &mut LoadReport,
) -> std::result::Result<(), (tokio_postgres::Error, Option<&'a ChainEntry>)> {
    // On a terminal, a bar of the runs to load; otherwise a log line each.
    let bar = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(todo.len() as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs {msg}")
            {
                bar.set_style(style);
            }
            bar
        })
    };
    let mut outcome = Ok(());
    for entry in todo {
        match load_run(&mut session.client, storage, entry).await {
            Ok((inserted, present)) => {
                report.runs_loaded += 1;
                report.rows_inserted += inserted;
                report.rows_skipped += present;
                match &bar {
                    Some(bar) => {
                        bar.inc(1);
                        bar.set_message(format!("· {} rows inserted", report.rows_inserted));
                    }
                    None => {
                        tracing::info!(run = entry.run_id.as_str(), inserted, present, "run loaded")
                    }
                }
            }
            Err(RunFailure::Check(failure)) => {
                report.failure = Some(failure);
                break;
            }
            Err(RunFailure::Db(e)) => {
                outcome = Err((e, Some(entry)));
                break;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcome
}

/// Why a run was not loaded.
enum RunFailure {
    /// A file failed its check: the load stops here, exit 5.
    Check(Failure),
    /// The database failed.
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for RunFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        RunFailure::Db(e)
    }
}

/// One record of a run on its way to the database, or the check that
/// failed.
enum Item {
    History(HistoryRow),
    Send(SendRow),
    Failed(Failure),
}

fn failure(path: &str, reason: String) -> Failure {
    Failure {
        path: path.to_owned(),
        reason,
    }
}

/// Reads the run's manifest (checked against its chain entry) and its
/// handoff segments line by line into `items`, hashing as it goes; a
/// segment that does not match the manifest's size and SHA-256 ends with
/// [`Item::Failed`], and the run is rolled back. Runs on a thread of its
/// own (the storage reads block); memory holds a few thousand records,
/// however large the run.
fn stream_segments(storage: &Storage, entry: &ChainEntry, items: &tokio::sync::mpsc::Sender<Item>) {
    let send = |item: Item| items.blocking_send(item).is_ok();
    let (manifest, bytes) = match audit::read_manifest(storage.as_ref(), &entry.manifest) {
        Ok(m) => m,
        Err(e) => {
            send(Item::Failed(failure(&entry.manifest, e.to_string())));
            return;
        }
    };
    if sha256_hex(&bytes) != entry.sha256 {
        send(Item::Failed(failure(
            &entry.manifest,
            "SHA-256 differs from its chain entry".into(),
        )));
        return;
    }
    // The run's Parquet files too, where they still are (a later
    // compaction may have merged them; the rows come from the JSONL).
    for f in manifest.files.iter().filter(|f| f.offset.is_none()) {
        let checked = match storage.size(&f.path) {
            Ok(None) => continue,
            Ok(Some(_)) => audit::digest(storage.as_ref(), &f.path),
            Err(e) => Err(e),
        };
        let reason = match checked {
            Ok((sha, bytes)) if sha == f.sha256 && bytes == f.bytes => continue,
            Ok(_) => format!("SHA-256 differs from run {}'s manifest", entry.run_id),
            Err(e) => e.to_string(),
        };
        send(Item::Failed(failure(&f.path, reason)));
        return;
    }
    for f in manifest.files.iter().filter(|f| f.offset.is_some()) {
        let (offset, length) = (f.offset.unwrap_or(0), f.length.unwrap_or(f.bytes));
        let reader = match storage.handoff_reader(offset..offset.saturating_add(length)) {
            Ok(r) => r,
            Err(e) => {
                send(Item::Failed(failure(&f.path, e.to_string())));
                return;
            }
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
        let mut hasher = Sha256::new();
        let (mut read, mut line, mut n) = (0u64, Vec::new(), 0u64);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    send(Item::Failed(failure(&f.path, e.to_string())));
                    return;
                }
            }
            hasher.update(&line);
            read += line.len() as u64;
            n += 1;
            let record = line.strip_suffix(b"\n").unwrap_or(&line);
            let item = parse_record(record).unwrap_or_else(|what| {
                Item::Failed(failure(
                    &f.path,
                    format!("record {n} of run {}'s segment is {what}", entry.run_id),
                ))
            });
            let failed = matches!(item, Item::Failed(_));
            if !send(item) || failed {
                return;
            }
        }
        if read != length || hex::encode(hasher.finalize()) != f.sha256 {
            send(Item::Failed(failure(
                &f.path,
                format!(
                    "bytes {offset}..{} differ from run {}'s manifest",
                    offset + length,
                    entry.run_id
                ),
            )));
            return;
        }
    }
}

/// One JSONL record as the row it is.
fn parse_record(line: &[u8]) -> std::result::Result<Item, &'static str> {
    #[derive(serde::Deserialize)]
    struct Tag {
        record_type: RecordType,
    }
    let tag: Tag = serde_json::from_slice(line).map_err(|_| "not a record")?;
    match tag.record_type {
        RecordType::History => serde_json::from_slice(line)
            .map(Item::History)
            .map_err(|_| "not a history record"),
        RecordType::Send => serde_json::from_slice(line)
            .map(Item::Send)
            .map_err(|_| "not a send record"),
    }
}

/// The columns of `xquik_dm.messages`, in order, as `COPY` sends them.
const MESSAGE_COLUMNS: [Type; 8] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
];

/// The columns of `xquik_dm.sends`.
const SEND_COLUMNS: [Type; 9] = [
    Type::TEXT,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT_ARRAY,
];

/// A binary `COPY` into the temporary table `table`.
async fn copy_into(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    columns: &[Type],
) -> std::result::Result<BinaryCopyInWriter, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await?;
    Ok(BinaryCopyInWriter::new(sink, columns))
}

fn timestamp(micros: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_micros(micros)
}

/// Loads one run's rows and its ledger row in one transaction. Returns
/// (rows inserted, rows already there).
async fn load_run(
    client: &mut tokio_postgres::Client,
    storage: &Storage,
    entry: &ChainEntry,
) -> std::result::Result<(u64, u64), RunFailure> {
    let (items, mut incoming) = tokio::sync::mpsc::channel(4096);
    let reader = {
        let (storage, entry) = (storage.clone(), entry.clone());
        std::thread::spawn(move || stream_segments(&storage, &entry, &items))
    };
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TEMP TABLE load_messages (LIKE xquik_dm.messages) ON COMMIT DROP;
         CREATE TEMP TABLE load_sends (LIKE xquik_dm.sends) ON COMMIT DROP;",
    )
    .await?;
    let writer = copy_into(&tx, "load_messages", &MESSAGE_COLUMNS).await?;
    futures_util::pin_mut!(writer);
    let (mut history, mut sends) = (0u64, Vec::new());
    while let Some(item) = incoming.recv().await {
        let r = match item {
            Item::History(r) => r,
            Item::Send(s) => {
                sends.push(s);
                continue;
            }
            // Dropping the transaction rolls back what this run copied.
            Item::Failed(f) => return Err(RunFailure::Check(f)),
        };
        history += 1;
        let created = r.created_at.and_then(timestamp);
        let values: [&(dyn ToSql + Sync); 8] = [
            &r.message_id,
            &r.conversation_user_id,
            &r.account,
            &r.sender_id,
            &r.receiver_id,
            &created,
            &r.message_text,
            &r.media_url,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    let _ = reader.join();
    let writer = copy_into(&tx, "load_sends", &SEND_COLUMNS).await?;
    futures_util::pin_mut!(writer);
    for s in &sends {
        let sent = timestamp(s.sent_at);
        let values: [&(dyn ToSql + Sync); 9] = [
            &s.message_id,
            &s.success,
            &s.send_status,
            &s.sender_account,
            &s.recipient_user_id,
            &s.message_text,
            &sent,
            &s.media_id,
            &s.media_ids,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    let inserted_messages = tx
        .execute(
            "INSERT INTO xquik_dm.messages SELECT * FROM load_messages ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    let inserted_sends = tx
        .execute(
            "INSERT INTO xquik_dm.sends SELECT * FROM load_sends ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    let total = history + sends.len() as u64;
    let inserted = inserted_messages + inserted_sends;
    let present = total.saturating_sub(inserted);
    tx.execute(
        "INSERT INTO xquik_dm.loaded_runs (seq, run_id, manifest_sha256, rows_inserted, rows_present) VALUES ($1, $2, $3, $4, $5)",
        &[
            &i64::try_from(entry.seq).unwrap_or(i64::MAX),
            &entry.run_id,
            &entry.sha256,
            &i64::try_from(inserted).unwrap_or(i64::MAX),
            &i64::try_from(present).unwrap_or(i64::MAX),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok((inserted, present))
}
