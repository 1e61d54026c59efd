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

/// The answer a batch gives a read whose result did not fit in the batch's answer (see
/// [`encode_response`]). The read was not lost: send it again on its own, where it fits.
pub fn read_left_out_of_batch() -> KvResponse {
    KvResponse::Error(read_left_out_error())
}

/// The error of [`read_left_out_of_batch`].
pub fn read_left_out_error() -> ApiError {
    ApiError::new(
        crate::ErrorCode::TooLarge,
        "this read's result did not fit in its batch's answer; send it on its own",
    )
}

/// Whether `answer`, given to a read inside a batch, is [`read_left_out_of_batch`].
/// (A read on its own never gets `too_large`: its result always fits in a message.)
pub fn is_read_left_out_of_batch(answer: &KvResponse) -> bool {
    matches!(answer, KvResponse::Error(e) if e.code == crate::ErrorCode::TooLarge)
}

/// Encodes a node's answer within [`MAX_WIRE_MESSAGE_BYTES`], whatever it holds.
///
/// A batch answer that would be too large keeps every write's answer (small, and the
/// only record of whether the write was applied) and gives its largest read results
/// [`read_left_out_of_batch`] instead, largest first, until it fits. Any other answer
/// that is too large becomes a `too_large` error.
pub fn encode_response(response: KvResponse) -> Vec<u8> {
    let too_large = |len: usize| {
        KvResponse::Error(ApiError::new(
            crate::ErrorCode::TooLarge,
            format!(
                "the answer ({}) exceeds the message limit of {MAX_WIRE_MESSAGE_BYTES} bytes",
                if len > 0 {
                    format!("{len} bytes")
                } else {
                    "size unknown".to_string()
                }
            ),
        ))
    };
    let len = match encode(&response) {
        Ok(bytes) => return bytes,
        Err(WireError::TooLarge { len, .. }) => len,
        Err(WireError::Malformed(_)) => 0,
    };
    if let KvResponse::Batch(mut answers) = response {
        let mut reads: Vec<(usize, usize)> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, KvResponse::Read(_)))
            .map(|(i, a)| (postcard::to_stdvec(a).map_or(usize::MAX, |b| b.len()), i))
            .collect();
        reads.sort_unstable_by(|a, b| b.cmp(a));
        let left_out = postcard::to_stdvec(&read_left_out_of_batch()).map_or(0, |b| b.len());
        let mut total = len;
        for (size, i) in reads {
            if total <= MAX_WIRE_MESSAGE_BYTES {
                break;
            }
            answers[i] = read_left_out_of_batch();
            total = total.saturating_sub(size) + left_out;
        }
        if let Ok(bytes) = encode(&KvResponse::Batch(answers)) {
            return bytes;
        }
    }
    encode(&too_large(len)).expect("a short error always fits")
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

    fn big_read(bytes: usize) -> KvResponse {
        KvResponse::Read(ReadResponse {
            result: crate::types::ReadResult::Get(Some(crate::KvEntry {
                key: "k".into(),
                value: vec![7; bytes],
                create_revision: 1,
                mod_revision: 1,
                version: 1,
            })),
            revision: 1,
            applied_index: 1,
            known_commit_index: 1,
            since_leader_contact_ms: None,
        })
    }

    fn written() -> KvResponse {
        KvResponse::Write(WriteResult {
            outcome: crate::WriteOutcome::Applied { deleted: 0 },
            revision: 9,
        })
    }

    #[test]
    fn a_batch_answer_that_fits_is_encoded_whole() {
        let mib = 1024 * 1024;
        let answer = KvResponse::Batch(vec![written(), big_read(mib), big_read(mib)]);
        let bytes = encode_response(answer.clone());
        assert_eq!(decode::<KvResponse>(&bytes).unwrap(), answer);
    }

    #[test]
    fn an_oversized_batch_answer_keeps_every_write_and_leaves_out_only_the_largest_reads() {
        let mib = 1024 * 1024;
        // 16 reads just under 1 MiB and one just over: together over the 16 MiB message
        // limit by less than the largest, so exactly that one is left out; the writes
        // around them are all kept.
        let mut answers = vec![written()];
        answers.extend((0..16).map(|_| big_read(mib - 4096)));
        answers.push(big_read(mib + 10));
        answers.push(written());
        let bytes = encode_response(KvResponse::Batch(answers.clone()));
        assert!(bytes.len() <= MAX_WIRE_MESSAGE_BYTES);
        let KvResponse::Batch(back) = decode::<KvResponse>(&bytes).unwrap() else {
            panic!("still a batch answer");
        };
        assert_eq!(back.len(), answers.len());
        assert_eq!(back[0], written());
        assert_eq!(back[18], written());
        assert!(is_read_left_out_of_batch(&back[17]), "the largest read");
        // Compared without printing: a failure would print megabytes.
        assert!(back[1..17] == answers[1..17], "every other read kept");
    }

    #[test]
    fn truncated_bytes_are_a_malformed_message_not_a_panic() {
        let bytes = encode(&KvRequest::Write(Command::Delete { key: "k".into() })).unwrap();
        let err = decode::<KvRequest>(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)));
    }
}
