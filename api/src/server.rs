//! The serving side of the public HTTP KV API (DESIGN.md, "HTTP API"), shared by the
//! cluster node and the router so both answer byte for byte alike. Compiled with the
//! `server` feature (axum).
//!
//! The handlers parse paths, queries and bodies into [`Command`]s and [`ReadRequest`]s,
//! hand them to a [`KvBackend`] (a node's KV service, or the router's cluster clients),
//! and render the answers or a JSON error. Bodies are read as bytes and parsed here, so
//! every malformed body gets an Aspen error naming the field, never a framework default.
//!
//! - [`auth`]: bearer tokens and their grants; [`auth::guard`] wraps every app, and the
//!   KV handlers reach the backend only through its per-request check.
//! - [`error`]: [`HttpError`], the JSON error answer, and JSON body parsing.
//! - `read`: `GET /v1/kv/...`: point reads and scans, with freshness headers.
//! - `write`: `PUT`/`DELETE /v1/kv/...`, `/v1/batch`, `/v1/cas`, `/v1/cad`, `/v1/txn`.
//! - `lease`: `POST /v1/lease`, `POST /v1/lease/{id}/keepalive`, `GET` and `DELETE
//!   /v1/lease/{id}`.
//! - `stall`: [`stall_bounded`], the end of a value's stream that stopped moving.
//! - [`tls`]: the listener's TLS configuration from PEM files.
//! - [`watch`]: `GET /v1/watch/...` as Server-Sent Events or NDJSON, the watch buffer
//!   between a backend and its client, and blocking reads (`?index=R&wait=30s`).
//!
//! A process builds its app as [`kv_routes`] merged with its own routes (status, health,
//! metrics), adds [`fallbacks`] (404 and 405 answers), wraps it in [`auth::guard`], and runs it
//! with [`serve`] (`listen`: the listener's bounds on connections and request heads).

pub mod auth;
pub mod error;
mod lease;
mod listen;
mod range;
mod read;
mod stall;
pub mod tls;
pub mod watch;
mod write;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::command::Command;
use crate::error::{ApiError, ErrorCode};
use crate::limits::MAX_JSON_BODY_BYTES;
use crate::types::{Consistency, ReadRequest, ReadResponse, ReadResult, WriteResult};

pub use error::{parse_json, HttpError, HttpResult};
pub use listen::{
    serve, serve_with, ServeOptions, ServeStats, CLOSE_GRACE, COALESCE_BYTES, HTTP_HEAD_TIMEOUT,
    MAX_HTTP2_STREAMS, MAX_HTTP_CONNECTIONS,
};
pub use stall::{stall_bounded, VALUE_STALL_TIMEOUT};
pub use watch::{
    Refused, SharedSet, WatchEnd, WatchFrame, WatchItem, WatchSender, WatchSlots, WatchStream,
};

/// What executes the requests the KV routes receive: a node's KV service, or a router
/// that sends each request to the cluster owning its keys.
///
/// Validation of commands and reads is the backend's job (a node validates everything
/// that enters it, by HTTP or by `aspen/kv/2`); the handlers only refuse what cannot be
/// parsed. An [`ApiError`] returned here becomes the JSON error answer with its status.
pub trait KvBackend: Send + Sync + 'static {
    /// Applies `command` atomically and says which cluster applied it. A failed
    /// precondition is an `Ok` outcome (409 with the key's actual state), not an error.
    fn write(&self, command: Command) -> impl Future<Output = Result<Written, ApiError>> + Send;

    /// Serves `request` as `options` say, naming the cluster(s) the data came from.
    fn read(
        &self,
        request: ReadRequest,
        options: ReadOptions,
    ) -> impl Future<Output = Result<ReadAnswer, ApiError>> + Send;

    /// Opens a watch: the stream of the watched keys' changes from where `request` says,
    /// in revision order per cluster. Refuses at once (before any event) a start revision
    /// that has been compacted (410 `compacted`) and a watch beyond the process's limit
    /// (503 `overloaded`).
    fn watch(
        &self,
        request: crate::watch::WatchRequest,
    ) -> impl Future<Output = Result<WatchStream, ApiError>> + Send;

    /// Serves a lease operation: grant on the cluster owning the grant's key (or the only
    /// one), keep-alive, get and revoke on the lease's own cluster. A lease id of a
    /// cluster this backend does not serve is 422 `cross_cluster`.
    fn lease(
        &self,
        op: crate::lease::LeaseOp,
    ) -> impl Future<Output = Result<LeaseReply, ApiError>> + Send;

    /// Stores a value above the inline limit: streams `put.body` into the blob store of
    /// the cluster owning `put.key` and writes its reference to the key once a majority
    /// of that cluster holds the blob, without holding the value whole.
    fn put_blob(&self, put: BlobPut) -> impl Future<Output = Result<Written, ApiError>> + Send;

    /// Streams `range.1` bytes from byte `range.0` of `blob`, the value of `key` in
    /// `cluster` (a read already answered with its reference).
    fn read_blob(
        &self,
        key: &str,
        cluster: &str,
        blob: crate::BlobRef,
        range: (u64, u64),
    ) -> impl Future<Output = Result<ValueStream, ApiError>> + Send;

    /// Records one finished request in the metrics: `op` is one of `get`, `scan`, `put`,
    /// `delete`, `batch`, `cas`, `cad`, `txn`, `watch` (its opening), `lease_grant`,
    /// `lease_keepalive`, `lease_get`, `lease_revoke`; `status` is the HTTP status answered;
    /// `seconds` is the time from the request's arrival to its answer.
    fn observe(&self, op: &'static str, status: u16, seconds: f64);
}

/// A value's bytes as they stream in or out: chunks, or an error that says what broke
/// (a client that went away, a store that failed).
pub type ValueStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, String>>;

/// A `PUT` of a value above the inline limit, as it arrives.
pub struct BlobPut {
    /// The key.
    pub key: String,
    /// The lease the key takes (`?lease=ID`).
    pub lease: Option<crate::lease::LeaseId>,
    /// The body's length when the client declared it (`Content-Length`); at most
    /// [`MAX_BLOB_VALUE_BYTES`](crate::limits::MAX_BLOB_VALUE_BYTES) (checked before).
    pub declared: Option<u64>,
    /// The body, from its first byte.
    pub body: ValueStream,
}

/// The answer to a write: the state machine's result and the cluster that applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Revision and outcome (applied, or refused by a precondition).
    pub result: WriteResult,
    /// The cluster that applied (or refused) the command; shown as `cluster` in the body.
    pub cluster: String,
}

/// The answer to a lease operation and the cluster that holds the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseReply {
    /// The node's answer.
    pub answer: crate::lease::LeaseAnswer,
    /// The lease's cluster.
    pub cluster: String,
}

/// The answer to a read, with what the HTTP layer needs to render it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAnswer {
    /// The entry (point read) or page (scan).
    pub result: ReadResult,
    /// The cluster of the point read, or of each scan entry (each JSON entry names its
    /// own cluster, and a router's scan merges several clusters' entries).
    pub clusters: AnswerClusters,
    /// How fresh the serving copy was, sent as the `aspen-*` read headers
    /// ([`crate::headers`]); `None` (no headers) for a scan merged from several clusters.
    pub freshness: Option<Freshness>,
    /// For a scan: the continuation token sent as `next`, when it is not the page's own
    /// ([`ScanPage::next`](crate::types::ScanPage::next), its last key when `more`). A
    /// merged page may have to continue from a key it does not show. `None` for a point
    /// read and for any single cluster's scan.
    pub next: Option<String>,
}

impl ReadAnswer {
    /// The answer of one cluster's read: its result, all of it from `cluster`, with the
    /// serving node's freshness.
    pub fn from_cluster(response: ReadResponse, cluster: impl Into<String>) -> Self {
        ReadAnswer {
            freshness: Some(Freshness::of(&response)),
            result: response.result,
            clusters: AnswerClusters::One(cluster.into()),
            next: None,
        }
    }
}

/// How a read must be served: `consistency` and, for a stale read, the most staleness it
/// accepts (`max_lag`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Linearizable or stale.
    pub consistency: Consistency,
    /// For a stale read: refuse with 503 `replica_behind` rather than serve a copy that may
    /// be staler than this many milliseconds.
    pub max_lag_ms: Option<u64>,
}

impl ReadOptions {
    /// `consistency` with no staleness bound.
    pub fn new(consistency: Consistency) -> Self {
        ReadOptions {
            consistency,
            max_lag_ms: None,
        }
    }
}

/// Which cluster each part of a read's answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerClusters {
    /// One cluster served the whole read: any point read, or a scan of one cluster.
    One(String),
    /// A scan merged from several clusters: element `i` names the cluster of the page's
    /// entry `i`, so it has exactly as many elements as the page has entries.
    PerEntry(Vec<String>),
}

/// How fresh the copy that served a read was: the values of the read headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// The cluster revision the copy had reached (`aspen-revision`).
    pub revision: u64,
    /// The Raft log index the serving node had applied (`aspen-applied-index`).
    pub applied_index: u64,
    /// The highest log index it knew to be committed (`aspen-known-commit-index`).
    pub known_commit_index: u64,
    /// Milliseconds since it last heard from a leader (`aspen-leader-contact-ms`);
    /// `None` (header omitted) if it never has.
    pub since_leader_contact_ms: Option<u64>,
    /// For a read of a federation replica: its lag (`aspen-replica-lag-revisions` and
    /// `aspen-replica-lag-seconds`); the Raft index headers are then omitted, as the
    /// replica is no member of the owner's Raft group.
    pub replica: Option<ReplicaLag>,
}

/// How far behind its owner a federation replica was when it served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLag {
    /// Owner revisions the replica lacked, as far as it knew.
    pub revisions: u64,
    /// Upper bound on its staleness, in ms; `None` when not known yet.
    pub ms: Option<u64>,
}

impl Freshness {
    /// The freshness a node reported with its read.
    pub fn of(response: &ReadResponse) -> Self {
        Freshness {
            revision: response.revision,
            applied_index: response.applied_index,
            known_commit_index: response.known_commit_index,
            since_leader_contact_ms: response.since_leader_contact_ms,
            replica: None,
        }
    }
}

/// The KV routes of the API over `backend`, with their body limits: `/v1/kv`, `/v1/kv/`
/// and `/v1/kv/{*key}` (GET, PUT, DELETE; a body is one value: inline up to
/// [`MAX_INLINE_VALUE_BYTES`](crate::limits::MAX_INLINE_VALUE_BYTES), streamed into the
/// backend's blob store above), and `POST /v1/batch`, `/v1/cas`, `/v1/cad`, `/v1/txn`
/// (JSON bodies of at most [`MAX_JSON_BODY_BYTES`]). The router has no fallback: merge
/// it with the process's own routes and then add [`fallbacks`].
pub fn kv_routes<B: KvBackend>(backend: Arc<B>) -> axum::Router {
    let value_routes = axum::Router::new()
        .route(
            "/v1/kv",
            get(read::get_root::<B>)
                .put(write::put_root::<B>)
                .delete(write::delete_root::<B>),
        )
        .route(
            "/v1/kv/",
            get(read::get_root::<B>)
                .put(write::put_root::<B>)
                .delete(write::delete_root::<B>),
        )
        .route(
            "/v1/kv/{*key}",
            get(read::get::<B>)
                .put(write::put::<B>)
                .delete(write::delete::<B>),
        )
        // A PUT body streams: up to the inline limit it is one value in the log, above it
        // the backend streams it into the blob store (`write::read_value` bounds both).
        .layer(DefaultBodyLimit::disable());
    let json_routes = axum::Router::new()
        .route("/v1/batch", post(write::batch::<B>))
        .route("/v1/cas", post(write::cas::<B>))
        .route("/v1/cad", post(write::cad::<B>))
        .route("/v1/txn", post(write::txn::<B>))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES));
    let watch_routes = axum::Router::new()
        .route("/v1/watch", get(watch::watch_root::<B>))
        .route("/v1/watch/", get(watch::watch_root::<B>))
        .route("/v1/watch/{*key}", get(watch::watch::<B>));
    let lease_routes = axum::Router::new()
        .route("/v1/lease", post(lease::grant::<B>))
        .route(
            "/v1/lease/{id}",
            get(lease::get::<B>).delete(lease::revoke::<B>),
        )
        .route("/v1/lease/{id}/keepalive", post(lease::keepalive::<B>))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES));
    value_routes
        .merge(json_routes)
        .merge(watch_routes)
        .merge(lease_routes)
        .with_state(backend)
}

/// Adds the fallbacks of a whole app, once every route is in it: [`not_found`] for a path
/// no route has, [`method_not_allowed`] for a method a route does not take.
pub fn fallbacks(app: axum::Router) -> axum::Router {
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// 404 `not_found` naming the path and the API reference.
pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {}; see docs/API.md", uri.path()),
    )
}

/// 405 `method_not_allowed` naming the method and the path (the `Allow` header, which
/// axum adds, lists the methods the path takes).
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> HttpError {
    HttpError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} does not take {method}; the Allow header lists what it takes (see docs/API.md)",
            uri.path()
        ),
    )
}

/// Records the request through the backend and turns the result into a response.
fn finish<B: KvBackend>(
    backend: &B,
    op: &'static str,
    start: Instant,
    result: HttpResult,
) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    backend.observe(
        op,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::client::http_client;
    use crate::headers::{
        APPLIED_INDEX_HEADER, LEADER_CONTACT_HEADER, REPLICA_LAG_REVISIONS_HEADER,
        REPLICA_LAG_SECONDS_HEADER, REVISION_HEADER,
    };
    use crate::types::{KvEntry, ScanPage, WriteOutcome};

    /// A backend that answers every read with `answer` and every write with revision 7
    /// of cluster `w`, and remembers what it observed.
    struct Fixed {
        answer: ReadAnswer,
        observed: Mutex<Vec<(&'static str, u16)>>,
        options: Mutex<Vec<ReadOptions>>,
    }

    impl KvBackend for Fixed {
        async fn write(&self, _command: Command) -> Result<Written, ApiError> {
            let result = WriteResult {
                revision: 7,
                outcome: WriteOutcome::Applied { deleted: 1 },
            };
            let cluster = "w".to_string();
            Ok(Written { result, cluster })
        }

        async fn read(&self, _: ReadRequest, o: ReadOptions) -> Result<ReadAnswer, ApiError> {
            self.options.lock().unwrap().push(o);
            Ok(self.answer.clone())
        }

        async fn watch(&self, _: crate::watch::WatchRequest) -> Result<WatchStream, ApiError> {
            Err(ApiError::new(ErrorCode::Compacted, "nothing kept"))
        }

        async fn lease(&self, _: crate::lease::LeaseOp) -> Result<LeaseReply, ApiError> {
            Err(ApiError::new(ErrorCode::LeaseNotFound, "no leases here"))
        }

        async fn put_blob(&self, put: BlobPut) -> Result<Written, ApiError> {
            drop(put.body);
            self.write(Command::Delete { key: put.key }).await
        }

        async fn read_blob(
            &self,
            _: &str,
            _: &str,
            _: crate::BlobRef,
            _: (u64, u64),
        ) -> Result<ValueStream, ApiError> {
            Err(ApiError::new(ErrorCode::Internal, "no blobs here"))
        }

        fn observe(&self, op: &'static str, status: u16, _seconds: f64) {
            self.observed.lock().unwrap().push((op, status));
        }
    }

    fn entry(key: &str) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 1,
            blob: None,
        }
    }

    fn page(keys: &[&str]) -> ReadResult {
        ReadResult::Scan(ScanPage {
            kvs: keys.iter().map(|k| entry(k)).collect(),
            more: true,
        })
    }

    const FRESH: Freshness = Freshness {
        revision: 5,
        applied_index: 6,
        known_commit_index: 6,
        since_leader_contact_ms: None,
        replica: None,
    };

    /// Serves `answer` on a free port; returns the base URL and the backend.
    async fn start(answer: ReadAnswer) -> (String, Arc<Fixed>) {
        let backend = Arc::new(Fixed {
            answer,
            observed: Mutex::new(Vec::new()),
            options: Mutex::new(Vec::new()),
        });
        let app = auth::guard(
            fallbacks(kv_routes(backend.clone())),
            auth::PolicyCell::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, app, std::future::pending()));
        (url, backend)
    }

    async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let response = http_client(Duration::from_secs(10))
            .get(url)
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, headers, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_merged_scan_names_each_entrys_cluster_and_sends_no_freshness_headers() {
        let answer = ReadAnswer {
            result: page(&["a", "b"]),
            clusters: AnswerClusters::PerEntry(vec!["us-1".into(), "us-2".into()]),
            freshness: None,
            next: None,
        };
        let (url, backend) = start(answer).await;
        let (status, headers, body) = get(&format!("{url}/v1/kv/?prefix=true")).await;
        assert_eq!(status, 200);
        assert_eq!(body["kvs"][0]["cluster"], "us-1");
        assert_eq!(body["kvs"][1]["cluster"], "us-2");
        assert_eq!(body["next"], "b");
        assert!(headers.get(REVISION_HEADER).is_none());
        assert_eq!(*backend.observed.lock().unwrap(), vec![("scan", 200)]);
    }

    #[tokio::test]
    async fn a_scan_continues_from_the_token_the_backend_gives() {
        let answer = ReadAnswer {
            result: page(&["a", "b"]),
            clusters: AnswerClusters::One("us-1".into()),
            freshness: Some(FRESH),
            next: Some("bz".into()),
        };
        let (url, _) = start(answer).await;
        let (status, headers, body) = get(&format!("{url}/v1/kv/?prefix=true")).await;
        assert_eq!(status, 200);
        assert_eq!(body["more"], true);
        assert_eq!(body["next"], "bz");
        assert_eq!(body["kvs"][1]["cluster"], "us-1");
        assert_eq!(headers[REVISION_HEADER], "5");
    }

    #[tokio::test]
    async fn a_scan_whose_cluster_names_do_not_match_its_entries_is_a_500() {
        let answer = ReadAnswer {
            result: page(&["a", "b"]),
            clusters: AnswerClusters::PerEntry(vec!["us-1".into()]),
            freshness: None,
            next: None,
        };
        let (url, _) = start(answer).await;
        let (status, _, body) = get(&format!("{url}/v1/kv/?prefix=true")).await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "internal");
    }

    /// A path that exists with a method it does not take is a 405 with the error body and
    /// the methods it takes; a path that does not exist is a 404 naming it.
    #[tokio::test]
    async fn a_wrong_method_is_a_405_naming_what_the_path_takes() {
        let answer = ReadAnswer {
            result: ReadResult::Get(None),
            clusters: AnswerClusters::One("us-1".into()),
            freshness: Some(FRESH),
            next: None,
        };
        let (url, backend) = start(answer).await;
        let client = http_client(Duration::from_secs(10));
        let response = client.get(format!("{url}/v1/txn")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(response.headers()["allow"], "POST");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("/v1/txn") && message.contains("GET"),
            "{message}"
        );

        let response = client.post(format!("{url}/v1/kv/k")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405);
        let allow = response.headers()["allow"].to_str().unwrap().to_string();
        for method in ["GET", "PUT", "DELETE"] {
            assert!(allow.contains(method), "{allow}");
        }
        let (status, _, body) = get(&format!("{url}/v1/nothing")).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "not_found");
        assert!(backend.observed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_absent_key_is_a_404_naming_the_answering_cluster_with_its_freshness() {
        let answer = ReadAnswer {
            result: ReadResult::Get(None),
            clusters: AnswerClusters::One("eu-1".into()),
            freshness: Some(FRESH),
            next: None,
        };
        let (url, backend) = start(answer).await;
        let (status, headers, body) = get(&format!("{url}/v1/kv/k")).await;
        assert_eq!(status, 404);
        assert_eq!(
            body["error"]["message"],
            "key \"k\" not found in cluster eu-1"
        );
        assert_eq!(headers[REVISION_HEADER], "5");
        assert!(headers.get(LEADER_CONTACT_HEADER).is_none());
        assert_eq!(*backend.observed.lock().unwrap(), vec![("get", 404)]);
    }

    #[tokio::test]
    async fn a_replica_read_sends_its_lag_and_no_raft_index_headers() {
        let answer = ReadAnswer {
            result: ReadResult::Get(Some(entry("k"))),
            clusters: AnswerClusters::One("us-1".into()),
            freshness: Some(Freshness {
                replica: Some(ReplicaLag {
                    revisions: 3,
                    ms: Some(1_250),
                }),
                ..FRESH
            }),
            next: None,
        };
        let (url, backend) = start(answer).await;
        let (status, headers, body) =
            get(&format!("{url}/v1/kv/k?consistency=stale&max_lag=2s")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers[REVISION_HEADER], "5");
        assert_eq!(headers[REPLICA_LAG_REVISIONS_HEADER], "3");
        assert_eq!(headers[REPLICA_LAG_SECONDS_HEADER], "1.250");
        assert!(headers.get(APPLIED_INDEX_HEADER).is_none());
        assert_eq!(
            *backend.options.lock().unwrap(),
            vec![ReadOptions {
                consistency: Consistency::Stale,
                max_lag_ms: Some(2_000)
            }]
        );
    }

    #[tokio::test]
    async fn max_lag_is_parsed_in_its_units_bounded_and_only_for_stale_reads() {
        let answer = ReadAnswer {
            result: ReadResult::Get(Some(entry("k"))),
            clusters: AnswerClusters::One("us-1".into()),
            freshness: Some(FRESH),
            next: None,
        };
        let (url, backend) = start(answer).await;
        for (query, ms) in [("250ms", 250), ("3", 3_000), ("1m", 60_000), ("0s", 0)] {
            let (status, _, body) =
                get(&format!("{url}/v1/kv/k?consistency=stale&max_lag={query}")).await;
            assert_eq!(status, 200, "{query}: {body}");
            let last = backend.options.lock().unwrap().last().copied().unwrap();
            assert_eq!(last.max_lag_ms, Some(ms), "{query}");
        }
        let max = crate::limits::MAX_READ_LAG_BOUND_MS;
        let (status, _, _) = get(&format!("{url}/v1/kv/k?consistency=stale&max_lag={max}ms")).await;
        assert_eq!(status, 200);
        for bad in [
            format!("{}ms", max + 1),
            "fast".to_string(),
            "2h3".to_string(),
        ] {
            let (status, _, body) =
                get(&format!("{url}/v1/kv/k?consistency=stale&max_lag={bad}")).await;
            assert_eq!(status, 400, "{bad}");
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_lag"));
        }
        let (status, _, body) = get(&format!("{url}/v1/kv/k?max_lag=2s")).await;
        assert_eq!(status, 400);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("consistency=stale"));
    }

    #[tokio::test]
    async fn a_blocking_read_past_the_largest_revision_is_answered_not_a_panic() {
        let answer = ReadAnswer {
            result: ReadResult::Get(Some(entry("k"))),
            clusters: AnswerClusters::One("us-1".into()),
            freshness: Some(FRESH),
            next: None,
        };
        let (url, backend) = start(answer).await;
        // The index a fuzz run found: one more than it overflowed a u64.
        let (status, _, body) = get(&format!("{url}/v1/kv/k?index={}&wait=0s", u64::MAX)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(*backend.observed.lock().unwrap(), vec![("get", 200)]);
    }

    #[tokio::test]
    async fn a_write_names_the_cluster_the_backend_says_applied_it() {
        let answer = ReadAnswer {
            result: ReadResult::Get(None),
            clusters: AnswerClusters::One("r".into()),
            freshness: None,
            next: None,
        };
        let (url, backend) = start(answer).await;
        let response = http_client(Duration::from_secs(10))
            .delete(format!("{url}/v1/kv/k"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"revision": 7, "cluster": "w", "deleted": true})
        );
        assert_eq!(*backend.observed.lock().unwrap(), vec![("delete", 200)]);
    }
}
