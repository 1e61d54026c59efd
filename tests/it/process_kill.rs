//! Faults on nodes that are separate processes: three `aspen node` processes under a
//! recorded load through every node, with (1) the leader and then another node killed
//! with SIGKILL mid-write and started again from its data, and (2) the leader cut off from
//! its peers at the iroh transport (the nodes' test-only `/v1/debug/partition`) and
//! healed. The history checker must find a linearization, so an acknowledged write that
//! went missing, or a stale read from a deposed leader, fails the run. And (3) a value kept
//! as a blob whose writer is killed with SIGKILL the moment it answered.

use crate::support;

use std::path::Path;
use std::time::Duration;

use aspen_api::admin::PartitionRequest;
use aspen_api::blob::JsonBlob;
use aspen_api::{AspenClient, BlobRef, Consistency};
use aspen_checker::workload::{self, WorkloadSpec};
use support::poll;
use support::process::{init_when_healthy, leader, start_nodes, wait_healthy, Proc};

fn start_processes(root: &Path, fault_injection: bool) -> Vec<Proc> {
    start_nodes(root, "kill9", 3, fault_injection).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_killed_with_sigkill_mid_write_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = start_processes(dir.path(), false);
    init_when_healthy(&procs).await;
    leader(&procs).await;

    let spec = WorkloadSpec {
        endpoints: procs.iter().map(Proc::url).collect(),
        clients: 8,
        keys: 4,
        key_prefixes: Vec::new(),
        duration: Duration::from_secs(12),
        request_timeout: Duration::from_secs(12),
        seed: 0x9,
    };
    let run = tokio::spawn(async move { workload::run(&spec).await });
    let mut faults = Vec::new();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = if round == 0 {
            leader(&procs).await
        } else {
            1 + (leader(&procs).await % 3)
        };
        let p = &mut procs[victim as usize - 1];
        p.kill9();
        faults.push(format!("kill -9 node {victim}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.spawn();
        wait_healthy(p).await;
        faults.push(format!("restarted node {victim}"));
    }
    let (history, stats) = run.await.unwrap().unwrap();
    support::assert_linearizable("aspen-process-kill", &history, &stats, &faults, 100);
}

/// Sets node `p`'s blocked peers through its fault-injection endpoint.
async fn block(p: &Proc, blocked: Vec<String>) {
    let http = aspen_api::client::http_client(Duration::from_secs(5));
    let response = http
        .post(format!("{}/v1/debug/partition", p.url()))
        .json(&PartitionRequest { blocked })
        .send()
        .await
        .expect("partition request");
    assert!(response.status().is_success(), "{}", response.status());
}

/// Cuts node `victim` off from the others, in both directions.
async fn cut_off(procs: &[Proc], victim: u64) {
    let victim = &procs[victim as usize - 1];
    let others: Vec<&Proc> = procs.iter().filter(|p| p.id != victim.id).collect();
    block(
        victim,
        others.iter().map(|p| p.endpoint_id.clone()).collect(),
    )
    .await;
    for p in others {
        block(p, vec![victim.endpoint_id.clone()]).await;
    }
}

async fn heal(procs: &[Proc]) {
    for p in procs {
        block(p, Vec::new()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_process_cut_off_from_its_peers_and_healed_stays_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let procs = start_processes(dir.path(), true);
    init_when_healthy(&procs).await;
    let first = leader(&procs).await;

    let spec = WorkloadSpec {
        endpoints: procs.iter().map(Proc::url).collect(),
        clients: 8,
        keys: 4,
        key_prefixes: Vec::new(),
        duration: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        seed: 0x17,
    };
    let run = tokio::spawn(async move { workload::run(&spec).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cut_off(&procs, first).await;
    // The majority side elects a new leader while the old one is cut off.
    let others: Vec<&Proc> = procs.iter().filter(|p| p.id != first).collect();
    let second = poll(
        "a new leader on the majority side",
        Duration::from_secs(20),
        || async {
            for p in &others {
                let client = AspenClient::with_timeout(&p.url(), Duration::from_secs(2));
                if let Ok(status) = client.status().await {
                    if status.leader.is_some_and(|l| l != first) {
                        return status.leader;
                    }
                }
            }
            None
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    heal(&procs).await;
    let (history, stats) = run.await.unwrap().unwrap();
    let faults = format!("leader {first} cut off, {second} took over, healed");
    support::assert_linearizable("aspen-process-partition", &history, &stats, &faults, 100);
}

/// A value kept as a blob, its writer (the leader, which took the `PUT` itself) killed
/// with SIGKILL as soon as its answer arrived: the reference was committed only once a
/// majority held the bytes durably, so both others serve the value whole under the next
/// leader, and so does the writer once started again from its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_value_survives_its_writer_killed_with_sigkill_right_after_its_answer() {
    use crate::blob_values::{content, raw};
    let dir = tempfile::tempdir().unwrap();
    let mut procs = start_processes(dir.path(), false);
    init_when_healthy(&procs).await;
    let writer = leader(&procs).await as usize;
    let value = content(3 * aspen_api::limits::MAX_INLINE_VALUE_BYTES + 7, 9);
    let key = "blob/kill9";
    AspenClient::new(&procs[writer - 1].url())
        .put(key, &value)
        .await
        .unwrap();
    procs[writer - 1].kill9();
    let read_back = |url: String| async move {
        poll(
            &format!("{key} served whole by {url}"),
            Duration::from_secs(30),
            || async {
                let (status, _, body) = raw(&url, key, None).await;
                (status == 200).then_some(body)
            },
        )
        .await
    };
    for p in procs.iter().filter(|p| p.id as usize != writer) {
        assert!(
            read_back(p.url()).await == value,
            "node {} served other bytes",
            p.id
        );
        let entry = AspenClient::new(&p.url())
            .get(key, Consistency::Linearizable)
            .await
            .unwrap()
            .expect("the key is there");
        let kept = Some(JsonBlob::from(&BlobRef::of(&value)));
        assert_eq!(entry.blob, kept, "kept as a blob, by reference");
    }
    let p = &mut procs[writer - 1];
    p.spawn();
    wait_healthy(p).await;
    assert!(
        read_back(p.url()).await == value,
        "the restarted writer served other bytes"
    );
}
