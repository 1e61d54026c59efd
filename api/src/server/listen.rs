//! The HTTP listener every Aspen process serves with: HTTP/1.1 and HTTP/2 on one bound
//! TCP listener, told apart by the first bytes a connection sends (cleartext HTTP/2 with
//! prior knowledge, or over TLS, [`ServeOptions::tls`], whichever ALPN picks), with the
//! bounds that keep a misbehaving client from holding the server.
//!
//! - At most [`ServeOptions::max_connections`] connections at once (default
//!   [`MAX_HTTP_CONNECTIONS`]); one more is closed as soon as it is accepted, so the ones
//!   already served keep going and the listener's backlog never fills with the excess.
//! - A connection with no request in flight is closed once it has been so for
//!   [`ServeOptions::head_timeout`] (default [`HTTP_HEAD_TIMEOUT`]): one that connects and
//!   sends nothing, or half an HTTP/2 preface or frame, or stays idle between requests. A
//!   TLS handshake must finish within the same time.
//!   The close is polite first (HTTP/2 `GOAWAY`); a peer that does not finish it within
//!   [`CLOSE_GRACE`] is cut off. On HTTP/1.1 hyper also times the request head itself,
//!   so a half-sent request line is cut off at the timeout exactly. A response that is
//!   still streaming (a watch) is a request in flight and is never cut.
//! - On HTTP/2, at most [`ServeOptions::max_streams_per_connection`] requests at once per
//!   connection (default [`MAX_HTTP2_STREAMS`]), announced to the client, which waits for
//!   a free stream; hyper's defaults bound the rest (header list size, and resets of
//!   streams not yet accepted, the "rapid reset" attack).
//! - Every connection has `TCP_NODELAY`: a watch writes many small chunks, and with
//!   Nagle's algorithm each would wait for the client's delayed ACK (up to 40 ms on Linux).
//!
//! HTTP/2 lets one client multiplex many watches and requests over one connection, as
//! gRPC clients do: each change is then written once per connection, not once per watch,
//! and the frames of every watch it reaches go to the socket together, in one write of
//! at most [`COALESCE_BYTES`] (`coalesce`), not a few at a time.
//!
//! On shutdown the listener stops accepting, idle connections close at once, and those
//! with a request in flight finish it.

mod activity;
mod coalesce;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use activity::{Activity, Tracked};
use coalesce::Coalesced;
pub use coalesce::COALESCE_BYTES;

/// Default for the most connections an HTTP listener serves at once. Above
/// [`crate::limits::MAX_WATCHERS`], since every watch may hold a connection.
pub const MAX_HTTP_CONNECTIONS: usize = 8_192;

/// Default for how long a connection may go with no request in flight (at connect, and
/// after each answer) before it is closed.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for the most requests one HTTP/2 connection may have in flight at once. One
/// process's watches and requests fit: a client needing more opens a second connection.
pub const MAX_HTTP2_STREAMS: u32 = 1_024;

/// How long a connection closed for idling has to finish the close (answer the HTTP/2
/// `GOAWAY`) before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long the listener pauses after an accept error that is not about one connection
/// (out of file descriptors, say), before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How one listener serves: its bounds (see the module docs) and its TLS.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time a connection may go with no request in flight.
    pub head_timeout: Duration,
    /// Most requests in flight at once on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Serve over TLS with this configuration (`super::tls::server_config`); `None`:
    /// plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: MAX_HTTP_CONNECTIONS,
            head_timeout: HTTP_HEAD_TIMEOUT,
            max_streams_per_connection: MAX_HTTP2_STREAMS,
            tls: None,
        }
    }
}

/// What a listener has done, for metrics.
#[derive(Debug, Default)]
pub struct ServeStats {
    refused: AtomicU64,
}

impl ServeStats {
    /// Connections closed on accept because [`ServeOptions::max_connections`] were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Serves `app` on `listener` with the default [`ServeOptions`] until `shutdown`
/// completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stats = Arc::new(ServeStats::default());
    serve_with(listener, app, shutdown, ServeOptions::default(), stats).await
}

/// [`serve`] with explicit `limits`, counting what it does in `stats`.
pub async fn serve_with(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeOptions,
    stats: Arc<ServeStats>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection);
    // Every connection holds a receiver: once they are all gone, every connection is.
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}; pausing before the next");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "HTTP: {} connections are open, the most allowed; closed a new one \
                     ({refused} so far)",
                    limits.max_connections
                );
            }
            continue;
        };
        // Best effort: a connection that cannot take it still works, only slower.
        let _ = stream.set_nodelay(true);
        let (http, app, stopping) = (http.clone(), app.clone(), stopping.clone());
        let (tls, idle_limit) = (limits.tls.clone(), limits.head_timeout);
        tokio::spawn(async move {
            match tls {
                None => serve_one(&http, stream, app, idle_limit, stopping).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    // A client that does not finish its handshake in time, or fails it
                    // (no or a bad client certificate), is dropped.
                    let handshake = tokio::time::timeout(idle_limit, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_one(&http, stream, app, idle_limit, stopping).await;
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    drop(stopping);
    // Nobody may be listening any more; that is fine.
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
}

/// Serves one connection until it ends: closed by the client, closed for idling past
/// `idle_limit`, or finished after `stopping` turns true.
fn serve_one<S>(
    http: &auto::Builder<TokioExecutor>,
    stream: S,
    app: axum::Router,
    idle_limit: Duration,
    mut stopping: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::default();
    let service = Tracked {
        inner: TowerToHyperService::new(app),
        activity: activity.clone(),
    };
    let connection = http
        .serve_connection(TokioIo::new(Coalesced::new(stream)), service)
        .into_owned();
    // An error from the connection is the client's (a reset, a timeout, bad framing):
    // hyper has answered what could be answered, and the connection is gone either way.
    async move {
        let stop = async move {
            // The sender outlives every connection: it waits for them all to end.
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = activity.idle_for(idle_limit) => {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
            }
            _ = stop => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
