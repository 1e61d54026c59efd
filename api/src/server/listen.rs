//! The HTTP listener every Aspen process serves with: HTTP/1.1 on a bound TCP listener,
//! with the bounds that keep a misbehaving client from holding the server.
//!
//! - At most [`ServeLimits::max_connections`] connections at once (default
//!   [`MAX_HTTP_CONNECTIONS`]); one more is closed as soon as it is accepted, so the ones
//!   already served keep going and the listener's backlog never fills with the excess.
//! - A connection must deliver a whole request head within
//!   [`ServeLimits::head_timeout`] (default [`HTTP_HEAD_TIMEOUT`]) of the server starting
//!   to wait for one: when it connects, and again after each response. So a half-sent
//!   request line and a connection left idle between requests are both closed after it. A
//!   response that is still streaming (a watch) is not waiting for a head and is never cut.
//! - Every connection has `TCP_NODELAY`: a watch writes many small chunks, and with
//!   Nagle's algorithm each would wait for the client's delayed ACK (up to 40 ms on Linux).
//!
//! On shutdown the listener stops accepting, idle connections close at once, and those
//! with a request in flight finish it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Default for the most connections an HTTP listener serves at once. Above
/// [`crate::limits::MAX_WATCHERS`], since every watch holds a connection.
pub const MAX_HTTP_CONNECTIONS: usize = 8_192;

/// Default for how long a connection may take to deliver a request head, counted from
/// when the server starts waiting for one (at connect and after each response).
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the listener pauses after an accept error that is not about one connection
/// (out of file descriptors, say), before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bounds of one listener (see the module docs).
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time allowed for a request head.
    pub head_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: MAX_HTTP_CONNECTIONS,
            head_timeout: HTTP_HEAD_TIMEOUT,
        }
    }
}

/// What a listener has done, for metrics.
#[derive(Debug, Default)]
pub struct ServeStats {
    refused: AtomicU64,
}

impl ServeStats {
    /// Connections closed on accept because [`ServeLimits::max_connections`] were open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Serves `app` on `listener` with the default [`ServeLimits`] until `shutdown`
/// completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stats = Arc::new(ServeStats::default());
    serve_with(listener, app, shutdown, ServeLimits::default(), stats).await
}

/// [`serve`] with explicit `limits`, counting what it does in `stats`.
pub async fn serve_with(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
    stats: Arc<ServeStats>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
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
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // An error here is the client's (a reset, a timeout, bad framing): hyper has
            // answered what could be answered, and the connection is gone either way.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const GET: &[u8] = b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n";
    const GET_AND_CLOSE: &[u8] = b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    /// A server with `limits` whose `/hello` answers "hi" and `/slow` streams three
    /// chunks `gap` apart; its address, stats and the sender that stops it.
    async fn server(
        limits: ServeLimits,
        gap: Duration,
    ) -> (
        std::net::SocketAddr,
        Arc<ServeStats>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let slow = move || async move {
            let chunks = futures::stream::unfold(0, move |n| async move {
                if n == 3 {
                    return None;
                }
                tokio::time::sleep(gap).await;
                Some((Ok::<_, std::convert::Infallible>(format!("{n}")), n + 1))
            });
            axum::body::Body::from_stream(chunks)
        };
        let app = axum::Router::new()
            .route("/hello", get(|| async { "hi" }))
            .route("/slow", get(slow));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ServeStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            let _ = stopped.await;
        };
        tokio::spawn(serve_with(listener, app, shutdown, limits, stats.clone()));
        (addr, stats, stop)
    }

    /// Reads until the server closes; what it sent, and whether that took under `within`.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
        let mut out = Vec::new();
        let closed = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
        (String::from_utf8_lossy(&out).into_owned(), closed.is_ok())
    }

    /// Sends one request and reads one short answer, leaving the connection open.
    async fn hello(stream: &mut TcpStream) -> String {
        stream.write_all(GET).await.unwrap();
        let mut buf = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn a_request_head_is_served_in_time_and_a_half_sent_one_is_cut_off() {
        let head_timeout = Duration::from_secs(1);
        let limits = ServeLimits {
            head_timeout,
            ..ServeLimits::default()
        };
        let (addr, _, _stop) = server(limits, Duration::ZERO).await;

        // Just inside the timeout: the head's last bytes arrive before it ends.
        let mut on_time = TcpStream::connect(addr).await.unwrap();
        on_time.write_all(&GET[..10]).await.unwrap();
        tokio::time::sleep(head_timeout / 4).await;
        on_time.write_all(&GET[10..]).await.unwrap();
        let mut buf = vec![0; 1024];
        let n = on_time.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hi"));

        // Past it: half a request line, then nothing.
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /hel").await.unwrap();
        let start = Instant::now();
        let (_, closed) = read_to_close(&mut half, Duration::from_secs(10)).await;
        assert!(closed, "a half-sent head is closed");
        assert!(start.elapsed() >= head_timeout - Duration::from_millis(50));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_but_a_long_streaming_answer_is_not() {
        let head_timeout = Duration::from_millis(500);
        let limits = ServeLimits {
            head_timeout,
            ..ServeLimits::default()
        };
        let (addr, _, _stop) = server(limits, head_timeout).await;

        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(hello(&mut idle).await.ends_with("hi"));
        let start = Instant::now();
        let (_, closed) = read_to_close(&mut idle, Duration::from_secs(10)).await;
        assert!(closed, "idle after its answer: closed");
        assert!(start.elapsed() >= head_timeout - Duration::from_millis(50));

        // Three chunks a head timeout apart: the answer outlives the timeout twice over.
        let mut streaming = TcpStream::connect(addr).await.unwrap();
        streaming
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (body, closed) = read_to_close(&mut streaming, Duration::from_secs(10)).await;
        assert!(closed);
        assert!(
            body.contains("\r\n0\r\n") && body.contains("\r\n1\r\n") && body.contains("\r\n2\r\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn the_connection_past_the_most_allowed_is_closed_and_counted() {
        let limits = ServeLimits {
            max_connections: 2,
            ..ServeLimits::default()
        };
        let (addr, stats, _stop) = server(limits, Duration::ZERO).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(hello(&mut first).await.ends_with("hi"));
        assert!(
            hello(&mut second).await.ends_with("hi"),
            "the most allowed are served"
        );

        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(GET).await;
        let (answer, closed) = read_to_close(&mut third, Duration::from_secs(10)).await;
        assert!(
            closed && answer.is_empty(),
            "one past the most: closed unanswered"
        );
        assert_eq!(stats.refused(), 1);
        assert!(
            hello(&mut first).await.ends_with("hi"),
            "the open ones keep working"
        );

        drop(first);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut again = TcpStream::connect(addr).await.unwrap();
            let _ = again.write_all(GET_AND_CLOSE).await;
            let (answer, _) = read_to_close(&mut again, Duration::from_secs(5)).await;
            if answer.ends_with("hi") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a closed connection frees its slot"
            );
        }
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_lets_the_answer_in_flight_finish() {
        let (addr, _, stop) = server(ServeLimits::default(), Duration::from_millis(100)).await;
        let mut streaming = TcpStream::connect(addr).await.unwrap();
        streaming
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0; 16];
        let n = streaming.read(&mut first).await.unwrap();
        stop.send(()).unwrap();
        let (rest, closed) = read_to_close(&mut streaming, Duration::from_secs(10)).await;
        assert!(closed);
        let all = String::from_utf8_lossy(&first[..n]).into_owned() + &rest;
        assert!(
            all.contains("\r\n2\r\n"),
            "the streaming answer finished: {all}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the listener is closed after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
