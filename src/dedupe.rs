//! Dedupe by message ID, within a run and across runs, in constant memory.
//!
//! History pages come newest to oldest (SPEC §1), so what a conversation has
//! written is always one contiguous block of IDs, `[oldest, newest]`: the
//! initial backfill grows it downwards, and each incremental scan fetches
//! from the top down to the block's `newest` (the boundary) and then extends
//! it upwards. A message is new exactly when its ID falls outside every
//! block already written — which needs two IDs per block, not a set of every
//! ID ever seen, and survives overlapping, repeated and unordered pages.
//!
//! IDs are compared by numeric value (X IDs are snowflakes, increasing with
//! time); they are never rewritten or stored as numbers.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::cmp::Ordering;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Orders message IDs: numeric IDs by value, and (leniently) anything
/// non-numeric after them, lexicographically.
pub fn cmp_ids(a: &str, b: &str) -> Ordering {
    IdKey::of(a).cmp(&IdKey::of(b))
}

/// The oldest (smallest) of some IDs by [`cmp_ids`], the first one among
/// equals; each ID is read once.
pub fn oldest_id<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    ids.into_iter()
        .map(|id| (IdKey::of(id), id))
        .min_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, id)| id)
}

/// An ID read once for ordering as [`cmp_ids`] does: admitting a message
/// compares its ID up to four times, and a sync admits millions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKey<'a> {
    /// The digits without leading zeros: longer is larger, then bytewise.
    Numeric(&'a [u8]),
    /// Anything else, after every numeric ID.
    Other(&'a str),
}

impl<'a> IdKey<'a> {
    fn of(id: &'a str) -> IdKey<'a> {
        if !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()) {
            IdKey::Numeric(id.trim_start_matches('0').as_bytes())
        } else {
            IdKey::Other(id)
        }
    }
}

impl Ord for IdKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (IdKey::Numeric(a), IdKey::Numeric(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            (IdKey::Numeric(_), IdKey::Other(_)) => Ordering::Less,
            (IdKey::Other(_), IdKey::Numeric(_)) => Ordering::Greater,
            (IdKey::Other(a), IdKey::Other(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for IdKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// An inclusive block of written message IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The newest (largest) ID in the block.
    pub newest: String,
    /// The oldest (smallest) ID in the block.
    pub oldest: String,
}

impl Block {
    /// Widens `block` (or starts it) to hold `id`.
    pub fn widen(block: &mut Option<Block>, id: &str) {
        Block::widen_by(block, id, IdKey::of(id));
    }

    fn widen_by(block: &mut Option<Block>, id: &str, key: IdKey<'_>) {
        match block {
            None => {
                *block = Some(Block {
                    newest: id.to_owned(),
                    oldest: id.to_owned(),
                })
            }
            // Reuse the strings' buffers: in a backfill every message is a
            // new oldest, so this runs once per message.
            Some(b) => {
                if key > IdKey::of(&b.newest) {
                    b.newest.clear();
                    b.newest.push_str(id);
                }
                if key < IdKey::of(&b.oldest) {
                    b.oldest.clear();
                    b.oldest.push_str(id);
                }
            }
        }
    }
}

/// Which messages of one page are new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// `keep[i]`: whether the page's i-th message is new.
    pub keep: Vec<bool>,
    /// Messages dropped as already written (overlap, repeat, boundary).
    pub dropped: usize,
    /// Whether the page reached `floor` (an incremental scan is done).
    pub boundary: bool,
}

/// Admits the messages of one page into `block`, the block the current scan
/// is growing downwards. A message is new when it is below `block.oldest`
/// (as it stood before this page: later pages only go older) and above
/// `floor`, the newest ID of the block written before (incremental scans
/// only). The block is widened by the admitted IDs.
pub fn admit<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    floor: Option<&str>,
    block: &mut Option<Block>,
) -> Admission {
    let ids = ids.into_iter();
    let floor = floor.map(IdKey::of);
    let ceiling = block.as_ref().map(|b| b.oldest.clone());
    let ceiling = ceiling.as_deref().map(IdKey::of);
    let mut in_page = HashSet::with_capacity(ids.size_hint().0);
    let mut keep = Vec::with_capacity(ids.size_hint().0);
    let mut dropped = 0;
    let mut boundary = false;
    for id in ids {
        let key = IdKey::of(id);
        let above_floor = floor.is_none_or(|f| key > f);
        let below_ceiling = ceiling.is_none_or(|c| key < c);
        if !above_floor {
            boundary = true;
        }
        let new = above_floor && below_ceiling && in_page.insert(id);
        if new {
            Block::widen_by(block, id, key);
        } else {
            dropped += 1;
        }
        keep.push(new);
    }
    Admission {
        keep,
        dropped,
        boundary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> Vec<String> {
        list.iter().map(|n| format!("{n:019}")).collect()
    }

    fn run(pages: &[&[u64]], floor: Option<&str>, block: &mut Option<Block>) -> Vec<u64> {
        let mut kept = Vec::new();
        for page in pages {
            let page_ids = ids(page);
            let a = admit(page_ids.iter().map(String::as_str), floor, block);
            for (id, keep) in page.iter().zip(a.keep) {
                if keep {
                    kept.push(*id);
                }
            }
        }
        kept
    }

    #[test]
    fn numeric_ids_compare_by_value() {
        assert_eq!(cmp_ids("9", "10"), Ordering::Less);
        assert_eq!(
            cmp_ids("1900000000000000001", "999999999999999999"),
            Ordering::Greater
        );
        assert_eq!(cmp_ids("007", "7"), Ordering::Equal);
        assert_eq!(cmp_ids("12", "abc"), Ordering::Less);
    }

    #[test]
    fn overlapping_and_unordered_pages_keep_each_message_once() {
        let mut block = None;
        let kept = run(
            &[&[10, 8, 9, 7], &[7, 8, 6, 5], &[5, 4, 3, 3], &[1, 2]],
            None,
            &mut block,
        );
        let mut sorted = kept.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), kept.len(), "duplicates kept: {kept:?}");
        assert_eq!(sorted, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let block = block.unwrap();
        assert_eq!(
            (block.newest.as_str(), block.oldest.as_str()),
            ("0000000000000000010", "0000000000000000001")
        );
    }

    #[test]
    fn a_repeated_page_adds_nothing() {
        let mut block = None;
        let kept = run(&[&[10, 9], &[8, 7], &[8, 7], &[10, 9]], None, &mut block);
        assert_eq!(kept, vec![10, 9, 8, 7]);
    }

    #[test]
    fn incremental_scan_stops_at_the_boundary() {
        // Written before: [1, 10]. New messages 11..=14 arrived.
        let floor = "0000000000000000010";
        let mut scan = None;
        let page = ids(&[14, 12, 13, 11, 10, 9]);
        let a = admit(page.iter().map(String::as_str), Some(floor), &mut scan);
        assert!(a.boundary);
        assert_eq!(a.keep, vec![true, true, true, true, false, false]);
        assert_eq!(a.dropped, 2);
        assert_eq!(scan.unwrap().newest, "0000000000000000014");
    }

    #[test]
    fn incremental_scan_over_several_pages() {
        let floor = "0000000000000000010";
        let mut scan = None;
        let kept = run(
            &[&[16, 15, 14], &[14, 13, 12], &[11, 10, 9]],
            Some(floor),
            &mut scan,
        );
        assert_eq!(kept, vec![16, 15, 14, 13, 12, 11]);
    }

    #[test]
    fn duplicates_inside_one_page_are_dropped() {
        let mut block = None;
        let kept = run(&[&[5, 5, 4, 5]], None, &mut block);
        assert_eq!(kept, vec![5, 4]);
    }
}
