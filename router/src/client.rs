//! [`ClusterClient`]: the router's connection to one cluster over iroh `aspen/kv/1`.
//!
//! A node answers `aspen/kv/1` requests itself and never forwards them (one hop at most),
//! so the client finds the leader: it sends to the node it last saw lead, follows a
//! `NotLeader` answer to the leader that node names, and moves on to the next node when
//! one is unreachable, pausing briefly after each full pass, until the request deadline.
//! Connections are kept and reused per node (the shared [`Transport`]).
//!
//! Retries never change an outcome: a request is retried only when it certainly did not
//! take effect (it was refused as not-leader, or never delivered) or when it is a read. A
//! write that was delivered but got no answer may or may not have been applied and is
//! reported as 504 `timeout`, as a node does.
//!
//! Admission is bounded per cluster: at most `max_in_flight` requests run at once and as
//! many again may wait; beyond that a request is refused at once with 503, so a slow or
//! dead cluster holds a bounded share of the router and every other cluster keeps its speed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::admin::NodeStatus;
use aspen_api::wire::{self, KvRequest, KvResponse, KV_ALPN, MAX_WIRE_MESSAGE_BYTES};
use aspen_api::{ApiError, ErrorCode};
use aspen_config::ClusterConfig;
use aspen_net::{PeerAddr, Transport, TransportError};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Pause after every node of a cluster was tried without finding the leader (an election
/// is under way, or the cluster is down).
pub const RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// One member as the router knows it.
#[derive(Debug, Clone)]
struct Member {
    node_id: u64,
    peer: PeerAddr,
}

/// What the router last learned about a cluster, for `/v1/status`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The node that last answered as leader, if any.
    pub leader: Option<u64>,
    /// When a request last succeeded.
    pub last_ok: Option<std::time::Instant>,
    /// The last failure, if it came after the last success.
    pub last_error: Option<String>,
}

/// The router's client of one cluster.
#[derive(Debug)]
pub struct ClusterClient {
    name: String,
    members: Vec<Member>,
    transport: Arc<Transport>,
    deadline: Duration,
    /// Index in `members` of the node believed to lead.
    leader: AtomicUsize,
    running: Semaphore,
    waiting: AtomicUsize,
    /// At most this many requests run at once, and as many again may wait.
    limit: usize,
    health: Mutex<Health>,
}

/// Decrements the waiting count when a waiter leaves, however it leaves.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClusterClient {
    /// A client of `cluster` over `transport`, giving each request `deadline` and running
    /// at most `max_in_flight` at once (and letting as many wait).
    pub fn new(
        cluster: &ClusterConfig,
        transport: Arc<Transport>,
        deadline: Duration,
        max_in_flight: usize,
    ) -> Result<ClusterClient, String> {
        let members = cluster
            .nodes
            .iter()
            .map(|n| {
                let id = n.endpoint_id.parse().map_err(|e| {
                    format!(
                        "cluster {} node {}: bad endpoint id: {e}",
                        cluster.name, n.node_id
                    )
                })?;
                Ok(Member {
                    node_id: n.node_id,
                    peer: PeerAddr {
                        id,
                        addrs: n.addrs.to_vec(),
                    },
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ClusterClient {
            name: cluster.name.clone(),
            members,
            transport,
            deadline,
            leader: AtomicUsize::new(0),
            running: Semaphore::new(max_in_flight),
            waiting: AtomicUsize::new(0),
            limit: max_in_flight,
            health: Mutex::new(Health::default()),
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests running and waiting for a slot right now.
    pub fn load(&self) -> (usize, usize) {
        let running = self.limit - self.running.available_permits();
        (running, self.waiting.load(Ordering::Acquire))
    }

    /// What the router last learned about the cluster.
    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            ErrorCode::ClusterUnavailable,
            format!("cluster {} is unavailable: {why}", self.name),
        )
    }

    /// Sends `request` to the cluster's leader (or, for `Status`, any node) and returns
    /// its answer; `NotLeader` answers are followed, never returned.
    pub async fn call(&self, request: &KvRequest) -> Result<KvResponse, ApiError> {
        let result = self.call_admitted(request).await;
        let mut health = self.health.lock().expect("health lock");
        match &result {
            Ok(_) => {
                health.last_ok = Some(std::time::Instant::now());
                health.last_error = None;
            }
            Err(e) if e.code == ErrorCode::ClusterUnavailable || e.code == ErrorCode::Timeout => {
                health.last_error = Some(e.message.clone());
            }
            Err(_) => {}
        }
        result
    }

    async fn call_admitted(&self, request: &KvRequest) -> Result<KvResponse, ApiError> {
        let _running = match self.running.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.unavailable(format!(
                        "{0} requests are running and {0} more are waiting \
                         (max_in_flight_per_cluster = {0}); nothing was applied, retry later",
                        self.limit
                    )));
                }
                let _waiting = Waiting(&self.waiting);
                tokio::time::timeout(self.deadline, self.running.acquire())
                    .await
                    .map_err(|_| {
                        self.unavailable(format!(
                            "no request slot freed within {:?}; nothing was applied",
                            self.deadline
                        ))
                    })?
                    .expect("the semaphore is never closed")
            }
        };
        let payload = wire::encode(request).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let deadline = Instant::now() + self.deadline;
        let count = self.members.len();
        let mut target = self.leader.load(Ordering::Relaxed) % count;
        let mut tried_since_pause = 0;
        let mut last_problem;
        loop {
            let member = &self.members[target];
            let remaining = deadline.saturating_duration_since(Instant::now());
            let sent = self
                .transport
                .request(
                    &member.peer,
                    KV_ALPN,
                    &payload,
                    MAX_WIRE_MESSAGE_BYTES,
                    remaining,
                )
                .await;
            let mut next = (target + 1) % count;
            match sent {
                Ok(bytes) => match wire::decode::<KvResponse>(&bytes) {
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
                        if !matches!(request, KvRequest::Status) {
                            self.leader.store(target, Ordering::Relaxed);
                            self.health.lock().expect("health lock").leader = Some(member.node_id);
                        }
                        return Ok(answer);
                    }
                    Err(e) => {
                        return Err(ApiError::new(
                            ErrorCode::Internal,
                            format!(
                                "node {} of cluster {} sent a malformed answer: {e}",
                                member.node_id, self.name
                            ),
                        ))
                    }
                },
                Err(e @ TransportError::Unreachable { .. }) => {
                    last_problem = format!("node {}: {e}", member.node_id);
                }
                Err(e @ TransportError::Failed { .. }) => {
                    if !retry_is_safe(request) {
                        return Err(ApiError::new(
                            ErrorCode::Timeout,
                            format!(
                                "cluster {}: {e}; the write may or may not have been applied",
                                self.name
                            ),
                        ));
                    }
                    last_problem = format!("node {}: {e}", member.node_id);
                }
            }
            tried_since_pause += 1;
            if tried_since_pause >= count {
                tried_since_pause = 0;
                if Instant::now() + RETRY_BACKOFF >= deadline {
                    return Err(self.unavailable(format!(
                        "no leader answered within {:?} ({last_problem}); nothing was applied",
                        self.deadline
                    )));
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
                next = self.leader.load(Ordering::Relaxed) % count;
            }
            target = next;
        }
    }

    fn index_of(&self, node_id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.node_id == node_id)
    }

    /// Asks any node of the cluster for its status.
    pub async fn status(&self) -> Result<NodeStatus, ApiError> {
        match self.call(&KvRequest::Status).await? {
            KvResponse::Status(status) => {
                if let Some(leader) = status.leader {
                    if let Some(i) = self.index_of(leader) {
                        self.leader.store(i, Ordering::Relaxed);
                    }
                    self.health.lock().expect("health lock").leader = Some(leader);
                }
                Ok(status)
            }
            KvResponse::Error(e) => Err(e),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "cluster {} answered a status request with {other:?}",
                    self.name
                ),
            )),
        }
    }
}

/// Whether a request may be sent again after it was delivered without an answer.
fn retry_is_safe(request: &KvRequest) -> bool {
    matches!(request, KvRequest::Read { .. } | KvRequest::Status)
}
