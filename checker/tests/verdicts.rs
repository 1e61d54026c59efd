//! Hand-written histories with known answers: what the checker must accept, what it
//! must reject, and how it reports keys, unknown outcomes and its search budget.

mod support;

use aspen_checker::{check, CheckLimits, Verdict};
use support::*;

fn assert_linearizable(verdict: Verdict) {
    assert!(
        verdict.is_linearizable(),
        "expected linearizable, got {verdict:#?}"
    );
}

/// Asserts a violation on `expected_key` and returns its explanation.
fn assert_violation_on(expected_key: &str, verdict: Verdict) -> String {
    match verdict {
        Verdict::NotLinearizable {
            key, explanation, ..
        } if key == expected_key => explanation,
        other => panic!("expected a violation on {expected_key:?}, got {other:#?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    let verdict = verdict(vec![]);
    assert_eq!(
        verdict,
        Verdict::Linearizable {
            ops_checked: 0,
            keys: 0
        }
    );
}

#[test]
fn sequential_history_of_every_kind_is_linearizable() {
    let verdict = verdict(vec![
        get("a", None, 0, 1),
        put("a", "1", 2, 3),
        get("a", Some("1"), 4, 5),
        cas("a", Some("1"), "2", true).at(6, 7),
        cas("a", Some("1"), "3", false).at(8, 9),
        cad("a", "1", false).at(10, 11),
        cad("a", "2", true).at(12, 13),
        delete("a", false, 14, 15),
        cas("a", None, "4", true).at(16, 17),
        delete("a", true, 18, 19),
        get("a", None, 20, 21),
    ]);
    assert_eq!(
        verdict,
        Verdict::Linearizable {
            ops_checked: 11,
            keys: 1
        }
    );
}

#[test]
fn concurrent_writes_may_be_observed_in_either_order() {
    for last in ["1", "2"] {
        assert_linearizable(verdict(vec![
            by(1, put("a", "1", 0, 10)),
            by(2, put("a", "2", 5, 15)),
            by(3, get("a", Some(last), 20, 30)),
            by(3, get("a", Some(last), 40, 50)),
        ]));
    }
}

#[test]
fn read_overlapping_a_write_may_see_old_or_new_value() {
    for seen in [None, Some("1")] {
        assert_linearizable(verdict(vec![
            by(1, put("a", "1", 0, 10)),
            by(2, get("a", seen, 5, 8)),
        ]));
    }
}

#[test]
fn operations_touching_at_one_instant_count_as_concurrent() {
    assert_linearizable(verdict(vec![put("a", "1", 0, 10), get("a", None, 10, 20)]));
}

#[test]
fn rejects_stale_read_after_a_newer_write_completed() {
    let verdict = verdict(vec![
        put("a", "1", 0, 10),
        put("a", "2", 20, 30),
        get("a", Some("1"), 40, 50),
    ]);
    let explanation = assert_violation_on("a", verdict);
    assert!(explanation.contains("get => \"1\""), "{explanation}");
}

#[test]
fn rejects_lost_acknowledged_write() {
    let verdict = verdict(vec![put("a", "1", 0, 10), get("a", None, 20, 30)]);
    assert_violation_on("a", verdict);
}

#[test]
fn rejects_two_cas_from_the_same_value_both_swapping() {
    let verdict = verdict(vec![
        put("a", "0", 0, 10),
        by(1, cas("a", Some("0"), "1", true).at(20, 40)),
        by(2, cas("a", Some("0"), "1", true).at(25, 45)),
    ]);
    assert_violation_on("a", verdict);
}

#[test]
fn rejects_cad_deleting_a_value_already_deleted() {
    let verdict = verdict(vec![
        put("a", "x", 0, 10),
        cad("a", "x", true).at(20, 30),
        cad("a", "x", true).at(40, 50),
    ]);
    assert_violation_on("a", verdict);
}

#[test]
fn rejects_delete_reporting_a_deletion_of_an_absent_key() {
    assert_violation_on("a", verdict(vec![delete("a", true, 0, 10)]));
}

#[test]
fn rejects_read_of_a_value_never_written() {
    let verdict = verdict(vec![put("a", "1", 0, 10), get("a", Some("7"), 5, 30)]);
    assert_violation_on("a", verdict);
}

#[test]
fn accepts_timed_out_put_whose_effect_is_observed_later() {
    assert_linearizable(verdict(vec![
        put("a", "1", 0, 10),
        timed_out(put("a", "2", 20, 0)),
        get("a", Some("1"), 30, 40),
        get("a", Some("2"), 1_000, 1_010),
        get("a", Some("2"), 2_000, 2_010),
    ]));
}

#[test]
fn accepts_timed_out_put_whose_effect_is_never_observed() {
    assert_linearizable(verdict(vec![
        put("a", "1", 0, 10),
        timed_out(put("a", "2", 20, 0)),
        get("a", Some("1"), 30, 40),
        get("a", Some("1"), 1_000, 1_010),
    ]));
}

#[test]
fn rejects_timed_out_put_observed_before_it_was_called() {
    let verdict = verdict(vec![
        get("a", Some("2"), 0, 10),
        timed_out(put("a", "2", 20, 0)),
    ]);
    assert_violation_on("a", verdict);
}

#[test]
fn rejects_timed_out_put_taking_effect_twice() {
    let verdict = verdict(vec![
        timed_out(put("a", "1", 0, 0)),
        get("a", Some("1"), 10, 20),
        put("a", "2", 30, 40),
        get("a", Some("1"), 50, 60),
    ]);
    assert_violation_on("a", verdict);
}

#[test]
fn violation_on_one_key_is_reported_with_that_key() {
    let verdict = verdict(vec![
        put("a", "1", 0, 10),
        put("b", "1", 0, 10),
        get("a", Some("1"), 20, 30),
        get("b", None, 20, 30),
    ]);
    let explanation = assert_violation_on("b", verdict);
    assert!(explanation.contains("get => absent"), "{explanation}");
}

#[test]
fn explanation_names_the_prefix_and_the_operation_that_could_not_be_placed() {
    let verdict = verdict(vec![
        by(1, put("a", "1", 0, 10)),
        by(2, put("a", "2", 20, 30)),
        by(3, get("a", Some("1"), 40, 50)),
    ]);
    let explanation = assert_violation_on("a", verdict);
    for expected in [
        "2 of the 3",
        "leaves the value \"2\"",
        "client 3: get => \"1\"",
    ] {
        assert!(
            explanation.contains(expected),
            "{expected:?} missing: {explanation}"
        );
    }
}

#[test]
fn exhausted_search_budget_gives_unknown_not_a_guess() {
    let history = history(vec![put("a", "1", 0, 10), get("a", Some("1"), 20, 30)]);
    let verdict = check(
        &history,
        &CheckLimits {
            max_states_per_key: 1,
        },
    );
    assert!(
        matches!(verdict, Verdict::Unknown { ref key, .. } if key == "a"),
        "{verdict:#?}"
    );
}

#[test]
fn violation_on_a_later_key_wins_over_an_undecided_earlier_key() {
    let history = history(vec![
        put("a", "1", 0, 10),
        put("a", "2", 20, 30),
        get("b", Some("9"), 0, 10),
    ]);
    let verdict = check(
        &history,
        &CheckLimits {
            max_states_per_key: 1,
        },
    );
    assert_violation_on("b", verdict);
}
