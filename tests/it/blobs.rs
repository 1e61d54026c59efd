//! Each node's blob store (where large values will live): a member fetches a blob from
//! another by hash, whole and verified; an endpoint that is not a member is refused at the
//! handshake and gets nothing.

use std::convert::Infallible;
use std::time::Duration;

use aspen_blobs::{BlobError, BlobStore, MAX_BLOB_BYTES};
use aspen_cluster_node::node::Node;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::support;

fn addr_of(node: &Node) -> iroh::EndpointAddr {
    iroh::EndpointAddr::new(node.endpoint_id())
        .with_addrs(node.iroh_addrs().into_iter().map(iroh::TransportAddr::Ip))
}

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
        .fetch(endpoint, held.blob(), &[addr_of(one)], timeout)
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
    let stranger = aspen_cluster_node::transport::bind_endpoint(
        iroh::SecretKey::generate(),
        "127.0.0.1:0".parse().unwrap(),
        false,
        &aspen_cluster_node::transport::Access::open(),
    )
    .await
    .unwrap();
    let refused = stranger_store
        .fetch(&stranger, held.blob(), &[addr_of(one)], timeout)
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
