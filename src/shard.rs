//! Shards: one job split across machines (`sync --shard K/N`).
//!
//! Each conversation belongs to exactly one shard, chosen by a stable hash
//! of (account, user) — the first 8 bytes of SHA-256 over
//! `<account>/<user>` (a numeric ID as given, a username as `@name`, both
//! lowercased), modulo N — so N copies of one
//! job, whatever order they list the conversations in, split the work with
//! no overlap. Shard K of a prefix is an output root of its own,
//! `<prefix>/shard=K/`, with its own state, lock and audit chain. The
//! prefix's `shards.json` records N, so that a run with another N (or none)
//! is refused instead of splitting the same conversations differently.
//!
//! **One Delta table per prefix.** All shards append to the prefix's tables,
//! `<prefix>/parquet/messages` and `<prefix>/parquet/sends`, so readers
//! need no union. Shard K's data files live in its own folder of each table,
//! `<prefix>/parquet/messages/shard-K/date=D/part-<run>-<n>.parquet` (an
//! `add.path` of `shard-K/date=D/...`; the partition column stays `date`),
//! and its commits name it (`commitInfo.part`). Its root is opened through
//! [`SharedTables`], which maps its keys `parquet/<table>/...` to that
//! folder (the log to the shared `_delta_log/`): the shard's recovery,
//! compaction and `verify` see only its own files, as in an unsharded root;
//! its repair reverts only its own commits, and `verify` accounts for the
//! log shard by shard. Commits race through the create-only put and retry
//! at the next free version. The folder is `shard-K`, not `shard=K`: Polars
//! reads a `key=value` folder of a Delta file's path as a Hive column the
//! table does not have, and refuses it. Glob readers read
//! `<prefix>/parquet/messages/shard-*/date=*/*.parquet`.
//!
//! A prefix registered before the shared tables (a `shards.json` without
//! `"tables": "prefix"`) keeps a table per shard, in each shard's root
//! (`<prefix>/shard=K/parquet/messages`): its files are there, listed by
//! its manifests, and moving them would rewrite sealed history.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{Account, UserRef};
use crate::delta::TableKind;
use crate::error::{Error, Result};
use crate::storage::shared_tables::SharedTables;
use crate::storage::{Backend, Expect, Location, Storage};

/// The prefix's record of how it is split.
pub const REGISTRY: &str = "shards.json";

/// One shard of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: u32,
    /// How many shards the job is split into.
    pub count: u32,
}

/// How a prefix is split, as its `shards.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// How many shards.
    pub shards: u32,
    /// Whether the shards share one Delta table per prefix (every prefix
    /// registered since the shared tables); `false`: a table per shard.
    pub one_table: bool,
}

/// The content of `shards.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Registry {
    shards: u32,
    /// [`ONE_TABLE`] for a prefix whose shards share its tables; missing in
    /// a prefix registered before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tables: Option<String>,
}

/// The registry's `tables` of a prefix with one table per prefix.
const ONE_TABLE: &str = "prefix";

impl Shard {
    /// Reads `K/N` (0 ≤ K < N ≤ 4096).
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || Error::invalid("--shard", "expected K/N with 0 <= K < N <= 4096, e.g. 0/4");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || count > 4096 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard a conversation belongs to, of `count`.
    pub fn of(account: &Account, user: &UserRef, count: u32) -> u32 {
        // Handles and usernames are case-insensitive: `@Alice` and
        // `@alice` are one conversation, in one shard.
        let user = match user {
            UserRef::Id(id) => id.clone(),
            UserRef::Username(name) => format!("@{}", name.to_lowercase()),
        };
        let key = format!("{}/{user}", account.as_str().to_lowercase());
        let digest = Sha256::digest(key.as_bytes());
        let first = digest.first_chunk::<8>().copied().unwrap_or_default();
        (u64::from_be_bytes(first) % u64::from(count)) as u32
    }

    /// Whether a conversation belongs to this shard.
    pub fn contains(&self, account: &Account, user: &UserRef) -> bool {
        Shard::of(account, user, self.count) == self.index
    }

    /// This shard's folder under the prefix.
    pub fn dir(&self) -> String {
        format!("shard={}", self.index)
    }

    /// This shard's folder under each shared table's root.
    pub fn table_part(&self) -> String {
        format!("shard-{}", self.index)
    }

    /// This shard's output root in `prefix`, split as `split` says: with
    /// one table per prefix, its tables' keys mapped into the prefix's.
    pub fn storage(&self, prefix: &Location, split: Split) -> Result<Storage> {
        let own_location = prefix.join(&self.dir());
        let own = own_location.open()?;
        if !split.one_table {
            return Ok(own);
        }
        let roots = TableKind::ALL.map(TableKind::root);
        Ok(std::sync::Arc::new(SharedTables::new(
            own,
            prefix.open_staged_in(&own_location)?,
            &self.dir(),
            &self.table_part(),
            &roots,
        )))
    }

    /// Records (or checks) in the prefix `root` that it is split into
    /// `count` shards, and returns the split. A prefix that holds unsharded
    /// output, or was split into another number of shards, is refused (bad
    /// input, exit 2). A new prefix gets one table per prefix.
    pub fn register(&self, root: &dyn Backend) -> Result<Split> {
        let refuse = |why: String| Error::invalid("--shard", format!("{}: {why}", root.location()));
        if let Some(split) = split(root)? {
            let n = split.shards;
            return if n == self.count {
                Ok(split)
            } else {
                Err(refuse(format!(
                    "this prefix is split into {n} shards; run every shard with --shard K/{n} (a new split needs a new prefix)"
                )))
            };
        }
        if root.size(crate::checkpoint::KEY)?.is_some() || root.handoff_len()? > 0 {
            return Err(refuse(
                "this prefix holds unsharded output; use a new prefix for a sharded job".into(),
            ));
        }
        let registry = Registry {
            shards: self.count,
            tables: Some(ONE_TABLE.to_owned()),
        };
        let bytes = serde_json::to_vec(&registry).map_err(|e| Error::io(REGISTRY, e.into()))?;
        match root.replace(REGISTRY, &bytes, Expect::Missing) {
            Ok(_) => Ok(Split {
                shards: self.count,
                one_table: true,
            }),
            // Another shard of the same job registered first: it must have
            // registered the same split.
            Err(Error::Conflict { .. }) => self.register(root),
            Err(e) => Err(e),
        }
    }
}

/// How many shards the prefix `root` is split into; `None` when it is not.
pub fn registered(root: &dyn Backend) -> Result<Option<u32>> {
    Ok(split(root)?.map(|s| s.shards))
}

/// How the prefix `root` is split; `None` when it is not.
pub fn split(root: &dyn Backend) -> Result<Option<Split>> {
    let Some(stored) = root.get(REGISTRY)? else {
        return Ok(None);
    };
    let registry: Registry = serde_json::from_slice(&stored.bytes).map_err(|_| Error::Corrupt {
        path: root.describe(REGISTRY),
        reason: "not a shard registry: restore it from backup".into(),
    })?;
    Ok(Some(Split {
        shards: registry.shards,
        one_table: registry.tables.as_deref() == Some(ONE_TABLE),
    }))
}

/// Opens the output root `location`: a shard's folder of a prefix with one
/// table per prefix (`<prefix>/shard=K`) with its tables mapped into the
/// prefix's, any other as it is. Only a folder named `shard=K` costs a
/// look at its parent's registry.
pub fn open(location: &Location) -> Result<Storage> {
    let Some((prefix, name)) = location.split_last() else {
        return location.open();
    };
    let index = name
        .strip_prefix("shard=")
        .and_then(|k| k.parse::<u32>().ok())
        .filter(|k| format!("shard={k}") == name);
    let Some(index) = index else {
        return location.open();
    };
    match split(prefix.open()?.as_ref())? {
        Some(split) if split.one_table && index < split.shards => Shard {
            index,
            count: split.shards,
        }
        .storage(&prefix, split),
        _ => location.open(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_of_n_is_parsed_and_checked() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["4/4", "1/0", "-1/3", "x/2", "3", "0/5000"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_conversation_is_in_exactly_one_shard_and_the_split_is_stable() {
        let account = Account::parse("Acme").unwrap();
        let users: Vec<UserRef> = (0..400)
            .map(|i| UserRef::Id(format!("{}", 1_000_000 + i)))
            .collect();
        let mut per_shard = [0u32; 4];
        for user in &users {
            let owners: Vec<u32> = (0..4)
                .filter(|k| {
                    Shard {
                        index: *k,
                        count: 4,
                    }
                    .contains(&account, user)
                })
                .collect();
            assert_eq!(owners.len(), 1);
            per_shard[owners[0] as usize] += 1;
        }
        // Roughly even, and the same on every machine and version: the
        // assignment is part of the output layout.
        assert!(
            per_shard.iter().all(|n| (70..=130).contains(n)),
            "{per_shard:?}"
        );
        assert_eq!(
            Shard::of(&account, &UserRef::Username("Alice".into()), 4),
            Shard::of(&account, &UserRef::Username("alice".into()), 4)
        );
        assert_eq!(
            Shard::of(&account, &UserRef::Id("1000001".into()), 4),
            Shard::of(
                &Account::parse("acme").unwrap(),
                &UserRef::Id("1000001".into()),
                4
            )
        );
        let pinned: Vec<u32> = (0..8).map(|i| Shard::of(&account, &users[i], 4)).collect();
        assert_eq!(pinned, PINNED);
    }

    /// A folder named `shard=K` opens with the prefix's tables only when
    /// the prefix is registered with one table per prefix and has shard K.
    #[test]
    fn a_shard_folder_shares_the_prefix_tables_only_when_registered_so() {
        let dir = tempfile::tempdir().unwrap();
        let part = |name: &str| {
            let location = Location::Dir(dir.path().join(name));
            open(&location).unwrap().table_part().map(str::to_owned)
        };
        assert_eq!(part("shard=1"), None, "no registry");
        std::fs::write(dir.path().join(REGISTRY), r#"{"shards":4}"#).unwrap();
        assert_eq!(part("shard=1"), None, "a table per shard");
        std::fs::write(
            dir.path().join(REGISTRY),
            r#"{"shards":4,"tables":"prefix"}"#,
        )
        .unwrap();
        assert_eq!(part("shard=1").as_deref(), Some("shard-1"));
        for other in ["shard=01", "shard=4", "shard-1", "out"] {
            assert_eq!(part(other), None, "{other}");
        }
        let url = Location::parse("s3://bucket/dm/shard=2/");
        let (prefix, name) = url.split_last().unwrap();
        assert_eq!(
            (prefix.to_string().as_str(), name.as_str()),
            ("s3://bucket/dm", "shard=2")
        );
    }

    #[test]
    fn a_new_prefix_is_registered_with_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::storage::local::LocalDir::new(dir.path());
        let shard = Shard::parse("1/4").unwrap();
        let split = shard.register(&root).unwrap();
        assert_eq!(
            split,
            Split {
                shards: 4,
                one_table: true
            }
        );
        assert_eq!(self::split(&root).unwrap(), Some(split));
        assert!(Shard::parse("1/3").unwrap().register(&root).is_err());
    }

    /// The shards of the first eight test users of 4, as first computed:
    /// a change here would move conversations between shards of existing
    /// prefixes.
    const PINNED: [u32; 8] = [2, 1, 1, 2, 2, 3, 2, 0];
}
