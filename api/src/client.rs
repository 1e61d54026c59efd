//! A small client for the HTTP API of a node or router. The CLI, the benchmark and the
//! integration tests use it; applications may too.

use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::admin::{
    AddLearnerRequest, InitRequest, MembershipResponse, NodeIdRequest, NodeStatus, RouterStatus,
    SnapshotInfo,
};
use crate::error::ErrorCode;
use crate::json::{
    BatchRequest, CadRequest, CasRequest, ErrorBody, JsonEntry, JsonFailure, JsonKeyState,
    ScanResponse, TxnRequest, WriteResponse,
};
use crate::lease::{GrantRequest, LeaseId, LeaseResponse};
use crate::types::Consistency;
use crate::watch::WatchMessage;

/// How long one request may take before the client gives up on it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of [`AspenClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an HTTP answer (connection refused, reset, timeout). A
    /// write may or may not have been applied.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{status} {}: {}", body.error.code, body.error.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: Box<ErrorBody>,
    },
    /// An open watch sent nothing, not even a progress message, for `after`: the server
    /// or the path to it is taken as gone.
    #[error("the watch at {url} sent nothing for {after:?}")]
    Silent {
        /// The URL watched.
        url: String,
        /// How long it was silent.
        after: Duration,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// The URL requested.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.error.code),
            _ => None,
        }
    }
}

/// `GET /v1/status` of a node or of a router (both serve the same API).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AnyStatus {
    /// A cluster node's own view.
    Node(NodeStatus),
    /// A router's view of every cluster.
    Router(RouterStatus),
}

/// The outcome of a compare-and-swap or compare-and-delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The write was applied.
    Applied(WriteResponse),
    /// The key did not hold the expected value; nothing changed.
    Mismatch(JsonKeyState),
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every precondition held and every write was applied.
    Applied(WriteResponse),
    /// A precondition failed; nothing changed.
    Failed(Box<JsonFailure>),
}

/// An HTTP client bound to one base URL such as `http://127.0.0.1:7070`.
#[derive(Debug, Clone)]
pub struct AspenClient {
    base: String,
    /// Without an overall timeout: each request gets `timeout`, a watch none.
    http: reqwest::Client,
    timeout: Duration,
    /// Whether `http` multiplexes everything over one HTTP/2 connection; if not, each
    /// watch opens a connection of its own, so it never holds one the requests need.
    multiplexed: bool,
    /// Sent as `Authorization: Bearer` with every request, when set.
    token: Option<String>,
    /// TLS of an `https://` endpoint, for the connections of watches.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// How an [`AspenClient`] talks to its endpoint.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long one request may take.
    pub timeout: Duration,
    /// Speak HTTP/2 from the first byte (cleartext prior knowledge, or by ALPN over TLS),
    /// so all requests and watches share one connection; else HTTP/1.1 with a pool.
    pub http2: bool,
    /// For an `https://` endpoint: whom to trust, and what to present
    /// ([`crate::tls::client_config`]).
    pub tls: Option<rustls::ClientConfig>,
    /// Sent as `Authorization: Bearer` with every request (the server's `[auth]` must
    /// list its SHA-256).
    pub token: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: DEFAULT_REQUEST_TIMEOUT,
            http2: false,
            tls: None,
            token: None,
        }
    }
}

impl AspenClient {
    /// A client for `endpoint` with the default timeout.
    pub fn new(endpoint: &str) -> Self {
        Self::with_timeout(endpoint, DEFAULT_REQUEST_TIMEOUT)
    }

    /// A client for `endpoint` whose requests time out after `timeout`, over HTTP/1.1
    /// with a pool of connections.
    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Self {
        let options = ClientOptions {
            timeout,
            ..ClientOptions::default()
        };
        Self::with_options(endpoint, options)
    }

    /// A client for `endpoint` whose requests time out after `timeout`, speaking HTTP/2
    /// from the first byte (cleartext, prior knowledge): all its requests and watches
    /// share one connection, as a gRPC client's do. Every Aspen listener serves both
    /// versions on one port.
    pub fn http2(endpoint: &str, timeout: Duration) -> Self {
        let options = ClientOptions {
            timeout,
            http2: true,
            ..ClientOptions::default()
        };
        Self::with_options(endpoint, options)
    }

    /// A client for `endpoint` as `options` say.
    pub fn with_options(endpoint: &str, options: ClientOptions) -> Self {
        let mut builder = client_builder_with(options.tls.clone());
        if options.http2 {
            builder = builder.http2_prior_knowledge();
        }
        AspenClient {
            base: endpoint.trim_end_matches('/').to_string(),
            http: builder.build().expect(BUILD_CANNOT_FAIL),
            timeout: options.timeout,
            multiplexed: options.http2,
            token: options.token.clone(),
            tls: options.tls.map(Arc::new),
        }
    }

    /// This client, sending `token` as `Authorization: Bearer` with every request (the
    /// server's `[auth]` must list its SHA-256).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// `request` with this client's token, if it has one.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The base URL.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    fn kv_url(&self, key: &str) -> String {
        format!("{}/v1/kv/{}", self.base, encode_path(key))
    }

    /// Reads one key; `None` when it does not exist.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<JsonEntry>, ClientError> {
        let mut url = self.kv_url(key);
        if consistency == Consistency::Stale {
            url.push_str("?consistency=stale");
        }
        match self.send(self.http.get(&url), &url).await {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the bare bytes of `key`'s value to `out` (`GET ?raw`) as they arrive, however
    /// large (a value kept as a blob streams from the node), calling `progress` with the
    /// bytes written so far and the total. Returns the value's length, or `None` when
    /// the key does not exist.
    pub async fn get_raw(
        &self,
        key: &str,
        consistency: Consistency,
        out: &mut (dyn std::io::Write + Send),
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<Option<u64>, ClientError> {
        let mut url = format!("{}?raw", self.kv_url(key));
        if consistency == Consistency::Stale {
            url.push_str("&consistency=stale");
        }
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut response = self
            .authorized(self.http.get(&url))
            .timeout(RAW_TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.map_err(transport)?;
            return match api_error(&url, status, &bytes) {
                e if e.code() == Some(ErrorCode::NotFound) => Ok(None),
                e => Err(e),
            };
        }
        let total = response.content_length();
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            out.write_all(&chunk).map_err(|e| ClientError::Decode {
                url: url.clone(),
                reason: format!("writing the value out: {e}"),
            })?;
            written += chunk.len() as u64;
            progress(written, total);
        }
        if total.is_some_and(|t| t != written) {
            return Err(ClientError::Decode {
                url,
                reason: format!("the answer ended after {written} of {total:?} bytes"),
            });
        }
        Ok(Some(written))
    }

    /// Reads one key from a local copy (a stale read) that may be at most `max_lag` stale;
    /// a copy that cannot promise that answers 503 `replica_behind`.
    pub async fn get_with_max_lag(
        &self,
        key: &str,
        max_lag: Duration,
    ) -> Result<Option<JsonEntry>, ClientError> {
        let url = format!(
            "{}?consistency=stale&max_lag={}ms",
            self.kv_url(key),
            max_lag.as_millis()
        );
        match self.send(self.http.get(&url), &url).await {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets one key.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<WriteResponse, ClientError> {
        let url = self.kv_url(key);
        self.send(self.http.put(&url).body(value.to_vec()), &url)
            .await
    }

    /// Sets one key to the bytes `body` streams (`len` of them when known, sent as its
    /// `Content-Length`), attached to `lease` when given. A value over the inline limit is
    /// kept as a blob by the node; the transfer may take up to [`RAW_TRANSFER_TIMEOUT`].
    pub async fn put_stream(
        &self,
        key: &str,
        body: reqwest::Body,
        len: Option<u64>,
        lease: Option<&LeaseId>,
    ) -> Result<WriteResponse, ClientError> {
        let mut url = self.kv_url(key);
        if let Some(lease) = lease {
            url.push_str(&format!("?lease={}", encode_query(&lease.to_string())));
        }
        let mut request = self.http.put(&url).body(body);
        if let Some(len) = len {
            request = request.header(reqwest::header::CONTENT_LENGTH, len);
        }
        self.send_within(request, &url, RAW_TRANSFER_TIMEOUT).await
    }

    /// Sets one key, attached to `lease`: it is deleted when the lease ends.
    pub async fn put_with_lease(
        &self,
        key: &str,
        value: &[u8],
        lease: &LeaseId,
    ) -> Result<WriteResponse, ClientError> {
        let url = format!(
            "{}?lease={}",
            self.kv_url(key),
            encode_query(&lease.to_string())
        );
        self.send(self.http.put(&url).body(value.to_vec()), &url)
            .await
    }

    /// Grants a lease of `ttl_secs`; through a router, on the cluster owning `key`.
    pub async fn lease_grant(
        &self,
        ttl_secs: u64,
        key: Option<&str>,
    ) -> Result<LeaseResponse, ClientError> {
        let request = GrantRequest {
            ttl: ttl_secs,
            key: key.map(str::to_string),
        };
        self.post("/v1/lease", &request).await
    }

    /// Restarts a lease's TTL.
    pub async fn lease_keepalive(&self, lease: &LeaseId) -> Result<LeaseResponse, ClientError> {
        let url = format!("{}/v1/lease/{}/keepalive", self.base, lease);
        self.send(self.http.post(&url), &url).await
    }

    /// A lease's TTL, time left and keys.
    pub async fn lease_get(&self, lease: &LeaseId) -> Result<LeaseResponse, ClientError> {
        let url = format!("{}/v1/lease/{}", self.base, lease);
        self.send(self.http.get(&url), &url).await
    }

    /// Ends a lease now, deleting its keys.
    pub async fn lease_revoke(&self, lease: &LeaseId) -> Result<LeaseResponse, ClientError> {
        let url = format!("{}/v1/lease/{}", self.base, lease);
        self.send(self.http.delete(&url), &url).await
    }

    /// Deletes one key.
    pub async fn delete(&self, key: &str) -> Result<WriteResponse, ClientError> {
        let url = self.kv_url(key);
        self.send(self.http.delete(&url), &url).await
    }

    /// One page of the keys under `prefix`, after `after`.
    pub async fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
        consistency: Consistency,
    ) -> Result<ScanResponse, ClientError> {
        let mut url = format!("{}?prefix=true", self.kv_url(prefix));
        if let Some(after) = after {
            url.push_str(&format!("&after={}", encode_query(after)));
        }
        if let Some(limit) = limit {
            url.push_str(&format!("&limit={limit}"));
        }
        if consistency == Consistency::Stale {
            url.push_str("&consistency=stale");
        }
        self.send(self.http.get(&url), &url).await
    }

    /// Sets and deletes several keys atomically.
    pub async fn batch(&self, request: &BatchRequest) -> Result<WriteResponse, ClientError> {
        self.post("/v1/batch", request).await
    }

    /// Compare-and-swap.
    pub async fn cas(&self, request: &CasRequest) -> Result<CasOutcome, ClientError> {
        match self.post("/v1/cas", request).await {
            Ok(ok) => Ok(CasOutcome::Applied(ok)),
            Err(e) => mismatch(e).map(CasOutcome::Mismatch),
        }
    }

    /// Compare-and-delete.
    pub async fn cad(&self, request: &CadRequest) -> Result<CasOutcome, ClientError> {
        match self.post("/v1/cad", request).await {
            Ok(ok) => Ok(CasOutcome::Applied(ok)),
            Err(e) => mismatch(e).map(CasOutcome::Mismatch),
        }
    }

    /// A conditional multi-key write.
    pub async fn txn(&self, request: &TxnRequest) -> Result<TxnOutcome, ClientError> {
        match self.post("/v1/txn", request).await {
            Ok(ok) => Ok(TxnOutcome::Applied(ok)),
            Err(ClientError::Api { body, .. }) if body.failed.is_some() => Ok(TxnOutcome::Failed(
                Box::new(body.failed.expect("checked above")),
            )),
            Err(e) => Err(e),
        }
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let url = format!("{}/v1/status", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// The status of whatever serves the endpoint: a node or a router.
    pub async fn any_status(&self) -> Result<AnyStatus, ClientError> {
        let url = format!("{}/v1/status", self.base);
        self.send(self.http.get(&url), &url).await
    }

    /// Initializes a new cluster.
    pub async fn cluster_init(
        &self,
        request: &InitRequest,
    ) -> Result<MembershipResponse, ClientError> {
        self.post("/v1/cluster/init", request).await
    }

    /// Adds a learner.
    pub async fn cluster_add_learner(
        &self,
        request: &AddLearnerRequest,
    ) -> Result<MembershipResponse, ClientError> {
        self.post("/v1/cluster/add-learner", request).await
    }

    /// Promotes a learner to voter.
    pub async fn cluster_promote(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.post("/v1/cluster/promote", &NodeIdRequest { node_id })
            .await
    }

    /// Removes a member.
    pub async fn cluster_remove(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.post("/v1/cluster/remove", &NodeIdRequest { node_id })
            .await
    }

    /// Asks the node to build a snapshot now and waits up to `wait` for it (a node holding
    /// gigabytes takes minutes): its metadata.
    pub async fn snapshot_build(&self, wait: Duration) -> Result<SnapshotInfo, ClientError> {
        let url = format!("{}/v1/cluster/snapshot", self.base);
        self.send_within(self.http.post(&url), &url, wait).await
    }

    /// Opens the node's current snapshot for download: its metadata, then its bytes from
    /// [`SnapshotDownload::chunk`].
    pub async fn snapshot_download(&self) -> Result<SnapshotDownload, ClientError> {
        let url = format!("{}/v1/cluster/snapshot", self.base);
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let response =
            tokio::time::timeout(self.timeout, self.authorized(self.http.get(&url)).send())
                .await
                .map_err(|_| ClientError::Silent {
                    url: url.clone(),
                    after: self.timeout,
                })?
                .map_err(transport)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.map_err(transport)?;
            return Err(api_error(&url, status, &bytes));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let decode = |reason: &str| ClientError::Decode {
            url: url.clone(),
            reason: reason.to_string(),
        };
        let info = SnapshotInfo {
            snapshot_id: header("aspen-snapshot-id")
                .ok_or_else(|| decode("no aspen-snapshot-id header"))?,
            last_log_index: header("aspen-snapshot-last-log-index")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| decode("no aspen-snapshot-last-log-index header"))?,
            last_log_term: 0,
            bytes: response
                .content_length()
                .ok_or_else(|| decode("no Content-Length"))?,
        };
        Ok(SnapshotDownload {
            info,
            url,
            silence: self.timeout,
            response,
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        self.send(self.http.post(&url).json(body), &url).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        self.send_within(request, url, self.timeout).await
    }

    async fn send_within<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.to_string(),
            source,
        };
        let response = self
            .authorized(request)
            .timeout(timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        let decode = |reason: String| ClientError::Decode {
            url: url.to_string(),
            reason,
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()));
        }
        Err(api_error(url, status, &bytes))
    }
}

/// How long a transfer of a value's bare bytes may take (values kept as blobs reach
/// 4 GiB): an hour, far beyond any healthy transfer, so only a stuck one is cut.
pub const RAW_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// The error an answer of `status` with body `bytes` stands for.
fn api_error(url: &str, status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            body: Box::new(body),
        },
        Err(e) => ClientError::Decode {
            url: url.to_string(),
            reason: format!(
                "status {status} with a body that is not an Aspen error ({e}): {}",
                String::from_utf8_lossy(bytes)
            ),
        },
    }
}

/// A node's snapshot being downloaded (`GET /v1/cluster/snapshot`).
#[derive(Debug)]
pub struct SnapshotDownload {
    /// The snapshot's id, last log index and size (`last_log_term` is not sent: 0).
    pub info: SnapshotInfo,
    url: String,
    silence: Duration,
    response: reqwest::Response,
}

impl SnapshotDownload {
    /// The next bytes; `None` at the end. A server silent for the client's timeout is an
    /// error ([`ClientError::Silent`]).
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        tokio::time::timeout(self.silence, self.response.chunk())
            .await
            .map_err(|_| ClientError::Silent {
                url: self.url.clone(),
                after: self.silence,
            })?
            .map(|chunk| chunk.map(|b| b.to_vec()))
            .map_err(|source| ClientError::Transport {
                url: self.url.clone(),
                source,
            })
    }
}

/// Where a watch starts and what it covers (`GET /v1/watch/{key}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Watch every key under the key, not only the key.
    pub prefix: bool,
    /// First revision to deliver (every cluster); `None`: changes from now.
    pub start_revision: Option<u64>,
    /// A resume token from an earlier stream of the same watch; wins over
    /// `start_revision` for the clusters it names.
    pub resume: Option<String>,
}

/// An open watch stream: its messages in order, as the server sends them.
#[derive(Debug)]
pub struct WatchStream {
    url: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl WatchStream {
    /// The next message; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchMessage>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = &line[..line.len() - 1];
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| ClientError::Decode {
                        url: self.url.clone(),
                        reason: format!("watch message is not valid: {e}"),
                    });
            }
            let chunk = tokio::time::timeout(WATCH_SILENCE, self.response.chunk())
                .await
                .map_err(|_| ClientError::Silent {
                    url: self.url.clone(),
                    after: WATCH_SILENCE,
                })?
                .map_err(|source| ClientError::Transport {
                    url: self.url.clone(),
                    source,
                })?;
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}

impl AspenClient {
    /// Opens a watch of `key` (or of every key under it, with `options.prefix`), as
    /// newline-delimited JSON. The stream has no overall timeout; a server silent for
    /// [`WATCH_SILENCE`] is taken as gone (a [`ClientError::Silent`], here or from
    /// [`WatchStream::next`]).
    pub async fn watch(
        &self,
        key: &str,
        options: &WatchOptions,
    ) -> Result<WatchStream, ClientError> {
        let mut url = format!("{}/v1/watch/{}?", self.base, encode_path(key));
        if options.prefix {
            url.push_str("prefix=true&");
        }
        if let Some(r) = options.start_revision {
            url.push_str(&format!("start_revision={r}&"));
        }
        if let Some(token) = &options.resume {
            url.push_str(&format!("resume={}&", encode_query(token)));
        }
        let url = url.trim_end_matches(['&', '?']).to_string();
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let own;
        let http = if self.multiplexed {
            &self.http
        } else {
            own = client_builder_with(self.tls.as_deref().cloned())
                .build()
                .map_err(transport)?;
            &own
        };
        let opening = self
            .authorized(http.get(&url))
            .header("accept", "application/x-ndjson")
            .send();
        let response = tokio::time::timeout(WATCH_SILENCE, opening)
            .await
            .map_err(|_| ClientError::Silent {
                url: url.clone(),
                after: WATCH_SILENCE,
            })?
            .map_err(transport)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = tokio::time::timeout(self.timeout, response.bytes())
                .await
                .map_err(|_| ClientError::Silent {
                    url: url.clone(),
                    after: self.timeout,
                })?
                .map_err(transport)?;
            let body: ErrorBody =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                    url: url.clone(),
                    reason: format!("status {status} with a body that is not an Aspen error: {e}"),
                })?;
            return Err(ClientError::Api {
                status,
                body: Box::new(body),
            });
        }
        Ok(WatchStream {
            url,
            response,
            buffer: Vec::new(),
        })
    }
}

/// How long the client keeps an idle connection for reuse: well under the servers'
/// request head timeout (`aspen_api::server::HTTP_HEAD_TIMEOUT`, 30 s), so the client
/// drops an idle connection before the server does, and never sends a request on one the
/// server is closing.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(20);

/// How long an open watch may send nothing before [`WatchStream::next`] gives up on it:
/// three of the server's progress intervals.
pub const WATCH_SILENCE: Duration = Duration::from_millis(3 * crate::watch::PROGRESS_INTERVAL_MS);

/// How long the client waits for a TCP connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const BUILD_CANNOT_FAIL: &str =
    "building an HTTP client from a ready TLS configuration cannot fail";

/// A plain-HTTP `reqwest` client with connection pooling and an overall timeout per
/// request, as [`AspenClient`] uses; for callers (tests, tools) that need raw requests.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    client_builder()
        .timeout(timeout)
        .build()
        .expect(BUILD_CANNOT_FAIL)
}

/// What every client of this module shares: plain HTTP, pooled connections.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    client_builder_with(None)
}

/// [`client_builder`] with `tls` for `https://` URLs.
fn client_builder_with(tls: Option<rustls::ClientConfig>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.unwrap_or_else(plain_tls_config))
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(CLIENT_POOL_IDLE)
}

/// Without TLS options a client trusts nothing over `https://`, but the HTTP stack may be
/// built with TLS support and no default crypto provider (iroh enables it); hand it an
/// explicit, empty configuration so building a client never depends on process-global
/// state.
fn plain_tls_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn mismatch(err: ClientError) -> Result<JsonKeyState, ClientError> {
    match err {
        ClientError::Api { body, .. } if body.actual.is_some() => {
            Ok(body.actual.expect("checked above"))
        }
        e => Err(e),
    }
}

/// Percent-encodes a key for a URL path, keeping `/` so keys read naturally.
fn encode_path(key: &str) -> String {
    encode(key, b"/")
}

/// Percent-encodes a query value.
fn encode_query(value: &str) -> String {
    encode(value, b"")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_except_slashes() {
        assert_eq!(encode_path("a/b c?d%"), "a/b%20c%3Fd%25");
        assert_eq!(encode_query("a/b"), "a%2Fb");
        assert_eq!(encode_path("é"), "%C3%A9");
    }

    /// A server that answers a watch, sends a message, another two thirds of
    /// `WATCH_SILENCE` later, and then nothing (its connection open): the stream delivers
    /// both and ends with `Silent`, not before `WATCH_SILENCE` has passed since the last
    /// message (the silence is counted from the last bytes, not from the stream's start),
    /// and within twice that.
    #[tokio::test]
    async fn a_watch_whose_server_falls_silent_ends_after_watch_silence() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request was whole");
                request.extend_from_slice(&buf[..n]);
            }
            let line =
                b"{\"kind\":\"progress\",\"cluster\":\"c\",\"revision\":7,\"resume\":\"c=8\"}\n";
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = [format!("{:x}\r\n", line.len()).as_bytes(), line, b"\r\n"].concat();
            socket.write_all(&chunk).await.unwrap();
            tokio::time::sleep(WATCH_SILENCE * 2 / 3).await;
            socket.write_all(&chunk).await.unwrap();
            // Silent from here, holding the connection until the client drops it.
            let _ = socket.read(&mut buf).await;
        });
        let client = AspenClient::new(&url);
        let mut stream = client.watch("k", &WatchOptions::default()).await.unwrap();
        for _ in 0..2 {
            let message = stream.next().await.unwrap();
            assert!(
                matches!(message, Some(WatchMessage::Progress { revision: 7, .. })),
                "{message:?}"
            );
        }
        let last_byte = std::time::Instant::now();
        let end = tokio::time::timeout(2 * WATCH_SILENCE, stream.next())
            .await
            .expect("a silent server ends the stream, it does not hang it");
        let silent_for = last_byte.elapsed();
        assert!(matches!(end, Err(ClientError::Silent { .. })), "{end:?}");
        assert!(
            silent_for >= WATCH_SILENCE,
            "ended after only {silent_for:?} of silence"
        );
        drop(stream);
        server.await.unwrap();
    }
}
