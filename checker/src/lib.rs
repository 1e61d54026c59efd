//! Checks recorded histories of Aspen's key-value store for linearizability: that every
//! operation appears to take effect at one instant between its call and its return, in
//! an order consistent with one register per key (initially absent).
//!
//! Workload clients record each operation with its call and return times (a shared
//! [`Recorder`] gives them one clock); [`check()`] then searches for a linearization.
//! Linearizability is compositional over objects (P-compositionality), so a history is
//! linearizable iff each key's sub-history is: keys are checked one by one, which keeps
//! each search small. Each search is Wing & Gong's depth-first search over the
//! time-ordered call and return events, with Lowe's memoization of (set of linearized
//! operations, register value) pairs to prune states already explored, and a budget
//! ([`CheckLimits`]) past which the verdict is [`Verdict::Unknown`] rather than a guess.
//!
//! An operation that timed out or failed ambiguously is recorded with [`Output::Unknown`]:
//! it may take effect at any time after its call, or never. An operation the store
//! definitely did not apply must not be recorded at all.
//!
//! ```
//! use aspen_checker::{check, CheckLimits, History, Input, Operation, Output};
//!
//! let op = |input, output, call_ns, return_ns| Operation {
//!     client: 1, key: "a".into(), input, output, call_ns, return_ns,
//! };
//! let mut history = History::new();
//! history.push(op(Input::Put { value: b"1".to_vec() }, Output::Put, 0, 10)).unwrap();
//! history.push(op(Input::Get, Output::Get { value: None }, 20, 30)).unwrap();
//! assert!(!check(&history, &CheckLimits::default()).is_linearizable());
//! ```
//!
//! # Layout
//!
//! - [`model`]: the operations' inputs and outputs and the register's sequential semantics.
//! - [`history`]: recorded operations, the validated history and the shared recorder.
//! - [`check`](mod@check): per-key partitioning, search limits and the verdict.
//! - `search`: the per-key depth-first search; beside it `search/events.rs` (the linked
//!   list of call and return events), `search/bitset.rs` (sets of linearized operations)
//!   and `search/visited.rs` (the memo of states reached, with dominance pruning).
//! - [`explain`]: human-readable operations and violation explanations.
//! - [`workload`]: concurrent HTTP clients that drive a deployment and record a history.

#![warn(missing_docs)]

pub mod check;
pub mod explain;
pub mod history;
pub mod model;
mod search;
pub mod workload;

pub use check::{check, CheckLimits, Verdict, DEFAULT_MAX_STATES_PER_KEY};
pub use history::{History, HistoryError, Operation, Recorder, MAX_HISTORY_OPS};
pub use model::{Input, Output};
