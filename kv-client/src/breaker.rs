//! The circuit breaker of one cluster. Once a request has spent its whole deadline
//! without any node answering as leader, the client (a router's, or a node's for
//! forwarding) remembers it: the cluster's next requests are refused at once with 503
//! `cluster_unavailable` instead of each waiting out the same deadline, and one background
//! probe asks the cluster's nodes for their status every [`PROBE_INTERVAL`] until one
//! names a leader. Then requests flow again.
//!
//! Refusing is safe: a refused request was never sent, so nothing was applied. The cost
//! is that a cluster which comes back is used up to one probe interval late; a node's
//! client of its own cluster closes the breaker as soon as the node's Raft takes entries
//! from the leader (`ClusterClient::follow`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often the probe of an open breaker asks the cluster whether it has a leader again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long one probe may take to reach a node and hear its status.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Whether a cluster's requests are refused at once, and why.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    open: Mutex<Option<Open>>,
    refused: AtomicU64,
}

#[derive(Debug, Clone)]
struct Open {
    since: Instant,
    why: String,
}

impl Breaker {
    /// Opens the breaker because of `why`; true if it was closed (start one probe).
    pub(crate) fn trip(&self, why: &str) -> bool {
        let mut open = self.open.lock().expect("breaker lock");
        if open.is_some() {
            return false;
        }
        *open = Some(Open {
            since: Instant::now(),
            why: why.to_owned(),
        });
        true
    }

    /// Closes the breaker: the cluster has a leader again.
    pub(crate) fn reset(&self) {
        *self.open.lock().expect("breaker lock") = None;
    }

    /// Whether requests are refused right now.
    pub(crate) fn is_open(&self) -> bool {
        self.open.lock().expect("breaker lock").is_some()
    }

    /// Requests refused at once since the client started.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Why a request must be refused now, counting it; `None` when it may go. `who` is
    /// the one refusing ("the router", "this node").
    pub(crate) fn refusal(&self, who: &str) -> Option<String> {
        let open = self.open.lock().expect("breaker lock").clone()?;
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(format!(
            "no node has answered as leader for {:.1} s (first: {}); {who} refuses its \
             requests at once until a probe, every {} ms, finds a leader; nothing was \
             applied, retry later",
            open.since.elapsed().as_secs_f64(),
            open.why,
            PROBE_INTERVAL.as_millis()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tripped_breaker_refuses_and_counts_until_reset() {
        let breaker = Breaker::default();
        assert!(
            breaker.refusal("the router").is_none(),
            "closed: requests go"
        );
        assert!(breaker.trip("node 1: unreachable"));
        assert!(!breaker.trip("again"), "already open: no second probe");
        let why = breaker.refusal("the router").expect("open: refused");
        assert!(why.contains("the router refuses its requests"), "{why}");
        assert!(why.contains("node 1: unreachable"), "{why}");
        assert!(why.contains("nothing was applied"), "{why}");
        assert_eq!(breaker.refused(), 1);
        assert!(breaker.is_open());
        breaker.reset();
        assert!(breaker.refusal("the router").is_none());
        assert_eq!(breaker.refused(), 1);
        assert!(breaker.trip("later"), "a new failure opens it again");
    }
}
