//! The newest change sets in memory, for the node's watch hub: while the hub follows the
//! feed, each apply hands it the sets it just wrote, so live watches never wait for the
//! same rows to be read back from SQLite.
//!
//! Only a cache, never the record: the feed in `state.db` is. It fills only while
//! someone follows it (capturing copies every written value), keeps at most
//! [`RECENT_SETS`] sets and [`RECENT_BYTES`] bytes (the oldest go first), and an apply
//! made while not capturing, or a snapshot install, empties it. What it holds is always
//! one run of consecutive revisions ending at the applied revision, so a taker that finds
//! the run starting past the revision it needs next knows it missed some, and reads the
//! feed for them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use aspen_api::feed::ChangeSet;

/// Most change sets held for the taker: one page of the feed as the hub would read it, so
/// taking them never hands watchers a bigger burst than reading would.
pub const RECENT_SETS: usize = crate::watch::FEED_PAGE_SETS;

/// Most key and value bytes held for the taker (one page's, likewise).
pub const RECENT_BYTES: usize = crate::watch::FEED_PAGE_BYTES;

/// The cache (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct RecentFeed {
    capture: AtomicBool,
    /// Whether `held` may hold anything: lets the applies of a node nobody watches skip
    /// the lock.
    holding: AtomicBool,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    sets: VecDeque<ChangeSet>,
    bytes: usize,
}

impl RecentFeed {
    /// Whether applies should hand over what they write.
    pub(crate) fn capturing(&self) -> bool {
        self.capture.load(Ordering::Acquire)
    }

    /// Starts or stops capturing; stopping drops what is held.
    pub(crate) fn set_capture(&self, on: bool) {
        if self.capture.swap(on, Ordering::AcqRel) && !on {
            self.clear();
        }
    }

    /// Adds the sets of one apply (`None`: it did not capture, so the run is broken).
    /// Called before the new revision is announced.
    pub(crate) fn extend(&self, sets: Option<Vec<ChangeSet>>) {
        let Some(sets) = sets else {
            // Only the applies add sets, so with nothing held there is no run to break.
            if self.holding.load(Ordering::Acquire) {
                self.clear();
            }
            return;
        };
        if sets.is_empty() {
            return;
        }
        let mut held = self.held.lock().expect("recent feed lock");
        self.holding.store(true, Ordering::Release);
        for set in sets {
            held.bytes += set.payload_bytes();
            held.sets.push_back(set);
        }
        while held.sets.len() > RECENT_SETS || (held.bytes > RECENT_BYTES && held.sets.len() > 1) {
            let old = held.sets.pop_front().expect("not empty");
            held.bytes -= old.payload_bytes();
        }
    }

    /// Drops everything held.
    pub(crate) fn clear(&self) {
        let mut held = self.held.lock().expect("recent feed lock");
        held.sets.clear();
        held.bytes = 0;
        self.holding.store(false, Ordering::Release);
    }

    /// The held sets after revision `after`, emptying the cache; `None` when the run
    /// does not reach back to `after + 1` (some were never held, or were dropped), and
    /// the taker must read the feed.
    pub(crate) fn take_after(&self, after: u64) -> Option<Vec<ChangeSet>> {
        let mut held = self.held.lock().expect("recent feed lock");
        held.bytes = 0;
        let sets = std::mem::take(&mut held.sets);
        self.holding.store(false, Ordering::Release);
        drop(held);
        let first = sets.front()?.revision;
        if first > after + 1 {
            return None;
        }
        Some(sets.into_iter().filter(|s| s.revision > after).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_api::feed::{ChangeKind, KeyChange};

    fn set(revision: u64, value_bytes: usize) -> ChangeSet {
        ChangeSet {
            revision,
            time_ms: 0,
            changes: vec![KeyChange {
                key: String::new(),
                kind: ChangeKind::Put {
                    value: vec![0; value_bytes].into(),
                    create_revision: revision,
                    version: 1,
                },
            }],
        }
    }

    fn revisions(sets: &[ChangeSet]) -> Vec<u64> {
        sets.iter().map(|s| s.revision).collect()
    }

    #[test]
    fn a_taker_gets_the_run_after_its_revision_and_the_cache_empties() {
        let recent = RecentFeed::default();
        recent.extend(Some((1..=5).map(|r| set(r, 1)).collect()));
        assert_eq!(revisions(&recent.take_after(2).unwrap()), [3, 4, 5]);
        assert_eq!(recent.take_after(5), None, "taken once");
        recent.extend(Some(vec![set(6, 1)]));
        assert_eq!(revisions(&recent.take_after(5).unwrap()), [6]);
    }

    #[test]
    fn a_gap_before_the_run_sends_the_taker_to_the_feed() {
        let recent = RecentFeed::default();
        recent.extend(Some(vec![set(4, 1), set(5, 1)]));
        assert_eq!(recent.take_after(2), None, "revision 3 was never held");
        recent.extend(Some(vec![set(6, 1)]));
        recent.extend(None);
        recent.extend(Some(vec![set(8, 1)]));
        assert_eq!(
            recent.take_after(6),
            None,
            "an apply without capture broke the run"
        );
    }

    #[test]
    fn the_cache_holds_at_most_its_set_and_byte_bounds() {
        let recent = RecentFeed::default();
        let n = RECENT_SETS as u64;
        recent.extend(Some((1..=n).map(|r| set(r, 0)).collect()));
        assert_eq!(revisions(&recent.take_after(0).unwrap()).len(), RECENT_SETS);
        recent.extend(Some((1..=n + 1).map(|r| set(r, 0)).collect()));
        assert_eq!(
            recent.take_after(0),
            None,
            "one past the bound dropped revision 1"
        );

        let half = RECENT_BYTES / 2;
        recent.extend(Some(vec![set(1, half), set(2, half)]));
        assert_eq!(
            revisions(&recent.take_after(0).unwrap()),
            [1, 2],
            "exactly the bytes fit"
        );
        recent.extend(Some(vec![set(1, half), set(2, half), set(3, 1)]));
        assert_eq!(revisions(&recent.take_after(1).unwrap()), [2, 3]);
        recent.extend(Some(vec![set(1, RECENT_BYTES + 1)]));
        assert_eq!(
            revisions(&recent.take_after(0).unwrap()),
            [1],
            "a lone set over the byte bound is still held"
        );
    }

    #[test]
    fn stopping_capture_drops_what_is_held() {
        let recent = RecentFeed::default();
        recent.set_capture(true);
        assert!(recent.capturing());
        recent.extend(Some(vec![set(1, 1)]));
        recent.set_capture(false);
        assert!(!recent.capturing());
        assert_eq!(recent.take_after(0), None);
    }
}
