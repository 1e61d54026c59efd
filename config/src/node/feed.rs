//! The `[feed]` table of a node's config: how much of the change feed each node keeps.
//! The feed holds every committed change in revision order (federation exports it,
//! watches read it); older changes are compacted away, and a reader that asks for one gets
//! a `compacted` error naming the oldest revision still kept. Every field has a default.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::limits::{
    MAX_FEED_RETAIN_REVISIONS, MAX_FEED_RETAIN_SECONDS, MIN_FEED_RETAIN_REVISIONS,
    MIN_FEED_RETAIN_SECONDS,
};

/// Change feed retention. A change is compacted once it is more than `retain_revisions`
/// revisions old or more than `retain_seconds` old, whichever comes first, so the feed is
/// bounded both ways. All members of a cluster should use the same values: each node
/// compacts its own copy at the same revisions only if they agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Revisions kept: the latest this many.
    pub retain_revisions: u64,
    /// Seconds kept: changes proposed longer ago than this are compacted.
    pub retain_seconds: u64,
}

impl Default for FeedConfig {
    /// 100,000 revisions or one hour: a watcher or another region may be away for an hour
    /// at modest write rates and resume without a full resync.
    fn default() -> Self {
        FeedConfig {
            retain_revisions: 100_000,
            retain_seconds: 3_600,
        }
    }
}

impl FeedConfig {
    /// All rules; field names are relative to the `[feed]` table.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if !(MIN_FEED_RETAIN_REVISIONS..=MAX_FEED_RETAIN_REVISIONS).contains(&self.retain_revisions)
        {
            return Err(FieldError::new(
                "retain_revisions",
                format!(
                    "is {}; keep {MIN_FEED_RETAIN_REVISIONS} to {MAX_FEED_RETAIN_REVISIONS} \
                     revisions (default 100000)",
                    self.retain_revisions
                ),
            ));
        }
        if !(MIN_FEED_RETAIN_SECONDS..=MAX_FEED_RETAIN_SECONDS).contains(&self.retain_seconds) {
            return Err(FieldError::new(
                "retain_seconds",
                format!(
                    "is {}; keep {MIN_FEED_RETAIN_SECONDS} to {MAX_FEED_RETAIN_SECONDS} \
                     seconds (default 3600)",
                    self.retain_seconds
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bounds_of_both_settings_are_enforced() {
        let ok = |retain_revisions, retain_seconds| {
            FeedConfig {
                retain_revisions,
                retain_seconds,
            }
            .check()
            .map_err(|e| e.field)
        };
        assert_eq!(ok(100_000, 3_600), Ok(()));
        assert_eq!(
            ok(MIN_FEED_RETAIN_REVISIONS, MIN_FEED_RETAIN_SECONDS),
            Ok(())
        );
        assert_eq!(
            ok(MAX_FEED_RETAIN_REVISIONS, MAX_FEED_RETAIN_SECONDS),
            Ok(())
        );
        assert_eq!(
            ok(MIN_FEED_RETAIN_REVISIONS - 1, 3_600),
            Err("retain_revisions".to_string())
        );
        assert_eq!(
            ok(MAX_FEED_RETAIN_REVISIONS + 1, 3_600),
            Err("retain_revisions".to_string())
        );
        assert_eq!(
            ok(100_000, MIN_FEED_RETAIN_SECONDS - 1),
            Err("retain_seconds".to_string())
        );
        assert_eq!(
            ok(100_000, MAX_FEED_RETAIN_SECONDS + 1),
            Err("retain_seconds".to_string())
        );
    }
}
