//! The public HTTP API of a node (DESIGN.md, "HTTP API"), served with axum.
//!
//! Every handler turns its input into an `aspen_api` command or read, hands it to the
//! [`KvService`], and renders the result or a JSON error. Bodies are read as bytes and
//! parsed here, so every malformed body gets an Aspen error naming the field, never a
//! framework default.
//!
//! - [`kv`]: `/v1/kv/*`, `/v1/batch`, `/v1/cas`, `/v1/cad`, `/v1/txn`.
//! - [`admin`]: `/v1/status`, `/v1/cluster/*`, `/healthz`, `/readyz`, `/metrics`.

mod admin;
mod kv;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use aspen_api::json::ErrorBody;
use aspen_api::{ApiError, ErrorCode, ValidationError};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use crate::metrics::NodeMetrics;
use crate::service::KvService;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Executes requests.
    pub service: Arc<KvService>,
    /// Counts them.
    pub metrics: Arc<NodeMetrics>,
}

/// An error answer: status plus the JSON body.
pub struct HttpError(pub ErrorBody);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(ErrorBody::new(e.code, e.message))
    }
}

impl From<ValidationError> for HttpError {
    fn from(e: ValidationError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

/// Handler result.
pub type HttpResult = Result<Response, HttpError>;

/// Records the request in the metrics and turns the result into a response.
fn finish(state: &AppState, op: &'static str, start: Instant, result: HttpResult) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.metrics.observe(
        op,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Parses a JSON body into `T`, naming the problem on failure.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body)
        .map_err(|e| HttpError::from(ApiError::bad_request(format!("malformed JSON body: {e}"))))
}

/// The router with every route of the API.
pub fn router(state: AppState) -> axum::Router {
    use aspen_api::limits::{MAX_INLINE_VALUE_BYTES, MAX_JSON_BODY_BYTES};
    let kv_routes = axum::Router::new()
        .route(
            "/v1/kv",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .layer(DefaultBodyLimit::max(MAX_INLINE_VALUE_BYTES));
    let json_routes = axum::Router::new()
        .route("/v1/batch", post(kv::batch))
        .route("/v1/cas", post(kv::cas))
        .route("/v1/cad", post(kv::cad))
        .route("/v1/txn", post(kv::txn))
        .route("/v1/cluster/init", post(admin::init))
        .route("/v1/cluster/add-learner", post(admin::add_learner))
        .route("/v1/cluster/promote", post(admin::promote))
        .route("/v1/cluster/remove", post(admin::remove))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES));
    axum::Router::new()
        .merge(kv_routes)
        .merge(json_routes)
        .route("/v1/status", get(admin::status))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError(ErrorBody::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {}; see docs/API.md", uri.path()),
    ))
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
