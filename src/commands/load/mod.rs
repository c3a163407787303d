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
//! - An erasure run (`forget`, retention) is applied exactly once, in chain
//!   order, in one transaction with its ledger row: the records it erased
//!   (its rows file, checked against its manifest) are deleted from
//!   `xquik_dm.messages` and `xquik_dm.sends`. Since an erasure rewrites the
//!   handoff file, the runs not loaded yet that precede the last erasure go
//!   in one transaction with it, their records read from the file's new
//!   generation (`read`). So a database loaded before an erasure ends up
//!   equal to one loaded after it.
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
mod read;
mod tls;

use std::time::Instant;

use serde::Serialize;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::audit::{self, AuditRow, ChainEntry};
use crate::commands::verify::Failure;
use crate::error::{Error, Result};
use crate::records::SendRow;
use crate::storage::{Location, Storage};
use connect::{Session, Target};
use read::Item;

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
    loaded_at timestamptz NOT NULL DEFAULT now(),
    rows_deleted bigint NOT NULL DEFAULT 0
);
-- A ledger made before erasures were applied gets the column; checked
-- first, since ALTER TABLE locks the table even when it changes nothing.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'xquik_dm'
                   AND table_name = 'loaded_runs' AND column_name = 'rows_deleted') THEN
        ALTER TABLE xquik_dm.loaded_runs ADD COLUMN rows_deleted bigint NOT NULL DEFAULT 0;
    END IF;
END $$;
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
    /// Erasure runs applied.
    pub erasures_applied: u64,
    /// Rows deleted by them.
    pub rows_deleted: u64,
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
        if self.erasures_applied > 0 {
            writeln!(
                f,
                "  applied {} erasure runs: {} rows deleted",
                self.erasures_applied, self.rows_deleted
            )?;
        }
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

/// Loads `todo` in chain order, in transactions of one run each — but for
/// the runs up to the last erasure that rewrote the handoff file, which go
/// together (see `read`). A run that fails its check ends the load there,
/// in the report; a database error ends it too, returned with the first
/// run of the transaction it cut.
async fn load_runs<'a>(
    session: &mut Session,
    storage: &Storage,
    todo: &'a [ChainEntry],
    report: &mut LoadReport,
) -> std::result::Result<(), (tokio_postgres::Error, Option<&'a ChainEntry>)> {
    let carrier = {
        let (storage, pending) = (storage.clone(), todo.to_vec());
        tokio::task::spawn_blocking(move || read::last_generation(&storage, &pending))
            .await
            .unwrap_or(None)
    };
    let (grouped, single) = todo.split_at(carrier.map_or(0, |k| k + 1));
    let units = std::iter::once(grouped)
        .filter(|group| !group.is_empty())
        .chain(single.chunks(1));
    let bar = progress_bar(todo.len() as u64);
    let mut outcome = Ok(());
    for unit in units {
        match load_unit(&mut session.client, storage, unit).await {
            Ok(loaded) => {
                report.runs_loaded += unit.len() as u64;
                report.rows_inserted += loaded.inserted;
                report.rows_skipped += loaded.present;
                report.rows_deleted += loaded.deleted.iter().sum::<u64>();
                report.erasures_applied += loaded.erasures;
                match &bar {
                    Some(bar) => {
                        bar.inc(unit.len() as u64);
                        bar.set_message(format!("· {} rows inserted", report.rows_inserted));
                    }
                    None => {
                        // A unit of several runs is logged as its last
                        // one, which carried the records.
                        let run = unit.last().map_or("", |e| e.run_id.as_str());
                        let deleted: u64 = loaded.deleted.iter().sum();
                        let (inserted, present, runs) =
                            (loaded.inserted, loaded.present, unit.len());
                        tracing::info!(run, runs, inserted, present, deleted, "run loaded");
                    }
                }
            }
            Err(RunFailure::Check(failure)) => {
                report.failure = Some(failure);
                break;
            }
            Err(RunFailure::Db(e)) => {
                outcome = Err((e, unit.first()));
                break;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcome
}

/// On a terminal, a bar of the runs to load; otherwise `None` (a log line
/// each).
fn progress_bar(runs: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(runs);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs {msg}")
        {
            bar.set_style(style);
        }
        bar
    })
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

/// The columns of the erased IDs: record type, conversation (history) or
/// recipient (send), message ID.
const ERASED_COLUMNS: [Type; 3] = [Type::TEXT, Type::TEXT, Type::TEXT];

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

/// What one transaction did.
struct Loaded {
    /// Rows inserted.
    inserted: u64,
    /// Rows that were there already.
    present: u64,
    /// Rows deleted, by the position of the erasure run in the unit.
    deleted: Vec<u64>,
    /// Erasure runs applied.
    erasures: u64,
}

/// Loads the runs `unit` (see `read`) in one transaction: their records,
/// the deletions of their erasures and a ledger row each.
async fn load_unit(
    client: &mut tokio_postgres::Client,
    storage: &Storage,
    unit: &[ChainEntry],
) -> std::result::Result<Loaded, RunFailure> {
    let (rows, mut incoming) = tokio::sync::mpsc::channel(4096);
    let (erased, mut erasures) = tokio::sync::mpsc::channel(1);
    let reader = {
        let (storage, unit) = (storage.clone(), unit.to_vec());
        let outlets = read::Outlets { rows, erased };
        std::thread::spawn(move || read::stream_unit(&storage, &unit, outlets))
    };
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TEMP TABLE load_messages (LIKE xquik_dm.messages) ON COMMIT DROP;
         CREATE TEMP TABLE load_sends (LIKE xquik_dm.sends) ON COMMIT DROP;
         CREATE TEMP TABLE load_erased (record_type text, user_id text, message_id text) ON COMMIT DROP;",
    )
    .await?;
    let copied = copy_records(&tx, &mut incoming).await?;
    let inserted = insert_records(&tx, &copied.sends).await?;
    let total = copied.history + copied.sends.len() as u64;
    let mut loaded = Loaded {
        inserted,
        present: total.saturating_sub(inserted),
        deleted: vec![0; unit.len()],
        erasures: 0,
    };
    while let Some(item) = erasures.recv().await {
        let (i, ids) = match item {
            Item::Erased(i, ids) => (i, ids),
            // Dropping the transaction rolls back what this unit did.
            Item::Failed(f) => return Err(RunFailure::Check(f)),
            Item::History(_) | Item::Send(_) => continue,
        };
        loaded.erasures += 1;
        if let Some(slot) = loaded.deleted.get_mut(i) {
            *slot = delete_erased(&tx, &ids).await?;
        }
    }
    let _ = reader.join();
    // Every run of the unit gets its ledger row; the records inserted are
    // the last run's (the carrier's, in a group).
    for (i, entry) in unit.iter().enumerate() {
        let last = i + 1 == unit.len();
        let counts = [
            if last { loaded.inserted } else { 0 },
            if last { loaded.present } else { 0 },
            loaded.deleted.get(i).copied().unwrap_or(0),
        ]
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        tx.execute(
            "INSERT INTO xquik_dm.loaded_runs (seq, run_id, manifest_sha256, rows_inserted, rows_present, rows_deleted) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &i64::try_from(entry.seq).unwrap_or(i64::MAX),
                &entry.run_id,
                &entry.sha256,
                &counts[0],
                &counts[1],
                &counts[2],
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(loaded)
}

/// What the reading side sent, once copied: history rows (in
/// `load_messages`) and the sends (copied at the end: `COPY` takes one
/// table at a time).
struct Copied {
    history: u64,
    sends: Vec<SendRow>,
}

/// Copies the history records from `incoming` into `load_messages` as
/// they come, until the reading side closes it; keeps the sends for later.
/// A failed check ends it; dropping the transaction rolls back what was
/// copied.
async fn copy_records(
    tx: &tokio_postgres::Transaction<'_>,
    incoming: &mut tokio::sync::mpsc::Receiver<Item>,
) -> std::result::Result<Copied, RunFailure> {
    let writer = copy_into(tx, "load_messages", &MESSAGE_COLUMNS).await?;
    futures_util::pin_mut!(writer);
    let mut copied = Copied {
        history: 0,
        sends: Vec::new(),
    };
    while let Some(item) = incoming.recv().await {
        let r = match item {
            Item::History(r) => r,
            Item::Send(s) => {
                copied.sends.push(s);
                continue;
            }
            Item::Failed(f) => return Err(RunFailure::Check(f)),
            Item::Erased(..) => continue,
        };
        copied.history += 1;
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
    Ok(copied)
}

/// Copies `sends` into `load_sends`, then inserts both temporary tables
/// into the real ones; returns the rows inserted (the rest were there).
async fn insert_records(
    tx: &tokio_postgres::Transaction<'_>,
    sends: &[SendRow],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let writer = copy_into(tx, "load_sends", &SEND_COLUMNS).await?;
    futures_util::pin_mut!(writer);
    for s in sends {
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
    let messages = tx
        .execute(
            "INSERT INTO xquik_dm.messages SELECT * FROM load_messages ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    let sends = tx
        .execute(
            "INSERT INTO xquik_dm.sends SELECT * FROM load_sends ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    Ok(messages + sends)
}

/// Deletes the records one erasure run erased: history rows by
/// (conversation, message ID), send rows by message ID. Returns the rows
/// deleted (fewer than erased when a record was never loaded).
async fn delete_erased(
    tx: &tokio_postgres::Transaction<'_>,
    erased: &[AuditRow],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let writer = copy_into(tx, "load_erased", &ERASED_COLUMNS).await?;
    futures_util::pin_mut!(writer);
    for row in erased {
        let values: [&(dyn ToSql + Sync); 3] = [&row.record_type, &row.user_id, &row.message_id];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    let messages = tx
        .execute(
            "DELETE FROM xquik_dm.messages m USING load_erased e
             WHERE e.record_type = 'history' AND m.conversation_user_id = e.user_id AND m.message_id = e.message_id",
            &[],
        )
        .await?;
    let sends = tx
        .execute(
            "DELETE FROM xquik_dm.sends s USING load_erased e
             WHERE e.record_type = 'send' AND s.message_id = e.message_id",
            &[],
        )
        .await?;
    tx.execute("TRUNCATE load_erased", &[]).await?;
    Ok(messages + sends)
}
