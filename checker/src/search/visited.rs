//! The states the search has reached, pruned by dominance. A state is the set of known
//! operations linearized, the register's value, and the set of optional (unknown-outcome)
//! operations linearized. Of two states alike in the first two, the one with fewer
//! optional operations taken can do everything the other can (an optional operation
//! left out may still be taken later, or never), so reaching a superset of optional
//! operations already seen with the same known set and value is pointless.

use std::collections::HashMap;

use super::bitset::{BitsKey, Bitset};
use crate::model::ValueId;

/// Most optional-operation sets kept per (known set, value). Forgetting a state only
/// costs pruning, never soundness; the cap keeps each lookup cheap when optional
/// operations combine in many incomparable ways.
const MAX_OPTIONAL_SETS: usize = 32;

/// Every state reached, grouped by (known set, value).
#[derive(Debug, Default)]
pub(super) struct Visited {
    /// For each (known set, value), the minimal optional sets reached with it.
    optional_sets: HashMap<(BitsKey, ValueId), Vec<Box<[u64]>>>,
    /// How many states were recorded as new; the search's budget counts these.
    states: u64,
}

impl Visited {
    /// Records a state; `false` if it equals or is dominated by one already reached.
    pub(super) fn insert(&mut self, known: BitsKey, value: ValueId, optional: &Bitset) -> bool {
        let optional = optional.words();
        let seen = self.optional_sets.entry((known, value)).or_default();
        if seen.iter().any(|earlier| is_subset(earlier, optional)) {
            return false;
        }
        seen.retain(|earlier| !is_subset(optional, earlier));
        if seen.len() == MAX_OPTIONAL_SETS {
            seen.remove(0);
        }
        seen.push(optional.into());
        self.states += 1;
        true
    }

    /// How many new states were recorded.
    pub(super) fn states(&self) -> u64 {
        self.states
    }
}

/// Whether every bit set in `small` is set in `large` (both of the same length).
fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small.iter().zip(large).all(|(s, l)| s & !l == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn optional(slots: &[usize]) -> Bitset {
        let mut set = Bitset::new(100);
        slots.iter().for_each(|&slot| set.insert(slot));
        set
    }

    #[test]
    fn a_state_with_more_optional_operations_taken_is_pruned() {
        let mut visited = Visited::default();
        let known = Bitset::new(10).key();
        assert!(visited.insert(known.clone(), 1, &optional(&[3])));
        assert!(!visited.insert(known.clone(), 1, &optional(&[3])));
        assert!(!visited.insert(known.clone(), 1, &optional(&[3, 70])));
        assert!(visited.insert(known.clone(), 2, &optional(&[3, 70])));
        assert!(visited.insert(known, 1, &optional(&[70])));
        assert_eq!(visited.states(), 3);
    }

    #[test]
    fn a_state_with_fewer_optional_operations_taken_is_new_and_replaces_its_supersets() {
        let mut visited = Visited::default();
        let known = Bitset::new(10).key();
        assert!(visited.insert(known.clone(), 1, &optional(&[3, 70])));
        assert!(visited.insert(known.clone(), 1, &optional(&[])));
        assert_eq!(visited.optional_sets[&(known, 1)].len(), 1);
    }
}
