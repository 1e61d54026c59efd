//! Golden bytes and round trips of the on-disk formats, and the refusal of data written by
//! another format version or damaged (a snapshot stream cut short, out of order, with a
//! record over its limit). A failure here means an encoding changed: if on purpose, bump
//! the format's version and update the bytes; if not, find what changed a type's shape.

use std::collections::{BTreeMap, BTreeSet};

use aspen_api::codec::hex;
use aspen_api::feed::{ChangeKind, ChangeSet, KeyChange};
use aspen_api::{BlobRef, Command, Precondition};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership,
};
use proptest::prelude::*;

use super::format::{self, LOG_ENTRY, SNAPSHOT_DATA};
use super::snapshot::stream::{
    Header, Item, KeyRecord, LeaseRecord, StreamError, StreamReader, StreamWriter,
};
use super::snapshot::{self, Meta};
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
                    value: vec![0, 255].into(),
                },
                Command::CompareAndSwap {
                    key: "c".into(),
                    expected: None,
                    new_value: b"v".to_vec().into(),
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
fn a_log_entry_of_a_blob_write_has_its_pinned_bytes() {
    // Appended after every earlier command, so log entries written before blobs existed
    // decode unchanged.
    let entry = Entry {
        log_id: log_id(2, 1, 8),
        payload: EntryPayload::Normal(Proposal {
            commands: vec![Command::SetBlob {
                key: "k".into(),
                blob: BlobRef {
                    hash: [0xb3; 32],
                    size: 1 << 21,
                },
                preconditions: vec![Precondition::ModRevision {
                    key: "k".into(),
                    revision: 7,
                }],
            }],
            time_ms: 1_700_000_000_000,
        }),
    };
    let bytes = LOG_ENTRY.encode(&entry);
    assert_eq!(
        hex(&bytes),
        "0202010801010a016bb3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3808080010103016b0780d095ffbc31"
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

fn snapshot_meta() -> Meta {
    SnapshotMeta {
        last_log_id: Some(log_id(2, 1, 9)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
        snapshot_id: "2-9-0".into(),
    }
}

fn header() -> Header {
    Header {
        revision: 5,
        time_ms: 1_700_000_000_000,
        feed_compacted: 3,
    }
}

fn items() -> Vec<Item> {
    vec![
        Item::Key(KeyRecord {
            key: "a/b".into(),
            value: b"x".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: Some(9),
            blob: None,
        }),
        Item::Key(KeyRecord {
            key: "c".into(),
            value: vec![0, 255],
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
            blob: None,
        }),
        Item::Key(KeyRecord {
            key: "d".into(),
            value: vec![],
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            lease: None,
            blob: Some(BlobRef {
                hash: [0xb3; 32],
                size: 1 << 21,
            }),
        }),
        Item::Change(ChangeSet {
            revision: 4,
            time_ms: 1_699_999_999_000,
            changes: vec![KeyChange {
                key: "gone".into(),
                kind: ChangeKind::Delete,
            }],
        }),
        Item::Change(ChangeSet {
            revision: 5,
            time_ms: 1_700_000_000_000,
            changes: vec![
                KeyChange {
                    key: "a/b".into(),
                    kind: ChangeKind::Put {
                        value: b"x".to_vec().into(),
                        create_revision: 2,
                        version: 3,
                    },
                },
                KeyChange {
                    key: "d".into(),
                    kind: ChangeKind::PutBlob {
                        blob: BlobRef {
                            hash: [0xb3; 32],
                            size: 1 << 21,
                        },
                        create_revision: 5,
                        version: 1,
                    },
                },
            ],
        }),
        Item::Lease(LeaseRecord {
            id: 9,
            ttl_ms: 10_000,
        }),
    ]
}

/// The bytes of a snapshot stream of [`items`].
pub(super) fn stream_bytes(items: &[Item]) -> Vec<u8> {
    let mut writer = StreamWriter::start(Vec::new(), &snapshot_meta(), header()).unwrap();
    for item in items.iter().cloned() {
        match item {
            Item::Key(k) => writer.key(k),
            Item::Change(c) => writer.change(c),
            Item::Lease(l) => writer.lease(l),
        }
        .unwrap();
    }
    writer.finish().unwrap()
}

/// Reads a whole stream back: metadata, header and items.
fn read_back(bytes: &[u8]) -> Result<(Meta, Header, Vec<Item>), StreamError> {
    let mut reader = StreamReader::open(bytes)?;
    let mut items = Vec::new();
    while let Some(item) = reader.next_item()? {
        items.push(item);
    }
    Ok((reader.meta().clone(), reader.header(), items))
}

#[test]
fn a_snapshot_stream_has_its_pinned_bytes_and_reads_back() {
    let bytes = stream_bytes(&items());
    assert_eq!(hex(&bytes), "4153504e534e415005240000000001020109010101010101010101026162010b3132372e302e302e313a3905322d392d3009000000010580d095ffbc31030d0000000203612f6201780205030109000b0000000201630200ff01010100002d000000020164000505010001b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3808080010f000000030498c895ffbc310104676f6e65013b000000030580d095ffbc310203612f620001780203016402b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3808080010501040000000409904e0400000005030201");
    let (meta, header, back) = read_back(&bytes).unwrap();
    assert_eq!(meta, snapshot_meta());
    assert_eq!(header, self::header());
    assert_eq!(back, items());
}

#[test]
fn a_snapshot_file_without_the_magic_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.bin");
    std::fs::write(&path, b"\x01\x02\x03").unwrap();
    let err = snapshot::open_current(dir.path()).unwrap_err();
    assert!(err.to_string().contains("different Aspen version"), "{err}");
    assert!(err.to_string().contains("snapshot.bin"), "{err}");
    assert!(path.exists(), "an unknown file is left for the operator");
}

#[test]
fn a_snapshot_of_an_older_format_is_removed_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.bin");
    let mut bytes = stream_bytes(&items());
    bytes[8] = SNAPSHOT_DATA.version - 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(snapshot::open_current(dir.path()).unwrap(), None);
    assert!(!path.exists(), "the older snapshot is removed");

    bytes[8] = SNAPSHOT_DATA.version + 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = snapshot::open_current(dir.path()).unwrap_err();
    assert!(err.to_string().contains("different Aspen version"), "{err}");
    assert!(path.exists(), "a newer snapshot is never removed");

    bytes[8] = SNAPSHOT_DATA.version;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        snapshot::open_current(dir.path()).unwrap(),
        Some(snapshot_meta())
    );
}

#[test]
fn a_snapshot_of_another_version_is_refused() {
    let mut bytes = stream_bytes(&items());
    bytes[8] = SNAPSHOT_DATA.version + 1;
    let err = read_back(&bytes).unwrap_err();
    assert!(
        matches!(err, StreamError::Version { found, .. } if found == SNAPSHOT_DATA.version + 1),
        "{err}"
    );
    assert!(err.to_string().contains("different Aspen version"), "{err}");
}

#[test]
fn a_snapshot_cut_short_anywhere_is_refused_never_read_as_complete() {
    let bytes = stream_bytes(&items());
    for len in 0..bytes.len() {
        let err = read_back(&bytes[..len]).expect_err("a cut stream was read as whole");
        let expected = if len < 9 {
            matches!(err, StreamError::Magic)
        } else {
            matches!(err, StreamError::Truncated { .. })
        };
        assert!(expected, "cut at {len}: {err}");
    }
}

#[test]
fn a_snapshot_with_bytes_after_its_end_is_refused() {
    let mut bytes = stream_bytes(&items());
    bytes.push(0);
    assert!(matches!(
        read_back(&bytes).unwrap_err(),
        StreamError::TrailingBytes
    ));
}

#[test]
fn a_snapshot_with_records_out_of_their_order_is_refused() {
    let all = items();
    // A key after a change set.
    let swapped = vec![all[3].clone(), all[0].clone()];
    let err = read_back(&stream_bytes(&swapped)).unwrap_err();
    assert!(
        matches!(err, StreamError::OutOfOrder { found: "key", .. }),
        "{err}"
    );
    // Keys not in increasing order.
    let keys = vec![all[1].clone(), all[0].clone()];
    let err = read_back(&stream_bytes(&keys)).unwrap_err();
    assert!(err.to_string().contains("increasing order"), "{err}");
    // The same change set twice.
    let twice = vec![all[3].clone(), all[3].clone()];
    let err = read_back(&stream_bytes(&twice)).unwrap_err();
    assert!(err.to_string().contains("revision order"), "{err}");
}

#[test]
fn a_snapshot_whose_end_counts_differ_from_its_records_is_refused() {
    let all = items();
    let mut bytes = stream_bytes(&all);
    // The end record is last: its counts are the final three one-byte varints.
    let n = bytes.len();
    bytes[n - 3] += 1;
    let err = read_back(&bytes).unwrap_err();
    assert!(matches!(err, StreamError::Counts { .. }), "{err}");
}

#[test]
fn a_snapshot_record_over_the_limit_is_refused_before_it_is_read() {
    use super::snapshot::stream::MAX_RECORD_BYTES;
    let preamble_and_meta = {
        let bytes = stream_bytes(&[]);
        // Magic, version, then the metadata record: its length and bytes.
        let len = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
        bytes[..13 + len].to_vec()
    };
    for (declared, refused) in [(MAX_RECORD_BYTES, false), (MAX_RECORD_BYTES + 1, true)] {
        let mut bytes = preamble_and_meta.clone();
        bytes.extend((declared as u32).to_le_bytes());
        // No body follows: at the limit the reader waits for it and finds the stream cut;
        // over it, the length alone is refused.
        let err = read_back(&bytes).unwrap_err();
        assert_eq!(
            matches!(err, StreamError::TooLarge { len, .. } if len == declared),
            refused,
            "declared {declared}: {err}"
        );
        if !refused {
            assert!(matches!(err, StreamError::Truncated { .. }), "{err}");
        }
    }
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
                        value: b"v".to_vec().into(),
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
