//! Helpers of the federation tests: DESIGN's topology (us: us-1, us-2; eu: eu-1) started
//! in one process, and the owner's and replicas' data read straight from their stores.

use std::time::Duration;

use aspen::topology::{Topology, TopologySpec};
use aspen_api::wire::ReplicaReport;
use aspen_api::{AspenClient, KvEntry};
use aspen_cluster_node::local_cluster::LocalCluster;

use super::{fast_raft, poll};

/// Starts DESIGN's topology with `nodes` per cluster and routers that give each request
/// `deadline_ms`, after `adjust` changed its spec, and waits for every cluster's leader.
pub async fn start_with(
    nodes: usize,
    deadline_ms: u64,
    adjust: impl FnOnce(&mut TopologySpec),
) -> (tempfile::TempDir, Topology) {
    super::init_test_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = TopologySpec::design(dir.path(), "127.0.0.1:0".parse().unwrap(), nodes);
    spec.raft = fast_raft();
    spec.request_deadline_ms = deadline_ms;
    adjust(&mut spec);
    let topology = Topology::start(spec).await.expect("topology starts");
    for (_, name, cluster) in topology.clusters() {
        cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{name} elects a leader"));
    }
    (dir, topology)
}

/// [`start_with`] DESIGN's topology as it is.
pub async fn start(nodes: usize, deadline_ms: u64) -> (tempfile::TempDir, Topology) {
    start_with(nodes, deadline_ms, |_| {}).await
}

/// A client of `region`'s router.
pub fn client(t: &Topology, region: &str) -> AspenClient {
    AspenClient::with_timeout(&t.router(region).url(), Duration::from_secs(30))
}

/// Every key of `cluster`, read from its leader's state machine.
pub fn owner_entries(cluster: &LocalCluster) -> (u64, Vec<KvEntry>) {
    let leader = cluster.leader().expect("a leader");
    let sm = cluster
        .node(leader)
        .unwrap()
        .service
        .state_machine()
        .clone();
    let mut entries = Vec::new();
    let (revision, _) = sm
        .read(|r| {
            r.scan_all(1_000, &mut |page| {
                entries.extend(page);
                Ok(())
            })
        })
        .unwrap()
        .unwrap()
        .unwrap();
    (revision, entries)
}

/// The replica of `source` kept by node `id` of `cluster`: its revision and entries.
pub fn replica(cluster: &LocalCluster, id: u64, source: &str) -> (u64, Vec<KvEntry>) {
    let node = cluster.node(id).expect("running");
    let store = node
        .federation()
        .expect("federated")
        .replicas()
        .store()
        .clone();
    let revision = store.state(source).unwrap().map_or(0, |s| s.revision);
    (revision, store.entries(source).unwrap())
}

/// Waits until every running node of `importer` holds `source`'s replica exactly equal to
/// the owner's state (same revision, same entries).
pub async fn wait_converged(t: &Topology, source: &str, importer: &str, within: Duration) {
    let owner = t.cluster(source);
    poll(
        &format!("{importer}'s replicas of {source} to equal it"),
        within,
        || async {
            let (head, expected) = owner_entries(owner);
            let cluster = t.cluster(importer);
            for id in cluster.running() {
                let (revision, entries) = replica(cluster, id, source);
                if revision != head {
                    return None;
                }
                // Compared without printing: a failure would print thousands of entries.
                assert!(
                    entries == expected,
                    "{importer} node {id} is at {source}'s revision {head} but holds other data"
                );
            }
            Some(())
        },
    )
    .await;
}

/// What node `id` of `cluster` reports of its replica of `source` (revision, lag, phase,
/// checkpoints loaded); `None` if the node is not running or keeps no such replica.
pub fn replica_report(cluster: &LocalCluster, id: u64, source: &str) -> Option<ReplicaReport> {
    cluster
        .node(id)?
        .federation()?
        .replicas()
        .reports()
        .into_iter()
        .find(|r| r.source == source)
}

/// [`replica_report`] once it has caught up with the replica's store (its revision is the
/// store's): a checkpoint load writes the replica first and counts itself after, so a
/// report read as soon as the replica converged may miss the load that converged it.
pub async fn settled_report(cluster: &LocalCluster, id: u64, source: &str) -> ReplicaReport {
    poll(
        &format!("node {id}'s report of its replica of {source} to catch up with it"),
        Duration::from_secs(30),
        || async {
            let report = replica_report(cluster, id, source)?;
            (report.revision == replica(cluster, id, source).0).then_some(report)
        },
    )
    .await
}

/// `/v1/status` of `region`'s router: the replica of `source` (revision, lag seconds).
pub async fn replica_status(
    t: &Topology,
    region: &str,
    source: &str,
) -> Option<(u64, Option<f64>)> {
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let status: serde_json::Value = http
        .get(format!("{}/v1/status", t.router(region).url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let r = status["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["source"] == source)?;
    Some((r["revision"].as_u64()?, r["lag_seconds"].as_f64()))
}

/// The lag a stale read of `key` through `region`'s router reports in its headers:
/// (`aspen-revision`, `aspen-replica-lag-revisions`, `aspen-replica-lag-seconds`), or
/// `None` if the read failed or a header is missing (seconds may be absent: unknown).
pub async fn stale_read_lag(
    t: &Topology,
    region: &str,
    key: &str,
) -> Option<(u64, u64, Option<f64>)> {
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let answer = http
        .get(format!(
            "{}/v1/kv/{key}?consistency=stale",
            t.router(region).url()
        ))
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Some((
        header(aspen_api::headers::REVISION_HEADER)?.parse().ok()?,
        header(aspen_api::headers::REPLICA_LAG_REVISIONS_HEADER)?
            .parse()
            .ok()?,
        header(aspen_api::headers::REPLICA_LAG_SECONDS_HEADER).and_then(|s| s.parse().ok()),
    ))
}

/// `aspen_router_replica_lag_seconds{source}` in `region`'s router's `/metrics`.
pub async fn router_lag_gauge(t: &Topology, region: &str, source: &str) -> Option<f64> {
    let metrics = super::http_text(&format!("{}/metrics", t.router(region).url()))
        .await
        .ok()?;
    let line = format!("aspen_router_replica_lag_seconds{{source=\"{source}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
}
