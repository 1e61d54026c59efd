//! The segments a document holds, as one node currently sees them ([`Ring`]): which
//! revisions they cover, where the contiguous run from a checkpoint ends, and what a group
//! holds before the exporter reuses it. The exporter and the importer both build it from
//! their own replica of the document, so it reflects what the document really holds there,
//! not what anyone intended to write.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use iroh_blobs::Hash;
use iroh_docs::api::Doc;
use iroh_docs::store::Query;
use iroh_docs::AuthorId;

use crate::keys::{SegmentKey, SEGMENT_PREFIX};
use crate::FederationError;

/// One segment entry of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seg {
    /// What its key says.
    pub key: SegmentKey,
    /// The slot group its key is in (what deleting that group removes).
    pub group: u16,
    /// The hash of its content (the encoded segment).
    pub hash: Hash,
}

/// The segments known, by first revision then sequence number.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    segments: BTreeMap<(u64, u64), Seg>,
}

impl Ring {
    /// Reads every segment entry of `author` in `doc`.
    pub async fn load(doc: &Doc, author: AuthorId) -> Result<Ring, FederationError> {
        let stream = doc
            .get_many(Query::author(author).key_prefix(SEGMENT_PREFIX))
            .await
            .map_err(stack_err)?;
        let mut stream = std::pin::pin!(stream);
        let mut ring = Ring::default();
        while let Some(entry) = stream.next().await {
            let entry = entry.map_err(stack_err)?;
            if let Some((group, key)) = SegmentKey::decode(entry.key()) {
                ring.insert(Seg {
                    key,
                    group,
                    hash: entry.content_hash(),
                });
            }
        }
        Ok(ring)
    }

    /// Adds a segment.
    pub fn insert(&mut self, seg: Seg) {
        self.segments.insert((seg.key.first, seg.key.seq), seg);
    }

    /// How many segment entries are known.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Whether no segment is known.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The segment holding `revision` that reaches furthest, if any.
    pub fn covering(&self, revision: u64) -> Option<&Seg> {
        self.covering_except(revision, &HashSet::new())
    }

    /// The segment holding `revision` that reaches furthest, leaving out those whose
    /// content is in `skip` (known not to be downloadable right now), if any.
    pub fn covering_except(&self, revision: u64, skip: &HashSet<Hash>) -> Option<&Seg> {
        self.segments
            .range(..=(revision, u64::MAX))
            .map(|(_, s)| s)
            .filter(|s| s.key.covers(revision) && !skip.contains(&s.hash))
            .max_by_key(|s| (s.key.last, s.key.seq))
    }

    /// The last revision of the contiguous run of segments after `from`: `from` itself if
    /// no segment holds `from + 1`.
    pub fn contiguous_end(&self, from: u64) -> u64 {
        let mut end = from;
        while let Some(seg) = self.covering(end + 1) {
            end = seg.key.last;
        }
        end
    }

    /// The highest sequence number known.
    pub fn max_seq(&self) -> Option<u64> {
        self.segments.values().map(|s| s.key.seq).max()
    }

    /// The highest revision any known segment holds.
    pub fn max_last(&self) -> u64 {
        self.segments
            .values()
            .map(|s| s.key.last)
            .max()
            .unwrap_or(0)
    }

    /// The lowest first revision of any known segment.
    pub fn min_first(&self) -> Option<u64> {
        self.segments.keys().next().map(|(first, _)| *first)
    }

    /// The highest revision held by a segment of `group` (what reusing it would drop).
    pub fn max_last_in_group(&self, group: u16) -> Option<u64> {
        self.segments
            .values()
            .filter(|s| s.group == group)
            .map(|s| s.key.last)
            .max()
    }

    /// The groups that hold at least one known segment.
    pub fn groups(&self) -> std::collections::BTreeSet<u16> {
        self.segments.values().map(|s| s.group).collect()
    }

    /// Every known segment, by first revision.
    pub fn segments(&self) -> impl Iterator<Item = &Seg> {
        self.segments.values()
    }

    /// Forgets the segments of `group` (after the exporter deleted it).
    pub fn remove_group(&mut self, group: u16) {
        self.segments.retain(|_, s| s.group != group);
    }
}

/// iroh-docs reports errors as `anyhow::Error`; this crate keeps them as text.
pub(crate) fn stack_err(e: impl std::fmt::Display) -> FederationError {
    FederationError::Stack(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64, first: u64, last: u64) -> Seg {
        Seg {
            key: SegmentKey {
                seq,
                first,
                last,
                first_time_ms: 0,
            },
            group: crate::keys::RingSize::default().group_of(seq),
            hash: Hash::new([seq as u8]),
        }
    }

    #[test]
    fn the_contiguous_run_follows_overlaps_and_stops_at_a_gap() {
        let mut ring = Ring::default();
        for s in [seg(0, 1, 5), seg(1, 6, 9), seg(2, 8, 12), seg(4, 20, 25)] {
            ring.insert(s);
        }
        assert_eq!(ring.contiguous_end(0), 12, "through the overlap of 1 and 2");
        assert_eq!(ring.contiguous_end(12), 12, "13 to 19 are missing");
        assert_eq!(ring.contiguous_end(19), 25);
        assert_eq!(
            ring.covering(9).unwrap().key.seq,
            2,
            "the one that reaches furthest"
        );
        assert!(ring.covering(13).is_none());
        let skip = HashSet::from([ring.covering(9).unwrap().hash]);
        assert_eq!(
            ring.covering_except(9, &skip).unwrap().key.seq,
            1,
            "another segment holding it when the furthest cannot be had"
        );
        assert!(ring.covering_except(10, &skip).is_none());
        assert_eq!(
            (ring.max_seq(), ring.max_last(), ring.min_first()),
            (Some(4), 25, Some(1))
        );
    }

    #[test]
    fn a_group_is_dropped_whole() {
        let mut ring = Ring::default();
        let g = crate::keys::GROUP_SEGMENTS;
        ring.insert(seg(0, 1, 1));
        ring.insert(seg(g - 1, 2, 2));
        ring.insert(seg(g, 3, 3));
        assert_eq!(ring.max_last_in_group(0), Some(2));
        ring.remove_group(0);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.max_last_in_group(0), None);
        assert_eq!(ring.max_last_in_group(1), Some(3));
    }
}
