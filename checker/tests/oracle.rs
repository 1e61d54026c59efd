//! Tiny random histories, linearizable or not, checked against a brute-force search
//! written here independently of the checker: the two must agree in both directions,
//! which tests the checker's pruning for soundness and its search for completeness.

mod support;

use std::collections::BTreeMap;

use aspen_checker::{check, CheckLimits, Input, Operation, Output};
use proptest::prelude::*;
use support::*;

/// Whether some order of all known operations and any subset of the unknown ones
/// respects real time (an operation that returned before another was called goes first)
/// and the register's semantics. Tries every order: only for a handful of operations.
fn brute_force_linearizable(ops: &[Operation]) -> bool {
    let mut used = vec![false; ops.len()];
    extend(ops, &mut used, &None)
}

fn extend(ops: &[Operation], used: &mut [bool], value: &Option<Vec<u8>>) -> bool {
    let known_left = (0..ops.len()).any(|i| !used[i] && !ops[i].output.is_unknown());
    if !known_left {
        return true;
    }
    for next in 0..ops.len() {
        if used[next] || must_wait(ops, used, next) {
            continue;
        }
        let mut store = BTreeMap::new();
        if let Some(value) = value {
            store.insert("k".to_owned(), value.clone());
        }
        let output = apply(&mut store, "k", &ops[next].input);
        if !ops[next].output.is_unknown() && output != ops[next].output {
            continue;
        }
        used[next] = true;
        let found = extend(ops, used, &store.get("k").cloned());
        used[next] = false;
        if found {
            return true;
        }
    }
    false
}

/// Whether some unused known operation returned before `next` was called.
fn must_wait(ops: &[Operation], used: &[bool], next: usize) -> bool {
    (0..ops.len())
        .any(|i| !used[i] && !ops[i].output.is_unknown() && ops[i].return_ns < ops[next].call_ns)
}

fn small_value() -> impl Strategy<Value = Vec<u8>> {
    (0..2u8).prop_map(|n| v(&n.to_string()))
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::Get),
        small_value().prop_map(|value| Input::Put { value }),
        Just(Input::Delete),
        (prop::option::of(small_value()), small_value()).prop_map(|(expected, new_value)| {
            Input::Cas {
                expected,
                new_value,
            }
        }),
        small_value().prop_map(|expected| Input::Cad { expected }),
    ]
}

/// A random output of the input's kind, or `Unknown` about one time in four.
fn output_for(input: &Input) -> BoxedStrategy<Output> {
    let known = match input {
        Input::Get => prop::option::of(small_value())
            .prop_map(|value| Output::Get { value })
            .boxed(),
        Input::Put { .. } => Just(Output::Put).boxed(),
        Input::Delete => any::<bool>()
            .prop_map(|deleted| Output::Delete { deleted })
            .boxed(),
        Input::Cas { .. } => any::<bool>()
            .prop_map(|swapped| Output::Cas { swapped })
            .boxed(),
        Input::Cad { .. } => any::<bool>()
            .prop_map(|deleted| Output::Cad { deleted })
            .boxed(),
    };
    prop_oneof![3 => known, 1 => Just(Output::Unknown)].boxed()
}

fn operation() -> impl Strategy<Value = Operation> {
    (input(), 0..30u64, 0..15u64).prop_flat_map(|(input, call_ns, duration_ns)| {
        output_for(&input).prop_map(move |output| Operation {
            client: 0,
            key: "k".into(),
            input: input.clone(),
            output,
            call_ns,
            return_ns: call_ns + duration_ns,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn checker_agrees_with_brute_force_on_tiny_histories(
        ops in prop::collection::vec(operation(), 1..7),
    ) {
        let expected = brute_force_linearizable(&ops);
        let verdict = check(&history(ops), &CheckLimits::default());
        prop_assert_eq!(verdict.is_linearizable(), expected, "{:#?}", verdict);
    }
}
