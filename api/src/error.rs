//! Errors of the public contract. Every error a user can see has a stable code, an HTTP
//! status, and a message that says what was wrong and what to do.

use serde::{Deserialize, Serialize};

/// The stable error codes of the HTTP API (`{"error": {"code": ..., "message": ...}}`).
///
/// A wire type (it travels in `aspen/kv/2` answers by variant index): append new codes at
/// the end and bump the wire format version. Its JSON name is [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 400: the request is malformed or breaks a limit other than size.
    BadRequest,
    /// 404: the key (or path) does not exist.
    NotFound,
    /// 409: a precondition did not hold; nothing was changed.
    PreconditionFailed,
    /// 413: a value or request is larger than its limit.
    TooLarge,
    /// 422: the keys of one command belong to different clusters.
    CrossCluster,
    /// 503: the cluster cannot be reached or has lost its quorum.
    ClusterUnavailable,
    /// 503: the cluster has no leader right now (an election is under way); retry.
    NoLeader,
    /// 504: the outcome is unknown: the request timed out, or the node stopped while a
    /// write was in flight. The write may or may not have been applied.
    Timeout,
    /// 500: a fault inside the server (storage failure); the message says which.
    Internal,
    /// 503: a stale read of a federation replica could not meet its bound: every local
    /// replica is further behind than `max_lag` allows, or behind a revision this router
    /// already returned. Retry, or read with `consistency=linearizable` from the owner.
    ReplicaBehind,
    /// 503: no replica of the owning cluster can serve here (none imported in this region,
    /// or still bootstrapping).
    ReplicaUnavailable,
    /// 410: a watch asked for revisions the change feed no longer keeps; the message
    /// names the oldest one still kept. Start again from a read of the current state.
    Compacted,
    /// A watch was closed because its client did not read the events fast enough (its
    /// buffer filled); resume from the last revision it received.
    SlowWatcher,
    /// 503: the server is at a limit of concurrent work (such as watchers); retry later
    /// or elsewhere.
    Overloaded,
    /// 404: the lease does not exist: never granted, revoked, or expired. Its keys are
    /// gone (or going); grant a new lease.
    LeaseNotFound,
    /// 401: the server requires a bearer token and the request had none, or one it does
    /// not know. Send `Authorization: Bearer TOKEN`.
    Unauthorized,
    /// 403: the request's token does not grant what the request does (a key outside its
    /// prefixes, a write with a read-only grant, an admin endpoint); nothing changed.
    Forbidden,
    /// 405: the path exists but does not take the request's method; the `Allow` header
    /// lists those it takes.
    MethodNotAllowed,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound | ErrorCode::LeaseNotFound => 404,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PreconditionFailed => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::CrossCluster => 422,
            ErrorCode::ClusterUnavailable
            | ErrorCode::NoLeader
            | ErrorCode::ReplicaBehind
            | ErrorCode::ReplicaUnavailable
            | ErrorCode::Overloaded => 503,
            ErrorCode::Compacted => 410,
            ErrorCode::SlowWatcher => 429,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::CrossCluster => "cross_cluster",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::ReplicaBehind => "replica_behind",
            ErrorCode::ReplicaUnavailable => "replica_unavailable",
            ErrorCode::Compacted => "compacted",
            ErrorCode::SlowWatcher => "slow_watcher",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = String;

    /// Parses the JSON name of a code.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
            .ok_or_else(|| format!("unknown error code {name:?}"))
    }
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::PreconditionFailed,
        ErrorCode::TooLarge,
        ErrorCode::CrossCluster,
        ErrorCode::ClusterUnavailable,
        ErrorCode::NoLeader,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::ReplicaBehind,
        ErrorCode::ReplicaUnavailable,
        ErrorCode::Compacted,
        ErrorCode::SlowWatcher,
        ErrorCode::Overloaded,
        ErrorCode::LeaseNotFound,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::MethodNotAllowed,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the API reports it: a code and a human message. A wire type (in
/// `aspen/kv/2` answers); its JSON shape is `json::ErrorDetail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl ApiError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }
}

/// A request that breaks a rule of the data model. Nothing is changed when one is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Keys are 1 or more bytes.
    #[error("key is empty: keys are 1 to {max} bytes of UTF-8", max = crate::limits::MAX_KEY_BYTES)]
    EmptyKey,
    /// Key longer than the limit.
    #[error("key is {len} bytes, more than the limit of {max}: use a shorter key")]
    KeyTooLarge { len: usize, max: usize },
    /// Value longer than the inline limit.
    #[error("value is {len} bytes, more than the inline limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    /// A value kept as a blob larger than its limit.
    #[error("value is {size} bytes, more than the limit of {max} bytes for one value")]
    BlobTooLarge { size: u64, max: u64 },
    /// Too many keys in one command.
    #[error("command names {count} keys (writes, deletes and preconditions), more than the limit of {max}: split it")]
    TooManyKeys { count: usize, max: usize },
    /// Too many value bytes in one command.
    #[error("command carries {len} value bytes, more than the limit of {max}: split it")]
    CommandTooLarge { len: usize, max: usize },
    /// The same key written or deleted twice in one command.
    #[error("key {key:?} is written or deleted more than once in one command")]
    DuplicateKey { key: String },
    /// A multi-key command with nothing in it.
    #[error("command names no keys: give at least one write, delete or precondition")]
    NoKeys,
    /// A scan limit outside 1..=max.
    #[error("scan limit {limit} is out of range: use 1 to {max}")]
    ScanLimit { limit: usize, max: usize },
    /// A request field that is missing, malformed or contradictory.
    #[error("field `{field}`: {reason}")]
    BadField { field: String, reason: String },
}

impl ValidationError {
    /// A [`ValidationError::BadField`].
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ValidationError::BadField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        let code = match err {
            ValidationError::ValueTooLarge { .. }
            | ValidationError::CommandTooLarge { .. }
            | ValidationError::BlobTooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        };
        ApiError::new(code, err.to_string())
    }
}
