//! Values kept as blobs across regions: the federation document carries the reference,
//! the importing region's nodes fetch the bytes from the owner's nodes over iroh-blobs,
//! keep them while their replica references them (and only then), and the region's router
//! serves `?raw` reads of them from there, also while the owner region is cut off.

use std::time::Duration;

use aspen_api::client::http_client;
use aspen_api::BlobRef;
use aspen_cluster_node::local_cluster::LocalCluster;

use crate::support;
use support::federation::{client, replica, start_with};
use support::poll;

const MIB: usize = 1024 * 1024;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ seed).collect()
}

/// Whether node 1 of `cluster` holds `value`'s blob whole.
async fn holds(cluster: &LocalCluster, value: &[u8]) -> bool {
    let blob = aspen_blobs::BlobRef::from(BlobRef::of(value));
    let node = cluster.node(1).expect("running");
    node.blobs().complete_size(blob.hash).await.unwrap() == Some(blob.size)
}

/// `GET {url}/v1/kv/{key}?raw&consistency=stale`, with `range` as the `Range` header.
async fn stale_raw(url: &str, key: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let mut request = http_client(Duration::from_secs(60))
        .get(format!("{url}/v1/kv/{key}?raw&consistency=stale"));
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_value_reaches_the_other_region_by_hash_and_is_read_there_with_its_owner_cut_off() {
    let (_dir, t) = start_with(1, 10_000, |spec| spec.blobs.collect_every_secs = 1).await;
    let us = client(&t, "us");
    let eu_router = t.router("eu").url();
    let eu = t.cluster("eu-1");
    let first = content(2 * MIB + 7, 3);
    us.put("model/weights", &first).await.unwrap();

    // No read asks for it: the replica gets the reference, its node the bytes.
    poll(
        "eu-1 to fetch the replicated blob",
        Duration::from_secs(30),
        || async { holds(eu, &first).await.then_some(()) },
    )
    .await;
    let (_, entries) = replica(eu, 1, "us-1");
    let entry = entries.iter().find(|e| e.key == "model/weights").unwrap();
    assert_eq!(
        (entry.blob, entry.value.len()),
        (Some(BlobRef::of(&first)), 0),
        "the document carried the reference, not the bytes"
    );
    // Two collection runs later (the first lets go of the fetch's own hold), the bytes
    // are kept by the replica's reference alone.
    let node = eu.node(1).unwrap();
    let runs = node.blob_collections();
    poll(
        "two collection runs on eu-1",
        Duration::from_secs(30),
        || async { (node.blob_collections() >= runs + 2).then_some(()) },
    )
    .await;
    assert!(holds(eu, &first).await, "collected while referenced");

    // The owner region cut off: eu's router serves the bytes from eu, whole and by range.
    t.partition_regions("us", "eu");
    let (status, body) = stale_raw(&eu_router, "model/weights", None).await;
    assert_eq!(status, 200);
    assert!(
        body == first,
        "the bytes read in eu differ from those written"
    );
    let (status, body) = stale_raw(&eu_router, "model/weights", Some("bytes=1000-1999")).await;
    assert_eq!(status, 206);
    assert!(body == first[1000..2000], "the range read in eu differs");
    t.heal();

    // Overwritten at the owner: eu fetches the new bytes, and collects the old ones it no
    // longer references.
    let second = content(MIB + 1, 9);
    us.put("model/weights", &second).await.unwrap();
    poll(
        "eu-1 to fetch the new value and let the old go",
        Duration::from_secs(60),
        || async { (holds(eu, &second).await && !holds(eu, &first).await).then_some(()) },
    )
    .await;
    let (status, body) = stale_raw(&eu_router, "model/weights", None).await;
    assert_eq!(status, 200);
    assert!(body == second, "eu serves the overwritten bytes");
    t.shutdown().await;
}
