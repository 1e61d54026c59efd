//! Leases on real clusters: a lease's keys vanish after its TTL when no keep-alive comes,
//! and never while keep-alives come, across a leader kill; the expiry deletes arrive in
//! the feed in one revision and never before the TTL since the last keep-alive. The lease
//! API refuses bad input at both sides of every limit, and through a router a lease is
//! its cluster's alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::json::{BatchRequest, CasRequest, JsonWrite, TxnRequest};
use aspen_api::lease::LeaseId;
use aspen_api::limits::{MAX_KEYS_PER_LEASE, MAX_LEASE_TTL_SECS};
use aspen_api::{AspenClient, Consistency, ErrorCode};
use aspen_router::RunningRouter;
use tokio::time::Instant;

use super::support::{fast_raft, poll, router_config, start_named_cluster};
use super::{follow, Seen};

const TTL_SECS: u64 = 2;

fn lease_of(answer: &aspen_api::lease::LeaseResponse) -> LeaseId {
    answer.id.parse().expect("a lease id")
}

async fn exists(client: &AspenClient, key: &str) -> Option<bool> {
    client
        .get(key, Consistency::Linearizable)
        .await
        .ok()
        .map(|e| e.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leases_keys_vanish_after_its_ttl_and_never_while_kept_alive_across_a_leader_kill() {
    let mut t = start_named_cluster("us-1", 3, fast_raft()).await;
    let leader = t.wait_for_leader().await;
    let follower = t
        .cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    // Every request goes to a follower, which forwards to whichever node leads.
    let client = t.client(follower);
    let kept = lease_of(&client.lease_grant(TTL_SECS, None).await.unwrap());
    let batch = BatchRequest {
        writes: vec![
            JsonWrite::new("kept/1", b"a").with_lease(&kept),
            JsonWrite::new("kept/2", b"b").with_lease(&kept),
        ],
        deletes: vec![],
    };
    let start = client.batch(&batch).await.unwrap().revision;
    let urls = t
        .cluster
        .running()
        .iter()
        .map(|id| t.cluster.url(*id))
        .collect();
    let seen = follow(urls, "", Some(start));

    // Keep-alives every TTL/4; the time each successful one was sent.
    let keeping = Arc::new(AtomicBool::new(true));
    let last_sent = Arc::new(Mutex::new(Instant::now()));
    let keeper = {
        let (client, kept) = (client.clone(), kept.clone());
        let (keeping, last_sent) = (keeping.clone(), last_sent.clone());
        tokio::spawn(async move {
            while keeping.load(Ordering::SeqCst) {
                let sent = Instant::now();
                match client.lease_keepalive(&kept).await {
                    Ok(_) => *last_sent.lock().unwrap() = sent,
                    // An election may refuse one; the next gets through.
                    Err(e) => assert_ne!(e.code(), Some(ErrorCode::LeaseNotFound), "{e}"),
                }
                tokio::time::sleep(Duration::from_millis(TTL_SECS * 1_000 / 4)).await;
            }
        })
    };

    // Older than its TTL, the lease lives only by keep-alives the leader saw: a new
    // leader must not take its age for silence.
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECS)).await;
    let dropped = lease_of(&client.lease_grant(TTL_SECS, None).await.unwrap());
    client
        .put_with_lease("dropped/1", b"c", &dropped)
        .await
        .unwrap();
    t.cluster.stop(leader).await;
    poll("dropped/1 to expire", Duration::from_secs(15), || async {
        (exists(&client, "dropped/1").await == Some(false)).then_some(())
    })
    .await;
    // Three TTLs under keep-alives after the kill: the kept keys stay.
    let window_end = Instant::now() + Duration::from_secs(3 * TTL_SECS);
    while Instant::now() < window_end {
        assert_ne!(
            exists(&client, "kept/1").await,
            Some(false),
            "kept/1 expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = client.lease_get(&kept).await.unwrap();
    assert_eq!(
        info.keys.as_deref(),
        Some(&["kept/1".to_string(), "kept/2".into()][..])
    );
    assert_eq!(info.granted_ttl, Some(TTL_SECS));

    keeping.store(false, Ordering::SeqCst);
    keeper.await.unwrap();
    let last = *last_sent.lock().unwrap();
    let gone_at = poll("kept/* to expire", Duration::from_secs(15), || async {
        (exists(&client, "kept/2").await == Some(false)).then(Instant::now)
    })
    .await;
    assert!(
        gone_at >= last + Duration::from_secs(TTL_SECS),
        "expired {:?} after the last keep-alive, before its TTL",
        gone_at - last
    );
    let err = client.lease_keepalive(&kept).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LeaseNotFound));

    // The feed: each lease's keys deleted together, in one revision, and nothing else.
    let deletes = poll(
        "the expiry deletes in the feed",
        Duration::from_secs(10),
        || {
            let seen = seen.clone();
            async move {
                let deletes: Vec<Seen> = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.3.is_none())
                    .cloned()
                    .collect();
                (deletes.len() == 3).then_some(deletes)
            }
        },
    )
    .await;
    assert_eq!(deletes[0].2, "dropped/1");
    assert_eq!(
        deletes[1].1, deletes[2].1,
        "one revision for the lease's keys"
    );
    let kept_keys: Vec<&str> = deletes[1..].iter().map(|s| s.2.as_str()).collect();
    assert_eq!(kept_keys, vec!["kept/1", "kept/2"]);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_api_refuses_bad_input_at_both_sides_of_each_limit() {
    let t = start_named_cluster("us-1", 1, fast_raft()).await;
    let client = t.client(1);
    fn code<T: std::fmt::Debug>(r: Result<T, aspen_api::ClientError>) -> Option<ErrorCode> {
        r.unwrap_err().code()
    }

    // TTLs: the cluster's minimum (1 s with 600 ms election timeouts) to one day.
    assert_eq!(
        code(client.lease_grant(0, None).await),
        Some(ErrorCode::BadRequest)
    );
    assert!(client.lease_grant(1, None).await.is_ok());
    assert!(client.lease_grant(MAX_LEASE_TTL_SECS, None).await.is_ok());
    let over = client
        .lease_grant(MAX_LEASE_TTL_SECS + 1, None)
        .await
        .unwrap_err();
    assert_eq!(over.code(), Some(ErrorCode::BadRequest));
    assert!(over.to_string().contains("ttl"), "{over}");

    let lease = lease_of(&client.lease_grant(30, None).await.unwrap());
    let unknown = LeaseId::new("us-1", 0x1234);
    let other = LeaseId::new("us-2", lease.id);
    assert_eq!(
        code(client.lease_keepalive(&unknown).await),
        Some(ErrorCode::LeaseNotFound)
    );
    assert_eq!(
        code(client.lease_get(&unknown).await),
        Some(ErrorCode::LeaseNotFound)
    );
    assert_eq!(
        code(client.lease_revoke(&unknown).await),
        Some(ErrorCode::LeaseNotFound)
    );
    assert_eq!(
        code(client.put_with_lease("k", b"v", &unknown).await),
        Some(ErrorCode::LeaseNotFound)
    );
    assert!(client
        .get("k", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        code(client.lease_keepalive(&other).await),
        Some(ErrorCode::CrossCluster)
    );
    assert_eq!(
        code(client.put_with_lease("k", b"v", &other).await),
        Some(ErrorCode::CrossCluster)
    );

    // Malformed ids and query parameters name what is wrong.
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let base = t.cluster.url(1);
    for (method, path, field) in [
        (reqwest::Method::POST, "/v1/lease/nope/keepalive", "id"),
        (reqwest::Method::PUT, "/v1/kv/k?lease=us-1:zz", "lease"),
        (reqwest::Method::PUT, "/v1/kv/k?ttl=5", "ttl"),
    ] {
        let answer = http
            .request(method, format!("{base}{path}"))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{path}");
        let body = answer.text().await.unwrap();
        assert!(body.contains(field), "{path}: {body}");
    }
    let answer = http
        .post(format!("{base}/v1/lease"))
        .body(r#"{"ttl":5,"x":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);

    // Keys per lease: up to the limit, and not one more.
    let writes = |range: std::ops::Range<usize>| BatchRequest {
        writes: range
            .map(|i| JsonWrite::new(format!("many/{i:03}"), b"v").with_lease(&lease))
            .collect(),
        deletes: vec![],
    };
    client.batch(&writes(0..MAX_KEYS_PER_LEASE)).await.unwrap();
    let full = client
        .put_with_lease("many/one-more", b"v", &lease)
        .await
        .unwrap_err();
    assert_eq!(full.code(), Some(ErrorCode::BadRequest));
    assert!(full.to_string().contains("MAX_KEYS_PER_LEASE"), "{full}");
    assert!(client
        .get("many/one-more", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    let revoked = client.lease_revoke(&lease).await.unwrap();
    assert_eq!(revoked.deleted_count, Some(MAX_KEYS_PER_LEASE as u32));

    // Leader election with CAS and a txn: the first taker wins, the second sees it held.
    let mine = lease_of(&client.lease_grant(30, None).await.unwrap());
    let mut take = CasRequest::new("leader", None, b"me");
    take.lease = Some(mine.to_string());
    assert!(matches!(
        client.cas(&take).await.unwrap(),
        aspen_api::client::CasOutcome::Applied(_)
    ));
    let txn: TxnRequest = serde_json::from_value(serde_json::json!({
        "preconditions": [{"key": "leader", "not_exists": true}],
        "writes": [{"key": "leader", "value": "you", "lease": mine.to_string()}],
    }))
    .unwrap();
    assert!(matches!(
        client.txn(&txn).await.unwrap(),
        aspen_api::client::TxnOutcome::Failed(_)
    ));
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_router_a_lease_belongs_to_one_cluster() {
    let us1 = start_named_cluster("us-1", 1, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 1, fast_raft()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&router_config(&us1, &us2, 10_000), listener)
        .await
        .unwrap();
    let client = AspenClient::new(&router.url());

    let no_key = client.lease_grant(5, None).await.unwrap_err();
    assert_eq!(no_key.code(), Some(ErrorCode::BadRequest));
    assert!(no_key.to_string().contains("key"), "{no_key}");
    let granted = client.lease_grant(5, Some("svc-b/x")).await.unwrap();
    assert_eq!(granted.cluster, "us-2");
    let lease = lease_of(&granted);
    client
        .put_with_lease("svc-b/x", b"1", &lease)
        .await
        .unwrap();
    let cross = client
        .put_with_lease("svc-a/x", b"1", &lease)
        .await
        .unwrap_err();
    assert_eq!(cross.code(), Some(ErrorCode::CrossCluster));
    assert!(client
        .get("svc-a/x", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        client.lease_keepalive(&lease).await.unwrap().cluster,
        "us-2"
    );
    assert_eq!(
        client.lease_get(&lease).await.unwrap().keys,
        Some(vec!["svc-b/x".to_string()])
    );
    let revoked = client.lease_revoke(&lease).await.unwrap();
    assert_eq!(revoked.deleted_count, Some(1));
    assert!(client
        .get("svc-b/x", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    router.shutdown().await;
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}
