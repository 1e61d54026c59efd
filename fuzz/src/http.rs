//! The HTTP harness: the KV app a node or router serves (`aspen_api::server::kv_routes`
//! behind `auth::guard`, with the `not_found` fallback), over a backend that records
//! what the handlers ask of it and checks it as a node would. One request at a time goes
//! through the app as hyper would hand it over (`tower::ServiceExt::oneshot`), on a
//! current-thread runtime, with no socket: the bodies run thousands of requests a second.
//!
//! Two apps are served: one without `[auth]`, and one whose policy lists two tokens,
//! [`READ_TOKEN`] (reads under `r/`) and [`WRITE_TOKEN`] (reads and writes under `w/`).
//! Every answer passes [`check_answer`], and what reached the backend passes
//! [`check_grants`].

pub mod body;
pub mod request;

use std::sync::{Arc, Mutex};

use aspen_api::error::{ApiError, ErrorCode};
use aspen_api::json::ErrorBody;
use aspen_api::lease::{validate_ttl, LeaseAnswer, LeaseOp};
use aspen_api::server::auth::{self, Policy, PolicyCell, TokenGrants};
use aspen_api::server::{
    kv_routes, not_found, AnswerClusters, BlobPut, KvBackend, LeaseReply, ReadAnswer, ReadOptions,
    ValueStream, WatchStream, Written,
};
use aspen_api::types::{KvEntry, ReadRequest, ReadResult, ScanPage, WriteOutcome, WriteResult};
use aspen_api::watch::WatchRequest;
use aspen_api::{BlobRef, Command};
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

/// A token of the guarded app that may read keys under `r/`.
pub const READ_TOKEN: &str = "fuzz-read";
/// A token of the guarded app that may read and write keys under `w/`.
pub const WRITE_TOKEN: &str = "fuzz-write";

/// The cluster name the recording backend answers with.
const CLUSTER: &str = "fuzz-1";

/// What a handler asked of the backend.
#[derive(Debug, Clone)]
pub enum Seen {
    /// A write command.
    Write(Command),
    /// A read.
    Read(ReadRequest),
    /// A watch (or a blocking read's wait).
    Watch(WatchRequest),
    /// A lease operation.
    Lease(LeaseOp),
}

/// A backend that records every call and answers it as a healthy one-cluster node would,
/// after the checks a node makes (`Command::validate`, `ReadRequest::validate`, the TTL
/// range). Watches are refused as compacted, so no request waits.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    fn record(&self, seen: Seen) {
        self.seen.lock().expect("recorder lock").push(seen);
    }
}

fn entry(key: String) -> KvEntry {
    KvEntry {
        key,
        value: b"v".to_vec(),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
        blob: None,
    }
}

impl KvBackend for Recorder {
    async fn write(&self, command: Command) -> Result<Written, ApiError> {
        self.record(Seen::Write(command.clone()));
        command.validate()?;
        let result = WriteResult {
            revision: 1,
            outcome: WriteOutcome::Applied { deleted: 0 },
        };
        let cluster = CLUSTER.to_string();
        Ok(Written { result, cluster })
    }

    async fn read(&self, request: ReadRequest, _: ReadOptions) -> Result<ReadAnswer, ApiError> {
        self.record(Seen::Read(request.clone()));
        request.validate()?;
        let result = match request {
            ReadRequest::Get { key } => ReadResult::Get(Some(entry(key))),
            ReadRequest::Scan { prefix, .. } => ReadResult::Scan(ScanPage {
                kvs: vec![entry(format!("{prefix}x"))],
                more: true,
            }),
        };
        Ok(ReadAnswer {
            result,
            clusters: AnswerClusters::One(CLUSTER.to_string()),
            freshness: None,
            next: None,
        })
    }

    async fn watch(&self, request: WatchRequest) -> Result<WatchStream, ApiError> {
        self.record(Seen::Watch(request));
        Err(ApiError::new(
            ErrorCode::Compacted,
            "the fuzz backend keeps no feed",
        ))
    }

    async fn lease(&self, op: LeaseOp) -> Result<LeaseReply, ApiError> {
        self.record(Seen::Lease(op.clone()));
        let lease = match &op {
            LeaseOp::Grant { ttl_secs, .. } => {
                validate_ttl(*ttl_secs, 1)?;
                1
            }
            LeaseOp::KeepAlive(id) | LeaseOp::Get(id) | LeaseOp::Revoke(id) => id.id,
        };
        let answer = LeaseAnswer {
            lease,
            granted_ttl_ms: 10_000,
            remaining_ms: 10_000,
            keys: vec![],
            revision: 0,
            deleted: 0,
        };
        let cluster = CLUSTER.to_string();
        Ok(LeaseReply { answer, cluster })
    }

    /// Records the write a node would propose for the declared length, without reading
    /// the body (a fuzz input is far below the inline limit: this runs only when its
    /// declared length is above it).
    async fn put_blob(&self, put: BlobPut) -> Result<Written, ApiError> {
        let command = Command::SetBlob {
            key: put.key,
            blob: BlobRef {
                hash: [0; 32],
                size: put.declared.unwrap_or(0),
            },
            preconditions: vec![],
        };
        self.write(command).await
    }

    async fn read_blob(
        &self,
        _key: &str,
        _cluster: &str,
        _blob: BlobRef,
        _range: (u64, u64),
    ) -> Result<ValueStream, ApiError> {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the fuzz backend holds no value as a blob",
        ))
    }

    fn observe(&self, _op: &'static str, _status: u16, _seconds: f64) {}
}

/// The two apps and the runtime they run on, one set per thread.
struct Harness {
    runtime: tokio::runtime::Runtime,
    recorder: Arc<Recorder>,
    open: axum::Router,
    guarded: axum::Router,
}

fn grants(token: &str, read: &str, write: &str) -> Arc<TokenGrants> {
    Arc::new(TokenGrants {
        name: token.to_string(),
        sha256: auth::token_sha256(token),
        read: [read]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(Into::into)
            .collect(),
        write: [write]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(Into::into)
            .collect(),
        admin: false,
    })
}

impl Harness {
    fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let recorder = Arc::new(Recorder::default());
        let app = || kv_routes(recorder.clone()).fallback(not_found);
        let policy = Policy {
            open_paths: aspen_config::DEFAULT_OPEN_PATHS.map(String::from).to_vec(),
            tokens: vec![grants(READ_TOKEN, "r/", ""), grants(WRITE_TOKEN, "", "w/")],
        };
        Harness {
            open: auth::guard(app(), PolicyCell::default()),
            guarded: auth::guard(app(), PolicyCell::new(Some(policy))),
            runtime,
            recorder,
        }
    }
}

thread_local! {
    static HARNESS: Harness = Harness::new();
}

/// One request's answer and what the backend was asked while serving it.
#[derive(Debug)]
pub struct Exchange {
    /// The HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
    /// The backend's calls, in order.
    pub seen: Vec<Seen>,
}

/// Sends `request` through the app without `[auth]`, or (`guarded`) the one with tokens.
pub fn send(request: Request<Body>, guarded: bool) -> Exchange {
    HARNESS.with(|h| {
        h.recorder.seen.lock().expect("recorder lock").clear();
        let app = if guarded { &h.guarded } else { &h.open }.clone();
        let (status, body) = h.runtime.block_on(async move {
            let response = app.oneshot(request).await.expect("the app is infallible");
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("an answer's body is readable");
            (status, body.to_vec())
        });
        let seen = std::mem::take(&mut *h.recorder.seen.lock().expect("recorder lock"));
        Exchange { status, body, seen }
    })
}

/// Every answer: never a 500 (the backend never fails, so a 500 is the handler's own
/// fault), and every error is the JSON error body with a message, sent with the status
/// of its code. The one exception is axum's own 405 for a method a path does not take
/// (an empty body and an `Allow` header): the API has no error code for it yet.
pub fn check_answer(exchange: &Exchange) {
    let text = String::from_utf8_lossy(&exchange.body);
    assert_ne!(exchange.status, 500, "a handler failed: {text}");
    if exchange.status >= 400 && exchange.status != 405 {
        let body: ErrorBody = serde_json::from_slice(&exchange.body).unwrap_or_else(|e| {
            panic!(
                "error {} is not the JSON error body ({e}): {text}",
                exchange.status
            )
        });
        assert_eq!(body.error.code.http_status(), exchange.status, "{text}");
        assert!(!body.error.message.is_empty(), "an error without a message");
    }
}

/// Who the `Authorization` header makes the caller of the guarded app, by the documented
/// rule (`Bearer TOKEN`): `Some(token)` for a listed token, `None` for anyone else.
pub fn caller(authorization: Option<&[u8]>) -> Option<&'static str> {
    let text = std::str::from_utf8(authorization?).ok()?;
    let token = text.strip_prefix("Bearer ")?.trim();
    [READ_TOKEN, WRITE_TOKEN].into_iter().find(|t| *t == token)
}

/// What reached the guarded app's backend at `path` is what the caller's token grants:
/// nothing without a listed token (and a 401, unless the path is one of the open paths,
/// none of which is a KV route); reads under `r/` for [`READ_TOKEN`]; reads, writes and
/// leases under `w/` for [`WRITE_TOKEN`].
pub fn check_grants(caller: Option<&str>, path: &str, exchange: &Exchange) {
    let Some(token) = caller else {
        let seen = &exchange.seen;
        assert!(seen.is_empty(), "no token, yet {seen:?}");
        if !aspen_config::DEFAULT_OPEN_PATHS.contains(&path) {
            assert_eq!(exchange.status, 401, "{path} without a token");
        }
        return;
    };
    let prefix = if token == READ_TOKEN { "r/" } else { "w/" };
    let may_write = token == WRITE_TOKEN;
    let under = |key: &str| key.starts_with(prefix);
    for seen in &exchange.seen {
        let allowed = match seen {
            Seen::Read(ReadRequest::Get { key }) => under(key),
            Seen::Read(ReadRequest::Scan { prefix, .. }) => under(prefix),
            Seen::Watch(request) => under(&request.filter.key),
            Seen::Write(command) => may_write && command.keys().into_iter().all(under),
            Seen::Lease(LeaseOp::Grant { key, .. }) => {
                may_write && key.as_deref().is_none_or(under)
            }
            Seen::Lease(_) => may_write,
        };
        assert!(allowed, "token {token} reached the backend with {seen:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Body::from(body.to_string())).unwrap()
    }

    /// The properties are not vacuous: requests reach the backend as they should.
    #[test]
    fn the_harness_serves_requests_through_the_real_app_and_its_tokens() {
        let put = send(request("PUT", "/v1/kv/w%2Fk", None, "v"), false);
        assert_eq!(put.status, 200, "{:?}", String::from_utf8_lossy(&put.body));
        assert!(matches!(&put.seen[..], [Seen::Write(Command::Set { key, .. })] if key == "w/k"));

        let scan = send(
            request("GET", "/v1/kv/r/?prefix=true&after=r%2Fa", None, ""),
            false,
        );
        assert_eq!(scan.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&scan.body).unwrap();
        assert_eq!(body["next"], "r/x");

        let anonymous = send(request("GET", "/v1/kv/r/a", None, ""), true);
        check_grants(None, "/v1/kv/r/a", &anonymous);
        let read = send(request("GET", "/v1/kv/r/a", Some(READ_TOKEN), ""), true);
        assert_eq!(read.status, 200);
        check_grants(Some(READ_TOKEN), "/v1/kv/r/a", &read);
        let refused = send(request("PUT", "/v1/kv/r/a", Some(READ_TOKEN), "v"), true);
        assert_eq!(refused.status, 403);
        assert!(refused.seen.is_empty());
        check_answer(&refused);

        let cas = r#"{"key":"w/k","expected":null,"new_value":"v"}"#;
        let written = send(request("POST", "/v1/cas", Some(WRITE_TOKEN), cas), true);
        assert_eq!(written.status, 200);
        check_grants(Some(WRITE_TOKEN), "/v1/cas", &written);
    }
}
