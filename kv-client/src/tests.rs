//! A member's own client against real iroh endpoints on loopback (relays off), each
//! serving `aspen/kv/2` with one fixed answer: a `NotLeader` naming the client's owner
//! comes back to the owner at once, and admission holds at both sides of its bound.

use std::sync::Arc;
use std::time::Duration;

use aspen_api::wire::{self, KvRequest, KvResponse, KV_ALPN, MAX_WIRE_MESSAGE_BYTES};
use aspen_api::{ApiError, Command, ErrorCode};
use aspen_net::{bind_endpoint, serve_streams, Access, Drain, PeerAddr, ReadBudget, Transport};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, SecretKey};
use tokio::sync::Semaphore;

use crate::{ClusterClient, MAX_FORWARDS_IN_FLIGHT};

/// The id of the member that owns the client under test.
const OWNER: u64 = 1;

/// Answers every request (every item of a batch) with `answer`, once `gate` lets it.
#[derive(Debug, Clone)]
struct Member {
    answer: KvResponse,
    gate: Arc<Semaphore>,
    drain: Drain,
}

impl ProtocolHandler for Member {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let member = self.clone();
        let budget = ReadBudget::new(MAX_WIRE_MESSAGE_BYTES, 4 * MAX_WIRE_MESSAGE_BYTES);
        serve_streams(conn, budget, &self.drain, move |bytes| {
            let member = member.clone();
            async move {
                member.gate.acquire().await.unwrap().forget();
                let answer = match wire::decode::<KvRequest>(&bytes).unwrap() {
                    KvRequest::Batch(items) => {
                        KvResponse::Batch(vec![member.answer.clone(); items.len()])
                    }
                    _ => member.answer.clone(),
                };
                wire::encode(&answer).unwrap()
            }
        })
        .await;
        Ok(())
    }
}

async fn endpoint() -> Endpoint {
    let key = SecretKey::generate();
    let bind = "127.0.0.1:0".parse().unwrap();
    bind_endpoint(key, bind, false, &Access::open())
        .await
        .unwrap()
}

/// A member serving `answer` (held by `gate`), and its address.
async fn member(answer: KvResponse, gate: Arc<Semaphore>) -> (Router, PeerAddr) {
    let server = endpoint().await;
    let peer = PeerAddr {
        id: server.id(),
        addrs: server.bound_sockets(),
    };
    let handler = Member {
        answer,
        gate,
        drain: Drain::new(),
    };
    (
        Router::builder(server).accept(KV_ALPN, handler).spawn(),
        peer,
    )
}

/// The owner's client of a cluster of itself and the one member `peer`.
async fn client(peer: PeerAddr, max_in_flight: usize) -> ClusterClient {
    let transport = Transport::new(endpoint().await, Access::open());
    let owner_peer = PeerAddr {
        id: transport.endpoint().id(),
        addrs: transport.endpoint().bound_sockets(),
    };
    ClusterClient::for_member(
        "c",
        OWNER,
        vec![(OWNER, owner_peer), (2, peer)],
        transport,
        Duration::from_secs(10),
        max_in_flight,
        "TEST_LIMIT",
    )
}

fn put(key: &str) -> KvRequest {
    KvRequest::Write(Command::Set {
        key: key.into(),
        value: bytes::Bytes::from_static(b"v"),
    })
}

#[tokio::test]
async fn a_not_leader_naming_the_owner_comes_back_to_it_at_once() {
    let open = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let named = KvResponse::NotLeader {
        leader: Some(OWNER),
    };
    let (router, peer) = member(named.clone(), open).await;
    let client = client(peer, 8).await;
    assert_eq!(
        client.member_ids().collect::<Vec<_>>(),
        vec![2],
        "the owner is not sent to"
    );
    let started = tokio::time::Instant::now();
    // Alone, and several at once (which go as one batch).
    let alone = client.call(put("a")).await;
    let together =
        futures::future::join_all((0..4).map(|i| client.call(put(&format!("k{i}"))))).await;
    for answer in std::iter::once(alone).chain(together) {
        let answer = answer.unwrap();
        assert_eq!(answer, named, "handed back as the member said it");
    }
    // Followed instead of handed back, each would keep asking until the 10 s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    router.shutdown().await.unwrap();
}

#[tokio::test]
async fn admission_lets_max_in_flight_run_as_many_wait_and_refuses_the_next() {
    for limit in [1, MAX_FORWARDS_IN_FLIGHT] {
        admission_holds_at(limit).await;
    }
}

/// With a member that answers nothing until let go: `limit` requests run, `limit` wait,
/// the next is refused at once naming the bound, and the held ones are all answered.
async fn admission_holds_at(limit: usize) {
    let gate = Arc::new(Semaphore::new(0));
    let answer = KvResponse::Error(ApiError::bad_request("the test member's answer"));
    let (router, peer) = member(answer, gate.clone()).await;
    let client = Arc::new(client(peer, limit).await);
    let held: Vec<_> = (0..2 * limit)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call(put(&format!("held{i}"))).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.load() != (limit, limit) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load {:?}",
            client.load()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = client.call(put("one-more")).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::ClusterUnavailable, "{refused:?}");
    assert!(
        refused.message.contains(&format!("TEST_LIMIT = {limit}")),
        "{}",
        refused.message
    );
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for held in held {
        let answer = held.await.unwrap().unwrap();
        assert!(
            matches!(answer, KvResponse::Error(ref e) if e.code == ErrorCode::BadRequest),
            "{answer:?}"
        );
    }
    assert_eq!(client.load(), (0, 0));
    router.shutdown().await.unwrap();
}

/// The owner's client of a cluster whose one other member answers `NotLeader` naming no
/// leader, with a short deadline: every request ends without a leader and opens the
/// breaker, and the probe never closes it (the member names no leader to it either).
/// Following the member as leader closes it only when the owner has heard from it.
#[tokio::test]
async fn hearing_from_the_leader_closes_an_open_breaker_at_once_and_following_alone_does_not() {
    let open = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (router, peer) = member(KvResponse::NotLeader { leader: None }, open).await;
    let transport = Transport::new(endpoint().await, Access::open());
    let client = ClusterClient::for_member(
        "c",
        OWNER,
        vec![(2, peer)],
        transport,
        Duration::from_millis(500),
        8,
        "TEST_LIMIT",
    );
    let refused = client.call(put("a")).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::ClusterUnavailable, "{refused}");
    assert!(
        client.breaker().0,
        "no leader for a whole deadline opens it"
    );
    client.follow(2, false);
    assert!(client.breaker().0, "following alone leaves it to the probe");
    let at_once = client.call(put("b")).await.unwrap_err();
    assert!(at_once.message.contains("at once"), "{at_once}");
    client.follow(2, true);
    assert!(!client.breaker().0, "hearing from the leader closes it");
    router.shutdown().await.unwrap();
}
