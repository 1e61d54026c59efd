//! The entry point: split a history by key (a history is linearizable iff each key's
//! sub-history is), search each key within [`CheckLimits`], and turn the outcomes into
//! one [`Verdict`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::explain;
use crate::history::{History, Operation};
use crate::model::Interner;
use crate::search::{search, KeyOp, Outcome};

/// Default search budget per key, in distinct states (linearized operations, value).
/// Histories from real runs (8 clients, a few hundred operations per key) need a few
/// states per operation, and so do linearizable ones of thousands of operations. Two
/// million leaves room for heavy overlap and timeouts while bounding the worst key to a
/// few seconds (release build) and well under a gigabyte of memory.
pub const DEFAULT_MAX_STATES_PER_KEY: u64 = 2_000_000;

/// Bounds on the work [`check`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckLimits {
    /// Most distinct states the search may visit for one key before giving up with
    /// [`Verdict::Unknown`].
    pub max_states_per_key: u64,
}

impl Default for CheckLimits {
    fn default() -> Self {
        Self {
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
        }
    }
}

/// The result of checking a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every key's operations can be put in one order that respects real time and the
    /// register's semantics.
    Linearizable {
        /// Operations in the history, including those with unknown outcomes.
        ops_checked: usize,
        /// Distinct keys checked.
        keys: usize,
    },
    /// Some key's operations cannot; the first such key (in key order) is reported.
    NotLinearizable {
        /// The key whose sub-history has no linearization.
        key: String,
        /// Operations of that key.
        ops_checked: usize,
        /// Where the search got furthest and which operation could not be placed.
        explanation: String,
    },
    /// No key was found to violate linearizability, but one could not be decided.
    Unknown {
        /// The first key (in key order) left undecided.
        key: String,
        /// Why it was left undecided.
        reason: String,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

/// Checks whether `history` is linearizable with respect to one register per key,
/// each initially absent. A violation anywhere wins over an undecided key.
pub fn check(history: &History, limits: &CheckLimits) -> Verdict {
    let by_key = partition(history.ops());
    let mut undecided = None;
    for (key, ops) in &by_key {
        match check_key(key, ops, limits) {
            None => {}
            Some(violation @ Verdict::NotLinearizable { .. }) => return violation,
            Some(other) => {
                undecided.get_or_insert(other);
            }
        }
    }
    undecided.unwrap_or(Verdict::Linearizable {
        ops_checked: history.len(),
        keys: by_key.len(),
    })
}

/// The operations of each key, in key order, each list in recording order.
fn partition(ops: &[Operation]) -> BTreeMap<&str, Vec<&Operation>> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    by_key
}

/// Checks one key's operations: `None` if linearizable, otherwise the key's verdict.
fn check_key(key: &str, ops: &[&Operation], limits: &CheckLimits) -> Option<Verdict> {
    let mut interner = Interner::default();
    let key_ops: Vec<KeyOp> = ops
        .iter()
        .map(|op| {
            let (call, reply) = interner.intern(&op.input, &op.output);
            let return_ns = (!op.output.is_unknown()).then_some(op.return_ns);
            KeyOp {
                call,
                reply,
                call_ns: op.call_ns,
                return_ns,
            }
        })
        .collect();
    match search(&key_ops, limits.max_states_per_key) {
        Outcome::Linearizable => None,
        Outcome::Violation(end) => Some(Verdict::NotLinearizable {
            key: key.to_owned(),
            ops_checked: ops.len(),
            explanation: explain::dead_end(ops, &end, interner.value(end.state)),
        }),
        Outcome::OverBudget { states, deepest } => Some(Verdict::Unknown {
            key: key.to_owned(),
            reason: format!(
                "search budget exhausted: {states} states visited for {} operations (limit \
                 {}); raise CheckLimits::max_states_per_key or record a shorter history{}",
                ops.len(),
                limits.max_states_per_key,
                deepest.map_or(String::new(), |end| explain::progress(ops, &end)),
            ),
        }),
    }
}
