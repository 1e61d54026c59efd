//! Reads of a cluster's change feed over `aspen/kv/2`: how a router follows a cluster for
//! its watchers. A read names the keys it wants and the revision it has; the node answers
//! with the change sets after it (only the matching keys), waiting a while for one when
//! there is none yet, so a router long-polls instead of spinning.

use serde::{Deserialize, Serialize};

use crate::feed::ChangeSet;

/// Which keys a feed read or a watch wants: one key, or every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFilter {
    /// The key, or the prefix (`""` with `prefix` is every key).
    pub key: String,
    /// Whether `key` is a prefix.
    pub prefix: bool,
}

impl KeyFilter {
    /// Whether `key` is wanted.
    pub fn matches(&self, key: &str) -> bool {
        if self.prefix {
            key.starts_with(&self.key)
        } else {
            key == self.key
        }
    }

    /// `set` with only the wanted keys; `None` when it has none of them.
    pub fn apply(&self, set: &ChangeSet) -> Option<ChangeSet> {
        let changes: Vec<_> = set
            .changes
            .iter()
            .filter(|c| self.matches(&c.key))
            .cloned()
            .collect();
        if changes.is_empty() {
            return None;
        }
        Some(ChangeSet {
            revision: set.revision,
            time_ms: set.time_ms,
            changes,
        })
    }
}

/// `KvRequest::FeedRead`: the change sets after `after` that touch keys `filter` wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedReadRequest {
    /// The keys wanted.
    pub filter: KeyFilter,
    /// Deliver revisions after this one; `None` asks only for the current revision (an
    /// empty page `through` it), to start a watch "from now".
    pub after: Option<u64>,
    /// When nothing after `after` is there yet, wait this long for it (at most
    /// [`crate::limits::MAX_FEED_WAIT_MS`]) before answering with an empty page.
    pub wait_ms: u64,
}

/// The answer to a [`FeedReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedReadResponse {
    /// The matching change sets (maybe none), and the revision the node read through:
    /// every revision up to `through` has been looked at, so the next read is after it.
    Page {
        /// Matching sets, in revision order, filtered to the wanted keys.
        sets: Vec<ChangeSet>,
        /// Read through this revision.
        through: u64,
    },
    /// `after + 1` has been compacted away; `oldest` is the oldest revision kept.
    Compacted {
        /// The oldest revision the feed still holds.
        oldest: u64,
    },
}
