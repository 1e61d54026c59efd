//! Which endpoints may use a node's restricted iroh protocols. Each rule admits the
//! endpoints its config names plus the cluster's members: those configured as peers and
//! those in the current Raft membership, read at every connection, so a member added
//! later is admitted from its first connection.
//!
//! - `aspen/kv/2` (every key, read and write): members and `kv_clients`, the routers
//!   and tools the operator listed. Everyone else is refused at the handshake and counted
//!   in `aspen_connections_refused{alpn}`.
//! - Blobs (`/iroh-bytes/4`, the node's blob store) and `aspen/blob-hold/1`: members
//!   ([`restrict_blobs`]); with federation, the federation rule below covers iroh-blobs'.
//! - The federation protocols (docs sync, docs push, blobs): see [`crate::federation::restrict`].
//!
//! `aspen/raft/2` stays open at the hook: its handler checks the caller against the
//! configured peers and the membership itself, and answers a stranger with an error.

use std::collections::HashSet;
use std::sync::Arc;

use aspen_config::NodeConfig;
use iroh::EndpointId;

use crate::node::NodeError;
use crate::raft_types::AspenRaft;
use crate::transport::Access;

/// Restricts `aspen/kv/2`, and `aspen/value/1` (values kept as blobs, streamed), to the
/// cluster's members and the config's `kv_clients`.
pub fn restrict_kv(access: &Access, config: &NodeConfig, raft: AspenRaft) -> Result<(), NodeError> {
    let mut named = peer_ids(config)?;
    for (i, hex) in config.kv_clients.iter().enumerate() {
        named.insert(parse_id(&format!("kv_clients[{i}]"), hex)?);
    }
    access.restrict(
        aspen_api::wire::KV_ALPN,
        members_or(named.clone(), raft.clone()),
    );
    access.restrict(aspen_api::value_wire::VALUE_ALPN, members_or(named, raft));
    Ok(())
}

/// Restricts serving the node's blobs to its cluster's members and configured peers. (A
/// federated node restricts them with the federation's ALPNs instead: members, readers and
/// the owner nodes it imports from.)
pub fn restrict_blobs(
    access: &Access,
    config: &NodeConfig,
    raft: AspenRaft,
) -> Result<(), NodeError> {
    access.restrict(aspen_blobs::ALPN, members_or(peer_ids(config)?, raft));
    Ok(())
}

/// The endpoint ids of the config's `[[peers]]`.
pub(crate) fn peer_ids(config: &NodeConfig) -> Result<HashSet<EndpointId>, NodeError> {
    config
        .peers
        .iter()
        .map(|peer| parse_id(&format!("peer {}", peer.node_id), &peer.endpoint_id))
        .collect()
}

/// An endpoint id from its hex form; `what` names it in the error.
pub(crate) fn parse_id(what: &str, hex: &str) -> Result<EndpointId, NodeError> {
    hex.parse()
        .map_err(|e| NodeError::Config(format!("{what}: invalid endpoint id {hex:?}: {e}")))
}

/// A rule admitting `named` and every endpoint in `raft`'s current membership.
pub(crate) fn members_or(named: HashSet<EndpointId>, raft: AspenRaft) -> aspen_net::access::Rule {
    Arc::new(move |remote: &EndpointId| named.contains(remote) || is_member(&raft, remote))
}

/// Whether `remote` is in `raft`'s current membership (voter or learner).
pub(crate) fn is_member(raft: &AspenRaft, remote: &EndpointId) -> bool {
    let text = remote.to_string();
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let member = m
        .membership_config
        .nodes()
        .any(|(_, node)| node.endpoint_id == text);
    member
}
