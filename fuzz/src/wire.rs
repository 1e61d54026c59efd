//! The binary messages of Aspen's iroh protocols, decoded with the functions the serving
//! and requesting sides call: `aspen_api::wire::decode` (a node decoding a request, a
//! router or forwarding node decoding an answer) and the `aspen/raft/2` decoder of
//! `aspen_cluster_node::raft_network::message`.
//!
//! Whatever decodes must encode again, and the encoding must decode to the same value
//! (and encode to the same bytes): the codec is a bijection between values and their
//! canonical bytes, so a node and its peer never disagree about what a message says.

use aspen_api::wire::{self, KvRequest, KvResponse, MAX_WIRE_MESSAGE_BYTES};
use aspen_cluster_node::raft_network::message::{self, RaftAnswer, RaftRequest};
use aspen_cluster_node::raft_network::MAX_RAFT_MESSAGE_BYTES;

/// `aspen/kv/2`: the bytes as a request a node decodes and as an answer a router decodes.
pub fn kv_message(data: &[u8]) {
    // The framing refuses a longer message before reading it.
    if data.len() > MAX_WIRE_MESSAGE_BYTES {
        return;
    }
    if let Ok(request) = wire::decode::<KvRequest>(data) {
        kv_round_trip(&request);
        check_request(&request);
    }
    if let Ok(answer) = wire::decode::<KvResponse>(data) {
        kv_round_trip(&answer);
        // The node's own encoding of an answer (fitting a batch into one message) must
        // give bytes a router decodes.
        let fitted = wire::encode_response(answer);
        wire::decode::<KvResponse>(&fitted).expect("a node's fitted answer decodes");
    }
}

/// Decode, encode, decode: the same value, and the same bytes from both encodings.
fn kv_round_trip<T: wire::Message + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = wire::encode(value).expect("a decoded message is within the size limit");
    let back: T = wire::decode(&bytes).expect("an encoded message decodes");
    assert_eq!(&back, value, "decode(encode(m)) != m");
    assert_eq!(wire::encode(&back).expect("encodes"), bytes);
}

/// Runs the checks a node runs on a request before it acts on it: they must refuse with
/// an error, never panic.
fn check_request(request: &KvRequest) {
    match request {
        KvRequest::Write(command) => {
            let _ = command.validate();
            let _ = command.payload_bytes();
        }
        KvRequest::Read { request, .. } => {
            let _ = request.validate();
        }
        KvRequest::ReplicaRead(read) => {
            let _ = read.request.validate();
        }
        KvRequest::Batch(requests) => requests.iter().for_each(check_request),
        _ => {}
    }
}

/// `aspen/raft/2`: the bytes as an RPC a member decodes and as the answer its sender
/// decodes. openraft's types are not all `PartialEq`; their `Debug` text shows every
/// field, so equal text and equal re-encoded bytes mean the same value.
pub fn raft_message(data: &[u8]) {
    if data.len() > MAX_RAFT_MESSAGE_BYTES {
        return;
    }
    if let Ok(request) = message::decode::<RaftRequest>(data) {
        raft_round_trip(&request);
    }
    if let Ok(answer) = message::decode::<RaftAnswer>(data) {
        raft_round_trip(&answer);
    }
}

fn raft_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let bytes = message::encode(value);
    let back: T = message::decode(&bytes).expect("an encoded Raft message decodes");
    assert_eq!(
        format!("{back:?}"),
        format!("{value:?}"),
        "decode(encode(m)) != m"
    );
    assert_eq!(message::encode(&back), bytes);
}
