//! One module per subcommand. Each takes validated configuration and returns
//! a [`Report`]; `main` prints it and turns it into the exit status.

pub mod bench;
pub mod compact;
pub mod demo;
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

use crate::api::client::Client;
use crate::api::types::UserProfile;
use crate::cli::Command;
use crate::error::{Error, Result};
use crate::metrics::{AccountFigures, RunMetrics};

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
        written: report::Written,
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
            Report::Rebuild { report, json } => write_report(out, report, *json),
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
            | Report::Text(_)
            | Report::Longevity { .. }
            | Report::Latency { .. }
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
        Command::Sync {
            options,
            json,
            metrics_file,
        } => {
            let started = std::time::SystemTime::now();
            let result = sync::run(options).await;
            record_metrics(
                metrics_file.as_deref(),
                "sync",
                started,
                &result,
                sync_metrics,
            )?;
            Ok(Report::Sync {
                report: Box::new(result?),
                json,
            })
        }
        Command::Bench { options, json } => {
            let report = tokio::task::spawn_blocking(move || bench::run(&options))
                .await
                .map_err(|e| Error::io("<bench>", std::io::Error::other(e)))??;
            Ok(Report::Bench { report, json })
        }
        Command::BenchFetch {
            api,
            conversations,
            concurrency,
        } => {
            let (messages, pages) =
                bench::fetch_only(Client::new(api)?, conversations, concurrency).await?;
            Ok(Report::BenchFetch { messages, pages })
        }
        Command::Send {
            options,
            json,
            metrics_file,
        } => {
            let started = std::time::SystemTime::now();
            let result = send::run(options).await;
            record_metrics(
                metrics_file.as_deref(),
                "send",
                started,
                &result,
                send_metrics,
            )?;
            Ok(Report::Send {
                report: Box::new(result?),
                json,
            })
        }
        Command::Verify {
            dir,
            key,
            expect_head,
            since,
            json,
        } => {
            let report = tokio::task::spawn_blocking(move || {
                verify::run_since(dir, key.as_ref(), expect_head.as_deref(), since.as_deref())
            })
            .await
            .map_err(|e| Error::io("<verify>", std::io::Error::other(e)))??;
            Ok(Report::Verify { report, json })
        }
        Command::Latency {
            conversations,
            messages,
            page_size,
            work_dir,
            json,
        } => {
            let report = tokio::task::spawn_blocking(move || {
                latency::run(conversations, messages, page_size, work_dir.as_deref())
            })
            .await
            .map_err(|e| Error::io("<bench>", std::io::Error::other(e)))??;
            Ok(Report::Latency { report, json })
        }
        Command::Longevity {
            runs,
            work_dir,
            json,
        } => Ok(Report::Longevity {
            report: longevity::run(runs, work_dir).await?,
            json,
        }),
        Command::Load {
            from,
            to,
            retry_connect,
            json,
        } => Ok(Report::Load {
            report: load::run(&from, &to, retry_connect).await?,
            json,
        }),
        Command::Report { dir, html, json } => {
            let written = tokio::task::spawn_blocking(move || report::run(&dir, html.as_deref()))
                .await
                .map_err(|e| Error::io("<report>", std::io::Error::other(e)))??;
            Ok(Report::Report { written, json })
        }
        Command::Compact {
            out,
            min_files,
            json,
        } => {
            let report = tokio::task::spawn_blocking(move || compact::run(&out, min_files))
                .await
                .map_err(|e| Error::io("<compact>", std::io::Error::other(e)))??;
            Ok(Report::Compact { report, json })
        }
        Command::Rebuild { out, json } => {
            let report = tokio::task::spawn_blocking(move || rebuild::run(&out))
                .await
                .map_err(|e| Error::io("<rebuild>", std::io::Error::other(e)))??;
            Ok(Report::Rebuild { report, json })
        }
        Command::Lookup { api, user } => {
            let client = Client::new(api)?;
            Ok(Report::Lookup(lookup::run(&client, &user).await?))
        }
        Command::Mock(options) => {
            mock::run(options).await?;
            Ok(Report::MockStopped)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut crate::cli::Args::clap_command(),
                "xquik-dm",
                &mut script,
            );
            Ok(Report::Text(script))
        }
        Command::Man { dir } => {
            let cmd = crate::cli::Args::clap_command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                    clap_mangen::generate_to(cmd, &dir).map_err(|e| Error::io(&dir, e))?;
                    Ok(Report::Text(
                        format!("man pages written to {}\n", dir.display()).into_bytes(),
                    ))
                }
                None => {
                    let mut page = Vec::new();
                    clap_mangen::Man::new(cmd)
                        .render(&mut page)
                        .map_err(|e| Error::io("<man page>", e))?;
                    Ok(Report::Text(page))
                }
            }
        }
        Command::Demo { out } => Ok(Report::Demo(Box::new(
            demo::run(out.map(crate::storage::Location::from)).await?,
        ))),
    }
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
