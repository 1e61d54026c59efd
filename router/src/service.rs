//! [`RouterService`]: what the router does with each request, independent of HTTP.
//!
//! Single-key requests go to the key's owner. A multi-key command goes to the one cluster
//! owning all its keys (preconditions included) or is refused with 422 `cross_cluster`
//! before anything is sent. A scan asks every cluster that may own keys under its prefix
//! and merges their pages in key order (see [`crate::merge`]). A watch follows the same
//! clusters' change feeds and merges their revisions (`service/watch.rs`). A lease
//! operation goes to the lease's own cluster (`service/lease.rs`).
//!
//! The route table can be replaced while requests run ([`RouterService::reload`]): each
//! request routes with the table it started with; clients of clusters whose members did
//! not change are kept, with their connections and leader knowledge.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aspen_api::admin::{ClusterHealth, ReplicaHealth, RouteEntry, RouterStatus, RoutesResponse};
use aspen_api::server::{ReadOptions, ReplicaLag};
use aspen_api::types::ReadResponse;
use aspen_api::wire::{KvRequest, KvResponse};
use aspen_api::{ApiError, Command, Consistency, ErrorCode, ReadRequest, WriteResult};
use aspen_config::{ClusterConfig, RouterConfig};
use aspen_net::Transport;
use futures::future::join_all;

use crate::error::RouteError;
use aspen_kv_client::ClusterClient;

mod lease;
mod replica;
mod watch;

use crate::merge::{merge_pages, ScanOutcome};
use crate::table::RouteTable;
pub use replica::REPLICA_CATCH_UP_WAIT;
pub use watch::{CATCH_UP_STALL, FEED_POLL_WAIT_MS, FEED_RETRY_BACKOFF};

/// How long `/v1/status` waits for each cluster's answer; a cluster that takes longer is
/// reported unhealthy rather than holding the whole status page.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The table and the clients it routes to, replaced together on reload.
pub(crate) struct Routing {
    table: Arc<RouteTable>,
    clients: HashMap<String, Arc<ClusterClient>>,
    /// The config each client was built from, to keep unchanged ones on reload.
    configs: HashMap<String, ClusterConfig>,
    /// `[federation] replica_clusters`, if the config names them.
    replica_clusters: Option<Vec<String>>,
}

/// A point read's answer and who served it.
#[derive(Debug)]
pub struct Read {
    /// The owning cluster.
    pub cluster: String,
    /// The node's answer, freshness included.
    pub response: ReadResponse,
    /// When a replica in this region served it: its lag.
    pub replica: Option<ReplicaLag>,
}

/// The router's request logic.
pub struct RouterService {
    region: String,
    transport: Arc<Transport>,
    deadline: Duration,
    max_in_flight: usize,
    routing: RwLock<Arc<Routing>>,
    /// Per owner in another region: the highest replica revision returned, so replica
    /// reads never go back in time.
    floors: replica::Floors,
    /// The watches open through this router.
    watch_slots: aspen_api::server::WatchSlots,
    /// Set when the router stops: every watch ends.
    watch_stop: tokio::sync::watch::Sender<bool>,
}

fn route_error(e: RouteError) -> ApiError {
    match e {
        RouteError::CrossCluster { .. } => {
            ApiError::new(ErrorCode::CrossCluster, format!("{e}; nothing was applied"))
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

impl RouterService {
    /// A service routing by `config` over `transport`.
    pub fn new(config: &RouterConfig, transport: Arc<Transport>) -> Result<Self, String> {
        let deadline = Duration::from_millis(config.request_deadline_ms);
        let service = RouterService {
            region: config.region.clone(),
            transport,
            deadline,
            max_in_flight: config.max_in_flight_per_cluster,
            routing: RwLock::new(Arc::new(Routing {
                table: Arc::new(RouteTable::new(config).map_err(|e| e.to_string())?),
                clients: HashMap::new(),
                configs: HashMap::new(),
                replica_clusters: None,
            })),
            floors: replica::Floors::default(),
            watch_slots: Default::default(),
            watch_stop: tokio::sync::watch::Sender::new(false),
        };
        service.reload(config)?;
        Ok(service)
    }

    /// Replaces the route table and cluster clients with those of `config`. An invalid
    /// config changes nothing. Requests in flight finish with the table they started with.
    pub fn reload(&self, config: &RouterConfig) -> Result<(), String> {
        let table = Arc::new(RouteTable::new(config).map_err(|e| e.to_string())?);
        let old = self.routing();
        let mut clients = HashMap::new();
        let mut configs = HashMap::new();
        for cluster in table.clusters() {
            let kept = old
                .configs
                .get(&cluster.name)
                .filter(|c| *c == cluster)
                .and_then(|_| old.clients.get(&cluster.name).cloned());
            let client = match kept {
                Some(client) => client,
                None => Arc::new(ClusterClient::new(
                    cluster,
                    self.transport.clone(),
                    self.deadline,
                    self.max_in_flight,
                )?),
            };
            clients.insert(cluster.name.clone(), client);
            configs.insert(cluster.name.clone(), cluster.clone());
        }
        *self.routing.write().expect("routing lock") = Arc::new(Routing {
            table,
            clients,
            configs,
            replica_clusters: config
                .federation
                .as_ref()
                .map(|f| f.replica_clusters.clone()),
        });
        Ok(())
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing.read().expect("routing lock").clone()
    }

    /// Requests running and waiting for `cluster` right now, if the table has it.
    pub fn load(&self, cluster: &str) -> Option<(usize, usize)> {
        self.routing().clients.get(cluster).map(|c| c.load())
    }

    /// Each cluster's breaker: open or not, and requests it refused at once, by name.
    pub fn breakers(&self) -> Vec<(String, bool, u64)> {
        let mut all: Vec<_> = self
            .routing()
            .clients
            .iter()
            .map(|(name, c)| {
                let (open, refused) = c.breaker();
                (name.clone(), open, refused)
            })
            .collect();
        all.sort();
        all
    }

    /// The current route table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.routing().table.clone()
    }

    /// Applies `command` on the one cluster owning all its keys.
    pub async fn write(&self, command: Command) -> Result<(WriteResult, String), ApiError> {
        command.validate()?;
        if command.is_lease_command() {
            return Err(ApiError::bad_request(
                "lease grants and revokes go through /v1/lease",
            ));
        }
        let routing = self.routing();
        let owner = routing
            .table
            .owner_of_all(command.keys())
            .map_err(route_error)?
            .to_string();
        if let Command::Leased { cluster, .. } = &command {
            if *cluster != owner {
                return Err(aspen_api::lease::cross_cluster(cluster, &owner));
            }
        }
        let client = client_of(&routing, &owner)?;
        match client.call(KvRequest::Write(command)).await? {
            KvResponse::Write(result) => Ok((result, owner)),
            other => Err(unexpected(&owner, other)),
        }
    }

    /// Streams a value above the inline limit to the cluster owning its key.
    pub async fn put_blob(
        &self,
        put: aspen_api::server::BlobPut,
    ) -> Result<(WriteResult, String), ApiError> {
        aspen_api::command::validate_key(&put.key)?;
        let routing = self.routing();
        let owner = routing
            .table
            .owner(&put.key)
            .map_err(route_error)?
            .to_string();
        if let Some(lease) = put.lease.as_ref().filter(|l| l.cluster != owner) {
            return Err(aspen_api::lease::cross_cluster(&lease.cluster, &owner));
        }
        let client = client_of(&routing, &owner)?;
        Ok((client.put_blob(put).await?, owner))
    }

    /// Streams bytes of `blob`, the value of a key of `cluster`, from one of its nodes; or,
    /// when `cluster` is in another region, from a node of this region that keeps its
    /// replica (they hold the blobs their replicas reference, see the node's
    /// `replica_blobs`), going to the owner only when none of them can serve it. A blob
    /// is addressed by its content, so whichever node sends it, the bytes are the value's.
    pub async fn read_blob(
        &self,
        cluster: &str,
        blob: aspen_api::BlobRef,
        start: u64,
        len: u64,
    ) -> Result<aspen_api::server::ValueStream, ApiError> {
        let routing = self.routing();
        let mut local_refusal = None;
        if self.is_foreign(&routing, cluster) {
            for host in self.replica_hosts(&routing) {
                let Ok(client) = client_of(&routing, host) else {
                    continue;
                };
                match client.read_blob(blob, start, len).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => {
                        local_refusal.get_or_insert(e);
                    }
                }
            }
        }
        let owner = client_of(&routing, cluster).map_err(|_| {
            local_refusal.unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::ReplicaUnavailable,
                    format!(
                        "the value is kept as a blob by cluster {cluster}, which this router \
                         does not route to: read it with ?raw through a router of its region"
                    ),
                )
            })
        })?;
        // The owner's own refusal says more than why this region's copy could not serve.
        owner.read_blob(blob, start, len).await
    }

    /// Reads one key from its owner, or (stale, owned in another region) from a replica
    /// in this region.
    pub async fn get(&self, key: String, options: ReadOptions) -> Result<Read, ApiError> {
        aspen_api::command::validate_key(&key)?;
        let routing = self.routing();
        let owner = routing.table.owner(&key).map_err(route_error)?.to_string();
        let (response, replica) = self
            .read_cluster(&routing, &owner, ReadRequest::Get { key }, options)
            .await?;
        Ok(Read {
            cluster: owner,
            response,
            replica,
        })
    }

    /// One cluster's answer to `request`: from a replica in this region when the read is
    /// stale and the cluster runs in another region, else from the cluster itself.
    async fn read_cluster(
        &self,
        routing: &Routing,
        cluster: &str,
        request: ReadRequest,
        options: ReadOptions,
    ) -> Result<(ReadResponse, Option<ReplicaLag>), ApiError> {
        if options.consistency == Consistency::Stale && self.is_foreign(routing, cluster) {
            if let Some((response, lag)) = self
                .replica_read(routing, cluster, request.clone(), options.max_lag_ms)
                .await?
            {
                return Ok((response, Some(lag)));
            }
        }
        let client = client_of(routing, cluster)?;
        let call = KvRequest::Read {
            request,
            consistency: options.consistency,
        };
        let response = match client.call(call).await? {
            KvResponse::Read(response) => response,
            other => return Err(unexpected(cluster, other)),
        };
        if let Some(max) = options.max_lag_ms {
            let contact = response.since_leader_contact_ms;
            if contact.is_none_or(|ms| ms > max) {
                return Err(ApiError::new(
                    ErrorCode::ReplicaBehind,
                    format!(
                        "cluster {cluster}'s copy may be {} stale, more than max_lag ({max} ms)",
                        contact.map_or("an unknown time".to_string(), |ms| format!("{ms} ms"))
                    ),
                ));
            }
        }
        Ok((response, None))
    }

    /// One page of the keys under `prefix` after `after`, merged from every cluster that
    /// may own some of them.
    pub async fn scan(
        &self,
        prefix: String,
        after: Option<String>,
        limit: usize,
        options: ReadOptions,
    ) -> Result<ScanOutcome, ApiError> {
        let read = ReadRequest::Scan {
            prefix,
            after,
            limit,
        };
        // Refused here, before any cluster is asked (and even when no route covers it).
        read.validate()?;
        let routing = self.routing();
        let plan = match &read {
            ReadRequest::Scan { prefix, .. } => routing.table.scan_plan(prefix),
            ReadRequest::Get { .. } => unreachable!("built as a scan just above"),
        };
        let asks = plan.iter().map(|cluster| {
            let read = &read;
            let routing = &routing;
            async move {
                let (response, lag) = self
                    .read_cluster(routing, cluster, read.clone(), options)
                    .await?;
                Ok::<_, ApiError>(((cluster.clone(), response), lag))
            }
        });
        let (answers, lags): (Vec<_>, Vec<_>) = join_all(asks)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, ApiError>>()?
            .into_iter()
            .unzip();
        let mut outcome = merge_pages(&routing.table, answers, limit);
        if let (Some(freshness), [Some(lag)]) = (outcome.freshness.as_mut(), lags.as_slice()) {
            freshness.replica = Some(*lag);
        }
        Ok(outcome)
    }

    /// The router's view of every cluster, asking each for its status (at most
    /// [`STATUS_TIMEOUT`] each, all at once).
    pub async fn status(&self) -> RouterStatus {
        let routing = self.routing();
        let asks = routing.table.clusters().iter().map(|cluster| {
            let client = routing.clients.get(&cluster.name).cloned();
            async move {
                let mut health = ClusterHealth {
                    name: cluster.name.clone(),
                    region: cluster.region.clone(),
                    healthy: false,
                    leader: None,
                    term: None,
                    applied_revision: None,
                    error: None,
                };
                let Some(client) = client else {
                    health.error = Some("no client for this cluster".into());
                    return health;
                };
                match tokio::time::timeout(STATUS_TIMEOUT, client.status()).await {
                    Ok(Ok(status)) => {
                        health.healthy = status.leader.is_some();
                        health.leader = status.leader;
                        health.term = Some(status.term);
                        health.applied_revision = Some(status.applied_revision);
                        if status.leader.is_none() {
                            health.error = Some("no leader known (election under way?)".into());
                        }
                    }
                    Ok(Err(e)) => health.error = Some(e.message),
                    Err(_) => {
                        health.error = Some(format!("no answer within {STATUS_TIMEOUT:?}"));
                    }
                }
                health
            }
        });
        let clusters = join_all(asks).await;
        let replicas = self.replica_health().await;
        RouterStatus {
            role: "router".into(),
            region: self.region.clone(),
            clusters,
            replicas,
        }
    }

    /// This region's replicas of other regions' clusters, per source.
    pub async fn replica_health(&self) -> Vec<ReplicaHealth> {
        let routing = self.routing();
        self.replica_reports(&routing)
            .await
            .into_iter()
            .map(|(host, r)| ReplicaHealth::reported_by(r, &host))
            .collect()
    }

    /// The route table, or with `key` the route that owns it.
    pub fn routes(&self, key: Option<String>) -> Result<RoutesResponse, ApiError> {
        let table = self.table();
        let Some(key) = key else {
            return Ok(RoutesResponse {
                routes: table
                    .routes()
                    .map(|(prefix, cluster)| RouteEntry {
                        prefix: prefix.to_string(),
                        cluster: cluster.to_string(),
                    })
                    .collect(),
                key: None,
                cluster: None,
            });
        };
        aspen_api::command::validate_key(&key)?;
        let owner = table.owner(&key).map_err(route_error)?.to_string();
        let route = table
            .routes()
            .filter(|(prefix, cluster)| key.starts_with(prefix) && *cluster == owner)
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(prefix, cluster)| RouteEntry {
                prefix: prefix.to_string(),
                cluster: cluster.to_string(),
            });
        Ok(RoutesResponse {
            routes: route.into_iter().collect(),
            key: Some(key),
            cluster: Some(owner),
        })
    }
}

fn client_of(routing: &Routing, cluster: &str) -> Result<Arc<ClusterClient>, ApiError> {
    routing.clients.get(cluster).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            format!("no client for cluster {cluster}"),
        )
    })
}

fn unexpected(cluster: &str, answer: KvResponse) -> ApiError {
    match answer {
        KvResponse::Error(e) => e,
        other => ApiError::new(
            ErrorCode::Internal,
            format!("cluster {cluster} answered with the wrong kind of message: {other:?}"),
        ),
    }
}
