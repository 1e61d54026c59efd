//! Names of the response headers of the HTTP API (DESIGN.md, "HTTP API"; docs/API.md).
//! Every read answered by one cluster carries the freshness headers below; a scan merged
//! from several clusters carries none, as no single cluster's numbers describe it.

/// Response header on reads: the cluster revision the serving node's copy had reached
/// (every change up to it is in the result).
pub const REVISION_HEADER: &str = "aspen-revision";

/// Response header on reads: the Raft log index the serving node had applied.
pub const APPLIED_INDEX_HEADER: &str = "aspen-applied-index";

/// Response header on reads: the highest log index the serving node knew to be
/// committed; minus the applied index, how many known entries its copy lacks.
pub const KNOWN_COMMIT_HEADER: &str = "aspen-known-commit-index";

/// Response header on reads: milliseconds since the serving node last heard from a
/// leader; absent when it never has.
pub const LEADER_CONTACT_HEADER: &str = "aspen-leader-contact-ms";

/// Response header on a read served by a federation replica: the owner revisions the
/// replica lacked, as far as it knew.
pub const REPLICA_LAG_REVISIONS_HEADER: &str = "aspen-replica-lag-revisions";

/// Response header on a read served by a federation replica: an upper bound on how stale
/// it was, in seconds with millisecond precision (`1.250`); absent while unknown.
pub const REPLICA_LAG_SECONDS_HEADER: &str = "aspen-replica-lag-seconds";
