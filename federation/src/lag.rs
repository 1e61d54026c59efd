//! How far behind a replica is, in revisions and in time, computed from what the importer
//! knows: the segments it has seen (each says when its first revision was proposed) and the
//! owner's heartbeats (each confirmed with a quorum: "at this time my revision was at most
//! this").
//!
//! The time lag is an upper bound on staleness: how long ago the owner may have made a
//! change the replica lacks. If the replica knows the segment holding its next revision,
//! the owner stayed at the replica's revision until that revision was proposed, so the
//! bound is the time since then. Otherwise the newest heartbeat at or below the replica's
//! revision says the owner had nothing newer at its time. Both times are the owner's
//! clock read by the importer's: clock skew between the hosts adds to (or hides) lag.

/// What an importer knows about its source, for lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagInputs {
    /// The replica's revision.
    pub revision: u64,
    /// The highest owner revision known (heartbeats and segments seen).
    pub owner_head: u64,
    /// When the owner proposed the replica's next revision, if a segment holding it is
    /// known.
    pub next_change_ms: Option<u64>,
    /// The time of the newest heartbeat whose revision is at or below the replica's.
    pub confirmed_ms: Option<u64>,
}

/// A replica's lag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Owner revisions the replica lacks, as far as it knows.
    pub revisions: u64,
    /// Upper bound on how stale the replica may be, in ms; `None` when nothing confirms
    /// any freshness yet (no heartbeat seen at or below the replica's revision).
    pub ms: Option<u64>,
}

impl LagInputs {
    /// The lag at `now_ms`.
    pub fn lag(&self, now_ms: u64) -> Lag {
        let since = self.next_change_ms.or(self.confirmed_ms);
        Lag {
            revisions: self.owner_head.saturating_sub(self.revision),
            ms: since.map(|t| now_ms.saturating_sub(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_next_change_bounds_staleness_from_when_it_was_proposed() {
        let inputs = LagInputs {
            revision: 10,
            owner_head: 15,
            next_change_ms: Some(1_000),
            confirmed_ms: Some(500),
        };
        assert_eq!(
            inputs.lag(1_300),
            Lag {
                revisions: 5,
                ms: Some(300)
            }
        );
    }

    #[test]
    fn a_caught_up_replica_is_as_fresh_as_its_newest_heartbeat() {
        let inputs = LagInputs {
            revision: 15,
            owner_head: 15,
            next_change_ms: None,
            confirmed_ms: Some(2_000),
        };
        assert_eq!(
            inputs.lag(2_250),
            Lag {
                revisions: 0,
                ms: Some(250)
            }
        );
    }

    #[test]
    fn without_any_confirmation_the_time_lag_is_unknown() {
        let inputs = LagInputs {
            revision: 0,
            owner_head: 3,
            ..LagInputs::default()
        };
        assert_eq!(
            inputs.lag(9),
            Lag {
                revisions: 3,
                ms: None
            }
        );
    }
}
