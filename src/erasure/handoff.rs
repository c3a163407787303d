//! The handoff file's new generation: one pass over the committed bytes
//! that copies every record the erasure keeps into a staged object and
//! collects the IDs of those it erases. The staged object becomes the
//! handoff file once the erasure's manifest is chained
//! ([`crate::storage::Backend::handoff_install`]); until then the old
//! generation is the file, and a killed erasure's staged object is removed
//! by the next run.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashSet;
use std::io::Write;

use sha2::{Digest, Sha256};

use super::Selection;
use super::record::staged_key;
use crate::audit::AuditRow;
use crate::error::{Error, Result};
use crate::records::RecordKey as Record;
use crate::sinks::jsonl::{self, DigestState};
use crate::storage::Backend;

/// What the pass wrote and found.
#[derive(Debug)]
pub struct Staged {
    /// The staged object's key.
    pub key: String,
    /// The old generation's length, records and SHA-256.
    pub before: (u64, u64, String),
    /// The new generation's length and records.
    pub bytes: u64,
    /// History records kept.
    pub history_rows: u64,
    /// Send records kept.
    pub send_rows: u64,
    /// The new generation's SHA-256, and its midstate for the checkpoint.
    pub sha256: String,
    /// The midstate after the new generation's bytes.
    pub state: DigestState,
    /// The records erased, in file order.
    pub erased: Vec<AuditRow>,
}

/// How a selection is asked about one record.
pub struct Matcher<'a> {
    users: HashSet<&'a str>,
    messages: HashSet<&'a str>,
    older_than_ms: Option<i64>,
}

impl<'a> Matcher<'a> {
    /// The matcher of `selection`.
    pub fn new(selection: &'a Selection) -> Matcher<'a> {
        Matcher {
            users: selection.users.iter().map(String::as_str).collect(),
            messages: selection.messages.iter().map(String::as_str).collect(),
            older_than_ms: selection.older_than.map(|t| t.timestamp_millis()),
        }
    }

    /// Whether the record is erased: its conversation (or recipient) is
    /// named, its ID is, or it is older than the retention cut-off (by its
    /// own time, else the time in its snowflake ID).
    fn erases(&self, record: &Record, user: &str) -> bool {
        if self.users.contains(user) || self.messages.contains(record.message_id.as_str()) {
            return true;
        }
        let Some(cut) = self.older_than_ms else {
            return false;
        };
        let own = record.created_at.as_deref().or(record.sent_at.as_deref());
        let millis = own
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .or_else(|| crate::timestamp::snowflake_millis(&record.message_id));
        millis.is_some_and(|m| m < cut)
    }
}

/// Reads the committed `committed` bytes of the handoff file, checks them
/// against `expected_sha256` (the whole-file digest the checkpoint and
/// `SHA256SUMS` carry), and stages the kept records as the new generation
/// of the run `run_id`. `None` when nothing matches (nothing is staged).
pub fn stage(
    storage: &dyn Backend,
    committed: u64,
    expected_sha256: &str,
    matcher: &Matcher<'_>,
    run_id: &str,
) -> Result<Option<Staged>> {
    // Two passes: the first finds what goes and checks the old bytes, so
    // that nothing is staged for an erasure that erases nothing or reads a
    // damaged file.
    let (erased, before_rows, before_sha256) = scan(storage, committed, matcher)?;
    if before_sha256 != expected_sha256 {
        return Err(Error::Corrupt {
            path: storage.describe(jsonl::FILE_NAME),
            reason: "differs from the digest the checkpoint and SHA256SUMS record: nothing was erased; run `xquik-dm verify`".into(),
        });
    }
    if erased.is_empty() {
        return Ok(None);
    }
    let gone: HashSet<(&str, &str, &str)> = erased
        .iter()
        .map(|r| {
            (
                r.record_type.as_str(),
                r.user_id.as_str(),
                r.message_id.as_str(),
            )
        })
        .collect();
    let key = staged_key(run_id);
    let mut object = storage.create(&key)?;
    let (mut hasher, mut bytes, mut kept) = (Sha256::new(), 0u64, (0u64, 0u64));
    let path = storage.describe(&key);
    jsonl::for_each_line(storage, 0, committed, |line| {
        let record = parse(storage, line)?;
        let user = record.user_id();
        if gone.contains(&(
            record.record_type.as_str(),
            user,
            record.message_id.as_str(),
        )) {
            return Ok(());
        }
        for part in [line, b"\n"] {
            object.write_all(part).map_err(|e| Error::io(&path, e))?;
            hasher.update(part);
        }
        bytes += line.len() as u64 + 1;
        match record.record_type.as_str() {
            "send" => kept.1 += 1,
            _ => kept.0 += 1,
        }
        Ok(())
    })?;
    object.finish()?;
    Ok(Some(Staged {
        key,
        before: (committed, before_rows, before_sha256),
        bytes,
        history_rows: kept.0,
        send_rows: kept.1,
        sha256: hex::encode(hasher.clone().finalize()),
        state: jsonl::save_state(&hasher, bytes),
        erased,
    }))
}

/// The first pass: the records `matcher` erases, the records in all, and
/// the SHA-256 of the committed bytes.
fn scan(
    storage: &dyn Backend,
    committed: u64,
    matcher: &Matcher<'_>,
) -> Result<(Vec<AuditRow>, u64, String)> {
    let mut erased = Vec::new();
    let (mut hasher, mut rows) = (Sha256::new(), 0u64);
    jsonl::for_each_line(storage, 0, committed, |line| {
        hasher.update(line);
        hasher.update(b"\n");
        rows += 1;
        let record = parse(storage, line)?;
        let user = record.user_id();
        if matcher.erases(&record, user) {
            erased.push(AuditRow {
                record_type: record.record_type.clone(),
                user_id: user.to_owned(),
                message_id: record.message_id.clone(),
            });
        }
        Ok(())
    })?;
    Ok((erased, rows, hex::encode(hasher.finalize())))
}

fn parse(storage: &dyn Backend, line: &[u8]) -> Result<Record> {
    serde_json::from_slice(line).map_err(|_| Error::Corrupt {
        path: storage.describe(jsonl::FILE_NAME),
        reason: "holds a line that is not a record: nothing was erased; run `xquik-dm verify`"
            .into(),
    })
}
