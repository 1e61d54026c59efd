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

/// Longest Raft election timeout (`election_timeout_max_ms`), in milliseconds. After a
/// leader dies its cluster refuses writes for up to this long, so over a minute is never
/// what an operator wants; the bound also keeps what nodes derive from it (the shortest
/// lease, 1.5 election timeouts, and timer deadlines) far from overflowing.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 60_000;

/// Most applied entries between two snapshots (`snapshot_every_logs`), and most entries
/// kept after one (`logs_kept_after_snapshot`). The log between snapshots stays on disk
/// and a member that falls behind receives it entry by entry, so a value past this (1,000
/// times the default of 10,000; up to tens of GiB of log at 4 MiB commands) is a typo, not
/// a choice: past it the log would in effect never be trimmed.
pub const MAX_SNAPSHOT_LOGS: u64 = 10_000_000;

/// Most log entries one AppendEntries RPC may carry. A follower appends and fsyncs a batch
/// in one go and a heartbeat queued behind it waits; 4096 small KV entries is a few MiB,
/// enough for a lagging follower to catch up quickly without starving heartbeats.
pub const MAX_PAYLOAD_ENTRIES_LIMIT: u64 = 4096;

/// Longest cluster name, and longest region name, in characters. Both appear in route
/// tables, metric labels, log lines and data paths; 64 is room for `region-purpose-n`
/// names and keeps those short.
pub const MAX_CLUSTER_NAME_LEN: usize = 64;

/// Most direct addresses one peer may list. A host has a few (IPv4, IPv6, a LAN address),
/// and iroh may dial each of them; a long list is almost certainly a mistake.
pub const MAX_PEER_ADDRS: usize = 8;

/// Longest route prefix, in bytes: the longest key the API accepts
/// (`aspen_api::limits::MAX_KEY_BYTES`, restated here because config depends on no other
/// Aspen crate). A longer prefix could match no key at all, so it can only be a mistake.
pub const MAX_ROUTE_PREFIX_BYTES: usize = 1024;

/// Most `[[routes]]` one router config may list. Every router holds the whole table and
/// `GET /v1/routes` returns it in one response; 4096 prefixes of at most
/// [`MAX_ROUTE_PREFIX_BYTES`] bound that at 4 MiB. It is also far more prefixes than
/// people maintain by hand: 16 per cluster with [`MAX_ROUTER_CLUSTERS`] clusters.
pub const MAX_ROUTES: usize = 4096;

/// Most `[[clusters]]` one router config may list. A scan of the empty prefix fans out to
/// every cluster at once, and the router tracks the leader of each and keeps connections
/// to its members; 256 bounds one scan at 256 concurrent cluster requests while leaving
/// room for the tens to hundreds of small clusters Aspen is built around.
pub const MAX_ROUTER_CLUSTERS: usize = 256;

/// Shortest request deadline a router accepts, in milliseconds. Hiding a leader change is
/// the router's job, and with default Raft timing an election takes up to the 800 ms
/// maximum election timeout plus a vote round trip: a deadline under a second would turn
/// every leader change into a 503 instead of a retry.
pub const MIN_REQUEST_DEADLINE_MS: u64 = 1_000;

/// Longest request deadline a router accepts, in milliseconds (5 minutes). A request that
/// waits longer holds one of the cluster's in-flight slots and a client connection for
/// nothing: its caller, or a proxy in between, has given up long before.
pub const MAX_REQUEST_DEADLINE_MS: u64 = 300_000;

/// Highest `max_in_flight_per_cluster` a router accepts. A cluster commits writes through
/// one leader at a few thousand per second, so 4096 outstanding requests are already
/// about a second of its work; a higher cap only queues latency and memory inside the
/// router instead of pushing back on clients with a 503.
pub const MAX_IN_FLIGHT_PER_CLUSTER_LIMIT: usize = 4096;

/// Fewest revisions the change feed keeps. A watcher or an exporting leader resumes from a
/// revision a few round trips old; under 1000 a short stall under load would already force
/// it to resync from scratch.
pub const MIN_FEED_RETAIN_REVISIONS: u64 = 1_000;

/// Most revisions the change feed keeps. The feed holds every changed value again, and a
/// snapshot carries the kept part of it: 10 million small changes is a few GB.
pub const MAX_FEED_RETAIN_REVISIONS: u64 = 10_000_000;

/// Shortest time the change feed keeps changes, in seconds: long enough to ride out a
/// leader change or a restart of whoever reads it.
pub const MIN_FEED_RETAIN_SECONDS: u64 = 60;

/// Longest time the change feed keeps changes, in seconds (30 days): past that, resyncing
/// from a checkpoint is cheaper than keeping the history.
pub const MAX_FEED_RETAIN_SECONDS: u64 = 30 * 24 * 3_600;

/// Shortest pause between two collections of unreferenced blobs, in seconds.
pub const MIN_BLOB_COLLECT_SECS: u64 = 1;

/// Longest pause between two collections of unreferenced blobs, in seconds (a day): the
/// disk of overwritten large values must come back within the day.
pub const MAX_BLOB_COLLECT_SECS: u64 = 24 * 3_600;

/// Most endpoints one `[[federation.export]]` entry may list as readers: every node of
/// four full clusters in that region, far more than the few clusters per region that
/// import in practice, while keeping the allow-list checked at each connection small.
pub const MAX_FEDERATION_READERS: usize = 4 * MAX_CLUSTER_NODES;

/// Most endpoint ids one node may list in `kv_clients`: every router of every region
/// plus tools, one identity each, with room to spare. The list is a set checked at each
/// connection, so its size costs nothing per request.
pub const MAX_KV_CLIENTS: usize = 1_024;

/// Most tokens one `[auth]` table may list. Each request's token is compared with every
/// one (in constant time), so the list stays small.
pub const MAX_AUTH_TOKENS: usize = 256;

/// Most key prefixes one token may list under `read`, and as many under `write`.
pub const MAX_GRANTS_PER_TOKEN: usize = 64;

/// Most clusters one node may import. Each import is one document synced and one replica
/// kept; a region reading the whole federation imports every other region's clusters, and
/// 256 is the most clusters a route table names.
pub const MAX_FEDERATION_IMPORTS: usize = MAX_ROUTER_CLUSTERS;

/// Fewest segment bytes after a checkpoint that may trigger the next one
/// (`[federation] checkpoint_replay_bytes`): below this a cluster under writes would
/// rebuild its checkpoint about every segment.
pub const MIN_CHECKPOINT_REPLAY_BYTES: u64 = 64 * 1024;

/// Most segment bytes after a checkpoint before the next one: a new region replays up to
/// this much (and at most as much as the checkpoint holds) after loading the checkpoint.
pub const MAX_CHECKPOINT_REPLAY_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// The default of `checkpoint_replay_bytes`: replaying 64 MiB takes a few seconds.
pub const DEFAULT_CHECKPOINT_REPLAY_BYTES: u64 = 64 * 1024 * 1024;

/// Segments in one group of a federation document's ring: the unit the exporter deletes
/// (one prefix delete, one tombstone) before reusing slots. `segment_slots` is a multiple of
/// it.
pub const SEGMENT_GROUP_SLOTS: u64 = 64;

/// Fewest segment slots in a federation document's ring (`[federation] segment_slots`):
/// two groups. The exporter deletes a whole group before reusing its slots; with a single
/// group it would delete every segment after the checkpoint at once, and importers just
/// behind would always have to load the checkpoint.
pub const MIN_SEGMENT_SLOTS: u64 = 2 * SEGMENT_GROUP_SLOTS;

/// Most segment slots in a federation document's ring: 1,024 groups. iroh-docs holds a
/// whole document in memory for a first sync (about 200 bytes per entry, so about 13 MB
/// here) and the blob collector walks every entry each run; more history than this is
/// better served by a checkpoint.
pub const MAX_SEGMENT_SLOTS: u64 = 1_024 * SEGMENT_GROUP_SLOTS;

/// The default ring: 4,096 segments, minutes of history at 1,000 writes/s (about 200 s,
/// docs/BENCHMARKS.md) and far more when writes are sparse.
pub const DEFAULT_SEGMENT_SLOTS: u64 = 4_096;

const _: () = assert!(DEFAULT_SEGMENT_SLOTS.is_multiple_of(SEGMENT_GROUP_SLOTS));
const _: () = assert!(MAX_SEGMENT_SLOTS / SEGMENT_GROUP_SLOTS <= u16::MAX as u64);
