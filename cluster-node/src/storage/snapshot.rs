//! Snapshots: the whole key space at one log index, as one file.
//!
//! A snapshot is built from a read transaction on `state.db` (a consistent view while
//! applies go on) and kept as `snapshot.bin` in the data dir, written to a temporary file,
//! fsynced and renamed into place, so a crash leaves either the old or the new snapshot.
//! The same bytes are what a leader streams to a follower that is too far behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use aspen_api::KvEntry;
use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::raft_types::{MemberNode, NodeId};

/// File name of the current snapshot inside the data dir.
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The snapshot's data: the cluster revision and every key.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotContent {
    /// The cluster revision the snapshot's state had reached.
    pub revision: u64,
    /// All entries, in key order.
    pub entries: Vec<KvEntry>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: Vec<u8>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Encodes snapshot content.
pub fn encode_content(content: &SnapshotContent) -> Vec<u8> {
    postcard::to_stdvec(content).expect("encoding to a Vec cannot fail")
}

/// Decodes snapshot content.
pub fn decode_content(bytes: &[u8]) -> std::io::Result<SnapshotContent> {
    postcard::from_bytes(bytes).map_err(std::io::Error::other)
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
    let bytes = postcard::to_stdvec(&file).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
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
            let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(std::io::Error::other)?;
            Ok(Some((file.meta, file.data)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
