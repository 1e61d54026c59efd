//! What a follower knows of its leader: when it last accepted AppendEntries from it, and
//! the commit revision the leader reported then. A stale read reports both, so the reader
//! can tell how far behind the copy it got may be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Last contact with a leader, updated by the Raft RPC server.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Instant>>,
    leader_commit: AtomicU64,
}

impl LeaderContact {
    /// Records an accepted AppendEntries that reported `leader_commit`.
    pub fn record(&self, leader_commit: u64) {
        *self.last.lock().expect("leader contact lock") = Some(Instant::now());
        self.leader_commit
            .fetch_max(leader_commit, Ordering::AcqRel);
    }

    /// Milliseconds since the last accepted AppendEntries, if there was one.
    pub fn since_ms(&self) -> Option<u64> {
        let last = *self.last.lock().expect("leader contact lock");
        last.map(|t| t.elapsed().as_millis() as u64)
    }

    /// The highest commit revision a leader has reported.
    pub fn leader_commit(&self) -> u64 {
        self.leader_commit.load(Ordering::Acquire)
    }
}
