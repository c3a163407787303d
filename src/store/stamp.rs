//! What a run is called and when it started: the [`RunStamp`] that names
//! every file a run writes. Whether a run ID is still unused in a folder is
//! the repair's business (its claim step), not this file's.

/// What a run is called and when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStamp {
    /// `YYYYMMDDTHHMMSSZ-<16 hex digits>`: sortable by start time, unique
    /// per folder.
    pub run_id: String,
    /// The UTC date, for Parquet partition folders.
    pub date: String,
    /// RFC 3339 UTC start time.
    pub started_at: String,
}

impl RunStamp {
    /// A stamp for a run starting now. The run ID is the second it started
    /// and 64 random bits; [`Store::open`](super::Store::open) also checks
    /// that it is unused.
    pub fn now() -> RunStamp {
        RunStamp::at(chrono::Utc::now())
    }

    /// A stamp for a run starting at `now`.
    pub fn at(now: chrono::DateTime<chrono::Utc>) -> RunStamp {
        RunStamp {
            run_id: format!(
                "{}-{:016x}",
                now.format("%Y%m%dT%H%M%SZ"),
                fastrand::u64(..)
            ),
            date: now.format("%Y-%m-%d").to_string(),
            started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// The run's clock `elapsed` after it started: its start time plus
    /// `elapsed`. For a run stamped now that is the wall clock; for a run
    /// stamped in the past (tests, `bench --longevity`'s simulated days)
    /// it is that past, so that everything the run dates (its Delta
    /// commits, the compaction after it) keeps to one clock.
    pub fn clock(&self, elapsed: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
        let elapsed = chrono::Duration::from_std(elapsed).unwrap_or_default();
        match chrono::DateTime::parse_from_rfc3339(&self.started_at) {
            Ok(start) => start.with_timezone(&chrono::Utc) + elapsed,
            // Stamps are made by `at`; one that does not parse is dated now.
            Err(_) => chrono::Utc::now(),
        }
    }

    /// The same stamp with a new random part.
    pub(super) fn with_new_suffix(&self) -> RunStamp {
        let second = self.run_id.split('-').next().unwrap_or_default();
        RunStamp {
            run_id: format!("{second}-{:016x}", fastrand::u64(..)),
            ..self.clone()
        }
    }
}
