//! Single-key operations stay linearizable under faults: concurrent clients record every
//! operation while the leader is killed and restarted, a node is cut off and healed, and a
//! follower is killed; the history checker then searches for a linearization (it does not
//! compare with the last write).

use crate::support;

use std::time::Duration;

use aspen_checker::workload::{self, WorkloadSpec};
use aspen_cluster_node::faults::fault_round;

/// How long each fault lasts before it is repaired.
const FAULT_DURATION: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_leader_kill_partition_and_follower_kill_are_linearizable() {
    let mut t = support::start_cluster().await;
    let spec = WorkloadSpec {
        endpoints: (1..=3).map(|id| t.cluster.url(id)).collect(),
        clients: 8,
        keys: 4,
        key_prefixes: Vec::new(),
        duration: Duration::from_secs(14),
        request_timeout: Duration::from_secs(12),
        seed: 0x5eed,
    };
    let run = tokio::spawn(async move { workload::run(&spec).await });
    let faults = fault_round(&mut t.cluster, FAULT_DURATION)
        .await
        .expect("the cluster recovers");
    let (history, stats) = run.await.unwrap().unwrap();
    support::assert_linearizable("aspen-linearizability", &history, &stats, &faults, 200);
    t.cluster.shutdown().await;
}
