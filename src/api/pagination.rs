//! Paging guard for opaque cursors: decides, page by page, whether to go on
//! and with which cursor, and ends every scan with a recorded reason.
//!
//! The API promises little about cursors (SPEC §4.5): a server bug can hand
//! back a cursor seen before (a loop), `has_next_page: true` with an empty
//! cursor, or an endless run of empty pages. Each of those ends the scan
//! cleanly instead of paging forever (and spending credits forever).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

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
    /// Too many empty pages in a row.
    EmptyPages,
}

impl StopReason {
    /// Whether the reason is an anomaly of the API rather than a normal end.
    pub fn is_anomaly(self) -> bool {
        matches!(
            self,
            StopReason::RepeatedCursor | StopReason::EmptyCursor | StopReason::EmptyPages
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

/// Tracks one scan's cursors and empty pages.
#[derive(Debug)]
pub struct PageGuard {
    seen: HashSet<String>,
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
            empty_run: 0,
            max_empty_run: max_empty_run.max(1),
        }
    }

    /// Looks at a page's paging fields and decides.
    pub fn next(&mut self, messages: usize, has_next_page: bool, next_cursor: &str) -> Next {
        if !has_next_page {
            return Next::Stop(StopReason::End);
        }
        if next_cursor.is_empty() {
            return Next::Stop(StopReason::EmptyCursor);
        }
        if messages == 0 {
            self.empty_run += 1;
            if self.empty_run >= self.max_empty_run {
                return Next::Stop(StopReason::EmptyPages);
            }
        } else {
            self.empty_run = 0;
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

    #[test]
    fn last_page_ends() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(5, false, ""), Next::Stop(StopReason::End));
        // has_next_page false wins over a leftover cursor.
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(5, false, "abc"), Next::Stop(StopReason::End));
    }

    #[test]
    fn empty_cursor_with_more_pages_ends() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(5, true, ""), Next::Stop(StopReason::EmptyCursor));
    }

    #[test]
    fn repeated_cursor_ends_paging_even_when_not_the_previous_one() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(5, true, "a"), Next::Page("a".into()));
        assert_eq!(g.next(5, true, "b"), Next::Page("b".into()));
        assert_eq!(g.next(5, true, "c"), Next::Page("c".into()));
        assert_eq!(g.next(5, true, "a"), Next::Stop(StopReason::RepeatedCursor));
    }

    #[test]
    fn the_start_cursor_counts_as_seen() {
        let mut g = PageGuard::new(Some("start"), 3);
        assert_eq!(
            g.next(5, true, "start"),
            Next::Stop(StopReason::RepeatedCursor)
        );
    }

    #[test]
    fn a_run_of_empty_pages_ends_but_isolated_ones_do_not() {
        let mut g = PageGuard::new(None, 3);
        assert_eq!(g.next(0, true, "a"), Next::Page("a".into()));
        assert_eq!(g.next(0, true, "b"), Next::Page("b".into()));
        assert_eq!(g.next(4, true, "c"), Next::Page("c".into()));
        assert_eq!(g.next(0, true, "d"), Next::Page("d".into()));
        assert_eq!(g.next(0, true, "e"), Next::Page("e".into()));
        assert_eq!(g.next(0, true, "f"), Next::Stop(StopReason::EmptyPages));
    }
}
