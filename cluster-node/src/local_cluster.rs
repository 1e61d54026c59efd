//! Several nodes of one cluster in one process, on loopback: what `aspen dev` runs and
//! what the integration tests start. Each node has its own iroh endpoint, SQLite files
//! under `<data_dir>/node-<id>`, and HTTP listener; nodes can be stopped, restarted on
//! the same addresses, wiped and re-added.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use aspen_config::{NodeConfig, PeerConfig, RaftConfig};
use openraft::ChangeMembers;

use crate::raft_types::MemberNode;

use crate::node::{bind, BoundEndpoint, Node, NodeError};

/// How long a restarted node tries its old iroh port before it moves to a new one.
const REBIND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a resumed cluster may take to elect a leader.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalClusterSpec {
    /// Cluster name.
    pub cluster: String,
    /// Parent of every node's data dir.
    pub data_dir: PathBuf,
    /// Number of nodes (ids 1..=n).
    pub nodes: usize,
    /// HTTP address of node 1 (port 0: any free port). Other nodes take free ports.
    pub first_http: SocketAddr,
    /// Raft timing and snapshot settings for every node.
    pub raft: RaftConfig,
    /// Endpoint ids every node serves `aspen/kv/2` to besides the members (routers,
    /// tools): each node's `kv_clients`.
    pub kv_clients: Vec<String>,
}

/// A running local cluster. Node `i` (1-based) is at index `i - 1`.
pub struct LocalCluster {
    configs: Vec<NodeConfig>,
    /// Every node: id, iroh identity and address (what a router's config lists).
    members: Vec<PeerConfig>,
    nodes: Vec<Option<Node>>,
}

/// The data dir of node `id` under `parent`.
pub fn node_dir(parent: &Path, id: u64) -> PathBuf {
    parent.join(format!("node-{id}"))
}

/// A local cluster whose endpoints are bound but whose nodes have not started: its
/// members' identities and addresses are known, so other clusters' configs (federation)
/// can name them before anything starts.
pub struct BoundCluster {
    configs: Vec<NodeConfig>,
    members: Vec<PeerConfig>,
    endpoints: Vec<BoundEndpoint>,
}

impl BoundCluster {
    /// Every node: id, iroh identity and address.
    pub fn members(&self) -> &[PeerConfig] {
        &self.members
    }

    /// The configs the nodes will start with (peers filled in), to add to before starting.
    pub fn configs_mut(&mut self) -> &mut [NodeConfig] {
        &mut self.configs
    }

    /// Starts every node; initializes the cluster on first start.
    pub async fn start(self) -> Result<LocalCluster, NodeError> {
        let BoundCluster {
            mut configs,
            members: peers,
            endpoints,
        } = self;
        let mut nodes = Vec::new();
        for (config, endpoint) in configs.iter_mut().zip(endpoints) {
            let listener = bind_http(config.http_addr).await?;
            config.http_addr = listener
                .local_addr()
                .map_err(|e| NodeError::Endpoint(e.to_string()))?;
            nodes.push(Some(Node::start(config.clone(), endpoint, listener).await?));
        }
        let cluster = LocalCluster {
            configs,
            members: peers,
            nodes,
        };
        let first = cluster.node(1).expect("node 1 just started");
        if !first
            .raft()
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            first
                .service
                .init(&[])
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        } else {
            cluster.refresh_member_addresses().await?;
        }
        Ok(cluster)
    }
}

impl LocalCluster {
    /// Binds every node's endpoint and writes its config (peers included), without
    /// starting anything.
    pub async fn bind(spec: LocalClusterSpec) -> Result<BoundCluster, NodeError> {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let mut configs = Vec::new();
        let mut endpoints = Vec::new();
        for id in 1..=spec.nodes as u64 {
            let mut config =
                NodeConfig::dev(id, spec.cluster.clone(), node_dir(&spec.data_dir, id));
            config.iroh_bind_addr = loopback;
            config.http_addr = if id == 1 { spec.first_http } else { loopback };
            config.raft = spec.raft.clone();
            config.kv_clients = spec.kv_clients.clone();
            let endpoint = bind(&config).await?;
            config.iroh_bind_addr = endpoint.bound_sockets()[0];
            configs.push(config);
            endpoints.push(endpoint);
        }
        let members: Vec<PeerConfig> = configs
            .iter()
            .zip(&endpoints)
            .map(|(c, e)| PeerConfig {
                node_id: c.node_id,
                endpoint_id: e.id().to_string(),
                addrs: vec![c.iroh_bind_addr],
            })
            .collect();
        for config in &mut configs {
            config.peers = members
                .iter()
                .filter(|p| p.node_id != config.node_id)
                .cloned()
                .collect();
        }
        Ok(BoundCluster {
            configs,
            members,
            endpoints,
        })
    }

    /// Binds and starts every node; initializes the cluster on first start.
    pub async fn start(spec: LocalClusterSpec) -> Result<LocalCluster, NodeError> {
        Self::bind(spec).await?.start().await
    }

    /// After a restart every node listens on new ports: record them in the membership, so
    /// `status` shows where members really are. The identities are unchanged, which is
    /// what makes replacing node records safe.
    async fn refresh_member_addresses(&self) -> Result<(), NodeError> {
        let leader = self
            .wait_for_leader(STARTUP_TIMEOUT)
            .await
            .ok_or_else(|| NodeError::Raft(format!("no leader within {STARTUP_TIMEOUT:?}")))?;
        let raft = self.node(leader).expect("the leader runs").raft().clone();
        let recorded: BTreeMap<u64, MemberNode> = raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let mut moved = BTreeMap::new();
        for id in self.running() {
            let node = self.node(id).expect("running");
            let actual = MemberNode {
                endpoint_id: node.endpoint_id().to_string(),
                addrs: vec![self.config(id).iroh_bind_addr.to_string()],
            };
            match recorded.get(&id) {
                Some(old) if old.endpoint_id == actual.endpoint_id && *old != actual => {
                    moved.insert(id, actual);
                }
                _ => {}
            }
        }
        if !moved.is_empty() {
            raft.change_membership(ChangeMembers::SetNodes(moved), false)
                .await
                .map_err(|e| NodeError::Raft(format!("updating member addresses: {e}")))?;
        }
        Ok(())
    }

    /// Node `id`, if running.
    pub fn node(&self, id: u64) -> Option<&Node> {
        self.nodes.get(id as usize - 1).and_then(Option::as_ref)
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.node(*id).is_some())
            .collect()
    }

    /// The config node `id` runs with.
    pub fn config(&self, id: u64) -> &NodeConfig {
        &self.configs[id as usize - 1]
    }

    /// Every node of the cluster, running or not, as a router's config lists them.
    pub fn members(&self) -> &[PeerConfig] {
        &self.members
    }

    /// HTTP base URL of node `id`.
    pub fn url(&self, id: u64) -> String {
        format!("http://{}", self.config(id).http_addr)
    }

    /// Waits up to `timeout` until a running node leads and every running node agrees.
    pub async fn wait_for_leader(&self, timeout: std::time::Duration) -> Option<u64> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let running = self.running();
            let seen: Vec<Option<u64>> = running
                .iter()
                .filter_map(|id| self.node(*id))
                .map(|n| n.raft().metrics().borrow().current_leader)
                .collect();
            if let Some(Some(first)) = seen.first() {
                if running.contains(first) && seen.iter().all(|l| *l == Some(*first)) {
                    return Some(*first);
                }
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The current leader as seen by any running node.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .flatten()
            .find_map(|n| n.raft().metrics().borrow().current_leader)
    }

    /// Stops node `id` (as a crash would, minus the fsyncs it already did).
    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.shutdown().await;
        }
    }

    /// Starts a stopped node again on its data, on its old addresses when it can.
    ///
    /// A federated node's iroh port may stay bound in this process after it stopped: the
    /// blob downloader of iroh-blobs 0.103 (its connection pool) never lets go of the
    /// endpoint, so its UDP socket lives until the process exits. A new process (a real
    /// restart) binds the port again at once; here the node moves to a new port and every
    /// other running member is told where it went.
    pub async fn restart(&mut self, id: u64) -> Result<(), NodeError> {
        self.stop(id).await;
        let mut config = self.config(id).clone();
        let give_up = tokio::time::Instant::now() + REBIND_TIMEOUT;
        let endpoint = loop {
            match bind(&config).await {
                Ok(endpoint) => break endpoint,
                Err(_) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(_) => {
                    config.iroh_bind_addr = SocketAddr::new(config.iroh_bind_addr.ip(), 0);
                    let endpoint = bind(&config).await?;
                    self.moved(id, endpoint.id(), endpoint.bound_sockets()[0]);
                    config = self.config(id).clone();
                    break endpoint;
                }
            }
        };
        let listener = bind_http(config.http_addr).await?;
        self.nodes[id as usize - 1] = Some(Node::start(config, endpoint, listener).await?);
        Ok(())
    }

    /// Records that node `id` now listens on `addr`, in its config, the member list and
    /// the address books and configs of the other members.
    fn moved(&mut self, id: u64, endpoint_id: iroh::EndpointId, addr: SocketAddr) {
        self.configs[id as usize - 1].iroh_bind_addr = addr;
        for member in self.members.iter_mut().filter(|m| m.node_id == id) {
            member.addrs = vec![addr];
        }
        for config in &mut self.configs {
            for peer in config.peers.iter_mut().filter(|p| p.node_id == id) {
                peer.addrs = vec![addr];
            }
        }
        for other in self.running() {
            if let Some(node) = self.node(other) {
                node.transport().set_addresses(endpoint_id, vec![addr]);
            }
        }
    }

    /// Stops node `id` and deletes its data dir, identity included.
    pub async fn wipe(&mut self, id: u64) -> Result<(), NodeError> {
        self.stop(id).await;
        let dir = self.config(id).data_dir.clone();
        std::fs::remove_dir_all(&dir).map_err(|source| NodeError::DataDir {
            path: dir.display().to_string(),
            source,
        })
    }

    /// Cuts node `id` off from every other node, both ways (fault injection at the iroh
    /// transport: Raft and forwarded requests fail as across a network partition).
    pub fn partition(&self, id: u64) {
        let Some(isolated) = self.node(id) else {
            return;
        };
        let isolated_id = isolated.endpoint_id();
        let others: std::collections::HashSet<_> = self
            .running()
            .into_iter()
            .filter(|other| *other != id)
            .filter_map(|other| self.node(other).map(Node::endpoint_id))
            .collect();
        isolated.transport().set_blocked(others);
        for other in self.running().into_iter().filter(|other| *other != id) {
            if let Some(node) = self.node(other) {
                node.transport().set_blocked([isolated_id].into());
            }
        }
    }

    /// Heals every partition made with [`LocalCluster::partition`].
    pub fn heal(&self) {
        for id in self.running() {
            if let Some(node) = self.node(id) {
                node.transport().set_blocked(Default::default());
            }
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id).await;
        }
    }
}

async fn bind_http(addr: SocketAddr) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Endpoint(format!("binding HTTP on {addr} failed: {e}")))
}
