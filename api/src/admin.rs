//! JSON bodies of the status and cluster-membership endpoints (`/v1/status`,
//! `/v1/cluster/*`), shared by the node's HTTP layer and the CLI.

use serde::{Deserialize, Serialize};

/// One member of a cluster as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Raft node id.
    pub node_id: u64,
    /// iroh EndpointId (hex).
    pub endpoint_id: String,
    /// Direct addresses the member is reached at.
    pub addrs: Vec<String>,
    /// `voter` or `learner`.
    pub role: String,
    /// Highest log index known to be replicated to it (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
}

/// `GET /v1/status` of a cluster node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Always `node` for a cluster node.
    pub role: String,
    /// Cluster name.
    pub cluster: String,
    /// This node's Raft id.
    pub node_id: u64,
    /// This node's iroh EndpointId (hex).
    pub endpoint_id: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub raft_state: String,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Current Raft term.
    pub term: u64,
    /// The cluster revision this node's copy has reached.
    pub applied_revision: u64,
    /// Highest Raft log index applied on this node.
    pub applied_index: u64,
    /// Highest log index on this node.
    pub last_log_index: u64,
    /// Whether the cluster has been initialized.
    pub initialized: bool,
    /// Members of the cluster.
    pub members: Vec<MemberStatus>,
    /// The federation replicas this node keeps of other regions' clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaHealth>,
    /// Where the export of this node's cluster to other regions stands, as this node sees
    /// it (absent when the cluster exports nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<Box<ExportHealth>>,
}

/// The export of a node's cluster, as `/v1/status` of that node shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHealth {
    /// Whether this node exports (it leads its cluster).
    pub active: bool,
    /// The last revision in the cluster's document: as written, on the exporting node; as
    /// this node's copy holds it, on any other.
    pub exported: u64,
    /// The latest checkpoint's revision (on the exporting node).
    pub checkpoint: Option<u64>,
    /// The next segment's sequence number (on another node: the one it would continue
    /// from if it took over).
    pub next_seq: u64,
    /// On the exporting node: the sequence number its export began at when it took over.
    pub resumed_seq: Option<u64>,
    /// Sync rounds this node started with the cluster's other nodes while not exporting.
    pub follower_syncs: u64,
    /// On another node: entries of its copy of the document whose content it could not
    /// fetch in its last round.
    pub missing_content: u64,
    /// The last error, if the last step failed.
    pub error: Option<String>,
}

/// `POST /v1/cluster/init`: start a new cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Voters of the new cluster, by node id: this node and configured peers. Empty means
    /// this node and every configured peer.
    #[serde(default)]
    pub members: Vec<u64>,
}

/// `POST /v1/cluster/add-learner`: add a node that receives the log but does not vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLearnerRequest {
    /// The new node's Raft id.
    pub node_id: u64,
    /// Its iroh EndpointId (hex).
    pub endpoint_id: String,
    /// Its direct addresses (`ip:port`).
    pub addrs: Vec<String>,
}

/// `POST /v1/cluster/promote` and `/v1/cluster/remove`: one node by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdRequest {
    /// The node's Raft id.
    pub node_id: u64,
}

/// Answer of the membership endpoints: the membership after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResponse {
    /// Members after the change.
    pub members: Vec<MemberStatus>,
}

impl ReplicaHealth {
    /// The JSON shape of a replica `host` (a cluster of this region) reported.
    pub fn reported_by(r: crate::wire::ReplicaReport, host: &str) -> Self {
        ReplicaHealth {
            source: r.source,
            region: r.region,
            host_cluster: host.to_string(),
            revision: r.revision,
            owner_head: r.owner_head,
            lag_revisions: r.lag_revisions,
            lag_seconds: r.lag_ms.map(|ms| ms as f64 / 1000.0),
            phase: r.phase,
            checkpoints_loaded: r.checkpoints_loaded,
            sets_applied: r.sets_applied,
            error: r.error,
        }
    }
}

/// `GET /v1/status` of a router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// Always `router`.
    pub role: String,
    /// The region this router runs in.
    pub region: String,
    /// Every cluster in the route table, by name.
    pub clusters: Vec<ClusterHealth>,
    /// The replicas this region keeps of other regions' clusters, per source cluster.
    #[serde(default)]
    pub replicas: Vec<ReplicaHealth>,
}

/// One source cluster's replica in a router's region, as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaHealth {
    /// The owner cluster.
    pub source: String,
    /// Its region.
    pub region: String,
    /// The cluster of this region whose node reported the replica.
    pub host_cluster: String,
    /// The owner revision the replica is exact at.
    pub revision: u64,
    /// The highest owner revision the replica knows of.
    pub owner_head: u64,
    /// Owner revisions the replica lacks.
    pub lag_revisions: u64,
    /// Upper bound on its staleness, in seconds (absent while unknown).
    pub lag_seconds: Option<f64>,
    /// `bootstrapping`, `live` or `gap`.
    pub phase: String,
    /// Checkpoints the reporting node loaded since it started.
    pub checkpoints_loaded: u64,
    /// Change sets it applied since it started.
    pub sets_applied: u64,
    /// The last import error, if the last step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One cluster as a router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    /// Cluster name.
    pub name: String,
    /// Region the cluster runs in.
    pub region: String,
    /// Whether a node answered the router's status request just now and knows a leader.
    pub healthy: bool,
    /// The leader's node id, if known.
    pub leader: Option<u64>,
    /// The Raft term reported by the node that answered.
    pub term: Option<u64>,
    /// The cluster revision the answering node's copy has reached.
    pub applied_revision: Option<u64>,
    /// Why the cluster is not healthy, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/routes` of a router: the whole table, or one key's owner with `?key=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesResponse {
    /// Every route, sorted by prefix (only the route that owns the key, with `?key=`).
    pub routes: Vec<RouteEntry>,
    /// The key asked about, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The cluster owning that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// One route: keys starting with `prefix` belong to `cluster` (longest prefix wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The key prefix (`""` matches every key).
    pub prefix: String,
    /// The owning cluster.
    pub cluster: String,
}

/// `POST /v1/debug/partition` (only on a node with `fault_injection = true`): cut the
/// node off from these peers in both directions; an empty list heals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRequest {
    /// iroh EndpointIds (hex) of the peers to cut off.
    pub blocked: Vec<String>,
}

/// A node's current snapshot: `POST /v1/cluster/snapshot` (after building one) and the
/// `aspen-snapshot-*` headers of `GET /v1/cluster/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's id (`TERM-INDEX-N`).
    pub snapshot_id: String,
    /// The last log index it includes (0: none).
    pub last_log_index: u64,
    /// The term of that entry.
    pub last_log_term: u64,
    /// Its size in bytes.
    pub bytes: u64,
}
