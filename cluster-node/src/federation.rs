//! The node's side of federation (the `aspen-federation` crate): its change feed and
//! leadership as a [`FeedSource`], the federation setup read from the node's config, and
//! the access rules that keep docs sync, docs push and blobs to the endpoints the config names.

use aspen_api::feed::{ChangeSet, Compacted};
use aspen_api::KvEntry;
use aspen_config::NodeConfig;
use aspen_federation::secret::FederationSecret;
use aspen_federation::source::BoxFuture;
use aspen_federation::{FederationSetup, FeedSource, ImportSetup};
use iroh::{EndpointAddr, EndpointId, TransportAddr};
use openraft::ServerState;
use tokio::sync::watch;

use crate::node::NodeError;
use crate::raft_types::AspenRaft;
use crate::storage::StateMachine;
use crate::transport::Access;

/// The node's feed and leadership, for the exporter.
pub struct NodeFeed {
    /// This node's Raft id.
    pub node_id: u64,
    /// The Raft handle.
    pub raft: AspenRaft,
    /// The state machine.
    pub sm: StateMachine,
}

impl FeedSource for NodeFeed {
    fn watch_revision(&self) -> watch::Receiver<u64> {
        self.sm.watch_revision()
    }

    fn changes_after(
        &self,
        after: u64,
        max_sets: usize,
        max_bytes: usize,
    ) -> Result<Result<Vec<ChangeSet>, Compacted>, String> {
        self.sm
            .read(|r| r.changes_after(after, max_sets, max_bytes))
            .and_then(|r| r)
            .map_err(|e| e.to_string())
    }

    fn scan_all(
        &self,
        page_entries: usize,
        page: &mut dyn FnMut(Vec<KvEntry>) -> Result<(), String>,
    ) -> Result<(u64, u64), String> {
        self.sm
            .read(|r| r.scan_all(page_entries, page))
            .and_then(|r| r)
            .map_err(|e| e.to_string())?
    }

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    fn confirm_head(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move {
            self.raft
                .ensure_linearizable()
                .await
                .map_err(|e| e.to_string())?;
            Ok(self.sm.revision())
        })
    }
}

fn endpoint_id(field: &str, hex: &str) -> Result<EndpointId, NodeError> {
    hex.parse()
        .map_err(|e| NodeError::Config(format!("federation {field}: {e}")))
}

/// The federation setup the node's config describes, if it has a `[federation]` table:
/// the secret read, the ids parsed, the other members of the cluster to sync with.
pub fn setup(config: &NodeConfig) -> Result<Option<FederationSetup>, NodeError> {
    let Some(federation) = &config.federation else {
        return Ok(None);
    };
    let secret = match &federation.secret_file {
        Some(path) => {
            Some(FederationSecret::load(path).map_err(|e| NodeError::Config(e.to_string()))?)
        }
        None => None,
    };
    let cluster_peers = config
        .peers
        .iter()
        .map(|p| {
            Ok(EndpointAddr::new(endpoint_id("peer", &p.endpoint_id)?)
                .with_addrs(p.addrs.iter().map(|a| TransportAddr::Ip(*a))))
        })
        .collect::<Result<Vec<_>, NodeError>>()?;
    let mut imports = Vec::new();
    for import in &federation.import {
        let parse = |what: &str, hex: &str| {
            NodeError::Config(format!(
                "federation import of {}: {what} {hex:?} is not a valid id",
                import.cluster
            ))
        };
        let nodes = import
            .nodes
            .iter()
            .map(|n| {
                Ok(
                    EndpointAddr::new(endpoint_id("import node", &n.endpoint_id)?)
                        .with_addrs(n.addrs.iter().map(|a| TransportAddr::Ip(*a))),
                )
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        imports.push(ImportSetup {
            cluster: import.cluster.clone(),
            region: import.region.clone(),
            namespace: import
                .namespace
                .parse()
                .map_err(|_| parse("namespace", &import.namespace))?,
            author: import
                .author
                .parse()
                .map_err(|_| parse("author", &import.author))?,
            nodes,
        });
    }
    Ok(Some(FederationSetup {
        cluster: config.cluster.clone(),
        region: federation.region.clone(),
        data_dir: config.data_dir.clone(),
        secret,
        cluster_peers,
        imports,
        checkpoint_replay_bytes: federation.checkpoint_replay_bytes,
        segment_slots: federation.segment_slots,
    }))
}

/// Restricts the docs sync, docs push and blob protocols to the endpoints the federation config
/// names (readers of this cluster, nodes of imported clusters) and to this cluster's own
/// members (configured peers and the current membership), which hold the same document.
pub fn restrict(access: &Access, config: &NodeConfig, raft: AspenRaft) -> Result<(), NodeError> {
    let mut named = crate::admission::peer_ids(config)?;
    if let Some(federation) = &config.federation {
        for export in &federation.export {
            for reader in &export.readers {
                named.insert(endpoint_id("reader", reader)?);
            }
        }
        for import in &federation.import {
            for node in &import.nodes {
                named.insert(endpoint_id("import node", &node.endpoint_id)?);
            }
        }
    }
    let rule = crate::admission::members_or(named, raft);
    for alpn in aspen_federation::stack::ALPNS {
        access.restrict(alpn, rule.clone());
    }
    Ok(())
}
