//! Golden bytes and round trips of the on-disk formats, and the refusal of data written by
//! another format version. A failure here means an encoding changed: if on purpose, bump
//! the format's version and update the bytes; if not, find what changed a type's shape.

use std::collections::{BTreeMap, BTreeSet};

use aspen_api::codec::hex;
use aspen_api::feed::{ChangeKind, ChangeSet, KeyChange};
use aspen_api::{Command, KvEntry};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership,
};
use proptest::prelude::*;

use super::format::{self, LOG_ENTRY, SNAPSHOT_DATA};
use super::snapshot::{self, SnapshotContent};
use crate::raft_types::{Entry, MemberNode, Proposal};

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership<u64, MemberNode> {
    let nodes = BTreeMap::from([(
        1,
        MemberNode {
            endpoint_id: "ab".into(),
            addrs: vec!["127.0.0.1:9".into()],
        },
    )]);
    Membership::new(vec![BTreeSet::from([1])], nodes)
}

#[test]
fn a_log_entry_of_commands_has_its_pinned_bytes() {
    let entry = Entry {
        log_id: log_id(2, 1, 7),
        payload: EntryPayload::Normal(Proposal {
            commands: vec![
                Command::Set {
                    key: "k".into(),
                    value: vec![0, 255],
                },
                Command::CompareAndSwap {
                    key: "c".into(),
                    expected: None,
                    new_value: b"v".to_vec(),
                },
            ],
            time_ms: 1_700_000_000_000,
        }),
    };
    let bytes = LOG_ENTRY.encode(&entry);
    assert_eq!(
        hex(&bytes),
        "02020107010200016b0200ff04016300017680d095ffbc31"
    );
    let back: Entry = format::decode(LOG_ENTRY, &bytes).unwrap();
    assert_eq!(back, entry);
}

#[test]
fn a_membership_log_entry_has_its_pinned_bytes() {
    let entry = Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Membership(membership()),
    };
    let bytes = LOG_ENTRY.encode(&entry);
    assert_eq!(
        hex(&bytes),
        "02010101020101010101026162010b3132372e302e302e313a39"
    );
    assert_eq!(format::decode::<Entry>(LOG_ENTRY, &bytes).unwrap(), entry);
}

fn content() -> SnapshotContent {
    SnapshotContent {
        revision: 5,
        time_ms: 1_700_000_000_000,
        feed_compacted: 3,
        entries: vec![KvEntry {
            key: "a/b".into(),
            value: b"x".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
        }],
        changes: vec![
            ChangeSet {
                revision: 4,
                time_ms: 1_699_999_999_000,
                changes: vec![KeyChange {
                    key: "gone".into(),
                    kind: ChangeKind::Delete,
                }],
            },
            ChangeSet {
                revision: 5,
                time_ms: 1_700_000_000_000,
                changes: vec![KeyChange {
                    key: "a/b".into(),
                    kind: ChangeKind::Put {
                        value: b"x".to_vec(),
                        create_revision: 2,
                        version: 3,
                    },
                }],
            },
        ],
        leases: vec![(9, 10_000)],
        attached: vec![("a/b".into(), 9)],
    }
}

#[test]
fn snapshot_data_has_its_pinned_bytes() {
    let bytes = snapshot::encode_content(&content());
    assert_eq!(hex(&bytes), "030580d095ffbc31030103612f620178020503020498c895ffbc310104676f6e65010580d095ffbc310103612f6200017802030109904e0103612f6209");
    let back = snapshot::decode_content(&bytes).unwrap();
    let expected = content();
    assert_eq!(
        (back.revision, back.time_ms, back.feed_compacted),
        (5, expected.time_ms, 3)
    );
    assert_eq!(back.entries, expected.entries);
    assert_eq!(back.changes, expected.changes);
    assert_eq!(back.leases, expected.leases);
    assert_eq!(back.attached, expected.attached);
}

#[test]
fn a_log_entry_of_lease_commands_has_its_pinned_bytes() {
    let entry = Entry {
        log_id: log_id(2, 1, 8),
        payload: EntryPayload::Normal(Proposal {
            commands: vec![
                Command::LeaseGrant {
                    lease: 9,
                    ttl_ms: 10_000,
                },
                Command::Leased {
                    cluster: "c".into(),
                    attach: vec![("k".into(), 9)],
                    command: Box::new(Command::Set {
                        key: "k".into(),
                        value: b"v".to_vec(),
                    }),
                },
                Command::LeaseRevoke { lease: 9 },
            ],
            time_ms: 1_700_000_000_000,
        }),
    };
    let bytes = LOG_ENTRY.encode(&entry);
    assert_eq!(
        hex(&bytes),
        "0202010801030709904e09016301016b0900016b0176080980d095ffbc31"
    );
    let back: Entry = format::decode(LOG_ENTRY, &bytes).unwrap();
    assert_eq!(back, entry);
}

#[test]
fn the_snapshot_file_has_its_pinned_bytes_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 1, 9)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
        snapshot_id: "2-9-0".into(),
    };
    let data = snapshot::encode_content(&content());
    snapshot::save(dir.path(), &meta, &data).unwrap();
    let bytes = std::fs::read(dir.path().join("snapshot.bin")).unwrap();
    assert_eq!(hex(&bytes), "4153504e534e41500101020109010101010101010101026162010b3132372e302e302e313a3905322d392d303d030580d095ffbc31030103612f620178020503020498c895ffbc310104676f6e65010580d095ffbc310103612f6200017802030109904e0103612f6209");
    let (back_meta, back_data) = snapshot::load(dir.path()).unwrap().unwrap();
    assert_eq!(back_meta, meta);
    assert_eq!(back_data, data);
}

#[test]
fn a_snapshot_file_without_the_magic_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("snapshot.bin"), b"\x01\x02\x03").unwrap();
    let err = snapshot::load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("different Aspen version"), "{err}");
}

#[test]
fn snapshot_data_of_another_version_is_refused() {
    let mut bytes = snapshot::encode_content(&content());
    bytes[0] = SNAPSHOT_DATA.version + 1;
    let err = snapshot::decode_content(&bytes).unwrap_err();
    assert!(err.to_string().contains("format version"), "{err}");
}

#[test]
fn a_new_database_is_stamped_and_an_unversioned_or_other_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    format::check_schema(&conn, &path).unwrap();
    conn.execute_batch("CREATE TABLE t (a INTEGER)").unwrap();
    // Opened again: the stamp is there.
    format::check_schema(&conn, &path).unwrap();

    // Tables but no version: written before versions existed.
    let old = dir.path().join("old.db");
    let conn = rusqlite::Connection::open(&old).unwrap();
    conn.execute_batch("CREATE TABLE t (a INTEGER)").unwrap();
    let err = format::check_schema(&conn, &old).unwrap_err();
    assert!(err.to_string().contains("old.db"), "{err}");

    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.pragma_update(None, "user_version", format::DB_SCHEMA_VERSION + 1)
        .unwrap();
    assert!(format::check_schema(&conn, &other).is_err());
}

#[test]
fn a_node_refuses_a_data_dir_written_before_formats_were_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("log.db")).unwrap();
    conn.execute_batch("CREATE TABLE log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
        .unwrap();
    drop(conn);
    let Err(err) = super::open(dir.path(), super::FeedRetention::default()) else {
        panic!("an unversioned log.db was opened");
    };
    assert!(err.to_string().contains("schema version 0"), "{err}");
}

proptest! {
    #[test]
    fn every_log_entry_round_trips(entry in crate::strategies::entry()) {
        let bytes = LOG_ENTRY.encode(&entry);
        prop_assert_eq!(format::decode::<Entry>(LOG_ENTRY, &bytes).unwrap(), entry);
    }
}
