//! Helpers shared by the integration tests: short constructors for operations, and a
//! simulator that turns a sequential execution into a concurrent-looking history that
//! is linearizable by construction. The simulator's register semantics are written
//! here independently of the checker's, so the two check each other.

#![allow(dead_code)] // Each test file uses a different subset.

use std::collections::BTreeMap;

use aspen_checker::{check, CheckLimits, History, Input, Operation, Output, Verdict};

/// Bytes of a string value.
pub fn v(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

/// An operation of client 0 on `key`.
pub fn op(key: &str, input: Input, output: Output, call_ns: u64, return_ns: u64) -> Operation {
    Operation {
        client: 0,
        key: key.into(),
        input,
        output,
        call_ns,
        return_ns,
    }
}

/// `put key=value`, acknowledged.
pub fn put(key: &str, value: &str, call_ns: u64, return_ns: u64) -> Operation {
    op(
        key,
        Input::Put { value: v(value) },
        Output::Put,
        call_ns,
        return_ns,
    )
}

/// `get key` returning `value` (`None`: absent).
pub fn get(key: &str, value: Option<&str>, call_ns: u64, return_ns: u64) -> Operation {
    let output = Output::Get {
        value: value.map(v),
    };
    op(key, Input::Get, output, call_ns, return_ns)
}

/// `delete key` reporting whether something was deleted.
pub fn delete(key: &str, deleted: bool, call_ns: u64, return_ns: u64) -> Operation {
    op(
        key,
        Input::Delete,
        Output::Delete { deleted },
        call_ns,
        return_ns,
    )
}

/// `cas key expected -> new_value` reporting whether it swapped.
pub fn cas(key: &str, expected: Option<&str>, new_value: &str, swapped: bool) -> CasBuilder {
    let input = Input::Cas {
        expected: expected.map(v),
        new_value: v(new_value),
    };
    CasBuilder {
        key: key.into(),
        input,
        output: Output::Cas { swapped },
    }
}

/// `cad key expected` reporting whether it deleted.
pub fn cad(key: &str, expected: &str, deleted: bool) -> CasBuilder {
    let input = Input::Cad {
        expected: v(expected),
    };
    CasBuilder {
        key: key.into(),
        input,
        output: Output::Cad { deleted },
    }
}

/// A conditional operation waiting for its interval (keeps argument lists short).
pub struct CasBuilder {
    key: String,
    input: Input,
    output: Output,
}

impl CasBuilder {
    /// The operation over `[call_ns, return_ns]`.
    pub fn at(self, call_ns: u64, return_ns: u64) -> Operation {
        op(&self.key, self.input, self.output, call_ns, return_ns)
    }
}

/// The same operation with an unknown outcome (timed out).
pub fn timed_out(op: Operation) -> Operation {
    Operation {
        output: Output::Unknown,
        return_ns: u64::MAX,
        ..op
    }
}

/// The same operation, issued by `client`.
pub fn by(client: u64, op: Operation) -> Operation {
    Operation { client, ..op }
}

/// A history of `ops`, which must be well formed.
pub fn history(ops: Vec<Operation>) -> History {
    History::try_from(ops).expect("test operations are well formed")
}

/// Checks `ops` with the default limits.
pub fn verdict(ops: Vec<Operation>) -> Verdict {
    check(&history(ops), &CheckLimits::default())
}

/// Nanoseconds between consecutive linearization points in a simulation.
pub const SIM_GAP_NS: u64 = 100;

/// What became of one simulated operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOutcome {
    /// Applied and answered.
    Known,
    /// Applied, but the client timed out and recorded `Unknown`.
    UnknownApplied,
    /// Never applied; the client timed out and recorded `Unknown`.
    UnknownLost,
}

/// One operation of a simulated workload, in the order operations take effect.
/// Fields are raw numbers reduced modulo the simulation's sizes.
#[derive(Debug, Clone, Copy)]
pub struct SimStep {
    pub client: u8,
    pub key: u8,
    pub kind: u8,
    pub value: u8,
    pub expected: u8,
    /// How long before its linearization point the operation was called.
    pub call_lead_ns: u16,
    /// How long after its linearization point it returned.
    pub return_lag_ns: u16,
    pub outcome: SimOutcome,
}

/// Sizes of a simulation.
#[derive(Debug, Clone, Copy)]
pub struct SimSizes {
    pub clients: usize,
    pub keys: u8,
    pub values: u8,
}

/// Runs `steps` sequentially against an in-memory store and records them with intervals
/// around their (increasing) linearization points, each client one operation at a time.
pub fn simulate(steps: &[SimStep], sizes: SimSizes) -> History {
    let mut store = BTreeMap::new();
    let mut free_at_ns = vec![0u64; sizes.clients];
    let mut lin_ns = 0;
    let mut history = History::new();
    for step in steps {
        lin_ns += SIM_GAP_NS;
        let client = pick_client(
            &free_at_ns,
            usize::from(step.client) % sizes.clients,
            lin_ns,
        );
        lin_ns = lin_ns.max(free_at_ns[client]);
        let call_ns = free_at_ns[client].max(lin_ns.saturating_sub(step.call_lead_ns.into()));
        let return_ns = lin_ns + u64::from(step.return_lag_ns);
        free_at_ns[client] = return_ns + 1;
        let key = format!("k{}", step.key % sizes.keys);
        let input = sim_input(step, sizes.values);
        let output = match step.outcome {
            SimOutcome::Known => apply(&mut store, &key, &input),
            SimOutcome::UnknownApplied => {
                apply(&mut store, &key, &input);
                Output::Unknown
            }
            SimOutcome::UnknownLost => Output::Unknown,
        };
        let client = client as u64;
        let op = Operation {
            client,
            key,
            input,
            output,
            call_ns,
            return_ns,
        };
        history
            .push(op)
            .expect("simulated operations are well formed");
    }
    history
}

/// The preferred client if it is free by `lin_ns`, else the next free one, else the one
/// that frees up first.
fn pick_client(free_at_ns: &[u64], preferred: usize, lin_ns: u64) -> usize {
    let clients = free_at_ns.len();
    (0..clients)
        .map(|offset| (preferred + offset) % clients)
        .find(|&client| free_at_ns[client] <= lin_ns)
        .unwrap_or_else(|| {
            (0..clients)
                .min_by_key(|&client| free_at_ns[client])
                .unwrap()
        })
}

fn sim_input(step: &SimStep, values: u8) -> Input {
    let value = v(&(step.value % values).to_string());
    // One choice in `values + 1` expects the key to be absent.
    let expected = u16::from(step.expected) % (u16::from(values) + 1);
    let expected = (expected < u16::from(values)).then(|| v(&expected.to_string()));
    match step.kind % 5 {
        0 => Input::Get,
        1 => Input::Put { value },
        2 => Input::Delete,
        3 => Input::Cas {
            expected,
            new_value: value,
        },
        _ => Input::Cad {
            expected: expected.unwrap_or(value),
        },
    }
}

/// The register semantics, written independently of the checker's model.
pub fn apply(store: &mut BTreeMap<String, Vec<u8>>, key: &str, input: &Input) -> Output {
    let current = store.get(key).cloned();
    match input {
        Input::Get => Output::Get { value: current },
        Input::Put { value } => {
            store.insert(key.to_owned(), value.clone());
            Output::Put
        }
        Input::Delete => Output::Delete {
            deleted: store.remove(key).is_some(),
        },
        Input::Cas {
            expected,
            new_value,
        } => {
            let swapped = current == *expected;
            if swapped {
                store.insert(key.to_owned(), new_value.clone());
            }
            Output::Cas { swapped }
        }
        Input::Cad { expected } => {
            let deleted = current.as_ref() == Some(expected);
            if deleted {
                store.remove(key);
            }
            Output::Cad { deleted }
        }
    }
}

/// A small deterministic generator (SplitMix64) for long simulations without a
/// randomness dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A pseudo-random number below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// A random step whose interval reaches up to `spread_ns` either side of its point,
    /// with an unknown outcome in about `unknown_per_mille` of a thousand steps.
    pub fn step(&mut self, spread_ns: u16, unknown_per_mille: u64) -> SimStep {
        let mut byte = || self.below(256) as u8;
        let (client, key, kind, value, expected) = (byte(), byte(), byte(), byte(), byte());
        let call_lead_ns = self.below(u64::from(spread_ns) + 1) as u16;
        let return_lag_ns = self.below(u64::from(spread_ns) + 1) as u16;
        let outcome = match self.below(1000) {
            roll if roll >= unknown_per_mille => SimOutcome::Known,
            roll if roll % 2 == 0 => SimOutcome::UnknownApplied,
            _ => SimOutcome::UnknownLost,
        };
        SimStep {
            client,
            key,
            kind,
            value,
            expected,
            call_lead_ns,
            return_lag_ns,
            outcome,
        }
    }
}
