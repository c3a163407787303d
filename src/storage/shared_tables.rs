//! An output root whose Delta tables are shared with other roots: a shard
//! of a prefix that holds one table per prefix ([`crate::shard`]).
//!
//! The shard keeps its own root (`<prefix>/shard=K/`: checkpoint, handoff
//! file, audit chain, lock) and sees its keys exactly as an unsharded root
//! does, but the tables' keys are mapped into the prefix's tables:
//!
//! - `parquet/<table>/_delta_log/...` is the prefix's log, shared by every
//!   shard (commits race through the create-only put);
//! - any other `parquet/<table>/<rest>` is `parquet/<table>/<part>/<rest>`
//!   of the prefix, `<part>` being this shard's folder under the table root
//!   (`shard-K`), which no other shard writes into;
//! - every other key is the shard's own root's.
//!
//! So a shard's recovery, compaction and `verify` list, read and remove only
//! its own data files, as in an unsharded root, while its Delta commits
//! land in the one table every reader opens. The Delta code learns the
//! folder from [`Backend::table_part`] to name the files in its `add`s.

use std::fmt::Debug;
use std::io::Read;
use std::ops::Range;
use std::path::PathBuf;

use super::{
    Backend, ChainBytes, Expect, HandoffLog, Journal, Listed, Location, NewObject, Storage, Stored,
};
use crate::error::Result;

/// A shard's root, with its tables' keys mapped into the prefix's tables.
#[derive(Debug)]
pub struct SharedTables {
    /// The shard's own root.
    own: Storage,
    /// The prefix, which holds the tables (and `own` at `own_dir`).
    prefix: Storage,
    /// The shard's own root, relative to the prefix (`shard=K`).
    own_dir: String,
    /// This root's folder under each table root (`shard-K`).
    part: String,
    /// The table roots (`parquet/messages`, `parquet/sends`).
    roots: Vec<String>,
}

/// Where a key of the shard lives.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// In the shard's own root, under this key.
    Own(String),
    /// In the prefix, under this key.
    Prefix(String),
}

/// The folder of a table's log under its root.
const LOG_DIR: &str = "_delta_log";

impl SharedTables {
    /// The root `own` (at `own_dir` in `prefix`), whose keys under the
    /// table `roots` live in `prefix`, its data files in the folder `part`
    /// of each table.
    pub fn new(
        own: Storage,
        prefix: Storage,
        own_dir: &str,
        part: &str,
        roots: &[&str],
    ) -> SharedTables {
        SharedTables {
            own,
            prefix,
            own_dir: own_dir.to_owned(),
            part: part.to_owned(),
            roots: roots.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    /// Where `key` lives.
    fn route(&self, key: &str) -> Route {
        for root in &self.roots {
            let Some(rest) = key
                .strip_prefix(root.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if rest == LOG_DIR || rest.starts_with(&format!("{LOG_DIR}/")) {
                return Route::Prefix(key.to_owned());
            }
            return Route::Prefix(format!("{root}/{}/{rest}", self.part));
        }
        Route::Own(key.to_owned())
    }

    /// The backend and key of `key`.
    fn at(&self, key: &str) -> (&dyn Backend, String) {
        match self.route(key) {
            Route::Own(key) => (self.own.as_ref(), key),
            Route::Prefix(key) => (self.prefix.as_ref(), key),
        }
    }

    /// `key` as a key of the prefix.
    fn in_prefix(&self, key: &str) -> String {
        match self.route(key) {
            Route::Own(key) => format!("{}/{key}", self.own_dir),
            Route::Prefix(key) => key,
        }
    }

    /// The shard's key of a key the prefix listed under a table `root`:
    /// the log's as it is, the shard's folder's without the folder, any
    /// other shard's none.
    fn shard_key(&self, root: &str, key: String) -> Option<String> {
        let rest = key.strip_prefix(root)?.strip_prefix('/')?;
        if rest.starts_with(&format!("{LOG_DIR}/")) {
            return Some(key);
        }
        let own = rest.strip_prefix(self.part.as_str())?.strip_prefix('/')?;
        Some(format!("{root}/{own}"))
    }

    /// What the prefix holds of this shard under `prefix`, a folder inside
    /// the table `root` (or the root itself: the log and the shard's part).
    fn list_table(&self, root: &str, prefix: &str) -> Result<Vec<Listed>> {
        let folders = if prefix == format!("{root}/") {
            vec![
                format!("{root}/{LOG_DIR}/"),
                format!("{root}/{}/", self.part),
            ]
        } else {
            vec![self.in_prefix(prefix)]
        };
        let mut found = Vec::new();
        for folder in folders {
            for listed in self.prefix.list(&folder)? {
                if let Some(key) = self.shard_key(root, listed.key) {
                    found.push(Listed {
                        key,
                        size: listed.size,
                    });
                }
            }
        }
        Ok(found)
    }
}

impl Backend for SharedTables {
    fn location(&self) -> Location {
        self.own.location()
    }
    fn describe(&self, key: &str) -> PathBuf {
        let (backend, key) = self.at(key);
        backend.describe(&key)
    }
    fn prepare(&self) -> Result<()> {
        self.own.prepare()
    }
    fn lock(&self, run_id: &str) -> Result<Box<dyn Debug + Send + Sync>> {
        self.own.lock(run_id)
    }
    fn is_locked(&self) -> bool {
        self.own.is_locked()
    }
    fn get(&self, key: &str) -> Result<Option<Stored>> {
        let (backend, key) = self.at(key);
        backend.get(&key)
    }
    fn reader(&self, key: &str, range: Option<Range<u64>>) -> Result<Box<dyn Read + Send>> {
        let (backend, key) = self.at(key);
        backend.reader(&key, range)
    }
    fn size(&self, key: &str) -> Result<Option<u64>> {
        let (backend, key) = self.at(key);
        backend.size(&key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut found = Vec::new();
        for root in &self.roots {
            let folder = format!("{root}/");
            if prefix.starts_with(&folder) {
                return self.list_table(root, prefix);
            }
            if folder.starts_with(prefix) {
                found.extend(self.list_table(root, &folder)?);
            }
        }
        // The shard's own root holds no table files (a copy there is none
        // of the tables'): only its other keys.
        let own = self.own.list(prefix)?.into_iter().filter(|l| {
            !self.roots.iter().any(|r| {
                l.key
                    .strip_prefix(r.as_str())
                    .is_some_and(|k| k.starts_with('/'))
            })
        });
        found.extend(own);
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
    fn create(&self, key: &str) -> Result<Box<dyn NewObject>> {
        let (backend, key) = self.at(key);
        backend.create(&key)
    }
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let (backend, key) = self.at(key);
        backend.put_new(&key, bytes)
    }
    fn replace(&self, key: &str, bytes: &[u8], expect: Expect<'_>) -> Result<Option<String>> {
        let (backend, key) = self.at(key);
        backend.replace(&key, bytes, expect)
    }
    fn chain_append(&self, seq: u64, line: &[u8]) -> Result<()> {
        self.own.chain_append(seq, line)
    }
    fn chain_read(&self, from: Option<u64>) -> Result<Option<ChainBytes>> {
        self.own.chain_read(from)
    }
    fn chain_cut(&self, len: u64) -> Result<()> {
        self.own.chain_cut(len)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        match (self.route(from), self.route(to)) {
            (Route::Own(from), Route::Own(to)) => self.own.rename(&from, &to),
            // Across the two roots (a data file moved aside into the
            // shard's `recovered/`): the prefix holds both.
            _ => self
                .prefix
                .rename(&self.in_prefix(from), &self.in_prefix(to)),
        }
    }
    fn delete(&self, key: &str) -> Result<()> {
        let (backend, key) = self.at(key);
        backend.delete(&key)
    }
    fn handoff(&self, committed: u64) -> Result<Box<dyn HandoffLog>> {
        self.own.handoff(committed)
    }
    fn handoff_reader(&self, range: Range<u64>) -> Result<Box<dyn Read + Send>> {
        self.own.handoff_reader(range)
    }
    fn handoff_len(&self) -> Result<u64> {
        self.own.handoff_len()
    }
    fn handoff_install(&self, staged: &str) -> Result<()> {
        self.own.handoff_install(staged)
    }
    fn journal(&self, key: &str) -> Result<Box<dyn Journal>> {
        self.own.journal(key)
    }
    fn journal_pieces(&self, key: &str) -> Result<Vec<String>> {
        self.own.journal_pieces(key)
    }
    fn sweep_temporaries(&self, names: &[&str]) -> Result<Vec<String>> {
        self.own.sweep_temporaries(names)
    }
    fn table_part(&self) -> Option<&str> {
        Some(&self.part)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::local::LocalDir;

    fn shard(dir: &std::path::Path, k: u32) -> SharedTables {
        let own_dir = dir.join(format!("shard={k}"));
        let prefix: Storage = Arc::new(LocalDir::new(dir).staging_in(&own_dir));
        let own: Storage = Arc::new(LocalDir::new(&own_dir));
        SharedTables::new(
            own,
            prefix,
            &format!("shard={k}"),
            &format!("shard-{k}"),
            &["parquet/messages", "parquet/sends"],
        )
    }

    #[test]
    fn table_keys_go_to_the_prefix_and_the_rest_stays_in_the_shard() {
        let dir = tempfile::tempdir().unwrap();
        let s = shard(dir.path(), 2);
        assert_eq!(
            s.route("parquet/messages/date=2026-12-01/part-r-0001.parquet"),
            Route::Prefix("parquet/messages/shard-2/date=2026-12-01/part-r-0001.parquet".into())
        );
        assert_eq!(
            s.route("parquet/sends/_delta_log/00000000000000000000.json"),
            Route::Prefix("parquet/sends/_delta_log/00000000000000000000.json".into())
        );
        for own in [
            "state/checkpoint.json",
            "parquet/other/x",
            "parquet/messagesx/y",
        ] {
            assert_eq!(s.route(own), Route::Own(own.into()));
        }
        assert_eq!(s.in_prefix("recovered/x"), "shard=2/recovered/x");
    }

    /// A shard lists its own data files and the shared log, never another
    /// shard's files; a data file moves from the table into its own root.
    #[test]
    fn a_shard_sees_its_own_files_and_the_shared_log() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (shard(dir.path(), 0), shard(dir.path(), 1));
        for s in [&a, &b] {
            s.prepare().unwrap();
            s.put_new(
                "parquet/messages/date=2026-12-01/part-r-0001.parquet",
                b"PAR1",
            )
            .unwrap();
            s.put_new("state/x.json", b"{}").unwrap();
        }
        a.put_new(
            "parquet/messages/_delta_log/00000000000000000000.json",
            b"{}\n",
        )
        .unwrap();
        let keys = |s: &SharedTables, p: &str| -> Vec<String> {
            s.list(p).unwrap().into_iter().map(|l| l.key).collect()
        };
        let expected = [
            "parquet/messages/_delta_log/00000000000000000000.json",
            "parquet/messages/date=2026-12-01/part-r-0001.parquet",
        ];
        for s in [&a, &b] {
            assert_eq!(keys(s, "parquet/"), expected);
            assert_eq!(keys(s, "parquet/messages/"), expected);
            assert_eq!(keys(s, "parquet/messages/date=2026-12-01/"), expected[1..]);
            assert_eq!(keys(s, "").len(), 3);
        }
        assert!(
            dir.path()
                .join("parquet/messages/shard-1/date=2026-12-01")
                .is_dir()
        );
        // Staged in each shard's own root, never in the prefix's.
        assert!(!dir.path().join("state").exists());
        assert!(dir.path().join("shard=1/state/tmp").is_dir());
        a.rename(expected[1], "recovered/t/parquet/x.parquet")
            .unwrap();
        assert!(
            dir.path()
                .join("shard=0/recovered/t/parquet/x.parquet")
                .is_file()
        );
        assert_eq!(
            keys(&a, "parquet/messages/date=2026-12-01/"),
            Vec::<String>::new()
        );
        assert_eq!(keys(&b, "parquet/messages/date=2026-12-01/"), expected[1..]);
        assert_eq!(a.table_part(), Some("shard-0"));
    }
}
