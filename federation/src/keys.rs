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
//! length, so none is a prefix of another. The ring's slots ([`RingSize`], 4096 by default)
//! are split into groups of [`GROUP_SEGMENTS`]; before the exporter reuses a group it
//! deletes the whole group with one prefix delete (`s/` + the group), which leaves one
//! tombstone per group, itself replaced at the next reuse. So the document holds at most
//! as many segments as the ring has slots (plus, briefly, a few duplicates written across a
//! leader change) and one tombstone per group, whatever the history: it never grows.

/// Key of the latest checkpoint's blob.
pub const CHECKPOINT_BLOB_KEY: &[u8] = b"c";
/// Key of the latest checkpoint's metadata.
pub const CHECKPOINT_META_KEY: &[u8] = b"k";
/// Key of the owner's heartbeat.
pub const HEARTBEAT_KEY: &[u8] = b"h";
/// Prefix of every segment key.
pub const SEGMENT_PREFIX: &[u8] = b"s/";

/// Segments per group: the unit the exporter deletes before reusing slots. Larger groups
/// mean fewer tombstones; smaller ones drop less history at once.
pub const GROUP_SEGMENTS: u64 = aspen_config::limits::SEGMENT_GROUP_SLOTS;

const _: () = assert!(GROUP_SEGMENTS <= u8::MAX as u64 + 1);

/// Groups a checkpoint is started ahead of the ring's need for one: the exporter starts a
/// new checkpoint once the segments since the last one fill the ring but this many groups
/// (or half the ring, if that is less), so it is usually ready before a group it does not
/// cover must be reused.
pub const CHECKPOINT_LEAD_GROUPS: u64 = 8;

/// The size of a document's ring of segment slots (`[federation] segment_slots`): at most
/// that many segments, in groups of [`GROUP_SEGMENTS`]. A replica that falls further behind
/// than the ring bootstraps from the checkpoint instead. The default of 4096 segments
/// covers minutes of writes at the exporter's pace of at most one segment per
/// [`crate::export::SEGMENT_LINGER`] under load (about 200 s at 1,000 writes/s, measured in
/// docs/BENCHMARKS.md) and far longer when writes are sparse, while a first sync of the
/// whole document (which iroh-docs holds in memory) stays a few MB.
///
/// Only the exporter needs it: a segment key carries its own group, so importers read any
/// ring whatever its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSize {
    groups: u64,
}

impl Default for RingSize {
    fn default() -> Self {
        RingSize {
            groups: aspen_config::limits::DEFAULT_SEGMENT_SLOTS / GROUP_SEGMENTS,
        }
    }
}

impl RingSize {
    /// A ring of `slots` segments: a multiple of [`GROUP_SEGMENTS`] within
    /// `aspen_config::limits::{MIN,MAX}_SEGMENT_SLOTS` (the node's config checks the same).
    pub fn new(slots: u64) -> Result<RingSize, String> {
        use aspen_config::limits::{MAX_SEGMENT_SLOTS, MIN_SEGMENT_SLOTS};
        if !(MIN_SEGMENT_SLOTS..=MAX_SEGMENT_SLOTS).contains(&slots)
            || !slots.is_multiple_of(GROUP_SEGMENTS)
        {
            return Err(format!(
                "segment_slots is {slots}; use a multiple of {GROUP_SEGMENTS} from \
                 {MIN_SEGMENT_SLOTS} to {MAX_SEGMENT_SLOTS}"
            ));
        }
        Ok(RingSize {
            groups: slots / GROUP_SEGMENTS,
        })
    }

    /// Segments the ring holds at most.
    pub fn slots(&self) -> u64 {
        self.groups * GROUP_SEGMENTS
    }

    /// Groups of slots (each leaves at most one tombstone in the document).
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// The group a sequence number's slot belongs to.
    pub fn group_of(&self, seq: u64) -> u16 {
        ((seq / GROUP_SEGMENTS) % self.groups) as u16
    }

    /// Segments written since the latest checkpoint after which a new one is started
    /// (see [`CHECKPOINT_LEAD_GROUPS`]).
    pub fn checkpoint_after(&self) -> u64 {
        let lead = CHECKPOINT_LEAD_GROUPS.min(self.groups / 2);
        (self.groups - lead) * GROUP_SEGMENTS
    }

    /// The key of segment `key` in this ring.
    pub fn encode(&self, key: &SegmentKey) -> Vec<u8> {
        key.encode_in(self.group_of(key.seq))
    }
}

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

/// The prefix that deletes a whole group.
pub fn group_prefix(group: u16) -> Vec<u8> {
    let mut key = SEGMENT_PREFIX.to_vec();
    key.extend_from_slice(&group.to_be_bytes());
    key
}

impl SegmentKey {
    /// The document key, in slot group `group` (see [`RingSize::encode`]).
    fn encode_in(&self, group: u16) -> Vec<u8> {
        let mut key = group_prefix(group);
        key.push((self.seq % GROUP_SEGMENTS) as u8);
        for n in [self.seq, self.first, self.last, self.first_time_ms] {
            key.extend_from_slice(&n.to_be_bytes());
        }
        debug_assert_eq!(key.len(), SEGMENT_KEY_LEN);
        key
    }

    /// Reads a document key: the segment and the slot group it is in; `None` for anything
    /// that is not a well-formed segment key (another key, a group tombstone, a key whose
    /// slot does not match its sequence). Any ring size reads: the group is in the key.
    pub fn decode(key: &[u8]) -> Option<(u16, SegmentKey)> {
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
        let consistent = u64::from(slot) == segment.seq % GROUP_SEGMENTS
            && segment.first >= 1
            && segment.last >= segment.first;
        consistent.then_some((group, segment))
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
        for ring in [RingSize::default(), RingSize::new(MIN_SLOTS).unwrap()] {
            let slots = ring.slots();
            let mut keys: Vec<Vec<u8>> = vec![
                CHECKPOINT_BLOB_KEY.to_vec(),
                CHECKPOINT_META_KEY.to_vec(),
                HEARTBEAT_KEY.to_vec(),
            ];
            keys.extend((0..3 * slots).step_by(61).map(|s| ring.encode(&segment(s))));
            for (i, a) in keys.iter().enumerate() {
                for (j, b) in keys.iter().enumerate() {
                    if i != j {
                        assert!(!b.starts_with(a), "{a:?} is a prefix of {b:?}");
                    }
                }
            }
            for seq in [0, 63, 64, slots - 1, slots, 5 * slots + 77] {
                let key = ring.encode(&segment(seq));
                let group = ring.group_of(seq);
                assert!(key.starts_with(&group_prefix(group)));
                let other = (group + 1) % ring.groups() as u16;
                assert!(!key.starts_with(&group_prefix(other)));
                assert_eq!(SegmentKey::decode(&key), Some((group, segment(seq))));
            }
        }
    }

    const MIN_SLOTS: u64 = aspen_config::limits::MIN_SEGMENT_SLOTS;

    #[test]
    fn slots_wrap_after_the_document_is_full_and_groups_follow() {
        for ring in [RingSize::default(), RingSize::new(MIN_SLOTS).unwrap()] {
            let last_group = (ring.groups() - 1) as u16;
            assert_eq!(ring.group_of(0), 0);
            assert_eq!(ring.group_of(GROUP_SEGMENTS - 1), 0);
            assert_eq!(ring.group_of(GROUP_SEGMENTS), 1);
            assert_eq!(ring.group_of(ring.slots() - 1), last_group);
            assert_eq!(ring.group_of(ring.slots()), 0, "the first group is reused");
        }
    }

    #[test]
    fn the_ring_size_is_whole_groups_within_bounds_and_checkpoints_lead_it() {
        use aspen_config::limits::{DEFAULT_SEGMENT_SLOTS, MAX_SEGMENT_SLOTS};
        assert_eq!(RingSize::default().slots(), DEFAULT_SEGMENT_SLOTS);
        for ok in [MIN_SLOTS, MIN_SLOTS + GROUP_SEGMENTS, MAX_SEGMENT_SLOTS] {
            assert_eq!(RingSize::new(ok).unwrap().slots(), ok);
        }
        for bad in [
            MIN_SLOTS - GROUP_SEGMENTS,
            MAX_SEGMENT_SLOTS + GROUP_SEGMENTS,
            MIN_SLOTS + 1,
        ] {
            assert!(RingSize::new(bad).is_err(), "{bad}");
        }
        // Eight groups ahead in a large ring, half the ring in a small one.
        assert_eq!(
            RingSize::default().checkpoint_after(),
            DEFAULT_SEGMENT_SLOTS - CHECKPOINT_LEAD_GROUPS * GROUP_SEGMENTS
        );
        assert_eq!(
            RingSize::new(MIN_SLOTS).unwrap().checkpoint_after(),
            GROUP_SEGMENTS
        );
        assert_eq!(
            RingSize::new(4 * GROUP_SEGMENTS)
                .unwrap()
                .checkpoint_after(),
            2 * GROUP_SEGMENTS
        );
    }

    #[test]
    fn malformed_keys_are_not_segments() {
        let ring = RingSize::default();
        assert_eq!(SegmentKey::decode(b"h"), None);
        assert_eq!(SegmentKey::decode(&group_prefix(3)), None);
        let mut key = ring.encode(&segment(5));
        key[SEGMENT_PREFIX.len() + 2] = 6; // slot that does not match the sequence
        assert_eq!(SegmentKey::decode(&key), None);
        let backwards = SegmentKey {
            seq: 1,
            first: 9,
            last: 8,
            first_time_ms: 0,
        };
        assert_eq!(SegmentKey::decode(&ring.encode(&backwards)), None);
    }

    proptest! {
        #[test]
        fn every_segment_key_round_trips(seq in any::<u64>(), first in 1u64.., len in 0u64..1_000_000, t in any::<u64>(), groups in 2u64..=1024) {
            let ring = RingSize::new(groups * GROUP_SEGMENTS).unwrap();
            let key = SegmentKey { seq, first, last: first.saturating_add(len), first_time_ms: t };
            prop_assert_eq!(SegmentKey::decode(&ring.encode(&key)), Some((ring.group_of(seq), key)));
        }
    }
}
