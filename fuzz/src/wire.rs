//! The binary messages of Aspen's iroh protocols, decoded with the functions the serving
//! and requesting sides call: `aspen_api::wire::decode` (a node decoding a request, a
//! router or forwarding node decoding an answer), the `aspen/raft/2` decoder of
//! `aspen_cluster_node::raft_network::message`, and `aspen/snapshot/1`'s offers, replies
//! and snapshot streams.
//!
//! Whatever decodes must encode again, and the encoding must decode to the same value
//! (and encode to the same bytes): the codec is a bijection between values and their
//! canonical bytes, so a node and its peer never disagree about what a message says.

use aspen_api::wire::{self, KvRequest, KvResponse, MAX_WIRE_MESSAGE_BYTES};
use aspen_cluster_node::raft_network::message::{self, RaftAnswer, RaftRequest};
use aspen_cluster_node::raft_network::snapshot::{
    Offer, Reply, MAX_OFFER_BYTES, MAX_REPLY_BYTES, SNAPSHOT_FORMAT,
};
use aspen_cluster_node::raft_network::MAX_RAFT_MESSAGE_BYTES;
use aspen_cluster_node::storage::snapshot::stream::{Item, StreamReader, StreamWriter};
use aspen_federation::push;

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

/// `aspen/snapshot/1`: the bytes as a leader's offer (which a follower decodes) and as a
/// follower's reply (which the leader decodes), round-tripped as above; and as a snapshot
/// stream, the bytes that follow an offer, which a follower reads through before it
/// installs anything (and `aspen snapshot inspect` and `restore` read from a file).
pub fn snapshot(data: &[u8]) {
    if data.len() <= MAX_OFFER_BYTES {
        if let Ok(offer) = SNAPSHOT_FORMAT.decode::<Offer>(data) {
            let bytes = SNAPSHOT_FORMAT.encode(&offer);
            let back: Offer = SNAPSHOT_FORMAT
                .decode(&bytes)
                .expect("an encoded offer decodes");
            assert_eq!(back, offer, "decode(encode(offer)) != offer");
            assert_eq!(SNAPSHOT_FORMAT.encode(&back), bytes);
        }
    }
    if data.len() <= MAX_REPLY_BYTES {
        if let Ok(reply) = SNAPSHOT_FORMAT.decode::<Reply>(data) {
            let bytes = SNAPSHOT_FORMAT.encode(&reply);
            let back: Reply = SNAPSHOT_FORMAT
                .decode(&bytes)
                .expect("an encoded reply decodes");
            assert_eq!(back, reply, "decode(encode(reply)) != reply");
        }
    }
    snapshot_stream(data);
}

/// A stream the reader accepts whole is written again from what it read, and that reads
/// back to the same metadata, header, records and counts: what a follower installs is
/// what the leader's builder wrote.
fn snapshot_stream(data: &[u8]) {
    let Ok(mut reader) = StreamReader::open(data) else {
        return;
    };
    let mut items = Vec::new();
    loop {
        match reader.next_item() {
            Ok(Some(item)) => items.push(item),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let mut writer = StreamWriter::start(Vec::new(), reader.meta(), reader.header())
        .expect("writing to memory cannot fail");
    for item in items.iter().cloned() {
        match item {
            Item::Key(key) => writer.key(key),
            Item::Change(set) => writer.change(set),
            Item::Lease(lease) => writer.lease(lease),
        }
        .expect("a record the reader accepted is written again");
    }
    let bytes = writer.finish().expect("writing to memory cannot fail");
    let mut again = StreamReader::open(&bytes[..]).expect("a written stream opens");
    assert_eq!(again.meta(), reader.meta());
    assert_eq!(again.header(), reader.header());
    for item in &items {
        let back = again.next_item().expect("a written record reads");
        assert_eq!(back.as_ref(), Some(item));
    }
    assert_eq!(again.next_item().expect("a written stream ends"), None);
    assert_eq!(again.counts(), reader.counts());
}

/// `aspen/docs-push/1`: the bytes as the request an owner node decodes (a namespace id)
/// and as an entry message a reader decodes. A decoded entry encodes to bytes that decode
/// to the same entry, and encoding that is stable. (Its signatures are checked by the
/// store that takes it, not by the decoder.)
pub fn docs_push(data: &[u8]) {
    if let Ok(namespace) = push::decode_request(data) {
        assert_eq!(
            namespace.as_bytes().as_slice(),
            data,
            "a request is the id's bytes"
        );
    }
    // The reader refuses a longer message before reading it.
    if data.len() > push::MAX_ENTRY_BYTES {
        return;
    }
    if let Ok(entry) = push::decode_entry(data) {
        let bytes = push::encode_entry(&entry).expect("a decoded entry encodes");
        let back = push::decode_entry(&bytes).expect("an encoded entry decodes");
        assert_eq!(back, entry, "decode(encode(e)) != e");
        assert_eq!(push::encode_entry(&back).expect("encodes"), bytes);
    }
}

/// `aspen/blob-hold/1` requests a member receives and answers the asking member receives:
/// decode, re-encode, decode again; what decodes fits the protocol's message limit.
pub fn blob_hold_message(data: &[u8]) {
    use aspen_cluster_node::blob_hold::{self as hold, MAX_HOLD_MESSAGE_BYTES};
    // The reader refuses a longer message before reading it.
    if data.len() > MAX_HOLD_MESSAGE_BYTES {
        return;
    }
    // postcard takes overlong varints, so the input need not be the canonical encoding;
    // what is encoded again must be, and must mean the same.
    if let Ok(request) = hold::decode_request(data) {
        let bytes = hold::encode_request(&request);
        let back = hold::decode_request(&bytes).expect("decodes");
        assert_eq!(back, request, "decode(encode(r)) != r");
        assert_eq!(hold::encode_request(&back), bytes);
    }
    if let Ok(answer) = hold::decode_answer(data) {
        let bytes = hold::encode_answer(&answer);
        let back = hold::decode_answer(&bytes).expect("decodes");
        assert_eq!(back, answer, "decode(encode(a)) != a");
        assert_eq!(hold::encode_answer(&back), bytes);
        assert!(bytes.len() <= MAX_HOLD_MESSAGE_BYTES);
    }
}

/// `aspen/value/1` request headers a node decodes and answer headers a router decodes:
/// decode, re-encode, decode again; what decodes encodes within the header limit; a
/// read's blob reference is checked as the node checks it.
pub fn value_message(data: &[u8]) {
    use aspen_api::limits::MAX_BLOB_VALUE_BYTES;
    use aspen_api::value_wire::{self as value, ValueAnswer, ValueRequest, MAX_VALUE_HEADER_BYTES};
    // The reader refuses a longer frame before reading it.
    if data.len() > MAX_VALUE_HEADER_BYTES {
        return;
    }
    // postcard takes overlong varints: the input need not be the canonical encoding; what
    // is encoded again must be, and must mean the same.
    if let Ok(request) = value::decode::<ValueRequest>(data) {
        let bytes = value::encode(&request).expect("a decoded header fits the limit again");
        let back: ValueRequest = value::decode(&bytes).expect("decodes");
        assert_eq!(back, request, "decode(encode(r)) != r");
        assert_eq!(value::encode(&back).expect("encodes"), bytes);
        if let ValueRequest::Read { blob, .. } = &request {
            // The node's check of a reference refuses, never panics, on any size.
            let checked = blob.validate("blob");
            assert_eq!(
                checked.is_ok(),
                (1..=MAX_BLOB_VALUE_BYTES).contains(&blob.size)
            );
        }
    }
    if let Ok(answer) = value::decode::<ValueAnswer>(data) {
        let bytes = value::encode(&answer).expect("a decoded header fits the limit again");
        let back: ValueAnswer = value::decode(&bytes).expect("decodes");
        assert_eq!(back, answer, "decode(encode(a)) != a");
        assert_eq!(value::encode(&back).expect("encodes"), bytes);
    }
}
