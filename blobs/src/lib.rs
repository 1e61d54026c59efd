//! Large values: a node's iroh-blobs store, content-addressed (BLAKE3), with what the
//! key-value layer needs on top of it.
//!
//! A value above the inline limit is kept here and the state machine holds only its
//! [`BlobRef`] (hash and size). Before a reference may be committed, a majority of the
//! cluster's nodes must hold the whole blob durably. iroh-blobs itself never flushes a
//! blob's data to disk and answers an import before its metadata is committed (STACK.md),
//! so every way into this store ([`BlobStore::import`] from a stream, [`BlobStore::fetch`]
//! from a peer) ends by flushing the blob's files and directory and committing the store's
//! metadata, and only then returns a [`Held`] blob.
//!
//! Nothing is deleted directly: iroh-blobs' garbage collector removes every blob that no
//! tag, temporary tag or protect callback keeps. A [`Held`] blob is protected by a
//! temporary tag while the value is unreferenced (in flight); once committed, the caller's
//! [`Protect`] callback names it on every collection run.
//!
//! # Layout
//!
//! - [`store`]: [`BlobStore`]: open, import with a size limit, fetch from peers, read,
//!   serve to peers ([`ServeBlobs`]).
//! - [`pending`]: blobs kept for a while before a reference protects them.
//! - [`durable`]: flushing a blob's files and the store's metadata to disk.

pub mod durable;
pub mod pending;
pub mod store;

pub use pending::{Pending, PENDING_GRACE};
pub use store::{BlobStore, GcSettings, Held, Protect, ServeBlobs};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use iroh_blobs::{Hash, ALPN};

/// How often a node collects unreferenced blobs. A run walks every federation document's
/// entries (bounded by design), so once a minute costs little.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);

/// A node's blob store directory under its data dir: one store for values and for the
/// blobs of federation documents.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("blobs")
}

/// The largest value kept as a blob (DESIGN.md, "Limits": 4 GiB).
pub const MAX_BLOB_BYTES: u64 = aspen_api::limits::MAX_BLOB_VALUE_BYTES;

/// A blob as the state machine refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// BLAKE3 of the bytes.
    pub hash: Hash,
    /// Length of the bytes.
    pub size: u64,
}

impl From<aspen_api::BlobRef> for BlobRef {
    fn from(blob: aspen_api::BlobRef) -> Self {
        BlobRef {
            hash: Hash::from_bytes(blob.hash),
            size: blob.size,
        }
    }
}

impl From<BlobRef> for aspen_api::BlobRef {
    fn from(blob: BlobRef) -> Self {
        aspen_api::BlobRef {
            hash: *blob.hash.as_bytes(),
            size: blob.size,
        }
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.hash, self.size)
    }
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The value passed the size limit; nothing of it was kept.
    #[error("the value is over the limit of {limit} bytes for one value; send a smaller one")]
    TooLarge { limit: u64 },
    /// The value's bytes could not be read from their source (a client that went away).
    #[error("reading the value: {0}")]
    Body(String),
    /// No peer could provide the blob.
    #[error("fetching blob {hash} from {providers} peer(s): {reason}")]
    Fetch {
        hash: Hash,
        providers: usize,
        reason: String,
    },
    /// The store or the disk failed.
    #[error("blob store: {0}")]
    Store(String),
}
