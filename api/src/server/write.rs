//! The write routes: `PUT`/`DELETE /v1/kv/{key}` (the body is the raw value; `?lease=ID`
//! attaches the key to a lease) and the JSON
//! commands `POST /v1/batch`, `/v1/cas`, `/v1/cad`, `/v1/txn`. A failed precondition is
//! answered 409 with the key's actual state (`actual`, CAS and CAD) or the first failed
//! precondition (`failed`, txn).

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;

use super::auth::Checked;
use super::error::body_bytes;
use super::read::{path_key, query_pairs};
use super::{finish, parse_json, BlobPut, HttpError, HttpResult, KvBackend, ValueStream, Written};
use crate::command::Command;
use crate::error::{ErrorCode, ValidationError};
use crate::json::{
    with_leases, BatchRequest, CadRequest, CasRequest, ErrorBody, TxnRequest, WriteResponse,
};
use crate::lease::LeaseId;
use crate::limits::{MAX_BLOB_VALUE_BYTES, MAX_INLINE_VALUE_BYTES};
use crate::types::WriteOutcome;

/// The success body of a write, without the delete counts.
fn write_response(written: &Written) -> WriteResponse {
    WriteResponse {
        revision: written.result.revision,
        cluster: written.cluster.clone(),
        deleted: None,
        deleted_count: None,
    }
}

/// The query of a `PUT`: only `lease=ID` is known.
fn put_lease(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Option<LeaseId>, HttpError> {
    let mut lease = None;
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "lease" => lease = Some(LeaseId::parse_field("lease", &value)?),
            other => {
                return Err(ValidationError::field(
                    other,
                    "unknown query parameter of a PUT: the only one is `lease`",
                )
                .into())
            }
        }
    }
    Ok(lease)
}

async fn put_value<B: KvBackend>(
    backend: &B,
    key: String,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> HttpResult {
    let lease = put_lease(query)?;
    let written = match read_value(headers, body).await? {
        Value::Inline(value) => {
            let leases = lease.map(|l| vec![(key.clone(), l)]).unwrap_or_default();
            let command = with_leases(Command::Set { key, value }, leases)?;
            backend.write(command).await?
        }
        Value::Blob { declared, body } => {
            let put = BlobPut {
                key,
                lease,
                declared,
                body,
            };
            backend.put_blob(put).await?
        }
    };
    if let WriteOutcome::LeaseFailed(failure) = &written.result.outcome {
        return Err(failure.to_error(&written.cluster).into());
    }
    Ok(Json(write_response(&written)).into_response())
}

/// A `PUT`'s value: whole, when it fits inline, or streaming from its first byte.
enum Value {
    Inline(Bytes),
    Blob {
        declared: Option<u64>,
        body: ValueStream,
    },
}

/// Reads a `PUT` body: a declared length over [`MAX_BLOB_VALUE_BYTES`] is refused before
/// any byte is read; a body that ends within [`MAX_INLINE_VALUE_BYTES`] is a value kept
/// inline; a longer one (declared, or found longer while reading) streams on, starting
/// with what was read.
async fn read_value(headers: &HeaderMap, body: Body) -> Result<Value, HttpError> {
    let declared = declared_length(headers)?;
    if let Some(size) = declared.filter(|&size| size > MAX_BLOB_VALUE_BYTES) {
        return Err(ValidationError::BlobTooLarge {
            size,
            max: MAX_BLOB_VALUE_BYTES,
        }
        .into());
    }
    let inline = MAX_INLINE_VALUE_BYTES as u64;
    let mut stream = body.into_data_stream();
    let mut head: Vec<Bytes> = Vec::new();
    let mut read = 0u64;
    if declared.is_none_or(|size| size <= inline) {
        loop {
            match stream.next().await {
                None => return Ok(Value::Inline(concat(head, read))),
                Some(Ok(chunk)) => {
                    read += chunk.len() as u64;
                    head.push(chunk);
                    if read > inline {
                        break;
                    }
                }
                Some(Err(e)) => return Err(body_error(&e)),
            }
        }
    }
    let rest =
        stream.map(|chunk| chunk.map_err(|e| format!("could not read the request body: {e}")));
    let body = futures::stream::iter(head.into_iter().map(Ok))
        .chain(rest)
        .boxed();
    Ok(Value::Blob { declared, body })
}

/// The chunks of a body joined: shared, not copied, when it came in one chunk.
fn concat(mut chunks: Vec<Bytes>, len: u64) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop().expect("one chunk");
    }
    let mut joined = Vec::with_capacity(len as usize);
    for chunk in &chunks {
        joined.extend_from_slice(chunk);
    }
    Bytes::from(joined)
}

fn body_error(e: &dyn std::fmt::Display) -> HttpError {
    HttpError::new(
        ErrorCode::BadRequest,
        format!("could not read the request body: {e}"),
    )
}

/// The body's `Content-Length`, when declared.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    parsed.map(Some).ok_or_else(|| {
        ValidationError::field("Content-Length", "not a byte count: send the body's length").into()
    })
}

/// `PUT /v1/kv/{key}[?lease=ID]`: body = the raw value, streamed into the blob store when
/// it is above the inline limit.
pub(super) async fn put<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let result = async { put_value(&backend, path_key(path)?, query, &headers, body).await }.await;
    finish(&backend, "put", start, result)
}

/// `PUT /v1/kv/`: refused by validation, keys are not empty.
pub(super) async fn put_root<B: KvBackend>(
    backend: Checked<B>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let result = put_value(&backend, String::new(), query, &headers, body).await;
    finish(&backend, "put", start, result)
}

async fn delete_key<B: KvBackend>(backend: &B, key: String) -> HttpResult {
    let written = backend.write(Command::Delete { key }).await?;
    let mut response = write_response(&written);
    response.deleted =
        Some(matches!(written.result.outcome, WriteOutcome::Applied { deleted } if deleted > 0));
    Ok(Json(response).into_response())
}

/// `DELETE /v1/kv/{key}`.
pub(super) async fn delete<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let start = Instant::now();
    let result = async { delete_key(&backend, path_key(path)?).await }.await;
    finish(&backend, "delete", start, result)
}

/// `DELETE /v1/kv/`: refused by validation, keys are not empty.
pub(super) async fn delete_root<B: KvBackend>(backend: Checked<B>) -> Response {
    let start = Instant::now();
    let result = delete_key(&backend, String::new()).await;
    finish(&backend, "delete", start, result)
}

/// Runs a command from a JSON body and renders its outcome.
async fn run_json<B: KvBackend>(
    backend: &B,
    command: Result<Command, ValidationError>,
    is_txn: bool,
) -> HttpResult {
    let command = command?;
    if command.is_lease_command() {
        return Err(
            ValidationError::field("command", "lease commands go through /v1/lease").into(),
        );
    }
    let single_delete = matches!(command, Command::CompareAndDelete { .. });
    let written = backend.write(command).await?;
    match &written.result.outcome {
        WriteOutcome::Applied { deleted } => {
            let mut response = write_response(&written);
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
        WriteOutcome::LeaseFailed(failure) => Err(failure.to_error(&written.cluster).into()),
    }
}

/// A JSON request body that becomes one command.
trait JsonCommand: serde::de::DeserializeOwned {
    /// The operation's name in metrics.
    const OP: &'static str;
    /// Whether a failure reports `failed` (txn-style) rather than `actual`, and success
    /// reports `deleted_count`.
    const MULTI: bool;
    /// The command the body describes, validated.
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
async fn json<T: JsonCommand, B: KvBackend>(
    backend: Checked<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let result = async {
        let request: T = parse_json(&body_bytes(body)?)?;
        run_json(&backend, request.into_command(), T::MULTI).await
    }
    .await;
    finish(&backend, T::OP, start, result)
}

/// `POST /v1/batch`.
pub(super) async fn batch<B: KvBackend>(
    backend: Checked<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json::<BatchRequest, B>(backend, body).await
}

/// `POST /v1/cas`.
pub(super) async fn cas<B: KvBackend>(
    backend: Checked<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json::<CasRequest, B>(backend, body).await
}

/// `POST /v1/cad`.
pub(super) async fn cad<B: KvBackend>(
    backend: Checked<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json::<CadRequest, B>(backend, body).await
}

/// `POST /v1/txn`.
pub(super) async fn txn<B: KvBackend>(
    backend: Checked<B>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json::<TxnRequest, B>(backend, body).await
}
