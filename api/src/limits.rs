//! Every limit of the public API, in one place. Each is enforced where input enters the
//! system (the HTTP layer and the `aspen/kv/2` server) with an error that names it.

/// Longest key, in bytes of UTF-8. Keys are the unit of routing and indexing; 1 KiB is
/// the same bound etcd's users live with and keeps scans and Raft entries small.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value stored inline in the Raft log. Every byte of a value is replicated to
/// every member and fsynced on each, so a bigger value goes to the blob store and the log
/// holds only its reference.
pub const MAX_INLINE_VALUE_BYTES: usize = 1024 * 1024;

/// Largest value, kept as a blob (DESIGN.md, "Limits"). A blob's bytes are never held whole
/// in memory, so the bound is about disk and transfer time, not RAM.
pub const MAX_BLOB_VALUE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Most keys one multi-key command may touch, counting writes, deletes and precondition
/// keys. One command is one Raft entry; a bound keeps entries and their apply time small.
pub const MAX_KEYS_PER_COMMAND: usize = 100;

/// Most value bytes one command may carry in total. A single Raft entry travels whole in
/// one AppendEntries message; 4 MiB keeps heartbeats behind it from being delayed long.
pub const MAX_COMMAND_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Largest JSON request body accepted. Values in JSON may be base64 (4/3 larger), so this
/// is twice the command bound.
pub const MAX_JSON_BODY_BYTES: usize = 2 * MAX_COMMAND_VALUE_BYTES;

/// Scan page size when the request names none.
pub const DEFAULT_SCAN_LIMIT: usize = 1_000;

/// Largest scan page. Bigger pages hold a read transaction and a response buffer for too
/// long; clients page with the continuation token instead.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// Most members (voters and learners) in one cluster.
pub const MAX_CLUSTER_NODES: usize = 64;

/// Most value bytes in one scan page. A page stops early (with `more = true`) once it
/// holds this much, so a page of large values cannot exhaust memory or a wire message.
pub const MAX_SCAN_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Largest encoded `aspen/kv/2` message: the largest command or scan page above plus
/// room for its encoding.
pub const MAX_WIRE_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Largest staleness bound a stale read may ask for (`max_lag`), in ms: one day. A looser
/// bound is no bound; leave `max_lag` out instead.
pub const MAX_READ_LAG_BOUND_MS: u64 = 24 * 3_600 * 1_000;

/// Most watches (streams and blocking reads) one process serves at once. Each holds a
/// task, a connection and a buffer; beyond this a new one is refused with 503
/// `overloaded` and those already open keep their speed.
pub const MAX_WATCHERS: usize = 4_096;

/// Most revisions buffered for one watcher whose client has not read them yet. A client
/// that falls this far behind is sent `slow_watcher` and closed, so it can never hold up
/// writes or grow the server's memory; it resumes from the last revision it received.
pub const WATCH_BUFFER_REVISIONS: usize = 1_024;

/// Most key and value bytes buffered for one watcher's unread revisions (the same rule
/// as [`WATCH_BUFFER_REVISIONS`], by size).
pub const WATCH_BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// How long a blocking read (`GET /v1/kv/{key}?index=R`) waits when it names no `wait`:
/// five minutes, as Consul's blocking queries.
pub const DEFAULT_BLOCKING_WAIT_MS: u64 = 5 * 60 * 1_000;

/// Longest `wait` a blocking read may ask for: ten minutes.
pub const MAX_BLOCKING_WAIT_MS: u64 = 10 * 60 * 1_000;

/// Longest a node holds an `aspen/kv/2` feed read open waiting for a new revision.
pub const MAX_FEED_WAIT_MS: u64 = 10_000;

/// The floor of the shortest lease TTL, in seconds; a cluster's own minimum is 1.5 of
/// its longest election timeout when that is longer (`lease::min_lease_ttl_secs`).
pub const MIN_LEASE_TTL_FLOOR_SECS: u64 = 1;

/// Longest lease TTL, in seconds: one day. A lease is for liveness; a longer-lived key
/// needs no lease.
pub const MAX_LEASE_TTL_SECS: u64 = 24 * 3_600;

/// Most leases one cluster holds at once. Every lease is tracked in the leader's memory
/// (its deadline) and reloaded at each leader change; a grant beyond this is refused with
/// 503 `overloaded` until leases end.
pub const MAX_LEASES: usize = 100_000;

/// Most keys attached to one lease. A lease's end deletes all its keys in one revision,
/// so the bound is the one every command has ([`MAX_KEYS_PER_COMMAND`]): each reader of
/// the change feed (watchers, federation) handles that revision like any other.
pub const MAX_KEYS_PER_LEASE: usize = MAX_KEYS_PER_COMMAND;
