//! The cluster revision: one per change, several per log entry, carried by snapshots.

use aspen_api::{Command, WriteOutcome, WriteResult};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};

use super::{FeedRetention, StateMachine};
use crate::raft_types::{Entry, Proposal};

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            commands,
            time_ms: 1_000,
        }),
    }
}

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: key.into(),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
    }
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Vec<Vec<WriteResult>> {
    sm.apply(entries)
        .await
        .expect("apply")
        .into_iter()
        .map(|r| r.results)
        .collect()
}

#[tokio::test]
async fn each_command_of_an_entry_takes_its_own_revision_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), FeedRetention::default()).unwrap();
    let results = apply(
        &mut sm,
        vec![
            entry(1, vec![set("a", "1"), set("b", "1"), set("a", "2")]),
            entry(2, vec![set("c", "1")]),
        ],
    )
    .await;
    let revisions: Vec<Vec<u64>> = results
        .iter()
        .map(|r| r.iter().map(|w| w.revision).collect())
        .collect();
    assert_eq!(revisions, vec![vec![1, 2, 3], vec![4]]);
    let a = sm.get("a").unwrap().unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (1, 3, 2),
        "a later command in the same entry sees the earlier one"
    );
    assert_eq!(sm.revision(), 4);
    assert_eq!(sm.applied_index(), 2);
}

#[tokio::test]
async fn commands_that_change_nothing_take_no_revision_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), FeedRetention::default()).unwrap();
    let failing_cas = Command::CompareAndSwap {
        key: "a".into(),
        expected: Some(b"nope".to_vec().into()),
        new_value: b"x".to_vec().into(),
    };
    let absent_delete = Command::Delete { key: "zz".into() };
    let results = apply(
        &mut sm,
        vec![entry(
            1,
            vec![set("a", "1"), failing_cas, absent_delete, set("b", "1")],
        )],
    )
    .await;
    let r = &results[0];
    assert_eq!(r[0].revision, 1);
    assert!(matches!(r[1].outcome, WriteOutcome::PreconditionFailed(_)));
    assert_eq!(r[1].revision, 1, "a failed CAS reports the revision it saw");
    assert_eq!(r[2].outcome, WriteOutcome::Applied { deleted: 0 });
    assert_eq!(r[2].revision, 1, "deleting nothing is no change");
    assert_eq!(r[3].revision, 2, "the next change takes the next revision");
    assert_eq!(
        sm.get("a").unwrap().unwrap().value,
        b"1",
        "the failed CAS wrote nothing"
    );
    assert!(
        sm.get("b").unwrap().is_some(),
        "a neighbour's failure does not stop it"
    );
}

#[tokio::test]
async fn the_revision_survives_a_restart_and_travels_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), FeedRetention::default()).unwrap();
    apply(&mut sm, vec![entry(1, vec![set("a", "1"), set("b", "1")])]).await;
    let snapshot = sm.build_snapshot().await.unwrap();
    drop(sm);

    let reopened = StateMachine::open(dir.path(), FeedRetention::default()).unwrap();
    assert_eq!(reopened.revision(), 2, "restart keeps the revision");

    let other = tempfile::tempdir().unwrap();
    let mut fresh = StateMachine::open(other.path(), FeedRetention::default()).unwrap();
    fresh
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(
        fresh.revision(),
        2,
        "a node caught up by snapshot has the revision"
    );
    let results = apply(&mut fresh, vec![entry(2, vec![set("c", "1")])]).await;
    assert_eq!(results[0][0].revision, 3, "and continues from it");
}

/// An apply writes back only the parts of the applied position that moved; what a reopen
/// reads must still be all of it, equal to what the running state machine held.
#[tokio::test]
async fn the_whole_applied_position_reads_back_after_applies_that_move_parts_of_it() {
    use std::collections::{BTreeMap, BTreeSet};

    use super::state_machine::Applied;
    use crate::raft_types::MemberNode;

    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(dir.path(), FeedRetention::default()).unwrap();
    let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
    let nodes: BTreeMap<u64, MemberNode> = (1..=3)
        .map(|id| {
            let node = MemberNode {
                endpoint_id: format!("endpoint-{id}"),
                addrs: vec![format!("127.0.0.1:1840{id}")],
            };
            (id, node)
        })
        .collect();
    let membership = openraft::Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
    let timed = |index, time_ms| Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Proposal {
            commands: vec![set("k", "v")],
            time_ms,
        }),
    };
    // Each apply moves a different part: the membership alone, then the revision and
    // time, then only the log id (a blank entry), then the revision but not the time.
    let batches = vec![
        vec![Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership),
        }],
        vec![timed(2, 5_000)],
        vec![Entry {
            log_id: log_id(3),
            payload: EntryPayload::Blank,
        }],
        vec![timed(4, 5_000), timed(5, 4_000)],
    ];
    for batch in batches {
        apply(&mut sm, batch).await;
        let held = sm.shared.applied.lock().unwrap().clone();
        let on_disk = Applied::read(&sm.shared.writer.lock().unwrap()).unwrap();
        assert_eq!(on_disk, held, "the database lags the applied position");
    }
    let held = sm.shared.applied.lock().unwrap().clone();
    assert_eq!(held.last, Some(log_id(5)));
    assert_eq!((held.revision, held.time_ms), (3, 5_000));
    assert_eq!(held.membership.log_id(), &Some(log_id(1)));
    drop(sm);
    let reopened = StateMachine::open(dir.path(), FeedRetention::default()).unwrap();
    assert_eq!(*reopened.shared.applied.lock().unwrap(), held);
}
