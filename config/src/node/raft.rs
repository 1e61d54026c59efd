//! The `[raft]` table of a node's config: heartbeat and election timing, when to snapshot,
//! and how many entries one replication message carries. Every field has a default, so the
//! table may be left out or list only what it changes.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::limits::{
    MAX_ELECTION_TIMEOUT_MS, MAX_PAYLOAD_ENTRIES_LIMIT, MAX_SNAPSHOT_LOGS,
    MIN_HEARTBEAT_INTERVAL_MS,
};

/// Raft settings of one node. All members of a cluster should use the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats to followers, in ms. Lower detects a dead
    /// leader sooner and costs more traffic.
    pub heartbeat_interval_ms: u64,
    /// Shortest time a follower waits without hearing from a leader before it starts an
    /// election, in ms. Must exceed two heartbeat intervals.
    pub election_timeout_min_ms: u64,
    /// Longest such wait, in ms. Each follower picks a random timeout between min and max
    /// so that they do not all start elections at once.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot of the state machine after this many entries have been applied
    /// since the last one, so the log can be trimmed and new members catch up fast; 1 to
    /// [`MAX_SNAPSHOT_LOGS`].
    pub snapshot_every_logs: u64,
    /// Entries kept in the log after a snapshot, so a follower only slightly behind can
    /// catch up from the log instead of receiving the whole snapshot; at most
    /// [`MAX_SNAPSHOT_LOGS`].
    pub logs_kept_after_snapshot: u64,
    /// Most entries one AppendEntries RPC carries; at most
    /// [`MAX_PAYLOAD_ENTRIES_LIMIT`].
    pub max_payload_entries: u64,
}

impl Default for RaftConfig {
    /// Timing for members on one network (sub-millisecond to a few ms round trips).
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            max_payload_entries: 512,
        }
    }
}

impl RaftConfig {
    /// All rules; field names are relative to the `[raft]` table.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if self.heartbeat_interval_ms < MIN_HEARTBEAT_INTERVAL_MS {
            return Err(FieldError::new(
                "heartbeat_interval_ms",
                format!(
                    "is {}, below the minimum of {MIN_HEARTBEAT_INTERVAL_MS} ms; timer jitter \
                     would make followers miss heartbeats. Use {MIN_HEARTBEAT_INTERVAL_MS} or more",
                    self.heartbeat_interval_ms
                ),
            ));
        }
        let two_heartbeats_ms = self.heartbeat_interval_ms.saturating_mul(2);
        if self.election_timeout_min_ms <= two_heartbeats_ms {
            return Err(FieldError::new(
                "election_timeout_min_ms",
                format!(
                    "is {}, but must be greater than 2 x heartbeat_interval_ms ({two_heartbeats_ms}): \
                     a follower must be able to miss a heartbeat and still see the next before \
                     giving up on the leader. Raise it or lower heartbeat_interval_ms",
                    self.election_timeout_min_ms
                ),
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(FieldError::new(
                "election_timeout_max_ms",
                format!(
                    "is {}, but must be greater than election_timeout_min_ms ({}): the random \
                     spread between them keeps followers from starting elections together",
                    self.election_timeout_max_ms, self.election_timeout_min_ms
                ),
            ));
        }
        if self.election_timeout_max_ms > MAX_ELECTION_TIMEOUT_MS {
            return Err(FieldError::new(
                "election_timeout_max_ms",
                format!(
                    "is {}, above the maximum of {MAX_ELECTION_TIMEOUT_MS} ms: a cluster whose \
                     leader died refuses writes for up to this long. Use {MAX_ELECTION_TIMEOUT_MS} \
                     or less (default 800)",
                    self.election_timeout_max_ms
                ),
            ));
        }
        if !(1..=MAX_SNAPSHOT_LOGS).contains(&self.snapshot_every_logs) {
            return Err(FieldError::new(
                "snapshot_every_logs",
                format!(
                    "is {}; set how many applied entries trigger a snapshot, 1 to \
                     {MAX_SNAPSHOT_LOGS} (default 10000): past that the log is never trimmed",
                    self.snapshot_every_logs
                ),
            ));
        }
        if self.logs_kept_after_snapshot > MAX_SNAPSHOT_LOGS {
            return Err(FieldError::new(
                "logs_kept_after_snapshot",
                format!(
                    "is {}, above the maximum of {MAX_SNAPSHOT_LOGS}: past that the log is \
                     never trimmed. Use {MAX_SNAPSHOT_LOGS} or less (default 1000)",
                    self.logs_kept_after_snapshot
                ),
            ));
        }
        if !(1..=MAX_PAYLOAD_ENTRIES_LIMIT).contains(&self.max_payload_entries) {
            return Err(FieldError::new(
                "max_payload_entries",
                format!(
                    "is {}; it must be 1 to {MAX_PAYLOAD_ENTRIES_LIMIT} so that one message \
                     neither stalls replication nor delays heartbeats (default 512)",
                    self.max_payload_entries
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &RaftConfig) -> String {
        config
            .check()
            .expect_err("expected a validation error")
            .field
    }

    #[test]
    fn defaults_are_valid() {
        RaftConfig::default().check().unwrap();
    }

    #[test]
    fn heartbeat_of_ten_ms_accepted_and_nine_refused() {
        let mut config = RaftConfig {
            heartbeat_interval_ms: MIN_HEARTBEAT_INTERVAL_MS,
            ..Default::default()
        };
        config.check().unwrap();
        config.heartbeat_interval_ms = MIN_HEARTBEAT_INTERVAL_MS - 1;
        assert_eq!(field_of(&config), "heartbeat_interval_ms");
    }

    #[test]
    fn election_timeout_min_must_exceed_two_heartbeats() {
        let mut config = RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 201,
            ..Default::default()
        };
        config.check().unwrap();
        config.election_timeout_min_ms = 200;
        assert_eq!(field_of(&config), "election_timeout_min_ms");
    }

    #[test]
    fn huge_heartbeat_does_not_overflow_the_election_check() {
        let config = RaftConfig {
            heartbeat_interval_ms: u64::MAX,
            ..Default::default()
        };
        assert_eq!(field_of(&config), "election_timeout_min_ms");
    }

    #[test]
    fn election_timeout_max_must_exceed_min() {
        let mut config = RaftConfig {
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 401,
            ..Default::default()
        };
        config.check().unwrap();
        config.election_timeout_max_ms = 400;
        assert_eq!(field_of(&config), "election_timeout_max_ms");
    }

    #[test]
    fn election_timeout_max_of_a_minute_accepted_and_one_ms_more_refused() {
        let mut config = RaftConfig {
            election_timeout_max_ms: MAX_ELECTION_TIMEOUT_MS,
            ..Default::default()
        };
        config.check().unwrap();
        // Past the bound, including the values whose lease floor (1.5 election timeouts,
        // `aspen_api::lease::min_lease_ttl_secs`) overflowed before the bound existed.
        for bad in [MAX_ELECTION_TIMEOUT_MS + 1, u64::MAX / 3 + 1, u64::MAX] {
            config.election_timeout_max_ms = bad;
            assert_eq!(field_of(&config), "election_timeout_max_ms", "{bad}");
        }
    }

    #[test]
    fn snapshot_every_logs_is_taken_from_one_to_its_maximum() {
        for ok in [1, MAX_SNAPSHOT_LOGS] {
            RaftConfig {
                snapshot_every_logs: ok,
                ..Default::default()
            }
            .check()
            .unwrap();
        }
        for bad in [0, MAX_SNAPSHOT_LOGS + 1, u64::MAX] {
            let config = RaftConfig {
                snapshot_every_logs: bad,
                ..Default::default()
            };
            assert_eq!(field_of(&config), "snapshot_every_logs", "{bad}");
        }
    }

    #[test]
    fn logs_kept_after_snapshot_is_taken_up_to_its_maximum() {
        for ok in [0, MAX_SNAPSHOT_LOGS] {
            RaftConfig {
                logs_kept_after_snapshot: ok,
                ..Default::default()
            }
            .check()
            .unwrap();
        }
        let config = RaftConfig {
            logs_kept_after_snapshot: MAX_SNAPSHOT_LOGS + 1,
            ..Default::default()
        };
        assert_eq!(field_of(&config), "logs_kept_after_snapshot");
        let message = config.check().unwrap_err().reason;
        assert!(
            message.contains(&MAX_SNAPSHOT_LOGS.to_string()),
            "{message}"
        );
    }

    #[test]
    fn max_payload_entries_bounds_are_enforced() {
        for ok in [1, MAX_PAYLOAD_ENTRIES_LIMIT] {
            RaftConfig {
                max_payload_entries: ok,
                ..Default::default()
            }
            .check()
            .unwrap();
        }
        for bad in [0, MAX_PAYLOAD_ENTRIES_LIMIT + 1] {
            let config = RaftConfig {
                max_payload_entries: bad,
                ..Default::default()
            };
            assert_eq!(field_of(&config), "max_payload_entries", "{bad}");
        }
    }
}
