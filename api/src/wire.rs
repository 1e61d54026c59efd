//! The `aspen/kv/2` protocol: how routers, clients and follower nodes send KV requests to
//! a cluster node over iroh QUIC.
//!
//! Goals: one request and one response per QUIC bi-directional stream (the stream is the
//! request id, so many requests share one connection without head-of-line blocking), a
//! compact binary encoding whose format is versioned and pinned by tests, and a hard bound
//! on message size.
//!
//! Non-goals: streaming large values (they will travel through iroh-blobs), and
//! authentication beyond iroh's endpoint identity.
//!
//! Framing: the requester writes one [`KvRequest`] encoded with [`encode`] and finishes
//! its send side; the server answers with one [`KvResponse`] ([`encode_response`]) and
//! finishes. Either side refuses a message over [`MAX_WIRE_MESSAGE_BYTES`]. Every message
//! starts with the format version [`KV_FORMAT`] (see [`crate::codec`]), so a peer running
//! another format is refused with a clear error instead of being misread.
//!
//! # Layout
//!
//! - `message`: [`KvRequest`], [`KvResponse`], [`MembershipChange`].
//! - `status`: [`StatusReport`] and [`MemberReport`], the wire shapes of a node's status
//!   (the JSON shapes are `admin::NodeStatus` and `admin::MemberStatus`).
//! - `replica`: stale reads of federation replicas and their status.
//! - `feed`: reads of a cluster's change feed (what a router's watches follow).
//! - `fit`: [`encode_response`], which makes any answer fit in one message.
//!
//! Every type here is a wire type: no serde attribute may change its shape (see
//! [`crate::codec`]). Appending a variant at the end of [`KvRequest`] or [`KvResponse`]
//! is a compatible change (an older peer refuses the new variant as malformed, never
//! misreads it); any other change to these types, or to the types they carry, bumps
//! [`KV_FORMAT`]'s version. The golden-byte tests (`wire/golden.rs`) fail on either.

mod feed;
mod fit;
mod message;
mod replica;
mod status;

pub use crate::codec::CodecError as WireError;
use crate::codec::Format;
pub use crate::limits::MAX_WIRE_MESSAGE_BYTES;
pub use feed::{FeedReadRequest, FeedReadResponse, KeyFilter};
pub use fit::{
    encode_response, is_read_left_out_of_batch, read_left_out_error, read_left_out_of_batch,
};
pub use message::{KvRequest, KvResponse, MembershipChange, NewLearner, MAX_WIRE_BATCH};
pub use replica::{ReplicaReadRequest, ReplicaReadResponse, ReplicaReport};
pub use status::{MemberReport, StatusReport};

/// ALPN of the KV protocol, version 2: each message framed with its length first
/// (`aspen_net::frame`).
pub const KV_ALPN: &[u8] = b"aspen/kv/2";

/// The encoding of every `aspen/kv/2` message. Version 1 was the first versioned format;
/// version 2 appends the error codes `unauthorized` and `forbidden`; version 3 gives an
/// entry its blob reference (`KvEntry::blob`).
pub const KV_FORMAT: Format = Format::new("aspen/kv/2 message", 3);

/// A message of `aspen/kv/2`: a request or a response.
pub trait Message: serde::Serialize + serde::de::DeserializeOwned + sealed::Sealed {}
impl Message for KvRequest {}
impl Message for KvResponse {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::KvRequest {}
    impl Sealed for super::KvResponse {}
}

/// Encodes a message, refusing one larger than [`MAX_WIRE_MESSAGE_BYTES`].
pub fn encode<T: Message>(message: &T) -> Result<Vec<u8>, WireError> {
    KV_FORMAT.encode_within(message, MAX_WIRE_MESSAGE_BYTES)
}

/// Decodes a message.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, WireError> {
    KV_FORMAT.decode(bytes)
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod nesting;
#[cfg(test)]
mod roundtrip;
