//! Handing leadership over before a node stops, so that restarting the nodes of a
//! cluster one at a time fails no request.
//!
//! openraft 0.9 has no leadership transfer, and a leader that simply stops leaves the
//! writes it was applying with an unknown outcome and its followers waiting out an
//! election timeout. So a leader asked to stop ([`hand_off`]) first:
//!
//! 1. Takes no new work: its proposer and read queue answer "not the leader" (naming the
//!    new leader once there is one), which routers and forwarding nodes follow, and which
//!    promises nothing was applied. Writes it had already proposed commit and are answered
//!    as usual.
//! 2. Stops sending heartbeats and never campaigns again. With no heartbeats and no new
//!    entries, the followers' leader lease (openraft: `election_timeout_max` after the
//!    last heartbeat) runs out and one of them is elected, one whose log holds every
//!    committed entry, as any Raft election guarantees.
//! 3. Waits, at most [`HANDOFF_WAIT`], until it sees another node lead; then the node
//!    stops as before. Requests meanwhile wait in routers and forwarding nodes (a second
//!    or so with the default timeouts), within their deadlines.
//!
//! A follower stopping needs none of this: it serves no writes, and the leader goes on
//! with the remaining quorum. `aspen node` hands over on SIGTERM or Ctrl-C; in-process
//! clusters (tests, `aspen dev`) stop without it, all their nodes at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::raft_types::{AspenRaft, MemberNode, NodeId};

/// Longest a stopping leader waits for another node to be elected before it stops anyway
/// (its followers then elect one after their election timeout, as after a crash).
/// Well inside the 10 s a container engine gives a stopping container before SIGKILL.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(5);

/// Set once this node, as leader, is handing its leadership over: it takes no new writes
/// or linearizable reads from then on. Shared by the service, its proposer and read queue.
#[derive(Debug, Clone, Default)]
pub struct Leaving(Arc<AtomicBool>);

impl Leaving {
    /// Whether the handover has begun.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The leader as this node knows it, if that is another node: where a leaving leader
/// sends the work it no longer takes.
pub fn other_leader(raft: &AspenRaft) -> Option<(NodeId, MemberNode)> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let leader = m.current_leader.filter(|id| *id != m.id)?;
    let node = m.membership_config.membership().get_node(&leader)?.clone();
    Some((leader, node))
}

/// How a handover ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOff {
    /// This node was not the leader: nothing to hand over.
    NotLeader,
    /// This node is the only voter: there is no one to hand over to.
    OnlyVoter,
    /// Another node leads now.
    To(NodeId),
    /// No other node was elected within [`HANDOFF_WAIT`].
    TimedOut,
}

/// Hands this node's leadership to another voter, as the module docs say. Call it before
/// stopping the node; afterwards the node takes no new work.
pub async fn hand_off(raft: &AspenRaft, leaving: &Leaving) -> HandOff {
    let (me, leader, voters) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let voters = m.membership_config.membership().voter_ids().count();
        (m.id, m.current_leader, voters)
    };
    if leader != Some(me) {
        return HandOff::NotLeader;
    }
    if voters < 2 {
        return HandOff::OnlyVoter;
    }
    leaving.set();
    raft.runtime_config().heartbeat(false);
    raft.runtime_config().elect(false);
    let elected = raft
        .wait(Some(HANDOFF_WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|id| id != m.id),
            "another node to lead",
        )
        .await;
    match elected {
        Ok(m) => HandOff::To(m.current_leader.unwrap_or_default()),
        Err(_) => HandOff::TimedOut,
    }
}
