//! DESIGN's promise 2: single-key operations through the router stay linearizable under
//! faults. Concurrent clients go through a router in front of two clusters while the
//! owning cluster (us-1) loses its leader, has its new leader cut off and healed, and loses
//! a follower; the history checker must find a linearization of every recorded operation.

use crate::support;

use std::time::Duration;

use aspen_checker::workload::{self, WorkloadSpec};
use aspen_cluster_node::faults::fault_round;
use aspen_router::RunningRouter;
use support::{fast_raft, router_config, start_named_cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_key_operations_through_the_router_stay_linearizable_under_faults() {
    let mut us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&router_config(&us1, &us2, 10_000), listener)
        .await
        .unwrap();
    // The workload's keys (`lin/...`) belong to us-1, the cluster under faults.
    let spec = WorkloadSpec {
        endpoints: vec![router.url()],
        clients: 8,
        keys: 4,
        key_prefixes: Vec::new(),
        duration: Duration::from_secs(12),
        request_timeout: Duration::from_secs(12),
        seed: 0x7007e,
    };
    let run = tokio::spawn(async move { workload::run(&spec).await });
    let faults = fault_round(&mut us1.cluster, Duration::from_millis(1500))
        .await
        .expect("us-1 recovers");
    let (history, stats) = run.await.unwrap().unwrap();
    support::assert_linearizable(
        "aspen-router-linearizability",
        &history,
        &stats,
        &faults,
        200,
    );
    router.shutdown().await;
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}
