//! proptest strategies for openraft's types as Aspen configures them (log ids, votes,
//! memberships, entries carrying proposals, snapshot metadata), shared by the round-trip
//! tests of the Raft messages and of the on-disk formats.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::raft_types::{Entry, MemberNode, NodeId, Proposal};

pub fn vote() -> impl Strategy<Value = Vote<NodeId>> {
    (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(term, node, committed)| {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    })
}

pub fn log_id() -> impl Strategy<Value = LogId<NodeId>> {
    (any::<u64>(), any::<u64>(), any::<u64>())
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

pub fn membership() -> impl Strategy<Value = Membership<NodeId, MemberNode>> {
    vec((0u64..8, "[0-9a-f]{0,8}", vec("[0-9.:]{1,12}", 0..2)), 1..4).prop_map(|nodes| {
        let nodes: BTreeMap<NodeId, MemberNode> = nodes
            .into_iter()
            .map(|(id, endpoint_id, addrs)| (id, MemberNode { endpoint_id, addrs }))
            .collect();
        let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
        Membership::new(vec![voters], nodes)
    })
}

pub fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        vec(aspen_api::testing::command(), 0..3).prop_map(|commands| EntryPayload::Normal(
            Proposal {
                commands,
                time_ms: 0
            }
        )),
        membership().prop_map(EntryPayload::Membership),
    ];
    (log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

pub fn snapshot_meta() -> impl Strategy<Value = SnapshotMeta<NodeId, MemberNode>> {
    (
        option::of(log_id()),
        option::of(log_id()),
        membership(),
        "[0-9-]{0,12}",
    )
        .prop_map(
            |(last_log_id, membership_log_id, membership, snapshot_id)| SnapshotMeta {
                last_log_id,
                last_membership: StoredMembership::new(membership_log_id, membership),
                snapshot_id,
            },
        )
}
