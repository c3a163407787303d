//! Tombstones: what keeps erased messages out of later syncs. They are
//! the erasure runs' rows files (message IDs, body-free), named in the
//! checkpoint with their digests ([`ErasureState`]), plus retention's
//! cut-off instant. A run loads them once, when it opens the output, into
//! a sorted array (a binary search per record: no scan per message), and
//! checks each file against its digest: a tombstone file changed or
//! removed stops the run (exit 3, naming the file) before an erased
//! message could be written again.
//!
//! Bounded: the set holds the IDs erased by conversation or by ID (16
//! bytes each); retention keeps no ID at all, only its cut-off.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

use sha2::{Digest, Sha256};

use crate::checkpoint::{ErasureState, TombstoneFile};
use crate::error::{Error, Result};
use crate::records::HistoryRowRef;
use crate::storage::Backend;

/// The tombstones in force, loaded once per run.
#[derive(Debug, Default)]
pub struct Tombstones {
    /// (conversation, message ID) of erased history records, as numbers.
    /// Sorted and deduplicated once loaded: a binary search per record
    /// (16 bytes per ID, no hashing on the load, which every run pays).
    ids: Vec<(u64, u64)>,
    /// Those whose IDs do not fit a `u64` (never seen: IDs are 1–20 digits).
    other: HashSet<(String, String)>,
    /// Retention's cut-off, in UTC microseconds.
    before_micros: Option<i64>,
}

impl Tombstones {
    /// Loads the tombstones `state` names from `storage`, each file checked
    /// against its digest and line count.
    pub fn load(storage: &dyn Backend, state: &ErasureState) -> Result<Tombstones> {
        let mut tombstones = Tombstones {
            before_micros: state
                .erased_before
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_micros()),
            ..Tombstones::default()
        };
        for file in &state.tombstones {
            tombstones.load_file(storage, file)?;
        }
        tombstones.ids.sort_unstable();
        tombstones.ids.dedup();
        Ok(tombstones)
    }

    fn load_file(&mut self, storage: &dyn Backend, file: &TombstoneFile) -> Result<()> {
        let path = storage.describe(&file.path);
        let damaged = |what: &str| Error::Corrupt {
            path: path.clone(),
            reason: format!(
                "the tombstones of erasure run {} {what}: a sync could write erased messages again, so nothing was done; restore audit/ from backup (`xquik-dm verify` names the damage)",
                file.run_id
            ),
        };
        if storage.size(&file.path)?.is_none() {
            return Err(damaged("are missing"));
        }
        let mut hasher = Sha256::new();
        let mut lines = 0u64;
        let reader = HashingReader {
            inner: storage.reader(&file.path, None)?,
            hasher: &mut hasher,
        };
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let mut line = Vec::with_capacity(128);
        self.ids.reserve(usize::try_from(file.rows).unwrap_or(0));
        // Read once per run: the line buffer is reused and the IDs are
        // borrowed from it (a line is only three short IDs).
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(&path, e))?
                == 0
            {
                break;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let row: RowIds<'_> = serde_json::from_slice(text)
                .map_err(|_| damaged("hold a line that is not a row"))?;
            lines += 1;
            // An erased send's DM later shows up in its recipient's
            // history under the same ID: it is a tombstone there too.
            self.insert(&row.user_id, &row.message_id);
        }
        if hex::encode(hasher.finalize()) != file.sha256 || lines != file.rows {
            return Err(damaged("differ from the checkpoint's digest"));
        }
        Ok(())
    }

    fn insert(&mut self, user: &str, message: &str) {
        match (user.parse::<u64>(), message.parse::<u64>()) {
            (Ok(u), Ok(m)) => {
                self.ids.push((u, m));
            }
            _ => {
                self.other.insert((user.to_owned(), message.to_owned()));
            }
        }
    }

    /// Whether nothing is tombstoned.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.other.is_empty() && self.before_micros.is_none()
    }

    /// IDs held.
    pub fn len(&self) -> usize {
        self.ids.len() + self.other.len()
    }

    /// Whether the history record `row` was erased and must not be written
    /// again.
    pub fn erases(&self, row: &HistoryRowRef<'_>) -> bool {
        if let Some(before) = self.before_micros {
            let micros = row.created_at.or_else(|| {
                crate::timestamp::snowflake_millis(row.message_id).and_then(|m| m.checked_mul(1000))
            });
            if micros.is_some_and(|t| t < before) {
                return true;
            }
        }
        match (
            row.conversation_user_id.parse::<u64>(),
            row.message_id.parse::<u64>(),
        ) {
            (Ok(u), Ok(m)) => self.ids.binary_search(&(u, m)).is_ok(),
            _ => self.other.contains(&(
                row.conversation_user_id.to_owned(),
                row.message_id.to_owned(),
            )),
        }
    }
}

/// The IDs of a rows-file line ([`crate::audit::AuditRow`]'s), borrowed
/// from it.
#[derive(Debug, serde::Deserialize)]
struct RowIds<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    message_id: Cow<'a, str>,
}

/// A reader that hashes what it reads.
struct HashingReader<'a> {
    inner: Box<dyn Read + Send>,
    hasher: &'a mut Sha256,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::RecordType;
    use crate::storage::local::LocalDir;

    fn row<'a>(user: &'a str, id: &'a str, created_at: Option<i64>) -> HistoryRowRef<'a> {
        HistoryRowRef {
            record_type: RecordType::History,
            message_id: id,
            conversation_user_id: user,
            account: "acme",
            sender_id: user,
            receiver_id: "9",
            created_at,
            message_text: None,
            media_url: None,
        }
    }

    /// A rows file of `lines` in `dir`, named in a state.
    fn state_with(dir: &std::path::Path, lines: &str) -> ErasureState {
        std::fs::create_dir_all(dir.join("audit/runs")).unwrap();
        std::fs::write(dir.join("audit/runs/r.rows.jsonl"), lines).unwrap();
        ErasureState {
            tombstones: vec![TombstoneFile {
                run_id: "r".into(),
                path: "audit/runs/r.rows.jsonl".into(),
                sha256: crate::sinks::sha256_hex(lines.as_bytes()),
                rows: lines.lines().count() as u64,
            }],
            erased_before: Some("2026-01-01T00:00:00Z".into()),
            ..ErasureState::default()
        }
    }

    #[test]
    fn tombstoned_ids_and_old_records_are_erased_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let lines = concat!(
            r#"{"record_type":"history","user_id":"5","message_id":"2000000000000000000"}"#,
            "\n",
            r#"{"record_type":"send","user_id":"5","message_id":"2000000000000000001"}"#,
            "\n"
        );
        let state = state_with(dir.path(), lines);
        let t = Tombstones::load(&LocalDir::new(dir.path()), &state).unwrap();
        assert_eq!(t.len(), 2);
        let new = Some(1_800_000_000_000_000); // 2027
        assert!(t.erases(&row("5", "2000000000000000000", new)));
        assert!(!t.erases(&row("6", "2000000000000000000", new)));
        assert!(!t.erases(&row("5", "2000000000000000002", new)));
        // An erased send does not come back as its recipient's history.
        assert!(t.erases(&row("5", "2000000000000000001", new)));
        // Retention: before the cut-off by created_at, else by the ID.
        assert!(t.erases(&row("5", "2000000000000000002", Some(0))));
        assert!(t.erases(&row("5", "1", None)));
    }

    #[test]
    fn a_changed_or_missing_tombstone_file_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let line = r#"{"record_type":"history","user_id":"5","message_id":"7"}"#;
        let state = state_with(dir.path(), &format!("{line}\n{line}\n"));
        let storage = LocalDir::new(dir.path());
        std::fs::write(
            dir.path().join("audit/runs/r.rows.jsonl"),
            format!("{line}\n"),
        )
        .unwrap();
        let err = Tombstones::load(&storage, &state).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.to_string().contains("tombstones of erasure run r"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("audit/runs/r.rows.jsonl")).unwrap();
        let err = Tombstones::load(&storage, &state).unwrap_err();
        assert!(err.to_string().contains("are missing"), "{err}");
    }
}
