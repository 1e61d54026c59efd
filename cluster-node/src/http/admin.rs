//! Handlers of the status, membership, health and metrics routes.

use std::sync::Arc;

use aspen_api::admin::{
    AddLearnerRequest, ExportHealth, InitRequest, MemberStatus, MembershipResponse, NodeIdRequest,
    NodeStatus, PartitionRequest, ReplicaHealth,
};
use aspen_api::server::{parse_json, HttpError, HttpResult};
use aspen_api::wire::MembershipChange;
use aspen_api::ErrorCode;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::NodeBackend;

fn read_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, HttpError> {
    let bytes = body.map_err(|r| {
        HttpError::new(
            ErrorCode::BadRequest,
            format!("could not read the request body: {r}"),
        )
    })?;
    parse_json(&bytes)
}

fn members(members: Vec<aspen_api::wire::MemberReport>) -> Response {
    let members = members.into_iter().map(MemberStatus::from).collect();
    Json(MembershipResponse { members }).into_response()
}

/// `GET /v1/status`.
pub async fn status(State(state): State<Arc<NodeBackend>>) -> Json<NodeStatus> {
    let mut status: NodeStatus = state.service.status().into();
    status.replicas = state
        .service
        .replica_reports()
        .into_iter()
        .map(|r| ReplicaHealth::reported_by(r, &state.service.cluster))
        .collect();
    status.export = state.export.as_ref().map(|e| {
        let e = e.borrow();
        Box::new(ExportHealth {
            active: e.active,
            exported: e.exported,
            checkpoint: e.checkpoint,
            next_seq: e.next_seq,
            resumed_seq: e.resumed_seq,
            follower_syncs: e.follower_syncs,
            missing_content: e.missing_content,
            error: e.error.clone(),
        })
    });
    Json(status)
}

/// `POST /v1/debug/partition` (mounted only with `fault_injection = true`): cuts this node
/// off from the listed peers, or heals with an empty list.
pub async fn partition(
    State(state): State<Arc<NodeBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    let request: PartitionRequest = read_body(body)?;
    let mut blocked = std::collections::HashSet::new();
    for (i, id) in request.blocked.iter().enumerate() {
        let id = id.parse::<iroh::EndpointId>().map_err(|e| {
            HttpError::new(
                ErrorCode::BadRequest,
                format!("field `blocked[{i}]`: not an iroh endpoint id ({e})"),
            )
        })?;
        blocked.insert(id);
    }
    state.service.set_partition(blocked);
    Ok(Json(request).into_response())
}

/// `POST /v1/cluster/init`.
pub async fn init(
    State(state): State<Arc<NodeBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    let request: InitRequest = if body.as_ref().is_ok_and(|b| b.is_empty()) {
        InitRequest::default()
    } else {
        read_body(body)?
    };
    Ok(members(state.service.init(&request.members).await?))
}

/// Runs the membership change a request body describes.
async fn change<T: serde::de::DeserializeOwned>(
    state: &NodeBackend,
    body: Result<Bytes, BytesRejection>,
    change: impl FnOnce(T) -> MembershipChange,
) -> HttpResult {
    let request: T = read_body(body)?;
    Ok(members(
        state.service.change_membership(change(request)).await?,
    ))
}

/// `POST /v1/cluster/add-learner`.
pub async fn add_learner(
    State(state): State<Arc<NodeBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    change(&state, body, |r: AddLearnerRequest| {
        MembershipChange::AddLearner(r.into())
    })
    .await
}

/// `POST /v1/cluster/promote`.
pub async fn promote(
    State(state): State<Arc<NodeBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    change(&state, body, |r: NodeIdRequest| {
        MembershipChange::Promote(r.node_id)
    })
    .await
}

/// `POST /v1/cluster/remove`.
pub async fn remove(
    State(state): State<Arc<NodeBackend>>,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    change(&state, body, |r: NodeIdRequest| {
        MembershipChange::Remove(r.node_id)
    })
    .await
}

/// `POST /v1/cluster/snapshot`: builds a snapshot of this node now; its metadata.
pub async fn build_snapshot(State(state): State<Arc<NodeBackend>>) -> HttpResult {
    Ok(Json(state.service.build_snapshot().await?).into_response())
}

/// `GET /v1/cluster/snapshot`: this node's current snapshot file, streamed (a backup);
/// its metadata in `aspen-snapshot-*` headers. 404 when the node has none yet.
pub async fn download_snapshot(State(state): State<Arc<NodeBackend>>) -> HttpResult {
    let opened = state
        .service
        .state_machine()
        .open_current_snapshot()
        .map_err(|e| {
            HttpError::new(
                ErrorCode::Internal,
                format!("cannot open the snapshot: {e}"),
            )
        })?;
    let Some((meta, file)) = opened else {
        return Err(HttpError::new(
            ErrorCode::NotFound,
            "this node has no snapshot yet: POST /v1/cluster/snapshot builds one",
        ));
    };
    let bytes = file.len().await.map_err(|e| {
        HttpError::new(
            ErrorCode::Internal,
            format!("cannot read the snapshot: {e}"),
        )
    })?;
    let info = crate::service::snapshot_info(&meta, bytes);
    let body = axum::body::Body::from_stream(read_chunks(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, bytes.to_string()),
            (
                header::HeaderName::from_static("aspen-snapshot-id"),
                info.snapshot_id,
            ),
            (
                header::HeaderName::from_static("aspen-snapshot-last-log-index"),
                info.last_log_index.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// Bytes read from a snapshot file per chunk of a download.
const DOWNLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// The file's bytes as a stream of chunks, read as the client takes them.
fn read_chunks(
    file: crate::storage::snapshot::SnapshotFile,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::try_unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; DOWNLOAD_CHUNK_BYTES];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the cluster has a leader this node knows, so writes can go
/// through; 503 `no_leader` otherwise.
pub async fn readyz(State(state): State<Arc<NodeBackend>>) -> HttpResult {
    let leader = state.service.raft().metrics().borrow().current_leader;
    match leader {
        Some(leader) => Ok(Json(serde_json::json!({"status": "ready", "leader": leader})).into_response()),
        None => Err(HttpError::new(
            ErrorCode::NoLeader,
            "not ready: this node knows no leader (cluster not initialized, election under way, or quorum lost)",
        )),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<NodeBackend>>) -> Response {
    state.metrics.set_blob_puts(state.blobs.puts.in_flight());
    let text = state.metrics.render(
        state.service.raft(),
        state.service.state_machine().revision(),
        &state.service.refused_connections(),
        &state.service.replica_reports(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
