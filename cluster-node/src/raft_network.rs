//! Raft RPCs over iroh: the `aspen/raft/2` protocol.
//!
//! Goals: carry openraft's RPCs (AppendEntries, Vote) between members, one RPC per QUIC
//! stream, and whole snapshots on a protocol of their own ([`snapshot`],
//! `aspen/snapshot/1`); accept them only from cluster members and configured peers,
//! identified by their iroh EndpointId.
//!
//! Non-goals: batching RPCs to different peers, compression.
//!
//! The messages and their versioned encoding are in `raft_network/message.rs`; the
//! requesting side is [`NetworkFactory`] (openraft's `RaftNetworkFactory`); the serving
//! side is [`RaftProtocol`], an iroh `ProtocolHandler`, and [`SnapshotProtocol`] beside it.

use std::collections::HashSet;
use std::sync::Arc;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::EndpointId;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};

use crate::leader_contact::LeaderContact;
use crate::raft_types::{AspenRaft, MemberNode, NodeId, TypeConfig};
use crate::stages::{Stage, Stages};
use crate::transport::{
    serve_streams_until_closed, ReadBudget, Transport, TransportError, CLOSE_NOT_ALLOWED,
};
pub use message::MAX_RAFT_MESSAGE_BYTES;
use message::{decode, encode, RaftAnswer, RaftRequest};
pub use snapshot::{SnapshotProtocol, SNAPSHOT_ALPN};

/// The messages and their decoding, public for the fuzz targets (`aspen-fuzz`) only.
#[doc(hidden)]
pub mod message;
pub mod snapshot;

/// ALPN of the Raft protocol, version 2: each message framed with its length first.
pub const RAFT_ALPN: &[u8] = b"aspen/raft/2";

/// Builds a [`NetworkClient`] per target for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Arc<Transport>,
    stages: Stages,
}

impl NetworkFactory {
    /// A factory sending over `transport`, timing AppendEntries round trips into `stages`.
    pub fn new(transport: Arc<Transport>, stages: Stages) -> Self {
        NetworkFactory { transport, stages }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> NetworkClient {
        // Parsed once per client, not per RPC: turning hex into an EndpointId decompresses
        // a curve point, which showed in profiles of the ReadIndex heartbeat traffic.
        let endpoint = node
            .endpoint_id
            .parse::<EndpointId>()
            .map_err(|e| format!("member {target} has an invalid endpoint id: {e}"));
        NetworkClient {
            target,
            node: node.clone(),
            endpoint,
            transport: self.transport.clone(),
            stages: self.stages.clone(),
        }
    }
}

/// Sends Raft RPCs to one member.
pub struct NetworkClient {
    target: NodeId,
    node: MemberNode,
    endpoint: Result<EndpointId, String>,
    transport: Arc<Transport>,
    stages: Stages,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, MemberNode, RaftError<NodeId, E>>;

impl NetworkClient {
    async fn call<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftAnswer, RpcErr<E>> {
        let id = *self.endpoint.as_ref().map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone())))
        })?;
        let peer = self.transport.resolve(id, &self.node.addrs);
        let answer = self
            .transport
            .request(
                &peer,
                RAFT_ALPN,
                &encode(&request),
                MAX_RAFT_MESSAGE_BYTES,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        let answer: RaftAnswer =
            decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let RaftAnswer::Refused(reason) = answer {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(reason),
            )));
        }
        Ok(answer)
    }
}

fn unexpected<E: std::error::Error>() -> RpcErr<E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "answer of the wrong kind",
    )))
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let carries_entries = !rpc.entries.is_empty();
        let started = std::time::Instant::now();
        let answer = self.call(RaftRequest::AppendEntries(rpc), &option).await;
        if carries_entries {
            self.stages.observe(Stage::AppendEntries, started.elapsed());
        }
        match answer? {
            RaftAnswer::AppendEntries(r) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            _ => Err(unexpected()),
        }
    }

    /// Never called: snapshots go whole through [`Self::full_snapshot`], not in chunks.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        Err(RPCError::Network(NetworkError::new(
            &std::io::Error::other(
                "snapshots are not sent in chunks: aspen/snapshot/1 streams them whole",
            ),
        )))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let id = *self.endpoint.as_ref().map_err(|e| {
            StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone())))
        })?;
        let peer = self.transport.resolve(id, &self.node.addrs);
        snapshot::send(
            &self.transport,
            &peer,
            (self.target, &self.node),
            vote,
            snapshot,
            cancel,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftAnswer::Vote(r) => r.map_err(|e| {
                RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))
            }),
            _ => Err(unexpected()),
        }
    }
}

/// Serves `aspen/raft/2` for one Raft node.
#[derive(Clone)]
pub struct RaftProtocol {
    raft: AspenRaft,
    transport: Arc<Transport>,
    /// Endpoint ids from the node's config; members are read from the live membership.
    configured_peers: Arc<HashSet<EndpointId>>,
    /// Updated on every accepted AppendEntries, for stale reads.
    contact: Arc<LeaderContact>,
    /// Request bytes all `aspen/raft/2` streams of this node may hold at once.
    budget: ReadBudget,
    /// Times the AppendEntries it serves (`append_serve`).
    stages: Stages,
}

/// Most request bytes a node holds at once over all its `aspen/raft/2` streams (two
/// largest messages, such as snapshots): past it a request waits, unread, for room.
pub const RAFT_READ_BUDGET_BYTES: usize = 2 * MAX_RAFT_MESSAGE_BYTES;

impl RaftProtocol {
    /// The handler for `raft`, accepting configured peers and current members, timing
    /// the AppendEntries it serves into `stages`.
    pub fn new(
        raft: AspenRaft,
        transport: Arc<Transport>,
        configured_peers: HashSet<EndpointId>,
        contact: Arc<LeaderContact>,
        stages: Stages,
    ) -> Self {
        RaftProtocol {
            raft,
            transport,
            configured_peers: Arc::new(configured_peers),
            contact,
            budget: ReadBudget::new(MAX_RAFT_MESSAGE_BYTES, RAFT_READ_BUDGET_BYTES),
            stages,
        }
    }

    /// The Raft node it serves.
    pub(crate) fn raft(&self) -> &AspenRaft {
        &self.raft
    }

    /// Whether `remote` may send Raft RPCs: a configured peer or a member.
    pub(crate) fn allowed(&self, remote: &EndpointId) -> bool {
        if self.transport.is_blocked(remote) {
            return false;
        }
        self.configured_peers.contains(remote) || crate::admission::is_member(&self.raft, remote)
    }

    async fn handle(&self, remote: EndpointId, bytes: Vec<u8>) -> Vec<u8> {
        if !self.allowed(&remote) {
            return encode(&RaftAnswer::Refused(format!(
                "endpoint {remote} is not a member or configured peer of this cluster"
            )));
        }
        let mut timed = None;
        let answer = match decode::<RaftRequest>(&bytes) {
            Err(e) => RaftAnswer::Refused(format!("malformed Raft request: {e}")),
            Ok(RaftRequest::AppendEntries(r)) => {
                if !r.entries.is_empty() {
                    timed = Some(std::time::Instant::now());
                }
                let leader_commit = r.leader_commit.map_or(0, |l| l.index);
                let answer = self.raft.append_entries(r).await;
                if matches!(
                    answer,
                    Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
                ) {
                    self.contact.record(leader_commit);
                }
                RaftAnswer::AppendEntries(answer)
            }
            Ok(RaftRequest::Vote(r)) => RaftAnswer::Vote(self.raft.vote(r).await),
        };
        let encoded = encode(&answer);
        if let Some(started) = timed {
            self.stages.observe(Stage::AppendServe, started.elapsed());
        }
        encoded
    }
}

impl std::fmt::Debug for RaftProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftProtocol").finish_non_exhaustive()
    }
}

impl ProtocolHandler for RaftProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let remote = connection.remote_id();
        if !self.allowed(&remote) {
            tracing::warn!(%remote, "refused Raft connection from an endpoint that is not a member or configured peer");
            connection.close(CLOSE_NOT_ALLOWED.into(), b"not a member of this cluster");
            return Ok(());
        }
        let this = self.clone();
        serve_streams_until_closed(connection, self.budget.clone(), move |bytes| {
            let this = this.clone();
            async move { this.handle(remote, bytes).await }
        })
        .await;
        Ok(())
    }
}
