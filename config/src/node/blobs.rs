//! The `[blobs]` table of a node's config: its blob store, which keeps values over the
//! inline limit and the contents of federation documents. Every field has a default.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::limits::{MAX_BLOB_COLLECT_SECS, MIN_BLOB_COLLECT_SECS};

/// How the node's blob store is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobsConfig {
    /// Seconds between two collections of blobs nothing references any more (an
    /// overwritten or deleted value once the change feed has let go of it, an abandoned
    /// upload after its grace).
    pub collect_every_secs: u64,
}

impl Default for BlobsConfig {
    /// Once a minute: a run walks every reference, which costs little that often.
    fn default() -> Self {
        BlobsConfig {
            collect_every_secs: 60,
        }
    }
}

impl BlobsConfig {
    /// All rules; field names are relative to the `[blobs]` table.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if !(MIN_BLOB_COLLECT_SECS..=MAX_BLOB_COLLECT_SECS).contains(&self.collect_every_secs) {
            return Err(FieldError::new(
                "collect_every_secs",
                format!(
                    "is {}; collect every {MIN_BLOB_COLLECT_SECS} to {MAX_BLOB_COLLECT_SECS} \
                     seconds (default 60)",
                    self.collect_every_secs
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bounds_are_enforced() {
        let ok = |collect_every_secs| {
            BlobsConfig { collect_every_secs }
                .check()
                .map_err(|e| e.field)
        };
        assert_eq!(ok(60), Ok(()));
        assert_eq!(ok(MIN_BLOB_COLLECT_SECS), Ok(()));
        assert_eq!(ok(MAX_BLOB_COLLECT_SECS), Ok(()));
        let refused = Err("collect_every_secs".to_string());
        assert_eq!(ok(MIN_BLOB_COLLECT_SECS - 1), refused);
        assert_eq!(ok(MAX_BLOB_COLLECT_SECS + 1), refused);
    }
}
