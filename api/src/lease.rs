//! Leases: a time to live that keys can be attached to. A key written with a lease is
//! deleted when the lease ends (revoked, or not kept alive for its TTL), and the delete is
//! an ordinary change in the feed. A lease belongs to one cluster, whose leader alone
//! decides when it expires and commits that decision through Raft.
//!
//! A lease's public id names its cluster, `us-1:0f3a…` ([`LeaseId`]), so that a router
//! can send its keep-alives to the right cluster and refuse to attach it to a key of
//! another (422 `cross_cluster`). Inside a cluster a lease is its number alone.
//!
//! - [`LeaseId`]: the public id and its parsing.
//! - [`LeaseRequest`] / [`LeaseAnswer`]: the lease operations as `aspen/kv/2` carries them.
//! - [`LeaseFailure`]: why the state machine refused a lease command.
//! - The JSON bodies of `/v1/lease`: [`GrantRequest`], [`LeaseResponse`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorCode, ValidationError};
use crate::limits::{MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_FLOOR_SECS};

/// A lease as the API names it: its cluster and its number, written `cluster:hex`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId {
    /// The cluster that granted the lease and alone can keep it.
    pub cluster: String,
    /// The lease's number inside its cluster (never 0).
    pub id: u64,
}

impl LeaseId {
    /// The lease `id` of `cluster`.
    pub fn new(cluster: impl Into<String>, id: u64) -> Self {
        LeaseId {
            cluster: cluster.into(),
            id,
        }
    }

    /// Parses the lease id given in `field`, with an error naming the field.
    pub fn parse_field(field: &str, text: &str) -> Result<LeaseId, ValidationError> {
        text.parse()
            .map_err(|reason: String| ValidationError::field(field, reason))
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:016x}", self.cluster, self.id)
    }
}

impl FromStr for LeaseId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = "a lease id is `CLUSTER:HEX` as `POST /v1/lease` returned it";
        let (cluster, hex) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not a lease id: {shape}"))?;
        if cluster.is_empty() || hex.is_empty() || hex.len() > 16 {
            return Err(format!("{text:?} is not a lease id: {shape}"));
        }
        let id = u64::from_str_radix(hex, 16)
            .map_err(|_| format!("{text:?} is not a lease id: {shape}"))?;
        if id == 0 {
            return Err(format!(
                "{text:?} is not a lease id: lease numbers are never 0"
            ));
        }
        Ok(LeaseId::new(cluster, id))
    }
}

/// The shortest TTL a cluster grants, in seconds: one and a half of its longest election
/// timeout, rounded up, and at least [`MIN_LEASE_TTL_FLOOR_SECS`]. A shorter lease could
/// expire while its keep-alives wait out an ordinary leader election.
pub fn min_lease_ttl_secs(election_timeout_max_ms: u64) -> u64 {
    (election_timeout_max_ms * 3)
        .div_ceil(2 * 1_000)
        .max(MIN_LEASE_TTL_FLOOR_SECS)
}

/// Checks a requested TTL against `min_secs` (the cluster's [`min_lease_ttl_secs`]) and
/// [`MAX_LEASE_TTL_SECS`].
pub fn validate_ttl(ttl_secs: u64, min_secs: u64) -> Result<(), ValidationError> {
    if ttl_secs < min_secs || ttl_secs > MAX_LEASE_TTL_SECS {
        return Err(ValidationError::field(
            "ttl",
            format!(
                "{ttl_secs} s is out of range: leases last {min_secs} to {MAX_LEASE_TTL_SECS} \
                 seconds (the minimum is 1.5 election timeouts of this cluster)"
            ),
        ));
    }
    Ok(())
}

/// Why the state machine refused a lease command; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseFailure {
    /// The lease does not exist (never granted, revoked, or expired).
    NotFound { lease: u64 },
    /// A grant named a lease number already in use (the granting node picks another).
    Exists { lease: u64 },
    /// The cluster holds its limit of leases.
    TooManyLeases { max: usize },
    /// Attaching the command's keys would give the lease more keys than its limit.
    TooManyKeys { lease: u64, max: usize },
}

/// A lease operation, as a node serves it (`aspen/kv/2` [`crate::wire::KvRequest::Lease`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRequest {
    /// Grant a lease of `ttl_secs`.
    Grant { ttl_secs: u64 },
    /// Restart the lease's TTL (leader only; no revision is used).
    KeepAlive { lease: u64 },
    /// The lease's TTL, what is left of it, and its keys (leader only).
    Get { lease: u64 },
    /// End the lease now, deleting its keys.
    Revoke { lease: u64 },
}

/// A node's answer to a [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// The lease's number.
    pub lease: u64,
    /// The TTL it was granted, ms.
    pub granted_ttl_ms: u64,
    /// Time left before it expires, ms, as the leader sees it (grant, keep-alive, get).
    pub remaining_ms: u64,
    /// Its keys, in key order (get only).
    pub keys: Vec<String>,
    /// The revision of the revoke's deletes (revoke only; 0 otherwise).
    pub revision: u64,
    /// How many keys the revoke deleted (revoke only).
    pub deleted: u32,
}

/// A lease operation as the HTTP API receives it (what a `KvBackend` serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// `POST /v1/lease`: grant `ttl_secs`, on the cluster owning `key` (a router needs
    /// it unless it routes to one cluster only; a node ignores it).
    Grant { ttl_secs: u64, key: Option<String> },
    /// `POST /v1/lease/{id}/keepalive`.
    KeepAlive(LeaseId),
    /// `GET /v1/lease/{id}`.
    Get(LeaseId),
    /// `DELETE /v1/lease/{id}`.
    Revoke(LeaseId),
}

/// `POST /v1/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Seconds the lease lives without a keep-alive.
    pub ttl: u64,
    /// Through a router: a key of the cluster that should hold the lease (the lease can
    /// only be attached to that cluster's keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The answer of every `/v1/lease` route; fields that do not apply are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// The lease's id, `cluster:hex`.
    pub id: String,
    /// The cluster holding it.
    pub cluster: String,
    /// Seconds left before it expires (whole seconds, rounded down); after a grant or a
    /// keep-alive, the full TTL. Absent for a revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The TTL it was granted, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_ttl: Option<u64>,
    /// Milliseconds left before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// Its keys (`GET` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// The revision of the revoke's deletes (`DELETE` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// How many keys the revoke deleted (`DELETE` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_count: Option<u32>,
}

impl LeaseResponse {
    /// The JSON answer to `op` from `answer`, given by `cluster`.
    pub fn new(op: &LeaseOp, cluster: &str, answer: &LeaseAnswer) -> Self {
        let id = LeaseId::new(cluster, answer.lease).to_string();
        let mut out = LeaseResponse {
            id,
            cluster: cluster.to_string(),
            ttl: None,
            granted_ttl: None,
            remaining_ms: None,
            keys: None,
            revision: None,
            deleted_count: None,
        };
        if let LeaseOp::Revoke(_) = op {
            out.revision = Some(answer.revision);
            out.deleted_count = Some(answer.deleted);
        } else {
            out.ttl = Some(answer.remaining_ms / 1_000);
            out.granted_ttl = Some(answer.granted_ttl_ms / 1_000);
            out.remaining_ms = Some(answer.remaining_ms);
        }
        if let LeaseOp::Get(_) = op {
            out.keys = Some(answer.keys.clone());
        }
        out
    }
}

impl LeaseFailure {
    /// The error a client sees for this failure of a command applied by `cluster`.
    pub fn to_error(&self, cluster: &str) -> ApiError {
        let id = |lease: u64| LeaseId::new(cluster, lease);
        match self {
            LeaseFailure::NotFound { lease } => ApiError::new(
                ErrorCode::LeaseNotFound,
                format!(
                    "lease {} does not exist (never granted, revoked, or expired); nothing was \
                     changed: grant a new lease",
                    id(*lease)
                ),
            ),
            LeaseFailure::Exists { lease } => ApiError::new(
                ErrorCode::Internal,
                format!("lease number {} is already in use", id(*lease)),
            ),
            LeaseFailure::TooManyLeases { max } => ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "cluster {cluster} holds its limit of {max} leases (MAX_LEASES); revoke \
                     leases or let them expire, then retry"
                ),
            ),
            LeaseFailure::TooManyKeys { lease, max } => ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "lease {} would hold more than {max} keys (MAX_KEYS_PER_LEASE); nothing \
                     was changed: attach the other keys to another lease",
                    id(*lease)
                ),
            ),
        }
    }
}

/// The refusal of a lease of `lease_cluster` used with keys or at a node of `cluster`
/// (422 `cross_cluster`).
pub fn cross_cluster(lease_cluster: &str, cluster: &str) -> ApiError {
    ApiError::new(
        ErrorCode::CrossCluster,
        format!(
            "the lease belongs to cluster {lease_cluster}, but the keys (or the node asked) \
             to cluster {cluster}: a lease holds keys of its own cluster only; grant one \
             there (POST /v1/lease with a `key` of that cluster)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_print_and_parse_back() {
        let id = LeaseId::new("us-1", 0x0f3a);
        assert_eq!(id.to_string(), "us-1:0000000000000f3a");
        assert_eq!("us-1:0000000000000f3a".parse::<LeaseId>(), Ok(id));
        assert_eq!(
            "a:ffffffffffffffff".parse::<LeaseId>().unwrap().id,
            u64::MAX
        );
    }

    #[test]
    fn malformed_lease_ids_are_refused() {
        for bad in [
            "",
            "us-1",
            ":12",
            "us-1:",
            "us-1:0",
            "us-1:xyz",
            "a:10000000000000000",
        ] {
            assert!(bad.parse::<LeaseId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_minimum_ttl_follows_the_election_timeout() {
        assert_eq!(min_lease_ttl_secs(800), 2);
        assert_eq!(min_lease_ttl_secs(2_000), 3);
        assert_eq!(min_lease_ttl_secs(100), MIN_LEASE_TTL_FLOOR_SECS);
    }

    #[test]
    fn ttls_are_checked_at_both_ends() {
        assert!(validate_ttl(2, 2).is_ok());
        assert!(validate_ttl(1, 2).is_err());
        assert!(validate_ttl(MAX_LEASE_TTL_SECS, 2).is_ok());
        assert!(validate_ttl(MAX_LEASE_TTL_SECS + 1, 2).is_err());
    }
}
