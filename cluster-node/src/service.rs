//! The KV service: executes writes, reads and membership changes on this node's Raft
//! group, forwarding to the leader over `aspen/kv/2` when this node is not the leader, so
//! a user never sees "not leader".
//!
//! Retries are safe by construction: a request is retried only when it certainly was not
//! applied (openraft refused it before appending, or it never reached the leader). A
//! write whose fate is unknown (proposed but not committed in time, or the leader went
//! silent after receiving it) is reported as `timeout`, never retried behind the user's
//! back, because a retried compare-and-swap could report a failure for its own success.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aspen_api::limits::MAX_CLUSTER_NODES;
use aspen_api::types::ReadResponse;
use aspen_api::wire::{
    KvRequest, KvResponse, MemberReport, MembershipChange, NewLearner, ReplicaReadRequest,
    ReplicaReadResponse, ReplicaReport, StatusReport,
};
use aspen_api::{ApiError, Command, Consistency, ErrorCode, ReadRequest, WriteResult};
use aspen_federation::Replicas;
use aspen_kv_client::{retry_is_safe, ClusterClient};
use iroh::EndpointId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tokio::time::Instant;

use crate::handoff::{HandOff, Leaving};
use crate::leader_contact::LeaderContact;
use crate::proposer::{ProposeError, Proposer};
use crate::raft_types::{AspenRaft, LogId, MemberNode, NodeId};
use crate::read_index::{ReadIndex, ReadIndexError};
use crate::storage::state_machine::MAX_IDLE_READERS;
use crate::storage::StateMachine;
use crate::transport::Transport;
use reads::{ReadQueue, StateReads};

mod batch;
mod lease;
mod reads;

pub use batch::MAX_BATCH_READ_BYTES;
pub use lease::run_expiry;

// The cluster-size limit is defined twice: in api (enforced on membership changes) and in
// config (enforced on peer lists), which do not depend on each other. Keep them equal.
const _: () = assert!(MAX_CLUSTER_NODES == aspen_config::limits::MAX_CLUSTER_NODES);

/// How long one request may take end to end, leader elections and forwarding included.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How recently, in heartbeat intervals (`raft.heartbeat_interval_ms`), this node's Raft
/// must have taken entries from the leader for its forwarding client to count the leader
/// as reachable and close an open breaker at once: a leader sends at least one
/// AppendEntries an interval, so ten missed in a row is no longer "just heard".
const LEADER_HEARD_HEARTBEATS: u64 = 10;

/// Time past [`REQUEST_DEADLINE`] a forwarded request's own client is given to report
/// why it failed (it starts its deadline a little later than the request's) before the
/// request is answered as timed out.
const FORWARD_VERDICT_GRACE: Duration = Duration::from_millis(100);
/// Pause between attempts while there is no leader or the leader is unreachable.
const RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// How long adding a learner waits for it to catch up before answering with where it is.
/// A learner that needs a snapshot of gigabytes takes longer than a request may; the
/// caller asks again (adding the same learner again changes nothing) until its matched
/// index reaches the leader's, as `aspen cluster add-learner` does.
pub const ADD_LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(5);
const _: () = assert!(ADD_LEARNER_CATCH_UP_WAIT.as_millis() * 2 <= REQUEST_DEADLINE.as_millis());

/// What one local attempt came to.
enum Attempt<T> {
    Done(T),
    /// Not applied here; this is the leader to try, if known (the forwarding client
    /// knows its members' addresses).
    Forward(Option<NodeId>),
}

pub use aspen_kv_client::MAX_FORWARDS_IN_FLIGHT;

/// Executes KV requests for one node. Shared by the HTTP API and the `aspen/kv/2` server.
pub struct KvService {
    /// This node's Raft id.
    pub node_id: NodeId,
    /// The cluster's name, reported with every result.
    pub cluster: String,
    raft: AspenRaft,
    /// Batches this node's writes into proposals.
    proposer: Proposer,
    /// Shares ReadIndex rounds among concurrent linearizable reads.
    read_index: ReadIndex,
    /// Set while this node hands its leadership over before stopping.
    leaving: Leaving,
    sm: StateMachine,
    /// Reads the state machine (a batch's reads, together).
    state: Arc<StateReads>,
    /// Queues single reads to run in batches.
    reads: ReadQueue,
    transport: Arc<Transport>,
    /// This node and its configured peers: the default voters of `init`.
    initial_members: BTreeMap<NodeId, MemberNode>,
    /// The federation replicas this node keeps, if it imports any.
    replicas: Option<Arc<Replicas>>,
    /// The client this node forwards through (the router's kind, without this node),
    /// with the membership it was built for; rebuilt when the membership changes.
    forwarder: std::sync::Mutex<Option<(Option<LogId>, Arc<ClusterClient>)>>,
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::ClusterUnavailable, message)
}

impl KvService {
    /// A service over `raft`.
    pub fn new(
        node_id: NodeId,
        cluster: String,
        raft: AspenRaft,
        sm: StateMachine,
        transport: Arc<Transport>,
        initial_members: BTreeMap<NodeId, MemberNode>,
        contact: Arc<LeaderContact>,
        replicas: Option<Arc<Replicas>>,
    ) -> Arc<KvService> {
        let leaving = Leaving::default();
        let state = Arc::new(StateReads {
            node_id,
            raft: raft.clone(),
            sm: sm.clone(),
            slots: tokio::sync::Semaphore::new(MAX_IDLE_READERS),
            contact,
        });
        Arc::new(KvService {
            node_id,
            cluster,
            proposer: Proposer::start(raft.clone(), leaving.clone(), sm.stages().clone()),
            read_index: ReadIndex::start(raft.clone(), leaving.clone()),
            leaving,
            reads: ReadQueue::start(state.clone()),
            state,
            raft,
            sm,
            transport,
            initial_members,
            replicas,
            forwarder: Default::default(),
        })
    }

    /// This node's iroh EndpointId, hex.
    pub fn endpoint_id(&self) -> String {
        self.transport.endpoint().id().to_string()
    }

    /// Cuts this node off from `peers` at its transport, both directions (fault injection;
    /// an empty set heals).
    pub fn set_partition(&self, peers: std::collections::HashSet<EndpointId>) {
        self.transport.set_blocked(peers);
    }

    /// The Raft handle.
    pub fn raft(&self) -> &AspenRaft {
        &self.raft
    }

    /// The local state machine.
    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// Builds a snapshot of this node's state now (of everything applied when it starts)
    /// and answers once it is on disk, with its metadata; the log before it is purged as
    /// after any snapshot.
    pub async fn build_snapshot(&self) -> Result<aspen_api::admin::SnapshotInfo, ApiError> {
        // openraft ignores a trigger while a build runs, and that build may have read the
        // state before this request: ask again each second until a build numbered above
        // `started` (one that began after this request) has finished.
        let (started, mut done) = self.sm.snapshot_builds();
        let deadline = tokio::time::Instant::now() + SNAPSHOT_BUILD_WAIT;
        loop {
            self.raft.trigger().snapshot().await.map_err(|e| {
                ApiError::new(ErrorCode::Internal, format!("cannot start a snapshot: {e}"))
            })?;
            let retry = (tokio::time::Instant::now() + SNAPSHOT_RETRIGGER).min(deadline);
            match tokio::time::timeout_at(retry, done.wait_for(|d| *d > started)).await {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        "the node is shutting down",
                    ))
                }
                Err(_) if retry >= deadline => {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the snapshot was not built within {SNAPSHOT_BUILD_WAIT:?}; it may \
                             still finish"
                        ),
                    ))
                }
                Err(_) => {}
            }
        }
        self.snapshot_info()?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                "a snapshot was built but none is current",
            )
        })
    }

    /// Before this node stops: if it leads, hands leadership to another voter
    /// ([`crate::handoff`]). It takes no new writes or linearizable reads afterwards.
    pub async fn hand_off_leadership(&self) -> HandOff {
        crate::handoff::hand_off(&self.raft, &self.leaving).await
    }

    /// The current snapshot's metadata and size, if there is one.
    pub fn snapshot_info(&self) -> Result<Option<aspen_api::admin::SnapshotInfo>, ApiError> {
        let current = self.sm.current_snapshot().map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot read the snapshot: {e}"),
            )
        })?;
        Ok(current.map(|(meta, bytes)| snapshot_info(&meta, bytes)))
    }

    /// Applies `command` on the cluster, forwarding to the leader as needed.
    pub async fn write(&self, command: Command) -> Result<WriteResult, ApiError> {
        self.check_command(&command)?;
        let request = KvRequest::Write(command.clone());
        self.with_leader(
            &request,
            |this| this.write_local(&command),
            |answer| match answer {
                KvResponse::Write(result) => Some(Ok(result)),
                _ => None,
            },
        )
        .await
    }

    /// Reads at `consistency`, forwarding linearizable reads to the leader as needed.
    pub async fn read(
        &self,
        request: ReadRequest,
        consistency: Consistency,
    ) -> Result<ReadResponse, ApiError> {
        validate_read(&request)?;
        if consistency == Consistency::Stale {
            return self.read_state(&request).await;
        }
        let wire = KvRequest::Read {
            request: request.clone(),
            consistency,
        };
        self.with_leader(
            &wire,
            |this| this.read_local(&request),
            |answer| match answer {
                KvResponse::Read(result) => Some(Ok(result)),
                _ => None,
            },
        )
        .await
    }

    /// Changes the membership, forwarding to the leader as needed.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Vec<MemberReport>, ApiError> {
        let request = KvRequest::Membership(change.clone());
        self.with_leader(
            &request,
            |this| this.membership_local(&change),
            |answer| match answer {
                KvResponse::Membership(members) => Some(Ok(members)),
                _ => None,
            },
        )
        .await
    }

    /// Runs `local` here, or forwards `request` to the leader, until the deadline.
    async fn with_leader<'a, T, F, Fut>(
        &'a self,
        request: &KvRequest,
        local: F,
        accept: impl Fn(KvResponse) -> Option<Result<T, ApiError>>,
    ) -> Result<T, ApiError>
    where
        F: Fn(&'a Self) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<T>, ApiError>>,
    {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut leader_known = false;
        loop {
            let attempt = tokio::time::timeout_at(deadline, local(self)).await.map_err(|_| {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!("no answer within {REQUEST_DEADLINE:?}; a write may or may not have been applied"),
                )
            })??;
            let leader = match attempt {
                Attempt::Done(value) => return Ok(value),
                Attempt::Forward(leader) => leader,
            };
            if let Some(leader_id) = leader.filter(|id| *id != self.node_id) {
                leader_known = true;
                match self.forward(request, leader_id, deadline).await? {
                    Some(KvResponse::Error(e)) => return Err(e),
                    // Another node leads now (maybe this one): asked again, next round.
                    None | Some(KvResponse::NotLeader { .. }) => {}
                    Some(answer) => {
                        return accept(answer).unwrap_or_else(|| {
                            Err(ApiError::new(
                                ErrorCode::Internal,
                                format!(
                                    "leader {leader_id} answered with the wrong kind of message"
                                ),
                            ))
                        })
                    }
                }
            }
            if Instant::now() + RETRY_BACKOFF >= deadline {
                return Err(if leader_known {
                    unavailable(format!("the leader could not be reached within {REQUEST_DEADLINE:?}; nothing was applied"))
                } else {
                    ApiError::new(ErrorCode::NoLeader, format!("cluster {} has no leader (election under way or quorum lost); nothing was applied, retry", self.cluster))
                });
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// Forwards `request` to `leader_id` through this node's client, within `deadline`:
    /// the leader's answer, or `None` when the request may be sent again and this node's
    /// Raft names another leader before the answer comes. (A dead leader holds a request
    /// until the dial gives up, `CONNECT_TIMEOUT`, which outlasts an election and, for a
    /// keep-alive, can outlast the lease's TTL at the new leader; a write waits, as one
    /// delivered is never sent twice.)
    async fn forward(
        &self,
        request: &KvRequest,
        leader_id: NodeId,
        deadline: Instant,
    ) -> Result<Option<KvResponse>, ApiError> {
        let forwarder = self.forwarder();
        let heard = self.state.contact.since_ms().is_some_and(|ms| {
            ms <= self.raft.config().heartbeat_interval * LEADER_HEARD_HEARTBEATS
        });
        forwarder.follow(leader_id, heard);
        // The client bounds each request by its own deadline, from when it takes it; this
        // keeps the whole request within this one (plus the grace in which the client's
        // own verdict, such as "no leader answered", comes first).
        let bounded = tokio::time::timeout_at(
            deadline + FORWARD_VERDICT_GRACE,
            forwarder.call(request.clone()),
        );
        let answer = if retry_is_safe(request) {
            tokio::select! {
                answer = bounded => answer,
                () = self.leader_moves_from(leader_id) => return Ok(None),
            }
        } else {
            bounded.await
        };
        let answer = answer.map_err(|_| {
            ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "leader {leader_id} did not answer within {REQUEST_DEADLINE:?}; \
                     a write may or may not have been applied"
                ),
            )
        })??;
        Ok(Some(answer))
    }

    /// Resolves once this node's Raft names a leader other than `from`; never if its Raft
    /// has stopped.
    async fn leader_moves_from(&self, from: NodeId) {
        let mut metrics = self.raft.metrics();
        let moved = metrics
            .wait_for(|m| m.current_leader.is_some_and(|leader| leader != from))
            .await
            .is_ok();
        if !moved {
            std::future::pending::<()>().await;
        }
    }

    /// This node's client of its own cluster (every other member), rebuilt when the
    /// membership changed since it was built. Forwarded writes and gets that queue up go
    /// to the leader together, one `Batch` message, as a router's do; a request delivered
    /// without an answer is never sent again unless it is a read.
    fn forwarder(&self) -> Arc<ClusterClient> {
        let current = *self.raft.metrics().borrow().membership_config.log_id();
        let mut slot = self.forwarder.lock().expect("forwarder lock");
        if let Some((at, client)) = slot.as_ref() {
            if *at == current {
                return client.clone();
            }
        }
        // Copied only to rebuild (not on every forward), and not borrowed while locked.
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let built_for = *membership.log_id();
        let members = membership
            .nodes()
            .filter_map(|(id, node)| {
                let endpoint = node.endpoint_id.parse::<EndpointId>().ok()?;
                Some((*id, self.transport.resolve(endpoint, &node.addrs)))
            })
            .collect();
        let client = Arc::new(ClusterClient::for_member(
            &self.cluster,
            self.node_id,
            members,
            self.transport.clone(),
            REQUEST_DEADLINE,
            MAX_FORWARDS_IN_FLIGHT,
            "MAX_FORWARDS_IN_FLIGHT",
        ));
        *slot = Some((built_for, client.clone()));
        client
    }

    /// Serves a request from another node or a router: local only, never forwarded.
    pub async fn serve_remote(&self, request: KvRequest) -> KvResponse {
        let not_leader = |leader: Option<NodeId>| KvResponse::NotLeader { leader };
        let result = match request {
            KvRequest::Write(command) => match self.check_command(&command) {
                Err(e) => return KvResponse::Error(e),
                Ok(()) => self.write_local(&command).await.map(|a| match a {
                    Attempt::Done(r) => KvResponse::Write(r),
                    Attempt::Forward(l) => not_leader(l),
                }),
            },
            KvRequest::Read {
                request,
                consistency,
            } => match validate_read(&request) {
                Err(e) => return KvResponse::Error(e),
                Ok(()) if consistency == Consistency::Stale => {
                    self.read_state(&request).await.map(KvResponse::Read)
                }
                Ok(()) => self.read_local(&request).await.map(|a| match a {
                    Attempt::Done(r) => KvResponse::Read(r),
                    Attempt::Forward(l) => not_leader(l),
                }),
            },
            KvRequest::Status => return KvResponse::Status(self.status()),
            KvRequest::Batch(requests) => return self.serve_batch(requests).await,
            KvRequest::Membership(change) => {
                self.membership_local(&change).await.map(|a| match a {
                    Attempt::Done(m) => KvResponse::Membership(m),
                    Attempt::Forward(l) => not_leader(l),
                })
            }
            KvRequest::ReplicaRead(request) => self
                .replica_read(request)
                .await
                .map(KvResponse::ReplicaRead),
            KvRequest::ReplicaStatus => Ok(KvResponse::ReplicaStatus(self.replica_reports())),
            KvRequest::FeedRead(request) => crate::watch::feed_read(&self.sm, request)
                .await
                .map(KvResponse::FeedRead),
            KvRequest::Lease(request) => return self.serve_lease(request).await,
        };
        result.unwrap_or_else(KvResponse::Error)
    }

    /// Serves a stale read of one of this node's federation replicas.
    pub async fn replica_read(
        &self,
        request: ReplicaReadRequest,
    ) -> Result<ReplicaReadResponse, ApiError> {
        validate_read(&request.request)?;
        let replicas = self.replicas.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::ReplicaUnavailable,
                format!(
                    "cluster {} keeps no federation replicas (no [federation] imports)",
                    self.cluster
                ),
            )
        })?;
        tokio::task::spawn_blocking(move || replicas.read(&request))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("replica read failed: {e}")))?
    }

    /// iroh connections refused by this node's access policy, per ALPN.
    pub fn refused_connections(&self) -> Vec<(String, u64)> {
        self.transport.access().refused_counts()
    }

    /// The state of every federation replica this node keeps.
    pub fn replica_reports(&self) -> Vec<ReplicaReport> {
        self.replicas
            .as_ref()
            .map_or_else(Vec::new, |r| r.reports())
    }

    async fn write_local(&self, command: &Command) -> Result<Attempt<WriteResult>, ApiError> {
        match self.proposer.propose(command.clone()).await {
            Ok(result) => Ok(Attempt::Done(result)),
            Err(ProposeError::NotLeader(leader)) => Ok(Attempt::Forward(leader.map(|(id, _)| id))),
            Err(ProposeError::Failed(e)) => Err(e),
        }
    }

    async fn read_local(&self, request: &ReadRequest) -> Result<Attempt<ReadResponse>, ApiError> {
        match self.read_index.confirm().await {
            Ok(()) => self.read_state(request).await.map(Attempt::Done),
            Err(ReadIndexError::NotLeader(leader)) => {
                Ok(Attempt::Forward(leader.map(|(id, _)| id)))
            }
            // Not enough followers answered: the leader may be deposed. Try again.
            Err(ReadIndexError::NoQuorum) => Ok(Attempt::Forward(None)),
            Err(ReadIndexError::Stopped(f)) => {
                Err(unavailable(format!("this node's Raft has stopped: {f}")))
            }
        }
    }

    /// Reads this node's copy as it is (queued with other single reads, to share a
    /// blocking task and a connection).
    async fn read_state(&self, request: &ReadRequest) -> Result<ReadResponse, ApiError> {
        self.reads.read(request.clone()).await
    }

    async fn membership_local(
        &self,
        change: &MembershipChange,
    ) -> Result<Attempt<Vec<MemberReport>>, ApiError> {
        let result = match change {
            MembershipChange::AddLearner(req) => {
                let node = member_node(req)?;
                let membership = self.raft.metrics().borrow().membership_config.clone();
                let members = membership.nodes().count();
                let known = membership
                    .nodes()
                    .find(|(id, _)| **id == req.node_id)
                    .map(|(_, n)| n.clone());
                check_member_limit(members, known.is_some())?;
                if let Some(known) = known {
                    if known.endpoint_id != node.endpoint_id {
                        return Err(ApiError::bad_request(format!(
                            "node {} is already a member, with endpoint id {}; remove it first \
                             to add another endpoint under that id",
                            req.node_id, known.endpoint_id
                        )));
                    }
                    // Added already: only wait again, at the leader. openraft would append
                    // another membership entry, the same as the last, for every repeat.
                    if let Some(leader) = self.other_leader() {
                        return Ok(Attempt::Forward(leader));
                    }
                    self.wait_for_learner(req.node_id, 0).await;
                    return Ok(Attempt::Done(self.members()));
                }
                // Not blocking: a learner fed a large snapshot would outlast the request.
                let added = self.raft.add_learner(req.node_id, node, false).await;
                if let Ok(added) = &added {
                    self.wait_for_learner(req.node_id, added.log_id.index).await;
                }
                added
            }
            MembershipChange::Promote(id) => {
                self.require_member(*id)?;
                let ids = BTreeSet::from([*id]);
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
            }
            MembershipChange::Remove(id) => {
                self.require_member(*id)?;
                let ids = BTreeSet::from([*id]);
                let is_voter = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == *id);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                self.raft.change_membership(change, false).await
            }
        };
        match result {
            Ok(_) => Ok(Attempt::Done(self.members())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Attempt::Forward(f.leader_id))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ApiError::bad_request(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => {
                Err(unavailable(format!("this node's Raft has stopped: {f}")))
            }
        }
    }

    /// Waits up to [`ADD_LEARNER_CATCH_UP_WAIT`] for learner `id` to hold the log up to
    /// `added_at` and up to the leader's last index now, whichever is later.
    async fn wait_for_learner(&self, id: NodeId, added_at: u64) {
        let target = self
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
            .max(added_at);
        let _caught_up = self
            .raft
            .wait(Some(ADD_LEARNER_CATCH_UP_WAIT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|l| l.index >= target)
                },
                "the new learner to catch up",
            )
            .await;
    }

    /// `None` when this node leads; otherwise `Some` of the leader it knows, if any, to
    /// forward to.
    fn other_leader(&self) -> Option<Option<NodeId>> {
        let leader = self.raft.metrics().borrow().current_leader;
        (leader != Some(self.node_id)).then_some(leader)
    }

    fn require_member(&self, id: NodeId) -> Result<(), ApiError> {
        let known = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .any(|(n, _)| *n == id);
        if known {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::NotFound,
                format!("node {id} is not a member of cluster {}", self.cluster),
            ))
        }
    }

    /// Initializes a new cluster with `members` (empty: this node and configured peers).
    pub async fn init(&self, members: &[u64]) -> Result<Vec<MemberReport>, ApiError> {
        let chosen: BTreeMap<NodeId, MemberNode> = if members.is_empty() {
            self.initial_members.clone()
        } else {
            let mut chosen = BTreeMap::new();
            for id in members {
                let node = self.initial_members.get(id).ok_or_else(|| {
                    ApiError::bad_request(format!("node {id} is neither this node nor a configured peer; add it to `peers` in the config"))
                })?;
                chosen.insert(*id, node.clone());
            }
            if !chosen.contains_key(&self.node_id) {
                return Err(ApiError::bad_request(format!(
                    "members must include this node ({})",
                    self.node_id
                )));
            }
            chosen
        };
        let expected = chosen.len();
        self.raft.initialize(chosen).await.map_err(|e| match e {
            RaftError::APIError(e) => ApiError::bad_request(format!("cannot initialize: {e} (a cluster is initialized once; add nodes with add-learner)")),
            RaftError::Fatal(f) => unavailable(format!("this node's Raft has stopped: {f}")),
        })?;
        // initialize() returns before the metrics show the new membership; wait for it so
        // the answer lists the members.
        let _ = self
            .raft
            .wait(Some(REQUEST_DEADLINE))
            .metrics(
                |m| m.membership_config.nodes().count() == expected,
                "membership visible",
            )
            .await;
        Ok(self.members())
    }

    /// This node's view of its cluster, as `GET /v1/status` and `aspen/kv/2` report it.
    pub fn status(&self) -> StatusReport {
        let m = self.raft.metrics().borrow().clone();
        let raft_state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        StatusReport {
            cluster: self.cluster.clone(),
            node_id: self.node_id,
            endpoint_id: self.endpoint_id(),
            raft_state: raft_state.into(),
            leader: m.current_leader,
            term: m.current_term,
            applied_revision: self.sm.revision(),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            initialized: m.membership_config.nodes().count() > 0,
            members: self.members(),
        }
    }

    /// The membership as this node knows it.
    pub fn members(&self) -> Vec<MemberReport> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| MemberReport {
                node_id: *id,
                endpoint_id: node.endpoint_id.clone(),
                addrs: node.addrs.clone(),
                voter: voters.contains(id),
                matched_index: metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect()
    }
}

fn member_node(req: &NewLearner) -> Result<MemberNode, ApiError> {
    req.endpoint_id
        .parse::<EndpointId>()
        .map_err(|e| ApiError::bad_request(format!("field `endpoint_id`: not an iroh endpoint id ({e}); it is 64 hex characters, printed by the node at start")))?;
    if req.addrs.is_empty() {
        return Err(ApiError::bad_request(
            "field `addrs`: give at least one ip:port of the node's iroh endpoint",
        ));
    }
    for (i, a) in req.addrs.iter().enumerate() {
        a.parse::<std::net::SocketAddr>().map_err(|e| {
            ApiError::bad_request(format!("field `addrs[{i}]`: {a:?} is not ip:port ({e})"))
        })?;
    }
    Ok(MemberNode {
        endpoint_id: req.endpoint_id.clone(),
        addrs: req.addrs.clone(),
    })
}

/// Refuses a new member once the cluster has [`MAX_CLUSTER_NODES`]; re-adding a known
/// node (to update its address) is always allowed.
fn check_member_limit(members: usize, already_member: bool) -> Result<(), ApiError> {
    if !already_member && members >= MAX_CLUSTER_NODES {
        return Err(ApiError::bad_request(format!(
            "cluster already has {members} members, the limit is {MAX_CLUSTER_NODES}: remove one \
             first, or start another cluster"
        )));
    }
    Ok(())
}

fn validate_read(request: &ReadRequest) -> Result<(), ApiError> {
    request.validate().map_err(Into::into)
}

/// How long `POST /v1/cluster/snapshot` waits for the build: reading every key of a node
/// holding gigabytes takes minutes at the builder's low priority on a busy node.
pub const SNAPSHOT_BUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// How often `POST /v1/cluster/snapshot` asks again for a build while it waits (a build
/// that was already running when it asked may not hold everything it must).
const SNAPSHOT_RETRIGGER: std::time::Duration = std::time::Duration::from_secs(1);

/// What the API says of a snapshot with `meta`, `bytes` long.
pub fn snapshot_info(
    meta: &crate::storage::snapshot::Meta,
    bytes: u64,
) -> aspen_api::admin::SnapshotInfo {
    aspen_api::admin::SnapshotInfo {
        snapshot_id: meta.snapshot_id.clone(),
        last_log_index: meta.last_log_id.map_or(0, |l| l.index),
        last_log_term: meta.last_log_id.map_or(0, |l| l.leader_id.term),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_api::limits::MAX_SCAN_LIMIT;

    #[test]
    fn a_cluster_takes_new_members_up_to_the_limit_and_no_more() {
        assert!(check_member_limit(MAX_CLUSTER_NODES - 1, false).is_ok());
        let err = check_member_limit(MAX_CLUSTER_NODES, false).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("limit is 64"), "{}", err.message);
        assert!(
            check_member_limit(MAX_CLUSTER_NODES, true).is_ok(),
            "a known member may be re-added"
        );
    }

    #[test]
    fn scan_limits_are_checked_at_both_ends() {
        let scan = |limit| ReadRequest::Scan {
            prefix: "p".into(),
            after: None,
            limit,
        };
        assert!(validate_read(&scan(1)).is_ok());
        assert!(validate_read(&scan(MAX_SCAN_LIMIT)).is_ok());
        assert!(validate_read(&scan(0)).is_err());
        assert!(validate_read(&scan(MAX_SCAN_LIMIT + 1)).is_err());
    }
}
