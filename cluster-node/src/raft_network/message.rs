//! The messages of `aspen/raft/2` and their encoding: openraft's AppendEntries and Vote
//! RPCs and their answers (snapshots travel on `aspen/snapshot/1`), behind the format version [`RAFT_FORMAT`] (see `aspen_api::codec`). openraft's
//! message types carry no shape-changing serde attributes (checked in its 0.9.25 sources),
//! and the round-trip property test below covers every variant with arbitrary contents.

use aspen_api::codec::{CodecError, Format};
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};

use crate::raft_types::{NodeId, TypeConfig};

/// Largest Raft message: a full AppendEntries batch, with headroom.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The encoding of every `aspen/raft/2` message. Appending a variant to [`RaftRequest`] or
/// [`RaftAnswer`] is compatible; any other change (openraft's types included) bumps it.
/// Version 2: entries carry the leader's time (log entry format 2).
/// Version 3: no InstallSnapshot chunks (snapshots go whole on `aspen/snapshot/1`).
pub const RAFT_FORMAT: Format = Format::new("aspen/raft/2 message", 3);

/// A Raft RPC.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftAnswer {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// The request could not be decoded or was refused.
    Refused(String),
}

/// Encodes a message.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    RAFT_FORMAT.encode(value)
}

/// Decodes a message.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    RAFT_FORMAT.decode(bytes)
}

#[cfg(test)]
mod tests {
    use openraft::error::Fatal;
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::{entry, log_id, vote};

    fn request() -> impl Strategy<Value = RaftRequest> {
        let append = (
            vote(),
            option::of(log_id()),
            vec(entry(), 0..3),
            option::of(log_id()),
        )
            .prop_map(|(vote, prev_log_id, entries, leader_commit)| {
                RaftRequest::AppendEntries(AppendEntriesRequest {
                    vote,
                    prev_log_id,
                    entries,
                    leader_commit,
                })
            });
        let vote_req = (vote(), option::of(log_id()))
            .prop_map(|(vote, last_log_id)| RaftRequest::Vote(VoteRequest { vote, last_log_id }));
        prop_oneof![append, vote_req]
    }

    fn fatal() -> impl Strategy<Value = Fatal<NodeId>> {
        any::<bool>().prop_map(|p| if p { Fatal::Panicked } else { Fatal::Stopped })
    }

    fn append_answer() -> impl Strategy<Value = RaftAnswer> {
        // openraft's answers are not Clone, so each is built from a variant selector and
        // arbitrary parts rather than from `Just` values.
        (0u8..5, option::of(log_id()), vote(), fatal()).prop_map(|(variant, log, vote, fatal)| {
            RaftAnswer::AppendEntries(match variant {
                0 => Ok(AppendEntriesResponse::Success),
                1 => Ok(AppendEntriesResponse::PartialSuccess(log)),
                2 => Ok(AppendEntriesResponse::Conflict),
                3 => Ok(AppendEntriesResponse::HigherVote(vote)),
                _ => Err(RaftError::Fatal(fatal)),
            })
        })
    }

    fn vote_answer() -> impl Strategy<Value = RaftAnswer> {
        (
            any::<bool>(),
            vote(),
            any::<bool>(),
            option::of(log_id()),
            fatal(),
        )
            .prop_map(|(ok, vote, vote_granted, last_log_id, fatal)| {
                RaftAnswer::Vote(if ok {
                    Ok(VoteResponse {
                        vote,
                        vote_granted,
                        last_log_id,
                    })
                } else {
                    Err(RaftError::Fatal(fatal))
                })
            })
    }

    fn answer() -> impl Strategy<Value = RaftAnswer> {
        prop_oneof![
            append_answer(),
            vote_answer(),
            "\\PC{0,16}".prop_map(RaftAnswer::Refused),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        // openraft's messages do not all implement PartialEq; their Debug output shows
        // every field, so equal Debug text and equal re-encoded bytes mean an exact trip.
        #[test]
        fn every_raft_request_round_trips(request in request()) {
            let bytes = encode(&request);
            let back: RaftRequest = decode(&bytes).unwrap();
            prop_assert_eq!(format!("{back:?}"), format!("{request:?}"));
            prop_assert_eq!(encode(&back), bytes);
        }

        #[test]
        fn every_raft_answer_round_trips(answer in answer()) {
            let bytes = encode(&answer);
            let back: RaftAnswer = decode(&bytes).unwrap();
            prop_assert_eq!(format!("{back:?}"), format!("{answer:?}"));
            prop_assert_eq!(encode(&back), bytes);
        }
    }
}
