//! `--metrics-file PATH`: the outcome of each `sync` or `send` run in the
//! Prometheus text exposition format, for the node_exporter textfile
//! collector (or any scraper of files): written to a temporary file beside
//! `PATH` and renamed over it, so a scrape never reads half a file.
//!
//! Two kinds of series, labelled by `command` (and `account` where the
//! figure is per account, `endpoint` for credits):
//! - gauges about the last run: start, end and duration, exit status, and
//!   the time of the last run that succeeded (carried over from the file a
//!   failed run replaces);
//! - counters (`…_total`) of everything the job did, carried over from the
//!   previous file and increased by this run: a file that is removed or
//!   unreadable starts them again from zero, which Prometheus reads as a
//!   counter reset.
//!
//! No message body and no key can appear: only counts, times, account
//! handles and endpoint names.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use crate::error::{Error, Result};

/// What one run did, per account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountFigures {
    /// History rows written.
    pub rows: u64,
    /// DMs sent.
    pub sends: u64,
    /// History pages fetched.
    pub pages: u64,
    /// Requests refused with 429 (and retried or given up).
    pub rate_limited: u64,
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    /// `sync` or `send`.
    pub command: &'static str,
    /// When it started.
    pub started: SystemTime,
    /// When it ended.
    pub ended: SystemTime,
    /// Its exit status.
    pub exit_code: u8,
    /// Per account.
    pub accounts: BTreeMap<String, AccountFigures>,
    /// Credits by endpoint route.
    pub credits: BTreeMap<String, u64>,
    /// Requests retried.
    pub retries: u64,
}

/// One series: name, labels (sorted), value.
type Series = (String, Vec<(String, String)>, f64);

const COUNTERS: [(&str, &str); 6] = [
    (
        "xquik_dm_rows_written_total",
        "History rows written, by account.",
    ),
    ("xquik_dm_sends_total", "DMs sent, by account."),
    (
        "xquik_dm_pages_fetched_total",
        "History pages fetched, by account.",
    ),
    (
        "xquik_dm_rate_limited_requests_total",
        "Requests answered 429, by account.",
    ),
    (
        "xquik_dm_credits_spent_total",
        "Credits spent, by endpoint.",
    ),
    ("xquik_dm_retries_total", "Requests retried."),
];

const GAUGES: [(&str, &str); 5] = [
    (
        "xquik_dm_last_run_start_timestamp_seconds",
        "When the last run started (Unix time).",
    ),
    (
        "xquik_dm_last_run_end_timestamp_seconds",
        "When the last run ended (Unix time).",
    ),
    (
        "xquik_dm_last_run_duration_seconds",
        "How long the last run took.",
    ),
    (
        "xquik_dm_last_run_exit_status",
        "The last run's exit status (0 done, 2 bad input, 3 a person must act, 4 partial, 5 integrity).",
    ),
    (
        "xquik_dm_last_success_timestamp_seconds",
        "When the last run that exited 0 ended (Unix time).",
    ),
];

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes `run` into the metrics file `path`, carrying the counters and
/// the last success over from the file it replaces.
pub fn write(path: &Path, run: &RunMetrics) -> Result<()> {
    let previous = std::fs::read_to_string(path)
        .map(|text| parse(&text))
        .unwrap_or_default();
    let command = ("command".to_owned(), run.command.to_owned());
    let mut series: Vec<Series> = Vec::new();
    let mut counter = |name: &str, mut labels: Vec<(String, String)>, add: u64| {
        labels.push(command.clone());
        labels.sort();
        let before = previous
            .iter()
            .find(|(n, l, _)| n == name && *l == labels)
            .map_or(0.0, |(_, _, v)| *v);
        series.push((name.to_owned(), labels, before + add as f64));
    };
    for (account, f) in &run.accounts {
        let label = || vec![("account".to_owned(), account.clone())];
        counter("xquik_dm_rows_written_total", label(), f.rows);
        counter("xquik_dm_sends_total", label(), f.sends);
        counter("xquik_dm_pages_fetched_total", label(), f.pages);
        counter(
            "xquik_dm_rate_limited_requests_total",
            label(),
            f.rate_limited,
        );
    }
    for (endpoint, credits) in &run.credits {
        counter(
            "xquik_dm_credits_spent_total",
            vec![("endpoint".to_owned(), endpoint.clone())],
            *credits,
        );
    }
    counter("xquik_dm_retries_total", Vec::new(), run.retries);
    // Counters of accounts or endpoints this run did not touch stay as they
    // were: a counter never goes away between scrapes.
    for (name, labels, value) in &previous {
        let ours = labels.contains(&command);
        let counted = name.ends_with("_total") && COUNTERS.iter().any(|(n, _)| n == name);
        if ours && counted && !series.iter().any(|(n, l, _)| n == name && l == labels) {
            series.push((name.clone(), labels.clone(), *value));
        }
    }
    let last_success = match run.exit_code {
        0 => Some(unix(run.ended)),
        _ => previous
            .iter()
            .find(|(n, l, _)| {
                n == "xquik_dm_last_success_timestamp_seconds" && l.contains(&command)
            })
            .map(|(_, _, v)| *v),
    };
    let gauge_values = [
        Some(unix(run.started)),
        Some(unix(run.ended)),
        Some(
            run.ended
                .duration_since(run.started)
                .map_or(0.0, |d| d.as_secs_f64()),
        ),
        Some(f64::from(run.exit_code)),
        last_success,
    ];
    for ((name, _), value) in GAUGES.iter().zip(gauge_values) {
        if let Some(value) = value {
            series.push(((*name).to_owned(), vec![command.clone()], value));
        }
    }
    let text = render(&series);
    write_atomic(path, text.as_bytes())
}

/// The exposition text: a `# HELP` and `# TYPE` line per metric, then its
/// samples.
fn render(series: &[Series]) -> String {
    let mut out = String::new();
    for (name, help) in COUNTERS.iter().chain(GAUGES.iter()) {
        let samples: Vec<&Series> = series.iter().filter(|(n, _, _)| n == name).collect();
        if samples.is_empty() {
            continue;
        }
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (_, labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            out.push_str(&format!(
                "{name}{{{}}} {}\n",
                labels.join(","),
                number(*value)
            ));
        }
    }
    out
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads the samples of a file this module wrote (anything else is
/// skipped).
fn parse(text: &str) -> Vec<Series> {
    let mut series = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut parsed = Vec::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                let v = v
                    .trim_end_matches('"')
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\");
                parsed.push((k.to_owned(), v));
            }
        }
        parsed.sort();
        series.push((name.to_owned(), parsed, value));
    }
    series
}

/// Replaces `path` with `bytes`: a temporary file beside it, renamed over
/// it (the textfile collector must never read a partial file).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".xquik-dm-metrics")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(path, e))?;
    // Readable by the collector, which often runs as another user.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(exit_code: u8, rows: u64) -> RunMetrics {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        RunMetrics {
            command: "sync",
            started,
            ended: started + Duration::from_millis(2_500),
            exit_code,
            accounts: BTreeMap::from([(
                "acme".to_owned(),
                AccountFigures {
                    rows,
                    pages: 2,
                    ..AccountFigures::default()
                },
            )]),
            credits: BTreeMap::from([("GET /x/dm/{userId}/history".to_owned(), rows)]),
            retries: 1,
        }
    }

    #[test]
    fn counters_carry_over_and_a_failed_run_keeps_the_last_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xquik.prom");
        write(&path, &run(0, 10)).unwrap();
        write(&path, &run(4, 5)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("xquik_dm_rows_written_total{account=\"acme\",command=\"sync\"} 15"),
            "{text}"
        );
        assert!(text.contains("xquik_dm_last_run_exit_status{command=\"sync\"} 4"));
        assert!(
            text.contains(
                "xquik_dm_last_success_timestamp_seconds{command=\"sync\"} 1764000002.500"
            )
        );
        assert!(text.contains(
            "xquik_dm_credits_spent_total{command=\"sync\",endpoint=\"GET /x/dm/{userId}/history\"} 15"
        ));
        assert!(text.contains("xquik_dm_retries_total{command=\"sync\"} 2"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
