//! The transport's bounds on real iroh endpoints on loopback (relays off): connections
//! per peer, request streams per connection, the message limit (refused before it is
//! read) and the read budget; and secret key files.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr, SecretKey};
use tokio::sync::Semaphore;

use crate::{
    bind_endpoint, read_message, serve_streams, write_message, Access, Drain, FrameError, PeerAddr,
    ReadBudget, Transport, TransportError, MAX_CONNECTIONS_PER_PEER, MAX_STREAMS_PER_CONNECTION,
};

const ALPN: &[u8] = b"aspen/test/1";

/// Answers each request stream with its own bytes once `gate` lets it, counting the
/// requests being handled in `busy`.
#[derive(Debug, Clone)]
struct Echo {
    gate: Arc<Semaphore>,
    busy: Arc<AtomicUsize>,
    budget: ReadBudget,
    drain: Drain,
}

/// The largest message the test protocol takes.
const MAX_MESSAGE: usize = 64;

impl Echo {
    fn open() -> Echo {
        Echo::with_budget(ReadBudget::new(MAX_MESSAGE, 1 << 20))
    }

    fn with_budget(budget: ReadBudget) -> Echo {
        Echo {
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            busy: Arc::default(),
            budget,
            drain: Drain::new(),
        }
    }
}

impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let echo = self.clone();
        serve_streams(conn, self.budget.clone(), &self.drain, move |bytes| {
            let echo = echo.clone();
            async move {
                echo.busy.fetch_add(1, Ordering::SeqCst);
                // Each request uses up its pass, so a test lets through exactly as many as it adds.
                echo.gate.acquire().await.unwrap().forget();
                echo.busy.fetch_sub(1, Ordering::SeqCst);
                bytes
            }
        })
        .await;
        Ok(())
    }
}

async fn endpoint(access: &Access) -> Endpoint {
    bind_endpoint(
        SecretKey::generate(),
        "127.0.0.1:0".parse().unwrap(),
        false,
        access,
    )
    .await
    .unwrap()
}

fn addr_of(endpoint: &Endpoint) -> EndpointAddr {
    EndpointAddr::new(endpoint.id()).with_addrs(
        endpoint
            .bound_sockets()
            .into_iter()
            .map(iroh::TransportAddr::Ip),
    )
}

/// `echo` served on a new endpoint, a client endpoint, and one connection from it: the
/// router (to shut down) and the client must live as long as the connection is used.
async fn serve_and_connect(echo: Echo) -> (Router, Endpoint, Connection) {
    let server = endpoint(&Access::open()).await;
    let server_addr = addr_of(&server);
    let router = Router::builder(server).accept(ALPN, echo).spawn();
    let client = endpoint(&Access::open()).await;
    let conn = client.connect(server_addr, ALPN).await.unwrap();
    (router, client, conn)
}

/// One request on `conn`: whether it came back whole within 10 s.
async fn echoes(conn: &Connection) -> bool {
    let ask = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        write_message(&mut send, b"hi").await.ok()?;
        read_message(&mut recv, MAX_MESSAGE).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(10), ask).await, Ok(Some(b)) if b == b"hi")
}

/// Polls `check` every 50 ms until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_peer_holds_at_most_max_connections_and_a_closed_one_frees_its_place() {
    let access = Access::open();
    let server = endpoint(&access).await;
    let server_addr = addr_of(&server);
    let router = Router::builder(server).accept(ALPN, Echo::open()).spawn();
    // A peer without Aspen's hook (its own would refuse the extra connection locally).
    let client = Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .unwrap()
        .bind()
        .await
        .unwrap();

    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS_PER_PEER {
        let conn = client.connect(server_addr.clone(), ALPN).await.unwrap();
        assert!(
            echoes(&conn).await,
            "connection {} of the limit is served",
            i + 1
        );
        held.push(conn);
    }
    let over = client.connect(server_addr.clone(), ALPN).await;
    let refused = match over {
        Err(_) => true,
        Ok(conn) => !echoes(&conn).await,
    };
    assert!(
        refused,
        "connection {} is refused",
        MAX_CONNECTIONS_PER_PEER + 1
    );
    let counted: u64 = access.refused_counts().iter().map(|(_, n)| n).sum();
    assert_eq!(counted, 1, "the refusal is counted");
    assert!(echoes(&held[0]).await, "the held ones are untouched");

    held.pop().unwrap().close(0u32.into(), b"done");
    eventually("a closed connection frees its place", async || match client
        .connect(server_addr.clone(), ALPN)
        .await
    {
        Ok(conn) if echoes(&conn).await => {
            held.push(conn);
            true
        }
        _ => false,
    })
    .await;
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_has_at_most_max_streams_in_flight_and_the_next_waits_for_one() {
    let echo = Echo::open();
    let gate = Arc::new(Semaphore::new(0));
    let echo = Echo {
        gate: gate.clone(),
        ..echo
    };
    let busy = echo.busy.clone();
    let (router, _client, conn) = serve_and_connect(echo).await;

    let limit = MAX_STREAMS_PER_CONNECTION as usize;
    let asks: Vec<_> = (0..=limit)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { echoes(&conn).await })
        })
        .collect();
    eventually(
        "the limit's worth of requests reach the handler",
        async || busy.load(Ordering::SeqCst) == limit,
    )
    .await;
    // The one past the limit has no stream credit: it cannot even be sent yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        busy.load(Ordering::SeqCst),
        limit,
        "never more than the limit at once"
    );
    gate.add_permits(Semaphore::MAX_PERMITS);
    for ask in asks {
        assert!(
            ask.await.unwrap(),
            "every request is answered once room is made"
        );
    }
    router.shutdown().await.unwrap();
}

/// Sends `len` bytes (all 7s) as one message on a new stream of `conn`; the answer.
async fn ask_with(conn: &Connection, len: usize) -> Result<Vec<u8>, FrameError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    write_message(&mut send, &vec![7u8; len]).await?;
    read_message(&mut recv, MAX_MESSAGE).await
}

#[tokio::test]
async fn a_message_at_the_limit_is_served_and_one_byte_more_is_refused_unread() {
    let echo = Echo::open();
    let busy = echo.busy.clone();
    let (router, _client, conn) = serve_and_connect(echo).await;

    assert_eq!(
        ask_with(&conn, MAX_MESSAGE).await.unwrap().len(),
        MAX_MESSAGE
    );
    let refused = ask_with(&conn, MAX_MESSAGE + 1).await.unwrap_err();
    assert!(
        matches!(refused, FrameError::RefusedTooLarge),
        "{refused:?}"
    );

    // Only a length that claims more than the limit, and no body at all: refused at
    // once, so the server never waited for (or read) the body.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let claim = u32::try_from(MAX_MESSAGE + 1).unwrap().to_be_bytes();
    send.write_all(&claim).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_message(&mut recv, 64))
        .await
        .expect("the refusal comes without the body");
    assert!(
        matches!(answer, Err(FrameError::RefusedTooLarge)),
        "{answer:?}"
    );
    assert_eq!(
        busy.load(Ordering::SeqCst),
        0,
        "no handler ran for the refused"
    );
    // The connection still serves.
    assert!(echoes(&conn).await);
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_past_the_read_budget_wait_unread_for_room() {
    // Room for two largest messages: the third waits until a handler finishes.
    let budget = ReadBudget::new(MAX_MESSAGE, 2 * MAX_MESSAGE);
    let gate = Arc::new(Semaphore::new(0));
    let echo = Echo {
        gate: gate.clone(),
        ..Echo::with_budget(budget.clone())
    };
    let busy = echo.busy.clone();
    let (router, _client, conn) = serve_and_connect(echo).await;

    let asks: Vec<_> = (0..3)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { ask_with(&conn, MAX_MESSAGE).await })
        })
        .collect();
    eventually("two requests reach the handler", async || {
        busy.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(budget.available(), 0, "the two hold the whole budget");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(busy.load(Ordering::SeqCst), 2, "the third waits for room");
    gate.add_permits(1);
    eventually("the third gets room once one is answered", async || {
        let answered = asks.iter().filter(|a| a.is_finished()).count();
        answered == 1 && busy.load(Ordering::SeqCst) == 2
    })
    .await;
    gate.add_permits(Semaphore::MAX_PERMITS);
    for ask in asks {
        assert_eq!(ask.await.unwrap().unwrap().len(), MAX_MESSAGE);
    }
    assert_eq!(budget.available(), 2 * MAX_MESSAGE, "every byte given back");
    router.shutdown().await.unwrap();
}

#[test]
fn a_secret_key_file_is_created_once_read_back_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys").join("router.key");
    let key = crate::create_secret_key_file(&path).unwrap();
    assert_eq!(
        crate::read_secret_key_file(&path).unwrap().public(),
        key.public()
    );
    assert_eq!(
        crate::load_or_create_secret_key_file(&path)
            .unwrap()
            .public(),
        key.public()
    );
    let again = crate::create_secret_key_file(&path).unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(
        crate::read_secret_key_file(&path).unwrap().public(),
        key.public()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }

    let other = dir.path().join("other.key");
    let made = crate::load_or_create_secret_key_file(&other).unwrap();
    assert_ne!(made.public(), key.public());
    std::fs::write(&other, "not a key").unwrap();
    let bad = crate::read_secret_key_file(&other).unwrap_err().to_string();
    assert!(bad.contains("other.key"), "{bad}");
}

/// A stopping server answers every request it took, and the requester learns that the
/// ones it did not take were never processed (unreachable, safe to send elsewhere), not
/// that they failed with an unknown outcome.
#[tokio::test]
async fn a_stopping_server_answers_what_it_took_and_the_rest_count_as_not_delivered() {
    let gate = Arc::new(Semaphore::new(0));
    let echo = Echo {
        gate: gate.clone(),
        ..Echo::open()
    };
    let (busy, drain) = (echo.busy.clone(), echo.drain.clone());
    let server = endpoint(&Access::open()).await;
    let peer = PeerAddr {
        id: server.id(),
        addrs: server.bound_sockets(),
    };
    let router = Router::builder(server).accept(ALPN, echo).spawn();
    let transport = Transport::new(endpoint(&Access::open()).await, Access::open());
    let ask = |n: u8| {
        let (transport, peer) = (transport.clone(), peer.clone());
        tokio::spawn(async move {
            transport
                .request(&peer, ALPN, &[n], MAX_MESSAGE, Duration::from_secs(10))
                .await
        })
    };

    let taken: Vec<_> = (0..3).map(ask).collect();
    eventually("three requests in the handler", async || {
        busy.load(Ordering::SeqCst) == 3
    })
    .await;
    let stopped = tokio::spawn({
        let drain = drain.clone();
        async move { drain.stop(Duration::from_secs(10)).await }
    });
    eventually("the drain to begin", async || drain.is_stopping()).await;
    let late = ask(9);
    // Not answered while the taken ones run: the stop waits for them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopped.is_finished(),
        "stopped before answering what it took"
    );
    gate.add_permits(3);
    for (n, asked) in taken.into_iter().enumerate() {
        assert_eq!(
            asked.await.unwrap().unwrap(),
            vec![n as u8],
            "request {n} answered"
        );
    }
    assert!(stopped.await.unwrap(), "every connection drained");
    match late.await.unwrap() {
        Err(TransportError::Unreachable { reason, .. }) => {
            assert!(reason.contains("stopping"), "{reason}")
        }
        other => panic!("a request the stopping server did not take: {other:?}"),
    }
    assert_eq!(
        busy.load(Ordering::SeqCst),
        0,
        "the late one was never handled"
    );
    // A connection made while stopping is closed at once, the same way.
    let fresh = Transport::new(endpoint(&Access::open()).await, Access::open());
    let refused = fresh
        .request(&peer, ALPN, b"x", MAX_MESSAGE, Duration::from_secs(10))
        .await;
    assert!(
        matches!(&refused, Err(TransportError::Unreachable { .. })),
        "{refused:?}"
    );
    router.shutdown().await.unwrap();
}
