//! The public HTTP API of a node (DESIGN.md, "HTTP API"), served with axum.
//!
//! The KV routes are `aspen_api::server`'s, shared with the router, over a
//! [`NodeBackend`] that hands each request to this node's [`KvService`]. The routes only
//! a node has (status, membership, health, metrics) live here.
//!
//! - [`admin`]: `/v1/status`, `/v1/cluster/*`, `/healthz`, `/readyz`, `/metrics`.

mod admin;

use std::sync::Arc;

use aspen_api::lease::{cross_cluster, LeaseOp, LeaseRequest};
use aspen_api::limits::MAX_JSON_BODY_BYTES;
use aspen_api::server::auth::require_admin;
use aspen_api::server::{
    fallbacks, kv_routes, BlobPut, KvBackend, LeaseReply, ReadAnswer, ReadOptions, ValueStream,
    WatchStream, Written,
};
use aspen_api::watch::WatchRequest;
use aspen_api::{ApiError, BlobRef, Command, ErrorCode, ReadRequest};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::blob_values::BlobValues;
use crate::metrics::NodeMetrics;
use crate::service::KvService;
use crate::watch::FeedHub;

pub use aspen_api::server::{serve, serve_with};

/// What every handler of a node shares: the KV routes' backend, and the admin routes'
/// state.
pub struct NodeBackend {
    /// Executes requests.
    pub service: Arc<KvService>,
    /// Counts them.
    pub metrics: Arc<NodeMetrics>,
    /// Serves watches.
    pub hub: Arc<FeedHub>,
    /// The federation exporter's status, when the node's cluster exports.
    pub export: Option<tokio::sync::watch::Receiver<aspen_federation::export::ExportStatus>>,
    /// Writes and reads values kept as blobs.
    pub blobs: BlobValues,
}

impl KvBackend for NodeBackend {
    async fn write(&self, command: Command) -> Result<Written, ApiError> {
        let result = self.service.write(command).await?;
        let cluster = self.service.cluster.clone();
        Ok(Written { result, cluster })
    }

    async fn read(
        &self,
        request: ReadRequest,
        options: ReadOptions,
    ) -> Result<ReadAnswer, ApiError> {
        let response = self.service.read(request, options.consistency).await?;
        if let Some(max) = options.max_lag_ms {
            // A node's own copy is as stale as its last word from a leader.
            let contact = response.since_leader_contact_ms;
            if contact.is_none_or(|ms| ms > max) {
                return Err(ApiError::new(
                    ErrorCode::ReplicaBehind,
                    format!(
                        "this node's copy may be {} stale, more than max_lag ({max} ms); retry, or read with consistency=linearizable",
                        contact.map_or("an unknown time".to_string(), |ms| format!("{ms} ms"))
                    ),
                ));
            }
        }
        Ok(ReadAnswer::from_cluster(
            response,
            self.service.cluster.clone(),
        ))
    }

    async fn watch(&self, request: WatchRequest) -> Result<WatchStream, ApiError> {
        self.hub.watch(request).await
    }

    async fn lease(&self, op: LeaseOp) -> Result<LeaseReply, ApiError> {
        let cluster = &self.service.cluster;
        let request = match op {
            LeaseOp::Grant { ttl_secs, .. } => LeaseRequest::Grant { ttl_secs },
            LeaseOp::KeepAlive(id) | LeaseOp::Get(id) | LeaseOp::Revoke(id)
                if id.cluster != *cluster =>
            {
                return Err(cross_cluster(&id.cluster, cluster));
            }
            LeaseOp::KeepAlive(id) => LeaseRequest::KeepAlive { lease: id.id },
            LeaseOp::Get(id) => LeaseRequest::Get { lease: id.id },
            LeaseOp::Revoke(id) => LeaseRequest::Revoke { lease: id.id },
        };
        let answer = self.service.lease(request).await?;
        Ok(LeaseReply {
            answer,
            cluster: cluster.clone(),
        })
    }

    async fn put_blob(&self, put: BlobPut) -> Result<Written, ApiError> {
        let result = self.blobs.put(put).await?;
        let cluster = self.service.cluster.clone();
        Ok(Written { result, cluster })
    }

    async fn read_blob(
        &self,
        _key: &str,
        _cluster: &str,
        blob: BlobRef,
        (start, len): (u64, u64),
    ) -> Result<ValueStream, ApiError> {
        self.blobs.read(blob, start, len).await
    }

    fn observe(&self, op: &'static str, status: u16, seconds: f64) {
        self.metrics.observe(op, status, seconds);
    }
}

/// The whole app of a node: the shared KV routes, the admin routes (membership changes,
/// and `POST /v1/debug/partition` only when `fault_injection` is on, need an admin
/// token when `[auth]` is on), and a JSON 404 for any other path. Wrap it in
/// `aspen_api::server::auth::guard`.
pub fn router(backend: NodeBackend, fault_injection: bool) -> axum::Router {
    let backend = Arc::new(backend);
    let mut membership = axum::Router::new()
        .route("/v1/cluster/init", post(admin::init))
        .route("/v1/cluster/add-learner", post(admin::add_learner))
        .route("/v1/cluster/promote", post(admin::promote))
        .route("/v1/cluster/remove", post(admin::remove))
        .route(
            "/v1/cluster/snapshot",
            post(admin::build_snapshot).get(admin::download_snapshot),
        );
    if fault_injection {
        membership = membership.route("/v1/debug/partition", post(admin::partition));
    }
    let membership = membership
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(require_admin));
    let admin = axum::Router::new()
        .route("/v1/status", get(admin::status))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .merge(membership)
        .with_state(backend.clone());
    fallbacks(kv_routes(backend).merge(admin))
}
