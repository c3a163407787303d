//! Tombstones: what keeps erased messages out of later syncs. They are
//! the erasure runs' rows files (message IDs, body-free), named in the
//! checkpoint with their digests ([`ErasureState`]), plus retention's
//! cut-off instant. A run loads them once, when it opens the output, into
//! a sorted array (a binary search per record: no scan per message).
//!
//! Each erasure's seal also writes the index, `state/tombstones-<run>.bin`:
//! every (conversation, message) ID pair of the rows files as two
//! big-endian `u64`s, sorted and unique, named in the checkpoint with its
//! digest and the digests of the rows files it was built from. Every run
//! reads that one file (16 bytes per ID, already sorted: no JSON to parse,
//! no sort), checked against its digest. The rows files stay the evidence:
//! when the index is missing, stale or damaged, the run reads them instead,
//! each checked against its digest, and a rows file changed or removed then
//! stops the run (exit 3, naming the file) before an erased message could
//! be written again. `verify` checks the index against the rows files, and
//! the rows files against their runs' manifests.
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

use crate::checkpoint::{ErasureState, TombstoneFile, TombstoneIndex};
use crate::error::{Error, Result};
use crate::records::HistoryRowRef;
use crate::storage::{Backend, Expect};

/// Where the index files live: `state/tombstones-<run>.bin`.
const INDEX_PREFIX: &str = "state/tombstones-";
/// Bytes per ID pair in the index.
const PAIR: usize = 16;

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
    /// Loads the tombstones `state` names from `storage`: from its index
    /// when that is current and intact, else from the rows files, each
    /// checked against its digest and line count.
    pub fn load(storage: &dyn Backend, state: &ErasureState) -> Result<Tombstones> {
        let before_micros = state
            .erased_before
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros());
        if let Some(index) = &state.index
            && index.source == source_of(&state.tombstones)
        {
            match read_index(storage, index) {
                Ok(ids) => {
                    return Ok(Tombstones {
                        ids,
                        before_micros,
                        ..Tombstones::default()
                    });
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "the tombstones' index is unusable; reading the erasure runs' rows files instead"
                ),
            }
        }
        let mut tombstones = Tombstones::from_rows_files(storage, &state.tombstones)?;
        tombstones.before_micros = before_micros;
        Ok(tombstones)
    }

    /// The ID tombstones of the rows files `files`, each checked.
    fn from_rows_files(storage: &dyn Backend, files: &[TombstoneFile]) -> Result<Tombstones> {
        let mut tombstones = Tombstones::default();
        for file in files {
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

/// Makes `state`'s index current: unless it already indexes exactly the
/// rows files `state` names, writes the index of their tombstones (each
/// file checked) as `state/tombstones-<run>.bin`, named after the last
/// erasure run among them, and names it in `state`. No index when there
/// are no ID tombstones, or when some ID is not a number (never seen: the
/// rows files then serve). Called when an erasure comes into force, before
/// the checkpoint naming it is saved, and by `rebuild`.
pub fn refresh_index(storage: &dyn Backend, state: &mut ErasureState) -> Result<()> {
    let source = source_of(&state.tombstones);
    if state.index.as_ref().is_some_and(|i| i.source == source) {
        return Ok(());
    }
    state.index = None;
    let Some(last) = state.tombstones.last() else {
        return Ok(());
    };
    let tombstones = Tombstones::from_rows_files(storage, &state.tombstones)?;
    if tombstones.ids.is_empty() || !tombstones.other.is_empty() {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(tombstones.ids.len() * PAIR);
    for (user, message) in &tombstones.ids {
        bytes.extend_from_slice(&user.to_be_bytes());
        bytes.extend_from_slice(&message.to_be_bytes());
    }
    let path = format!("{INDEX_PREFIX}{}.bin", last.run_id);
    storage.replace(&path, &bytes, Expect::Any)?;
    state.index = Some(TombstoneIndex {
        path,
        sha256: hex::encode(Sha256::digest(&bytes)),
        ids: tombstones.ids.len() as u64,
        source,
    });
    Ok(())
}

/// Deletes the index files `state` does not name: those of earlier
/// erasures, once the checkpoint names the new one.
pub fn remove_stale_indexes(storage: &dyn Backend, state: &ErasureState) -> Result<()> {
    let current = state.index.as_ref().map(|i| i.path.as_str());
    for listed in storage.list("state/")? {
        let key = listed.key;
        if key.starts_with(INDEX_PREFIX) && key.ends_with(".bin") && Some(key.as_str()) != current {
            storage.delete(&key)?;
        }
    }
    Ok(())
}

/// What is wrong with `state`'s index, if anything (for `verify`): it must
/// index exactly the rows files `state` names, and hold exactly their ID
/// pairs. Damaged rows files are `verify`'s to name by their digests.
pub fn index_problem(storage: &dyn Backend, state: &ErasureState) -> Option<String> {
    let index = state.index.as_ref()?;
    if index.source != source_of(&state.tombstones) {
        return Some(format!(
            "{}: was built from other rows files than the checkpoint's tombstones",
            index.path
        ));
    }
    let ids = match read_index(storage, index) {
        Ok(ids) => ids,
        Err(e) => return Some(e.to_string()),
    };
    let rows = Tombstones::from_rows_files(storage, &state.tombstones).ok()?;
    (rows.ids != ids).then(|| {
        format!(
            "{}: holds other IDs than the erasure runs' rows files ({} against {})",
            index.path,
            ids.len(),
            rows.ids.len()
        )
    })
}

/// The digest of the rows files `files` stand for, as an index records it.
fn source_of(files: &[TombstoneFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.sha256.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// The ID pairs of the index `index` names, checked: its digest, its
/// length, and that they are strictly ascending (what a binary search
/// needs). Read in chunks, hashed and decoded as they come: memory holds
/// the pairs once, not the file beside them.
fn read_index(storage: &dyn Backend, index: &TombstoneIndex) -> Result<Vec<(u64, u64)>> {
    let path = storage.describe(&index.path);
    let damaged = |reason: &str| Error::Corrupt {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    if storage.size(&index.path)? != Some(index.ids.saturating_mul(PAIR as u64)) {
        return Err(damaged(
            "is missing, or differs from the checkpoint's length",
        ));
    }
    let mut hasher = Sha256::new();
    let mut reader = HashingReader {
        inner: storage.reader(&index.path, None)?,
        hasher: &mut hasher,
    };
    let mut ids: Vec<(u64, u64)> = Vec::with_capacity(usize::try_from(index.ids).unwrap_or(0));
    let mut chunk = vec![0u8; PAIR * 4096];
    loop {
        let n = read_full(&mut reader, &mut chunk).map_err(|e| Error::io(&path, e))?;
        let pairs = chunk.get(..n).unwrap_or_default();
        for pair in pairs.chunks_exact(PAIR) {
            let (user, message) = pair.split_at(PAIR / 2);
            let number = |half: &[u8]| half.try_into().map(u64::from_be_bytes);
            let (Ok(user), Ok(message)) = (number(user), number(message)) else {
                return Err(damaged("holds a partial ID pair"));
            };
            if ids.last().is_some_and(|last| *last >= (user, message)) {
                return Err(damaged("is not sorted"));
            }
            ids.push((user, message));
        }
        if n < chunk.len() {
            break;
        }
    }
    if ids.len() as u64 != index.ids || hex::encode(hasher.finalize()) != index.sha256 {
        return Err(damaged("differs from the checkpoint's digest"));
    }
    Ok(ids)
}

/// Fills `buf` from `reader` as far as it goes; the bytes read (less than
/// `buf.len()` only at the end).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match reader.read(rest)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
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

    #[test]
    fn the_index_holds_what_the_rows_files_hold_and_falls_back_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..50u64)
            .rev()
            .map(|i| {
                format!(
                    r#"{{"record_type":"history","user_id":"{}","message_id":"{}"}}"#,
                    i % 3,
                    1_000 + i
                ) + "\n"
            })
            .collect();
        let mut state = state_with(dir.path(), &lines);
        let storage = LocalDir::new(dir.path());
        let from_rows = Tombstones::load(&storage, &state).unwrap();
        refresh_index(&storage, &mut state).unwrap();
        let index = state.index.clone().unwrap();
        assert_eq!(index.path, "state/tombstones-r.bin");
        assert_eq!(index.ids, 50);
        assert_eq!(index_problem(&storage, &state), None);
        // The rows file gone: the index alone serves.
        std::fs::remove_file(dir.path().join("audit/runs/r.rows.jsonl")).unwrap();
        let from_index = Tombstones::load(&storage, &state).unwrap();
        assert_eq!(from_index.ids, from_rows.ids);
        assert!(from_index.erases(&row("1", "1001", None)));
        // A damaged index: the rows file serves (here missing: exit 3).
        std::fs::write(dir.path().join(&index.path), [0u8; 16]).unwrap();
        let err = Tombstones::load(&storage, &state).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        std::fs::write(dir.path().join("audit/runs/r.rows.jsonl"), &lines).unwrap();
        let fallback = Tombstones::load(&storage, &state).unwrap();
        assert_eq!(fallback.ids, from_rows.ids);
        assert!(index_problem(&storage, &state).is_some());
        // Stale (built from other rows files): not used, and named.
        refresh_index(&storage, &mut state).unwrap();
        state.tombstones[0].sha256 = "0".repeat(64);
        assert!(
            index_problem(&storage, &state)
                .unwrap()
                .contains("other rows files")
        );
        // An earlier index is removed once a newer one is named.
        std::fs::write(dir.path().join("state/tombstones-old.bin"), b"").unwrap();
        remove_stale_indexes(&storage, &state).unwrap();
        assert!(!dir.path().join("state/tombstones-old.bin").exists());
        assert!(dir.path().join(&index.path).exists());
    }
}
