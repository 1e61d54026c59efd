//! `GET /v1/kv/...`: point reads (`{key, value, ..., cluster}`, or `?raw` bare bytes) and
//! prefix scans (`?prefix=true&limit=N&after=K`), with the freshness headers of the copy
//! that served them. Query parameters are parsed by hand so each mistake gets a precise
//! error naming the parameter.

use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Checked;
use super::range::Wanted;
use super::{
    finish, AnswerClusters, Freshness, HttpError, HttpResult, KvBackend, ReadAnswer, ReadOptions,
};
use crate::error::{ApiError, ErrorCode, ValidationError};
use crate::headers::{
    APPLIED_INDEX_HEADER, KNOWN_COMMIT_HEADER, LEADER_CONTACT_HEADER, REPLICA_LAG_REVISIONS_HEADER,
    REPLICA_LAG_SECONDS_HEADER, REVISION_HEADER,
};
use crate::json::{JsonEntry, ScanResponse};
use crate::limits::{
    DEFAULT_BLOCKING_WAIT_MS, DEFAULT_SCAN_LIMIT, MAX_READ_LAG_BOUND_MS, MAX_SCAN_LIMIT,
};
use crate::types::{Consistency, ReadRequest, ReadResult, ScanPage};
use crate::wire::KeyFilter;

/// The query parameters of `GET /v1/kv/...`.
#[derive(Default)]
struct ReadParams {
    /// `prefix=true`: a scan rather than a point read.
    prefix: bool,
    /// Scan page size; [`DEFAULT_SCAN_LIMIT`] when absent.
    limit: Option<usize>,
    /// Scan continuation: only keys strictly after this one.
    after: Option<String>,
    /// Linearizable (default) or stale.
    consistency: Consistency,
    /// `raw`: answer a point read with the bare value bytes.
    raw: bool,
    /// `max_lag`: for a stale read, the most staleness accepted, in ms.
    max_lag_ms: Option<u64>,
    /// `index`: a blocking read, answered once a read key changes after this revision.
    index: Option<u64>,
    /// `wait`: how long a blocking read waits, in ms.
    wait_ms: Option<u64>,
}

/// Parses a duration query parameter `field`: a number with a unit (`500ms`, `2s`, `1m`),
/// or a bare number of seconds; at most `max_ms`.
pub(super) fn parse_duration_ms(field: &str, value: &str, max_ms: u64) -> Result<u64, HttpError> {
    let bad = || {
        HttpError::from(ValidationError::field(
            field,
            format!("{value:?} is not a duration such as 500ms, 2s or 1m (at most {max_ms} ms)"),
        ))
    };
    let (digits, unit_ms) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000)
    } else {
        (value, 1_000)
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms > max_ms {
        return Err(bad());
    }
    Ok(ms)
}

impl ReadParams {
    fn options(&self) -> ReadOptions {
        ReadOptions {
            consistency: self.consistency,
            max_lag_ms: self.max_lag_ms,
        }
    }
}

pub(super) fn parse_bool(name: &str, value: &str) -> Result<bool, HttpError> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ValidationError::field(name, format!("{value:?} is not true or false")).into()),
    }
}

fn parse_consistency(value: &str) -> Result<Consistency, HttpError> {
    match value {
        "linearizable" => Ok(Consistency::Linearizable),
        "stale" => Ok(Consistency::Stale),
        _ => Err(ValidationError::field(
            "consistency",
            format!("{value:?}: use linearizable or stale"),
        )
        .into()),
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
            "consistency" => p.consistency = parse_consistency(&value)?,
            "max_lag" => {
                p.max_lag_ms = Some(parse_duration_ms("max_lag", &value, MAX_READ_LAG_BOUND_MS)?)
            }
            "index" => {
                let r: u64 = value.parse().map_err(|_| {
                    ValidationError::field("index", format!("{value:?} is not a revision"))
                })?;
                p.index = Some(r);
            }
            "wait" => p.wait_ms = Some(super::watch::parse_wait(&value)?),
            other => {
                return Err(ValidationError::field(
                    other,
                    "unknown query parameter; known: prefix, limit, after, consistency, \
                     max_lag, raw, index, wait",
                )
                .into())
            }
        }
    }
    if p.max_lag_ms.is_some() && p.consistency != Consistency::Stale {
        return Err(ValidationError::field(
            "max_lag",
            "bounds how stale a copy may be: use it with consistency=stale",
        )
        .into());
    }
    if p.wait_ms.is_some() && p.index.is_none() {
        return Err(ValidationError::field(
            "wait",
            "`wait` makes a blocking read: give the revision to wait past as `index`",
        )
        .into());
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

/// Adds the freshness headers of a read served by one cluster's copy.
fn with_freshness(mut response: Response, freshness: Option<&Freshness>) -> Response {
    let Some(f) = freshness else {
        return response;
    };
    let headers = response.headers_mut();
    headers.insert(REVISION_HEADER, HeaderValue::from(f.revision));
    if let Some(lag) = f.replica {
        headers.insert(
            REPLICA_LAG_REVISIONS_HEADER,
            HeaderValue::from(lag.revisions),
        );
        if let Some(ms) = lag.ms {
            let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                headers.insert(REPLICA_LAG_SECONDS_HEADER, value);
            }
        }
        return response;
    }
    let values = [
        (APPLIED_INDEX_HEADER, Some(f.applied_index)),
        (KNOWN_COMMIT_HEADER, Some(f.known_commit_index)),
        (LEADER_CONTACT_HEADER, f.since_leader_contact_ms),
    ];
    for (name, value) in values {
        if let Some(value) = value {
            headers.insert(name, HeaderValue::from(value));
        }
    }
    response
}

/// A 500 for an answer that does not fit its request (a bug in the backend).
fn mismatch(what: impl Into<String>) -> HttpError {
    ApiError::new(ErrorCode::Internal, what).into()
}

/// The JSON page, each entry named for its cluster, continuing from `next` when given.
fn scan_body(
    page: &ScanPage,
    clusters: &AnswerClusters,
    next: Option<String>,
) -> Result<ScanResponse, HttpError> {
    let mut body = match clusters {
        AnswerClusters::One(cluster) => ScanResponse::new(page, cluster),
        AnswerClusters::PerEntry(names) if names.len() == page.kvs.len() => ScanResponse {
            kvs: page
                .kvs
                .iter()
                .zip(names)
                .map(|(entry, cluster)| JsonEntry::new(entry, cluster))
                .collect(),
            more: page.more,
            next: page.next().map(str::to_string),
        },
        AnswerClusters::PerEntry(names) => {
            return Err(mismatch(format!(
                "scan answered with {} cluster names for {} entries",
                names.len(),
                page.kvs.len()
            )))
        }
    };
    if next.is_some() {
        body.next = next;
    }
    Ok(body)
}

async fn scan<B: KvBackend>(backend: &B, prefix: String, p: ReadParams) -> HttpResult {
    let options = p.options();
    let request = ReadRequest::Scan {
        prefix,
        after: p.after,
        limit: p.limit.unwrap_or(DEFAULT_SCAN_LIMIT),
    };
    let ReadAnswer {
        result,
        clusters,
        freshness,
        next,
    } = backend.read(request, options).await?;
    let ReadResult::Scan(page) = result else {
        return Err(mismatch("scan answered with a point read"));
    };
    let body = scan_body(&page, &clusters, next)?;
    Ok(with_freshness(
        Json(body).into_response(),
        freshness.as_ref(),
    ))
}

async fn point_read<B: KvBackend>(
    backend: &B,
    key: String,
    p: ReadParams,
    headers: &HeaderMap,
) -> HttpResult {
    let request = ReadRequest::Get { key: key.clone() };
    let ReadAnswer {
        result,
        clusters,
        freshness,
        ..
    } = backend.read(request, p.options()).await?;
    let ReadResult::Get(entry) = result else {
        return Err(mismatch("point read answered with a scan"));
    };
    let AnswerClusters::One(cluster) = clusters else {
        return Err(mismatch("point read answered with per-entry clusters"));
    };
    let response = match entry {
        None => HttpError::new(
            ErrorCode::NotFound,
            format!("key {key:?} not found in cluster {cluster}"),
        )
        .into_response(),
        Some(entry) if p.raw => raw(backend, &key, &cluster, entry, headers).await?,
        Some(entry) => Json(JsonEntry::new(&entry, &cluster)).into_response(),
    };
    Ok(with_freshness(response, freshness.as_ref()))
}

async fn read<B: KvBackend>(
    backend: &B,
    key: String,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> HttpResult {
    let p = parse_params(pairs)?;
    if let Some(index) = p.index.filter(|&i| i > 0) {
        let filter = KeyFilter {
            key: key.clone(),
            prefix: p.prefix,
        };
        let wait = p.wait_ms.unwrap_or(DEFAULT_BLOCKING_WAIT_MS);
        super::watch::wait_for_change(backend, filter, index, wait).await?;
    }
    if p.prefix {
        scan(backend, key, p).await
    } else {
        point_read(backend, key, p, headers).await
    }
}

/// The bare bytes of `entry` (`?raw`), or the range `headers` ask for: from the entry when
/// inline, streamed from the backend when a blob.
async fn raw<B: KvBackend>(
    backend: &B,
    key: &str,
    cluster: &str,
    entry: crate::KvEntry,
    headers: &HeaderMap,
) -> HttpResult {
    let size = entry.value_len();
    let wanted = Wanted::of(headers, size);
    if wanted == Wanted::Unsatisfiable {
        return Ok(super::range::unsatisfiable(key, size));
    }
    let (status, head) = wanted.head(size);
    let (start, len) = wanted.span(size);
    let body = match entry.blob {
        None => {
            let value = bytes::Bytes::from(entry.value);
            axum::body::Body::from(value.slice(start as usize..(start + len) as usize))
        }
        Some(blob) => {
            let stream = backend.read_blob(key, cluster, blob, (start, len)).await?;
            axum::body::Body::from_stream(stream)
        }
    };
    Ok((status, head, body).into_response())
}

/// The key from the path, or a JSON error when it is not UTF-8 (keys are UTF-8).
pub(super) fn path_key(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    path.map(|Path(key)| key).map_err(|rejection| {
        ValidationError::field(
            "key",
            format!("the key in the path must be percent-encoded UTF-8: {rejection}"),
        )
        .into()
    })
}

/// The query parameters, or a JSON error when they cannot be decoded.
pub(super) fn query_pairs(
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

/// `GET /v1/kv/{key}`: a point read, or a scan with `?prefix=true`.
pub(super) async fn get<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let scan = query
        .as_ref()
        .is_ok_and(|Query(q)| q.iter().any(|(k, v)| k == "prefix" && v != "false"));
    let result =
        async { read(&backend, path_key(path)?, query_pairs(query)?, &headers).await }.await;
    finish(&backend, if scan { "scan" } else { "get" }, start, result)
}

/// `GET /v1/kv/`: a scan of everything (`?prefix=true`); a point read of the empty key is
/// refused.
pub(super) async fn get_root<B: KvBackend>(
    backend: Checked<B>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let result = async { read(&backend, String::new(), query_pairs(query)?, &headers).await }.await;
    finish(&backend, "scan", start, result)
}
