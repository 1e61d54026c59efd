//! The lease clock: when each lease of this node's cluster expires, as this node sees it,
//! and the leader's task that ends expired leases through Raft.
//!
//! Which leases exist is state-machine data, the same on every member
//! ([`crate::storage::leases`]); every apply reports what it granted and ended, and the
//! clock follows. When a lease expires is not: only the leader's clock counts, it is kept
//! in memory, and keep-alives touch nothing else (they use no revision and write no log
//! entry). The rules that make this safe:
//!
//! - A node that becomes leader first restarts every lease's full TTL from that moment
//!   ([`LeaseClock::refresh_all`]): whatever keep-alives the old leader saw, none of them
//!   could promise more than a TTL from a moment before this one. A leader change can
//!   only lengthen a lease, never end one early.
//! - A keep-alive is honoured only after a heartbeat round proves this node still leads
//!   (the same check as a linearizable read), and its TTL counts from before that round.
//!   A deposed leader cannot extend a lease that the new leader would then expire.
//! - An expired lease is marked `expiring` before its `LeaseRevoke` is proposed: from then
//!   on keep-alives fail (`lease_not_found`), so no client is told a lease lives that is
//!   being ended. A revoke whose outcome is unknown (it may still commit) is proposed
//!   again and the lease stays expiring; only a revoke certainly not appended (this node
//!   was no longer leader) lifts the mark, and then the next leader restarts the TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::storage::leases::LeaseEvent;

/// How often the leader looks for expired leases: the most a lease outlives its TTL,
/// beyond the time its revoke takes to commit.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Most lease revokes the leader proposes per tick; the rest wait for the next tick, so
/// a mass expiry (a whole fleet gone at once) cannot flood the log.
pub const MAX_EXPIRIES_PER_TICK: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Tracked {
    ttl: Duration,
    deadline: Instant,
    /// It expired: keep-alives fail from now on.
    expiring: bool,
    /// Its revoke is in flight.
    proposed: bool,
}

/// The deadlines of one cluster's leases on this node (see the module docs).
#[derive(Debug, Default)]
pub struct LeaseClock {
    leases: Mutex<HashMap<u64, Tracked>>,
}

/// What a keep-alive or a get sees of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTime {
    /// The TTL it was granted.
    pub ttl: Duration,
    /// Time left before it expires.
    pub remaining: Duration,
}

impl LeaseClock {
    /// A clock holding no leases.
    pub fn new() -> Arc<LeaseClock> {
        Arc::new(LeaseClock::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.leases.lock().expect("lease clock lock")
    }

    /// Follows what an apply did: a granted lease runs from now, an ended one is gone.
    pub fn apply(&self, events: &[LeaseEvent]) {
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut leases = self.lock();
        for event in events {
            match *event {
                LeaseEvent::Granted(id, ttl_ms) => {
                    let ttl = Duration::from_millis(ttl_ms);
                    leases.insert(
                        id,
                        Tracked {
                            ttl,
                            deadline: now + ttl,
                            expiring: false,
                            proposed: false,
                        },
                    );
                }
                LeaseEvent::Ended(id) => {
                    leases.remove(&id);
                }
            }
        }
    }

    /// Replaces every lease with `all` (number, TTL in ms), each running from now: at
    /// start and when a snapshot is installed.
    pub fn reload(&self, all: &[(u64, u64)]) {
        let mut leases = self.lock();
        leases.clear();
        drop(leases);
        let events: Vec<LeaseEvent> = all
            .iter()
            .map(|(id, ttl)| LeaseEvent::Granted(*id, *ttl))
            .collect();
        self.apply(&events);
    }

    /// Restarts every lease's full TTL from now and lifts every `expiring` mark: what a
    /// new leader does before it expires anything.
    pub fn refresh_all(&self) {
        let now = Instant::now();
        for lease in self.lock().values_mut() {
            lease.deadline = now + lease.ttl;
            lease.expiring = false;
            lease.proposed = false;
        }
    }

    /// Extends lease `id` to a full TTL from `since` (a moment this node was known to
    /// lead). `None` if the lease does not exist or is being ended.
    pub fn keep_alive(&self, id: u64, since: Instant) -> Option<LeaseTime> {
        let mut leases = self.lock();
        let lease = leases.get_mut(&id).filter(|l| !l.expiring)?;
        lease.deadline = lease.deadline.max(since + lease.ttl);
        Some(LeaseTime {
            ttl: lease.ttl,
            remaining: lease.deadline.saturating_duration_since(Instant::now()),
        })
    }

    /// What is left of lease `id`; `None` if it does not exist or is being ended.
    pub fn time_left(&self, id: u64) -> Option<LeaseTime> {
        let leases = self.lock();
        let lease = leases.get(&id).filter(|l| !l.expiring)?;
        Some(LeaseTime {
            ttl: lease.ttl,
            remaining: lease.deadline.saturating_duration_since(Instant::now()),
        })
    }

    /// Up to `max` leases to revoke now: past their deadline at `now`, or expired earlier
    /// with a revoke to try again ([`LeaseClock::retry`]). Each is marked expiring, with
    /// its revoke in flight.
    pub fn take_expired(&self, now: Instant, max: usize) -> Vec<u64> {
        let mut leases = self.lock();
        let mut out = Vec::new();
        for (id, lease) in leases.iter_mut() {
            if out.len() == max {
                break;
            }
            let due = if lease.expiring {
                !lease.proposed
            } else {
                lease.deadline <= now
            };
            if due {
                lease.expiring = true;
                lease.proposed = true;
                out.push(*id);
            }
        }
        out
    }

    /// The revoke of `id` was certainly not appended (this node was not the leader):
    /// lift its marks; whoever leads decides again.
    pub fn unmark(&self, id: u64) {
        if let Some(lease) = self.lock().get_mut(&id) {
            lease.expiring = false;
            lease.proposed = false;
        }
    }

    /// The revoke of `id` has an unknown outcome (it may still commit): keep it expiring,
    /// so keep-alives go on failing, and propose the revoke again.
    pub fn retry(&self, id: u64) {
        if let Some(lease) = self.lock().get_mut(&id) {
            lease.proposed = false;
        }
    }

    /// How many leases the clock tracks.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it tracks none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_expires_after_its_ttl_unless_kept_alive() {
        let clock = LeaseClock::new();
        clock.apply(&[LeaseEvent::Granted(1, 1_000), LeaseEvent::Granted(2, 1_000)]);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(clock.keep_alive(1, Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(clock.take_expired(Instant::now(), 10), vec![2]);
        assert!(clock.keep_alive(2, Instant::now()).is_none(), "expiring");
        assert!(clock.take_expired(Instant::now(), 10).is_empty());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(clock.take_expired(Instant::now(), 10), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_restarts_every_ttl_and_forgets_expiring_marks() {
        let clock = LeaseClock::new();
        clock.apply(&[LeaseEvent::Granted(1, 1_000)]);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.take_expired(Instant::now(), 10), vec![1]);
        clock.refresh_all();
        assert_eq!(
            clock.time_left(1).unwrap().remaining,
            Duration::from_millis(1_000)
        );
        assert!(clock.take_expired(Instant::now(), 10).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_never_shortens_a_lease_and_ended_leases_are_gone() {
        let clock = LeaseClock::new();
        clock.apply(&[LeaseEvent::Granted(1, 1_000)]);
        let before = Instant::now() - Duration::from_millis(500);
        let time = clock.keep_alive(1, before).unwrap();
        assert_eq!(time.remaining, Duration::from_millis(1_000));
        clock.apply(&[LeaseEvent::Ended(1)]);
        assert!(clock.keep_alive(1, Instant::now()).is_none());
        assert!(clock.is_empty());
    }

    #[test]
    fn a_revoke_of_unknown_outcome_is_retried_and_keep_alives_keep_failing() {
        let clock = LeaseClock::new();
        clock.apply(&[LeaseEvent::Granted(1, 0)]);
        assert_eq!(clock.take_expired(Instant::now(), 10), vec![1]);
        assert!(
            clock.take_expired(Instant::now(), 10).is_empty(),
            "in flight"
        );
        clock.retry(1);
        assert!(clock.keep_alive(1, Instant::now()).is_none());
        assert_eq!(
            clock.take_expired(Instant::now(), 10),
            vec![1],
            "proposed again"
        );
        clock.unmark(1);
        assert!(
            clock.keep_alive(1, Instant::now()).is_some(),
            "not appended: alive"
        );
    }

    #[test]
    fn expiries_per_take_are_bounded() {
        let clock = LeaseClock::new();
        let events: Vec<LeaseEvent> = (1..=10).map(|i| LeaseEvent::Granted(i, 0)).collect();
        clock.apply(&events);
        assert_eq!(clock.take_expired(Instant::now(), 4).len(), 4);
        assert_eq!(clock.take_expired(Instant::now(), 100).len(), 6);
    }
}
