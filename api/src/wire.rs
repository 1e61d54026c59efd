//! The `aspen/kv/1` protocol: how routers, clients and follower nodes send KV requests to
//! a cluster node over iroh QUIC.
//!
//! Goals: one request and one response per QUIC bi-directional stream (the stream is the
//! request id, so many requests share one connection without head-of-line blocking), a
//! compact binary encoding, and a hard bound on message size.
//!
//! Non-goals: streaming large values (they will travel through iroh-blobs), and
//! authentication beyond iroh's endpoint identity.
//!
//! Framing: the requester writes one [`KvRequest`] encoded with [`encode`] and finishes
//! its send side; the server answers with one [`KvResponse`] and finishes. Either side
//! refuses a message over [`MAX_WIRE_MESSAGE_BYTES`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::admin::{AddLearnerRequest, MemberStatus, NodeStatus};
use crate::command::Command;
use crate::error::ApiError;
pub use crate::limits::MAX_WIRE_MESSAGE_BYTES;
use crate::types::{Consistency, ReadRequest, ReadResponse, WriteResult};

/// ALPN of the KV protocol, version 1.
pub const KV_ALPN: &[u8] = b"aspen/kv/1";

/// A request to a cluster node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Propose a write. The receiving node must be the leader (it never forwards again:
    /// one hop at most), else it answers `NotLeader`.
    Write(Command),
    /// A read at the given consistency. Linearizable reads also need the leader.
    Read {
        /// What to read.
        request: ReadRequest,
        /// How fresh.
        consistency: Consistency,
    },
    /// Change the cluster's membership (leader only, like writes).
    Membership(MembershipChange),
    /// The receiving node's view of its cluster (any node answers; routers poll it for
    /// health, leader and term).
    Status,
    /// Several independent writes and reads, served concurrently and answered together in
    /// order with a [`KvResponse::Batch`]: a router sends the requests that queue up for
    /// one cluster in one message. At most [`MAX_WIRE_BATCH`]; no nested batches, no
    /// membership changes.
    Batch(Vec<KvRequest>),
}

/// Most requests in one [`KvRequest::Batch`]. One stream carries them all; beyond a few
/// hundred, the per-request cost saved is negligible and one slow request holds more
/// answers back.
pub const MAX_WIRE_BATCH: usize = 256;

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a learner (it receives the log but does not vote).
    AddLearner(AddLearnerRequest),
    /// Make a learner a voter.
    Promote(u64),
    /// Remove a voter or learner.
    Remove(u64),
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    /// The write was committed and applied (or refused by a precondition).
    Write(WriteResult),
    /// The read's result.
    Read(ReadResponse),
    /// The membership after a change.
    Membership(Vec<MemberStatus>),
    /// The answer to [`KvRequest::Status`].
    Status(NodeStatus),
    /// The answers to a [`KvRequest::Batch`], one per request, in order.
    Batch(Vec<KvResponse>),
    /// This node is not the leader; `leader` is the one it knows of, if any.
    NotLeader {
        /// Raft node id of the leader, when known.
        leader: Option<u64>,
    },
    /// The request failed.
    Error(ApiError),
}

/// Errors of encoding and decoding wire messages.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message is larger than the protocol allows.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a message, refusing one larger than [`MAX_WIRE_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_stdvec(message)?;
    if bytes.len() > MAX_WIRE_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_WIRE_MESSAGE_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes a message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Precondition;

    #[test]
    fn every_command_survives_an_encode_decode_round_trip() {
        let cmd = Command::ConditionalSetMulti {
            preconditions: vec![
                Precondition::Equals {
                    key: "a".into(),
                    value: vec![0, 255, 1],
                },
                Precondition::ModRevision {
                    key: "b".into(),
                    revision: 9,
                },
            ],
            writes: vec![("c".into(), vec![0xff; 3])],
            deletes: vec!["d".into()],
        };
        let req = KvRequest::Write(cmd);
        let back: KvRequest = decode(&encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn truncated_bytes_are_a_malformed_message_not_a_panic() {
        let bytes = encode(&KvRequest::Write(Command::Delete { key: "k".into() })).unwrap();
        let err = decode::<KvRequest>(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)));
    }
}
