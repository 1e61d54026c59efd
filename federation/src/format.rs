//! The contents of a federation document's entries, each a versioned encoding (see
//! `aspen_api::codec`): segments of the change feed, checkpoint metadata, heartbeats, and
//! the framed stream a checkpoint blob holds.
//!
//! A checkpoint blob is `CHECKPOINT_MAGIC`, then frames: a little-endian `u32` length and
//! a [`CHECKPOINT_FRAME`]-encoded [`CheckpointFrame`]. The first frame is the header, then
//! pages of entries in key order, then an end frame with the key count. It is written and
//! read a frame at a time, so neither side holds more than one page however many keys
//! the cluster has.

use aspen_api::codec::{CodecError, Format};
use aspen_api::feed::ChangeSet;
use aspen_api::KvEntry;
use serde::{Deserialize, Serialize};

/// A segment's content.
pub const SEGMENT: Format = Format::new("federation segment", 1);
/// The checkpoint metadata entry (`k`).
pub const CHECKPOINT_META: Format = Format::new("federation checkpoint metadata", 1);
/// The heartbeat entry (`h`).
pub const HEARTBEAT: Format = Format::new("federation heartbeat", 1);
/// One frame of a checkpoint blob. Version 2: an entry may hold a blob reference.
pub const CHECKPOINT_FRAME: Format = Format::new("federation checkpoint frame", 2);
/// First bytes of a checkpoint blob.
pub const CHECKPOINT_MAGIC: &[u8; 8] = b"ASPNCKPT";

/// Largest encoded frame of a checkpoint: one page of entries. A reader refuses a longer
/// length before allocating for it.
pub const MAX_CHECKPOINT_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Most entries in one checkpoint page. A page also ends once it holds a scan page's bytes
/// (`aspen_api::limits::MAX_SCAN_PAGE_BYTES`, 8 MiB, plus at most one value of 1 MiB),
/// well inside [`MAX_CHECKPOINT_FRAME_BYTES`].
pub const CHECKPOINT_PAGE_ENTRIES: usize = 1_000;

const _: () = assert!(
    aspen_api::limits::MAX_SCAN_PAGE_BYTES + aspen_api::limits::MAX_INLINE_VALUE_BYTES + 64 * 1024
        < MAX_CHECKPOINT_FRAME_BYTES
);

/// A run of consecutive revisions of the owner's change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The owner cluster.
    pub source: String,
    /// The segment's sequence number (also in its key).
    pub seq: u64,
    /// The change sets, consecutive revisions in order.
    pub sets: Vec<ChangeSet>,
}

/// The latest checkpoint, as the `k` entry describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The owner's revision the checkpoint holds exactly.
    pub revision: u64,
    /// The time of that revision (ms since the Unix epoch, owner's clock).
    pub time_ms: u64,
    /// The BLAKE3 hash of the checkpoint blob (the `c` entry points at the same blob).
    pub hash: [u8; 32],
    /// The blob's size in bytes.
    pub size: u64,
    /// How many keys it holds.
    pub keys: u64,
}

/// The owner's heartbeat: at `time_ms`, the owner's committed state was at most `head`.
/// Written only after a linearizable read, so a leader cut off from its cluster writes
/// none: a replica that has `head` was fresh at least as of `time_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The owner's revision.
    pub head: u64,
    /// When it was confirmed (ms since the Unix epoch, owner's clock).
    pub time_ms: u64,
}

/// One frame of a checkpoint blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointFrame {
    /// First frame.
    Header {
        /// The owner cluster.
        source: String,
    },
    /// Entries in key order.
    Entries(Vec<KvEntry>),
    /// Last frame: how many entries came before it and the revision they are exact at
    /// (known only once the consistent read has begun, so it comes last).
    End {
        /// The entry count.
        keys: u64,
        /// The owner revision the checkpoint holds exactly.
        revision: u64,
        /// The time of that revision.
        time_ms: u64,
    },
}

impl Segment {
    /// Its first and last revision, if it has any.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.sets.first()?.revision, self.sets.last()?.revision))
    }

    /// Checks the segment against what its key said: the source, the sequence number, and
    /// consecutive revisions exactly from `first` to `last`.
    pub fn check(&self, source: &str, key: &crate::keys::SegmentKey) -> Result<(), String> {
        if self.source != source {
            return Err(format!(
                "segment {} is from cluster {:?}, not {source:?}",
                self.seq, self.source
            ));
        }
        if self.seq != key.seq || self.range() != Some((key.first, key.last)) {
            return Err(format!(
                "segment {} holds revisions {:?}, its key says {}..={}",
                key.seq,
                self.range(),
                key.first,
                key.last
            ));
        }
        let consecutive = self
            .sets
            .windows(2)
            .all(|w| w[1].revision == w[0].revision + 1);
        if !consecutive {
            return Err(format!(
                "segment {} skips revisions between {} and {}",
                key.seq, key.first, key.last
            ));
        }
        Ok(())
    }
}

/// Frames a checkpoint frame: its length, then its encoding.
pub fn frame(frame: &CheckpointFrame) -> Vec<u8> {
    let body = CHECKPOINT_FRAME.encode(frame);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Errors of reading a checkpoint blob.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading the blob failed.
    #[error("reading the checkpoint failed: {0}")]
    Io(#[from] std::io::Error),
    /// The blob is not a checkpoint of this format.
    #[error("not an Aspen checkpoint (or another format version): {0}")]
    Format(String),
    /// A frame could not be decoded.
    #[error("{0}")]
    Codec(#[from] CodecError),
}

/// Reads one frame from `reader`; `Ok(None)` at the clean end of the stream.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<CheckpointFrame>, CheckpointError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_CHECKPOINT_FRAME_BYTES {
        return Err(CheckpointError::Format(format!(
            "a frame of {len} bytes is over the limit of {MAX_CHECKPOINT_FRAME_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(CHECKPOINT_FRAME.decode(&body)?))
}

/// Reads and checks the magic at the start of a checkpoint blob.
pub async fn read_magic<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(), CheckpointError> {
    use tokio::io::AsyncReadExt;
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).await?;
    if &magic != CHECKPOINT_MAGIC {
        return Err(CheckpointError::Format("bad magic".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aspen_api::codec::hex;
    use aspen_api::feed::{ChangeKind, KeyChange};

    use super::*;

    fn set(revision: u64) -> ChangeSet {
        ChangeSet {
            revision,
            time_ms: 7,
            changes: vec![KeyChange {
                key: "k".into(),
                kind: ChangeKind::Put {
                    value: b"v".to_vec().into(),
                    create_revision: 1,
                    version: revision,
                },
            }],
        }
    }

    #[test]
    fn a_segment_has_its_pinned_bytes() {
        let segment = Segment {
            source: "us-1".into(),
            seq: 2,
            sets: vec![set(3)],
        };
        let bytes = SEGMENT.encode(&segment);
        assert_eq!(hex(&bytes), "010475732d310201030701016b0001760103");
        assert_eq!(SEGMENT.decode::<Segment>(&bytes).unwrap(), segment);
    }

    #[test]
    fn a_checkpoint_frame_has_its_pinned_bytes() {
        let header = CheckpointFrame::End {
            keys: 3,
            revision: 9,
            time_ms: 5,
        };
        assert_eq!(hex(&frame(&header)), "050000000202030905");
    }

    #[test]
    fn a_segment_must_match_its_key() {
        let key = crate::keys::SegmentKey {
            seq: 4,
            first: 10,
            last: 11,
            first_time_ms: 7,
        };
        let good = Segment {
            source: "us-1".into(),
            seq: 4,
            sets: vec![set(10), set(11)],
        };
        assert!(good.check("us-1", &key).is_ok());
        assert!(good.check("us-2", &key).is_err(), "another cluster's");
        let gap = Segment {
            sets: vec![set(10), set(12)],
            ..good.clone()
        };
        let gap_key = crate::keys::SegmentKey { last: 12, ..key };
        assert!(gap.check("us-1", &gap_key).is_err(), "a skipped revision");
        let short = Segment {
            sets: vec![set(10)],
            ..good
        };
        assert!(
            short.check("us-1", &key).is_err(),
            "fewer than its key says"
        );
    }

    #[tokio::test]
    async fn frames_read_back_in_order_and_an_oversized_length_is_refused_unread() {
        let frames = vec![
            CheckpointFrame::Header { source: "s".into() },
            CheckpointFrame::End {
                keys: 0,
                revision: 1,
                time_ms: 2,
            },
        ];
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        for f in &frames {
            bytes.extend(frame(f));
        }
        let mut reader = &bytes[..];
        read_magic(&mut reader).await.unwrap();
        let mut back = Vec::new();
        while let Some(f) = read_frame(&mut reader).await.unwrap() {
            back.push(f);
        }
        assert_eq!(back, frames);

        let huge = ((MAX_CHECKPOINT_FRAME_BYTES + 1) as u32).to_le_bytes();
        let err = read_frame(&mut &huge[..]).await.unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}
