//! Values kept as blobs under load and across a stopping node: a node takes at most
//! `MAX_PUTS_IN_FLIGHT` uploads at once and refuses the next at once, writing nothing
//! (and a router passes that refusal on); a
//! node that stops finishes the value reads it took, and a router sends new reads to
//! another member instead of failing them; a member cut off during a put fetches the
//! blob as soon as it applies the reference; and `aspen/value/1` refuses a read of a blob
//! no value can have before looking for it.

use std::time::Duration;

use aspen_api::client::http_client;
use aspen_api::AspenClient;
use aspen_cluster_node::blob_values::MAX_PUTS_IN_FLIGHT;
use aspen_cluster_node::handoff::HandOff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::blob_values::{content, raw};
use crate::support;

const MIB: usize = 1024 * 1024;

/// The node's `aspen_blob_puts_in_flight` gauge.
async fn puts_in_flight(url: &str) -> Option<usize> {
    let text = support::http_text(&format!("{url}/metrics")).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("aspen_blob_puts_in_flight "))
        .and_then(|n| n.trim().parse().ok())
}

/// A `PUT` of `key` declaring 3 MiB that sends half of it and then waits, its connection
/// held open: an upload in progress.
async fn upload_in_progress(url: &str, key: &str) -> TcpStream {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        3 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&content(3 * MIB / 2, 3)).await.unwrap();
    stream
}

/// A router in front of `t` alone, owning every key.
async fn one_cluster_router(t: &support::TestCluster) -> aspen_router::RunningRouter {
    let mut config = aspen_config::RouterConfig::dev(
        "us",
        support::client_key_file(),
        vec![aspen_config::ClusterConfig {
            name: "us-1".into(),
            region: "us".into(),
            nodes: t.cluster.members().to_vec(),
        }],
        vec![aspen_config::RouteConfig {
            prefix: "".into(),
            cluster: "us-1".into(),
        }],
    );
    config.iroh_bind_addr = "127.0.0.1:0".parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    aspen_router::RunningRouter::start(&config, listener)
        .await
        .expect("router starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_past_the_limit_at_once_are_refused_and_a_freed_slot_takes_the_next() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let url = t.cluster.url(leader);
    let router = one_cluster_router(&t).await;
    let through_router = AspenClient::with_timeout(&router.url(), Duration::from_secs(60));
    // A write through the router teaches it the leader: it sends uploads there first.
    through_router.put("small", b"x").await.unwrap();
    let mut held = Vec::new();
    for i in 0..MAX_PUTS_IN_FLIGHT {
        held.push(upload_in_progress(&url, &format!("held-{i}")).await);
    }
    // At the limit: every one of them is taken and running.
    support::poll("every upload running", Duration::from_secs(20), || async {
        (puts_in_flight(&url).await == Some(MAX_PUTS_IN_FLIGHT)).then_some(())
    })
    .await;

    // One more: refused at once, with its body unread, and nothing written.
    let body = content(2 * MIB, 4);
    let head = format!(
        "PUT /v1/kv/one-more HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the refusal comes without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("overloaded") && answer.contains(&MAX_PUTS_IN_FLIGHT.to_string()),
        "{answer}"
    );

    // Through a router: the node's refusal, not a lost stream.
    let refused = through_router.put("one-more", &body).await.unwrap_err();
    let refused = refused.to_string();
    assert!(
        refused.contains("overloaded") && refused.contains(&MAX_PUTS_IN_FLIGHT.to_string()),
        "{refused}"
    );

    // An upload cut off frees its slot; the next one is taken and written whole.
    drop(held.pop());
    support::poll(
        "the cut-off upload's slot freed",
        Duration::from_secs(20),
        || async { (puts_in_flight(&url).await == Some(MAX_PUTS_IN_FLIGHT - 1)).then_some(()) },
    )
    .await;
    let c = t.client(1);
    c.put("one-more", &body).await.unwrap();
    let (status, _, got) = raw(&url, "one-more", None).await;
    assert_eq!(status, 200);
    assert!(got == body, "the value taken after the refusal differs");

    drop(held);
    support::poll("every slot freed", Duration::from_secs(20), || async {
        (puts_in_flight(&url).await == Some(0)).then_some(())
    })
    .await;
    let c = t.client(2);
    for i in 0..MAX_PUTS_IN_FLIGHT {
        let key = format!("held-{i}");
        let entry = c.get(&key, aspen_api::Consistency::Linearizable).await;
        assert!(
            entry.unwrap().is_none(),
            "{key} was written from half a body"
        );
    }
    router.shutdown().await;
    t.cluster.shutdown().await;
}

/// A node asked to stop while it streams a value to a router sends the rest before it
/// goes, and a read that arrives meanwhile is served by another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_node_finishes_the_reads_it_took_and_the_router_sends_new_ones_elsewhere() {
    let mut t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let router = one_cluster_router(&t).await;
    let url = router.url();
    let client = AspenClient::with_timeout(&url, Duration::from_secs(60));
    // A write through the router teaches it the leader: reads of values go there first.
    client.put("small", b"x").await.unwrap();
    // Far more than the buffers between the node and this test hold, so the node is still
    // sending when it is asked to stop.
    let value = content(32 * MIB, 5);
    client.put("big", &value).await.unwrap();

    let mut held = http_client(Duration::from_secs(60))
        .get(format!("{url}/v1/kv/big?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let mut got = Vec::new();
    while got.len() < MIB {
        got.extend_from_slice(&held.chunk().await.unwrap().expect("more of the value"));
    }
    // As `aspen node` does on SIGTERM: a leader hands over before it stops.
    let handed = t
        .cluster
        .node(leader)
        .unwrap()
        .service
        .hand_off_leadership()
        .await;
    assert!(matches!(handed, HandOff::To(_)), "{handed:?}");
    let node_url = t.cluster.url(leader);
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let stop = async {
        t.cluster.stop(leader).await;
        stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let meanwhile = async {
        // A node stops its HTTP listener first, then drains its iroh protocols.
        support::poll(
            "the node's HTTP to stop",
            Duration::from_secs(20),
            || async {
                support::http_text(&format!("{node_url}/healthz"))
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
        // A stale read needs no leader; the stopping node refuses what it is asked now
        // unread, and the router asks the next member.
        let answer = http_client(Duration::from_secs(60))
            .get(format!("{url}/v1/kv/big?raw&consistency=stale"))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let again = answer.bytes().await.unwrap().to_vec();
        assert_eq!(
            status,
            200,
            "a read while the node it went to stops: {}",
            String::from_utf8_lossy(&again[..again.len().min(2000)])
        );
        assert!(again == value, "the read while the node stops differs");
        assert!(
            !stopped.load(std::sync::atomic::Ordering::SeqCst),
            "the node stopped while a read it took was unfinished"
        );
        while let Some(chunk) = held.chunk().await.expect("the rest of the value") {
            got.extend_from_slice(&chunk);
        }
        assert!(got == value, "the read the stopping node took differs");
    };
    tokio::join!(stop, meanwhile);
    assert!(stopped.into_inner());
    router.shutdown().await;
    t.cluster.shutdown().await;
}

/// A member cut off while a value was taken as a blob (so the write's majority did not
/// include it) fetches the blob on its own once it applies the reference, before anyone
/// reads the value there: it follows the change feed's blob puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_during_a_blob_put_fetches_the_blob_once_it_applies_the_reference() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    // Inline writes before and after: most revisions the member follows put no blob.
    t.client(leader).put("before", b"x").await.unwrap();
    t.cluster.partition(cut);
    let value = content(2 * MIB, 9);
    t.client(leader).put("big", &value).await.unwrap();
    t.client(leader).put("after", b"y").await.unwrap();
    assert!(
        !crate::blob_values::holds(&t, cut, &value).await,
        "the cut-off member holds the blob already"
    );
    t.cluster.heal();
    support::poll(
        "the member that was cut off to hold the blob",
        Duration::from_secs(30),
        || async {
            crate::blob_values::holds(&t, cut, &value)
                .await
                .then_some(())
        },
    )
    .await;
    t.cluster.shutdown().await;
}

/// Asks node `id` of `t` over `aspen/value/1` for `len` bytes of `blob` from 0, as a
/// router does; the node's answer.
async fn ask_read(
    t: &support::TestCluster,
    id: u64,
    blob: aspen_api::BlobRef,
    len: u64,
) -> aspen_api::value_wire::ValueAnswer {
    use aspen_api::value_wire::{self, ValueRequest, MAX_VALUE_HEADER_BYTES, VALUE_ALPN};
    use aspen_cluster_node::transport::{bind_endpoint, Access, PeerAddr, Transport};
    let node = t.cluster.node(id).unwrap();
    let endpoint = bind_endpoint(
        support::client_key(),
        "127.0.0.1:0".parse().unwrap(),
        false,
        &Access::open(),
    )
    .await
    .unwrap();
    let transport = Transport::new(endpoint.clone(), Access::open());
    let peer = PeerAddr {
        id: node.endpoint_id(),
        addrs: node.iroh_addrs(),
    };
    let request = value_wire::encode(&ValueRequest::Read {
        blob,
        start: 0,
        len,
    })
    .unwrap();
    let (answer, _bytes) = transport
        .request_stream(
            &peer,
            VALUE_ALPN,
            &request,
            MAX_VALUE_HEADER_BYTES,
            Duration::from_secs(20),
        )
        .await
        .expect("the node answers");
    endpoint.close().await;
    value_wire::decode(&answer).unwrap()
}

/// A read naming a blob no value can have (empty, or over the largest value) is refused
/// for what it is, before any fetch; a possible blob that no member holds is asked of
/// the other members and reported missing, not waited on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_of_an_impossible_blob_is_refused_and_of_a_missing_one_reported() {
    use aspen_api::limits::MAX_BLOB_VALUE_BYTES;
    use aspen_api::value_wire::ValueAnswer;
    use aspen_api::{BlobRef, ErrorCode};
    let t = support::start_cluster().await;
    t.wait_for_leader().await;
    let hash = BlobRef::of(b"no such value").hash;
    let empty = BlobRef { hash, size: 0 };
    match ask_read(&t, 2, empty, 0).await {
        ValueAnswer::Error(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            assert!(e.message.contains("0 bytes"), "{e}");
        }
        other => panic!("an empty blob read answered {other:?}"),
    }
    let over = BlobRef {
        hash,
        size: MAX_BLOB_VALUE_BYTES + 1,
    };
    match ask_read(&t, 2, over, 1).await {
        ValueAnswer::Error(e) => assert_eq!(e.code, ErrorCode::TooLarge, "{e}"),
        other => panic!("a blob over the limit answered {other:?}"),
    }
    // At the limit and at one byte: possible values, so the node looks for them.
    for size in [1, MAX_BLOB_VALUE_BYTES] {
        let missing = BlobRef { hash, size };
        match ask_read(&t, 2, missing, 1).await {
            ValueAnswer::Error(e) => {
                assert_eq!(e.code, ErrorCode::ClusterUnavailable, "{e}");
                assert!(e.message.contains("could not fetch"), "{e}");
            }
            other => panic!("a missing blob of {size} bytes answered {other:?}"),
        }
    }
    t.cluster.shutdown().await;
}
