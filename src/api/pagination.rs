//! Paging guard for opaque cursors: decides, page by page, whether to go on
//! and with which cursor, and ends every scan with a recorded reason.
//!
//! The API promises little about cursors (SPEC §4.5): a server bug can hand
//! back a cursor seen before (a loop), `has_next_page: true` with an empty
//! cursor, or an endless run of empty pages. Each of those ends the scan
//! cleanly instead of paging forever (and spending credits forever).
//!
//! Pages go newest to oldest, so every page that moves a scan forward brings
//! a message older than any it has seen. A page that does not — empty, or
//! only repeated or newer messages, as a broken or hostile server can send
//! with a fresh cursor every time — counts as an empty page, and a run of
//! those ends the scan (SPEC §5, hostile answers).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::dedupe::{cmp_ids, oldest_id};

/// Why a scan of a conversation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `has_next_page: false`: the oldest message was reached.
    End,
    /// An incremental scan reached messages already written.
    Boundary,
    /// The API returned a cursor already used in this scan.
    RepeatedCursor,
    /// `has_next_page: true` with an empty `next_cursor`.
    EmptyCursor,
    /// Too many pages in a row that brought no message older than the scan
    /// had seen (empty pages, or only repeated or newer messages).
    EmptyPages,
    /// A `next_cursor` longer than any honest cursor ([`MAX_CURSOR_BYTES`]).
    OversizedCursor,
}

/// The longest cursor followed: an opaque cursor is a few dozen bytes; a
/// longer one would be copied into every later request, the checkpoint and
/// the page log.
pub const MAX_CURSOR_BYTES: usize = 4096;

impl StopReason {
    /// Whether the reason is an anomaly of the API rather than a normal end.
    pub fn is_anomaly(self) -> bool {
        matches!(
            self,
            StopReason::RepeatedCursor
                | StopReason::EmptyCursor
                | StopReason::EmptyPages
                | StopReason::OversizedCursor
        )
    }
}

/// What to do after a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Fetch the next page with this cursor.
    Page(String),
    /// Stop.
    Stop(StopReason),
}

/// Tracks one scan's cursors, its oldest message and its pages that
/// brought nothing older.
#[derive(Debug)]
pub struct PageGuard {
    seen: HashSet<String>,
    oldest: Option<String>,
    empty_run: u32,
    max_empty_run: u32,
}

impl PageGuard {
    /// A guard for a scan that starts at `start` (`None`: the newest page).
    /// `max_empty_run` consecutive empty pages end the scan.
    pub fn new(start: Option<&str>, max_empty_run: u32) -> PageGuard {
        let mut seen = HashSet::new();
        if let Some(c) = start.filter(|c| !c.is_empty()) {
            seen.insert(c.to_owned());
        }
        PageGuard {
            seen,
            oldest: None,
            empty_run: 0,
            max_empty_run: max_empty_run.max(1),
        }
    }

    /// Looks at a page's paging fields and decides. `ids` are the message
    /// IDs the page returned, in any order.
    pub fn next<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str>,
        has_next_page: bool,
        next_cursor: &str,
    ) -> Next {
        let oldest_on_page = oldest_id(ids);
        let older = match (oldest_on_page, &self.oldest) {
            (None, _) => false,
            (Some(id), None) => {
                self.oldest = Some(id.to_owned());
                true
            }
            (Some(id), Some(oldest)) if cmp_ids(id, oldest).is_lt() => {
                self.oldest = Some(id.to_owned());
                true
            }
            (Some(_), Some(_)) => false,
        };
        if !has_next_page {
            return Next::Stop(StopReason::End);
        }
        if next_cursor.is_empty() {
            return Next::Stop(StopReason::EmptyCursor);
        }
        if next_cursor.len() > MAX_CURSOR_BYTES {
            return Next::Stop(StopReason::OversizedCursor);
        }
        if older {
            self.empty_run = 0;
        } else {
            self.empty_run += 1;
            if self.empty_run >= self.max_empty_run {
                return Next::Stop(StopReason::EmptyPages);
            }
        }
        if !self.seen.insert(next_cursor.to_owned()) {
            return Next::Stop(StopReason::RepeatedCursor);
        }
        Next::Page(next_cursor.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` message IDs, each older than every ID of the pages before it
    /// (one page per call, IDs counting down from a large number).
    fn page(n: usize) -> Vec<String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1_900_000_000_000_000_000);
        (0..n)
            .map(|_| NEXT.fetch_sub(1, Ordering::Relaxed).to_string())
            .collect()
    }

    fn ids(page: &[String]) -> impl Iterator<Item = &str> {
        page.iter().map(String::as_str)
    }

    #[test]
    fn last_page_ends() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(
            g.next(ids(&page(5)), false, ""),
            Next::Stop(StopReason::End)
        );
        // has_next_page false wins over a leftover cursor.
        let mut g = PageGuard::new(None, 3);
        assert_eq!(
            g.next(ids(&page(5)), false, "abc"),
            Next::Stop(StopReason::End)
        );
    }

    #[test]
    fn an_oversized_cursor_ends_paging() {
        let mut g = PageGuard::new(None, 3);
        let long = "c".repeat(MAX_CURSOR_BYTES + 1);
        assert_eq!(
            g.next(ids(&page(5)), true, &long),
            Next::Stop(StopReason::OversizedCursor)
        );
    }

    #[test]
    fn empty_cursor_with_more_pages_ends() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(
            g.next(ids(&page(5)), true, ""),
            Next::Stop(StopReason::EmptyCursor)
        );
    }

    #[test]
    fn repeated_cursor_ends_paging_even_when_not_the_previous_one() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(ids(&page(5)), true, "a"), Next::Page("a".into()));
        assert_eq!(g.next(ids(&page(5)), true, "b"), Next::Page("b".into()));
        assert_eq!(g.next(ids(&page(5)), true, "c"), Next::Page("c".into()));
        assert_eq!(
            g.next(ids(&page(5)), true, "a"),
            Next::Stop(StopReason::RepeatedCursor)
        );
    }

    #[test]
    fn the_start_cursor_counts_as_seen() {
        let mut g = PageGuard::new(Some("start"), 3);
        assert_eq!(
            g.next(ids(&page(5)), true, "start"),
            Next::Stop(StopReason::RepeatedCursor)
        );
    }

    #[test]
    fn a_run_of_empty_pages_ends_but_isolated_ones_do_not() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(ids(&page(0)), true, "a"), Next::Page("a".into()));
        assert_eq!(g.next(ids(&page(0)), true, "b"), Next::Page("b".into()));
        assert_eq!(g.next(ids(&page(4)), true, "c"), Next::Page("c".into()));
        assert_eq!(g.next(ids(&page(0)), true, "d"), Next::Page("d".into()));
        assert_eq!(g.next(ids(&page(0)), true, "e"), Next::Page("e".into()));
        assert_eq!(
            g.next(ids(&page(0)), true, "f"),
            Next::Stop(StopReason::EmptyPages)
        );
    }

    #[test]
    fn pages_that_bring_nothing_older_count_as_empty() {
        let mut g = PageGuard::new(None, 3);
        let first = page(5);
        assert_eq!(g.next(ids(&first), true, "a"), Next::Page("a".into()));
        // A fresh cursor every time, but the same messages again, then
        // only newer ones: no progress towards the oldest message.
        assert_eq!(g.next(ids(&first), true, "b"), Next::Page("b".into()));
        let newer: Vec<String> = (0..5).map(|i| format!("2{i:018}")).collect();
        assert_eq!(g.next(ids(&newer), true, "c"), Next::Page("c".into()));
        assert_eq!(
            g.next(ids(&newer), true, "d"),
            Next::Stop(StopReason::EmptyPages)
        );
        // One older message among repeated ones is progress.
        let mut g = PageGuard::new(None, 2);
        let mut mixed = first.clone();
        assert_eq!(g.next(ids(&first), true, "a"), Next::Page("a".into()));
        mixed.extend(page(1));
        assert_eq!(g.next(ids(&mixed), true, "b"), Next::Page("b".into()));
        assert_eq!(g.next(ids(&mixed), true, "c"), Next::Page("c".into()));
        assert_eq!(
            g.next(ids(&mixed), true, "d"),
            Next::Stop(StopReason::EmptyPages)
        );
    }
}
