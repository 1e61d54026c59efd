//! Blob references: how the state machine, the wire and the change feed name a value that
//! lives in the blob store rather than in the Raft log (DESIGN.md, "Large values").
//!
//! A [`BlobRef`] is the BLAKE3 hash of the bytes and their length: 40 bytes in the log
//! however large the value. It is a wire and disk type (see [`crate::codec`]); its JSON
//! form is [`JsonBlob`], the hash in lowercase hex as `b3sum` prints it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::MAX_BLOB_VALUE_BYTES;

/// A value kept in the blob store: its BLAKE3 hash and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    /// BLAKE3 of the bytes.
    pub hash: [u8; 32],
    /// Length of the bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference of `bytes` (hashes them: for tests and small values).
    pub fn of(bytes: &[u8]) -> BlobRef {
        BlobRef {
            hash: *blake3::hash(bytes).as_bytes(),
            size: bytes.len() as u64,
        }
    }

    /// Whether `bytes` are exactly the value this refers to: the length first, then the
    /// hash.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.size && blake3::hash(bytes).as_bytes() == &self.hash
    }

    /// The hash in lowercase hex.
    pub fn hash_hex(&self) -> String {
        crate::codec::hex(&self.hash)
    }

    /// Checks the size: at least one byte (an empty value is stored inline) and at most
    /// [`MAX_BLOB_VALUE_BYTES`]. Values up to the node's inline limit are normally stored
    /// inline, but the limit is a setting, so any size in range is a valid blob.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.size == 0 {
            return Err(ValidationError::field(
                field,
                "a blob of 0 bytes: store an empty value as a plain value",
            ));
        }
        if self.size > MAX_BLOB_VALUE_BYTES {
            return Err(ValidationError::BlobTooLarge {
                size: self.size,
                max: MAX_BLOB_VALUE_BYTES,
            });
        }
        Ok(())
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.hash_hex(), self.size)
    }
}

/// A blob reference in JSON: `{"hash": "<64 hex digits>", "size": N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonBlob {
    /// BLAKE3 of the bytes, 64 lowercase hex digits.
    pub hash: String,
    /// Length of the bytes.
    pub size: u64,
}

impl From<&BlobRef> for JsonBlob {
    fn from(blob: &BlobRef) -> Self {
        JsonBlob {
            hash: blob.hash_hex(),
            size: blob.size,
        }
    }
}

impl JsonBlob {
    /// The reference, or an error naming `field` when the hash is not 64 hex digits or
    /// the size is out of range.
    pub fn parse(&self, field: &str) -> Result<BlobRef, ValidationError> {
        let digits = self.hash.as_bytes();
        let bad = || {
            ValidationError::field(
                format!("{field}.hash"),
                format!(
                    "{:?} is not a BLAKE3 hash: give 64 hex digits (as b3sum prints them)",
                    self.hash
                ),
            )
        };
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut hash = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            hash[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        let blob = BlobRef {
            hash,
            size: self.size,
        };
        blob.validate(field)?;
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_matches_only_its_own_bytes() {
        let bytes = vec![7u8; 100];
        let blob = BlobRef::of(&bytes);
        assert!(blob.matches(&bytes));
        assert!(!blob.matches(&bytes[..99]));
        let mut other = bytes.clone();
        other[50] = 8;
        assert!(!blob.matches(&other));
    }

    #[test]
    fn json_round_trips_and_bad_hashes_name_the_field() {
        let blob = BlobRef {
            hash: [0xab; 32],
            size: 5 << 20,
        };
        let json = JsonBlob::from(&blob);
        assert_eq!(json.hash, "ab".repeat(32));
        assert_eq!(json.parse("expected_blob").unwrap(), blob);
        for hash in ["ab".repeat(31), "zz".repeat(32), "é".repeat(32)] {
            let err = JsonBlob {
                hash,
                size: blob.size,
            }
            .parse("expected_blob")
            .unwrap_err();
            assert!(err.to_string().contains("expected_blob.hash"), "{err}");
        }
    }

    #[test]
    fn a_blob_size_is_from_one_byte_to_the_blob_limit() {
        let at = |size| BlobRef {
            hash: [1; 32],
            size,
        };
        assert!(at(0).validate("blob").is_err());
        assert!(at(1).validate("blob").is_ok());
        assert!(at(MAX_BLOB_VALUE_BYTES).validate("blob").is_ok());
        assert_eq!(
            at(MAX_BLOB_VALUE_BYTES + 1).validate("blob"),
            Err(ValidationError::BlobTooLarge {
                size: MAX_BLOB_VALUE_BYTES + 1,
                max: MAX_BLOB_VALUE_BYTES
            })
        );
    }
}
