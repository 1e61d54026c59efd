//! Several regions of clusters and routers in one process, federated with each other:
//! what `aspen dev` runs (DESIGN's topology: region `us` with `us-1` and `us-2`, region
//! `eu` with `eu-1`) and what the integration tests start.
//!
//! Starting takes two steps so that no id is copied by hand: every node's endpoint is
//! bound first ([`LocalCluster::bind`]), then each node's federation config is written
//! from the others' identities (each cluster exports to every other region, whose nodes
//! are its readers, and imports every cluster of every other region), then the nodes
//! start, then one router per region. Each cluster's federation secret lives in its data
//! dir (`DIR/CLUSTER/federation.key`), each router's identity in `DIR/router-REGION.key`,
//! both made on first start; every node lists every router's id in its `kv_clients`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aspen_cluster_node::local_cluster::{BoundCluster, LocalCluster, LocalClusterSpec};
use aspen_cluster_node::node::NodeError;
use aspen_cluster_node::transport::load_or_create_secret_key_file;
use aspen_config::{
    ClusterConfig, ExportConfig, FederationConfig, ImportConfig, RaftConfig, RemoteNodeConfig,
    RouteConfig, RouterConfig,
};
use aspen_federation::secret::{FederationSecret, SecretError};
use aspen_router::RunningRouter;

/// Why a topology could not start.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A node failed to start.
    #[error("cluster {cluster}: {source}")]
    Node { cluster: String, source: NodeError },
    /// A federation secret could not be read or made.
    #[error("{0}")]
    Secret(#[from] SecretError),
    /// A router failed to start.
    #[error("router of region {region}: {message}")]
    Router { region: String, message: String },
    /// A router's identity file could not be read or made.
    #[error("router identity {path}: {source}")]
    RouterKey {
        path: String,
        source: std::io::Error,
    },
}

/// One cluster of a region.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Its name.
    pub name: String,
    /// The route prefixes it owns.
    pub routes: Vec<String>,
    /// HTTP address of its node 1 (port 0: any).
    pub first_http: SocketAddr,
}

/// One region: its clusters and its router.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// The region's name.
    pub name: String,
    /// Its clusters.
    pub clusters: Vec<ClusterSpec>,
    /// Its router's HTTP address (port 0: any).
    pub router_http: SocketAddr,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    /// Parent of every cluster's data (`DIR/CLUSTER/node-N`).
    pub data_dir: PathBuf,
    /// The regions.
    pub regions: Vec<RegionSpec>,
    /// Nodes per cluster.
    pub nodes: usize,
    /// Raft timing of every node.
    pub raft: RaftConfig,
    /// Every router's request deadline, in ms.
    pub request_deadline_ms: u64,
    /// Endpoints outside the topology allowed to import its clusters: `(region, endpoint
    /// id)`, added to the readers of every cluster not in that region (a new region's node
    /// joining, as the federation benchmark's bootstrap does).
    pub extra_readers: Vec<(String, String)>,
    /// Every exporter's `[federation] checkpoint_replay_bytes`.
    pub checkpoint_replay_bytes: u64,
    /// Every exporter's `[federation] segment_slots`.
    pub segment_slots: u64,
    /// Every node's `[blobs]` settings.
    pub blobs: aspen_config::BlobsConfig,
}

impl TopologySpec {
    /// DESIGN's topology: region `us` (`us-1` owns every key no other route owns, `us-2`
    /// owns `svc-b/`) with its router on `http`, region `eu` (`eu-1` owns `eu/`) with its
    /// router on the next port. Node 1 of the `i`-th cluster serves HTTP on `http`'s port
    /// plus `31 + 100 * i` (7101, 7201, 7301 for 7070); port 0 makes every port free.
    pub fn design(data_dir: &Path, http: SocketAddr, nodes: usize) -> TopologySpec {
        let at = |offset: u16| {
            if http.port() == 0 {
                SocketAddr::new(http.ip(), 0)
            } else {
                SocketAddr::new(http.ip(), http.port().saturating_add(offset))
            }
        };
        let cluster = |name: &str, route: &str, i: u16| ClusterSpec {
            name: name.into(),
            routes: vec![route.into()],
            first_http: at(31 + 100 * i),
        };
        TopologySpec {
            data_dir: data_dir.to_path_buf(),
            regions: vec![
                RegionSpec {
                    name: "us".into(),
                    clusters: vec![cluster("us-1", "", 0), cluster("us-2", "svc-b/", 1)],
                    router_http: http,
                },
                RegionSpec {
                    name: "eu".into(),
                    clusters: vec![cluster("eu-1", "eu/", 2)],
                    router_http: at(1),
                },
            ],
            nodes,
            raft: RaftConfig::default(),
            request_deadline_ms: aspen_config::DEFAULT_REQUEST_DEADLINE_MS,
            extra_readers: Vec::new(),
            checkpoint_replay_bytes: aspen_config::limits::DEFAULT_CHECKPOINT_REPLAY_BYTES,
            segment_slots: aspen_config::limits::DEFAULT_SEGMENT_SLOTS,
            blobs: aspen_config::BlobsConfig::default(),
        }
    }

    fn clusters(&self) -> impl Iterator<Item = (&RegionSpec, &ClusterSpec)> {
        self.regions
            .iter()
            .flat_map(|r| r.clusters.iter().map(move |c| (r, c)))
    }
}

/// A running topology.
pub struct Topology {
    spec: TopologySpec,
    clusters: Vec<(String, LocalCluster)>,
    routers: Vec<(String, RunningRouter)>,
}

/// The secret file of cluster `name` under the topology's data dir.
pub fn secret_path(data_dir: &Path, cluster: &str) -> PathBuf {
    data_dir.join(cluster).join("federation.key")
}

/// Where the router of `region` keeps its iroh identity, under the topology's data dir.
pub fn router_key_path(data_dir: &Path, region: &str) -> PathBuf {
    data_dir.join(format!("router-{region}.key"))
}

/// The endpoint ids of every region's router, creating their identity files on the
/// first start: every node lists them all in `kv_clients`, since any router may route
/// to any cluster and read this region's replicas.
fn router_ids(spec: &TopologySpec) -> Result<Vec<String>, (PathBuf, std::io::Error)> {
    spec.regions
        .iter()
        .map(|region| {
            let path = router_key_path(&spec.data_dir, &region.name);
            load_or_create_secret_key_file(&path)
                .map(|key| key.public().to_string())
                .map_err(|e| (path, e))
        })
        .collect()
}

fn load_or_make_secret(path: &Path) -> Result<FederationSecret, SecretError> {
    if !path.exists() {
        FederationSecret::generate().save(path)?;
    }
    FederationSecret::load(path)
}

impl Topology {
    /// Binds every node, writes their federation configs, starts the clusters and then
    /// one router per region.
    pub async fn start(spec: TopologySpec) -> Result<Topology, TopologyError> {
        let mut bound: Vec<(String, String, BoundCluster)> = Vec::new();
        for (region, cluster) in spec.clusters() {
            let local = LocalClusterSpec {
                cluster: cluster.name.clone(),
                data_dir: spec.data_dir.join(&cluster.name),
                nodes: spec.nodes,
                first_http: cluster.first_http,
                raft: spec.raft.clone(),
                kv_clients: Vec::new(),
            };
            let b = LocalCluster::bind(local)
                .await
                .map_err(|source| TopologyError::Node {
                    cluster: cluster.name.clone(),
                    source,
                })?;
            bound.push((region.name.clone(), cluster.name.clone(), b));
        }
        let mut secrets = Vec::new();
        for (_, name, _) in &bound {
            secrets.push(load_or_make_secret(&secret_path(&spec.data_dir, name))?);
        }
        let federations: Vec<FederationConfig> = (0..bound.len())
            .map(|i| federation_config(&spec, &bound, &secrets, i))
            .collect();
        let routers = router_ids(&spec).map_err(|(path, source)| TopologyError::RouterKey {
            path: path.display().to_string(),
            source,
        })?;
        let mut clusters = Vec::new();
        for ((_, name, mut b), federation) in bound.into_iter().zip(federations) {
            for config in b.configs_mut() {
                config.federation = Some(federation.clone());
                config.kv_clients = routers.clone();
                config.blobs = spec.blobs.clone();
            }
            let cluster = b.start().await.map_err(|source| TopologyError::Node {
                cluster: name.clone(),
                source,
            })?;
            clusters.push((name, cluster));
        }
        let mut topology = Topology {
            spec,
            clusters,
            routers: Vec::new(),
        };
        for region in topology.spec.regions.clone() {
            let config = topology.router_config(&region.name);
            let listener = tokio::net::TcpListener::bind(region.router_http)
                .await
                .map_err(|e| TopologyError::Router {
                    region: region.name.clone(),
                    message: format!("cannot listen on {}: {e}", region.router_http),
                })?;
            let router = RunningRouter::start(&config, listener).await.map_err(|e| {
                TopologyError::Router {
                    region: region.name.clone(),
                    message: e.to_string(),
                }
            })?;
            topology.routers.push((region.name.clone(), router));
        }
        Ok(topology)
    }

    /// The spec it was started from.
    pub fn spec(&self) -> &TopologySpec {
        &self.spec
    }

    /// The router config of `region`: every cluster of every region, every route.
    pub fn router_config(&self, region: &str) -> RouterConfig {
        let mut clusters = Vec::new();
        let mut routes = Vec::new();
        for (r, c) in self.spec.clusters() {
            clusters.push(ClusterConfig {
                name: c.name.clone(),
                region: r.name.clone(),
                nodes: self.cluster(&c.name).members().to_vec(),
            });
            for prefix in &c.routes {
                routes.push(RouteConfig {
                    prefix: prefix.clone(),
                    cluster: c.name.clone(),
                });
            }
        }
        let key = router_key_path(&self.spec.data_dir, region);
        let mut config = RouterConfig::dev(region, key, clusters, routes);
        let http = self
            .spec
            .regions
            .iter()
            .find(|r| r.name == region)
            .map_or(config.http_addr, |r| r.router_http);
        config.http_addr = http;
        config.iroh_bind_addr = SocketAddr::new(http.ip(), 0);
        config.request_deadline_ms = self.spec.request_deadline_ms;
        config
    }

    /// Cluster `name`. Panics if the topology has none of that name.
    pub fn cluster(&self, name: &str) -> &LocalCluster {
        &self
            .clusters
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
            .1
    }

    /// Cluster `name`, to stop or restart nodes.
    pub fn cluster_mut(&mut self, name: &str) -> &mut LocalCluster {
        &mut self
            .clusters
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
            .1
    }

    /// Every cluster, with its region, in spec order.
    pub fn clusters(&self) -> Vec<(&str, &str, &LocalCluster)> {
        self.spec
            .clusters()
            .map(|(r, c)| (r.name.as_str(), c.name.as_str(), self.cluster(&c.name)))
            .collect()
    }

    /// The router of `region`. Panics if there is none.
    pub fn router(&self, region: &str) -> &RunningRouter {
        &self
            .routers
            .iter()
            .find(|(r, _)| r == region)
            .unwrap_or_else(|| panic!("no router in region {region}"))
            .1
    }

    /// Every router, with its region.
    pub fn routers(&self) -> impl Iterator<Item = (&str, &RunningRouter)> {
        self.routers.iter().map(|(r, router)| (r.as_str(), router))
    }

    /// The iroh identities of every running node of `region`'s clusters.
    fn region_endpoints(&self, region: &str) -> Vec<iroh::EndpointId> {
        self.clusters()
            .into_iter()
            .filter(|(r, _, _)| *r == region)
            .flat_map(|(_, _, cluster)| {
                cluster
                    .running()
                    .into_iter()
                    .filter_map(|id| cluster.node(id).map(|n| n.endpoint_id()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Cuts regions `a` and `b` apart at the iroh level (fault injection): no node or
    /// router of one reaches a node of the other on any protocol, Raft, KV, docs sync,
    /// docs push and blobs alike. [`Topology::heal`] undoes it.
    pub fn partition_regions(&self, a: &str, b: &str) {
        for (this, other) in [(a, b), (b, a)] {
            let cut: std::collections::HashSet<_> =
                self.region_endpoints(other).into_iter().collect();
            for (r, _, cluster) in self.clusters() {
                if r != this {
                    continue;
                }
                for id in cluster.running() {
                    if let Some(node) = cluster.node(id) {
                        node.transport().set_blocked(cut.clone());
                    }
                }
            }
            self.router(this).transport().set_blocked(cut.clone());
        }
    }

    /// Heals every cut made with [`Topology::partition_regions`].
    pub fn heal(&self) {
        for (_, _, cluster) in self.clusters() {
            cluster.heal();
        }
        for (_, router) in self.routers() {
            router.transport().set_blocked(Default::default());
        }
    }

    /// Stops the routers, then every cluster.
    pub async fn shutdown(self) {
        for (_, router) in self.routers {
            router.shutdown().await;
        }
        for (_, cluster) in self.clusters {
            cluster.shutdown().await;
        }
    }
}

/// The federation config of the nodes of cluster `i`: export to every other region (its
/// nodes are the readers), import every cluster of every other region.
fn federation_config(
    spec: &TopologySpec,
    bound: &[(String, String, BoundCluster)],
    secrets: &[FederationSecret],
    i: usize,
) -> FederationConfig {
    let data_dir = &spec.data_dir;
    let (region, cluster, _) = &bound[i];
    let mut export: Vec<ExportConfig> = Vec::new();
    let mut import = Vec::new();
    for (j, (other_region, other, b)) in bound.iter().enumerate() {
        if other_region == region {
            continue;
        }
        let ids: Vec<String> = b.members().iter().map(|m| m.endpoint_id.clone()).collect();
        match export.iter_mut().find(|e| &e.region == other_region) {
            Some(e) => e.readers.extend(ids),
            None => export.push(ExportConfig {
                region: other_region.clone(),
                readers: ids,
            }),
        }
        import.push(ImportConfig {
            cluster: other.clone(),
            region: other_region.clone(),
            namespace: secrets[j].namespace_id().to_string(),
            author: secrets[j].author_id().to_string(),
            nodes: b
                .members()
                .iter()
                .map(|m| RemoteNodeConfig {
                    endpoint_id: m.endpoint_id.clone(),
                    addrs: m.addrs.clone(),
                })
                .collect(),
        });
    }
    for (other_region, id) in spec.extra_readers.iter().filter(|(r, _)| r != region) {
        match export.iter_mut().find(|e| &e.region == other_region) {
            Some(e) => e.readers.push(id.clone()),
            None => export.push(ExportConfig {
                region: other_region.clone(),
                readers: vec![id.clone()],
            }),
        }
    }
    FederationConfig {
        region: region.clone(),
        secret_file: (!export.is_empty()).then(|| secret_path(data_dir, cluster)),
        export,
        import,
        checkpoint_replay_bytes: spec.checkpoint_replay_bytes,
        segment_slots: spec.segment_slots,
    }
}
