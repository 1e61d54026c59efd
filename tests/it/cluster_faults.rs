//! A cluster keeps its promises when nodes fail: no acknowledged write is lost when the
//! leader dies or the whole cluster restarts, a wiped node catches up through a snapshot,
//! concurrent CAS is atomic, Raft RPCs from strangers are refused, and a follower cut off
//! from its cluster refuses a write within the request deadline, applying nothing.

use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::admin::AddLearnerRequest;
use aspen_api::client::CasOutcome;
use aspen_api::json::CasRequest;
use aspen_api::wire::MembershipChange;
use aspen_api::Consistency;
use aspen_config::RaftConfig;
use support::{poll, TestCluster};

/// Reads every key in `expected` through node `via` and asserts its value.
async fn assert_all_present(t: &TestCluster, via: u64, expected: &BTreeMap<String, String>) {
    let c = t.client(via);
    for (key, value) in expected {
        let got = c.get(key, Consistency::Linearizable).await.unwrap();
        assert_eq!(
            got.and_then(|e| e.value).as_ref(),
            Some(value),
            "acknowledged key {key} after the fault"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_write_load_loses_no_acknowledged_write() {
    let mut t = support::start_cluster().await;
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let clients: Vec<_> = (1..=3).map(|id| t.client(id)).collect();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (key, value) = (format!("load/{w}/{i}"), format!("v{i}"));
                let client = &clients[((w + i) % 3) as usize];
                if client.put(&key, value.as_bytes()).await.is_ok() {
                    acked.lock().unwrap().insert(key, value);
                }
                i += 1;
            }
        }));
    }
    let count = || acked.lock().unwrap().len();
    poll(
        "writes before the kill",
        Duration::from_secs(20),
        || async { (count() >= 100).then_some(()) },
    )
    .await;
    let old_leader = t.wait_for_leader().await;
    t.cluster.stop(old_leader).await;
    let before = count();
    poll(
        "writes acknowledged by the new leader",
        Duration::from_secs(30),
        || async { (count() >= before + 100).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let new_leader = t.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    let expected = acked.lock().unwrap().clone();
    assert_all_present(&t, new_leader, &expected).await;
    t.cluster.shutdown().await;
}

/// Writes 60 keys through all nodes, stops every node, starts them again from disk, and
/// reads every key back through every node.
async fn whole_cluster_restart_keeps_every_write(raft: RaftConfig, expect_purge: bool) {
    let mut t = support::start_cluster_with(3, raft).await;
    let mut expected = BTreeMap::new();
    for i in 0..60 {
        let (key, value) = (format!("durable/{i}"), format!("value-{i}"));
        t.client(1 + i % 3)
            .put(&key, value.as_bytes())
            .await
            .unwrap();
        expected.insert(key, value);
    }
    if expect_purge {
        poll(
            "every node to purge its log after a snapshot",
            Duration::from_secs(10),
            || async {
                (1..=3u64)
                    .all(|id| {
                        t.cluster
                            .node(id)
                            .unwrap()
                            .raft()
                            .metrics()
                            .borrow()
                            .purged
                            .is_some()
                    })
                    .then_some(())
            },
        )
        .await;
    }
    for id in 1..=3 {
        t.cluster.stop(id).await;
    }
    for id in 1..=3 {
        t.cluster.restart(id).await.unwrap();
    }
    t.wait_for_leader().await;
    for via in 1..=3 {
        assert_all_present(&t, via, &expected).await;
    }
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_cluster_stopped_and_started_from_disk_has_all_its_data() {
    whole_cluster_restart_keeps_every_write(support::fast_raft(), false).await;
}

/// With snapshots every 20 entries and no log kept after them, a restart must rebuild
/// from the snapshot plus the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_cluster_restarted_after_snapshots_and_log_purges_has_all_its_data() {
    let raft = RaftConfig {
        snapshot_every_logs: 20,
        logs_kept_after_snapshot: 0,
        ..support::fast_raft()
    };
    whole_cluster_restart_keeps_every_write(raft, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_re_added_catches_up_through_a_snapshot() {
    let raft = RaftConfig {
        snapshot_every_logs: 20,
        logs_kept_after_snapshot: 0,
        ..support::fast_raft()
    };
    let mut t = support::start_cluster_with(3, raft).await;
    let mut expected = BTreeMap::new();
    // Values large enough that the snapshot (keys and the kept feed, several MB) streams
    // through many buffers.
    for i in 0..80 {
        let (key, value) = (
            format!("snap/{i:02}"),
            format!("v{i}-{}", "x".repeat(40_000)),
        );
        t.client(1).put(&key, value.as_bytes()).await.unwrap();
        expected.insert(key, value);
    }
    let leader = t.wait_for_leader().await;
    let victim = if leader == 3 { 2 } else { 3 };
    let service = t.cluster.node(leader).unwrap().service.clone();
    t.cluster.wipe(victim).await.unwrap();
    service
        .change_membership(MembershipChange::Remove(victim))
        .await
        .unwrap();
    // More writes so the leader snapshots and purges past anything the victim had.
    for i in 80..120 {
        let (key, value) = (format!("snap/{i:03}"), format!("v{i}"));
        t.client(leader).put(&key, value.as_bytes()).await.unwrap();
        expected.insert(key, value);
    }
    let purged = t
        .cluster
        .node(leader)
        .unwrap()
        .raft()
        .metrics()
        .borrow()
        .purged;
    assert!(
        purged.is_some(),
        "the leader must have purged its log after a snapshot"
    );
    t.cluster.restart(victim).await.unwrap();
    let node = t.cluster.node(victim).unwrap();
    let request = AddLearnerRequest {
        node_id: victim,
        endpoint_id: node.endpoint_id().to_string(),
        addrs: node.iroh_addrs().iter().map(|a| a.to_string()).collect(),
    };
    service
        .change_membership(MembershipChange::AddLearner(request.into()))
        .await
        .unwrap();
    service
        .change_membership(MembershipChange::Promote(victim))
        .await
        .unwrap();
    // The snapshot is installed asynchronously after the last chunk is acknowledged:
    // wait until the node's own copy has every key.
    let c = t.client(victim);
    poll(
        "the re-added node to hold every key",
        Duration::from_secs(20),
        || async {
            for (key, value) in &expected {
                let got = c.get(key, Consistency::Stale).await.ok()?;
                if got.and_then(|e| e.value).as_ref() != Some(value) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Its log starts after the leader's purge point, so only a snapshot can have given it
    // the early keys; an installed snapshot is kept as snapshot.bin in the data dir.
    let installed = t.cluster.config(victim).data_dir.join("snapshot.bin");
    assert!(
        installed.exists(),
        "the re-added node must have installed a snapshot"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&t.cluster.config(victim).data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snapshot.") && name != "snapshot.bin")
        .collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_of_fifty_cas_increments_through_different_nodes_reach_exactly_400() {
    let t = support::start_cluster().await;
    t.client(1).put("counter", b"0").await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let c = t.client(1 + task % 3);
        tasks.push(tokio::spawn(async move {
            let mut current = c
                .get("counter", Consistency::Linearizable)
                .await
                .unwrap()
                .unwrap()
                .value
                .unwrap();
            let mut done = 0;
            while done < 50 {
                let next = (current.parse::<u64>().unwrap() + 1).to_string();
                match c
                    .cas(&CasRequest::new(
                        "counter",
                        Some(current.as_bytes()),
                        next.as_bytes(),
                    ))
                    .await
                    .unwrap()
                {
                    CasOutcome::Applied(_) => {
                        done += 1;
                        current = next;
                    }
                    CasOutcome::Mismatch(actual) => current = actual.value.unwrap(),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let value = t
        .client(2)
        .get("counter", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(value.as_deref(), Some("400"));
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_rpcs_from_an_endpoint_that_is_not_a_member_are_refused() {
    let t = support::start_cluster().await;
    let stranger = support::stranger_endpoint().await;
    let target = t.cluster.node(1).unwrap();
    let addr = support::iroh_addr(target);
    let conn = stranger
        .connect(addr, aspen_cluster_node::raft_network::RAFT_ALPN)
        .await
        .unwrap();
    let outcome = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"not a raft message")
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(1024).await.map_err(|e| e.to_string())
    }
    .await;
    assert!(outcome.is_err(), "a stranger must get no Raft answer");
    let reason = conn.closed().await.to_string();
    assert!(
        reason.contains("not a member"),
        "the refusal should say why: {reason}"
    );
    // The cluster still serves.
    t.client(1).put("after-stranger", b"ok").await.unwrap();
    t.cluster.shutdown().await;
}

/// Regression: a write in flight on a leader that stops was reported as 503 ("nothing
/// was applied") although its entry could still commit under the next leader. The
/// linearizability test found it as a read of a value whose write had been "refused".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_cut_short_by_its_leader_stopping_reports_an_unknown_outcome() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let node = t.cluster.node(leader).unwrap();
    let service = node.service.clone();
    let before = node.raft().metrics().borrow().last_log_index.unwrap_or(0);
    // Cut off, the leader appends the entry but cannot commit it.
    t.cluster.partition(leader);
    let write = tokio::spawn(async move {
        let command = aspen_api::Command::Set {
            key: "cut".into(),
            value: b"v".to_vec().into(),
        };
        service.write(command).await
    });
    poll(
        "the entry appended on the leader",
        Duration::from_secs(10),
        || async {
            let last = node.raft().metrics().borrow().last_log_index.unwrap_or(0);
            (last > before).then_some(())
        },
    )
    .await;
    node.raft().shutdown().await.unwrap();
    let err = write
        .await
        .unwrap()
        .expect_err("the write cannot have succeeded");
    assert_eq!(err.code, aspen_api::ErrorCode::Timeout, "{err}");
    t.cluster.shutdown().await;
}

/// `aspen dev` resumes from its data on new ports: the data is back and the membership
/// records where the members now are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_cluster_resumed_from_its_data_dir_keeps_its_data_and_records_new_addresses() {
    use aspen_cluster_node::local_cluster::{LocalCluster, LocalClusterSpec};
    let dir = tempfile::tempdir().unwrap();
    let spec = LocalClusterSpec {
        cluster: "resume".into(),
        data_dir: dir.path().to_path_buf(),
        nodes: 3,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft: support::fast_raft(),
        kv_clients: support::kv_clients(),
    };
    let first = LocalCluster::start(spec.clone()).await.unwrap();
    first
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let client = aspen_api::AspenClient::new(&first.url(1));
    client.put("kept", b"across restarts").await.unwrap();
    first.shutdown().await;

    let second = LocalCluster::start(spec).await.unwrap();
    let leader = second
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let client = aspen_api::AspenClient::new(&second.url(1));
    let got = client.get("kept", Consistency::Linearizable).await.unwrap();
    assert_eq!(
        got.and_then(|e| e.value).as_deref(),
        Some("across restarts")
    );
    let status = aspen_api::AspenClient::new(&second.url(leader))
        .status()
        .await
        .unwrap();
    for member in status.members {
        let actual = second.config(member.node_id).iroh_bind_addr.to_string();
        assert_eq!(
            member.addrs,
            vec![actual],
            "member {} address",
            member.node_id
        );
    }
    second.shutdown().await;
}

/// What a stale read of key `s` on node `id` returned: value and freshness headers.
struct StaleRead {
    value: String,
    revision: u64,
    applied_index: u64,
    known_commit: u64,
    contact_ms: Option<u64>,
}

async fn stale_read(t: &TestCluster, id: u64) -> Option<StaleRead> {
    let http = aspen_api::client::http_client(Duration::from_secs(5));
    let url = format!("{}/v1/kv/s?consistency=stale&raw", t.cluster.url(id));
    let response = http.get(url).send().await.ok()?;
    let header =
        |name: &str| -> Option<u64> { response.headers().get(name)?.to_str().ok()?.parse().ok() };
    let (revision, applied_index, known_commit) = (
        header("aspen-revision")?,
        header("aspen-applied-index")?,
        header("aspen-known-commit-index")?,
    );
    let contact_ms = header("aspen-leader-contact-ms");
    let value = String::from_utf8(response.bytes().await.ok()?.to_vec()).ok()?;
    Some(StaleRead {
        value,
        revision,
        applied_index,
        known_commit,
        contact_ms,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_read_on_a_cut_off_follower_says_how_stale_it_may_be() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    t.client(leader).put("s", b"v1").await.unwrap();
    poll(
        "the follower to apply v1",
        Duration::from_secs(10),
        || async { stale_read(&t, follower).await.filter(|r| r.value == "v1") },
    )
    .await;

    t.cluster.partition(follower);
    let v2 = t.client(leader).put("s", b"v2").await.unwrap().revision;
    // The leader's copy holds v2: its applied log index is at or past v2's entry.
    let v2_index = stale_read(&t, leader).await.unwrap().applied_index;
    let cut_off = poll(
        "the follower's leader contact to age past 1 s",
        Duration::from_secs(10),
        || async {
            stale_read(&t, follower)
                .await
                .filter(|r| r.contact_ms.is_some_and(|ms| ms >= 1000))
        },
    )
    .await;
    assert_eq!(
        cut_off.value, "v1",
        "a cut-off follower serves its old copy"
    );
    assert!(cut_off.revision < v2, "its copy is not at revision {v2}");
    assert!(
        cut_off.applied_index < v2_index && cut_off.known_commit < v2_index,
        "it cannot claim to know log index {v2_index}"
    );

    t.cluster.heal();
    // A read takes its freshness before it reads the data (the data is at least that
    // fresh), so the first read that sees v2 may still report the contact from before
    // the entry came: wait for both.
    let healed = poll(
        "the follower to catch up after healing and report fresh contact",
        Duration::from_secs(20),
        || async {
            stale_read(&t, follower)
                .await
                .filter(|r| r.value == "v2" && r.contact_ms.is_some_and(|ms| ms < 1000))
        },
    )
    .await;
    assert!(healed.revision >= v2);
    assert!(healed.applied_index >= v2_index && healed.known_commit >= v2_index);
    t.cluster.shutdown().await;
}

/// A follower cut off from every other member, asked to write: it forwards through its
/// cluster client, finds no leader it can reach, and answers within the node's request
/// deadline that nothing was applied (and indeed nothing was).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_cut_off_from_its_cluster_refuses_a_write_in_time_and_applies_nothing() {
    use aspen_cluster_node::service::REQUEST_DEADLINE;
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    t.client(leader).put("before", b"v").await.unwrap();

    t.cluster.partition(follower);
    let asked = std::time::Instant::now();
    let client =
        aspen_api::AspenClient::with_timeout(&t.cluster.url(follower), 3 * REQUEST_DEADLINE);
    let refused = client.put("cut/k", b"v").await.unwrap_err();
    let took = asked.elapsed();
    assert!(
        took < REQUEST_DEADLINE + Duration::from_secs(1),
        "answered after {took:?}"
    );
    assert!(
        matches!(
            refused.code(),
            Some(aspen_api::ErrorCode::ClusterUnavailable | aspen_api::ErrorCode::NoLeader)
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("nothing was applied"),
        "{refused}"
    );

    t.cluster.heal();
    let leader = t.wait_for_leader().await;
    let absent = t
        .client(leader)
        .get("cut/k", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(
        absent.is_none(),
        "the refused write was applied: {absent:?}"
    );
    t.cluster.shutdown().await;
}
