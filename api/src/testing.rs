//! proptest strategies for every wire and disk type of this crate (feature `testing`),
//! so the round-trip tests here and in the node cover arbitrary contents: every variant,
//! every `Option` both ways, binary values, keys outside ASCII.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::blob::BlobRef;
use crate::command::{Command, Precondition};
use crate::error::{ApiError, ErrorCode};
use crate::feed::{ChangeKind, ChangeSet, KeyChange};
use crate::lease::{LeaseAnswer, LeaseFailure, LeaseRequest};
use crate::types::{
    Consistency, KeyState, KvEntry, PreconditionFailure, ReadRequest, ReadResponse, ReadResult,
    ScanPage, WriteOutcome, WriteResult,
};
use crate::wire::{
    FeedReadRequest, FeedReadResponse, KeyFilter, KvRequest, KvResponse, MemberReport,
    MembershipChange, NewLearner, ReplicaReadRequest, ReplicaReadResponse, ReplicaReport,
    StatusReport,
};

/// A key: short, any Unicode (not only ASCII), sometimes with `/` and NUL.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z/]{1,12}", "\\PC{1,6}", Just("a\0b".to_string())]
}

/// A value: arbitrary bytes, empty included.
pub fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..24)
}

/// A value as commands carry it.
pub fn shared_value() -> impl Strategy<Value = bytes::Bytes> {
    value().prop_map(bytes::Bytes::from)
}

/// Any precondition.
pub fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        key().prop_map(|key| Precondition::Exists { key }),
        key().prop_map(|key| Precondition::NotExists { key }),
        (key(), shared_value()).prop_map(|(key, value)| Precondition::Equals { key, value }),
        (key(), any::<u64>())
            .prop_map(|(key, revision)| Precondition::ModRevision { key, revision }),
        (key(), blob_ref()).prop_map(|(key, blob)| Precondition::BlobEquals { key, blob }),
    ]
}

/// Any blob reference (not necessarily valid).
pub fn blob_ref() -> impl Strategy<Value = BlobRef> {
    (any::<[u8; 32]>(), any::<u64>()).prop_map(|(hash, size)| BlobRef { hash, size })
}

fn pairs() -> impl Strategy<Value = Vec<(String, bytes::Bytes)>> {
    vec((key(), shared_value()), 0..4)
}

/// Any command (not necessarily valid: encodings must carry invalid ones too).
pub fn command() -> impl Strategy<Value = Command> {
    let leased = (key(), vec((key(), any::<u64>()), 0..3), key_command()).prop_map(
        |(cluster, attach, command)| Command::Leased {
            cluster,
            attach,
            command: Box::new(command),
        },
    );
    prop_oneof![
        6 => key_command(),
        1 => (any::<u64>(), any::<u64>())
            .prop_map(|(lease, ttl_ms)| Command::LeaseGrant { lease, ttl_ms }),
        1 => any::<u64>().prop_map(|lease| Command::LeaseRevoke { lease }),
        1 => leased,
    ]
}

/// Any lease failure.
pub fn lease_failure() -> impl Strategy<Value = LeaseFailure> {
    prop_oneof![
        any::<u64>().prop_map(|lease| LeaseFailure::NotFound { lease }),
        any::<u64>().prop_map(|lease| LeaseFailure::Exists { lease }),
        any::<usize>().prop_map(|max| LeaseFailure::TooManyLeases { max }),
        (any::<u64>(), any::<usize>())
            .prop_map(|(lease, max)| LeaseFailure::TooManyKeys { lease, max }),
    ]
}

/// Any lease request.
pub fn lease_request() -> impl Strategy<Value = LeaseRequest> {
    prop_oneof![
        any::<u64>().prop_map(|ttl_secs| LeaseRequest::Grant { ttl_secs }),
        any::<u64>().prop_map(|lease| LeaseRequest::KeepAlive { lease }),
        any::<u64>().prop_map(|lease| LeaseRequest::Get { lease }),
        any::<u64>().prop_map(|lease| LeaseRequest::Revoke { lease }),
    ]
}

/// Any lease answer.
pub fn lease_answer() -> impl Strategy<Value = LeaseAnswer> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        vec(key(), 0..3),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(lease, granted_ttl_ms, remaining_ms, keys, revision, deleted)| LeaseAnswer {
                lease,
                granted_ttl_ms,
                remaining_ms,
                keys,
                revision,
                deleted,
            },
        )
}

/// Any command on keys (no lease commands).
fn key_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (key(), shared_value()).prop_map(|(key, value)| Command::Set { key, value }),
        pairs().prop_map(|writes| Command::SetMulti { writes }),
        key().prop_map(|key| Command::Delete { key }),
        vec(key(), 0..4).prop_map(|keys| Command::DeleteMulti { keys }),
        (key(), option::of(shared_value()), shared_value()).prop_map(
            |(key, expected, new_value)| {
                Command::CompareAndSwap {
                    key,
                    expected,
                    new_value,
                }
            }
        ),
        (key(), shared_value())
            .prop_map(|(key, expected)| Command::CompareAndDelete { key, expected }),
        (vec(precondition(), 0..3), pairs(), vec(key(), 0..3)).prop_map(
            |(preconditions, writes, deletes)| Command::ConditionalSetMulti {
                preconditions,
                writes,
                deletes,
            }
        ),
        (key(), blob_ref(), vec(precondition(), 0..3)).prop_map(|(key, blob, preconditions)| {
            Command::SetBlob {
                key,
                blob,
                preconditions,
            }
        }),
    ]
}

/// Any stored entry.
pub fn kv_entry() -> impl Strategy<Value = KvEntry> {
    (
        key(),
        value(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        option::of(blob_ref()),
    )
        .prop_map(
            |(key, value, create_revision, mod_revision, version, blob)| KvEntry {
                key,
                value: if blob.is_some() { vec![] } else { value },
                create_revision,
                mod_revision,
                version,
                blob,
            },
        )
}

/// Any error code.
pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec())
}

/// Any API error.
pub fn api_error() -> impl Strategy<Value = ApiError> {
    (error_code(), "\\PC{0,20}").prop_map(|(code, message)| ApiError { code, message })
}

/// Any write result.
pub fn write_result() -> impl Strategy<Value = WriteResult> {
    let failure = (
        any::<usize>(),
        precondition(),
        key(),
        option::of(kv_entry()),
    )
        .prop_map(|(index, precondition, key, entry)| PreconditionFailure {
            index,
            precondition,
            actual: KeyState { key, entry },
        });
    let outcome = prop_oneof![
        any::<u32>().prop_map(|deleted| WriteOutcome::Applied { deleted }),
        failure.prop_map(WriteOutcome::PreconditionFailed),
        lease_failure().prop_map(WriteOutcome::LeaseFailed),
    ];
    (any::<u64>(), outcome).prop_map(|(revision, outcome)| WriteResult { revision, outcome })
}

/// Any read request.
pub fn read_request() -> impl Strategy<Value = ReadRequest> {
    prop_oneof![
        key().prop_map(|key| ReadRequest::Get { key }),
        (key(), option::of(key()), any::<usize>()).prop_map(|(prefix, after, limit)| {
            ReadRequest::Scan {
                prefix,
                after,
                limit,
            }
        }),
    ]
}

/// Any consistency.
pub fn consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![Just(Consistency::Linearizable), Just(Consistency::Stale)]
}

/// Any read answer.
pub fn read_response() -> impl Strategy<Value = ReadResponse> {
    let result = prop_oneof![
        option::of(kv_entry()).prop_map(ReadResult::Get),
        (vec(kv_entry(), 0..3), any::<bool>())
            .prop_map(|(kvs, more)| ReadResult::Scan(ScanPage { kvs, more })),
    ];
    (
        result,
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(result, revision, applied_index, known_commit_index, since_leader_contact_ms)| {
                ReadResponse {
                    result,
                    revision,
                    applied_index,
                    known_commit_index,
                    since_leader_contact_ms,
                }
            },
        )
}

/// Any member report.
pub fn member_report() -> impl Strategy<Value = MemberReport> {
    (
        any::<u64>(),
        "[0-9a-f]{0,64}",
        vec("[0-9.:]{1,21}", 0..3),
        any::<bool>(),
        option::of(any::<u64>()),
    )
        .prop_map(
            |(node_id, endpoint_id, addrs, voter, matched_index)| MemberReport {
                node_id,
                endpoint_id,
                addrs,
                voter,
                matched_index,
            },
        )
}

/// Any status report.
pub fn status_report() -> impl Strategy<Value = StatusReport> {
    let head = (
        key(),
        any::<u64>(),
        "[0-9a-f]{0,64}",
        "[a-z]{0,9}",
        option::of(any::<u64>()),
        any::<u64>(),
    );
    let tail = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        vec(member_report(), 0..4),
    );
    (head, tail).prop_map(
        |(
            (cluster, node_id, endpoint_id, raft_state, leader, term),
            (applied_revision, applied_index, last_log_index, initialized, members),
        )| StatusReport {
            cluster,
            node_id,
            endpoint_id,
            raft_state,
            leader,
            term,
            applied_revision,
            applied_index,
            last_log_index,
            initialized,
            members,
        },
    )
}

/// Any membership change.
pub fn membership_change() -> impl Strategy<Value = MembershipChange> {
    let learner = (any::<u64>(), "[0-9a-f]{0,64}", vec("[0-9.:]{1,21}", 0..3)).prop_map(
        |(node_id, endpoint_id, addrs)| NewLearner {
            node_id,
            endpoint_id,
            addrs,
        },
    );
    prop_oneof![
        learner.prop_map(MembershipChange::AddLearner),
        any::<u64>().prop_map(MembershipChange::Promote),
        any::<u64>().prop_map(MembershipChange::Remove),
    ]
}

fn single_request() -> impl Strategy<Value = KvRequest> {
    prop_oneof![
        command().prop_map(KvRequest::Write),
        (read_request(), consistency()).prop_map(|(request, consistency)| KvRequest::Read {
            request,
            consistency
        }),
        membership_change().prop_map(KvRequest::Membership),
        Just(KvRequest::Status),
        (
            key(),
            read_request(),
            any::<u64>(),
            option::of(any::<u64>())
        )
            .prop_map(|(source, request, min_revision, max_lag_ms)| {
                KvRequest::ReplicaRead(ReplicaReadRequest {
                    source,
                    request,
                    min_revision,
                    max_lag_ms,
                })
            }),
        Just(KvRequest::ReplicaStatus),
        (key_filter(), option::of(any::<u64>()), any::<u64>()).prop_map(
            |(filter, after, wait_ms)| KvRequest::FeedRead(FeedReadRequest {
                filter,
                after,
                wait_ms
            })
        ),
        lease_request().prop_map(KvRequest::Lease),
    ]
}

/// Any key filter of a feed read.
pub fn key_filter() -> impl Strategy<Value = KeyFilter> {
    (key(), any::<bool>()).prop_map(|(key, prefix)| KeyFilter { key, prefix })
}

/// Any change set of the feed.
pub fn change_set() -> impl Strategy<Value = ChangeSet> {
    let kind = prop_oneof![
        (value(), any::<u64>(), any::<u64>()).prop_map(|(value, create_revision, version)| {
            ChangeKind::Put {
                value: value.into(),
                create_revision,
                version,
            }
        }),
        Just(ChangeKind::Delete),
        (blob_ref(), any::<u64>(), any::<u64>()).prop_map(|(blob, create_revision, version)| {
            ChangeKind::PutBlob {
                blob,
                create_revision,
                version,
            }
        }),
    ];
    let change = (key(), kind).prop_map(|(key, kind)| KeyChange { key, kind });
    (any::<u64>(), any::<u64>(), vec(change, 0..4)).prop_map(|(revision, time_ms, changes)| {
        ChangeSet {
            revision,
            time_ms,
            changes,
        }
    })
}

fn feed_read_response() -> impl Strategy<Value = FeedReadResponse> {
    prop_oneof![
        (vec(change_set(), 0..3), any::<u64>())
            .prop_map(|(sets, through)| FeedReadResponse::Page { sets, through }),
        any::<u64>().prop_map(|oldest| FeedReadResponse::Compacted { oldest }),
    ]
}

/// Any replica report.
pub fn replica_report() -> impl Strategy<Value = ReplicaReport> {
    let head = (key(), key(), any::<u64>(), any::<u64>(), any::<u64>());
    let tail = (
        option::of(any::<u64>()),
        "[a-z]{0,12}",
        any::<u64>(),
        any::<u64>(),
        option::of("\\PC{0,12}"),
    );
    (head, tail).prop_map(
        |(
            (source, region, revision, owner_head, lag_revisions),
            (lag_ms, phase, checkpoints_loaded, sets_applied, error),
        )| ReplicaReport {
            source,
            region,
            revision,
            owner_head,
            lag_revisions,
            lag_ms,
            phase,
            checkpoints_loaded,
            sets_applied,
            error,
        },
    )
}

/// Any request, batches (of any other request) included.
pub fn kv_request() -> impl Strategy<Value = KvRequest> {
    prop_oneof![
        4 => single_request(),
        1 => vec(single_request(), 0..4).prop_map(KvRequest::Batch),
    ]
}

fn single_response() -> impl Strategy<Value = KvResponse> {
    prop_oneof![
        write_result().prop_map(KvResponse::Write),
        read_response().prop_map(KvResponse::Read),
        vec(member_report(), 0..3).prop_map(KvResponse::Membership),
        status_report().prop_map(KvResponse::Status),
        option::of(any::<u64>()).prop_map(|leader| KvResponse::NotLeader { leader }),
        api_error().prop_map(KvResponse::Error),
        (
            key(),
            read_response(),
            any::<u64>(),
            option::of(any::<u64>())
        )
            .prop_map(|(source, read, lag_revisions, lag_ms)| {
                KvResponse::ReplicaRead(ReplicaReadResponse {
                    source,
                    result: read.result,
                    revision: read.revision,
                    lag_revisions,
                    lag_ms,
                })
            }),
        vec(replica_report(), 0..3).prop_map(KvResponse::ReplicaStatus),
        feed_read_response().prop_map(KvResponse::FeedRead),
        lease_answer().prop_map(KvResponse::Lease),
    ]
}

/// Any response, batches (of any other response) included.
pub fn kv_response() -> impl Strategy<Value = KvResponse> {
    prop_oneof![
        4 => single_response(),
        1 => vec(single_response(), 0..4).prop_map(KvResponse::Batch),
    ]
}
