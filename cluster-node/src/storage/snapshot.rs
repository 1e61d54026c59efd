//! Snapshots: the whole key space (with the leases and the kept change feed) at one log
//! index, as one file.
//!
//! A snapshot is built from a read transaction on `state.db` (a consistent view while
//! applies go on) and kept as `snapshot.bin` in the data dir, written to a temporary file,
//! fsynced and renamed into place, so a crash leaves either the old or the new snapshot.
//! The same bytes are what a leader streams to a follower that is too far behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use aspen_api::feed::ChangeSet;
use aspen_api::KvEntry;
use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::format::{self, SNAPSHOT_DATA, SNAPSHOT_FILE, SNAPSHOT_MAGIC};
use crate::raft_types::{MemberNode, NodeId};

/// File name of the current snapshot inside the data dir.
const SNAPSHOT_FILE_NAME: &str = "snapshot.bin";

/// The snapshot's data: the applied position, every key and the kept change feed.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotContent {
    /// The cluster revision the snapshot's state had reached.
    pub revision: u64,
    /// The time of the latest applied proposal, ms since the Unix epoch.
    pub time_ms: u64,
    /// The revision the change feed is compacted through.
    pub feed_compacted: u64,
    /// All entries, in key order.
    pub entries: Vec<KvEntry>,
    /// The change feed after `feed_compacted`, in revision order.
    pub changes: Vec<ChangeSet>,
    /// Every lease: number and TTL in ms.
    pub leases: Vec<(u64, u64)>,
    /// Every key that holds a lease, with it, in key order.
    pub attached: Vec<(String, u64)>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: Vec<u8>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE_NAME)
}

/// Encodes snapshot content.
pub fn encode_content(content: &SnapshotContent) -> Vec<u8> {
    SNAPSHOT_DATA.encode(content)
}

/// Decodes snapshot content.
pub fn decode_content(bytes: &[u8]) -> std::io::Result<SnapshotContent> {
    format::decode(SNAPSHOT_DATA, bytes)
}

/// The bytes of `snapshot.bin`: the magic, then the file's versioned encoding.
fn encode_file(file: &SnapshotFile) -> Vec<u8> {
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    bytes.extend(SNAPSHOT_FILE.encode(file));
    bytes
}

fn decode_file(bytes: &[u8]) -> std::io::Result<SnapshotFile> {
    let body = bytes.strip_prefix(SNAPSHOT_MAGIC).ok_or_else(|| {
        std::io::Error::other(
            "snapshot.bin does not start with Aspen's snapshot magic: it was written by a              different Aspen version (or is not a snapshot); move it away to start without it",
        )
    })?;
    format::decode(SNAPSHOT_FILE, body)
}

/// Saves a snapshot atomically, replacing the previous one.
pub fn save(
    dir: &Path,
    meta: &SnapshotMeta<NodeId, MemberNode>,
    data: &[u8],
) -> std::io::Result<()> {
    let file = SnapshotFile {
        meta: meta.clone(),
        data: data.to_vec(),
    };
    let bytes = encode_file(&file);
    let tmp = dir.join(format!("{SNAPSHOT_FILE_NAME}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A snapshot's metadata.
pub type Meta = SnapshotMeta<NodeId, MemberNode>;

/// Loads the current snapshot (metadata and data), if one was saved.
pub fn load(dir: &Path) -> std::io::Result<Option<(Meta, Vec<u8>)>> {
    match std::fs::read(path(dir)) {
        Ok(bytes) => {
            let file = decode_file(&bytes)?;
            Ok(Some((file.meta, file.data)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
