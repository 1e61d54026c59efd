//! The wire shapes of a node's status: what a router learns from `KvRequest::Status` and
//! what a membership change answers. They hold the same facts as the JSON shapes
//! (`admin::NodeStatus`, `admin::MemberStatus`) but are separate types, so a JSON-only
//! attribute (a field skipped when empty) can never break the positional encoding: that
//! once made routers read a follower's status as a malformed message.

use serde::{Deserialize, Serialize};

use crate::admin::{MemberStatus, NodeStatus};

/// One member of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// Raft node id.
    pub node_id: u64,
    /// iroh EndpointId (hex).
    pub endpoint_id: String,
    /// Direct addresses the member is reached at.
    pub addrs: Vec<String>,
    /// Whether it votes (else it is a learner).
    pub voter: bool,
    /// Highest log index known to be replicated to it (known on the leader only).
    pub matched_index: Option<u64>,
}

/// A node's view of its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Cluster name.
    pub cluster: String,
    /// The node's Raft id.
    pub node_id: u64,
    /// The node's iroh EndpointId (hex).
    pub endpoint_id: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub raft_state: String,
    /// The leader the node knows of.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// The cluster revision the node's copy has reached.
    pub applied_revision: u64,
    /// Highest Raft log index applied on the node.
    pub applied_index: u64,
    /// Highest log index on the node.
    pub last_log_index: u64,
    /// Whether the cluster has been initialized.
    pub initialized: bool,
    /// Members of the cluster.
    pub members: Vec<MemberReport>,
}

impl From<MemberReport> for MemberStatus {
    fn from(m: MemberReport) -> Self {
        MemberStatus {
            node_id: m.node_id,
            endpoint_id: m.endpoint_id,
            addrs: m.addrs,
            role: if m.voter { "voter" } else { "learner" }.to_string(),
            matched_index: m.matched_index,
        }
    }
}

impl From<StatusReport> for NodeStatus {
    fn from(s: StatusReport) -> Self {
        NodeStatus {
            role: "node".to_string(),
            cluster: s.cluster,
            node_id: s.node_id,
            endpoint_id: s.endpoint_id,
            raft_state: s.raft_state,
            leader: s.leader,
            term: s.term,
            applied_revision: s.applied_revision,
            applied_index: s.applied_index,
            last_log_index: s.last_log_index,
            initialized: s.initialized,
            members: s.members.into_iter().map(MemberStatus::from).collect(),
            replicas: Vec::new(),
            export: None,
        }
    }
}
