//! [`Link`]: how a client's requests reach one cluster's leader over `aspen/kv/2`, one
//! at a time ([`Link::send`]) or several in one message ([`Link::send_batch`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aspen_api::wire::{
    self, KvRequest, KvResponse, ReplicaReadRequest, ReplicaReadResponse, KV_ALPN,
    MAX_WIRE_MESSAGE_BYTES,
};
use aspen_api::{ApiError, ErrorCode};
use aspen_net::{PeerAddr, Transport, TransportError};
use futures::future::join_all;
use tokio::time::Instant;

use crate::breaker::{Breaker, PROBE_DEADLINE, PROBE_INTERVAL};
use crate::Health;

/// Pause after every node of a cluster was tried without finding the leader (an election
/// is under way, or the cluster is down).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// Least time left before the deadline for another attempt to be sent. With less, the
/// request is not sent again: an attempt cut off by the deadline before any answer would
/// have to be reported as "may have been applied", when all it lacked was time.
pub const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(20);

/// One member as the client knows it.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) node_id: u64,
    pub(crate) peer: PeerAddr,
}

/// The path to one cluster: its members, the one believed to lead, what was last seen.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) name: String,
    /// The member that owns this client, for a member's own client: it is not in
    /// `members`, and a `NotLeader` naming it goes back to it.
    pub(crate) owner: Option<u64>,
    pub(crate) members: Vec<Member>,
    pub(crate) transport: Arc<Transport>,
    pub(crate) deadline: Duration,
    /// Index in `members` of the node believed to lead.
    pub(crate) leader: AtomicUsize,
    /// Index in `members` of the node that last served a replica read: any member serves
    /// those, so they start where the last one succeeded, apart from the leader's.
    pub(crate) replica_member: AtomicUsize,
    pub(crate) health: Mutex<Health>,
    pub(crate) breaker: Breaker,
    /// This link, for the breaker's probe task.
    pub(crate) me: Weak<Link>,
}

/// Whether a request may be sent again after it was delivered without an answer (and so
/// whether one whose answer is still awaited may be given up and sent elsewhere).
pub fn retry_is_safe(request: &KvRequest) -> bool {
    matches!(
        request,
        KvRequest::Read { .. }
            | KvRequest::Status
            | KvRequest::ReplicaRead(_)
            | KvRequest::ReplicaStatus
            | KvRequest::FeedRead(_)
            | KvRequest::Lease(
                aspen_api::lease::LeaseRequest::KeepAlive { .. }
                    | aspen_api::lease::LeaseRequest::Get { .. }
            )
    )
}

/// Whether a replica read refused with `code` may succeed on another member: a refusal
/// about that member's replica or its health, not about the request itself.
fn member_specific(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ReplicaBehind
            | ErrorCode::ReplicaUnavailable
            | ErrorCode::ClusterUnavailable
            | ErrorCode::NoLeader
            | ErrorCode::Overloaded
            | ErrorCode::Timeout
            | ErrorCode::Internal
    )
}

/// How much a replica read's refusal says about the replicas (higher says more): one that
/// is behind says a replica exists and is catching up, so waiting briefly may help.
pub fn refusal_rank(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::ReplicaBehind => 3,
        ErrorCode::ReplicaUnavailable => 2,
        ErrorCode::ClusterUnavailable => 0,
        _ => 1,
    }
}

impl Link {
    pub(crate) fn unavailable(&self, why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            ErrorCode::ClusterUnavailable,
            format!("cluster {} is unavailable: {why}", self.name),
        )
    }

    /// A member's own client asked with no other member to send to.
    fn no_members(&self) -> ApiError {
        self.unavailable("it has no other member to send to")
    }

    /// Whether a `NotLeader` answer names this client's owner as the leader.
    fn names_owner(&self, leader: Option<u64>) -> bool {
        leader.is_some() && leader == self.owner
    }

    pub(crate) fn index_of(&self, node_id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.node_id == node_id)
    }

    fn lost_outcome(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            ErrorCode::Timeout,
            format!(
                "cluster {}: {e}; the write may or may not have been applied",
                self.name
            ),
        )
    }

    fn malformed(&self, node_id: u64, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            ErrorCode::Internal,
            format!(
                "node {node_id} of cluster {} sent a malformed answer: {e}",
                self.name
            ),
        )
    }

    fn answered_by(&self, target: usize, request_status: bool) {
        if !request_status {
            self.leader.store(target, Ordering::Relaxed);
            self.health.lock().expect("health lock").leader = Some(self.members[target].node_id);
        }
    }

    /// The refusal of a request while the breaker is open.
    pub(crate) fn refused(&self) -> Option<ApiError> {
        let who = if self.owner.is_some() {
            "this node"
        } else {
            "the router"
        };
        self.breaker.refusal(who).map(|why| self.unavailable(why))
    }

    /// Opens the breaker after a request found no leader, starting its one probe.
    fn trip(&self, why: &str) {
        if !self.breaker.trip(why) {
            return;
        }
        let link = self.me.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                // The client was dropped (its router stopped or a reload removed the cluster, or a
                // node rebuilt its client for a new membership).
                let Some(link) = link.upgrade() else { return };
                // Closed meanwhile by a member that heard from its leader (`follow`): a
                // later trip starts a probe of its own.
                if !link.breaker.is_open() {
                    return;
                }
                if link.probe().await {
                    link.breaker.reset();
                    return;
                }
            }
        });
    }

    /// Asks every member for its status at once; true if one names a leader (which then
    /// becomes the node requests go to first).
    async fn probe(&self) -> bool {
        let payload = match wire::encode(&KvRequest::Status) {
            Ok(payload) => payload,
            Err(_) => return false,
        };
        let deadline = Instant::now() + PROBE_DEADLINE;
        let asks = self
            .members
            .iter()
            .map(|m| self.exchange(m, &payload, deadline));
        let leader = join_all(asks).await.into_iter().find_map(|answer| {
            match wire::decode::<KvResponse>(&answer.ok()?).ok()? {
                KvResponse::Status(status) => status.leader,
                _ => None,
            }
        });
        let Some(leader) = leader else {
            return false;
        };
        if let Some(i) = self.index_of(leader) {
            self.leader.store(i, Ordering::Relaxed);
        }
        true
    }

    /// One request/response exchange with `member`, bounded by `deadline`.
    async fn exchange(
        &self,
        member: &Member,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, TransportError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.transport
            .request(
                &member.peer,
                KV_ALPN,
                payload,
                MAX_WIRE_MESSAGE_BYTES,
                remaining,
            )
            .await
    }

    /// Sends `request` to the leader (or, for `Status`, any node), following `NotLeader`
    /// answers and moving past unreachable nodes until `deadline`.
    pub(crate) async fn send(
        &self,
        request: &KvRequest,
        deadline: Instant,
    ) -> Result<KvResponse, ApiError> {
        let payload = wire::encode(request).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let count = self.members.len();
        if count == 0 {
            return Err(self.no_members());
        }
        let mut target = self.leader.load(Ordering::Relaxed) % count;
        let mut tried_since_pause = 0;
        let mut last_problem = "no member was tried".to_string();
        loop {
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT_TIME {
                return Err(self.no_leader_in_time(&last_problem));
            }
            let member = &self.members[target];
            let sent = self.exchange(member, &payload, deadline).await;
            let mut next = (target + 1) % count;
            match sent {
                Ok(bytes) => match wire::decode::<KvResponse>(&bytes) {
                    Ok(KvResponse::NotLeader { leader }) if self.names_owner(leader) => {
                        return Ok(KvResponse::NotLeader { leader });
                    }
                    Ok(KvResponse::NotLeader { leader }) => {
                        last_problem = format!("node {} is not the leader", member.node_id);
                        let named = leader.and_then(|id| self.index_of(id));
                        if let Some(i) = named.filter(|i| *i != target) {
                            // Follow the named leader at once, without counting a miss.
                            self.leader.store(i, Ordering::Relaxed);
                            target = i;
                            continue;
                        }
                    }
                    Ok(answer) => {
                        self.answered_by(target, matches!(request, KvRequest::Status));
                        return Ok(answer);
                    }
                    Err(e) => return Err(self.malformed(member.node_id, e)),
                },
                Err(e @ TransportError::Unreachable { .. }) => {
                    last_problem = format!("node {}: {e}", member.node_id);
                }
                Err(e @ TransportError::Failed { .. }) => {
                    if !retry_is_safe(request) {
                        return Err(self.lost_outcome(e));
                    }
                    last_problem = format!("node {}: {e}", member.node_id);
                }
            }
            tried_since_pause += 1;
            if tried_since_pause >= count {
                tried_since_pause = 0;
                if Instant::now() + RETRY_BACKOFF >= deadline {
                    return Err(self.no_leader_in_time(&last_problem));
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
                next = self.leader.load(Ordering::Relaxed) % count;
            }
            target = next;
        }
    }

    /// Serves a replica read from the first member whose replica can: every member keeps
    /// its own replica, at its own revision, so one that refuses (behind the revision the
    /// router already returned, staler than `max_lag`, still bootstrapping) or cannot be
    /// reached gives way to the next, starting with the one that served last (or the one
    /// after a member that could not be reached). Each member
    /// is asked once, within `deadline`. The refusal returned is the most telling one:
    /// `replica_behind` over `replica_unavailable` over an unreachable member. A request
    /// every member would refuse alike (malformed) is returned at once. Leadership and the
    /// breaker play no part: followers serve replica reads, with or without a leader.
    pub(crate) async fn replica_read(
        &self,
        request: ReplicaReadRequest,
        deadline: Instant,
    ) -> Result<ReplicaReadResponse, ApiError> {
        let payload = wire::encode(&KvRequest::ReplicaRead(request))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let count = self.members.len();
        if count == 0 {
            return Err(self.no_members());
        }
        let start = self.replica_member.load(Ordering::Relaxed) % count;
        let mut refusal: Option<ApiError> = None;
        for i in (0..count).map(|k| (start + k) % count) {
            if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT_TIME {
                break;
            }
            let member = &self.members[i];
            let problem = match self.exchange(member, &payload, deadline).await {
                Ok(bytes) => match wire::decode::<KvResponse>(&bytes) {
                    Ok(KvResponse::ReplicaRead(answer)) => {
                        self.replica_member.store(i, Ordering::Relaxed);
                        return Ok(answer);
                    }
                    Ok(KvResponse::Error(e)) if !member_specific(e.code) => return Err(e),
                    Ok(KvResponse::Error(e)) => e,
                    Ok(other) => ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "node {} of cluster {} answered a replica read with {other:?}",
                            member.node_id, self.name
                        ),
                    ),
                    Err(e) => self.malformed(member.node_id, e),
                },
                Err(e) => {
                    // Start the next read past a member that cannot be reached.
                    let _ = self.replica_member.compare_exchange(
                        i,
                        (i + 1) % count,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    self.unavailable(format!("node {}: {e}", member.node_id))
                }
            };
            if refusal
                .as_ref()
                .is_none_or(|r| refusal_rank(problem.code) > refusal_rank(r.code))
            {
                refusal = Some(problem);
            }
        }
        Err(refusal.unwrap_or_else(|| {
            self.unavailable(format!(
                "no member could be asked a replica read within {:?}",
                self.deadline
            ))
        }))
    }

    /// The deadline passed with no leader answering: trips the breaker, and says so.
    fn no_leader_in_time(&self, last_problem: &str) -> ApiError {
        self.trip(last_problem);
        self.unavailable(format!(
            "no leader answered within {:?} ({last_problem}); nothing was applied",
            self.deadline
        ))
    }

    /// Sends writes and reads that queued up together as one `Batch` message to the
    /// believed leader, and answers each in order. Whatever the batch could not settle (a
    /// `NotLeader` item, a read left out of an oversized answer, a node that could not be
    /// reached, a batch the node refused) goes again on its own through [`Link::send`],
    /// before the same deadline; a write whose batch was delivered but not answered is
    /// reported as an unknown outcome, never resent.
    pub(crate) async fn send_batch(
        &self,
        requests: Vec<KvRequest>,
    ) -> Vec<Result<KvResponse, ApiError>> {
        let deadline = Instant::now() + self.deadline;
        if requests.len() == 1 {
            return vec![self.send(&requests[0], deadline).await];
        }
        if self.members.is_empty() {
            return requests.iter().map(|_| Err(self.no_members())).collect();
        }
        let count = requests.len();
        let batch = KvRequest::Batch(requests);
        let payload = wire::encode(&batch);
        let KvRequest::Batch(requests) = batch else {
            unreachable!("built as a batch just above")
        };
        let payload = match payload {
            Ok(payload) => payload,
            // Too large as one message: each on its own.
            Err(_) => return self.send_each(&requests, deadline).await,
        };
        let target = self.leader.load(Ordering::Relaxed) % self.members.len();
        let member = &self.members[target];
        let sent = self.exchange(member, &payload, deadline).await;
        let answers = match sent {
            Ok(bytes) => match wire::decode::<KvResponse>(&bytes) {
                Ok(KvResponse::Batch(answers)) if answers.len() == count => answers,
                // Served, but the answer could not be sent (nodes leave reads out of an
                // oversized batch answer instead, so this is only a safety net): writes
                // may have been applied and are never sent again.
                Ok(KvResponse::Error(e)) if e.code == ErrorCode::TooLarge => {
                    return self.resend_reads(&requests, &e.message, deadline).await
                }
                Ok(KvResponse::Batch(answers)) => {
                    let why = format!(
                        "node {} answered {} items for a batch of {count}",
                        member.node_id,
                        answers.len()
                    );
                    return self.resend_reads(&requests, why, deadline).await;
                }
                // Refused as a whole (or not understood): nothing in it was served.
                Ok(_) => return self.send_each(&requests, deadline).await,
                // Delivered, so its writes may have been applied: never sent again.
                Err(e) => {
                    let e = self.malformed(member.node_id, e);
                    return self.resend_reads(&requests, e.message, deadline).await;
                }
            },
            Err(TransportError::Unreachable { .. }) => {
                return self.send_each(&requests, deadline).await
            }
            Err(e @ TransportError::Failed { .. }) => {
                return self.resend_reads(&requests, &e, deadline).await
            }
        };
        if answers
            .iter()
            .any(|a| !matches!(a, KvResponse::NotLeader { .. }))
        {
            self.answered_by(target, false);
        }
        let settled = requests.iter().zip(answers).map(|(request, answer)| async {
            match answer {
                KvResponse::NotLeader { leader } if self.names_owner(leader) => {
                    Ok(KvResponse::NotLeader { leader })
                }
                KvResponse::NotLeader { .. } => self.send(request, deadline).await,
                // A read whose result did not fit in the batch's answer: alone, it fits.
                answer if retry_is_safe(request) && wire::is_read_left_out_of_batch(&answer) => {
                    self.send(request, deadline).await
                }
                answer => Ok(answer),
            }
        });
        join_all(settled).await
    }

    /// After a batch was delivered but its answer lost: each read goes again on its own,
    /// and each write is reported as an unknown outcome (it may have been applied).
    async fn resend_reads(
        &self,
        requests: &[KvRequest],
        why: impl std::fmt::Display,
        deadline: Instant,
    ) -> Vec<Result<KvResponse, ApiError>> {
        let why = why.to_string();
        let again = requests.iter().map(|r| async {
            if retry_is_safe(r) {
                self.send(r, deadline).await
            } else {
                Err(self.lost_outcome(&why))
            }
        });
        join_all(again).await
    }

    async fn send_each(
        &self,
        requests: &[KvRequest],
        deadline: Instant,
    ) -> Vec<Result<KvResponse, ApiError>> {
        join_all(requests.iter().map(|r| self.send(r, deadline))).await
    }
}
