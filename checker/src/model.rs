//! The sequential specification the checker holds a history to: one register per key,
//! initially absent. [`Input`] and [`Output`] are what callers record; the crate-private
//! rest interns values to small ids so the search copies and compares states cheaply.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What a client asked the store to do to one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    /// Read the current value.
    Get,
    /// Set the value, whatever it was.
    Put {
        /// The value written.
        value: Vec<u8>,
    },
    /// Remove the value if there is one.
    Delete,
    /// Compare-and-set: write `new_value` only if the current value equals `expected`.
    Cas {
        /// The value the key must hold; `None` means the key must be absent.
        expected: Option<Vec<u8>>,
        /// The value written when the comparison holds.
        new_value: Vec<u8>,
    },
    /// Compare-and-delete: remove the value only if it equals `expected`.
    Cad {
        /// The value the key must hold for the delete to happen.
        expected: Vec<u8>,
    },
}

/// What the store answered. Its variant must match the [`Input`]'s, or be `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Output {
    /// The value read; `None` if the key was absent.
    Get {
        /// The value the read returned.
        value: Option<Vec<u8>>,
    },
    /// The put was applied.
    Put,
    /// The delete was applied.
    Delete {
        /// Whether the key held a value before the delete.
        deleted: bool,
    },
    /// The compare-and-set was applied.
    Cas {
        /// Whether the comparison held and the new value was written.
        swapped: bool,
    },
    /// The compare-and-delete was applied.
    Cad {
        /// Whether the comparison held and the value was removed.
        deleted: bool,
    },
    /// The operation timed out or failed ambiguously: it may have taken effect at any
    /// time after its call, or never. Its `return_ns` is taken as +infinity.
    Unknown,
}

impl Input {
    /// A short name of the operation kind, for errors and explanations.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Get => "get",
            Input::Put { .. } => "put",
            Input::Delete => "delete",
            Input::Cas { .. } => "cas",
            Input::Cad { .. } => "cad",
        }
    }
}

impl Output {
    /// A short name of the output kind, for errors and explanations.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Get { .. } => "get",
            Output::Put => "put",
            Output::Delete { .. } => "delete",
            Output::Cas { .. } => "cas",
            Output::Cad { .. } => "cad",
            Output::Unknown => "unknown",
        }
    }

    /// Whether the outcome of the operation is unknown (timed out or ambiguous).
    pub fn is_unknown(&self) -> bool {
        matches!(self, Output::Unknown)
    }

    /// Whether this output can answer `input`: same kind, or `Unknown`.
    pub fn answers(&self, input: &Input) -> bool {
        self.is_unknown() || self.kind() == input.kind()
    }
}

/// A value interned within one key's sub-history. [`ABSENT`] stands for "no value".
pub(crate) type ValueId = u32;

/// The id of the absent value, which is also the register's initial state.
pub(crate) const ABSENT: ValueId = 0;

/// An [`Input`] with its values interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Call {
    Get,
    Put(ValueId),
    Delete,
    Cas {
        expected: ValueId,
        new_value: ValueId,
    },
    Cad {
        expected: ValueId,
    },
}

/// An [`Output`] with its values interned. Delete and compare-and-delete share `Removed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    Read(ValueId),
    Done,
    Removed(bool),
    Swapped(bool),
    Unknown,
}

/// Maps the distinct values of one key to dense ids, starting after [`ABSENT`].
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Id of each value seen so far.
    ids: HashMap<Vec<u8>, ValueId>,
    /// The value of each id minus one, so explanations can print states.
    values: Vec<Vec<u8>>,
}

impl Interner {
    /// The id of `value`, assigning the next free one on first sight.
    pub(crate) fn id(&mut self, value: &[u8]) -> ValueId {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = ValueId::try_from(self.values.len() + 1).expect("fewer than 2^32 values");
        self.ids.insert(value.to_vec(), id);
        self.values.push(value.to_vec());
        id
    }

    /// The value behind `id`, or `None` for [`ABSENT`].
    pub(crate) fn value(&self, id: ValueId) -> Option<&[u8]> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        Some(self.values[index].as_slice())
    }

    fn optional(&mut self, value: Option<&Vec<u8>>) -> ValueId {
        value.map_or(ABSENT, |v| self.id(v))
    }

    /// Interns an operation's input and output.
    pub(crate) fn intern(&mut self, input: &Input, output: &Output) -> (Call, Reply) {
        let call = match input {
            Input::Get => Call::Get,
            Input::Put { value } => Call::Put(self.id(value)),
            Input::Delete => Call::Delete,
            Input::Cas {
                expected,
                new_value,
            } => Call::Cas {
                expected: self.optional(expected.as_ref()),
                new_value: self.id(new_value),
            },
            Input::Cad { expected } => Call::Cad {
                expected: self.id(expected),
            },
        };
        let reply = match output {
            Output::Get { value } => Reply::Read(self.optional(value.as_ref())),
            Output::Put => Reply::Done,
            Output::Delete { deleted } | Output::Cad { deleted } => Reply::Removed(*deleted),
            Output::Cas { swapped } => Reply::Swapped(*swapped),
            Output::Unknown => Reply::Unknown,
        };
        (call, reply)
    }
}

/// Runs `call` on a register holding `state`: the next state and the reply it gives.
pub(crate) fn apply(state: ValueId, call: Call) -> (ValueId, Reply) {
    match call {
        Call::Get => (state, Reply::Read(state)),
        Call::Put(value) => (value, Reply::Done),
        Call::Delete => (ABSENT, Reply::Removed(state != ABSENT)),
        Call::Cas {
            expected,
            new_value,
        } if state == expected => (new_value, Reply::Swapped(true)),
        Call::Cas { .. } => (state, Reply::Swapped(false)),
        Call::Cad { expected } if state == expected => (ABSENT, Reply::Removed(true)),
        Call::Cad { .. } => (state, Reply::Removed(false)),
    }
}

/// The state after linearizing an operation at `state`, or `None` if it cannot go there:
/// its known reply differs from the model's. An `Unknown` reply matches anything.
pub(crate) fn step(state: ValueId, call: Call, reply: Reply) -> Option<ValueId> {
    let (next, expected) = apply(state, call);
    (reply == Reply::Unknown || reply == expected).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ValueId = 1;
    const B: ValueId = 2;

    #[test]
    fn get_returns_current_value_and_changes_nothing() {
        assert_eq!(apply(A, Call::Get), (A, Reply::Read(A)));
        assert_eq!(apply(ABSENT, Call::Get), (ABSENT, Reply::Read(ABSENT)));
    }

    #[test]
    fn delete_reports_whether_a_value_existed() {
        assert_eq!(apply(A, Call::Delete), (ABSENT, Reply::Removed(true)));
        assert_eq!(apply(ABSENT, Call::Delete), (ABSENT, Reply::Removed(false)));
    }

    #[test]
    fn cas_swaps_only_when_expected_matches_including_absent() {
        let on_absent = Call::Cas {
            expected: ABSENT,
            new_value: B,
        };
        assert_eq!(apply(ABSENT, on_absent), (B, Reply::Swapped(true)));
        assert_eq!(apply(A, on_absent), (A, Reply::Swapped(false)));
        let on_a = Call::Cas {
            expected: A,
            new_value: B,
        };
        assert_eq!(apply(A, on_a), (B, Reply::Swapped(true)));
        assert_eq!(apply(ABSENT, on_a), (ABSENT, Reply::Swapped(false)));
    }

    #[test]
    fn cad_deletes_only_the_expected_value() {
        assert_eq!(
            apply(A, Call::Cad { expected: A }),
            (ABSENT, Reply::Removed(true))
        );
        assert_eq!(
            apply(B, Call::Cad { expected: A }),
            (B, Reply::Removed(false))
        );
        assert_eq!(
            apply(ABSENT, Call::Cad { expected: A }),
            (ABSENT, Reply::Removed(false))
        );
    }

    #[test]
    fn step_rejects_a_reply_the_model_would_not_give_but_accepts_unknown() {
        assert_eq!(step(A, Call::Get, Reply::Read(B)), None);
        assert_eq!(step(A, Call::Get, Reply::Read(A)), Some(A));
        assert_eq!(step(A, Call::Put(B), Reply::Unknown), Some(B));
    }

    #[test]
    fn interner_gives_equal_values_equal_ids_and_maps_back() {
        let mut interner = Interner::default();
        let first = interner.id(b"x");
        assert_eq!(interner.id(b"x"), first);
        assert_ne!(interner.id(b"y"), first);
        assert_ne!(first, ABSENT);
        assert_eq!(interner.value(first), Some(&b"x"[..]));
        assert_eq!(interner.value(ABSENT), None);
    }
}
