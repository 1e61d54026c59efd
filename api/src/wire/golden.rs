//! Golden bytes: the exact encoding of a few messages, so a change to any wire type's
//! shape fails here and is made on purpose (with a version bump), never by accident.

use super::{decode, encode, KvRequest, KvResponse, MemberReport, StatusReport};
use crate::blob::BlobRef;
use crate::codec::hex;
use crate::command::{Command, Precondition};
use crate::error::{ApiError, ErrorCode};
use crate::types::{
    Consistency, KvEntry, ReadRequest, ReadResponse, ReadResult, WriteOutcome, WriteResult,
};

fn pinned<T: super::Message + std::fmt::Debug + PartialEq>(message: T, expected_hex: &str) {
    let bytes = encode(&message).unwrap();
    assert_eq!(
        hex(&bytes),
        expected_hex,
        "the encoding of {message:?} changed"
    );
    assert_eq!(decode::<T>(&bytes).unwrap(), message);
}

#[test]
fn a_conditional_write_request_has_its_pinned_bytes() {
    pinned(
        KvRequest::Write(Command::ConditionalSetMulti {
            preconditions: vec![
                Precondition::Equals {
                    key: "a".into(),
                    value: vec![0, 255].into(),
                },
                Precondition::ModRevision {
                    key: "b".into(),
                    revision: 300,
                },
            ],
            writes: vec![("c".into(), vec![1].into())],
            deletes: vec!["d".into()],
        }),
        "030006020201610200ff030162ac020101630101010164",
    );
}

#[test]
fn a_stale_scan_request_has_its_pinned_bytes() {
    pinned(
        KvRequest::Read {
            request: ReadRequest::Scan {
                prefix: "p/".into(),
                after: Some("p/x".into()),
                limit: 10,
            },
            consistency: Consistency::Stale,
        },
        "03010102702f0103702f780a01",
    );
}

#[test]
fn a_follower_status_has_its_pinned_bytes() {
    // A follower knows no matched index: the field is there, as `None`.
    pinned(
        KvResponse::Status(StatusReport {
            cluster: "us-1".into(),
            node_id: 3,
            endpoint_id: "ab".into(),
            raft_state: "follower".into(),
            leader: Some(1),
            term: 2,
            applied_revision: 5,
            applied_index: 6,
            last_log_index: 7,
            initialized: true,
            members: vec![MemberReport {
                node_id: 1,
                endpoint_id: "cd".into(),
                addrs: vec!["127.0.0.1:1".into()],
                voter: true,
                matched_index: None,
            }],
        }),
        "03030475732d310302616208666f6c6c6f776572010102050607010101026364010b3132372e302e302e313a310100",
    );
}

#[test]
fn a_batch_answer_has_its_pinned_bytes() {
    pinned(
        KvResponse::Batch(vec![
            KvResponse::Write(WriteResult {
                revision: 9,
                outcome: WriteOutcome::Applied { deleted: 1 },
            }),
            KvResponse::NotLeader { leader: None },
            KvResponse::Error(ApiError::new(ErrorCode::Internal, "x")),
        ]),
        "03040300090001050006080178",
    );
}

#[test]
fn a_read_answer_with_a_blob_entry_has_its_pinned_bytes() {
    // Version 3 gave an entry its blob reference: `None` is one byte, a reference the
    // 32 hash bytes and the size.
    pinned(
        KvResponse::Read(ReadResponse {
            result: ReadResult::Get(Some(KvEntry {
                key: "k".into(),
                value: vec![],
                create_revision: 4,
                mod_revision: 4,
                version: 1,
                blob: Some(BlobRef {
                    hash: [0xb3; 32],
                    size: 1 << 21,
                }),
            })),
            revision: 4,
            applied_index: 5,
            known_commit_index: 5,
            since_leader_contact_ms: None,
        }),
        "03010001016b0004040101b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b3b38080800104050500",
    );
}
