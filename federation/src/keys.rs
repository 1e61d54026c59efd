//! The keys of a cluster's federation document, and why they look the way they do.
//!
//! iroh-docs keys must be prefix-free per author: writing `ab` silently removes the same
//! author's older entries whose keys start with `ab`, and a write is refused if a newer
//! entry exists at a prefix of its key. The document therefore holds only these keys,
//! none a prefix of another except on purpose:
//!
//! | key | holds |
//! | --- | --- |
//! | `c` | the latest checkpoint's blob (`set_hash`: its content *is* the checkpoint) |
//! | `k` | that checkpoint's metadata ([`crate::format::CheckpointMeta`]) |
//! | `h` | the owner's heartbeat ([`crate::format::Heartbeat`]) |
//! | `s/` + 35 bytes | one segment of the change feed ([`SegmentKey`]) |
//!
//! A segment key carries the segment's metadata (its group and slot, its sequence number,
//! its first and last revision and the time of its first revision) so that a replica can
//! tell which segment it needs without downloading any. All segment keys have the same
//! length, so none is a prefix of another. The [`SEGMENT_SLOTS`] slots are split into
//! [`SEGMENT_GROUPS`] groups; before the exporter reuses a group it deletes the whole group
//! with one prefix delete (`s/` + the group), which leaves one tombstone per group, itself
//! replaced at the next reuse. So the document holds at most [`SEGMENT_SLOTS`] segments
//! (plus, briefly, a few duplicates written across a leader change) and
//! [`SEGMENT_GROUPS`] tombstones, whatever the history: it never grows.

/// Key of the latest checkpoint's blob.
pub const CHECKPOINT_BLOB_KEY: &[u8] = b"c";
/// Key of the latest checkpoint's metadata.
pub const CHECKPOINT_META_KEY: &[u8] = b"k";
/// Key of the owner's heartbeat.
pub const HEARTBEAT_KEY: &[u8] = b"h";
/// Prefix of every segment key.
pub const SEGMENT_PREFIX: &[u8] = b"s/";

/// Segments one document holds at most. A replica that falls further behind than this
/// many segments bootstraps from the checkpoint instead. At the exporter's pace of at most
/// one segment per [`crate::export::SEGMENT_LINGER`] under load, 4096 segments cover
/// minutes of writes (about 200 s at 1,000 writes/s, measured in docs/BENCHMARKS.md) and
/// far longer when writes are sparse, while a first sync of the whole document (which
/// iroh-docs holds in memory) stays a few MB.
pub const SEGMENT_SLOTS: u64 = 4096;

/// Segments per group: the unit the exporter deletes before reusing slots. Larger groups
/// mean fewer tombstones; smaller ones drop less history at once.
pub const GROUP_SEGMENTS: u64 = 64;

/// Groups of slots.
pub const SEGMENT_GROUPS: u64 = SEGMENT_SLOTS / GROUP_SEGMENTS;

const _: () = assert!(SEGMENT_SLOTS.is_multiple_of(GROUP_SEGMENTS));
const _: () = assert!(SEGMENT_GROUPS <= u16::MAX as u64 && GROUP_SEGMENTS <= u8::MAX as u64 + 1);

/// Length of a segment key: the prefix, group (2), slot in group (1), sequence (8), first
/// and last revision (8 each), time of the first revision (8).
pub const SEGMENT_KEY_LEN: usize = SEGMENT_PREFIX.len() + 2 + 1 + 8 * 4;

/// What a segment key says about its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentKey {
    /// The segment's sequence number: the exporter numbers segments from 0, in order.
    pub seq: u64,
    /// Its first revision.
    pub first: u64,
    /// Its last revision (at least `first`).
    pub last: u64,
    /// When its first revision was proposed (ms since the Unix epoch, owner's clock).
    pub first_time_ms: u64,
}

/// The group a sequence number's slot belongs to.
pub fn group_of(seq: u64) -> u16 {
    ((seq / GROUP_SEGMENTS) % SEGMENT_GROUPS) as u16
}

/// The prefix that deletes a whole group.
pub fn group_prefix(group: u16) -> Vec<u8> {
    let mut key = SEGMENT_PREFIX.to_vec();
    key.extend_from_slice(&group.to_be_bytes());
    key
}

impl SegmentKey {
    /// The document key.
    pub fn encode(&self) -> Vec<u8> {
        let mut key = group_prefix(group_of(self.seq));
        key.push((self.seq % GROUP_SEGMENTS) as u8);
        for n in [self.seq, self.first, self.last, self.first_time_ms] {
            key.extend_from_slice(&n.to_be_bytes());
        }
        debug_assert_eq!(key.len(), SEGMENT_KEY_LEN);
        key
    }

    /// Reads a document key; `None` for anything that is not a well-formed segment key
    /// (another key, a group tombstone, a key whose slot does not match its sequence).
    pub fn decode(key: &[u8]) -> Option<SegmentKey> {
        if key.len() != SEGMENT_KEY_LEN || !key.starts_with(SEGMENT_PREFIX) {
            return None;
        }
        let rest = &key[SEGMENT_PREFIX.len()..];
        let group = u16::from_be_bytes([rest[0], rest[1]]);
        let slot = rest[2];
        let n = |i: usize| {
            let at = 3 + 8 * i;
            u64::from_be_bytes(rest[at..at + 8].try_into().expect("8 bytes"))
        };
        let segment = SegmentKey {
            seq: n(0),
            first: n(1),
            last: n(2),
            first_time_ms: n(3),
        };
        let consistent = group == group_of(segment.seq)
            && u64::from(slot) == segment.seq % GROUP_SEGMENTS
            && segment.first >= 1
            && segment.last >= segment.first;
        consistent.then_some(segment)
    }

    /// Whether the segment holds `revision`.
    pub fn covers(&self, revision: u64) -> bool {
        (self.first..=self.last).contains(&revision)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn segment(seq: u64) -> SegmentKey {
        SegmentKey {
            seq,
            first: 10 * seq + 1,
            last: 10 * seq + 10,
            first_time_ms: 1_700_000_000_000 + seq,
        }
    }

    #[test]
    fn no_key_is_a_prefix_of_another_but_a_group_prefix_of_its_segments() {
        let mut keys: Vec<Vec<u8>> = vec![
            CHECKPOINT_BLOB_KEY.to_vec(),
            CHECKPOINT_META_KEY.to_vec(),
            HEARTBEAT_KEY.to_vec(),
        ];
        keys.extend(
            (0..3 * SEGMENT_SLOTS)
                .step_by(61)
                .map(|s| segment(s).encode()),
        );
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{a:?} is a prefix of {b:?}");
                }
            }
        }
        for seq in [
            0,
            63,
            64,
            SEGMENT_SLOTS - 1,
            SEGMENT_SLOTS,
            5 * SEGMENT_SLOTS + 77,
        ] {
            let key = segment(seq).encode();
            assert!(key.starts_with(&group_prefix(group_of(seq))));
            let other = (group_of(seq) + 1) % SEGMENT_GROUPS as u16;
            assert!(!key.starts_with(&group_prefix(other)));
        }
    }

    #[test]
    fn slots_wrap_after_the_document_is_full_and_groups_follow() {
        assert_eq!(group_of(0), 0);
        assert_eq!(group_of(GROUP_SEGMENTS - 1), 0);
        assert_eq!(group_of(GROUP_SEGMENTS), 1);
        assert_eq!(group_of(SEGMENT_SLOTS - 1), (SEGMENT_GROUPS - 1) as u16);
        assert_eq!(group_of(SEGMENT_SLOTS), 0, "the first group is reused");
    }

    #[test]
    fn malformed_keys_are_not_segments() {
        assert_eq!(SegmentKey::decode(b"h"), None);
        assert_eq!(SegmentKey::decode(&group_prefix(3)), None);
        let mut key = segment(5).encode();
        key[SEGMENT_PREFIX.len() + 2] = 6; // slot that does not match the sequence
        assert_eq!(SegmentKey::decode(&key), None);
        let backwards = SegmentKey {
            seq: 1,
            first: 9,
            last: 8,
            first_time_ms: 0,
        };
        assert_eq!(SegmentKey::decode(&backwards.encode()), None);
    }

    proptest! {
        #[test]
        fn every_segment_key_round_trips(seq in any::<u64>(), first in 1u64.., len in 0u64..1_000_000, t in any::<u64>()) {
            let key = SegmentKey { seq, first, last: first.saturating_add(len), first_time_ms: t };
            prop_assert_eq!(SegmentKey::decode(&key.encode()), Some(key));
        }
    }
}
