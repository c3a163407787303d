//! Log set-up: human text on a terminal, one JSON object per line otherwise
//! (what schedulers and log shippers read). Logs go to stderr so that stdout
//! carries only a command's result.
//!
//! Log lines carry IDs, endpoints, statuses, counts and cursors, never a
//! message body or the API key: no code path hands either to a log macro.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Text when stderr is a terminal, JSON otherwise.
    pub fn auto() -> LogFormat {
        if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

/// Installs the global subscriber. `XQUIK_DM_LOG` (an `EnvFilter`
/// directive) overrides the level given by `verbose`.
pub fn init(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("XQUIK_DM_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,xquik_dm={level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests calling main paths twice) keeps the first one.
    drop(result);
}
