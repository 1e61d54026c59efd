//! `aspen/kv/2` batches, as a router sends them, against a real node: every request in a
//! batch gets its own answer in order, a batch at the limit is served and one over it is
//! refused whole, only writes and reads may be batched, a follower sends a batch's
//! linearizable items back to the leader while serving its stale reads, and a leader cut
//! off from its peers answers none of a batch's linearizable reads; an endpoint the
//! node's `kv_clients` does not list is refused at connection time and counted.

use crate::support;

use std::time::Duration;

use aspen_api::types::ReadResponse;
use aspen_api::wire::{
    self, KvRequest, KvResponse, KV_ALPN, MAX_WIRE_BATCH, MAX_WIRE_MESSAGE_BYTES,
};
use aspen_api::{Command, Consistency, ErrorCode, ReadRequest, ReadResult, WriteOutcome};
use aspen_cluster_node::transport::{bind_endpoint, PeerAddr, Transport};

async fn send(t: &support::TestCluster, request: &KvRequest) -> KvResponse {
    let leader = t.wait_for_leader().await;
    send_to(t, leader, request).await
}

async fn send_to(t: &support::TestCluster, node_id: u64, request: &KvRequest) -> KvResponse {
    let bytes = send_as(support::client_key(), t, node_id, request)
        .await
        .unwrap();
    wire::decode(&bytes).unwrap()
}

/// Sends `request` to node `node_id` from an endpoint with identity `key`; the answer's
/// bytes.
async fn send_as(
    key: iroh::SecretKey,
    t: &support::TestCluster,
    node_id: u64,
    request: &KvRequest,
) -> Result<Vec<u8>, aspen_cluster_node::transport::TransportError> {
    let node = t.cluster.node(node_id).unwrap();
    let endpoint = bind_endpoint(
        key,
        "127.0.0.1:0".parse().unwrap(),
        false,
        &aspen_cluster_node::transport::Access::open(),
    )
    .await
    .unwrap();
    let transport = Transport::new(
        endpoint.clone(),
        aspen_cluster_node::transport::Access::open(),
    );
    let peer = PeerAddr {
        id: node.endpoint_id(),
        addrs: node.iroh_addrs(),
    };
    let answer = transport
        .request(
            &peer,
            KV_ALPN,
            &wire::encode(request).unwrap(),
            MAX_WIRE_MESSAGE_BYTES,
            Duration::from_secs(15),
        )
        .await;
    endpoint.close().await;
    answer
}

/// The value of `aspen_connections_refused{alpn="aspen/kv/2"}` at node `node_id`.
async fn kv_refusals(t: &support::TestCluster, node_id: u64) -> u64 {
    let metrics = support::http_text(&format!("{}/metrics", t.cluster.url(node_id)))
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("aspen_connections_refused") && l.contains("alpn=\"aspen/kv/2\""))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_not_listed_in_kv_clients_is_refused_at_connection_and_counted() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let before = kv_refusals(&t, leader).await;

    let stranger = iroh::SecretKey::generate();
    let refused = send_as(stranger, &t, leader, &set("stolen", "v")).await;
    assert!(refused.is_err(), "a stranger gets no answer: {refused:?}");
    support::poll(
        "the refusal to show in /metrics",
        Duration::from_secs(10),
        || async { (kv_refusals(&t, leader).await > before).then_some(()) },
    )
    .await;

    // The listed client is served, and the stranger's write never happened.
    let answer = send_to(&t, leader, &get("stolen")).await;
    let KvResponse::Read(ReadResponse {
        result: ReadResult::Get(entry),
        ..
    }) = answer
    else {
        panic!("a listed client is answered: {answer:?}");
    };
    assert!(entry.is_none(), "the refused write changed nothing");
    t.cluster.shutdown().await;
}

fn set(key: &str, value: &str) -> KvRequest {
    KvRequest::Write(Command::Set {
        key: key.into(),
        value: value.as_bytes().to_vec().into(),
    })
}

fn get(key: &str) -> KvRequest {
    KvRequest::Read {
        request: ReadRequest::Get { key: key.into() },
        consistency: Consistency::Linearizable,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_request_in_a_batch_gets_its_own_answer_in_order() {
    let t = support::start_cluster().await;
    let failing_cas = KvRequest::Write(Command::CompareAndSwap {
        key: "a".into(),
        expected: Some(b"nope".to_vec().into()),
        new_value: b"x".to_vec().into(),
    });
    let bad_key = set("", "v");
    let answer = send(
        &t,
        &KvRequest::Batch(vec![set("a", "1"), failing_cas, bad_key, set("b", "2")]),
    )
    .await;
    let KvResponse::Batch(answers) = answer else {
        panic!("expected a batch answer, got {answer:?}");
    };
    assert_eq!(answers.len(), 4);
    assert!(
        matches!(&answers[0], KvResponse::Write(w) if w.outcome == WriteOutcome::Applied { deleted: 0 })
    );
    assert!(
        matches!(&answers[1], KvResponse::Write(w) if matches!(w.outcome, WriteOutcome::PreconditionFailed(_))),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], KvResponse::Error(e) if e.code == ErrorCode::BadRequest),
        "an invalid item fails alone: {:?}",
        answers[2]
    );
    assert!(matches!(&answers[3], KvResponse::Write(_)));

    let answer = send(&t, &KvRequest::Batch(vec![get("a"), get("b"), get("zz")])).await;
    let KvResponse::Batch(reads) = answer else {
        panic!("expected a batch answer");
    };
    let values: Vec<Option<Vec<u8>>> = reads
        .iter()
        .map(|r| match r {
            KvResponse::Read(ReadResponse {
                result: ReadResult::Get(entry),
                ..
            }) => entry.as_ref().map(|e| e.value.clone()),
            other => panic!("expected a read, got {other:?}"),
        })
        .collect();
    assert_eq!(values, vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None]);
    t.cluster.shutdown().await;
}

fn read(request: ReadRequest, consistency: Consistency) -> KvRequest {
    KvRequest::Read {
        request,
        consistency,
    }
}

fn got(answer: &KvResponse) -> Option<Vec<u8>> {
    match answer {
        KvResponse::Read(ReadResponse {
            result: ReadResult::Get(entry),
            ..
        }) => entry.as_ref().map(|e| e.value.clone()),
        other => panic!("expected a get answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_batch_answers_reads_and_writes_in_place_and_a_follower_names_the_leader() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    t.client(leader).put("m/old", b"0").await.unwrap();
    let scan = |limit| ReadRequest::Scan {
        prefix: "m/".into(),
        after: None,
        limit,
    };
    let batch = KvRequest::Batch(vec![
        get("m/old"),
        set("m/new", "1"),
        read(scan(0), Consistency::Linearizable),
        read(scan(10), Consistency::Linearizable),
        read(
            ReadRequest::Get {
                key: "m/old".into(),
            },
            Consistency::Stale,
        ),
    ]);
    let KvResponse::Batch(answers) = send(&t, &batch).await else {
        panic!("expected a batch answer");
    };
    assert_eq!(answers.len(), 5);
    assert_eq!(got(&answers[0]), Some(b"0".to_vec()));
    assert!(
        matches!(&answers[1], KvResponse::Write(_)),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], KvResponse::Error(e) if e.code == ErrorCode::BadRequest && e.message.contains("limit")),
        "a scan with limit 0 fails alone: {:?}",
        answers[2]
    );
    match &answers[3] {
        KvResponse::Read(ReadResponse {
            result: ReadResult::Scan(page),
            ..
        }) => assert!(page.kvs.iter().any(|kv| kv.key == "m/old")),
        other => panic!("expected a scan page, got {other:?}"),
    }
    assert_eq!(got(&answers[4]), Some(b"0".to_vec()));

    // A follower serves nothing it cannot: linearizable reads and writes are sent back to
    // the leader it names, and a stale read is served from its own copy.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let stale = read(
        ReadRequest::Get {
            key: "m/old".into(),
        },
        Consistency::Stale,
    );
    let batch = KvRequest::Batch(vec![get("m/old"), set("m/f", "1"), stale]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answers = loop {
        let KvResponse::Batch(answers) = send_to(&t, follower, &batch).await else {
            panic!("expected a batch answer");
        };
        // The follower's copy catches up with m/old shortly after the write.
        if got(&answers[2]).is_some() || tokio::time::Instant::now() > deadline {
            break answers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for answer in &answers[..2] {
        assert!(
            matches!(answer, KvResponse::NotLeader { leader: Some(l) } if *l == leader),
            "{answer:?}"
        );
    }
    assert_eq!(got(&answers[2]), Some(b"0".to_vec()));
    assert!(t
        .client(leader)
        .get("m/f", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_whose_reads_overflow_the_answer_keeps_every_write_and_leaves_out_reads() {
    use aspen_api::limits::MAX_INLINE_VALUE_BYTES;
    use aspen_cluster_node::service::MAX_BATCH_READ_BYTES;
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let big = vec![b'x'; MAX_INLINE_VALUE_BYTES - 1024];
    t.client(leader).put("big", &big).await.unwrap();
    let readers = 2 * MAX_WIRE_MESSAGE_BYTES / big.len();
    let mut items = vec![set("w/first", "1")];
    items.extend((0..readers).map(|_| get("big")));
    items.push(set("w/last", "1"));
    let KvResponse::Batch(answers) = send(&t, &KvRequest::Batch(items)).await else {
        panic!("an oversized answer is still a batch answer");
    };
    assert_eq!(answers.len(), readers + 2);
    for i in [0, readers + 1] {
        assert!(
            matches!(&answers[i], KvResponse::Write(_)),
            "{:?}",
            answers[i]
        );
    }
    // Reads are kept in order up to and including the one that reaches the byte budget;
    // every one after it is left out, for the router to send again alone.
    let per_read = "big".len() + big.len();
    let kept = MAX_BATCH_READ_BYTES.div_ceil(per_read);
    for (i, answer) in answers[1..=readers].iter().enumerate() {
        if i < kept {
            assert!(got(answer) == Some(big.clone()), "read {i} is kept whole");
        } else {
            assert!(
                wire::is_read_left_out_of_batch(answer),
                "read {i} of {readers} is left out"
            );
        }
    }
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_peers_never_answers_a_batched_linearizable_read() {
    let t = support::start_cluster().await;
    let old = t.wait_for_leader().await;
    t.client(old).put("k", b"v1").await.unwrap();
    t.cluster.partition(old);
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = support::poll(
        "a new leader on the majority side",
        Duration::from_secs(20),
        || {
            let others = others.clone();
            let t = &t;
            async move {
                others.iter().find_map(|id| {
                    let leader = t
                        .cluster
                        .node(*id)?
                        .raft()
                        .metrics()
                        .borrow()
                        .current_leader;
                    leader.filter(|l| *l != old)
                })
            }
        },
    )
    .await;
    t.client(new).put("k", b"v2").await.unwrap();

    // The old leader still holds v1. A router that still believes in it sends it a
    // batch: the linearizable read must not be answered from that copy; the stale one may.
    let stale = read(ReadRequest::Get { key: "k".into() }, Consistency::Stale);
    let KvResponse::Batch(answers) =
        send_to(&t, old, &KvRequest::Batch(vec![get("k"), stale])).await
    else {
        panic!("expected a batch answer");
    };
    assert!(
        matches!(
            &answers[0],
            KvResponse::NotLeader { .. } | KvResponse::Error(_)
        ),
        "a deposed leader answered a linearizable read: {:?}",
        answers[0]
    );
    assert_eq!(
        got(&answers[1]),
        Some(b"v1".to_vec()),
        "its own copy, stale"
    );
    t.cluster.heal();
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_at_the_limit_is_served_and_one_over_it_is_refused_whole() {
    let t = support::start_cluster().await;
    let batch = |n: usize, tag: &str| {
        KvRequest::Batch((0..n).map(|i| set(&format!("{tag}/{i}"), "v")).collect())
    };
    match send(&t, &batch(MAX_WIRE_BATCH, "at")).await {
        KvResponse::Batch(answers) => {
            assert_eq!(answers.len(), MAX_WIRE_BATCH);
            assert!(answers.iter().all(|a| matches!(a, KvResponse::Write(_))));
        }
        other => panic!("a batch at the limit is served: {other:?}"),
    }
    match send(&t, &batch(MAX_WIRE_BATCH + 1, "over")).await {
        KvResponse::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(
                e.message.contains(&MAX_WIRE_BATCH.to_string()),
                "{}",
                e.message
            );
        }
        other => panic!("over the limit is refused: {other:?}"),
    }
    let leader = t.wait_for_leader().await;
    let probe = t
        .client(leader)
        .get("over/0", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(probe.is_none(), "nothing of a refused batch was applied");

    let nested = KvRequest::Batch(vec![
        set("n/1", "v"),
        KvRequest::Batch(vec![set("n/2", "v")]),
    ]);
    match send(&t, &nested).await {
        KvResponse::Error(e) => assert!(e.message.contains("batch item 1"), "{}", e.message),
        other => panic!("a nested batch is refused: {other:?}"),
    }
    assert!(t
        .client(leader)
        .get("n/1", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    t.cluster.shutdown().await;
}
