//! The openraft type configuration of an Aspen cluster: what a log entry carries
//! ([`Proposal`]: one or more client commands), what applying it returns (one
//! [`WriteResult`] per command), and what the membership records about each member
//! ([`MemberNode`]).

use aspen_api::{Command, WriteResult};
use serde::{Deserialize, Serialize};

/// Raft node id of a member.
pub type NodeId = u64;

/// What the cluster membership records about a member: enough to reach it over iroh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member's iroh EndpointId, hex.
    pub endpoint_id: String,
    /// Direct addresses (`ip:port`) of the member's iroh endpoint. Configured peer
    /// addresses take precedence, so a member whose port changed stays reachable.
    pub addrs: Vec<String>,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.endpoint_id, self.addrs.join(","))
    }
}

/// The payload of one log entry: client commands, applied in order, each atomic on its
/// own and each getting its own revision. The leader puts every write that is waiting
/// when the log is free into one proposal (see [`crate::proposer`]), so one fsync and one
/// replication round carry many independent writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The commands, in the order they are applied.
    pub commands: Vec<Command>,
    /// When the leader proposed them, in milliseconds since the Unix epoch. The change
    /// feed records it as each revision's time (never below the previous revision's, so
    /// a leader whose clock is behind cannot move time backwards); feed retention and
    /// federation lag are measured with it. Part of the replicated entry, so every node
    /// sees the same time.
    pub time_ms: u64,
}

impl Proposal {
    /// A proposal of `commands`, stamped with this node's clock.
    pub fn now(commands: Vec<Command>) -> Proposal {
        Proposal {
            commands,
            time_ms: unix_time_ms(),
        }
    }
}

/// This node's clock, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What applying one [`Proposal`] came to: one result per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalResults {
    /// The results, in the proposal's order.
    pub results: Vec<WriteResult>,
}

openraft::declare_raft_types!(
    /// Aspen's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = ProposalResults,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::storage::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node of an Aspen cluster.
pub type AspenRaft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;
