//! One module per subcommand. Each takes validated configuration (a
//! [`Command`], which `cli` builds from the command line) and returns a
//! [`Report`]; `main` prints it and turns it into the exit status.

pub mod accounts;
pub mod bench;
pub mod compact;
pub mod demo;
pub mod forget;
pub mod latency;
pub mod load;
pub mod longevity;
pub mod lookup;
pub mod mock;
pub mod rebuild;
pub mod report;
pub mod send;
pub mod sync;
pub mod verify;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::api::UserRef;
use crate::api::client::{Client, ClientConfig};
use crate::api::types::UserProfile;
use crate::error::{Error, Result};
use crate::metrics::{AccountFigures, RunMetrics};
use crate::storage::Location;

/// A validated command: what `cli` builds from the command line, in
/// library types only.
#[derive(Debug)]
pub enum Command {
    /// `sync`.
    Sync(Recorded<sync::SyncOptions>),
    /// `send`.
    Send(Recorded<send::SendOptions>),
    /// `verify`.
    Verify {
        /// The folder or bucket.
        dir: Location,
        /// What the manifests' HMACs and SSH signatures are checked with.
        trust: verify::Trust,
        /// Chain head that must still be in the chain.
        expect_head: Option<String>,
        /// Check only what came after this chain head.
        since: Option<String>,
        /// Report as JSON.
        json: bool,
    },
    /// `load`.
    Load {
        /// The folder or bucket.
        from: Location,
        /// The database.
        to: String,
        /// Connection attempts after the first.
        retry_connect: u32,
        /// Report as JSON.
        json: bool,
    },
    /// `report`.
    Report {
        /// The folder or bucket.
        dir: Location,
        /// Where the HTML page goes.
        html: Option<PathBuf>,
        /// What the manifests' SSH signatures are checked with.
        trust: verify::Trust,
        /// Show the IDs of the people erasures concerned.
        erased_ids: bool,
        /// Report as JSON.
        json: bool,
    },
    /// `compact`.
    Compact {
        /// The folder.
        out: Location,
        /// Files a partition needs to be merged.
        min_files: usize,
        /// SSH key that signs the compaction's manifest.
        key: Option<crate::sshsig::SigningKey>,
        /// Report as JSON.
        json: bool,
    },
    /// `forget`.
    Forget {
        /// What to erase, and why.
        options: forget::ForgetOptions,
        /// Report as JSON.
        json: bool,
    },
    /// `rebuild`.
    Rebuild {
        /// The folder.
        out: Location,
        /// Report as JSON.
        json: bool,
    },
    /// `lookup`.
    Lookup {
        /// How to reach the API.
        api: ClientConfig,
        /// Who to look up.
        user: UserRef,
    },
    /// `mock`.
    Mock(mock::MockOptions),
    /// `bench`, its scenarios and its helper.
    Bench(Benchmark),
    /// `demo`.
    Demo {
        /// Output folder.
        out: Option<PathBuf>,
    },
}

/// A benchmark: `bench`, its latency and longevity scenarios, and its
/// helper `bench-fetch`.
#[derive(Debug)]
pub enum Benchmark {
    /// `bench`.
    Full {
        /// Options.
        options: bench::BenchOptions,
        /// Report as JSON.
        json: bool,
    },
    /// `bench --latency`.
    Latency {
        /// Conversations per account.
        conversations: u64,
        /// Messages per conversation.
        messages: u64,
        /// Page size.
        page_size: usize,
        /// Where the folders go.
        work_dir: Option<PathBuf>,
        /// Report as JSON.
        json: bool,
    },
    /// `bench --latency --accounts N`.
    Accounts {
        /// The most accounts.
        accounts: u64,
        /// The world and job of each scenario.
        scenario: accounts::Scenario,
        /// Where the folders go.
        work_dir: Option<PathBuf>,
        /// Report as JSON.
        json: bool,
    },
    /// `bench --longevity`.
    Longevity {
        /// Runs.
        runs: u64,
        /// Where the folder goes.
        work_dir: Option<PathBuf>,
        /// Report as JSON.
        json: bool,
    },
    /// `bench-fetch`.
    Fetch {
        /// How to reach the API.
        api: ClientConfig,
        /// Conversations.
        conversations: u64,
        /// Concurrency.
        concurrency: usize,
    },
}

/// A run whose outcome may go to a metrics file (`sync`, `send`).
#[derive(Debug)]
pub struct Recorded<O> {
    /// Everything the run needs.
    pub options: O,
    /// Report as JSON.
    pub json: bool,
    /// Where to write the run's metrics.
    pub metrics_file: Option<PathBuf>,
}

impl<O> Recorded<O> {
    /// Runs `run` on the options, then writes the metrics file when one was
    /// asked for, from the report (through `of`) or the error. Returns the
    /// report, boxed as [`Report`] keeps it, and whether to print it as JSON.
    async fn record<T, F>(
        self,
        command: &'static str,
        run: impl FnOnce(O) -> F,
        of: impl FnOnce(&T, SystemTime) -> RunMetrics,
    ) -> Result<(Box<T>, bool)>
    where
        F: Future<Output = Result<T>>,
    {
        let started = SystemTime::now();
        let result = run(self.options).await;
        record_metrics(self.metrics_file.as_deref(), command, started, &result, of)?;
        Ok((Box::new(result?), self.json))
    }
}

/// What a command produced, for `main` to print.
#[derive(Debug)]
#[non_exhaustive]
pub enum Report {
    /// `sync`: the run report, as a summary or JSON.
    Sync {
        /// The report.
        report: Box<sync::SyncReport>,
        /// Print as JSON.
        json: bool,
    },
    /// `bench`: the figures.
    Bench {
        /// The report.
        report: bench::BenchReport,
        /// Print as JSON.
        json: bool,
    },
    /// `bench-fetch`: messages and pages fetched, as JSON.
    BenchFetch {
        /// Messages.
        messages: u64,
        /// Pages.
        pages: u64,
    },
    /// `send`: per-send outcomes.
    Send {
        /// The report.
        report: Box<send::SendReport>,
        /// Print as JSON.
        json: bool,
    },
    /// `verify`: the integrity report.
    Verify {
        /// The report.
        report: verify::VerifyReport,
        /// Print as JSON.
        json: bool,
    },
    /// `bench --latency`: the figures.
    Latency {
        /// The report.
        report: latency::LatencyReport,
        /// Print as JSON.
        json: bool,
    },
    /// `bench --latency --accounts N`: the figures.
    Accounts {
        /// The report.
        report: accounts::AccountsReport,
        /// Print as JSON.
        json: bool,
    },
    /// `bench --longevity`: the figures.
    Longevity {
        /// The report.
        report: longevity::LongevityReport,
        /// Print as JSON.
        json: bool,
    },
    /// `load`: what was loaded.
    Load {
        /// The report.
        report: load::LoadReport,
        /// Print as JSON.
        json: bool,
    },
    /// `report`: the audit trail at a glance.
    Report {
        /// What was built and written.
        written: Box<report::Written>,
        /// Print the report as JSON.
        json: bool,
    },
    /// `compact`: what was merged.
    Compact {
        /// The report.
        report: compact::CompactReport,
        /// Print as JSON.
        json: bool,
    },
    /// `forget`: what was erased.
    Forget {
        /// The report.
        report: forget::ForgetReport,
        /// Print as JSON.
        json: bool,
    },
    /// `rebuild`: what the rebuilt checkpoint holds.
    Rebuild {
        /// The report.
        report: rebuild::RebuildReport,
        /// Print as JSON.
        json: bool,
    },
    /// `lookup`: the profile, printed as JSON.
    Lookup(UserProfile),
    /// `demo`: a human summary.
    Demo(Box<demo::DemoReport>),
    /// `mock`: served until stopped.
    MockStopped,
    /// Text printed as it is (completions, a man page).
    Text(Vec<u8>),
}

impl Report {
    /// Writes the report to stdout-like output.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Report::Lookup(profile) => {
                let json = serde_json::to_string_pretty(profile).map_err(std::io::Error::other)?;
                writeln!(out, "{json}")
            }
            Report::Sync { report, json } => write_report(out, report.as_ref(), *json),
            Report::Verify { report, json } => write_report(out, report, *json),
            Report::Compact { report, json } => write_report(out, report, *json),
            Report::Load { report, json } => write_report(out, report, *json),
            Report::Report { written, json } => match json {
                true => {
                    let text = serde_json::to_string_pretty(&written.report)
                        .map_err(std::io::Error::other)?;
                    writeln!(out, "{text}")
                }
                false => write!(out, "{written}"),
            },
            Report::Longevity { report, json } => write_report(out, report, *json),
            Report::Latency { report, json } => write_report(out, report, *json),
            Report::Accounts { report, json } => write_report(out, report, *json),
            Report::Rebuild { report, json } => write_report(out, report, *json),
            Report::Forget { report, json } => write_report(out, report, *json),
            Report::Send { report, json } => write_report(out, report.as_ref(), *json),
            Report::Bench { report, json } => write_report(out, report, *json),
            Report::BenchFetch { messages, pages } => {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"messages": messages, "pages": pages})
                )
            }
            Report::Demo(report) => write!(out, "{report}"),
            Report::Text(text) => out.write_all(text),
            Report::MockStopped => Ok(()),
        }
    }

    /// The exit status (SPEC §2).
    pub fn exit_code(&self) -> u8 {
        match self {
            Report::Sync { report, .. } => report.exit_code(),
            Report::Verify { report, .. } => report.exit_code(),
            Report::Rebuild { report, .. } => report.exit_code(),
            Report::Report { written, .. } => written.report.exit_code(),
            Report::Load { report, .. } => report.exit_code(),
            Report::Send { report, .. } => report.exit_code(),
            Report::Demo(report) => report.exit_code(),
            Report::Lookup(_)
            | Report::Compact { .. }
            | Report::Forget { .. }
            | Report::Text(_)
            | Report::Longevity { .. }
            | Report::Latency { .. }
            | Report::Accounts { .. }
            | Report::MockStopped
            | Report::Bench { .. }
            | Report::BenchFetch { .. } => 0,
        }
    }
}

/// Writes a report as pretty JSON or as its human summary.
fn write_report<T: serde::Serialize + std::fmt::Display>(
    out: &mut impl Write,
    report: &T,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
        writeln!(out, "{text}")
    } else {
        write!(out, "{report}")
    }
}

/// Runs a validated command.
pub async fn execute(command: Command) -> Result<Report> {
    match command {
        Command::Sync(run) => {
            let (report, json) = run.record("sync", sync::run, sync_metrics).await?;
            Ok(Report::Sync { report, json })
        }
        Command::Send(run) => {
            let (report, json) = run.record("send", send::run, send_metrics).await?;
            Ok(Report::Send { report, json })
        }
        Command::Verify {
            dir,
            trust,
            expect_head,
            since,
            json,
        } => {
            let report = blocking("<verify>", move || {
                verify::run_trusted(dir, &trust, expect_head.as_deref(), since.as_deref())
            })
            .await?;
            Ok(Report::Verify { report, json })
        }
        Command::Report {
            dir,
            html,
            trust,
            erased_ids,
            json,
        } => blocking("<report>", move || {
            report::run(&dir, html.as_deref(), &trust, erased_ids)
        })
        .await
        .map(|written| Report::Report {
            written: Box::new(written),
            json,
        }),
        Command::Load {
            from,
            to,
            retry_connect,
            json,
        } => load::run(&from, &to, retry_connect)
            .await
            .map(|report| Report::Load { report, json }),
        Command::Lookup { api, user } => {
            let client = Client::new(api)?;
            lookup::run(&client, &user).await.map(Report::Lookup)
        }
        Command::Compact {
            out,
            min_files,
            key,
            json,
        } => blocking("<compact>", move || {
            compact::run(&out, min_files, key.as_ref())
        })
        .await
        .map(|report| Report::Compact { report, json }),
        Command::Forget { options, json } => forget::run(options)
            .await
            .map(|report| Report::Forget { report, json }),
        Command::Rebuild { out, json } => blocking("<rebuild>", move || rebuild::run(&out))
            .await
            .map(|report| Report::Rebuild { report, json }),
        Command::Mock(options) => mock::run(options).await.map(|()| Report::MockStopped),
        Command::Demo { out } => demo::run(out.map(Location::from))
            .await
            .map(|report| Report::Demo(Box::new(report))),
        Command::Bench(benchmark) => run_benchmark(benchmark).await,
    }
}

/// Runs a benchmark; those that drive processes and syncs of their own do
/// it on the blocking pool.
async fn run_benchmark(benchmark: Benchmark) -> Result<Report> {
    match benchmark {
        Benchmark::Full { options, json } => blocking("<bench>", move || bench::run(&options))
            .await
            .map(|report| Report::Bench { report, json }),
        Benchmark::Latency {
            conversations,
            messages,
            page_size,
            work_dir,
            json,
        } => {
            let report = blocking("<bench>", move || {
                latency::run(conversations, messages, page_size, work_dir.as_deref())
            })
            .await?;
            Ok(Report::Latency { report, json })
        }
        Benchmark::Accounts {
            accounts,
            scenario,
            work_dir,
            json,
        } => {
            // In this process: the mock and the sync share its runtime.
            let report = accounts::run(accounts, scenario, work_dir.as_deref()).await?;
            Ok(Report::Accounts { report, json })
        }
        Benchmark::Fetch {
            api,
            conversations,
            concurrency,
        } => {
            let client = Client::new(api)?;
            let (messages, pages) = bench::fetch_only(client, conversations, concurrency).await?;
            Ok(Report::BenchFetch { messages, pages })
        }
        Benchmark::Longevity {
            runs,
            work_dir,
            json,
        } => longevity::run(runs, work_dir)
            .await
            .map(|report| Report::Longevity { report, json }),
    }
}

/// Runs `work` on tokio's blocking pool. A task that panicked or was
/// cancelled is an I/O error on `what` (`<verify>`, `<bench>`, ...).
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::io(what, std::io::Error::other(e)))?
}

/// The metrics of a sync run.
fn sync_metrics(report: &sync::SyncReport, started: std::time::SystemTime) -> RunMetrics {
    let mut accounts: BTreeMap<String, AccountFigures> = BTreeMap::new();
    for c in &report.conversations {
        let f = accounts.entry(c.account.clone()).or_default();
        f.rows += c.new_messages;
        f.pages += c.pages;
    }
    for (account, refused) in &report.rate_limited {
        accounts.entry(account.clone()).or_default().rate_limited += refused;
    }
    RunMetrics {
        command: "sync",
        started,
        ended: std::time::SystemTime::now(),
        exit_code: report.exit_code(),
        accounts,
        credits: credits_by_route(&report.credits),
        retries: report.retries,
    }
}

/// The metrics of a send run.
fn send_metrics(report: &send::SendReport, started: std::time::SystemTime) -> RunMetrics {
    let mut accounts: BTreeMap<String, AccountFigures> = BTreeMap::new();
    for s in &report.sends {
        if let Some(account) = &s.account {
            let f = accounts.entry(account.clone()).or_default();
            if s.status == send::SendStatus::Sent {
                f.sends += 1;
            }
        }
    }
    for (account, refused) in &report.rate_limited {
        accounts.entry(account.clone()).or_default().rate_limited += refused;
    }
    RunMetrics {
        command: "send",
        started,
        ended: std::time::SystemTime::now(),
        exit_code: report.exit_code(),
        accounts,
        credits: credits_by_route(&report.credits),
        retries: report
            .sends
            .iter()
            .map(|s| u64::from(s.attempts.unwrap_or(1).saturating_sub(1)))
            .sum(),
    }
}

/// The metrics of a run that ended in an error (nothing it did is known
/// here but its exit status).
fn failed_metrics(command: &'static str, e: &Error, started: std::time::SystemTime) -> RunMetrics {
    RunMetrics {
        command,
        started,
        ended: std::time::SystemTime::now(),
        exit_code: e.exit_code(),
        accounts: BTreeMap::new(),
        credits: BTreeMap::new(),
        retries: 0,
    }
}

fn credits_by_route(credits: &BTreeMap<crate::api::Endpoint, u64>) -> BTreeMap<String, u64> {
    credits
        .iter()
        .map(|(e, c)| (e.as_str().to_owned(), *c))
        .collect()
}

/// Writes the metrics file, when one was asked for, from the run's report
/// or its error. A failure to write it fails a run that otherwise
/// succeeded (a scheduler would be blind), and is logged for one that
/// failed anyway.
fn record_metrics<T>(
    path: Option<&std::path::Path>,
    command: &'static str,
    started: std::time::SystemTime,
    result: &Result<T>,
    of: impl FnOnce(&T, std::time::SystemTime) -> RunMetrics,
) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let metrics = match result {
        Ok(report) => of(report, started),
        Err(e) => failed_metrics(command, e, started),
    };
    match (crate::metrics::write(path, &metrics), result) {
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(_)) => {
            tracing::error!(error = %e, "could not write the metrics file");
            Ok(())
        }
        (Ok(()), _) => Ok(()),
    }
}

/// Maps an I/O error on stdout to the library error.
pub fn stdout_error(source: std::io::Error) -> Error {
    Error::io("<stdout>", source)
}
