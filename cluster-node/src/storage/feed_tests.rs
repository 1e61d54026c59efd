//! The change feed: every change recorded once, in order, with its keys together; kept
//! across restarts and snapshots; compacted by revisions and by time with a clear error.

use aspen_api::feed::{ChangeKind, ChangeSet, Compacted, KeyChange};
use aspen_api::{Command, Precondition};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};

use super::{FeedRetention, StateMachine};
use crate::raft_types::{Entry, Proposal};

fn entry(index: u64, time_ms: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { commands, time_ms }),
    }
}

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: key.into(),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn put(key: &str, value: &str, create_revision: u64, version: u64) -> KeyChange {
    KeyChange {
        key: key.into(),
        kind: ChangeKind::Put {
            value: value.as_bytes().to_vec().into(),
            create_revision,
            version,
        },
    }
}

fn delete(key: &str) -> KeyChange {
    KeyChange {
        key: key.into(),
        kind: ChangeKind::Delete,
    }
}

fn changes_after(sm: &StateMachine, after: u64) -> Result<Vec<ChangeSet>, Compacted> {
    sm.read(|r| r.changes_after(after, usize::MAX, usize::MAX))
        .unwrap()
        .unwrap()
}

fn open(dir: &std::path::Path, retention: FeedRetention) -> StateMachine {
    StateMachine::open(dir, retention).unwrap()
}

#[tokio::test]
async fn every_change_is_recorded_once_in_order_with_a_commands_keys_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), FeedRetention::default());
    let txn = Command::ConditionalSetMulti {
        preconditions: vec![Precondition::Exists { key: "a".into() }],
        writes: vec![
            ("b".into(), b"2".to_vec().into()),
            ("c".into(), b"3".to_vec().into()),
        ],
        deletes: vec!["a".into(), "absent".into()],
    };
    let failing = Command::CompareAndSwap {
        key: "b".into(),
        expected: Some(b"nope".to_vec().into()),
        new_value: b"x".to_vec().into(),
    };
    let commands = vec![
        set("a", "1"),
        txn,
        failing,
        Command::Delete { key: "zz".into() },
    ];
    sm.apply(vec![
        entry(1, 100, commands),
        entry(2, 90, vec![set("b", "4")]),
    ])
    .await
    .unwrap();
    let feed = changes_after(&sm, 0).unwrap();
    assert_eq!(
        feed,
        vec![
            ChangeSet {
                revision: 1,
                time_ms: 100,
                changes: vec![put("a", "1", 1, 1)],
            },
            ChangeSet {
                revision: 2,
                time_ms: 100,
                changes: vec![put("b", "2", 2, 1), put("c", "3", 2, 1), delete("a")],
            },
            ChangeSet {
                revision: 3,
                // The leader's clock said 90; time never goes back in the feed.
                time_ms: 100,
                changes: vec![put("b", "4", 2, 2)],
            },
        ],
        "failed preconditions and deletes of nothing record nothing"
    );
    assert_eq!(changes_after(&sm, 2).unwrap().len(), 1);
    assert_eq!(changes_after(&sm, 3).unwrap(), vec![]);
}

#[tokio::test]
async fn the_feed_survives_a_restart_and_travels_in_a_snapshot_with_its_compaction_point() {
    let dir = tempfile::tempdir().unwrap();
    let retention = FeedRetention {
        revisions: 1_000,
        max_age_ms: u64::MAX,
    };
    let mut sm = open(dir.path(), retention);
    let entries: Vec<Entry> = (1..=1_300)
        .map(|i| entry(i, i, vec![set(&format!("k{}", i % 10), "v")]))
        .collect();
    sm.apply(entries).await.unwrap();
    // Compacted by one step: through revision 256, when the head reached 1,256.
    let step = super::feed::COMPACTION_STEP_REVISIONS;
    let before = changes_after(&sm, step).unwrap();
    assert_eq!(before.len() as u64, 1_300 - step);
    let snapshot = sm.build_snapshot().await.unwrap();
    drop(sm);

    // Compared without printing: a failure would print a thousand change sets.
    let reopened = open(dir.path(), retention);
    assert!(
        changes_after(&reopened, step).unwrap() == before,
        "after a restart"
    );

    let other = tempfile::tempdir().unwrap();
    let mut installed = open(other.path(), retention);
    installed
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert!(
        changes_after(&installed, step).unwrap() == before,
        "after a snapshot"
    );
    assert_eq!(
        changes_after(&installed, step - 1).map(|sets| sets.len()),
        Err(Compacted {
            requested: step,
            oldest: step + 1
        }),
        "the compaction point came with it"
    );
    let mut watch = installed.watch_revision();
    assert_eq!(*watch.borrow_and_update(), 1_300);
    installed
        .apply(vec![entry(1_301, 2_000, vec![set("new", "v")])])
        .await
        .unwrap();
    assert!(watch.has_changed().unwrap(), "an apply wakes feed readers");
    assert_eq!(changes_after(&installed, 1_300).unwrap()[0].revision, 1_301);
}

#[tokio::test]
async fn compaction_by_revisions_keeps_the_window_and_names_the_oldest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let retention = FeedRetention {
        revisions: 1_000,
        max_age_ms: u64::MAX,
    };
    let mut sm = open(dir.path(), retention);
    let step = super::feed::COMPACTION_STEP_REVISIONS;
    // One short of the first compaction step: nothing compacted yet.
    let last = 1_000 + step - 1;
    let entries: Vec<Entry> = (1..=last)
        .map(|i| entry(i, i, vec![set("k", "v")]))
        .collect();
    sm.apply(entries).await.unwrap();
    assert_eq!(changes_after(&sm, 0).unwrap().len() as u64, last);
    // The next revision reaches the step: everything but the last 1,000 goes.
    sm.apply(vec![entry(last + 1, last + 1, vec![set("k", "v")])])
        .await
        .unwrap();
    let kept = changes_after(&sm, step).unwrap();
    assert_eq!(kept.len(), 1_000);
    assert_eq!(kept[0].revision, step + 1);
    assert_eq!(
        changes_after(&sm, step - 1).map(|sets| sets.len()),
        Err(Compacted {
            requested: step,
            oldest: step + 1
        })
    );
}

#[tokio::test]
async fn compaction_by_time_drops_changes_older_than_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let retention = FeedRetention {
        revisions: 1_000_000,
        max_age_ms: 60_000,
    };
    let mut sm = open(dir.path(), retention);
    sm.apply(vec![
        entry(1, 1_000, vec![set("a", "1")]),
        entry(2, 2_000, vec![set("b", "1")]),
        // Exactly the window after revision 2: 2 is 60 s old, not older, so it stays.
        entry(3, 62_000, vec![set("c", "1")]),
    ])
    .await
    .unwrap();
    let kept: Vec<u64> = changes_after(&sm, 1)
        .unwrap()
        .iter()
        .map(|s| s.revision)
        .collect();
    assert_eq!(kept, vec![2, 3]);
    assert!(matches!(
        changes_after(&sm, 0),
        Err(Compacted { oldest: 2, .. })
    ));
    sm.apply(vec![entry(4, 62_001, vec![set("d", "1")])])
        .await
        .unwrap();
    assert!(matches!(
        changes_after(&sm, 1),
        Err(Compacted { oldest: 3, .. })
    ));
}

#[tokio::test]
async fn a_feed_read_stops_at_its_count_and_at_the_set_that_reaches_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), FeedRetention::default());
    let entries: Vec<Entry> = (1..=5)
        .map(|i| entry(i, i, vec![set(&format!("k{i}"), "0123456789")]))
        .collect();
    sm.apply(entries).await.unwrap();
    let read = |max_sets, max_bytes| {
        sm.read(|r| r.changes_after(0, max_sets, max_bytes))
            .unwrap()
            .unwrap()
            .unwrap()
            .len()
    };
    assert_eq!(read(3, usize::MAX), 3);
    // Each set is 12 bytes of key and value: 24 bytes are reached by the second set.
    assert_eq!(read(usize::MAX, 24), 2);
    assert_eq!(read(usize::MAX, 25), 3);
    assert_eq!(read(usize::MAX, 1), 1, "at least one set");
}

#[tokio::test]
async fn sets_kept_in_memory_are_the_feed_rows_and_a_snapshot_install_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open(dir.path(), FeedRetention::default());
    sm.apply(vec![entry(1, 10, vec![set("before", "v")])])
        .await
        .unwrap();
    assert_eq!(sm.take_recent(0), None, "nothing is kept until asked");

    sm.keep_recent(true);
    let txn = Command::ConditionalSetMulti {
        preconditions: vec![],
        writes: vec![
            ("b".into(), b"2".to_vec().into()),
            ("c".into(), vec![0xff].into()),
        ],
        deletes: vec!["before".into(), "absent".into()],
    };
    let failing = Command::Delete { key: "zz".into() };
    sm.apply(vec![
        entry(2, 20, vec![set("a", "1"), failing, txn]),
        entry(3, 30, vec![set("a", "2")]),
    ])
    .await
    .unwrap();
    let kept = sm
        .take_recent(1)
        .expect("the run reaches back to revision 2");
    assert_eq!(kept, changes_after(&sm, 1).unwrap());
    assert_eq!(
        kept.iter().map(|s| s.revision).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert_eq!(sm.take_recent(1), None, "what was taken is gone");

    let snapshot = sm.build_snapshot().await.unwrap();
    sm.apply(vec![entry(4, 40, vec![set("a", "3")])])
        .await
        .unwrap();
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(sm.take_recent(4), None, "an install breaks the run");
    sm.keep_recent(false);
    sm.apply(vec![entry(5, 50, vec![set("a", "4")])])
        .await
        .unwrap();
    assert_eq!(sm.take_recent(4), None, "nothing kept after stopping");
}

/// A blob reference is a value like any other: read back with its reference, recorded in
/// the feed as a blob's put, compared by hash and size, carried by a snapshot, and named
/// among the blobs the copy references (the current value's, and those the kept feed
/// still holds) until the feed lets go of an overwritten one.
#[tokio::test]
async fn a_blob_reference_is_stored_recorded_compared_and_carried_by_snapshots() {
    use aspen_api::BlobRef;
    let dir = tempfile::tempdir().unwrap();
    let retention = FeedRetention {
        revisions: 1,
        max_age_ms: u64::MAX,
    };
    let mut sm = open(dir.path(), retention);
    let bytes = vec![9u8; 3000];
    let first = BlobRef::of(&bytes);
    let second = BlobRef::of(&[1u8; 10]);
    let set_blob = |blob, preconditions| Command::SetBlob {
        key: "b".into(),
        blob,
        preconditions,
    };
    let by_bytes = |value: &[u8]| Precondition::Equals {
        key: "b".into(),
        value: value.to_vec().into(),
    };
    let by_blob = |blob| Precondition::BlobEquals {
        key: "b".into(),
        blob,
    };
    sm.apply(vec![entry(1, 1, vec![set_blob(first, vec![])])])
        .await
        .unwrap();
    let got = sm.get("b").unwrap().unwrap();
    assert_eq!(
        (got.blob, got.value.len(), got.version),
        (Some(first), 0, 1)
    );
    assert!(got.holds(&bytes) && !got.holds(&bytes[1..]));
    assert_eq!(
        changes_after(&sm, 0).unwrap()[0].changes,
        vec![KeyChange {
            key: "b".into(),
            kind: ChangeKind::PutBlob {
                blob: first,
                create_revision: 1,
                version: 1,
            },
        }]
    );
    assert_eq!(sm.referenced_blobs().unwrap(), vec![first.hash]);

    // Preconditions by other bytes or another reference fail and change nothing; by the
    // same bytes or reference they hold.
    let results = sm
        .apply(vec![entry(
            2,
            2,
            vec![
                set_blob(second, vec![by_bytes(&bytes[1..])]),
                set_blob(second, vec![by_blob(second)]),
                set_blob(second, vec![by_bytes(&bytes)]),
            ],
        )])
        .await
        .unwrap();
    let applied: Vec<bool> = results[0]
        .results
        .iter()
        .map(|r| matches!(r.outcome, aspen_api::WriteOutcome::Applied { .. }))
        .collect();
    assert_eq!(applied, vec![false, false, true]);
    assert_eq!(sm.get("b").unwrap().unwrap().blob, Some(second));
    let mut referenced = sm.referenced_blobs().unwrap();
    referenced.sort();
    let mut both = vec![first.hash, second.hash];
    both.sort();
    assert_eq!(
        referenced, both,
        "the overwritten value is in the kept feed"
    );

    let snapshot = sm.build_snapshot().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut installed = open(other.path(), retention);
    installed
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(installed.get("b").unwrap(), sm.get("b").unwrap());
    assert_eq!(changes_after(&installed, 0), changes_after(&sm, 0));

    // Once the feed is compacted past it, the overwritten blob is referenced no more.
    let step = super::feed::COMPACTION_STEP_REVISIONS;
    let entries: Vec<Entry> = (3..=step + 3)
        .map(|i| entry(i, i, vec![set("k", "v")]))
        .collect();
    sm.apply(entries).await.unwrap();
    assert_eq!(sm.referenced_blobs().unwrap(), vec![second.hash]);
}
