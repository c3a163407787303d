//! The JSON Lines handoff file, `xquik-dm-handoff.jsonl`: append-only across
//! runs, one record per line.
//!
//! It is also the run's write-ahead log. The checkpoint records how many
//! bytes of it are committed; anything past that on disk is a torn tail or
//! the uncommitted end of a killed run, and is cut back before a run appends
//! (the rows it held are fetched again, so nothing is lost or duplicated).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::io::{BufRead, BufReader, Read};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use super::WrittenFile;
use crate::error::{Error, Result};
use crate::storage::{Backend, HandoffLog};

/// File name of the handoff file inside the output folder.
pub const FILE_NAME: &str = "xquik-dm-handoff.jsonl";

/// An open handoff file, positioned at its committed end.
#[derive(Debug)]
pub struct JsonlSink {
    log: Box<dyn HandoffLog>,
    segment_offset: u64,
    segment_hasher: Sha256,
    segment_rows: u64,
    /// SHA-256 of the whole file so far, for `SHA256SUMS`: carried from
    /// run to run as a saved midstate, so a run hashes only what it adds.
    /// `None` while the segment starts at the file's first byte: then the
    /// two digests are one, and a first backfill hashes its bytes once.
    file_hasher: Option<Sha256>,
}

/// A saved SHA-256 midstate of the file's first `bytes` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestState {
    /// Bytes hashed.
    pub bytes: u64,
    /// The serialized hasher state, hex.
    pub state: String,
}

impl JsonlSink {
    /// Opens (or creates) the file and cuts it back to `committed` bytes.
    /// Returns the sink and the number of bytes cut. A file shorter than
    /// `committed` was truncated by something else: that is refused, since
    /// appending would silently lose the missing records.
    ///
    /// The segment reported by [`JsonlSink::segment`] starts at
    /// `segment_from` (where the last audit manifest's coverage ends), so
    /// records committed by a run that died before sealing its manifest are
    /// covered by the next one.
    pub fn open(
        storage: &dyn Backend,
        committed: u64,
        segment_from: u64,
        saved: Option<&DigestState>,
    ) -> Result<(JsonlSink, u64)> {
        let path = storage.describe(FILE_NAME);
        let mut log = storage.handoff(committed)?;
        let len = log.len();
        if len < committed {
            return Err(Error::Corrupt {
                path,
                reason: format!(
                    "the checkpoint says {committed} bytes are committed but the file has {len}: restore it, or start over in an empty --out folder"
                ),
            });
        }
        if segment_from > committed {
            return Err(Error::Corrupt {
                path,
                reason: format!(
                    "the audit chain covers {segment_from} bytes but only {committed} are committed: restore the output folder from backup"
                ),
            });
        }
        let cut = log.truncate(committed)?;
        // The whole-file hasher resumes from the saved midstate when it
        // still describes a prefix of the committed bytes.
        let (mut file_hasher, file_from) =
            match saved.filter(|d| d.bytes <= committed).and_then(restore) {
                Some((hasher, bytes)) => (Some(hasher), bytes),
                None => (Some(Sha256::new()), 0),
            };
        if file_from == 0 && segment_from == 0 {
            file_hasher = None;
        }
        let mut segment_hasher = Sha256::new();
        let start = segment_from.min(file_from);
        let segment_rows = if start < committed {
            let file = file_hasher.as_mut().map(|h| (h, file_from));
            hash_committed(
                storage,
                start..committed,
                (&mut segment_hasher, segment_from),
                file,
            )?
        } else {
            0
        };
        Ok((
            JsonlSink {
                log,
                segment_offset: segment_from,
                segment_hasher,
                segment_rows,
                file_hasher,
            },
            cut,
        ))
    }

    /// Appends complete lines (the caller batches many records per call).
    pub fn append(&mut self, lines: &[u8], rows: u64) -> Result<()> {
        self.log.append(lines)?;
        self.segment_hasher.update(lines);
        if let Some(file_hasher) = &mut self.file_hasher {
            file_hasher.update(lines);
        }
        self.segment_rows += rows;
        Ok(())
    }

    /// Makes everything appended durable and returns the new committed length.
    pub fn sync(&mut self) -> Result<u64> {
        self.log.sync()?;
        Ok(self.log.len())
    }

    /// SHA-256 of the whole file as appended so far.
    pub fn file_digest(&self) -> String {
        hex::encode(self.file_hasher().clone().finalize())
    }

    fn file_hasher(&self) -> &Sha256 {
        self.file_hasher.as_ref().unwrap_or(&self.segment_hasher)
    }

    /// The whole-file hasher's midstate, to be saved with the committed
    /// length it covers.
    pub fn digest_state(&self) -> DigestState {
        DigestState {
            bytes: self.log.len(),
            state: hex::encode(self.file_hasher().serialize().as_slice()),
        }
    }

    /// The current length (everything appended, synced or not).
    pub fn len(&self) -> u64 {
        self.log.len()
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// The segment this sink appended, for the audit manifest.
    pub fn segment(&self) -> Option<WrittenFile> {
        let length = self.len() - self.segment_offset;
        (length > 0).then(|| WrittenFile {
            path: FILE_NAME.to_owned(),
            sha256: hex::encode(self.segment_hasher.clone().finalize()),
            bytes: length,
            rows: self.segment_rows,
            offset: Some(self.segment_offset),
            length: Some(length),
            stats: None,
        })
    }
}

/// The midstate of `hasher` after `bytes` bytes, to be saved (an
/// erasure's new generation starts its file digest here).
pub fn save_state(hasher: &Sha256, bytes: u64) -> DigestState {
    DigestState {
        bytes,
        state: hex::encode(hasher.serialize().as_slice()),
    }
}

/// The SHA-256 of the bytes a saved midstate covers; `None` when it does
/// not parse.
pub fn digest_of(saved: &DigestState) -> Option<String> {
    restore(saved).map(|(hasher, _)| hex::encode(hasher.finalize()))
}

/// A hasher from a saved midstate; `None` when the state does not parse.
fn restore(saved: &DigestState) -> Option<(Sha256, u64)> {
    let bytes = hex::decode(&saved.state).ok()?;
    let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
    let hasher = Sha256::deserialize(&state).ok()?;
    Some((hasher, saved.bytes))
}

/// Streams the committed bytes `range` of the handoff file into the
/// hashers an opening sink resumes, each from the offset its bytes start
/// at: the segment's, whose lines are counted, and the whole file's unless
/// it is the segment's. Returns the segment's lines.
fn hash_committed(
    storage: &dyn Backend,
    range: Range<u64>,
    (segment_hasher, segment_from): (&mut Sha256, u64),
    mut file: Option<(&mut Sha256, u64)>,
) -> Result<u64> {
    let path = storage.describe(FILE_NAME);
    let mut segment_rows = 0;
    let mut reader = storage.handoff_reader(range.clone())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = range.start;
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::io(&path, e))?;
        if n == 0 {
            return Ok(segment_rows);
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let tail = |from: u64| {
            chunk
                .get((from.saturating_sub(at) as usize).min(n)..)
                .unwrap_or_default()
        };
        let seg = tail(segment_from);
        segment_hasher.update(seg);
        segment_rows += seg.iter().filter(|b| **b == b'\n').count() as u64;
        if let Some((file_hasher, file_from)) = &mut file {
            file_hasher.update(tail(*file_from));
        }
        at += n as u64;
    }
}

/// Reads the lines of the handoff file between byte offsets `from` and
/// `to` (both on line boundaries), calling `each` with every line (without
/// its newline).
pub fn for_each_line(
    storage: &dyn Backend,
    from: u64,
    to: u64,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let path = storage.describe(FILE_NAME);
    let reader = storage.handoff_reader(from..to.max(from))?;
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(&path, e))?;
        if n == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        each(&line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalDir;

    #[test]
    fn torn_tail_is_cut_back_to_the_committed_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let storage = LocalDir::new(dir.path());
        let (mut sink, cut) = JsonlSink::open(&storage, 0, 0, None).unwrap();
        assert_eq!(cut, 0);
        sink.append(b"{\"a\":1}\n", 1).unwrap();
        let committed = sink.sync().unwrap();
        sink.append(b"{\"b\":2}\n{\"c\":", 1).unwrap();
        drop(sink);
        let (sink, cut) = JsonlSink::open(&storage, committed, committed, None).unwrap();
        assert_eq!(cut, 13);
        assert_eq!(sink.len(), committed);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n");
    }

    #[test]
    fn a_file_shorter_than_committed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let storage = LocalDir::new(dir.path());
        std::fs::write(&path, b"{}\n").unwrap();
        let err = JsonlSink::open(&storage, 10, 0, None).unwrap_err();
        assert!(err.to_string().contains("10 bytes are committed"), "{err}");
    }

    #[test]
    fn segment_digest_covers_exactly_the_appended_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let storage = LocalDir::new(dir.path());
        std::fs::write(&path, b"{\"old\":1}\n").unwrap();
        let (mut sink, _) = JsonlSink::open(&storage, 10, 10, None).unwrap();
        sink.append(b"{\"new\":2}\n", 1).unwrap();
        sink.sync().unwrap();
        let seg = sink.segment().unwrap();
        assert_eq!((seg.offset, seg.length, seg.rows), (Some(10), Some(10), 1));
        assert_eq!(seg.sha256, super::super::sha256_hex(b"{\"new\":2}\n"));
        drop(sink);
        // A segment starting before the committed end covers the bytes
        // already there (committed by a run that never sealed).
        let (mut sink, _) = JsonlSink::open(&storage, 20, 0, None).unwrap();
        sink.append(b"{\"c\":3}\n", 1).unwrap();
        let seg = sink.segment().unwrap();
        assert_eq!((seg.offset, seg.length, seg.rows), (Some(0), Some(28), 3));
        assert_eq!(
            seg.sha256,
            super::super::sha256_hex(&std::fs::read(&path).unwrap())
        );
    }

    #[test]
    fn the_whole_file_digest_resumes_from_a_saved_midstate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let storage = LocalDir::new(dir.path());
        let (mut sink, _) = JsonlSink::open(&storage, 0, 0, None).unwrap();
        sink.append(b"{\"a\":1}\n", 1).unwrap();
        let committed = sink.sync().unwrap();
        let saved = sink.digest_state();
        sink.append(b"{\"b\":2}\n", 1).unwrap();
        let len = sink.sync().unwrap();
        drop(sink);
        // Resumed from the midstate at `committed`: hashes only the rest.
        let (mut sink, _) = JsonlSink::open(&storage, len, len, Some(&saved)).unwrap();
        sink.append(b"{\"c\":3}\n", 1).unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(sink.file_digest(), super::super::sha256_hex(&whole));
        assert_eq!(saved.bytes, committed);
        // A damaged state falls back to hashing the whole file.
        let bad = DigestState {
            bytes: 3,
            state: "zz".into(),
        };
        let (sink, _) = JsonlSink::open(&storage, whole.len() as u64, 0, Some(&bad)).unwrap();
        assert_eq!(sink.file_digest(), super::super::sha256_hex(&whole));
    }

    #[test]
    fn lines_between_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let storage = LocalDir::new(dir.path());
        std::fs::write(&path, b"a\nbb\nccc\n").unwrap();
        let mut seen = Vec::new();
        for_each_line(&storage, 2, 9, |l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["bb", "ccc"]);
    }
}
