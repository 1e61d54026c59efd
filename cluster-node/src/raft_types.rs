//! The openraft type configuration of an Aspen cluster: what a log entry carries
//! ([`Command`]), what applying it returns ([`WriteResult`]), and what the membership
//! records about each member ([`MemberNode`]).

use std::io::Cursor;

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

openraft::declare_raft_types!(
    /// Aspen's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = WriteResult,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
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
