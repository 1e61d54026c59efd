//! Wiring of one node, in a fixed order: identity and iroh endpoint, SQLite storage,
//! Raft, the KV service, the iroh protocols, and the HTTP API.
//!
//! A node is started from a [`NodeConfig`] with an already bound iroh endpoint
//! ([`bind`]) and an already bound HTTP listener, so tests and `aspen dev` can bind port 0
//! and learn the addresses before any node starts. [`Node::shutdown`] stops everything.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aspen_api::server::auth::{self, Policy, PolicyCell};
use aspen_api::server::ServeOptions;
use aspen_config::{NodeConfig, RelayModeConfig};
use iroh::protocol::Router as ProtocolRouter;
use iroh::{Endpoint, EndpointAddr, EndpointId};
use openraft::SnapshotPolicy;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use aspen_blobs::{BlobStore, GcSettings, Held, Pending};
use aspen_federation::stack::DocsProtection;
use aspen_federation::{Federation, Replicas};

use crate::blob_hold::{hold_on_majority, HoldProtocol, NotOnMajority, BLOB_HOLD_ALPN};
use crate::blob_values::BlobValues;
use crate::federation::{self, NodeFeed};
use crate::http::{self, NodeBackend};
use crate::kv_server::KvProtocol;
use crate::leader_contact::LeaderContact;
use crate::metrics::NodeMetrics;
use crate::raft_network::{
    NetworkFactory, RaftProtocol, SnapshotProtocol, RAFT_ALPN, SNAPSHOT_ALPN,
};
use crate::raft_types::{AspenRaft, MemberNode};
use crate::service::KvService;
use crate::storage::{self, StateMachine};
use crate::transport::{bind_endpoint, load_or_create_secret_key, Access, Drain, Transport};
use crate::value_server::ValueProtocol;
use crate::watch::FeedHub;

/// Errors of starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data dir or the identity key could not be read or written.
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The iroh endpoint could not be bound.
    #[error("{0}")]
    Endpoint(String),
    /// Opening the SQLite storage failed.
    #[error("opening storage failed: {0}")]
    Storage(#[from] crate::raft_types::StorageError),
    /// A configured value is unusable.
    #[error("config: {0}")]
    Config(String),
    /// Raft refused to start.
    #[error("starting Raft failed: {0}")]
    Raft(String),
    /// Federation could not start.
    #[error("starting federation failed: {0}")]
    Federation(#[from] aspen_federation::FederationError),
    /// The node's blob store could not be opened.
    #[error("opening the blob store failed: {0}")]
    Blobs(#[from] aspen_blobs::BlobError),
}

/// A node's iroh endpoint, bound, with the access policy every connection to it passes
/// through (the node fills in its rules when it starts).
pub struct BoundEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its access policy.
    pub access: Access,
}

impl BoundEndpoint {
    /// The endpoint's id: the node's identity.
    pub fn id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The local addresses the endpoint is bound to.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }
}

/// Binds the node's iroh endpoint: identity from the data dir, address from the config.
pub async fn bind(config: &NodeConfig) -> Result<BoundEndpoint, NodeError> {
    let key = load_or_create_secret_key(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let relays = config.relay == RelayModeConfig::Default;
    let access = Access::open();
    let endpoint = bind_endpoint(key, config.iroh_bind_addr, relays, &access)
        .await
        .map_err(NodeError::Endpoint)?;
    Ok(BoundEndpoint { endpoint, access })
}

/// How long each step of [`Node::shutdown`] (draining HTTP requests, stopping federation,
/// Raft, the iroh router) may take before it is cut off with a warning: a stuck part must
/// not keep a node from stopping.
pub const SHUTDOWN_STEP_GRACE: Duration = Duration::from_secs(10);

/// Runs one shutdown step for at most [`SHUTDOWN_STEP_GRACE`], logging an error or an
/// overrun (the node goes on stopping either way).
async fn bounded_step<E: std::fmt::Display>(
    node_id: u64,
    what: &str,
    step: impl std::future::Future<Output = Result<(), E>>,
) {
    match tokio::time::timeout(SHUTDOWN_STEP_GRACE, step).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(node_id, "{what} shutdown: {e}"),
        Err(_) => tracing::warn!(
            node_id,
            "{what} did not stop within {SHUTDOWN_STEP_GRACE:?}; going on without it"
        ),
    }
}

/// A running node.
pub struct Node {
    /// The KV service (also reachable over HTTP and `aspen/kv/2`).
    pub service: Arc<KvService>,
    /// The node's watches.
    pub hub: Arc<FeedHub>,
    node_id: u64,
    raft: AspenRaft,
    transport: Arc<Transport>,
    federation: Option<Federation>,
    blobs: BlobStore,
    protocols: ProtocolRouter,
    /// Stops `aspen/kv/2` before Raft stops, so every request it took is answered.
    kv_drain: Drain,
    /// Blob collection runs begun (each after reading what the values reference).
    blob_collections: Arc<AtomicU64>,
    http_addr: SocketAddr,
    http_stop: Option<oneshot::Sender<()>>,
    http_task: JoinHandle<std::io::Result<()>>,
    /// Stops the leader's lease expiry task.
    expiry_stop: tokio::sync::watch::Sender<bool>,
}

/// openraft's configuration from a node's config, validated by openraft; public for the
/// config fuzz target (`aspen-fuzz`), which checks every accepted config passes it.
#[doc(hidden)]
pub fn openraft_config(config: &NodeConfig) -> Result<openraft::Config, NodeError> {
    let r = &config.raft;
    openraft::Config {
        cluster_name: config.cluster.clone(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every_logs),
        max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
        max_payload_entries: r.max_payload_entries,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Config(e.to_string()))
}

/// Opens the node's blob store (`blobs/` under `data_dir`, taking over the store an earlier
/// version kept for federation). Unreferenced blobs are collected every `collect_every`
/// (`[blobs] collect_every_secs`); every blob the state machine references is kept (it is
/// opened after the store: until it is set in `state`, collection is skipped), and with
/// federation so is every blob its documents reference. A blob in `pending` is let go as
/// soon as a run finds it referenced (the run keeps it by its reference). A node that was federated and is
/// no more collects nothing: its documents' blobs are kept for when federation is
/// configured again (remove `federation/` from the data dir to let them go).
async fn open_blobs(
    data_dir: &std::path::Path,
    federated: bool,
    collect_every: Duration,
    state: Arc<OnceLock<StateMachine>>,
    replicas: Option<(Arc<Replicas>, HashSet<String>)>,
    pending: Pending,
    collections: Arc<AtomicU64>,
) -> Result<(BlobStore, Option<DocsProtection>), NodeError> {
    let dir = aspen_blobs::store_dir(data_dir);
    aspen_federation::stack::move_old_blob_store(data_dir, &dir)?;
    let protect: aspen_blobs::Protect = Arc::new(move || {
        let sm = state
            .get()
            .ok_or_else(|| "the state machine is not open yet".to_string())?;
        let mut hashes: Vec<_> = sm
            .referenced_blobs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(aspen_blobs::Hash::from_bytes)
            .collect();
        // The blobs of replicated values, which this node keeps for its region's reads
        // (of the clusters it still imports: a copy left from an earlier import keeps none).
        if let Some((replicas, imported)) = &replicas {
            let referenced = replicas
                .store()
                .referenced_blobs()
                .map_err(|e| e.to_string())?;
            hashes.extend(
                referenced
                    .into_iter()
                    .filter(|(source, _)| imported.contains(source))
                    .map(|(_, b)| aspen_blobs::Hash::from_bytes(b.hash)),
            );
        }
        // This run keeps them by their references: their temporary tags may go now.
        pending.release(&hashes.iter().copied().collect());
        collections.fetch_add(1, Ordering::Relaxed);
        Ok(hashes)
    });
    let gc = |also| GcSettings {
        interval: collect_every,
        protect,
        also,
    };
    let (protection, gc) = if federated {
        let (protection, callback) = aspen_federation::stack::docs_protection();
        (Some(protection), Some(gc(Some(callback))))
    } else if aspen_federation::stack::has_documents(data_dir) {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "blob collection is off: this node holds federation documents but federation is \
             not configured; configure it again, or remove federation/ from the data dir"
        );
        (None, None)
    } else {
        (None, Some(gc(None)))
    };
    Ok((BlobStore::open(&dir, gc).await?, protection))
}

impl Node {
    /// Starts a node on a bound `endpoint` and HTTP `listener`.
    pub async fn start(
        config: NodeConfig,
        bound: BoundEndpoint,
        listener: tokio::net::TcpListener,
    ) -> Result<Node, NodeError> {
        let BoundEndpoint { endpoint, access } = bound;
        // Read first, so a bad certificate or key stops the start before anything runs.
        let tls = match &config.tls {
            Some(tls) => Some(
                aspen_api::server::tls::from_config(tls)
                    .map_err(|e| NodeError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let transport = Transport::new(endpoint.clone(), access);
        let mut initial_members = BTreeMap::new();
        let own_addrs = endpoint
            .bound_sockets()
            .iter()
            .map(|a| a.to_string())
            .collect();
        initial_members.insert(
            config.node_id,
            MemberNode {
                endpoint_id: endpoint.id().to_string(),
                addrs: own_addrs,
            },
        );
        let mut configured = HashSet::new();
        for peer in &config.peers {
            let id: EndpointId = peer.endpoint_id.parse().map_err(|e| {
                NodeError::Config(format!("peer {}: invalid endpoint_id: {e}", peer.node_id))
            })?;
            transport.set_addresses(id, peer.addrs.clone());
            configured.insert(id);
            let addrs = peer.addrs.iter().map(|a| a.to_string()).collect();
            initial_members.insert(
                peer.node_id,
                MemberNode {
                    endpoint_id: peer.endpoint_id.clone(),
                    addrs,
                },
            );
        }
        let federation_setup = federation::setup(&config)?;
        let replica_store = match &federation_setup {
            Some(_) => Some(Replicas::open(&config.data_dir)?),
            None => None,
        };
        // Each imported cluster and its nodes: where its replica's blobs come from.
        let sources: BTreeMap<String, Vec<EndpointAddr>> = federation_setup
            .iter()
            .flat_map(|s| &s.imports)
            .map(|i| (i.cluster.clone(), i.nodes.clone()))
            .collect();
        let referenced = Arc::new(OnceLock::new());
        let pending_blobs = Pending::default();
        let blob_collections = Arc::new(AtomicU64::new(0));
        let (blobs, docs_protection) = open_blobs(
            &config.data_dir,
            federation_setup.is_some(),
            Duration::from_secs(config.blobs.collect_every_secs),
            referenced.clone(),
            replica_store
                .clone()
                .map(|r| (r, sources.keys().cloned().collect())),
            pending_blobs.clone(),
            blob_collections.clone(),
        )
        .await?;
        let (log_store, state_machine) = storage::open(&config.data_dir, (&config.feed).into())?;
        let _ = referenced.set(state_machine.clone());
        let raft = AspenRaft::new(
            config.node_id,
            Arc::new(openraft_config(&config)?),
            NetworkFactory::new(transport.clone(), state_machine.stages().clone()),
            log_store,
            state_machine.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let contact = Arc::new(LeaderContact::default());
        // Read through the service only where something is imported.
        let replicas = match &federation_setup {
            Some(setup) if !setup.imports.is_empty() => replica_store.clone(),
            _ => None,
        };
        let service = KvService::new(
            config.node_id,
            config.cluster.clone(),
            raft.clone(),
            state_machine.clone(),
            transport.clone(),
            initial_members,
            contact.clone(),
            replicas.clone(),
        );
        crate::admission::restrict_kv(transport.access(), &config, raft.clone())?;
        // Members only; with federation, its rule then takes over iroh-blobs' ALPN.
        crate::admission::restrict_blobs(transport.access(), &config, raft.clone())?;
        let state_machine_for_watch = state_machine.clone();
        let state_machine_for_repair = state_machine.clone();
        let stages = state_machine.stages().clone();
        let federation = match federation_setup {
            Some(setup) => {
                federation::restrict(transport.access(), &config, raft.clone())?;
                let feed = Arc::new(NodeFeed {
                    node_id: config.node_id,
                    raft: raft.clone(),
                    sm: state_machine,
                });
                let replicas = replica_store
                    .clone()
                    .expect("opened when federation is configured");
                let protection = docs_protection.expect("made when federation is configured");
                let store = blobs.clone();
                Some(Federation::start(setup, &endpoint, feed, replicas, store, protection).await?)
            }
            None => None,
        };
        let blob_values = BlobValues {
            store: blobs.clone(),
            pending: pending_blobs.clone(),
            transport: transport.clone(),
            node_id: config.node_id,
            service: service.clone(),
            sources: Arc::new(sources.values().flatten().cloned().collect()),
            puts: Default::default(),
            stages: stages.clone(),
        };
        let raft_protocol = RaftProtocol::new(
            raft.clone(),
            transport.clone(),
            configured,
            contact,
            stages.clone(),
        );
        let kv_drain = Drain::new();
        let mut protocols = ProtocolRouter::builder(endpoint)
            .accept(SNAPSHOT_ALPN, SnapshotProtocol::new(raft_protocol.clone()))
            .accept(RAFT_ALPN, raft_protocol)
            .accept(
                aspen_api::wire::KV_ALPN,
                KvProtocol::new(service.clone(), transport.clone(), kv_drain.clone()),
            )
            .accept(
                aspen_api::value_wire::VALUE_ALPN,
                ValueProtocol::new(blob_values.clone(), transport.clone(), kv_drain.clone()),
            )
            .accept(aspen_blobs::ALPN, blobs.serve())
            .accept(
                BLOB_HOLD_ALPN,
                HoldProtocol::new(
                    blobs.clone(),
                    service.clone(),
                    transport.clone(),
                    pending_blobs,
                    stages.clone(),
                ),
            );
        for (alpn, handler) in federation.iter().flat_map(|f| f.handlers()) {
            protocols = protocols.accept(alpn, handler);
        }
        let protocols = protocols.spawn();
        let http_addr = listener.local_addr().map_err(|source| NodeError::DataDir {
            path: "http listener".into(),
            source,
        })?;
        let hub = FeedHub::start(state_machine_for_watch, config.cluster.clone());
        // Stops the node's background tasks (lease expiry, blob repair).
        let (expiry_stop, expiry_stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::service::run_expiry(
            service.clone(),
            expiry_stopped.clone(),
        ));
        if let Some(replicas) = replicas.clone() {
            tokio::spawn(crate::replica_blobs::run(
                blob_values.clone(),
                replicas,
                sources,
                blob_collections.clone(),
                expiry_stopped.clone(),
            ));
        }
        tokio::spawn(crate::blob_repair::run(
            blob_values.clone(),
            state_machine_for_repair,
            expiry_stopped,
        ));
        let metrics = Arc::new(NodeMetrics::with_stages(&stages));
        let http_stats = metrics.http.clone();
        let backend = NodeBackend {
            service: service.clone(),
            metrics,
            hub: hub.clone(),
            export: federation.as_ref().and_then(Federation::export_watch),
            blobs: blob_values,
        };
        let (http_stop, stopped) = oneshot::channel::<()>();
        let policy = PolicyCell::new(config.auth.as_ref().map(Policy::from_config));
        let app = auth::guard(http::router(backend, config.fault_injection), policy);
        let shutdown = async move {
            let _ = stopped.await;
        };
        let limits = ServeOptions {
            tls,
            ..ServeOptions::default()
        };
        let http_task = tokio::spawn(http::serve_with(
            listener, app, shutdown, limits, http_stats,
        ));
        tracing::info!(node_id = config.node_id, cluster = %config.cluster, endpoint_id = %transport.endpoint().id(), %http_addr, "node started");
        Ok(Node {
            hub,
            service,
            raft,
            transport,
            federation,
            blobs,
            protocols,
            kv_drain,
            blob_collections,
            http_addr,
            http_stop: Some(http_stop),
            http_task,
            expiry_stop,
            node_id: config.node_id,
        })
    }

    /// The HTTP address the API is served on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// This node's iroh EndpointId.
    pub fn endpoint_id(&self) -> EndpointId {
        self.transport.endpoint().id()
    }

    /// The addresses of this node's iroh endpoint.
    pub fn iroh_addrs(&self) -> Vec<SocketAddr> {
        self.transport.endpoint().bound_sockets()
    }

    /// The Raft handle.
    pub fn raft(&self) -> &AspenRaft {
        &self.raft
    }

    /// The transport (for fault injection in tests).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The node's blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Asks the other members to hold `held` (see [`crate::blob_hold`]); returns once a
    /// majority of the voters hold it, with their node ids.
    pub async fn hold_on_majority(&self, held: &Held) -> Result<Vec<u64>, NotOnMajority> {
        let members = self.service.members();
        hold_on_majority(&self.transport, self.node_id, &members, held).await
    }

    /// Blob collection runs begun since the node started; each one keeps exactly what the
    /// values, the kept change feed, the federation replicas and documents reference,
    /// and what writes and fetches under way still hold.
    pub fn blob_collections(&self) -> u64 {
        self.blob_collections.load(Ordering::Relaxed)
    }

    /// The node's federation, if configured.
    pub fn federation(&self) -> Option<&Federation> {
        self.federation.as_ref()
    }

    /// Stops HTTP, `aspen/kv/2` and `aspen/value/1` (answering what they took),
    /// federation, Raft and the iroh endpoint, in that order.
    pub async fn shutdown(mut self) {
        // Watches are open requests: end them, or the HTTP server waits for them.
        self.hub.stop();
        self.expiry_stop.send_replace(true);
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(SHUTDOWN_STEP_GRACE, &mut self.http_task)
            .await
            .is_err()
        {
            tracing::warn!(
                node_id = self.node_id,
                "HTTP requests still running {SHUTDOWN_STEP_GRACE:?} after shutdown began; \
                 cutting them off"
            );
            self.http_task.abort();
        }
        // Routers and other members: every `aspen/kv/2` and `aspen/value/1` request taken
        // is answered while Raft still runs, then the connections close saying the rest
        // were not taken, so a requester sends those elsewhere instead of reporting an
        // unknown outcome.
        if !self.kv_drain.stop(SHUTDOWN_STEP_GRACE).await {
            tracing::warn!(
                node_id = self.node_id,
                connections = self.kv_drain.open_connections(),
                "aspen/kv/2 requests still running {SHUTDOWN_STEP_GRACE:?} after shutdown began; \
                 cutting them off"
            );
        }
        if let Some(federation) = self.federation.as_mut() {
            federation.shutdown().await;
        }
        let node_id = self.node_id;
        bounded_step(node_id, "raft", self.raft.shutdown()).await;
        bounded_step(node_id, "the iroh router", self.protocols.shutdown()).await;
        if let Some(federation) = self.federation.take() {
            federation.close_docs().await;
        }
        bounded_step(node_id, "the blob store", async {
            self.blobs.shutdown().await;
            Ok::<(), std::convert::Infallible>(())
        })
        .await;
    }
}
