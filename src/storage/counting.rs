//! A backend that counts what the commit protocol reads, writes and lists
//! through another one: for the tests and the bench that hold a run's cost
//! to what it does, not to how many runs came before.

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::{
    Backend, ChainBytes, Expect, HandoffLog, Journal, Listed, Location, NewObject, Storage, Stored,
};
use crate::error::Result;

/// What went through a [`Counting`] backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Bytes of objects read (whole or ranges), the handoff file aside.
    pub read: u64,
    /// Bytes of objects written, replaced or appended, the handoff file
    /// aside.
    pub written: u64,
    /// The prefixes listed, in order.
    pub listed: Vec<String>,
    /// Objects the listings returned.
    pub listed_objects: u64,
}

/// Counts the traffic of `inner`.
#[derive(Debug, Clone)]
pub struct Counting {
    inner: Storage,
    counts: Arc<Mutex<Counts>>,
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Storage) -> Counting {
        Counting {
            inner,
            counts: Arc::default(),
        }
    }

    /// What was counted since the last call, which starts anew.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }

    fn add(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap());
    }
}

struct CountingWriter {
    inner: Box<dyn NewObject>,
    counts: Arc<Mutex<Counts>>,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counts.lock().unwrap().written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl NewObject for CountingWriter {
    fn finish(self: Box<Self>) -> Result<()> {
        self.inner.finish()
    }
}

struct CountingReader {
    inner: Box<dyn Read + Send>,
    counts: Arc<Mutex<Counts>>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counts.lock().unwrap().read += n as u64;
        Ok(n)
    }
}

impl Backend for Counting {
    fn location(&self) -> Location {
        self.inner.location()
    }
    fn describe(&self, key: &str) -> std::path::PathBuf {
        self.inner.describe(key)
    }
    fn prepare(&self) -> Result<()> {
        self.inner.prepare()
    }
    fn lock(&self, run_id: &str) -> Result<Box<dyn std::fmt::Debug + Send + Sync>> {
        self.inner.lock(run_id)
    }
    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
    fn get(&self, key: &str) -> Result<Option<Stored>> {
        let stored = self.inner.get(key)?;
        let n = stored.as_ref().map_or(0, |s| s.bytes.len() as u64);
        self.add(|c| c.read += n);
        Ok(stored)
    }
    fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(CountingReader {
            inner: self.inner.reader(key, range)?,
            counts: self.counts.clone(),
        }))
    }
    fn size(&self, key: &str) -> Result<Option<u64>> {
        self.inner.size(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let listed = self.inner.list(prefix)?;
        let n = listed.len() as u64;
        self.add(|c| {
            c.listed.push(prefix.to_owned());
            c.listed_objects += n;
        });
        Ok(listed)
    }
    fn create(&self, key: &str) -> Result<Box<dyn NewObject>> {
        Ok(Box::new(CountingWriter {
            inner: self.inner.create(key)?,
            counts: self.counts.clone(),
        }))
    }
    fn replace(&self, key: &str, bytes: &[u8], expect: Expect<'_>) -> Result<Option<String>> {
        self.add(|c| c.written += bytes.len() as u64);
        self.inner.replace(key, bytes, expect)
    }
    fn chain_append(&self, seq: u64, line: &[u8]) -> Result<()> {
        self.add(|c| c.written += line.len() as u64);
        self.inner.chain_append(seq, line)
    }
    fn chain_read(&self, from: Option<u64>) -> Result<Option<ChainBytes>> {
        let read = self.inner.chain_read(from)?;
        let n = read.as_ref().map_or(0, |r| r.bytes.len() as u64);
        self.add(|c| c.read += n);
        Ok(read)
    }
    fn chain_cut(&self, len: u64) -> Result<()> {
        self.inner.chain_cut(len)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner.rename(from, to)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }
    fn handoff(&self, committed: u64) -> Result<Box<dyn HandoffLog>> {
        self.inner.handoff(committed)
    }
    fn handoff_reader(&self, range: Range<u64>) -> Result<Box<dyn Read + Send>> {
        self.inner.handoff_reader(range)
    }
    fn handoff_len(&self) -> Result<u64> {
        self.inner.handoff_len()
    }
    fn handoff_install(&self, staged: &str) -> Result<()> {
        self.inner.handoff_install(staged)
    }
    fn journal(&self, key: &str) -> Result<Box<dyn Journal>> {
        self.inner.journal(key)
    }
    fn journal_pieces(&self, key: &str) -> Result<Vec<String>> {
        self.inner.journal_pieces(key)
    }
    fn sweep_temporaries(&self, names: &[&str]) -> Result<Vec<String>> {
        self.inner.sweep_temporaries(names)
    }
    fn table_part(&self) -> Option<&str> {
        self.inner.table_part()
    }
}
