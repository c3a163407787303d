//! Shards: one job split across machines (`sync --shard K/N`).
//!
//! Each conversation belongs to exactly one shard, chosen by a stable hash
//! of (account, user) — the first 8 bytes of SHA-256 over
//! `<account>/<user>` (a numeric ID as given, a username as `@name`, both
//! lowercased), modulo N — so N copies of one
//! job, whatever order they list the conversations in, split the work with
//! no overlap. Shard K of a prefix is an output root of its own,
//! `<prefix>/shard=K/`, with its own state and audit chain; all shards form
//! one dataset (`<prefix>/*/parquet/messages/date=*/*.parquet`), and each
//! shard's two Delta tables are its own (`<prefix>/shard=K/parquet/messages`):
//! a table per prefix would put every shard's files under one root that
//! no shard's repair, compaction or `verify` could account for alone. The prefix's
//! `shards.json` records N, so that a run with another N (or none) is
//! refused instead of splitting the same conversations differently.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{Account, UserRef};
use crate::error::{Error, Result};
use crate::storage::{Backend, Expect};

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

/// The content of `shards.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Registry {
    shards: u32,
}

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

    /// Records (or checks) in the prefix `root` that it is split into
    /// `count` shards. A prefix that holds unsharded output, or was split
    /// into another number of shards, is refused (bad input, exit 2).
    pub fn register(&self, root: &dyn Backend) -> Result<()> {
        let refuse = |why: String| Error::invalid("--shard", format!("{}: {why}", root.location()));
        if let Some(n) = registered(root)? {
            return if n == self.count {
                Ok(())
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
        let bytes = serde_json::to_vec(&Registry { shards: self.count })
            .map_err(|e| Error::io(REGISTRY, e.into()))?;
        match root.replace(REGISTRY, &bytes, Expect::Missing) {
            Ok(_) => Ok(()),
            // Another shard of the same job registered first: it must have
            // registered the same split.
            Err(Error::Conflict { .. }) => self.register(root),
            Err(e) => Err(e),
        }
    }
}

/// How many shards the prefix `root` is split into; `None` when it is not.
pub fn registered(root: &dyn Backend) -> Result<Option<u32>> {
    let Some(stored) = root.get(REGISTRY)? else {
        return Ok(None);
    };
    let registry: Registry = serde_json::from_slice(&stored.bytes).map_err(|_| Error::Corrupt {
        path: root.describe(REGISTRY),
        reason: "not a shard registry: restore it from backup".into(),
    })?;
    Ok(Some(registry.shards))
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

    /// The shards of the first eight test users of 4, as first computed:
    /// a change here would move conversations between shards of existing
    /// prefixes.
    const PINNED: [u32; 8] = [2, 1, 1, 2, 2, 3, 2, 0];
}
