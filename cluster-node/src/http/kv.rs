//! Handlers of the key-value routes.

use std::time::Instant;

use aspen_api::json::{
    BatchRequest, CadRequest, CasRequest, ErrorBody, JsonEntry, ScanResponse, TxnRequest,
    WriteResponse,
};
use aspen_api::limits::{DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};
use aspen_api::types::ReadResponse;
use aspen_api::{
    ApiError, Command, Consistency, ErrorCode, ReadRequest, ReadResult, ValidationError,
    WriteOutcome, WriteResult,
};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{finish, parse_json, AppState, HttpError, HttpResult};

/// Response header carrying the serving node's applied revision on every read.
pub const APPLIED_REVISION_HEADER: &str = "aspen-applied-revision";

/// The query parameters of `GET /v1/kv/...`, parsed by hand for precise errors.
#[derive(Default)]
struct ReadParams {
    prefix: bool,
    limit: Option<usize>,
    after: Option<String>,
    consistency: Consistency,
    raw: bool,
}

fn parse_bool(name: &str, value: &str) -> Result<bool, HttpError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ValidationError::field(name, format!("{value:?} is not true or false")).into()),
    }
}

fn parse_params(pairs: Vec<(String, String)>) -> Result<ReadParams, HttpError> {
    let mut p = ReadParams::default();
    for (name, value) in pairs {
        match name.as_str() {
            "prefix" => p.prefix = parse_bool("prefix", &value)?,
            "raw" => p.raw = parse_bool("raw", &value)?,
            "after" => p.after = Some(value),
            "limit" => {
                let n: usize = value.parse().map_err(|_| {
                    ValidationError::field(
                        "limit",
                        format!("{value:?} is not a number from 1 to {MAX_SCAN_LIMIT}"),
                    )
                })?;
                p.limit = Some(n);
            }
            "consistency" => {
                p.consistency = match value.as_str() {
                    "linearizable" => Consistency::Linearizable,
                    "stale" => Consistency::Stale,
                    _ => {
                        return Err(ValidationError::field(
                            "consistency",
                            format!("{value:?}: use linearizable or stale"),
                        )
                        .into())
                    }
                }
            }
            other => {
                return Err(ValidationError::field(
                    other,
                    "unknown query parameter; known: prefix, limit, after, consistency, raw",
                )
                .into())
            }
        }
    }
    if !p.prefix && (p.limit.is_some() || p.after.is_some()) {
        return Err(ValidationError::field(
            "limit",
            "`limit` and `after` apply to scans: add prefix=true",
        )
        .into());
    }
    Ok(p)
}

/// Response header: the highest revision the serving node knew to be committed.
pub const KNOWN_COMMIT_HEADER: &str = "aspen-known-commit-revision";
/// Response header: milliseconds since the serving node last heard from a leader.
pub const LEADER_CONTACT_HEADER: &str = "aspen-leader-contact-ms";

/// Adds the freshness headers of a read.
fn with_revision(mut response: Response, read: &ReadResponse) -> Response {
    let headers = response.headers_mut();
    let values = [
        (APPLIED_REVISION_HEADER, Some(read.applied_revision)),
        (KNOWN_COMMIT_HEADER, Some(read.known_commit_revision)),
        (LEADER_CONTACT_HEADER, read.since_leader_contact_ms),
    ];
    for (name, value) in values {
        if let Some(value) = value {
            headers.insert(name, axum::http::HeaderValue::from(value));
        }
    }
    response
}

async fn read(state: &AppState, key: String, pairs: Vec<(String, String)>) -> HttpResult {
    let p = parse_params(pairs)?;
    let cluster = &state.service.cluster;
    if p.prefix {
        let limit = p.limit.unwrap_or(DEFAULT_SCAN_LIMIT);
        let request = ReadRequest::Scan {
            prefix: key,
            after: p.after,
            limit,
        };
        let answer = state.service.read(request, p.consistency).await?;
        let ReadResult::Scan(page) = &answer.result else {
            return Err(
                ApiError::new(ErrorCode::Internal, "scan answered with a point read").into(),
            );
        };
        return Ok(with_revision(
            Json(ScanResponse::new(page, cluster)).into_response(),
            &answer,
        ));
    }
    let answer = state
        .service
        .read(ReadRequest::Get { key: key.clone() }, p.consistency)
        .await?;
    let ReadResult::Get(entry) = &answer.result else {
        return Err(ApiError::new(ErrorCode::Internal, "point read answered with a scan").into());
    };
    let Some(entry) = entry else {
        let body = ErrorBody::new(
            ErrorCode::NotFound,
            format!("key {key:?} not found in cluster {cluster}"),
        );
        return Ok(with_revision(HttpError(body).into_response(), &answer));
    };
    let response = if p.raw {
        (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            entry.value.clone(),
        )
            .into_response()
    } else {
        Json(JsonEntry::new(entry, cluster)).into_response()
    };
    Ok(with_revision(response, &answer))
}

/// The key from the path, or a JSON error when it is not UTF-8 (keys are UTF-8).
fn path_key(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    path.map(|Path(key)| key).map_err(|rejection| {
        ValidationError::field(
            "key",
            format!("the key in the path must be percent-encoded UTF-8: {rejection}"),
        )
        .into()
    })
}

/// The query parameters, or a JSON error when they cannot be decoded.
fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, HttpError> {
    query.map(|Query(pairs)| pairs).map_err(|rejection| {
        ValidationError::field(
            "query",
            format!("the query string must be percent-encoded UTF-8: {rejection}"),
        )
        .into()
    })
}

/// `GET /v1/kv/{key}`.
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let start = Instant::now();
    let scan = query
        .as_ref()
        .is_ok_and(|Query(q)| q.iter().any(|(k, v)| k == "prefix" && v != "false"));
    let result = async { read(&state, path_key(path)?, query_pairs(query)?).await }.await;
    finish(&state, if scan { "scan" } else { "get" }, start, result)
}

/// `GET /v1/kv/`: a scan of everything (`?prefix=true`); a point read of the empty key is refused.
pub async fn get_root(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let start = Instant::now();
    let result = async { read(&state, String::new(), query_pairs(query)?).await }.await;
    finish(&state, "scan", start, result)
}

fn write_response(state: &AppState, result: &WriteResult) -> WriteResponse {
    WriteResponse {
        revision: result.revision,
        cluster: state.service.cluster.clone(),
        deleted: None,
        deleted_count: None,
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, HttpError> {
    body.map_err(|rejection| {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::TooLarge
        } else {
            ErrorCode::BadRequest
        };
        let message = match code {
            ErrorCode::TooLarge => {
                format!("request body is larger than the limit for this endpoint: {rejection}")
            }
            _ => format!("could not read the request body: {rejection}"),
        };
        HttpError(ErrorBody::new(code, message))
    })
}

async fn put_value(
    state: &AppState,
    key: String,
    body: Result<Bytes, BytesRejection>,
) -> HttpResult {
    let value = body_bytes(body)?.to_vec();
    let result = state.service.write(Command::Set { key, value }).await?;
    Ok(Json(write_response(state, &result)).into_response())
}

/// `PUT /v1/kv/{key}`: body = the raw value.
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let result = async { put_value(&state, path_key(path)?, body).await }.await;
    finish(&state, "put", start, result)
}

/// `PUT /v1/kv/`: refused, keys are not empty.
pub async fn put_root(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let result = put_value(&state, String::new(), body).await;
    finish(&state, "put", start, result)
}

async fn delete_key(state: &AppState, key: String) -> HttpResult {
    let result = state.service.write(Command::Delete { key }).await?;
    let mut response = write_response(state, &result);
    response.deleted =
        Some(matches!(result.outcome, WriteOutcome::Applied { deleted } if deleted > 0));
    Ok(Json(response).into_response())
}

/// `DELETE /v1/kv/{key}`.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let start = Instant::now();
    let result = async { delete_key(&state, path_key(path)?).await }.await;
    finish(&state, "delete", start, result)
}

/// `DELETE /v1/kv/`: refused, keys are not empty.
pub async fn delete_root(State(state): State<AppState>) -> Response {
    let start = Instant::now();
    let result = delete_key(&state, String::new()).await;
    finish(&state, "delete", start, result)
}

/// Runs a command from a JSON body and renders its outcome.
async fn run_json(
    state: &AppState,
    command: Result<Command, ValidationError>,
    is_txn: bool,
) -> HttpResult {
    let command = command?;
    let single_delete = matches!(command, Command::CompareAndDelete { .. });
    let result = state.service.write(command).await?;
    match &result.outcome {
        WriteOutcome::Applied { deleted } => {
            let mut response = write_response(state, &result);
            if single_delete {
                response.deleted = Some(*deleted > 0);
            } else if is_txn {
                response.deleted_count = Some(*deleted);
            }
            Ok(Json(response).into_response())
        }
        WriteOutcome::PreconditionFailed(failure) => {
            let body = ErrorBody::precondition_failed(failure, is_txn);
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
    }
}

/// A JSON request body that becomes one command.
trait JsonCommand: serde::de::DeserializeOwned {
    /// The operation's name in metrics.
    const OP: &'static str;
    /// Whether a failure reports `failed` (txn-style) rather than `actual`, and success
    /// reports `deleted_count`.
    const MULTI: bool;
    fn into_command(self) -> Result<Command, ValidationError>;
}

macro_rules! json_command {
    ($request:ty, $op:literal, $multi:literal) => {
        impl JsonCommand for $request {
            const OP: &'static str = $op;
            const MULTI: bool = $multi;
            fn into_command(self) -> Result<Command, ValidationError> {
                <$request>::into_command(self)
            }
        }
    };
}

json_command!(BatchRequest, "batch", true);
json_command!(CasRequest, "cas", false);
json_command!(CadRequest, "cad", false);
json_command!(TxnRequest, "txn", true);

/// Parses a `T` from the body, runs it, and records it in the metrics.
async fn json<T: JsonCommand>(state: AppState, body: Result<Bytes, BytesRejection>) -> Response {
    let start = Instant::now();
    let result = async {
        let request: T = parse_json(&body_bytes(body)?)?;
        run_json(&state, request.into_command(), T::MULTI).await
    }
    .await;
    finish(&state, T::OP, start, result)
}

/// `POST /v1/batch`.
pub async fn batch(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    json::<BatchRequest>(state, body).await
}

/// `POST /v1/cas`.
pub async fn cas(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    json::<CasRequest>(state, body).await
}

/// `POST /v1/cad`.
pub async fn cad(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    json::<CadRequest>(state, body).await
}

/// `POST /v1/txn`.
pub async fn txn(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    json::<TxnRequest>(state, body).await
}
