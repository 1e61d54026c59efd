//! The bounds config validation enforces. Each constant says why it is that number, so a
//! change to one is a decision about the system and not a tweak to make a test pass.

/// Most members (voters and learners) one cluster may have, this node included; the same
/// bound as `aspen_api::limits::MAX_CLUSTER_NODES`. The leader sends every write to every
/// member, so each member adds leader work per write; five voters already survive two
/// failures, and 64 leaves room for learners and replacements without unbounded fan-out.
pub const MAX_CLUSTER_NODES: usize = 64;

/// Most `[[peers]]` one node's config may list: every other member of a cluster of
/// [`MAX_CLUSTER_NODES`], which is that bound minus this node itself.
pub const MAX_CLUSTER_PEERS: usize = MAX_CLUSTER_NODES - 1;

/// Shortest Raft heartbeat interval, in milliseconds. Below 10 ms, timer and scheduler
/// jitter (a few ms on a busy host) is a large part of the interval, so followers would
/// see late heartbeats as a dead leader, and the traffic buys no faster failover.
pub const MIN_HEARTBEAT_INTERVAL_MS: u64 = 10;

/// Most log entries one AppendEntries RPC may carry. A follower appends and fsyncs a batch
/// in one go and a heartbeat queued behind it waits; 4096 small KV entries is a few MiB,
/// enough for a lagging follower to catch up quickly without starving heartbeats.
pub const MAX_PAYLOAD_ENTRIES_LIMIT: u64 = 4096;

/// Longest cluster name, in characters. The name appears in route tables, metric labels,
/// log lines and data paths; 64 is room for `region-purpose-n` names and keeps those short.
pub const MAX_CLUSTER_NAME_LEN: usize = 64;

/// Most direct addresses one peer may list. A host has a few (IPv4, IPv6, a LAN address),
/// and iroh may dial each of them; a long list is almost certainly a mistake.
pub const MAX_PEER_ADDRS: usize = 8;
