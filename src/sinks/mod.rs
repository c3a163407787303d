//! Where rows go: the JSON Lines handoff file (`jsonl`), which doubles as
//! the run's write-ahead log, and Parquet (`parquet`), a compacted view that
//! can always be rebuilt from the committed JSONL. Where their bytes go is
//! the [`crate::storage`] seam's business.

pub mod jsonl;
pub mod parquet;

use std::io::Write;

use sha2::{Digest, Sha256};

/// SHA-256 of a byte slice, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A writer that hashes and counts everything passing through it, so a
/// file's digest is known when it is closed without reading it back.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the hex digest and the byte count so far.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file one run wrote (or a segment it appended), for the audit manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WrittenFile {
    /// Path relative to the output folder, `/`-separated.
    pub path: String,
    /// SHA-256 of the file (or of exactly the segment's bytes).
    pub sha256: String,
    /// Size in bytes (of the file or the segment).
    pub bytes: u64,
    /// Records in it.
    pub rows: u64,
    /// For an appended segment: where it starts in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// For an appended segment: its length (equal to `bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// For a Parquet file this process wrote: its ID and time columns'
    /// statistics, for its run's Delta commit. Never serialized: the
    /// manifest and the checkpoint list files without them (a file a
    /// killed run committed reaches the next run's commit with its row
    /// count only).
    #[serde(skip)]
    pub stats: Option<crate::delta::FileStats>,
}

/// Two listings of a file are equal when they name the same bytes, whether
/// or not one carries the statistics the other was read back without.
impl PartialEq for WrittenFile {
    fn eq(&self, other: &WrittenFile) -> bool {
        (
            &self.path,
            &self.sha256,
            self.bytes,
            self.rows,
            self.offset,
            self.length,
        ) == (
            &other.path,
            &other.sha256,
            other.bytes,
            other.rows,
            other.offset,
            other.length,
        )
    }
}

impl Eq for WrittenFile {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, digest, bytes) = w.finish();
        assert_eq!(bytes, 11);
        assert_eq!(digest, sha256_hex(&inner));
        assert_eq!(
            digest,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
