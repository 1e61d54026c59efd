//! The binary encoding of everything Aspen sends between its processes or keeps on disk:
//! one format-version byte, then the value in [postcard].
//!
//! postcard is positional: a field is found by where it sits, not by a name. That makes it
//! compact and fast, and it means a change to a type's shape (a field added, removed or
//! reordered, a variant inserted, a serde attribute that skips a field) silently changes
//! how every later byte is read. Two rules keep that from ever misreading data:
//!
//! 1. Types encoded here are *wire and disk types*. They carry no serde attribute that
//!    changes their shape for one format only (`skip_serializing_if`, `flatten`,
//!    `untagged`, `default`); JSON shapes live in their own types (`json`, `admin`).
//! 2. Each encoded format has a [`Format`] with a version byte written first. A change to
//!    a format's types bumps its version, so old bytes are refused with
//!    [`CodecError::Version`] instead of being misread. Golden-byte tests next to each
//!    format pin its encoding, so an accidental change fails a test.
//!
//! Decoding is recursive, so a type that holds itself (a batch of requests, a leased
//! command) could be nested as deep as a message is long and overflow the decoding
//! thread's stack, which aborts the process. Such fields decode through [`nested`], which
//! refuses more than [`MAX_DECODE_NESTING`] levels.

use std::cell::Cell;

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};

/// Most self-holding fields a decoded value may pass through on the way down (see
/// [`nested`]). The deepest valid value is a batch holding a leased write (two levels);
/// anything deeper is refused by validation anyway. Without a bound, a 16 MiB message of
/// two-byte batch headers nests eight million levels deep, far past any thread's stack.
pub const MAX_DECODE_NESTING: u32 = 2;

thread_local! {
    /// The self-holding fields the value being decoded on this thread is inside of.
    static NESTING: Cell<u32> = const { Cell::new(0) };
    /// Whether [`nested`] refused a field since [`Format::decode`] began, so that decode
    /// reports [`CodecError::TooDeep`] (postcard's errors carry no message).
    static TOO_DEEP: Cell<bool> = const { Cell::new(false) };
}

/// One level of [`NESTING`], given back when dropped (also when decoding fails).
struct Level;

impl Level {
    fn enter() -> Option<Level> {
        NESTING.with(|depth| {
            let level = depth.get();
            (level < MAX_DECODE_NESTING).then(|| {
                depth.set(level + 1);
                Level
            })
        })
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        NESTING.with(|depth| depth.set(depth.get() - 1));
    }
}

/// `deserialize_with` for a field through which a type holds itself: decodes it as
/// usual, unless that would nest more than [`MAX_DECODE_NESTING`] such fields. It reads
/// the same bytes as the plain field, so it does not change the encoding.
pub fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let Some(_level) = Level::enter() else {
        TOO_DEEP.with(|deep| deep.set(true));
        return Err(D::Error::custom("nested too deep"));
    };
    T::deserialize(deserializer)
}

/// One encoded format: a name for errors and the version byte that leads every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// What the bytes are, for error messages (`aspen/kv/2 message`, `log entry`).
    pub name: &'static str,
    /// The version written first. Bump it whenever the encoded types change shape.
    pub version: u8,
}

/// Errors of encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The encoded value is larger than allowed where it is going.
    #[error("{format} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        format: &'static str,
        len: usize,
        max: usize,
    },
    /// No bytes at all: not even the version.
    #[error("{format} is empty")]
    Empty { format: &'static str },
    /// The bytes were written in another version of the format (by another Aspen
    /// version): refused rather than misread.
    #[error("{format} has format version {found}, this Aspen reads version {expected}: it was written by a different Aspen version")]
    Version {
        format: &'static str,
        found: u8,
        expected: u8,
    },
    /// The value nests batches or leased commands deeper than [`MAX_DECODE_NESTING`]
    /// (no valid value does): refused before decoding it could overflow the stack.
    #[error("malformed {format}: batches or leased commands nested more than {max} levels deep")]
    TooDeep { format: &'static str, max: u32 },
    /// The bytes are not a valid value of the format.
    #[error("malformed {format}: {source}")]
    Malformed {
        format: &'static str,
        source: postcard::Error,
    },
}

/// The length of `value` encoded by [`Format::encode`]: the version byte and postcard.
fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    // Measuring fails only where encoding would (sequences of unknown length): see encode.
    1 + postcard::experimental::serialized_size(value).expect("measuring an encoding cannot fail")
}

impl Format {
    /// A format named `name` at `version`.
    pub const fn new(name: &'static str, version: u8) -> Format {
        Format { name, version }
    }

    /// Encodes `value`: the version byte, then postcard.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Vec<u8> {
        let len = encoded_len(value);
        self.encode_sized(value, len)
    }

    /// Encodes `value`, refusing a result over `max` bytes (before writing any of it).
    pub fn encode_within<T: Serialize + ?Sized>(
        &self,
        value: &T,
        max: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let len = encoded_len(value);
        if len > max {
            return Err(CodecError::TooLarge {
                format: self.name,
                len,
                max,
            });
        }
        Ok(self.encode_sized(value, len))
    }

    /// Encodes `value` into a buffer of its encoded length `len`, found first so a large
    /// value is written once instead of copied as the buffer grows.
    fn encode_sized<T: Serialize + ?Sized>(&self, value: &T, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        out.push(self.version);
        // Writing into a Vec cannot fail, and every type given here has sequences of
        // known length (postcard's only other failure).
        postcard::to_io(value, &mut out).expect("encoding into a Vec cannot fail");
        debug_assert_eq!(out.len(), len, "the encoded length was measured wrong");
        out
    }

    /// Decodes bytes written by [`Format::encode`] at this format's version. Trailing
    /// bytes after the value are refused: they mean the writer's types differ.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (&found, body) = bytes
            .split_first()
            .ok_or(CodecError::Empty { format: self.name })?;
        if found != self.version {
            return Err(CodecError::Version {
                format: self.name,
                found,
                expected: self.version,
            });
        }
        let malformed = |source| CodecError::Malformed {
            format: self.name,
            source,
        };
        TOO_DEEP.with(|deep| deep.set(false));
        let (value, rest) = postcard::take_from_bytes(body).map_err(|source| {
            if TOO_DEEP.with(Cell::get) {
                CodecError::TooDeep {
                    format: self.name,
                    max: MAX_DECODE_NESTING,
                }
            } else {
                malformed(source)
            }
        })?;
        if !rest.is_empty() {
            return Err(malformed(postcard::Error::DeserializeBadEncoding));
        }
        Ok(value)
    }
}

/// Hex of `bytes`, for golden-byte tests and messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Format = Format::new("test value", 3);

    #[test]
    fn a_value_round_trips_behind_its_version_byte() {
        let bytes = F.encode(&(7u32, "x".to_string()));
        assert_eq!(bytes[0], 3);
        let back: (u32, String) = F.decode(&bytes).unwrap();
        assert_eq!(back, (7, "x".to_string()));
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut bytes = F.encode(&1u8);
        bytes[0] = 4;
        let err = F.decode::<u8>(&bytes).unwrap_err();
        assert!(matches!(
            err,
            CodecError::Version {
                found: 4,
                expected: 3,
                ..
            }
        ));
        assert!(err.to_string().contains("test value"), "{err}");
    }

    #[test]
    fn empty_truncated_and_trailing_bytes_are_errors_not_panics() {
        assert!(matches!(F.decode::<u8>(&[]), Err(CodecError::Empty { .. })));
        let bytes = F.encode(&"hello".to_string());
        assert!(matches!(
            F.decode::<String>(&bytes[..bytes.len() - 1]),
            Err(CodecError::Malformed { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            F.decode::<String>(&long),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn the_size_bound_is_inclusive() {
        let value = vec![0u8; 10];
        let len = F.encode(&value).len();
        assert!(F.encode_within(&value, len).is_ok());
        assert!(matches!(
            F.encode_within(&value, len - 1),
            Err(CodecError::TooLarge { .. })
        ));
    }

    /// The buffer is allocated once at the encoded length: a 1 MiB value is not copied
    /// through a chain of growing buffers.
    #[test]
    fn an_encoding_is_written_into_one_buffer_of_its_length() {
        let value = (
            String::from("key"),
            bytes::Bytes::from(vec![7u8; 1024 * 1024 + 3]),
        );
        let out = F.encode(&value);
        assert_eq!(out.capacity(), out.len());
        assert_eq!(F.decode::<(String, bytes::Bytes)>(&out).unwrap(), value);
    }
}
