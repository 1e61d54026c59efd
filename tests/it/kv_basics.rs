//! The KV API of one cluster end to end: every node serves every request (followers
//! forward), values are binary safe, revisions follow etcd semantics, and scans page.

use crate::support;

use aspen_api::client::TxnOutcome;
use aspen_api::json::{JsonPrecondition, JsonWrite, TxnRequest};
use aspen_api::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_any_node_is_readable_through_every_node() {
    let t = support::start_cluster().await;
    for writer in 1..=3u64 {
        let key = format!("k{writer}");
        t.client(writer)
            .put(&key, format!("v{writer}").as_bytes())
            .await
            .unwrap();
        for reader in 1..=3u64 {
            let entry = t
                .client(reader)
                .get(&key, Consistency::Linearizable)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                entry.value.as_deref(),
                Some(format!("v{writer}").as_str()),
                "read via node {reader}"
            );
        }
    }
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_and_versions_follow_etcd_semantics() {
    let t = support::start_cluster().await;
    let c = t.client(1);
    let r1 = c.put("a", b"1").await.unwrap().revision;
    let r2 = c.put("a", b"2").await.unwrap().revision;
    assert!(r2 > r1);
    let e = c
        .get("a", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.create_revision, e.mod_revision, e.version), (r1, r2, 2));
    let d = c.delete("a").await.unwrap();
    assert_eq!(d.deleted, Some(true));
    assert!(c
        .get("a", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    assert_eq!(c.delete("a").await.unwrap().deleted, Some(false));
    let r3 = c.put("a", b"3").await.unwrap().revision;
    let e = c
        .get("a", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.create_revision, e.mod_revision, e.version), (r3, r3, 1));
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_values_round_trip_exactly() {
    let t = support::start_cluster().await;
    let value: Vec<u8> = (0..=255u8).rev().collect();
    t.client(2).put("bin", &value).await.unwrap();
    let entry = t
        .client(3)
        .get("bin", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert!(
        entry.value.is_none(),
        "non-UTF-8 bytes must come back as base64"
    );
    assert_eq!(entry.into_entry().unwrap().value, value);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_txn_with_one_failing_precondition_applies_none_of_its_writes_or_deletes() {
    let t = support::start_cluster().await;
    let c = t.client(2);
    c.put("keep", b"original").await.unwrap();
    c.put("gate", b"closed").await.unwrap();
    let txn = TxnRequest {
        preconditions: vec![
            JsonPrecondition {
                key: "keep".into(),
                exists: Some(true),
                ..Default::default()
            },
            JsonPrecondition {
                key: "gate".into(),
                equals: Some("open".into()),
                ..Default::default()
            },
        ],
        writes: vec![
            JsonWrite::new("keep", b"changed"),
            JsonWrite::new("new", b"x"),
        ],
        deletes: vec!["gate".into()],
    };
    let TxnOutcome::Failed(failure) = c.txn(&txn).await.unwrap() else {
        panic!("txn must fail")
    };
    assert_eq!(failure.index, 1);
    assert_eq!(failure.actual.value.as_deref(), Some("closed"));
    let get = |k: &'static str| {
        let c = c.clone();
        async move {
            c.get(k, Consistency::Linearizable)
                .await
                .unwrap()
                .and_then(|e| e.value)
        }
    };
    assert_eq!(get("keep").await.as_deref(), Some("original"));
    assert_eq!(get("gate").await.as_deref(), Some("closed"));
    assert_eq!(get("new").await, None);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_scan_pages_in_key_order_with_continuation() {
    let t = support::start_cluster().await;
    let c = t.client(1);
    for i in 0..25 {
        c.put(&format!("scan/{i:02}"), b"v").await.unwrap();
    }
    c.put("scanx", b"outside").await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = t
            .client(3)
            .scan(
                "scan/",
                after.as_deref(),
                Some(10),
                Consistency::Linearizable,
            )
            .await
            .unwrap();
        assert!(page.kvs.len() <= 10);
        seen.extend(page.kvs.iter().map(|e| e.key.clone()));
        if !page.more {
            break;
        }
        after = page.next;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("scan/{i:02}")).collect();
    assert_eq!(seen, expected);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_reads_reuses_pooled_connections_instead_of_opening_more() {
    use aspen_cluster_node::storage::state_machine::MAX_IDLE_READERS;
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    t.client(leader).put("hot", b"v").await.unwrap();
    let reads: Vec<_> = (0..8 * MAX_IDLE_READERS)
        .map(|_| {
            let client = t.client(leader);
            tokio::spawn(async move { client.get("hot", Consistency::Linearizable).await })
        })
        .collect();
    for r in reads {
        assert!(r.await.unwrap().unwrap().is_some());
    }
    let sm = t
        .cluster
        .node(leader)
        .unwrap()
        .service
        .state_machine()
        .clone();
    let opened = sm.readers_opened();
    assert!(
        (1..=MAX_IDLE_READERS as u64).contains(&opened),
        "{} concurrent reads opened {opened} connections; at most {MAX_IDLE_READERS} may be",
        8 * MAX_IDLE_READERS
    );
    t.cluster.shutdown().await;
}

/// `aspen_write_stage_seconds_count{stage}` in `metrics`, 0 when the stage has no series.
pub(crate) fn stage_count(metrics: &str, stage: &str) -> u64 {
    let prefix = format!("aspen_write_stage_seconds_count{{stage=\"{stage}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Each node times the stages a write passes on it: the leader proposes, queues and
/// writes its log, sends AppendEntries and applies; a follower serves AppendEntries,
/// writes its log and applies, and proposes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_times_the_stages_a_write_passes_on_it() {
    let t = support::start_cluster().await;
    let leader = t.cluster.leader().expect("a leader");
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    let c = t.client(leader);
    for i in 0..20 {
        c.put(&format!("stage/{i}"), b"v").await.unwrap();
    }
    let scrape = |id: u64| {
        let url = format!("{}/metrics", t.cluster.url(id));
        async move { support::http_text(&url).await }
    };
    let on_leader = scrape(leader).await.unwrap();
    for stage in [
        "propose",
        "log_queue",
        "log_write",
        "append_entries",
        "apply",
    ] {
        assert!(
            stage_count(&on_leader, stage) >= 1,
            "the leader timed no {stage}:\n{on_leader}"
        );
    }
    assert!(
        stage_count(&on_leader, "propose") <= 20,
        "more proposals than writes"
    );
    // The follower applies each write once the leader's next message says it committed.
    support::poll(
        "the follower to apply a write",
        std::time::Duration::from_secs(10),
        || async {
            let m = scrape(follower).await.ok()?;
            let served = stage_count(&m, "append_serve") >= 1;
            (served && stage_count(&m, "log_write") >= 1 && stage_count(&m, "apply") >= 1)
                .then_some(m)
        },
    )
    .await;
    let on_follower = scrape(follower).await.unwrap();
    assert_eq!(stage_count(&on_follower, "propose"), 0, "{on_follower}");

    t.cluster.shutdown().await;
}
