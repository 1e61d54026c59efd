//! The lease routes: `POST /v1/lease` (grant), `POST /v1/lease/{id}/keepalive`,
//! `GET /v1/lease/{id}` (time to live and keys) and `DELETE /v1/lease/{id}` (revoke).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Checked;
use super::error::body_bytes;
use super::{finish, parse_json, HttpResult, KvBackend};
use crate::lease::{GrantRequest, LeaseId, LeaseOp, LeaseResponse};

async fn run<B: KvBackend>(backend: &B, op: LeaseOp) -> HttpResult {
    let reply = backend.lease(op.clone()).await?;
    Ok(Json(LeaseResponse::new(&op, &reply.cluster, &reply.answer)).into_response())
}

fn path_lease(path: Result<Path<String>, PathRejection>) -> Result<LeaseId, super::HttpError> {
    let Path(text) = path.map_err(|rejection| {
        crate::ValidationError::field("id", format!("the lease id in the path: {rejection}"))
    })?;
    Ok(LeaseId::parse_field("id", &text)?)
}

/// `POST /v1/lease` `{"ttl": 10, "key": "..."}`.
pub(super) async fn grant<B: KvBackend>(
    backend: Checked<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let result = async {
        let request: GrantRequest = parse_json(&body_bytes(body)?)?;
        let op = LeaseOp::Grant {
            ttl_secs: request.ttl,
            key: request.key,
        };
        run(&backend, op).await
    }
    .await;
    finish(&backend, "lease_grant", start, result)
}

/// Runs the lease operation `op` makes of the id in the path, as route `name`.
async fn by_id<B: KvBackend>(
    backend: &B,
    path: Result<Path<String>, PathRejection>,
    op: fn(LeaseId) -> LeaseOp,
    name: &'static str,
) -> Response {
    let start = Instant::now();
    let result = async { run(backend, op(path_lease(path)?)).await }.await;
    finish(backend, name, start, result)
}

/// `POST /v1/lease/{id}/keepalive`.
pub(super) async fn keepalive<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    by_id(&backend, path, LeaseOp::KeepAlive, "lease_keepalive").await
}

/// `GET /v1/lease/{id}`.
pub(super) async fn get<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    by_id(&backend, path, LeaseOp::Get, "lease_get").await
}

/// `DELETE /v1/lease/{id}`.
pub(super) async fn revoke<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    by_id(&backend, path, LeaseOp::Revoke, "lease_revoke").await
}
