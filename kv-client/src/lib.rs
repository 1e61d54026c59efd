//! The one requesting side of `aspen/kv/2` (and of `aspen/value/1`, values kept as
//! blobs): [`ClusterClient`], a client of one cluster. The router keeps one per cluster it
//! routes to; every cluster node keeps one for its own cluster, through which it forwards
//! what it cannot serve itself (a write or linearizable read on a follower) to the leader.
//! Both therefore share one leader search, one retry rule, one batching of requests and one
//! admission bound.
//!
//! A node answers `aspen/kv/2` requests itself and never forwards them (one hop at most),
//! so the client finds the leader: it sends to the node it last saw lead, follows a
//! `NotLeader` answer to the leader that node names, and moves on to the next node when
//! one is unreachable, pausing briefly after each full pass, until the request deadline.
//! A client owned by a member of the cluster ([`ClusterClient::for_member`]) does not
//! list that member and hands a `NotLeader` that names it back to its owner, which then
//! serves the request itself. Connections are kept and reused per node (the shared
//! [`Transport`]). Writes and reads that queue up while earlier ones are on the wire go
//! together as one `Batch` message (a [`Batcher`]): one QUIC stream and one node task
//! carry many requests, each still answered on its own. Scans go alone, so a long one
//! holds up no other request.
//!
//! Retries never change an outcome: a request is retried only when it certainly did not
//! take effect (it was refused as not-leader, or never delivered) or when it is a read. A
//! write that was delivered but got no answer may or may not have been applied and is
//! reported as 504 `timeout`, as a node does.
//!
//! Admission is bounded per cluster: at most `max_in_flight` requests run at once and as
//! many again may wait; beyond that a request is refused at once with 503, so a slow or
//! dead cluster holds a bounded share of its caller and every other cluster keeps its speed.
//!
//! A cluster in which no node answered as leader for a whole deadline has its requests
//! refused at once (503) until a background probe finds a leader again (`breaker`), or,
//! for a member's own client, until its Raft hears from the leader, so a dead cluster
//! costs each request a fast answer, not the deadline.
//!
//! Values kept as blobs (above the inline limit) stream over `aspen/value/1` instead
//! (`value`): to the believed leader, or the next member that can be reached.
//!
//! # Layout
//!
//! - this file: [`ClusterClient`], admission, batching, and what it reports ([`Health`]).
//! - `link`: the path to one cluster's members: leader search, retries, batch sends,
//!   replica reads.
//! - `breaker`: refusing at once while a cluster has no leader, with its probe.
//! - `value`: `aspen/value/1` streams.

mod breaker;
mod link;
mod value;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::wire::{
    FeedReadRequest, FeedReadResponse, KvRequest, KvResponse, ReplicaReadRequest,
    ReplicaReadResponse, StatusReport, MAX_WIRE_BATCH,
};
use aspen_api::{ApiError, ErrorCode, ReadRequest};
use aspen_config::ClusterConfig;
use aspen_net::batcher::{BatchLimits, Batcher};
use aspen_net::{PeerAddr, Transport};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use breaker::{PROBE_DEADLINE, PROBE_INTERVAL};
pub use link::RETRY_BACKOFF;
pub use link::{refusal_rank, retry_is_safe};
use link::{Link, Member};

/// Batch messages on the wire to one cluster at once. While one travels, new requests
/// queue for the next. One gives the largest batches (about 32 requests at 64 clients,
/// against 19 with two), so the fewest QUIC exchanges for the router and the node, and
/// the node's proposer still pipelines its own proposals: routed put went from 0.86x to
/// 0.93x of direct with one instead of two (docs/BENCHMARKS.md).
pub const MAX_BATCHES_IN_FLIGHT: usize = 1;

/// Requests a cluster member forwards to its leader at once through its own client (as
/// many again may wait for a slot; beyond that a forward is refused at once with 503).
/// The same bound as a router's default per cluster (`max_in_flight_per_cluster`): a
/// follower behind a stalled leader holds a bounded number of requests, not one per HTTP
/// stream it accepted.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 256;

/// Most key and value bytes in one batch message: the largest single command, so a batch
/// stays well inside the wire message limit.
pub const MAX_BATCH_BYTES: usize = aspen_api::limits::MAX_COMMAND_VALUE_BYTES;

type Answer = Result<KvResponse, ApiError>;

/// The weight of a request in a batch: its key and value bytes.
fn batch_weight(request: &KvRequest) -> usize {
    match request {
        KvRequest::Write(command) => command.payload_bytes(),
        KvRequest::Read { request, .. } => match request {
            ReadRequest::Get { key } => key.len(),
            ReadRequest::Scan { prefix, .. } => prefix.len(),
        },
        _ => 0,
    }
}

/// What the client last learned about its cluster (a router reports it in `/v1/status`).
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The node that last answered as leader, if any.
    pub leader: Option<u64>,
    /// When a request last succeeded.
    pub last_ok: Option<std::time::Instant>,
    /// The last failure, if it came after the last success.
    pub last_error: Option<String>,
}

/// A client of one cluster: a router's, or a member's own for forwarding.
pub struct ClusterClient {
    link: Arc<Link>,
    batcher: Batcher<KvRequest, Answer>,
    running: Semaphore,
    waiting: AtomicUsize,
    /// At most this many requests run at once, and as many again may wait.
    limit: usize,
    /// The setting (or constant) `limit` comes from, named in refusals.
    limit_name: &'static str,
}

/// Who a client serves: its cluster, the member that owns it (none for a router's), and
/// what its admission bound is called.
struct Owner {
    cluster: String,
    member: Option<u64>,
    limit_name: &'static str,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("cluster", &self.link.name)
            .finish_non_exhaustive()
    }
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
    /// at most `max_in_flight` at once (and letting as many wait); the router's. Its
    /// admission refusals name the router setting `max_in_flight_per_cluster`.
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
                Ok((
                    n.node_id,
                    PeerAddr {
                        id,
                        addrs: n.addrs.to_vec(),
                    },
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ClusterClient::start(
            Owner {
                cluster: cluster.name.clone(),
                member: None,
                limit_name: "max_in_flight_per_cluster",
            },
            members,
            transport,
            deadline,
            max_in_flight,
        ))
    }

    /// The client a member of the cluster (`owner`) forwards through: `members` are the
    /// other members. A `NotLeader` answer naming `owner` is returned to it (it leads now,
    /// and serves the request itself), never followed. Its admission refusals name
    /// `limit_name`, the owner's bound on `max_in_flight`.
    pub fn for_member(
        cluster: &str,
        owner: u64,
        members: Vec<(u64, PeerAddr)>,
        transport: Arc<Transport>,
        deadline: Duration,
        max_in_flight: usize,
        limit_name: &'static str,
    ) -> ClusterClient {
        let members = members.into_iter().filter(|(id, _)| *id != owner).collect();
        ClusterClient::start(
            Owner {
                cluster: cluster.to_string(),
                member: Some(owner),
                limit_name,
            },
            members,
            transport,
            deadline,
            max_in_flight,
        )
    }

    fn start(
        owner: Owner,
        members: Vec<(u64, PeerAddr)>,
        transport: Arc<Transport>,
        deadline: Duration,
        max_in_flight: usize,
    ) -> ClusterClient {
        let members = members
            .into_iter()
            .map(|(node_id, peer)| Member { node_id, peer })
            .collect();
        let link = Arc::new_cyclic(|me| Link {
            name: owner.cluster,
            owner: owner.member,
            members,
            transport,
            deadline,
            leader: AtomicUsize::new(0),
            replica_member: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
            breaker: Default::default(),
            me: me.clone(),
        });
        let limits = BatchLimits {
            max_items: MAX_WIRE_BATCH,
            max_weight: MAX_BATCH_BYTES,
            max_in_flight: MAX_BATCHES_IN_FLIGHT,
            max_queued: 2 * max_in_flight,
        };
        let sender = link.clone();
        let batcher = Batcher::start(limits, batch_weight, move |requests| {
            let link = sender.clone();
            async move { link.send_batch(requests).await }
        });
        ClusterClient {
            link,
            batcher,
            running: Semaphore::new(max_in_flight),
            waiting: AtomicUsize::new(0),
            limit: max_in_flight,
            limit_name: owner.limit_name,
        }
    }

    /// The members this client sends to, by node id (for a member's own client, every
    /// member but its owner).
    pub fn member_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.link.members.iter().map(|m| m.node_id)
    }

    /// Sends the next requests to `leader` first (a member's own client learns the leader
    /// from Raft before any answer names it). With `heard`, the member's Raft has just
    /// taken entries from that leader, so it is up and reaching this member: an open
    /// breaker closes at once, rather than up to a probe interval later (after a partition
    /// heals, a follower would otherwise refuse forwarded requests with 503 meanwhile).
    pub fn follow(&self, leader: u64, heard: bool) {
        if let Some(i) = self.link.index_of(leader) {
            self.link.leader.store(i, Ordering::Relaxed);
            if heard {
                self.link.breaker.reset();
            }
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.link.name
    }

    /// Requests running and waiting for a slot right now.
    pub fn load(&self) -> (usize, usize) {
        let running = self.limit - self.running.available_permits();
        (running, self.waiting.load(Ordering::Acquire))
    }

    /// Whether the cluster's breaker is open (its requests are refused at once), and how
    /// many requests it has refused since the client started.
    pub fn breaker(&self) -> (bool, u64) {
        (self.link.breaker.is_open(), self.link.breaker.refused())
    }

    /// What the client last learned about the cluster.
    pub fn health(&self) -> Health {
        self.link.health.lock().expect("health lock").clone()
    }

    /// Streams a value above the inline limit to a node of the cluster, which stores it
    /// as a blob and writes the key (see `value`).
    pub async fn put_blob(
        &self,
        put: aspen_api::server::BlobPut,
    ) -> Result<aspen_api::WriteResult, ApiError> {
        self.link.put_blob(put).await
    }

    /// Streams `len` bytes of `blob` from byte `start` from a node of the cluster.
    pub async fn read_blob(
        &self,
        blob: aspen_api::BlobRef,
        start: u64,
        len: u64,
    ) -> Result<aspen_api::server::ValueStream, ApiError> {
        self.link.read_blob(blob, start, len).await
    }

    /// Sends `request` to the cluster's leader (or, for `Status`, any node) and returns
    /// its answer; `NotLeader` answers are followed, never returned.
    pub async fn call(&self, request: KvRequest) -> Result<KvResponse, ApiError> {
        let result = self.call_admitted(request).await;
        let mut health = self.link.health.lock().expect("health lock");
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

    /// Serves a stale read from this cluster's replica of another region's cluster, on
    /// the first member whose replica can (see `Link::replica_read`), within `deadline`.
    /// It takes an admission slot like any request, but skips the breaker: a cluster
    /// without a leader still serves replica reads.
    pub async fn replica_read(
        &self,
        request: ReplicaReadRequest,
        deadline: Instant,
    ) -> Result<ReplicaReadResponse, ApiError> {
        let _running = self.admit().await?;
        self.link.replica_read(request, deadline).await
    }

    /// A running slot, waiting for one if all are taken and fewer than as many wait;
    /// refused at once beyond that, or when none frees within the deadline.
    async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match self.running.try_acquire() {
            Ok(permit) => Ok(permit),
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(self.link.unavailable(format!(
                        "{0} requests are running and {0} more are waiting \
                         ({1} = {0}); nothing was applied, retry later",
                        self.limit, self.limit_name
                    )));
                }
                let _waiting = Waiting(&self.waiting);
                let deadline = self.link.deadline;
                let permit = tokio::time::timeout(deadline, self.running.acquire())
                    .await
                    .map_err(|_| {
                        self.link.unavailable(format!(
                            "no request slot freed within {deadline:?}; nothing was applied"
                        ))
                    })?
                    .expect("the semaphore is never closed");
                Ok(permit)
            }
        }
    }

    async fn call_admitted(&self, request: KvRequest) -> Result<KvResponse, ApiError> {
        if let Some(refused) = self.link.refused() {
            return Err(refused);
        }
        let _running = self.admit().await?;
        match request {
            // Scans go alone: one can take far longer and answer far more than a get, and
            // a batch is answered only when its slowest item is done.
            KvRequest::Write(_)
            | KvRequest::Read {
                request: ReadRequest::Get { .. },
                ..
            } => self.batcher.submit(request).await.unwrap_or_else(|_| {
                Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the client of cluster {} stopped with the request in \
                             flight; a write may or may not have been applied",
                        self.link.name
                    ),
                ))
            }),
            _ => {
                self.link
                    .send(&request, Instant::now() + self.link.deadline)
                    .await
            }
        }
    }

    /// Reads the cluster's change feed for a watch. It bypasses admission: a feed read
    /// may wait at the node for up to its `wait_ms`, and must not hold a slot that writes
    /// and reads need. Any member answers; one that cannot be reached is passed over.
    pub async fn feed_read(&self, request: FeedReadRequest) -> Result<FeedReadResponse, ApiError> {
        if let Some(refused) = self.link.refused() {
            return Err(refused);
        }
        let wait = Duration::from_millis(request.wait_ms);
        let deadline = Instant::now() + wait + self.link.deadline;
        match self
            .link
            .send(&KvRequest::FeedRead(request), deadline)
            .await?
        {
            KvResponse::FeedRead(page) => Ok(page),
            KvResponse::Error(e) => Err(e),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "cluster {} answered a feed read with {other:?}",
                    self.link.name
                ),
            )),
        }
    }

    /// Asks any node of the cluster for its status.
    pub async fn status(&self) -> Result<StatusReport, ApiError> {
        match self.call(KvRequest::Status).await? {
            KvResponse::Status(status) => {
                if let Some(leader) = status.leader {
                    if let Some(i) = self.link.index_of(leader) {
                        self.link.leader.store(i, Ordering::Relaxed);
                    }
                    self.link.health.lock().expect("health lock").leader = Some(leader);
                }
                Ok(status)
            }
            KvResponse::Error(e) => Err(e),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "cluster {} answered a status request with {other:?}",
                    self.link.name
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
