//! Operations a user runs on a cluster of `aspen node` processes, as docs/OPERATIONS.md
//! tells them to: replacing a member whose host is gone for good (with the CLI), adding a
//! learner that takes longer to catch up than a request may, and restarting every node in
//! turn under load through a router, which fails no request.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use aspen_api::{AspenClient, Consistency};
use aspen_checker::workload::{self, WorkloadSpec};
use aspen_config::{ClusterConfig, PeerConfig, RouteConfig, RouterConfig};
use aspen_router::RunningRouter;
use support::poll;
use support::process::{
    init_when_healthy, leader, run_aspen, start_node, start_nodes, wait_healthy, Peer, Proc,
};

/// Runs `aspen cluster ARGS --endpoint URL` to its end: (success, stdout and stderr).
fn cluster_cli_output(url: &str, args: &[&str]) -> (bool, String) {
    let args: Vec<&str> = ["cluster"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--endpoint", url])
        .collect();
    let (ok, stdout, stderr) = run_aspen(&args);
    (ok, format!("{stdout}{stderr}"))
}

/// Runs `aspen cluster ARGS --endpoint URL`; fails the test, with its output, if it fails.
fn cluster_cli(url: &str, args: &[&str]) {
    let (ok, out) = cluster_cli_output(url, args);
    assert!(ok, "aspen cluster {args:?} failed: {out}");
}

/// The voters of the cluster as node `p` sees it.
async fn voters(p: &Proc) -> Vec<u64> {
    let status = AspenClient::new(&p.url()).status().await.unwrap();
    let mut ids: Vec<u64> = status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.node_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_member_replaced_by_a_new_node_leaves_a_cluster_with_every_key_and_a_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, peers) = start_nodes(dir.path(), "ops", 3, false);
    init_when_healthy(&procs).await;
    let mut expected = BTreeMap::new();
    let first = leader(&procs).await;
    let c = AspenClient::new(&procs[first as usize - 1].url());
    for i in 0..40 {
        let (key, value) = (format!("ops/{i:02}"), format!("v{i}"));
        c.put(&key, value.as_bytes()).await.unwrap();
        expected.insert(key, value);
    }

    // The leader's host is lost: the process killed, its data dir gone.
    let dead = first;
    procs[dead as usize - 1].kill9();
    std::fs::remove_dir_all(dir.path().join(format!("node-{dead}"))).unwrap();
    let live: Vec<usize> = (0..3).filter(|i| *i as u64 + 1 != dead).collect();
    let survivor = procs[live[0]].url();
    let c = AspenClient::new(&survivor);
    for i in 40..50 {
        let (key, value) = (format!("ops/{i:02}"), format!("v{i}"));
        poll(
            "a write after the leader died",
            Duration::from_secs(30),
            || {
                let (c, key, value) = (&c, &key, &value);
                async move { c.put(key, value.as_bytes()).await.ok() }
            },
        )
        .await;
        expected.insert(key, value);
    }

    // A new host, node 4, with the survivors as its peers; added, promoted, then the
    // dead member removed: the order OPERATIONS.md gives, which keeps a quorum throughout.
    let survivors: Vec<_> = peers.iter().filter(|p| p.id != dead).cloned().collect();
    let (new, new_peer) = start_node(dir.path(), "ops", 4, false, &survivors);
    wait_healthy(&new).await;
    let addr = new_peer.iroh.to_string();
    cluster_cli(
        &survivor,
        &[
            "add-learner",
            "--node-id",
            "4",
            "--endpoint-id",
            &new_peer.endpoint_id,
            "--addr",
            &addr,
        ],
    );
    cluster_cli(&survivor, &["promote", "--node-id", "4"]);
    cluster_cli(&survivor, &["remove", "--node-id", &dead.to_string()]);
    let mut want: Vec<u64> = survivors.iter().map(|p| p.id).chain([4]).collect();
    want.sort();
    assert_eq!(voters(&procs[live[0]]).await, want);

    // The new node holds every key...
    let n = AspenClient::new(&new.url());
    poll(
        "node 4 to hold every key",
        Duration::from_secs(30),
        || async {
            for (key, value) in &expected {
                let got = n.get(key, Consistency::Stale).await.ok()?;
                if got.and_then(|e| e.value).as_ref() != Some(value) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // ...and is a working voter: with one survivor stopped too, it and the other
    // survivor are a quorum of the three voters, which a learner or a stale copy is not.
    procs[live[0]].kill9();
    let other = AspenClient::new(&procs[live[1]].url());
    let written = poll(
        "a write with node 4 in the quorum",
        Duration::from_secs(30),
        || {
            let other = &other;
            async move { other.put("ops/after", b"replaced").await.ok() }
        },
    )
    .await;
    let read = n
        .get("ops/after", Consistency::Linearizable)
        .await
        .unwrap()
        .expect("the key written after the replacement");
    assert_eq!(read.mod_revision, written.revision);
}

/// A router in front of the one cluster `name` made of `peers`, owning every key.
async fn router_for(name: &str, peers: &[Peer]) -> RunningRouter {
    let nodes = peers
        .iter()
        .map(|p| PeerConfig {
            node_id: p.id,
            endpoint_id: p.endpoint_id.clone(),
            addrs: vec![p.iroh],
        })
        .collect();
    let cluster = ClusterConfig {
        name: name.into(),
        region: "us".into(),
        nodes,
    };
    let route = RouteConfig {
        prefix: String::new(),
        cluster: name.into(),
    };
    let mut config =
        RouterConfig::dev("us", support::client_key_file(), vec![cluster], vec![route]);
    config.iroh_bind_addr = "127.0.0.1:0".parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    RunningRouter::start(&config, listener).await.unwrap()
}

/// Waits until node `p` has applied at least `index`.
async fn caught_up(p: &Proc, index: u64) {
    let client = AspenClient::with_timeout(&p.url(), Duration::from_secs(2));
    poll(
        &format!("node {} to apply index {index}", p.id),
        Duration::from_secs(30),
        || async {
            let status = client.status().await.ok()?;
            (status.applied_index >= index).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_through_a_router_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, peers) = start_nodes(dir.path(), "roll", 3, false);
    init_when_healthy(&procs).await;
    let first = leader(&procs).await;
    let router = router_for("roll", &peers).await;
    let spec = WorkloadSpec {
        endpoints: vec![router.url()],
        clients: 8,
        keys: 6,
        key_prefixes: Vec::new(),
        duration: Duration::from_secs(30),
        request_timeout: Duration::from_secs(15),
        seed: 0x5011,
    };
    let run = tokio::spawn(async move { workload::run(&spec).await });
    // Every node in turn, the leader last (so the others have been restarted under it,
    // and then it hands over), each stopped with SIGTERM as systemd or docker would, started
    // again and caught up before the next.
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
    order.push(first);
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in order {
        let was_leader = leader(&procs).await == id;
        let p = &mut procs[id as usize - 1];
        p.terminate(Duration::from_secs(15));
        faults.push(format!("SIGTERM node {id} (leader: {was_leader})"));
        p.spawn();
        wait_healthy(p).await;
        let now = leader(&procs).await;
        let index = AspenClient::new(&procs[now as usize - 1].url())
            .status()
            .await
            .unwrap()
            .applied_index;
        caught_up(&procs[id as usize - 1], index).await;
        faults.push(format!("node {id} restarted and caught up"));
    }
    assert!(
        !run.is_finished(),
        "the workload ended before the rolling restart did: lengthen it"
    );
    let (history, stats) = run.await.unwrap().unwrap();
    assert_ne!(leader(&procs).await, 0);
    assert_eq!(
        (stats.unknown, stats.refused),
        (0, 0),
        "requests failed during the rolling restart ({faults:?}): {stats:?}"
    );
    support::assert_linearizable("aspen-rolling-restart", &history, &stats, &faults, 200);
    router.shutdown().await;
}

/// A learner that cannot catch up within a request (here: not running yet) does not make
/// `add-learner` time out: the leader answers with where the learner is, the CLI waits
/// as long as `--wait` says and then fails saying so, and once the node runs, the same
/// command again waits until it holds the leader's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_learner_waits_for_the_learner_to_catch_up_within_its_bound_and_can_be_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let (procs, peers) = start_nodes(dir.path(), "grow", 3, false);
    init_when_healthy(&procs).await;
    let first = leader(&procs).await;
    let url = procs[first as usize - 1].url();
    let c = AspenClient::new(&url);
    for i in 0..20 {
        c.put(&format!("grow/{i}"), b"v").await.unwrap();
    }
    let (mut new, new_peer) = start_node(dir.path(), "grow", 4, false, &peers);
    new.kill9();
    let addr = new_peer.iroh.to_string();
    let add = |wait: &str| {
        vec![
            "add-learner".to_string(),
            "--node-id".into(),
            "4".into(),
            "--endpoint-id".into(),
            new_peer.endpoint_id.clone(),
            "--addr".into(),
            addr.clone(),
            "--wait".into(),
            wait.into(),
        ]
    };
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let started = std::time::Instant::now();
                let (ok, out) = cluster_cli_output(&url, &args);
                (ok, out, started.elapsed())
            })
            .await
            .unwrap()
        }
    };

    // --wait 0: added, answered within the leader's short wait, not after a timeout.
    let (ok, out, took) = run(add("0")).await;
    assert!(ok, "{out}");
    assert!(
        took < aspen_cluster_node::service::ADD_LEARNER_CATCH_UP_WAIT + Duration::from_secs(3),
        "{took:?}: {out}"
    );
    assert!(out.contains("learner"), "{out}");
    // A bound it cannot meet: a failure that says where the learner is.
    let (ok, out, took) = run(add("2")).await;
    assert!(!ok, "{out}");
    assert!(out.contains("has not caught up within 2s"), "{out}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    // Another endpoint under the same id is refused, not silently ignored.
    let mut other = add("0");
    other[4] = peers[0].endpoint_id.clone();
    let (ok, out, _) = run(other).await;
    assert!(!ok, "{out}");
    assert!(out.contains("already a member"), "{out}");

    // The node starts: the same command waits until it holds the leader's log.
    new.spawn();
    wait_healthy(&new).await;
    let (ok, out, _) = run(add("60")).await;
    assert!(ok, "{out}");
    let status = c.status().await.unwrap();
    let matched = |id: u64| {
        status
            .members
            .iter()
            .find(|m| m.node_id == id)
            .and_then(|m| m.matched_index)
    };
    assert!(
        matched(4).unwrap() >= status.applied_index,
        "node 4 at {:?}, the leader applied {}",
        matched(4),
        status.applied_index
    );
    // Asking again only waits: no membership entry is appended.
    let (ok, out, _) = run(add("0")).await;
    assert!(ok, "{out}");
    assert_eq!(
        c.status().await.unwrap().last_log_index,
        status.last_log_index,
        "a repeated add-learner appended to the log"
    );
    let n = AspenClient::new(&new.url());
    poll(
        "the learner to apply the last write",
        Duration::from_secs(10),
        || async { n.get("grow/19", Consistency::Stale).await.ok().flatten() },
    )
    .await;
}
