//! The change feed of a cluster: every committed change, in revision order. Each
//! [`ChangeSet`] is one revision, one command, with every key it wrote or deleted, so a
//! batch's or a transaction's keys travel together. Federation exports it to other
//! regions; watches read it.
//!
//! These are wire and disk types (see [`crate::codec`]): the state machine keeps them,
//! federation segments carry them.

use serde::{Deserialize, Serialize};

/// Everything one revision changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// The cluster revision of the change: the `mod_revision` of every key it wrote.
    pub revision: u64,
    /// When the change was proposed, in milliseconds since the Unix epoch, by the
    /// leader's clock (never less than the previous revision's).
    pub time_ms: u64,
    /// The keys, in the order the command wrote them.
    pub changes: Vec<KeyChange>,
}

/// One key's change within a [`ChangeSet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// The key.
    pub key: String,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// A write or a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// The key now holds `value`.
    Put {
        /// The new value.
        value: bytes::Bytes,
        /// Revision of the write that created the key (this one, if `version` is 1).
        create_revision: u64,
        /// Writes since creation, this one included.
        version: u64,
    },
    /// The key was deleted (only keys that existed are recorded).
    Delete,
    /// The key now holds the value kept in the blob store as `blob`.
    PutBlob {
        /// The new value's reference.
        blob: crate::blob::BlobRef,
        /// Revision of the write that created the key (this one, if `version` is 1).
        create_revision: u64,
        /// Writes since creation, this one included.
        version: u64,
    },
}

impl ChangeSet {
    /// Bytes of keys and values it carries: about its encoded size.
    pub fn payload_bytes(&self) -> usize {
        self.changes
            .iter()
            .map(|c| {
                c.key.len()
                    + match &c.kind {
                        ChangeKind::Put { value, .. } => value.len(),
                        // The reference travels, not the bytes.
                        ChangeKind::PutBlob { .. } => 40,
                        ChangeKind::Delete => 0,
                    }
            })
            .sum()
    }
}

/// What a reader of the feed gets when it asks for revisions that were compacted away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} has been compacted: the oldest revision still in the change feed is {oldest}")]
pub struct Compacted {
    /// The revision asked for.
    pub requested: u64,
    /// The oldest revision still readable.
    pub oldest: u64,
}
