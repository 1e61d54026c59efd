//! Handlers of the status, membership, health and metrics routes.

use std::sync::Arc;

use aspen_api::admin::{InitRequest, MembershipResponse, NodeIdRequest, NodeStatus};
use aspen_api::server::{parse_json, HttpError, HttpResult};
use aspen_api::wire::MembershipChange;
use aspen_api::ErrorCode;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ServerState;

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

fn members(members: Vec<aspen_api::admin::MemberStatus>) -> Response {
    Json(MembershipResponse { members }).into_response()
}

/// `GET /v1/status`.
pub async fn status(State(state): State<Arc<NodeBackend>>) -> Json<NodeStatus> {
    let service = &state.service;
    let m = service.raft().metrics().borrow().clone();
    let raft_state = match m.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    Json(NodeStatus {
        role: "node".into(),
        cluster: service.cluster.clone(),
        node_id: service.node_id,
        endpoint_id: service.endpoint_id(),
        raft_state: raft_state.into(),
        leader: m.current_leader,
        term: m.current_term,
        applied_revision: service.state_machine().revision(),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        initialized: m.membership_config.nodes().count() > 0,
        members: service.members(),
    })
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
    change(&state, body, MembershipChange::AddLearner).await
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
    let text = state.metrics.render(
        state.service.raft(),
        state.service.state_machine().revision(),
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
