//! The router's HTTP API: the same KV routes as a node (`aspen_api::server`, over a
//! [`RouterBackend`]), plus `GET /v1/routes`, the router's `GET /v1/status`, `/healthz`,
//! `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use aspen_api::server::{
    fallbacks, kv_routes, AnswerClusters, BlobPut, HttpError, KvBackend, ReadAnswer, ReadOptions,
    ValueStream, Written,
};
use aspen_api::{ApiError, BlobRef, Command, ErrorCode, ReadRequest, ReadResult, ScanPage};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;

use crate::metrics::RouterMetrics;
use crate::service::RouterService;

/// The KV routes' backend: routes each request through the [`RouterService`].
pub struct RouterBackend {
    /// Routes requests.
    pub service: Arc<RouterService>,
    /// Counts them.
    pub metrics: Arc<RouterMetrics>,
}

impl KvBackend for RouterBackend {
    async fn write(&self, command: Command) -> Result<Written, ApiError> {
        let (result, cluster) = self.service.write(command).await?;
        Ok(Written { result, cluster })
    }

    async fn read(
        &self,
        request: ReadRequest,
        options: ReadOptions,
    ) -> Result<ReadAnswer, ApiError> {
        match request {
            ReadRequest::Get { key } => {
                let read = self.service.get(key, options).await?;
                let mut answer = ReadAnswer::from_cluster(read.response, read.cluster);
                if let Some(freshness) = answer.freshness.as_mut() {
                    freshness.replica = read.replica;
                }
                Ok(answer)
            }
            ReadRequest::Scan {
                prefix,
                after,
                limit,
            } => {
                let out = self.service.scan(prefix, after, limit, options).await?;
                let (kvs, clusters): (Vec<_>, Vec<_>) = out.entries.into_iter().unzip();
                Ok(ReadAnswer {
                    result: ReadResult::Scan(ScanPage {
                        kvs,
                        more: out.more,
                    }),
                    clusters: AnswerClusters::PerEntry(clusters),
                    freshness: out.freshness,
                    next: out.next,
                })
            }
        }
    }

    async fn watch(
        &self,
        request: aspen_api::watch::WatchRequest,
    ) -> Result<aspen_api::server::WatchStream, ApiError> {
        self.service.watch(request).await
    }

    async fn lease(
        &self,
        op: aspen_api::lease::LeaseOp,
    ) -> Result<aspen_api::server::LeaseReply, ApiError> {
        let (answer, cluster) = self.service.lease(op).await?;
        Ok(aspen_api::server::LeaseReply { answer, cluster })
    }

    async fn put_blob(&self, put: BlobPut) -> Result<Written, ApiError> {
        let (result, cluster) = self.service.put_blob(put).await?;
        Ok(Written { result, cluster })
    }

    async fn read_blob(
        &self,
        _key: &str,
        cluster: &str,
        blob: BlobRef,
        (start, len): (u64, u64),
    ) -> Result<ValueStream, ApiError> {
        self.service.read_blob(cluster, blob, start, len).await
    }

    fn observe(&self, op: &'static str, status: u16, seconds: f64) {
        self.metrics.observe(op, status, seconds);
    }
}

/// State of the router-only routes.
#[derive(Clone)]
struct Admin {
    service: Arc<RouterService>,
    metrics: Arc<RouterMetrics>,
}

/// The whole app of a router.
pub fn app(service: Arc<RouterService>, metrics: Arc<RouterMetrics>) -> axum::Router {
    let admin = Admin {
        service: service.clone(),
        metrics: metrics.clone(),
    };
    let own = axum::Router::new()
        .route("/v1/routes", get(routes))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(admin);
    fallbacks(kv_routes(Arc::new(RouterBackend { service, metrics })).merge(own))
}

/// `GET /v1/routes`, and `?key=K` for one key's owner.
async fn routes(
    State(admin): State<Admin>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let start = Instant::now();
    let result = (|| {
        let Query(pairs) = query.map_err(|e| {
            ApiError::bad_request(format!(
                "the query string must be percent-encoded UTF-8: {e}"
            ))
        })?;
        let mut key = None;
        for (name, value) in pairs {
            match name.as_str() {
                "key" => key = Some(value),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}`: /v1/routes takes only `key`"
                    )))
                }
            }
        }
        admin.service.routes(key)
    })();
    let response = match result {
        Ok(routes) => Json(routes).into_response(),
        Err(e) => HttpError::from(e).into_response(),
    };
    admin.metrics.observe(
        "routes",
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /readyz`: ready while the router can serve part of its key space, that is while
/// some routed cluster's breaker is closed. Once every cluster's is open (none answered as
/// leader for a whole request deadline, as when this router is cut off from them all), 503
/// `cluster_unavailable` naming them, so a load balancer sends clients to another router.
/// One cluster down alone leaves the router ready: it still serves the others' keys, and
/// every router sees the same cluster down.
async fn readyz(State(admin): State<Admin>) -> Response {
    let breakers = admin.service.breakers();
    if breakers.is_empty() || breakers.iter().any(|(_, open, _)| !open) {
        return "ready\n".into_response();
    }
    let names: Vec<&str> = breakers.iter().map(|(name, ..)| name.as_str()).collect();
    HttpError::from(ApiError::new(
        ErrorCode::ClusterUnavailable,
        format!(
            "no routed cluster answers: every one refuses requests at once ({}), since none \
             of its members answered as leader for a whole request deadline; check this \
             router's network to the clusters (GET /v1/status)",
            names.join(", ")
        ),
    ))
    .into_response()
}

/// `GET /v1/status`: every cluster's health, leader and term.
async fn status(State(admin): State<Admin>) -> Response {
    Json(admin.service.status().await).into_response()
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    let replicas = admin.service.replica_health().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.metrics.render(&replicas, &admin.service.breakers()),
    )
        .into_response()
}
