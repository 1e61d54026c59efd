//! Shared ReadIndex rounds for linearizable reads.
//!
//! A linearizable read needs proof that this node was still the leader at some moment
//! after the read began (a heartbeat round acknowledged by a quorum) and a state machine
//! that has applied everything committed at that moment. openraft runs one heartbeat round
//! per request, so under load the leader spends its time confirming leadership over and
//! over. One round can serve every read that began before the round started, as etcd's
//! read loop does: reads queue up, a [`Batcher`] task takes all that are queued, runs one
//! `ensure_linearizable` for them, and answers them all.
//!
//! Why that is linearizable: a read is queued before the task takes it, and the task
//! starts the round after taking it, so the round starts after the read began. The round's
//! read index covers every write acknowledged before that, and `ensure_linearizable`
//! returns only once this node has applied up to it.

use openraft::error::{CheckIsLeaderError, RaftError};

use crate::batcher::{BatchLimits, Batcher, Stopped};
use crate::handoff::{other_leader, Leaving};
use crate::raft_types::{AspenRaft, MemberNode, NodeId};

/// Most reads one round answers. A round costs the same for any number of reads; the
/// bound only keeps one batch's bookkeeping small.
pub const MAX_READS_PER_ROUND: usize = 4096;

/// Rounds in flight at once: while one waits for its quorum, the next gathers reads.
pub const MAX_ROUNDS_IN_FLIGHT: usize = 2;

/// Reads that may wait for a round.
pub const MAX_QUEUED_READS: usize = 2 * MAX_READS_PER_ROUND;

/// Why a round did not confirm this node as leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadIndexError {
    /// This node is not the leader: read there. The leader, if known.
    NotLeader(Option<(NodeId, MemberNode)>),
    /// Not enough followers answered: this node may be deposed. Try again.
    NoQuorum,
    /// This node's Raft has stopped.
    Stopped(String),
}

/// The queue of reads waiting for a ReadIndex round on one node.
pub struct ReadIndex {
    batcher: Batcher<(), Result<(), ReadIndexError>>,
}

/// A round's answer to every read it serves.
type Round = Result<(), ReadIndexError>;

impl ReadIndex {
    /// Starts the task running rounds for `raft`, on the current tokio runtime. Once
    /// `leaving` is set (the node hands its leadership over), no round runs: reads are
    /// sent to the leader instead (a round's heartbeat would renew the followers' leader
    /// lease and hold the election off).
    pub fn start(raft: AspenRaft, leaving: Leaving) -> ReadIndex {
        let limits = BatchLimits {
            max_items: MAX_READS_PER_ROUND,
            max_weight: MAX_READS_PER_ROUND,
            max_in_flight: MAX_ROUNDS_IN_FLIGHT,
            max_queued: MAX_QUEUED_READS,
        };
        let batcher = Batcher::start(
            limits,
            |_| 1,
            move |reads: Vec<()>| {
                let (raft, leaving) = (raft.clone(), leaving.clone());
                async move {
                    let answer: Round = if leaving.is_set() {
                        Err(ReadIndexError::NotLeader(other_leader(&raft)))
                    } else {
                        round(&raft).await
                    };
                    vec![answer; reads.len()]
                }
            },
        );
        ReadIndex { batcher }
    }

    /// Returns once this node's state machine may serve a read that began before the call.
    pub async fn confirm(&self) -> Result<(), ReadIndexError> {
        self.batcher.submit(()).await.unwrap_or_else(|e: Stopped| {
            Err(ReadIndexError::Stopped(format!(
                "read queue stopped ({e:?})"
            )))
        })
    }
}

async fn round(raft: &AspenRaft) -> Result<(), ReadIndexError> {
    match raft.ensure_linearizable().await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ReadIndexError::NotLeader(f.leader_id.zip(f.leader_node)))
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
            Err(ReadIndexError::NoQuorum)
        }
        Err(RaftError::Fatal(f)) => Err(ReadIndexError::Stopped(f.to_string())),
    }
}
