//! Leases in the state machine: grants, attached keys, revokes that delete in one
//! revision, the limits, and leases carried across restarts and snapshots.

use aspen_api::feed::{ChangeKind, ChangeSet};
use aspen_api::lease::LeaseFailure;
use aspen_api::limits::MAX_KEYS_PER_LEASE;
use aspen_api::{Command, WriteOutcome, WriteResult};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};

use super::{FeedRetention, StateMachine};
use crate::raft_types::{Entry, Proposal};

struct Sm {
    sm: StateMachine,
    index: u64,
}

impl Sm {
    fn open(dir: &std::path::Path) -> Sm {
        let sm = StateMachine::open(dir, FeedRetention::default()).unwrap();
        let index = sm.applied_index();
        Sm { sm, index }
    }

    async fn run(&mut self, command: Command) -> WriteResult {
        self.index += 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![command],
                time_ms: 1_000,
            }),
        };
        let mut results = self.sm.apply(vec![entry]).await.unwrap();
        results.remove(0).results.remove(0)
    }

    fn lease_keys(&self, lease: u64) -> Vec<String> {
        self.sm.read(|r| r.lease_keys(lease)).unwrap().unwrap()
    }

    fn changes_after(&self, after: u64) -> Vec<ChangeSet> {
        self.sm
            .read(|r| r.changes_after(after, 100, usize::MAX))
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

fn grant(lease: u64) -> Command {
    Command::LeaseGrant {
        lease,
        ttl_ms: 5_000,
    }
}

fn leased_set(keys: &[&str], lease: u64) -> Command {
    Command::Leased {
        cluster: "c".into(),
        attach: keys.iter().map(|k| (k.to_string(), lease)).collect(),
        command: Box::new(Command::SetMulti {
            writes: keys
                .iter()
                .map(|k| (k.to_string(), bytes::Bytes::from_static(b"v")))
                .collect(),
        }),
    }
}

const APPLIED: WriteOutcome = WriteOutcome::Applied { deleted: 0 };

#[tokio::test]
async fn a_revoke_deletes_the_leases_keys_in_one_revision_and_a_plain_put_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = Sm::open(dir.path());
    let granted = sm.run(grant(7)).await;
    assert_eq!(
        (granted.revision, granted.outcome),
        (0, APPLIED),
        "no revision"
    );
    assert_eq!(sm.sm.lease_clock().len(), 1);
    assert_eq!(sm.run(leased_set(&["a", "b", "c"], 7)).await.revision, 1);
    sm.run(Command::Set {
        key: "c".into(),
        value: b"plain".to_vec().into(),
    })
    .await;
    assert_eq!(
        sm.lease_keys(7),
        vec!["a", "b"],
        "the plain put took c off the lease"
    );

    let revoked = sm.run(Command::LeaseRevoke { lease: 7 }).await;
    assert_eq!(revoked.outcome, WriteOutcome::Applied { deleted: 2 });
    assert_eq!(revoked.revision, 3);
    let sets = sm.changes_after(2);
    assert_eq!(sets.len(), 1, "both deletes in one revision");
    let deleted: Vec<&str> = sets[0]
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Delete)
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(deleted, vec!["a", "b"]);
    assert!(sm.sm.get("a").unwrap().is_none());
    assert!(sm.sm.get("c").unwrap().is_some());
    assert!(sm.sm.lease_clock().is_empty());
    assert_eq!(
        sm.run(Command::LeaseRevoke { lease: 7 }).await.outcome,
        WriteOutcome::LeaseFailed(LeaseFailure::NotFound { lease: 7 })
    );
}

#[tokio::test]
async fn a_write_with_a_missing_lease_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = Sm::open(dir.path());
    let result = sm.run(leased_set(&["a"], 9)).await;
    assert_eq!(
        result.outcome,
        WriteOutcome::LeaseFailed(LeaseFailure::NotFound { lease: 9 })
    );
    assert_eq!(result.revision, 0);
    assert!(sm.sm.get("a").unwrap().is_none());
    assert_eq!(
        sm.run(grant(1)).await.outcome,
        APPLIED,
        "a grant of a free number works"
    );
    assert_eq!(
        sm.run(grant(1)).await.outcome,
        WriteOutcome::LeaseFailed(LeaseFailure::Exists { lease: 1 })
    );
}

#[tokio::test]
async fn a_lease_holds_up_to_its_key_limit_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = Sm::open(dir.path());
    sm.run(grant(3)).await;
    let keys: Vec<String> = (0..MAX_KEYS_PER_LEASE)
        .map(|i| format!("k{i:03}"))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(sm.run(leased_set(&refs, 3)).await.outcome, APPLIED);
    // Rewriting keys the lease already holds keeps it at the limit: allowed.
    assert_eq!(sm.run(leased_set(&refs[..10], 3)).await.outcome, APPLIED);
    let over = sm.run(leased_set(&["one-more"], 3)).await;
    assert_eq!(
        over.outcome,
        WriteOutcome::LeaseFailed(LeaseFailure::TooManyKeys {
            lease: 3,
            max: MAX_KEYS_PER_LEASE
        })
    );
    assert!(sm.sm.get("one-more").unwrap().is_none());
}

#[tokio::test]
async fn leases_survive_a_restart_and_travel_in_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = Sm::open(dir.path());
    sm.run(grant(5)).await;
    sm.run(leased_set(&["x", "y"], 5)).await;
    let snapshot = sm.sm.build_snapshot().await.unwrap();
    drop(sm);

    let mut reopened = Sm::open(dir.path());
    assert_eq!(reopened.lease_keys(5), vec!["x", "y"]);
    assert!(reopened.sm.lease_clock().time_left(5).is_some());

    let other = tempfile::tempdir().unwrap();
    let mut installed = Sm::open(other.path());
    installed.run(grant(99)).await;
    installed
        .sm
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    installed.index = installed.sm.applied_index();
    assert_eq!(installed.lease_keys(5), vec!["x", "y"]);
    assert!(
        installed.sm.lease_clock().time_left(99).is_none(),
        "replaced"
    );
    let revoked = installed.run(Command::LeaseRevoke { lease: 5 }).await;
    assert_eq!(revoked.outcome, WriteOutcome::Applied { deleted: 2 });
    reopened.run(Command::LeaseRevoke { lease: 5 }).await;
    assert!(reopened.sm.get("x").unwrap().is_none());
}
