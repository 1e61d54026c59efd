//! The requests and answers of `aspen/kv/2`.

use serde::{Deserialize, Serialize};

use super::feed::{FeedReadRequest, FeedReadResponse};
use super::replica::{ReplicaReadRequest, ReplicaReadResponse, ReplicaReport};
use super::status::{MemberReport, StatusReport};
use crate::command::Command;
use crate::error::ApiError;
use crate::lease::{LeaseAnswer, LeaseRequest};
use crate::types::{Consistency, ReadRequest, ReadResponse, WriteResult};

/// A request to a cluster node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Propose a write. The receiving node must be the leader (it never forwards again:
    /// one hop at most), else it answers `NotLeader`.
    Write(Command),
    /// A read at the given consistency. Linearizable reads also need the leader.
    Read {
        /// What to read.
        request: ReadRequest,
        /// How fresh.
        consistency: Consistency,
    },
    /// Change the cluster's membership (leader only, like writes).
    Membership(MembershipChange),
    /// The receiving node's view of its cluster (any node answers; routers poll it for
    /// health, leader and term).
    Status,
    /// Several independent writes and reads, served concurrently and answered together in
    /// order with a [`KvResponse::Batch`]: a router sends the requests that queue up for
    /// one cluster in one message. At most [`MAX_WIRE_BATCH`]; no nested batches, no
    /// membership changes.
    Batch(#[serde(deserialize_with = "crate::codec::nested")] Vec<KvRequest>),
    /// A stale read of this node's replica of another region's cluster.
    ReplicaRead(ReplicaReadRequest),
    /// The state of every replica this node keeps.
    ReplicaStatus,
    /// A read of this node's change feed (any member answers from its own copy).
    FeedRead(FeedReadRequest),
    /// A lease operation. Keep-alive and get need the leader (which alone keeps the
    /// lease clocks); grant and revoke are writes.
    Lease(LeaseRequest),
}

/// Most requests in one [`KvRequest::Batch`]. One stream carries them all; beyond a few
/// hundred, the per-request cost saved is negligible and one slow request holds more
/// answers back.
pub const MAX_WIRE_BATCH: usize = 256;

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a learner (it receives the log but does not vote).
    AddLearner(NewLearner),
    /// Make a learner a voter.
    Promote(u64),
    /// Remove a voter or learner.
    Remove(u64),
}

/// A node to add as a learner (the wire shape of `admin::AddLearnerRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLearner {
    /// The new node's Raft id.
    pub node_id: u64,
    /// Its iroh EndpointId (hex).
    pub endpoint_id: String,
    /// Its direct addresses (`ip:port`).
    pub addrs: Vec<String>,
}

impl From<crate::admin::AddLearnerRequest> for NewLearner {
    fn from(r: crate::admin::AddLearnerRequest) -> Self {
        NewLearner {
            node_id: r.node_id,
            endpoint_id: r.endpoint_id,
            addrs: r.addrs,
        }
    }
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// The write was committed and applied (or refused by a precondition).
    Write(WriteResult),
    /// The read's result.
    Read(ReadResponse),
    /// The membership after a change.
    Membership(Vec<MemberReport>),
    /// The answer to [`KvRequest::Status`].
    Status(StatusReport),
    /// The answers to a [`KvRequest::Batch`], one per request, in order.
    Batch(#[serde(deserialize_with = "crate::codec::nested")] Vec<KvResponse>),
    /// This node is not the leader; `leader` is the one it knows of, if any.
    NotLeader {
        /// Raft node id of the leader, when known.
        leader: Option<u64>,
    },
    /// The request failed.
    Error(ApiError),
    /// The answer to a [`KvRequest::ReplicaRead`].
    ReplicaRead(ReplicaReadResponse),
    /// The answer to [`KvRequest::ReplicaStatus`].
    ReplicaStatus(Vec<ReplicaReport>),
    /// The answer to [`KvRequest::FeedRead`].
    FeedRead(FeedReadResponse),
    /// The answer to [`KvRequest::Lease`].
    Lease(LeaseAnswer),
}
