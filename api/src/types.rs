//! Values that flow out of a cluster: stored entries, the state of a key reported when a
//! precondition fails, the outcome of a write, and read requests and their results.

use serde::{Deserialize, Serialize};

use crate::blob::BlobRef;
use crate::command::Precondition;

/// One stored key with etcd-style metadata. A cluster's revision is the Raft log index of
/// the change, so revisions only grow and order all changes of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value, exactly as written (binary safe); empty when the value is a blob.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Writes since creation: 1 after the create, +1 per later write.
    pub version: u64,
    /// When the value is kept in the blob store: its reference (and `value` is empty).
    pub blob: Option<BlobRef>,
}

impl KvEntry {
    /// Whether the entry holds exactly `value`: the bytes when inline, the hash and size
    /// when a blob.
    pub fn holds(&self, value: &[u8]) -> bool {
        match &self.blob {
            Some(blob) => blob.matches(value),
            None => self.value == value,
        }
    }

    /// Whether the entry holds exactly the value `blob` names, inline or as a blob.
    pub fn holds_blob(&self, blob: &BlobRef) -> bool {
        match &self.blob {
            Some(own) => own == blob,
            None => blob.matches(&self.value),
        }
    }

    /// The value's length in bytes, inline or as a blob.
    pub fn value_len(&self) -> u64 {
        self.blob.map_or(self.value.len() as u64, |b| b.size)
    }
}

/// What a key looked like when a precondition was checked against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// The key.
    pub key: String,
    /// The entry, or `None` when the key was absent.
    pub entry: Option<KvEntry>,
}

/// Why a conditional command was not applied: which precondition failed first and what
/// the key actually held. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreconditionFailure {
    /// Index of the first failed precondition (0 for CompareAndSwap / CompareAndDelete).
    pub index: usize,
    /// The precondition as it was given.
    pub precondition: Precondition,
    /// The key's state when it was checked.
    pub actual: KeyState,
}

/// The outcome of applying one command. A failed precondition is an expected outcome,
/// not an error, so it lives here rather than in an error type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Every write and delete was applied.
    Applied {
        /// How many keys were deleted (deletes of absent keys do not count).
        deleted: u32,
    },
    /// A precondition failed; nothing was applied.
    PreconditionFailed(PreconditionFailure),
    /// A lease the command needs is missing or full; nothing was applied.
    LeaseFailed(crate::lease::LeaseFailure),
}

/// The state machine's answer for one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The cluster's revision after this command: the new revision if it changed
    /// anything, else the revision it was checked against (as etcd reports a failed txn).
    pub revision: u64,
    /// Applied or refused by a precondition.
    pub outcome: WriteOutcome,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (Raft ReadIndex on the
    /// leader).
    #[default]
    Linearizable,
    /// Served from the local copy of whichever node answers; may miss recent writes.
    Stale,
}

/// A read of one key or of a key range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadRequest {
    /// One key.
    Get { key: String },
    /// Keys starting with `prefix`, in byte order, strictly after `after` when given.
    Scan {
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
}

impl ReadRequest {
    /// Checks the key rules and the scan page bounds (1 to [`MAX_SCAN_LIMIT`]).
    ///
    /// [`MAX_SCAN_LIMIT`]: crate::limits::MAX_SCAN_LIMIT
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        use crate::limits::{MAX_KEY_BYTES, MAX_SCAN_LIMIT};
        match self {
            ReadRequest::Get { key } => crate::command::validate_key(key),
            ReadRequest::Scan { prefix, limit, .. } => {
                // An empty prefix scans everything; only an over-long one is refused.
                if prefix.len() > MAX_KEY_BYTES {
                    crate::command::validate_key(prefix)?;
                }
                if *limit == 0 || *limit > MAX_SCAN_LIMIT {
                    return Err(crate::ValidationError::ScanLimit {
                        limit: *limit,
                        max: MAX_SCAN_LIMIT,
                    });
                }
                Ok(())
            }
        }
    }
}

/// One page of a prefix scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    /// Entries in key order.
    pub kvs: Vec<KvEntry>,
    /// True when more keys match after the last one returned.
    pub more: bool,
}

/// The key range of one scan page: keys `>= lower` and, when there is an upper bound,
/// `< upper` (every key starting with `prefix`, strictly after `after` when given).
pub fn scan_bounds(prefix: &str, after: Option<&str>) -> (Vec<u8>, Option<Vec<u8>>) {
    let lower: Vec<u8> = match after {
        Some(a) if a.as_bytes() >= prefix.as_bytes() => {
            let mut l = a.as_bytes().to_vec();
            l.push(0);
            l
        }
        _ => prefix.as_bytes().to_vec(),
    };
    (lower, prefix_end(prefix.as_bytes()))
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl ScanPage {
    /// Builds a page from entries in key order (read with a limit of `limit + 1`): at most
    /// `limit` entries, ending early once it holds [`MAX_SCAN_PAGE_BYTES`] of keys and
    /// values; `more` says whether entries were left.
    ///
    /// [`MAX_SCAN_PAGE_BYTES`]: crate::limits::MAX_SCAN_PAGE_BYTES
    pub fn collect<E>(
        entries: impl IntoIterator<Item = Result<KvEntry, E>>,
        limit: usize,
    ) -> Result<ScanPage, E> {
        let mut page = ScanPage {
            kvs: Vec::new(),
            more: false,
        };
        let mut bytes = 0usize;
        for entry in entries {
            let full = bytes >= crate::limits::MAX_SCAN_PAGE_BYTES && !page.kvs.is_empty();
            if page.kvs.len() == limit || full {
                page.more = true;
                break;
            }
            let entry = entry?;
            bytes += entry.value.len() + entry.key.len();
            page.kvs.push(entry);
        }
        Ok(page)
    }

    /// The continuation token: pass it as `after` to get the next page.
    pub fn next(&self) -> Option<&str> {
        if self.more {
            self.kvs.last().map(|e| e.key.as_str())
        } else {
            None
        }
    }
}

/// The answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadResult {
    /// The entry, or `None` if the key is absent.
    Get(Option<KvEntry>),
    /// A page of a scan.
    Scan(ScanPage),
}

/// A read's result together with where it was served from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    /// The data.
    pub result: ReadResult,
    /// The cluster revision the serving node's copy had reached when the read began:
    /// every change up to it is in the result.
    pub revision: u64,
    /// The Raft log index the serving node had applied when it read.
    pub applied_index: u64,
    /// The highest log index the serving node knew to be committed:
    /// `known_commit_index - applied_index` is how many known log entries the copy lacks
    /// (0 for a copy that has applied all it knows of).
    pub known_commit_index: u64,
    /// Milliseconds since the serving node last heard from a leader (for the leader: since
    /// a quorum last acknowledged it); `None` if it never has. Changes made since then may be
    /// missing from a stale read.
    pub since_leader_contact_ms: Option<u64>,
}
