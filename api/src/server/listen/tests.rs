//! The listener's bounds, on real TCP connections.

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
    limits: ServeOptions,
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
    server_with(limits, app).await
}

/// A server with `limits` serving `app`; its address, stats and the sender that stops it.
async fn server_with(
    limits: ServeOptions,
    app: axum::Router,
) -> (
    std::net::SocketAddr,
    Arc<ServeStats>,
    tokio::sync::oneshot::Sender<()>,
) {
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

/// A client that speaks HTTP/2 from the first byte (h2c with prior knowledge).
fn h2_client() -> reqwest::Client {
    crate::client::client_builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
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
    let limits = ServeOptions {
        head_timeout,
        ..ServeOptions::default()
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
    let limits = ServeOptions {
        head_timeout,
        ..ServeOptions::default()
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
    let limits = ServeOptions {
        max_connections: 2,
        ..ServeOptions::default()
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
    let (addr, _, stop) = server(ServeOptions::default(), Duration::from_millis(100)).await;
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

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let head_timeout = Duration::from_millis(500);
    let limits = ServeOptions {
        head_timeout,
        ..ServeOptions::default()
    };
    let (addr, _, _stop) = server(limits, Duration::ZERO).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let (answer, closed) = read_to_close(&mut silent, Duration::from_secs(10)).await;
    assert!(closed && answer.is_empty(), "closed unanswered: {answer:?}");
    assert!(start.elapsed() >= head_timeout - Duration::from_millis(50));
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_many_requests_at_once() {
    let (addr, _, _stop) = server(ServeOptions::default(), Duration::from_millis(10)).await;
    let client = h2_client();
    let mut answers = tokio::task::JoinSet::new();
    for path in ["hello", "slow"].repeat(10) {
        let (client, url) = (client.clone(), format!("http://{addr}/{path}"));
        answers.spawn(async move {
            let response = client.get(url).send().await.unwrap();
            (response.version(), response.text().await.unwrap())
        });
    }
    while let Some(answer) = answers.join_next().await {
        let (version, body) = answer.unwrap();
        assert_eq!(version, reqwest::Version::HTTP_2);
        assert!(body == "hi" || body == "012", "{body}");
    }
}

#[tokio::test]
async fn a_half_sent_http2_connection_is_cut_off() {
    let head_timeout = Duration::from_millis(500);
    let limits = ServeOptions {
        head_timeout,
        ..ServeOptions::default()
    };
    let (addr, _, _stop) = server(limits, Duration::ZERO).await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame, then the first 5 of a HEADERS frame's 9 header bytes.
    half.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    half.write_all(&[0, 0, 16, 1, 4]).await.unwrap();
    let start = Instant::now();
    // The client never acknowledges the server's settings or its GOAWAY's ping.
    let (_, closed) = read_to_close(&mut half, CLOSE_GRACE + Duration::from_secs(10)).await;
    assert!(closed, "a half-sent HTTP/2 connection is closed");
    assert!(start.elapsed() >= head_timeout - Duration::from_millis(50));
}

#[tokio::test]
async fn http2_requests_past_the_most_streams_wait_for_a_free_one() {
    const MOST: u32 = 2;
    let entered = Arc::new(AtomicU64::new(0));
    let release = Arc::new(Semaphore::new(0));
    let held = {
        let (entered, release) = (entered.clone(), release.clone());
        move || async move {
            entered.fetch_add(1, Ordering::SeqCst);
            release.acquire().await.unwrap().forget();
            "done"
        }
    };
    let limits = ServeOptions {
        max_streams_per_connection: MOST,
        ..ServeOptions::default()
    };
    let (addr, _, _stop) = server_with(limits, axum::Router::new().route("/held", get(held))).await;
    let client = h2_client();
    let mut answers = tokio::task::JoinSet::new();
    for _ in 0..=MOST {
        let (client, url) = (client.clone(), format!("http://{addr}/held"));
        answers.spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    }
    let wait_for = |n: u64| {
        let entered = entered.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while entered.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "{n} requests reach the handler");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(u64::from(MOST)).await;
    // A window for the one past the most to get in, were it let in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        u64::from(MOST),
        "the most allowed, no more"
    );

    release.add_permits(1);
    wait_for(u64::from(MOST) + 1).await;
    release.add_permits(MOST as usize);
    while let Some(answer) = answers.join_next().await {
        assert_eq!(answer.unwrap(), "done");
    }
}
