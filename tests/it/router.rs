//! The router in front of two real clusters on loopback: keys land in their owner,
//! cross-cluster commands are refused and change nothing, merged scans page across
//! clusters, a leader killed under writes loses no acknowledged write, a stopped cluster
//! fails alone, and the route table reloads without dropping requests.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use aspen_api::json::{BatchRequest, JsonPrecondition, JsonWrite, TxnRequest};
use aspen_api::{AspenClient, Consistency, ErrorCode};
use aspen_config::RouteConfig;
use aspen_router::RunningRouter;
use support::{fast_raft, poll, router_config, start_named_cluster, TestCluster};

/// us-1 owns every key but those under `svc-b/`, which us-2 owns.
struct Setup {
    us1: TestCluster,
    us2: TestCluster,
    router: RunningRouter,
}

async fn setup_with_deadline(deadline_ms: u64) -> Setup {
    let us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let config = router_config(&us1, &us2, deadline_ms);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&config, listener)
        .await
        .expect("router starts");
    Setup { us1, us2, router }
}

async fn setup() -> Setup {
    setup_with_deadline(10_000).await
}

impl Setup {
    fn client(&self) -> AspenClient {
        AspenClient::with_timeout(&self.router.url(), Duration::from_secs(20))
    }

    async fn shutdown(self) {
        self.router.shutdown().await;
        self.us1.cluster.shutdown().await;
        self.us2.cluster.shutdown().await;
    }
}

/// Reads `key` from `cluster` directly (its leader, linearizable).
async fn direct(t: &TestCluster, key: &str) -> Option<String> {
    let leader = t.wait_for_leader().await;
    t.client(leader)
        .get(key, Consistency::Linearizable)
        .await
        .unwrap()
        .map(|e| e.value.expect("text value"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_land_in_the_cluster_that_owns_them() {
    let s = setup().await;
    let c = s.client();
    let a = c.put("app/color", b"blue").await.unwrap();
    let b = c.put("svc-b/port", b"8080").await.unwrap();
    assert_eq!((a.cluster.as_str(), b.cluster.as_str()), ("us-1", "us-2"));

    assert_eq!(direct(&s.us1, "app/color").await.as_deref(), Some("blue"));
    assert_eq!(direct(&s.us2, "app/color").await, None);
    assert_eq!(direct(&s.us2, "svc-b/port").await.as_deref(), Some("8080"));
    assert_eq!(direct(&s.us1, "svc-b/port").await, None);

    let entry = c
        .get("svc-b/port", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entry.value.as_deref(), entry.cluster.as_str()),
        (Some("8080"), "us-2")
    );

    let http = aspen_api::client::http_client(Duration::from_secs(5));
    let routes: serde_json::Value = http
        .get(format!("{}/v1/routes?key=svc-b/port", s.router.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes["cluster"], "us-2");
    assert_eq!(routes["routes"][0]["prefix"], "svc-b/");
    let status: serde_json::Value = http
        .get(format!("{}/v1/status", s.router.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["role"], "router");
    for cluster in status["clusters"].as_array().unwrap() {
        assert_eq!(cluster["healthy"], true, "{cluster}");
        assert!(cluster["term"].as_u64().unwrap() >= 1);
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cross_cluster_command_is_refused_and_changes_nothing_anywhere() {
    let s = setup().await;
    let c = s.client();
    let write = |k: &str| JsonWrite::new(k, b"x");
    let batch = BatchRequest {
        writes: vec![write("app/1"), write("svc-b/1")],
        deletes: vec![],
    };
    let err = c.batch(&batch).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossCluster), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("us-1") && message.contains("us-2"),
        "{message}"
    );

    // A precondition on another cluster's key counts too.
    let txn = TxnRequest {
        preconditions: vec![JsonPrecondition {
            key: "svc-b/lock".into(),
            not_exists: Some(true),
            ..Default::default()
        }],
        writes: vec![write("app/2")],
        deletes: vec![],
    };
    let err = c.txn(&txn).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossCluster), "{err}");

    for key in ["app/1", "svc-b/1", "app/2"] {
        assert_eq!(direct(&s.us1, key).await, None, "{key} in us-1");
        assert_eq!(direct(&s.us2, key).await, None, "{key} in us-2");
    }
    // The same commands inside one cluster go through.
    let batch = BatchRequest {
        writes: vec![write("svc-b/1"), write("svc-b/2")],
        deletes: vec![],
    };
    assert_eq!(c.batch(&batch).await.unwrap().cluster, "us-2");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merged_scans_page_across_clusters_in_key_order() {
    let s = setup().await;
    let c = s.client();
    let mut expect = BTreeMap::new();
    for i in 0..5 {
        for (prefix, cluster) in [("svc-a/", "us-1"), ("svc-b/", "us-2"), ("svc-c/", "us-1")] {
            let key = format!("{prefix}{i}");
            c.put(&key, b"v").await.unwrap();
            expect.insert(key, cluster.to_string());
        }
    }
    // A stray copy in a cluster that does not own the key is not shown.
    let leader = s.us1.wait_for_leader().await;
    s.us1.client(leader).put("svc-b/stray", b"v").await.unwrap();

    for limit in [1, 3, 4, 100] {
        let mut seen = BTreeMap::new();
        let mut order = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = c
                .scan(
                    "svc-",
                    after.as_deref(),
                    Some(limit),
                    Consistency::Linearizable,
                )
                .await
                .unwrap();
            assert!(page.kvs.len() <= limit);
            for e in &page.kvs {
                order.push(e.key.clone());
                seen.insert(e.key.clone(), e.cluster.clone());
            }
            if !page.more {
                break;
            }
            after = Some(page.next.expect("more comes with next"));
        }
        assert_eq!(seen, expect, "limit {limit}");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "key order, each key once (limit {limit})");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_clusters_leader_during_writes_through_the_router_loses_no_acknowledged_write() {
    let mut s = setup().await;
    let c = s.client();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..60 {
                    let key = format!("app/w{w}/{i}");
                    match c.put(&key, key.as_bytes()).await {
                        Ok(_) => acked.push(key),
                        // An unknown outcome is allowed; a lost acknowledged write is not.
                        Err(e) if e.code() == Some(ErrorCode::Timeout) => {}
                        Err(e) => panic!("write {key} failed: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    poll(
        "writes to be under way",
        Duration::from_secs(10),
        || async {
            let page = c
                .scan("app/", None, Some(20), Consistency::Stale)
                .await
                .ok()?;
            (page.kvs.len() >= 20).then_some(())
        },
    )
    .await;
    let leader = s.us1.wait_for_leader().await;
    s.us1.cluster.stop(leader).await;
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 200,
        "most writes were acknowledged ({})",
        acked.len()
    );
    for key in &acked {
        let entry = c.get(key, Consistency::Linearizable).await.unwrap();
        assert_eq!(
            entry.and_then(|e| e.value).as_deref(),
            Some(key.as_str()),
            "acknowledged write {key} is present"
        );
    }
    s.shutdown().await;
}

/// The status and body of `GET url`.
async fn ready(url: &str) -> (u16, String) {
    let answer = aspen_api::client::http_client(Duration::from_secs(10))
        .get(url)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_cluster_stopped_its_keys_fail_alone_and_the_other_keeps_serving() {
    // The deadline leaves the 40 requests to us-1 below ample time even on a loaded machine.
    let mut s = setup_with_deadline(5_000).await;
    let c = s.client();
    c.put("svc-b/before", b"v").await.unwrap();
    for id in 1..=3 {
        s.us2.cluster.stop(id).await;
    }
    let stuck = {
        let c = c.clone();
        tokio::spawn(async move { c.put("svc-b/after", b"v").await })
    };
    // While a request to the dead cluster is waiting out its deadline, us-1 serves.
    for i in 0..20 {
        let key = format!("app/{i}");
        c.put(&key, b"v").await.unwrap();
        assert!(c
            .get(&key, Consistency::Linearizable)
            .await
            .unwrap()
            .is_some());
    }
    assert!(
        !stuck.is_finished(),
        "us-1 kept serving while the us-2 request waited"
    );
    let err = stuck.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    assert!(err.to_string().contains("us-2"), "names the cluster: {err}");
    // The breaker is open now: the next request is refused at once, not after 5 s.
    let start = std::time::Instant::now();
    let err = c
        .get("svc-b/before", Consistency::Linearizable)
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    assert!(
        err.to_string().contains("refuses its requests at once"),
        "{err}"
    );
    assert!(
        took < Duration::from_millis(2_500),
        "refused at once, not after the 5 s deadline: {took:?}"
    );
    let metrics = support::http_text(&format!("{}/metrics", s.router.url()))
        .await
        .unwrap();
    assert!(
        metrics.contains("aspen_router_cluster_breaker_open{cluster=\"us-2\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("aspen_router_cluster_breaker_open{cluster=\"us-1\"} 0"));
    // One cluster down leaves the router ready: it serves the other's keys.
    let readyz = format!("{}/readyz", s.router.url());
    assert_eq!(ready(&readyz).await, (200, "ready\n".to_string()));
    // With the other down too (its breaker opened by a request that found no leader),
    // the router serves nothing: not ready, naming both clusters.
    for id in 1..=3 {
        s.us1.cluster.stop(id).await;
    }
    let err = c.put("app/unserved", b"v").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    let (status, body) = ready(&readyz).await;
    assert_eq!(status, 503, "{body}");
    for named in ["cluster_unavailable", "us-1", "us-2"] {
        assert!(body.contains(named), "{named} not in {body}");
    }
    for id in 1..=3 {
        s.us1.cluster.restart(id).await.unwrap();
    }
    poll("the router is ready again", Duration::from_secs(30), || {
        let readyz = readyz.clone();
        async move { (ready(&readyz).await.0 == 200).then_some(()) }
    })
    .await;
    // Once us-2 has a leader again, its probe closes the breaker and requests flow.
    for id in 1..=3 {
        s.us2.cluster.restart(id).await.unwrap();
    }
    poll(
        "us-2 serves through the router again",
        Duration::from_secs(30),
        || {
            let c = c.clone();
            async move { c.put("svc-b/again", b"v").await.ok() }
        },
    )
    .await;
    assert_eq!(direct(&s.us2, "svc-b/again").await.as_deref(), Some("v"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_swaps_the_route_table_and_an_invalid_one_keeps_the_old() {
    let s = setup().await;
    let c = s.client();
    let mut config = router_config(&s.us1, &s.us2, 10_000);
    config.routes.push(RouteConfig {
        prefix: "new/".into(),
        cluster: "us-2".into(),
    });
    s.router.reload(&config).unwrap();
    assert_eq!(c.put("new/key", b"v").await.unwrap().cluster, "us-2");

    let mut bad = config.clone();
    bad.routes.push(RouteConfig {
        prefix: "x/".into(),
        cluster: "nowhere".into(),
    });
    let err = s.router.reload(&bad).unwrap_err();
    assert!(err.contains("nowhere"), "{err}");
    assert_eq!(
        c.put("new/key2", b"v").await.unwrap().cluster,
        "us-2",
        "old table kept"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_at_its_in_flight_limit_refuses_more_at_once_and_the_others_serve() {
    let us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let mut us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let mut config = router_config(&us1, &us2, 3_000);
    config.max_in_flight_per_cluster = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&config, listener).await.unwrap();
    let c = AspenClient::with_timeout(&router.url(), Duration::from_secs(20));
    for id in 1..=3 {
        us2.cluster.stop(id).await;
    }
    // One request runs (waiting for the dead cluster), one waits for its slot: the limit.
    let held: Vec<_> = (0..2)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.put(&format!("svc-b/held{i}"), b"v").await })
        })
        .collect();
    poll(
        "one request running and one waiting",
        Duration::from_secs(2),
        || async { (router.service().load("us-2") == Some((1, 1))).then_some(()) },
    )
    .await;
    let refused = c.put("svc-b/third", b"v").await.unwrap_err();
    assert!(
        refused.to_string().contains("max_in_flight_per_cluster"),
        "{refused}"
    );
    assert_eq!(
        refused.code(),
        Some(ErrorCode::ClusterUnavailable),
        "{refused}"
    );
    assert!(
        !held.iter().any(|h| h.is_finished()),
        "the held requests still wait"
    );
    assert_eq!(
        c.put("app/x", b"v").await.unwrap().cluster,
        "us-1",
        "us-1 is not limited"
    );
    for h in held {
        let err = h.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    }
    router.shutdown().await;
    us1.cluster.shutdown().await;
    for id in 1..=3 {
        us2.cluster.restart(id).await.unwrap();
    }
    us2.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_batched_to_a_cluster_each_get_their_own_answer() {
    let s = setup().await;
    let c = s.client();
    let puts: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let key = format!("svc-b/many/{i}");
                c.put(&key, format!("value-{i}").as_bytes())
                    .await
                    .unwrap()
                    .revision
            })
        })
        .collect();
    let mut revisions = Vec::new();
    for p in puts {
        revisions.push(p.await.unwrap());
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 64, "each write has its own revision");
    let gets: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let key = format!("svc-b/many/{i}");
                let entry = c
                    .get(&key, Consistency::Linearizable)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(entry.value.as_deref(), Some(format!("value-{i}").as_str()));
                assert_eq!(entry.cluster, "us-2");
            })
        })
        .collect();
    for g in gets {
        g.await.unwrap();
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_reads_batched_with_writes_all_succeed_and_each_write_applies_once() {
    use aspen_api::client::CasOutcome;
    use aspen_api::json::CasRequest;
    use aspen_api::limits::{MAX_INLINE_VALUE_BYTES, MAX_WIRE_MESSAGE_BYTES};
    let s = setup().await;
    let c = s.client();
    // Together the reads' results are larger than one wire message, so a batch that
    // carries many of them cannot answer them all at once.
    let big = "b".repeat(MAX_INLINE_VALUE_BYTES - 1024);
    let readers = 2 * MAX_WIRE_MESSAGE_BYTES / big.len();
    c.put("svc-b/big", big.as_bytes()).await.unwrap();
    let reads: Vec<_> = (0..readers)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.get("svc-b/big", Consistency::Linearizable)
                    .await
                    .unwrap()
                    .unwrap()
                    .value
                    .map_or(0, |v| v.len())
            })
        })
        .collect();
    let writes: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let created = c
                    .cas(&CasRequest::new(format!("svc-b/once/{i}"), None, b"v"))
                    .await
                    .unwrap();
                assert!(
                    matches!(created, CasOutcome::Applied(_)),
                    "a create-if-absent succeeds, and is not applied twice: {created:?}"
                );
            })
        })
        .collect();
    for r in reads {
        assert_eq!(
            r.await.unwrap(),
            big.len(),
            "every read gets the whole value"
        );
    }
    for w in writes {
        w.await.unwrap();
    }
    for i in 0..8 {
        let entry = c
            .get(&format!("svc-b/once/{i}"), Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.version, 1, "written exactly once");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_limit_out_of_bounds_is_refused_through_the_router_naming_the_field() {
    use aspen_api::limits::MAX_SCAN_LIMIT;
    let s = setup().await;
    let c = s.client();
    c.put("svc-a/1", b"v").await.unwrap();
    let page = c
        .scan("svc", None, Some(MAX_SCAN_LIMIT), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 1, "the largest page is served");
    for bad in [0, MAX_SCAN_LIMIT + 1] {
        let err = c
            .scan("svc", None, Some(bad), Consistency::Linearizable)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::BadRequest),
            "limit {bad}: {err}"
        );
        assert!(err.to_string().contains("limit"), "names the field: {err}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_listing_followers_first_reports_every_cluster_healthy_at_once() {
    // The router asks the first listed node for status before it knows any leader. A
    // follower knows no matched index for its peers; that once made its status answer
    // undecodable, so /v1/status called healthy clusters broken until a write taught the
    // router the leader.
    let us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let mut config = router_config(&us1, &us2, 10_000);
    let leaders = [us1.wait_for_leader().await, us2.wait_for_leader().await];
    for (cluster, leader) in config.clusters.iter_mut().zip(leaders) {
        // Followers first, the leader last.
        cluster
            .nodes
            .sort_by_key(|n| (n.node_id == leader, n.node_id));
        assert_ne!(cluster.nodes[0].node_id, leader);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&config, listener)
        .await
        .expect("router starts");
    let http = aspen_api::client::http_client(Duration::from_secs(15));
    let status: serde_json::Value = http
        .get(format!("{}/v1/status", router.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let clusters = status["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2);
    for (cluster, leader) in clusters.iter().zip(leaders) {
        assert_eq!(cluster["healthy"], true, "{cluster}");
        assert_eq!(cluster["leader"], leader, "{cluster}");
        assert!(cluster.get("error").is_none(), "{cluster}");
    }
    router.shutdown().await;
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}

/// A router's identity lives in its `secret_key_file`: the same after a restart. Nodes
/// serve `aspen/kv/2` only to the ids in their `kv_clients`, so a router they do not
/// list gets nothing through, and a listed one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_keeps_its_identity_and_only_a_listed_one_is_served() {
    let us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let keys = tempfile::tempdir().unwrap();
    let mut config = router_config(&us1, &us2, 1_000);
    config.secret_key_file = keys.path().join("unlisted.key");

    let start = |config: aspen_config::RouterConfig| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        RunningRouter::start(&config, listener).await.unwrap()
    };
    let unlisted = start(config.clone()).await;
    let id = unlisted.endpoint_id();
    let err = AspenClient::with_timeout(&unlisted.url(), Duration::from_secs(20))
        .put("k", b"v")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    assert!(err.to_string().contains("not allowed"), "{err}");
    unlisted.shutdown().await;
    let again = start(config).await;
    assert_eq!(again.endpoint_id(), id, "the same identity after a restart");
    again.shutdown().await;

    let listed = start(router_config(&us1, &us2, 10_000)).await;
    let c = AspenClient::with_timeout(&listed.url(), Duration::from_secs(20));
    c.put("k", b"v").await.unwrap();
    let entry = us1.client(1).get("k", Consistency::Linearizable).await;
    assert_eq!(entry.unwrap().unwrap().value.as_deref(), Some("v"));
    listed.shutdown().await;
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}
