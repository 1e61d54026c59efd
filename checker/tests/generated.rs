//! Histories generated from simulated sequential executions: long ones to show the
//! search scales to real test runs, and property tests that every such history passes
//! while corrupting one read makes it fail.

mod support;

use aspen_checker::{check, CheckLimits, History, Input, Operation, Output, Verdict};
use proptest::prelude::*;
use support::*;

fn random_steps(seed: u64, ops: usize, spread_ns: u16, unknown_per_mille: u64) -> Vec<SimStep> {
    let mut rng = SplitMix(seed);
    (0..ops)
        .map(|_| rng.step(spread_ns, unknown_per_mille))
        .collect()
}

#[test]
fn five_thousand_overlapping_ops_on_one_key_are_linearizable() {
    let sizes = SimSizes {
        clients: 5,
        keys: 1,
        values: 6,
    };
    let history = simulate(&random_steps(7, 5_000, 4 * SIM_GAP_NS as u16, 20), sizes);
    let verdict = check(&history, &CheckLimits::default());
    assert_eq!(
        verdict,
        Verdict::Linearizable {
            ops_checked: 5_000,
            keys: 1
        }
    );
}

#[test]
fn eight_clients_over_a_few_keys_with_timeouts_are_linearizable() {
    let sizes = SimSizes {
        clients: 8,
        keys: 4,
        values: 4,
    };
    let history = simulate(&random_steps(11, 4_000, 6 * SIM_GAP_NS as u16, 20), sizes);
    let verdict = check(&history, &CheckLimits::default());
    assert_eq!(
        verdict,
        Verdict::Linearizable {
            ops_checked: 4_000,
            keys: 4
        }
    );
}

#[test]
fn a_read_of_a_value_never_written_late_in_a_long_history_is_found() {
    let sizes = SimSizes {
        clients: 5,
        keys: 1,
        values: 6,
    };
    let steps = random_steps(3, 3_000, 3 * SIM_GAP_NS as u16, 0);
    let corrupted = corrupt_a_read(&simulate(&steps, sizes), 2_000).expect("a read after 2000");
    let verdict = check(&corrupted, &CheckLimits::default());
    assert!(
        matches!(verdict, Verdict::NotLinearizable { .. }),
        "{verdict:#?}"
    );
}

#[test]
fn a_read_of_a_value_never_written_among_timeouts_is_found() {
    let sizes = SimSizes {
        clients: 8,
        keys: 1,
        values: 200,
    };
    let steps = random_steps(5, 500, 6 * SIM_GAP_NS as u16, 20);
    let corrupted = corrupt_a_read(&simulate(&steps, sizes), 400).expect("a read after 400");
    let verdict = check(&corrupted, &CheckLimits::default());
    assert!(
        matches!(verdict, Verdict::NotLinearizable { .. }),
        "{verdict:#?}"
    );
}

/// The history with the first known read at or after `from` returning a value that was
/// never written; `None` if there is no such read.
fn corrupt_a_read(history: &History, from: usize) -> Option<History> {
    let mut ops: Vec<Operation> = history.ops().to_vec();
    let read = ops
        .iter_mut()
        .skip(from)
        .find(|op| op.input == Input::Get && matches!(op.output, Output::Get { .. }))?;
    read.output = Output::Get {
        value: Some(v("never written")),
    };
    Some(History::try_from(ops).expect("still well formed"))
}

fn sim_step() -> impl Strategy<Value = SimStep> {
    let outcome = prop_oneof![
        8 => Just(SimOutcome::Known),
        1 => Just(SimOutcome::UnknownApplied),
        1 => Just(SimOutcome::UnknownLost),
    ];
    let numbers = (
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    );
    (numbers, 0..400u16, 0..400u16, outcome).prop_map(
        |(n, call_lead_ns, return_lag_ns, outcome)| {
            let (client, key, kind, value, expected) = n;
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
        },
    )
}

fn sim_sizes() -> impl Strategy<Value = SimSizes> {
    (1..6usize, 1..3u8, 1..4u8).prop_map(|(clients, keys, values)| SimSizes {
        clients,
        keys,
        values,
    })
}

proptest! {
    #[test]
    fn any_simulated_sequential_execution_is_linearizable(
        steps in prop::collection::vec(sim_step(), 0..80),
        sizes in sim_sizes(),
    ) {
        let history = simulate(&steps, sizes);
        let verdict = check(&history, &CheckLimits::default());
        prop_assert!(verdict.is_linearizable(), "{:#?}", verdict);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_always_rejected(
        steps in prop::collection::vec(sim_step(), 1..80),
        sizes in sim_sizes(),
        from in 0..80usize,
    ) {
        let history = simulate(&steps, sizes);
        let Some(corrupted) = corrupt_a_read(&history, from % steps.len()) else {
            return Ok(());
        };
        let verdict = check(&corrupted, &CheckLimits::default());
        prop_assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{:#?}", verdict);
    }
}
