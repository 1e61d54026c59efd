//! The set of operations linearized so far, and its compact, canonical form used as a
//! cache key. Operations are numbered in call order, so the set is mostly a run of ones
//! followed by a short ragged window: the key stores the run's length, not its words.

/// A fixed-size set of operation slots.
#[derive(Debug, Clone)]
pub(super) struct Bitset {
    /// Bit `i % 64` of word `i / 64` is set when slot `i` is in the set.
    words: Vec<u64>,
}

/// A [`Bitset`] in canonical form: equal sets (of the same size) give equal keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BitsKey {
    /// How many leading words are all ones.
    full_words: usize,
    /// The words after those, up to the last non-zero one.
    rest: Box<[u64]>,
}

impl Bitset {
    /// An empty set able to hold slots `0..len`.
    pub(super) fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Adds `slot`.
    pub(super) fn insert(&mut self, slot: usize) {
        self.words[slot / 64] |= 1 << (slot % 64);
    }

    /// Removes `slot`.
    pub(super) fn remove(&mut self, slot: usize) {
        self.words[slot / 64] &= !(1 << (slot % 64));
    }

    /// Whether `slot` is in the set.
    pub(super) fn contains(&self, slot: usize) -> bool {
        self.words[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// The set's words, bit `i % 64` of word `i / 64` standing for slot `i`.
    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }

    /// The canonical key of the current set.
    pub(super) fn key(&self) -> BitsKey {
        let full_words = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |last| last + 1);
        let rest = self.words[full_words..end.max(full_words)].into();
        BitsKey { full_words, rest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_contains_agree() {
        let mut set = Bitset::new(130);
        set.insert(0);
        set.insert(129);
        assert!(set.contains(0) && set.contains(129) && !set.contains(64));
        set.remove(129);
        assert!(!set.contains(129));
    }

    #[test]
    fn key_is_equal_for_equal_sets_reached_in_different_orders() {
        let (mut one, mut two) = (Bitset::new(200), Bitset::new(200));
        for slot in 0..70 {
            one.insert(slot);
        }
        one.insert(150);
        two.insert(150);
        for slot in (0..70).rev() {
            two.insert(slot);
        }
        assert_eq!(one.key(), two.key());
        assert_eq!(one.key().full_words, 1);
    }

    #[test]
    fn key_differs_for_different_sets() {
        let (mut one, mut two) = (Bitset::new(200), Bitset::new(200));
        one.insert(3);
        two.insert(131);
        assert_ne!(one.key(), two.key());
        assert_ne!(one.key(), Bitset::new(200).key());
    }
}
