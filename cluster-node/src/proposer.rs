//! Group commit of client writes: every write waiting when the Raft log is free goes into
//! one [`Proposal`], one log entry.
//!
//! openraft 0.9 appends one client request at a time and waits for that append's fsync
//! before it takes the next, so one entry per request means one fsync (on the leader, and
//! one replication round) per write, whatever the load. The proposer turns concurrency
//! into batching instead (a [`Batcher`]): a single task takes the first queued write, adds
//! every other write already queued (up to [`MAX_PROPOSAL_COMMANDS`] and
//! [`MAX_PROPOSAL_BYTES`]) and proposes them together, with at most
//! [`MAX_PROPOSALS_IN_FLIGHT`] proposals in Raft at once. A lone writer waits for nothing: its proposal holds just its command, so the
//! single-client latency is unchanged. Under load the queue fills while the log is busy
//! and the next proposal carries all of it.
//!
//! Each command in a proposal is still atomic on its own and gets its own result and
//! revision (see the state machine); a failed precondition fails only its own command.
//! If the proposal as a whole fails (this node is not the leader, or Raft stopped), every
//! command in it gets the same answer, which is the same answer it would have got alone.

use aspen_api::{ApiError, Command, ErrorCode, WriteResult};
use openraft::error::{ClientWriteError, RaftError};

use crate::batcher::{BatchLimits, Batcher, Stopped};
use crate::handoff::{other_leader, Leaving};
use crate::raft_types::{AspenRaft, MemberNode, NodeId, Proposal};
use crate::stages::{Stage, Stages};

/// Most commands in one proposal. Each is at most 100 keys, so an entry stays a few
/// hundred KiB for small values; more would make one apply transaction, and the writes
/// queued behind it, wait longer without saving more fsyncs.
pub const MAX_PROPOSAL_COMMANDS: usize = 256;

/// Most key and value bytes in one proposal (a single larger command still goes alone).
/// Equal to the largest single command, so a proposal is never bigger than the largest
/// entry the log already carries and replication batches stay bounded.
pub const MAX_PROPOSAL_BYTES: usize = aspen_api::limits::MAX_COMMAND_VALUE_BYTES;

/// Proposals in Raft at once. With two, one proposal's replication overlaps the next
/// one's append; more only splits the queue into smaller proposals (measured in
/// docs/BENCHMARKS.md).
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 2;

/// Writes that may wait for a proposal. A full queue makes writers wait (within their
/// request deadline), so memory stays bounded however many clients there are.
pub const MAX_QUEUED_WRITES: usize = 4 * MAX_PROPOSAL_COMMANDS;

/// Why a proposed write was not applied here.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This node is not the leader; nothing was appended. The leader, if known.
    NotLeader(Option<(NodeId, MemberNode)>),
    /// The write failed with this error (its outcome is in the error's code).
    Failed(ApiError),
}

type Answer = Result<WriteResult, ProposeError>;

/// The queue in front of one node's Raft log. Dropping it stops its task once the
/// proposals in flight are answered.
pub struct Proposer {
    batcher: Batcher<Command, Answer>,
    raft: AspenRaft,
    leaving: Leaving,
}

impl Proposer {
    /// Starts the proposing task for `raft` on the current tokio runtime. Once `leaving`
    /// is set (the node hands its leadership over), writes are refused as "not the
    /// leader".
    pub fn start(raft: AspenRaft, leaving: Leaving, stages: Stages) -> Proposer {
        let limits = BatchLimits {
            max_items: MAX_PROPOSAL_COMMANDS,
            max_weight: MAX_PROPOSAL_BYTES,
            max_in_flight: MAX_PROPOSALS_IN_FLIGHT,
            max_queued: MAX_QUEUED_WRITES,
        };
        let (proposing, left) = (raft.clone(), leaving.clone());
        let batcher = Batcher::start(limits, Command::payload_bytes, move |commands| {
            let (raft, leaving, stages) = (proposing.clone(), left.clone(), stages.clone());
            async move {
                // Checked as each proposal is taken, so writes queued before the handover
                // began are refused too, unproposed.
                if leaving.is_set() {
                    let leader = other_leader(&raft);
                    return vec![Err(ProposeError::NotLeader(leader)); commands.len()];
                }
                let started = std::time::Instant::now();
                let answers = propose(&raft, commands).await;
                stages.observe(Stage::Propose, started.elapsed());
                answers
            }
        });
        Proposer {
            batcher,
            raft,
            leaving,
        }
    }

    /// Proposes `command` (already validated) and waits for its result.
    pub async fn propose(&self, command: Command) -> Answer {
        if self.leaving.is_set() {
            return Err(ProposeError::NotLeader(other_leader(&self.raft)));
        }
        self.batcher
            .submit(command)
            .await
            .unwrap_or_else(|stopped| Err(stopped_error(stopped)))
    }

    /// Proposes each of `commands` (already validated), queued together so that they
    /// share proposals, and waits for their results: one per command, in order. Each is
    /// still applied, and succeeds or fails, on its own.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Vec<Answer> {
        if self.leaving.is_set() {
            let leader = other_leader(&self.raft);
            return vec![Err(ProposeError::NotLeader(leader)); commands.len()];
        }
        self.batcher
            .submit_all(commands)
            .await
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|stopped| Err(stopped_error(stopped))))
            .collect()
    }
}

/// What a write learns when the proposer stopped around it.
fn stopped_error(stopped: Stopped) -> ProposeError {
    let (code, message) = match stopped {
        Stopped::BeforeRunning => (
            ErrorCode::ClusterUnavailable,
            "this node is shutting down; nothing was applied",
        ),
        Stopped::WhileRunning => (
            ErrorCode::Timeout,
            "this node stopped while the write was in progress; it may or may not have been \
             applied",
        ),
    };
    ProposeError::Failed(ApiError::new(code, message))
}

/// Proposes `commands` as one entry: one answer per command, in order.
async fn propose(raft: &AspenRaft, commands: Vec<Command>) -> Vec<Answer> {
    let count = commands.len();
    let error = match raft.client_write(Proposal::now(commands)).await {
        Ok(response) if response.data.results.len() == count => {
            return response.data.results.into_iter().map(Ok).collect();
        }
        Ok(response) => ProposeError::Failed(ApiError::new(
            ErrorCode::Internal,
            format!(
                "the state machine answered {} results for {count} commands",
                response.data.results.len()
            ),
        )),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            ProposeError::NotLeader(f.leader_id.zip(f.leader_node))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            ProposeError::Failed(ApiError::new(ErrorCode::Internal, e.to_string()))
        }
        // The entry may already be replicated and go on to commit under a new leader:
        // the outcome is unknown, never "nothing applied".
        Err(RaftError::Fatal(f)) => ProposeError::Failed(ApiError::new(
            ErrorCode::Timeout,
            format!(
                "this node stopped ({f}) while the write was in progress; \
                 it may or may not have been applied"
            ),
        )),
    };
    vec![Err(error); count]
}
