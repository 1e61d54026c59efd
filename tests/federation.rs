//! Federation across regions, with real nodes, real iroh-docs stores on disk and real
//! routers: DESIGN's topology (us: us-1, us-2; eu: eu-1) in one process.

mod support;

use std::time::Duration;

use aspen::topology::{Topology, TopologySpec};
use aspen_api::{AspenClient, Consistency};
use support::{fast_raft, poll};

async fn start(nodes: usize) -> (tempfile::TempDir, Topology) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopologySpec::design(dir.path(), "127.0.0.1:0".parse().unwrap(), nodes);
    spec.raft = fast_raft();
    let topology = Topology::start(spec).await.expect("topology starts");
    (dir, topology)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_written_in_us_is_read_from_the_replica_in_eu() {
    let (_dir, t) = start(1).await;
    for (_, _, cluster) in t.clusters() {
        cluster
            .wait_for_leader(Duration::from_secs(20))
            .await
            .unwrap();
    }
    let us = AspenClient::with_timeout(&t.router("us").url(), Duration::from_secs(20));
    let eu = AspenClient::with_timeout(&t.router("eu").url(), Duration::from_secs(20));
    us.put("config/color", b"blue").await.unwrap();
    let entry = poll(
        "the key in eu's replica",
        Duration::from_secs(30),
        || async {
            eu.get("config/color", Consistency::Stale)
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    assert_eq!(entry.value.as_deref(), Some("blue"));
    assert_eq!(entry.cluster, "us-1");
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let response = http
        .get(format!(
            "{}/v1/kv/config/color?consistency=stale",
            t.router("eu").url()
        ))
        .send()
        .await
        .unwrap();
    let headers = response.headers().clone();
    println!("{headers:?}");
    assert!(headers.get("aspen-replica-lag-revisions").is_some());
    let status: serde_json::Value = http
        .get(format!("{}/v1/status", t.router("eu").url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("{status:#}");
    t.shutdown().await;
}
