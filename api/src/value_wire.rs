//! `aspen/value/1`: values kept as blobs, streamed between a router (or any client a node
//! admits on `aspen/kv/2`) and a node, so that neither holds a value whole.
//!
//! One operation per QUIC bi-directional stream. The requester writes one [`ValueRequest`]
//! as a frame (`aspen_net::frame`, at most [`MAX_VALUE_HEADER_BYTES`]); for a
//! [`ValueRequest::Put`] the value's bytes follow on the same stream until it ends. The
//! node answers with one [`ValueAnswer`] frame: for a put, the write's outcome; for a
//! [`ValueRequest::Read`], [`ValueAnswer::Bytes`] followed by exactly that many bytes and
//! the end of the stream (a stream reset before them means the read failed midway). Every
//! frame starts with [`VALUE_FORMAT`]'s version.

use serde::{Deserialize, Serialize};

use crate::blob::BlobRef;
use crate::codec::{CodecError, Format};
use crate::error::ApiError;
use crate::types::WriteResult;

/// ALPN of the protocol.
pub const VALUE_ALPN: &[u8] = b"aspen/value/1";

/// The encoding of its frames.
pub const VALUE_FORMAT: Format = Format::new("aspen/value/1 message", 1);

/// Largest frame either side sends: a request names a key (at most 1 KiB) and a lease;
/// an answer may carry an error message.
pub const MAX_VALUE_HEADER_BYTES: usize = 16 * 1024;

/// What a requester asks of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueRequest {
    /// Store the bytes that follow on the stream as `key`'s value, attached to `lease`
    /// (its cluster and number) when given; `declared` is the length the client announced.
    Put {
        key: String,
        lease: Option<(String, u64)>,
        declared: Option<u64>,
    },
    /// Send `len` bytes of `blob` from byte `start`.
    Read { blob: BlobRef, start: u64, len: u64 },
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueAnswer {
    /// The put's write: applied, or refused by a precondition or lease.
    Written(WriteResult),
    /// The read's bytes follow: exactly `len` of them.
    Bytes { len: u64 },
    /// Refused or failed; nothing was written.
    Error(ApiError),
}

/// Encodes a request or an answer.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, CodecError> {
    VALUE_FORMAT.encode_within(message, MAX_VALUE_HEADER_BYTES)
}

/// Decodes a request or an answer.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    VALUE_FORMAT.decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::hex;

    #[test]
    fn a_put_and_a_read_have_their_pinned_bytes() {
        let put = ValueRequest::Put {
            key: "k".into(),
            lease: Some(("us-1".into(), 7)),
            declared: Some(300),
        };
        let bytes = encode(&put).unwrap();
        assert_eq!(hex(&bytes), "0100016b010475732d310701ac02");
        assert_eq!(decode::<ValueRequest>(&bytes).unwrap(), put);
        let read = ValueRequest::Read {
            blob: BlobRef {
                hash: [1; 32],
                size: 5,
            },
            start: 1,
            len: 2,
        };
        let bytes = encode(&read).unwrap();
        assert_eq!(decode::<ValueRequest>(&bytes).unwrap(), read);
        assert_eq!(bytes.len(), 1 + 1 + 32 + 1 + 1 + 1);
    }

    #[test]
    fn a_header_over_the_limit_is_refused() {
        let put = |len: usize| ValueRequest::Put {
            key: "k".repeat(len),
            lease: None,
            declared: None,
        };
        // Version, variant, the key's length (2 bytes for these), the key, two `None`s.
        let fits = MAX_VALUE_HEADER_BYTES - 6;
        assert!(encode(&put(fits)).is_ok());
        assert!(encode(&put(fits + 1)).is_err());
    }
}
