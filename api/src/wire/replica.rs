//! Reads of federation replicas: a router asks a node of its own region for a stale read
//! of a key another region's cluster owns, and for how far behind each replica is.

use serde::{Deserialize, Serialize};

use crate::types::{ReadRequest, ReadResult};

/// A stale read of the local replica of cluster `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReadRequest {
    /// The owner cluster.
    pub source: String,
    /// What to read.
    pub request: ReadRequest,
    /// Refuse (`replica_behind`) if the replica is below this revision: the router asks for
    /// at least what it already returned, so reads never go back in time.
    pub min_revision: u64,
    /// Refuse (`replica_behind`) if the replica may be staler than this, in ms.
    pub max_lag_ms: Option<u64>,
}

/// The answer to a [`ReplicaReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReadResponse {
    /// The owner cluster.
    pub source: String,
    /// The data.
    pub result: ReadResult,
    /// The owner revision the replica is exact at: the result is the owner's state then.
    pub revision: u64,
    /// Owner revisions the replica is known to lack.
    pub lag_revisions: u64,
    /// Upper bound on the replica's staleness, in ms (`None`: unknown yet).
    pub lag_ms: Option<u64>,
}

/// One replica on a node, as `KvRequest::ReplicaStatus` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The owner cluster.
    pub source: String,
    /// Its region.
    pub region: String,
    /// The owner revision the replica is exact at.
    pub revision: u64,
    /// The highest owner revision known.
    pub owner_head: u64,
    /// Owner revisions the replica lacks.
    pub lag_revisions: u64,
    /// Upper bound on its staleness, in ms.
    pub lag_ms: Option<u64>,
    /// `bootstrapping`, `live` or `gap`.
    pub phase: String,
    /// Checkpoints loaded since the node started.
    pub checkpoints_loaded: u64,
    /// Change sets applied since the node started.
    pub sets_applied: u64,
    /// The last error, if the last import step failed.
    pub error: Option<String>,
}
