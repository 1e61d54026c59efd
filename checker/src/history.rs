//! What gets checked: [`Operation`]s with their call and return times, gathered in a
//! [`History`] that rejects malformed operations on entry, and a [`Recorder`] that many
//! concurrent workload clients share to build one history against one clock.
//!
//! Record every operation whose effect is known or might have happened. An operation the
//! store *definitely* did not apply (it answered "nothing applied", e.g. a validation
//! error or a refused request) must not be recorded at all: it is neither a known outcome
//! nor an [`Output::Unknown`] one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::{Input, Output};

/// Most operations a history holds. Each costs ~100 bytes here and a few more bits in
/// the search, so 10 million keeps a runaway workload to about a gigabyte instead of
/// exhausting the machine; real test runs record thousands.
pub const MAX_HISTORY_OPS: usize = 10_000_000;

/// One operation as a client saw it: what it asked, what it got, and when.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// Which workload client issued it; used only in explanations.
    pub client: u64,
    /// The key operated on; each key is checked on its own.
    pub key: String,
    /// What the client asked for.
    pub input: Input,
    /// What the store answered, or `Unknown`.
    pub output: Output,
    /// When the client sent it, in nanoseconds from a clock shared by all clients.
    pub call_ns: u64,
    /// When the answer arrived, on the same clock; ignored (taken as +infinity) when
    /// `output` is `Unknown`.
    pub return_ns: u64,
}

/// Why an operation was refused entry to a [`History`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A known answer arrived before the call was sent: the clocks are wrong.
    #[error("client {client}: return at {return_ns} ns precedes call at {call_ns} ns")]
    ReturnBeforeCall {
        /// The client that recorded the operation.
        client: u64,
        /// The call time recorded.
        call_ns: u64,
        /// The (earlier) return time recorded.
        return_ns: u64,
    },
    /// The output's kind does not answer the input's kind (e.g. a `Put` answered `Get`).
    #[error("a {output} output cannot answer a {input} input")]
    MismatchedOutput {
        /// The input's kind.
        input: &'static str,
        /// The output's kind.
        output: &'static str,
    },
    /// The history already holds [`MAX_HISTORY_OPS`] operations.
    #[error("history is full: at most {max} operations")]
    TooManyOps {
        /// The limit that was reached.
        max: usize,
    },
}

/// A validated list of operations, in the order they were recorded (any order works).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Operation>", into = "Vec<Operation>")]
pub struct History {
    /// Every operation pushed so far; each passed [`History::push`]'s checks.
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `op` after checking that its output answers its input and that a known
    /// answer does not return before its call.
    pub fn push(&mut self, op: Operation) -> Result<(), HistoryError> {
        if self.ops.len() >= MAX_HISTORY_OPS {
            return Err(HistoryError::TooManyOps {
                max: MAX_HISTORY_OPS,
            });
        }
        if !op.output.answers(&op.input) {
            return Err(HistoryError::MismatchedOutput {
                input: op.input.kind(),
                output: op.output.kind(),
            });
        }
        if !op.output.is_unknown() && op.return_ns < op.call_ns {
            return Err(HistoryError::ReturnBeforeCall {
                client: op.client,
                call_ns: op.call_ns,
                return_ns: op.return_ns,
            });
        }
        self.ops.push(op);
        Ok(())
    }

    /// How many operations the history holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the history holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, in the order they were pushed.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }
}

impl TryFrom<Vec<Operation>> for History {
    type Error = HistoryError;

    fn try_from(ops: Vec<Operation>) -> Result<Self, Self::Error> {
        let mut history = History::new();
        for op in ops {
            history.push(op)?;
        }
        Ok(history)
    }
}

impl From<History> for Vec<Operation> {
    fn from(history: History) -> Self {
        history.ops
    }
}

/// A thread-safe history shared by concurrent clients, with the clock they all read.
/// Cloning it shares the same history and clock.
///
/// ```
/// use aspen_checker::{Input, Operation, Output, Recorder};
///
/// let recorder = Recorder::new();
/// let call_ns = recorder.now_ns();
/// // ... send the request and wait for the answer ...
/// let return_ns = recorder.now_ns();
/// recorder
///     .record(Operation {
///         client: 1,
///         key: "a".into(),
///         input: Input::Put { value: b"1".to_vec() },
///         output: Output::Put,
///         call_ns,
///         return_ns,
///     })
///     .unwrap();
/// assert_eq!(recorder.history().len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct Recorder {
    /// The history all clones append to.
    history: Arc<Mutex<History>>,
    /// Time zero of [`Recorder::now_ns`]; monotonic, so times never run backwards.
    origin: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder whose clock starts now.
    pub fn new() -> Self {
        Self {
            history: Arc::default(),
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the recorder was created; read it just before sending a request
    /// (`call_ns`) and just after its answer arrives (`return_ns`).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends `op` to the shared history, with [`History::push`]'s checks.
    pub fn record(&self, op: Operation) -> Result<(), HistoryError> {
        self.lock().push(op)
    }

    /// A copy of the history recorded so far.
    pub fn history(&self) -> History {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // A client that panicked cannot leave a half-pushed operation behind, so the
        // history stays valid and later clients may keep recording.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(call_ns: u64, return_ns: u64) -> Operation {
        Operation {
            client: 1,
            key: "a".into(),
            input: Input::Put {
                value: b"1".to_vec(),
            },
            output: Output::Put,
            call_ns,
            return_ns,
        }
    }

    #[test]
    fn push_rejects_a_return_before_its_call() {
        let err = History::new().push(put(10, 5)).unwrap_err();
        assert_eq!(
            err,
            HistoryError::ReturnBeforeCall {
                client: 1,
                call_ns: 10,
                return_ns: 5
            }
        );
    }

    #[test]
    fn push_accepts_any_return_time_for_an_unknown_output() {
        let mut history = History::new();
        history
            .push(Operation {
                output: Output::Unknown,
                ..put(10, 0)
            })
            .unwrap();
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn push_rejects_an_output_of_another_kind() {
        let op = Operation {
            output: Output::Get { value: None },
            ..put(0, 1)
        };
        let err = History::new().push(op).unwrap_err();
        assert_eq!(
            err,
            HistoryError::MismatchedOutput {
                input: "put",
                output: "get"
            }
        );
    }

    #[test]
    fn building_from_a_list_runs_the_push_checks_that_deserializing_uses() {
        let ops = vec![put(10, 5)];
        let bad: Result<History, _> = History::try_from(ops);
        assert!(bad.is_err());
    }

    #[test]
    fn recorder_collects_operations_from_many_threads_on_one_clock() {
        let recorder = Recorder::new();
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        let call_ns = recorder.now_ns();
                        let return_ns = recorder.now_ns();
                        let op = Operation {
                            client,
                            ..put(call_ns, return_ns)
                        };
                        recorder.record(op).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(recorder.history().len(), 100);
    }
}
