//! Stale reads of another region's keys through a router when one node's replica falls
//! behind: the node itself refuses a read below the revision asked for (the monotonic
//! floor), the router moves on to the members whose replicas are current, and when only
//! the stale one is left it answers 503 `replica_behind` rather than an older state.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use aspen::topology::Topology;
use aspen_api::wire::ReplicaReadRequest;
use aspen_api::{Consistency, ErrorCode, ReadRequest};
use support::federation::{client, owner_entries, replica, replica_report, start, wait_converged};
use support::poll;

/// The endpoints of every running node of `cluster`.
fn endpoints(t: &Topology, cluster: &str) -> Vec<iroh::EndpointId> {
    let c = t.cluster(cluster);
    c.running()
        .into_iter()
        .filter_map(|id| c.node(id).map(|n| n.endpoint_id()))
        .collect()
}

/// A replica read of `key` from `source`'s replica that asks for at least `min_revision`.
fn ask(source: &str, key: &str, min_revision: u64) -> ReplicaReadRequest {
    ReplicaReadRequest {
        source: source.into(),
        request: ReadRequest::Get { key: key.into() },
        min_revision,
        max_lag_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_reads_move_past_a_replica_that_is_behind_and_refuse_rather_than_go_back() {
    let (_dir, mut t) = start(3, 10_000).await;
    let (us, eu) = (client(&t, "us"), client(&t, "eu"));
    us.put("stale/k", b"0").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    // A heartbeat of us-1 has reached node 1 of eu-1, so its lag is known before the cut
    // (with none, it would stay unknown rather than grow).
    poll(
        "node 1's replica to know its lag",
        Duration::from_secs(30),
        || async {
            replica_report(t.cluster("eu-1"), 1, "us-1")?
                .lag_ms
                .map(|_| ())
        },
    )
    .await;

    // Node 1 of eu-1 stops importing: cut off from us-1 and from the other eu-1 nodes
    // (which hold the same document and could pass it on). The router still reaches it.
    let mut cut: HashSet<_> = endpoints(&t, "us-1").into_iter().collect();
    cut.extend([2, 3].map(|id| t.cluster("eu-1").node(id).unwrap().endpoint_id()));
    t.cluster("eu-1")
        .node(1)
        .unwrap()
        .transport()
        .set_blocked(cut);
    let (stuck_at, _) = replica(t.cluster("eu-1"), 1, "us-1");
    for i in 1..=5 {
        us.put("stale/k", format!("{i}").as_bytes()).await.unwrap();
    }
    let (head, _) = owner_entries(t.cluster("us-1"));
    poll(
        "nodes 2 and 3 of eu-1 at us-1's head",
        Duration::from_secs(30),
        || async {
            let eu1 = t.cluster("eu-1");
            [2, 3]
                .iter()
                .all(|id| replica(eu1, *id, "us-1").0 == head)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        replica(t.cluster("eu-1"), 1, "us-1").0,
        stuck_at,
        "node 1 is stuck"
    );
    assert!(stuck_at < head);

    // The floor, at a node: a replica below the revision asked for refuses; at it, serves.
    let replicas = |id: u64| {
        t.cluster("eu-1")
            .node(id)
            .unwrap()
            .federation()
            .unwrap()
            .replicas()
            .clone()
    };
    let err = replicas(1).read(&ask("us-1", "stale/k", head)).unwrap_err();
    assert_eq!(err.code, ErrorCode::ReplicaBehind, "{err}");
    assert_eq!(
        replicas(1)
            .read(&ask("us-1", "stale/k", stuck_at))
            .unwrap()
            .revision,
        stuck_at
    );
    assert_eq!(
        replicas(2)
            .read(&ask("us-1", "stale/k", head))
            .unwrap()
            .revision,
        head
    );
    let err = replicas(2)
        .read(&ask("us-1", "stale/k", head + 1))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ReplicaBehind, "{err}");

    // Through the router, which asks node 1 first (it tries members in order from the
    // first): a read bounded to 2 s of staleness cannot be served there once node 1 has
    // heard nothing for longer, and is served by a current node instead.
    poll(
        "node 1's replica seen stale",
        Duration::from_secs(30),
        || async {
            let report = replica_report(t.cluster("eu-1"), 1, "us-1")?;
            (report.lag_ms? > 3_000).then_some(())
        },
    )
    .await;
    let entry = eu
        .get_with_max_lag("stale/k", Duration::from_secs(2))
        .await
        .expect("a current replica serves the bounded read")
        .unwrap();
    assert_eq!(entry.value.as_deref(), Some("5"));
    // Unbounded reads now go on from there, and the router's floor is at the head.
    for _ in 0..10 {
        let entry = eu
            .get("stale/k", Consistency::Stale)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.value.as_deref(), Some("5"));
    }

    // Only the stale node left: reads refuse rather than go back to its older state.
    let eu1 = t.cluster_mut("eu-1");
    eu1.stop(2).await;
    eu1.stop(3).await;
    let mut refusals = 0;
    for _ in 0..3 {
        match eu.get("stale/k", Consistency::Stale).await {
            Ok(entry) => panic!("served {entry:?} from a replica behind what was read"),
            Err(e) if e.code() == Some(ErrorCode::ReplicaBehind) => refusals += 1,
            Err(e) => panic!("refused with {e} instead of replica_behind"),
        }
    }
    assert_eq!(refusals, 3);

    // Healed, node 1 catches up and serves again, never below what was read.
    t.cluster("eu-1")
        .node(1)
        .unwrap()
        .transport()
        .set_blocked(HashSet::new());
    let entry = poll("node 1 serving again", Duration::from_secs(60), || async {
        eu.get("stale/k", Consistency::Stale).await.ok().flatten()
    })
    .await;
    assert_eq!(entry.value.as_deref(), Some("5"));
    assert!(entry.mod_revision <= head);
    t.shutdown().await;
}
