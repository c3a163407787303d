//! `xquik-dm bench --longevity N`: a job that runs `sync --compact` every
//! five minutes, N times in a row, against the embedded mock in this process
//! (20 conversations; before each run a few new messages arrive in one of
//! them) — the scheduled job the README recommends, which compacts the
//! dates closed since the last compaction once a day. The runs are stamped
//! five minutes apart, starting at midnight UTC days ago, so that they fill
//! date partitions as a real job would, and everything they date (Delta
//! commits, the daily compaction, the tombstone and log retentions) follows
//! that simulated clock; each writes to a real folder with every fsync.
//!
//! It prints what a job operator would watch over years: the median wall
//! time of the first and the last 10% of the runs (a run must not get
//! slower as history grows), the time a reader takes to open the messages
//! table's latest Delta snapshot after each run, at both ends too (the
//! Delta checkpoints, the daily compaction and the log retention keep it
//! flat), what the messages table's log holds at the end, the checkpoint's
//! size at both ends, the files in the folder, `verify` and `verify
//! --since` (one run) times, and the files before and after a final
//! `compact` of every closed date.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::client::{ApiKey, ClientConfig};
use crate::api::pace::Limits;
use crate::api::{Account, UserRef};
use crate::commands::compact;
use crate::commands::mock::{SYNTHETIC_ACCOUNT, synthetic_user, synthetic_world};
use crate::commands::sync::{self, SyncOptions, Target};
use crate::commands::verify;
use crate::delta::{Table, TableKind};
use crate::error::{Error, Result};
use crate::mock::MockServer;
use crate::storage::{Location, Storage};
use crate::store::RunStamp;

const KEY: &str = "bench-key-not-a-secret";
/// Conversations of the job.
const CONVERSATIONS: u64 = 20;
/// New messages before each run.
const NEW_PER_RUN: u64 = 3;
/// Runs per simulated day (every five minutes).
const RUNS_PER_DAY: u64 = 288;
/// Opens of the latest snapshot after each run; the fastest counts.
const OPENS: u32 = 3;

/// The longevity figures.
#[derive(Debug, Clone, Serialize)]
pub struct LongevityReport {
    /// Runs made.
    pub runs: u64,
    /// Conversations of the job.
    pub conversations: u64,
    /// Simulated days the runs span.
    pub days: u64,
    /// Compactions the runs made (`sync --compact`: one per closed day).
    pub compactions: u64,
    /// Median wall time of the first 10% of the runs, ms.
    pub first_10pct_median_ms: f64,
    /// Median wall time of the last 10%, ms.
    pub last_10pct_median_ms: f64,
    /// Their ratio (last / first).
    pub growth: f64,
    /// Median time to open the messages table's latest Delta snapshot
    /// (the best of three opens) after each of the first 10% of the runs,
    /// ms.
    pub snapshot_first_10pct_median_ms: f64,
    /// After each of the last 10%, ms.
    pub snapshot_last_10pct_median_ms: f64,
    /// Their ratio (last / first).
    pub snapshot_growth: f64,
    /// The median time to open it after the runs of each tenth of the
    /// runs, in order, ms: where between the ends it grows, if it does.
    pub snapshot_tenths_ms: Vec<f64>,
    /// The time to open it after the final `compact` (one live file per
    /// partition), ms.
    pub snapshot_after_compact_ms: f64,
    /// The messages table after the last run: its log.
    pub delta: DeltaLog,
    /// The checkpoint's size after the first run, bytes.
    pub checkpoint_bytes_first: u64,
    /// After the last run.
    pub checkpoint_bytes_last: u64,
    /// Files in the folder before `compact`.
    pub files_before: u64,
    /// Of which Parquet files.
    pub parquet_files_before: u64,
    /// Files after `compact`.
    pub files_after: u64,
    /// Of which Parquet files.
    pub parquet_files_after: u64,
    /// Date partitions (per table) holding Parquet files.
    pub partitions: u64,
    /// `compact` wall time, s.
    pub compact_s: f64,
    /// Full `verify` before compaction, s.
    pub verify_s: f64,
    /// `verify --since` the head before the last run, ms.
    pub verify_since_ms: f64,
    /// Full `verify` after compaction, s.
    pub verify_after_compact_s: f64,
}

/// What the messages table's log holds after the last run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeltaLog {
    /// The latest version.
    pub version: u64,
    /// Commit files kept (the others were cleaned up past the log
    /// retention).
    pub commit_files: u64,
    /// The oldest version kept.
    pub oldest_version: u64,
    /// Checkpoint files kept.
    pub checkpoints: u64,
    /// Live files of the latest snapshot.
    pub live_files: u64,
    /// Its tombstones (removed files within the deleted-file retention).
    pub tombstones: u64,
}

impl DeltaLog {
    /// The log of `table` now.
    fn of(table: &Table) -> Result<DeltaLog> {
        let versions = table.versions()?;
        let snapshot = table.snapshot(None)?;
        Ok(DeltaLog {
            version: snapshot.as_ref().map_or(0, |s| s.version),
            commit_files: versions.len() as u64,
            oldest_version: versions.first().copied().unwrap_or_default(),
            checkpoints: table.checkpoints()?.len() as u64,
            live_files: snapshot.as_ref().map_or(0, |s| s.files.len() as u64),
            tombstones: snapshot.as_ref().map_or(0, |s| s.removed.len() as u64),
        })
    }
}

/// Runs the scenario.
pub async fn run(runs: u64, work_dir: Option<PathBuf>) -> Result<LongevityReport> {
    if runs < 10 {
        return Err(Error::invalid("--longevity", "needs at least 10 runs"));
    }
    let temp;
    let dir = match work_dir {
        Some(dir) => dir.join(format!("longevity-{}", RunStamp::now().run_id)),
        None => {
            temp = tempfile::tempdir().map_err(|e| Error::io("<temp dir>", e))?;
            temp.path().join("out")
        }
    };
    let (server, api, targets) = start_world().await?;
    let days = runs.div_ceil(RUNS_PER_DAY);
    let synced = sync_runs(&server, &api, &targets, &dir, runs, days).await?;
    let checkpoint_bytes_last = file_size(&dir.join(crate::checkpoint::KEY));
    let tenth = (runs / 10) as usize;
    let times = &synced.times;
    let first = median(times.get(..tenth).unwrap_or_default());
    let last = median(times.get(times.len() - tenth..).unwrap_or_default());
    let opens = &synced.snapshot_times;
    let first_open = median(opens.get(..tenth).unwrap_or_default());
    let last_open = median(opens.get(opens.len() - tenth..).unwrap_or_default());
    let snapshot_tenths_ms = (0..10)
        .map(|d| median(opens.get(d * tenth..(d + 1) * tenth).unwrap_or_default()))
        .map(|t| t.as_secs_f64() * 1e3)
        .collect();
    let (files_before, parquet_files_before, partitions) = count_files(&dir);
    let delta = DeltaLog::of(&Table::new(
        Location::Dir(dir.clone()).open()?,
        TableKind::Messages,
    ))?;
    let checked = verify_and_compact(&dir, synced.head_before_last.unwrap_or_default())?;
    let (files_after, parquet_files_after, _) = count_files(&dir);
    server.shutdown().await;
    Ok(LongevityReport {
        runs,
        conversations: CONVERSATIONS,
        days,
        compactions: synced.compactions,
        first_10pct_median_ms: first.as_secs_f64() * 1e3,
        last_10pct_median_ms: last.as_secs_f64() * 1e3,
        growth: last.as_secs_f64() / first.as_secs_f64().max(1e-9),
        snapshot_first_10pct_median_ms: first_open.as_secs_f64() * 1e3,
        snapshot_last_10pct_median_ms: last_open.as_secs_f64() * 1e3,
        snapshot_growth: last_open.as_secs_f64() / first_open.as_secs_f64().max(1e-9),
        snapshot_tenths_ms,
        snapshot_after_compact_ms: checked.snapshot_after_compact_s * 1e3,
        delta,
        checkpoint_bytes_first: synced.checkpoint_bytes_first,
        checkpoint_bytes_last,
        files_before,
        parquet_files_before,
        files_after,
        parquet_files_after,
        partitions,
        compact_s: checked.compact_s,
        verify_s: checked.verify_s,
        verify_since_ms: checked.since_s * 1e3,
        verify_after_compact_s: checked.verify_after_compact_s,
    })
}

/// The synthetic world, unlimited, with a client for it and a target for
/// each of its conversations.
async fn start_world() -> Result<(MockServer, ClientConfig, Vec<Target>)> {
    let mut world = synthetic_world(CONVERSATIONS, 50);
    world.api_key = Some(KEY.to_owned());
    world.get_limit_per_sec = 0;
    world.post_limit_per_min = 0;
    let server = MockServer::start(world)
        .await
        .map_err(|e| Error::io("<mock>", e))?;
    let mut api = ClientConfig::new(server.base_url(), ApiKey::new(KEY)?);
    // The mock has no rate limit here: the runs' own cost is measured.
    api.pace = Limits::unlimited();
    let account = Account::parse(SYNTHETIC_ACCOUNT)?;
    let targets: Vec<Target> = (0..CONVERSATIONS)
        .map(|i| {
            Ok(Target {
                account: account.clone(),
                user: UserRef::parse(&synthetic_user(i), "user")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok((server, api, targets))
}

/// What the runs took, and what the folder looked like along the way.
struct Synced {
    /// Each run's wall time.
    times: Vec<Duration>,
    /// After each run, the time to open the messages table's latest
    /// snapshot.
    snapshot_times: Vec<Duration>,
    /// The checkpoint's size after the first run.
    checkpoint_bytes_first: u64,
    /// The chain head before the last run.
    head_before_last: Option<String>,
    /// Compactions after the runs.
    compactions: u64,
}

/// `runs` syncs five minutes apart over `days` days ending yesterday (from
/// midnight UTC, so that the figures do not depend on the time of day the
/// benchmark is run: each tenth of the runs then holds the same mix of
/// young and old days), with
/// new messages in one conversation before each, each followed by the
/// compaction of the dates closed since the last one (`sync --compact`).
async fn sync_runs(
    server: &MockServer,
    api: &ClientConfig,
    targets: &[Target],
    dir: &Path,
    runs: u64,
    days: u64,
) -> Result<Synced> {
    let start = (chrono::Utc::now() - chrono::Duration::days(days as i64 + 1))
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let checkpoint = dir.join(crate::checkpoint::KEY);
    let mut times = Vec::with_capacity(runs as usize);
    let mut snapshot_times = Vec::with_capacity(runs as usize);
    let table = Table::new(Location::Dir(dir.to_owned()).open()?, TableKind::Messages);
    let mut checkpoint_bytes_first = 0;
    let mut head_before_last = None;
    let mut compactions = 0;
    for i in 0..runs {
        server.append_messages(
            SYNTHETIC_ACCOUNT,
            &synthetic_user(i % CONVERSATIONS),
            NEW_PER_RUN,
        );
        if i + 1 == runs {
            head_before_last = chain_head(dir)?;
        }
        let mut options = SyncOptions::new(api.clone(), dir.to_owned(), targets.to_vec());
        options.stamp = Some(RunStamp::at(
            start + chrono::Duration::minutes(5 * i as i64),
        ));
        options.compact = true;
        let began = Instant::now();
        let report = sync::run(options).await?;
        times.push(began.elapsed());
        snapshot_times.push(open_time(&table)?);
        compactions += u64::from(report.compaction.is_some());
        if report.exit_code() != 0 {
            return Err(Error::io(
                "<longevity>",
                std::io::Error::other(format!("run {i} ended with exit {}", report.exit_code())),
            ));
        }
        if i == 0 {
            checkpoint_bytes_first = file_size(&checkpoint);
        }
    }
    Ok(Synced {
        times,
        snapshot_times,
        checkpoint_bytes_first,
        head_before_last,
        compactions,
    })
}

/// How long opening `table`'s latest snapshot takes: the best of
/// [`OPENS`] opens in a row, so that a moment the shared machine gave to
/// another process does not count as the table's cost.
fn open_time(table: &Table) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..OPENS {
        let opened = Instant::now();
        table.snapshot(None)?;
        best = best.min(opened.elapsed());
    }
    Ok(best)
}

/// Seconds each check of the folder took.
struct Checked {
    verify_s: f64,
    since_s: f64,
    compact_s: f64,
    verify_after_compact_s: f64,
    snapshot_after_compact_s: f64,
}

/// Verifies the folder (whole, and since `since`), compacts it, verifies it
/// again; any failed verify is an error.
fn verify_and_compact(dir: &Path, since: String) -> Result<Checked> {
    let location = Location::Dir(dir.to_owned());
    let (verify_s, verified) = timed(|| verify::run(location.clone(), None, None))?;
    let (since_s, verified_since) =
        timed(|| verify::run_since(location.clone(), None, None, Some(&since)))?;
    let storage: Storage = location.open()?;
    let (compact_s, _) = timed(|| {
        compact::compact(
            &storage,
            &RunStamp::now(),
            &compact::Scope::All,
            compact::MIN_FILES,
            None,
        )
    })?;
    let (verify_after_compact_s, verified_after) =
        timed(|| verify::run(location.clone(), None, None))?;
    let table = Table::new(storage, TableKind::Messages);
    let snapshot_after_compact_s = open_time(&table)?.as_secs_f64();
    for report in [&verified, &verified_since, &verified_after] {
        if !report.ok() {
            return Err(Error::io(
                "<longevity>",
                std::io::Error::other(format!("verify failed: {report}")),
            ));
        }
    }
    Ok(Checked {
        verify_s,
        since_s,
        compact_s,
        verify_after_compact_s,
        snapshot_after_compact_s,
    })
}

/// The chain's head (SHA-256 of the last manifest), if any run sealed.
fn chain_head(dir: &Path) -> Result<Option<String>> {
    let storage = crate::storage::local::LocalDir::new(dir);
    let (tail, _) = crate::audit::read_chain_tail(&storage, 0)?;
    Ok(tail.last().map(|e| e.sha256.clone()))
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let began = Instant::now();
    let value = f()?;
    Ok((began.elapsed().as_secs_f64(), value))
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Files in the folder, Parquet files among them, and folders holding
/// Parquet files.
fn count_files(dir: &Path) -> (u64, u64, u64) {
    let (mut files, mut parquet) = (0, 0);
    let mut partitions = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                // Data files only: a Delta checkpoint is Parquet too.
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("part-")
                    && path.extension().is_some_and(|e| e == "parquet")
                {
                    parquet += 1;
                    partitions.insert(d.clone());
                }
            }
        }
    }
    (files, parquet, partitions.len() as u64)
}

impl std::fmt::Display for LongevityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "longevity: {} sync --compact runs, every 5 minutes over {} days ({} compactions), {} conversations, {} new messages before each",
            self.runs, self.days, self.compactions, self.conversations, NEW_PER_RUN
        )?;
        writeln!(
            f,
            "  run wall time (median)  first 10%: {:.1} ms   last 10%: {:.1} ms   growth: {:.2}x",
            self.first_10pct_median_ms, self.last_10pct_median_ms, self.growth
        )?;
        writeln!(
            f,
            "  open latest snapshot    first 10%: {:.2} ms   last 10%: {:.2} ms   growth: {:.2}x   after compact: {:.2} ms (Delta, messages)",
            self.snapshot_first_10pct_median_ms,
            self.snapshot_last_10pct_median_ms,
            self.snapshot_growth,
            self.snapshot_after_compact_ms
        )?;
        let tenths: Vec<String> = self
            .snapshot_tenths_ms
            .iter()
            .map(|ms| format!("{ms:.2}"))
            .collect();
        writeln!(f, "  open, by tenth of runs  {} ms", tenths.join(" "))?;
        let log = &self.delta;
        writeln!(
            f,
            "  Delta log (messages)    version {}: {} commit files kept (from version {}), {} checkpoints, {} live files, {} tombstones",
            log.version,
            log.commit_files,
            log.oldest_version,
            log.checkpoints,
            log.live_files,
            log.tombstones
        )?;
        writeln!(
            f,
            "  checkpoint              {} bytes after the first run, {} after the last",
            self.checkpoint_bytes_first, self.checkpoint_bytes_last
        )?;
        writeln!(
            f,
            "  verify                  full: {:.2} s   --since (one run): {:.1} ms",
            self.verify_s, self.verify_since_ms
        )?;
        writeln!(
            f,
            "  files                   before compact: {} ({} Parquet in {} partitions)   after: {} ({} Parquet)",
            self.files_before,
            self.parquet_files_before,
            self.partitions,
            self.files_after,
            self.parquet_files_after
        )?;
        writeln!(
            f,
            "  compact                 {:.2} s; full verify after it: {:.2} s",
            self.compact_s, self.verify_after_compact_s
        )
    }
}
