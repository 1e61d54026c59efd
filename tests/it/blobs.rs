//! Each node's blob store (where large values will live): a member fetches a blob from
//! another by hash, whole and verified; an endpoint that is not a member is refused at the
//! handshake and gets nothing; a hold returns once a majority has the blob, and takes only
//! bytes that hash to its name.

use std::convert::Infallible;
use std::time::Duration;

use aspen_blobs::{BlobError, BlobStore, MAX_BLOB_BYTES};
use aspen_cluster_node::node::Node;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nodes_blobs_are_served_to_its_members_and_refused_to_strangers() {
    let t = support::start_cluster().await;
    let (one, two) = (t.cluster.node(1).unwrap(), t.cluster.node(2).unwrap());
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    let body = futures::stream::iter([Ok::<_, Infallible>(Bytes::from(bytes.clone()))]);
    let held = one.blobs().import(body, MAX_BLOB_BYTES).await.unwrap();

    let timeout = Duration::from_secs(20);
    let endpoint = two.transport().endpoint();
    let fetched = two
        .blobs()
        .fetch(endpoint, held.blob(), &[support::iroh_addr(one)], timeout)
        .await
        .unwrap();
    let mut read = Vec::new();
    two.blobs()
        .reader(fetched.blob().hash)
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(read == bytes, "the fetched blob differs");

    let dir = tempfile::tempdir().unwrap();
    let stranger_store = BlobStore::open(dir.path(), None).await.unwrap();
    let stranger = support::stranger_endpoint().await;
    let refused = stranger_store
        .fetch(&stranger, held.blob(), &[support::iroh_addr(one)], timeout)
        .await;
    assert!(
        matches!(refused, Err(BlobError::Fetch { .. })),
        "a stranger fetched a member's blob: {refused:?}"
    );
    assert_eq!(
        stranger_store
            .complete_size(held.blob().hash)
            .await
            .unwrap(),
        None
    );
    let metrics = support::http_text(&format!("{}/metrics", t.cluster.url(1)))
        .await
        .unwrap();
    let line = "aspen_connections_refused{alpn=\"/iroh-bytes/4\"}";
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(line) && !l.ends_with(" 0")),
        "{line} in\n{metrics}"
    );
    drop((held, fetched));
    stranger.close().await;
    stranger_store.shutdown().await;
    t.cluster.shutdown().await;
}

async fn import(node: &Node, bytes: &[u8]) -> aspen_blobs::Held {
    let body = futures::stream::iter([Ok::<_, Infallible>(Bytes::copy_from_slice(bytes))]);
    node.blobs().import(body, MAX_BLOB_BYTES).await.unwrap()
}

/// A blob is whole and durable on a majority of the voters when the hold returns, the
/// member that answered late gets it too, one voter down still leaves a majority, and two
/// down is an error naming what each member said.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_returns_once_a_majority_holds_the_blob_and_fails_without_one() {
    let mut t = support::start_cluster().await;
    let content = |seed: u8| -> Vec<u8> {
        (0..2 * 1024 * 1024)
            .map(|i| (i % 241) as u8 ^ seed)
            .collect()
    };
    let one = t.cluster.node(1).unwrap();
    let held = import(one, &content(1)).await;
    let blob = held.blob();
    let holders = one.hold_on_majority(&held).await.unwrap();
    assert!(holders.contains(&1) && holders.len() >= 2, "{holders:?}");
    for id in &holders {
        let node = t.cluster.node(*id).unwrap();
        assert_eq!(
            node.blobs().complete_size(blob.hash).await.unwrap(),
            Some(blob.size)
        );
    }
    for id in [2, 3] {
        let node = t.cluster.node(id).unwrap();
        support::poll(
            &format!("node {id} holds the blob"),
            Duration::from_secs(30),
            || async {
                node.blobs()
                    .complete_size(blob.hash)
                    .await
                    .unwrap()
                    .map(|_| ())
            },
        )
        .await;
    }

    t.cluster.stop(3).await;
    let one = t.cluster.node(1).unwrap();
    let held = import(one, &content(2)).await;
    let mut holders = one.hold_on_majority(&held).await.unwrap();
    holders.sort();
    assert_eq!(holders, vec![1, 2]);
    let two = t.cluster.node(2).unwrap();
    assert_eq!(
        two.blobs().complete_size(held.blob().hash).await.unwrap(),
        Some(held.blob().size)
    );

    t.cluster.stop(2).await;
    let one = t.cluster.node(1).unwrap();
    let held = import(one, &content(3)).await;
    let refused = one.hold_on_majority(&held).await.unwrap_err();
    assert_eq!((refused.held, refused.needed, refused.voters), (1, 2, 3));
    let text = refused.to_string();
    for named in ["node 2", "node 3", &held.blob().hash.to_string()] {
        assert!(text.contains(named), "{named} not in: {text}");
    }
    t.cluster.shutdown().await;
}

/// A member asked to hold a blob believes only bytes that hash to its name: with the
/// asker's file damaged (the same length, one byte changed), neither the copy from that
/// file nor the verified fetch gives a member the blob, the hold fails naming why, and no
/// member holds anything under that name. Mended, the same blob is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_takes_no_bytes_that_do_not_hash_to_the_blobs_name() {
    let t = support::start_cluster().await;
    let one = t.cluster.node(1).unwrap();
    let bytes: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 239) as u8).collect();
    let held = import(one, &bytes).await;
    let blob = held.blob();
    let file = aspen_blobs::store_dir(&t.cluster.config(1).data_dir)
        .join("data")
        .join(format!("{}.data", blob.hash.to_hex()));
    let mut damaged = std::fs::read(&file).unwrap();
    assert_eq!(
        damaged, bytes,
        "the blob's file is not where the store keeps it"
    );
    damaged[1024 * 1024] ^= 0xff;
    std::fs::write(&file, &damaged).unwrap();

    let refused = one.hold_on_majority(&held).await.unwrap_err();
    let text = refused.to_string();
    assert_eq!((refused.held, refused.needed), (1, 2), "{text}");
    for named in ["node 2", "node 3", "asked for"] {
        assert!(text.contains(named), "{named} not in: {text}");
    }
    for id in [2, 3] {
        let node = t.cluster.node(id).unwrap();
        let size = node.blobs().complete_size(blob.hash).await.unwrap();
        assert_eq!(
            size, None,
            "node {id} holds a blob it was sent wrong bytes for"
        );
    }

    std::fs::write(&file, &bytes).unwrap();
    let holders = one.hold_on_majority(&held).await.unwrap();
    assert!(holders.len() >= 2, "{holders:?}");
    for id in holders {
        let node = t.cluster.node(id).unwrap();
        let size = node.blobs().complete_size(blob.hash).await.unwrap();
        assert_eq!(size, Some(blob.size), "node {id}");
    }
    drop(held);
    t.cluster.shutdown().await;
}
