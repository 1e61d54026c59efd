//! Federation across regions, with real nodes, real iroh-docs stores on disk and real
//! routers: DESIGN's topology (us: us-1, us-2; eu: eu-1) in one process. Replicas must
//! equal their owners exactly (keys, values, revisions, deletes), show a batch's keys
//! together, converge after a partition with their lag rising and falling, never go back
//! in time through a router, refuse what they cannot bound, and never take a foreign write.

use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aspen_api::client::TxnOutcome;
use aspen_api::json::{BatchRequest, JsonWrite, TxnRequest};
use aspen_api::{Consistency, ErrorCode};
use support::federation::{
    client, owner_entries, replica, replica_status, router_lag_gauge, settled_report,
    stale_read_lag, start, start_with, wait_converged,
};
use support::poll;

/// The keys of each batch the first test writes (and some transactions delete) together.
const BATCH_KEYS: [&str; 4] = ["a", "b", "c", "d"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_keys_written_in_us_appear_in_eu_exactly_with_each_batch_whole() {
    let (_dir, t) = start(3, 20_000).await;
    let us = client(&t, "us");
    let eu = client(&t, "eu");
    let done = Arc::new(AtomicBool::new(false));
    // A reader in eu checks, while the writes go on, that a batch's keys are seen together,
    // whether written or deleted.
    let checker = {
        let (eu, done) = (eu.clone(), done.clone());
        tokio::spawn(async move {
            let mut checked = 0;
            while !done.load(Ordering::Relaxed) {
                let page = match eu
                    .scan("batch/", None, Some(10_000), Consistency::Stale)
                    .await
                {
                    Ok(page) => page,
                    // Before the replica has caught up once.
                    Err(e) if e.code() == Some(ErrorCode::ReplicaUnavailable) => continue,
                    Err(e) => panic!("stale scan failed: {e}"),
                };
                let mut batches: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
                for e in &page.kvs {
                    let batch = e.key.rsplit_once('/').unwrap().0.to_string();
                    let value = e.value.clone().unwrap();
                    batches
                        .entry(batch)
                        .or_default()
                        .push((value, e.mod_revision));
                }
                for (batch, keys) in &batches {
                    assert_eq!(
                        keys.len(),
                        BATCH_KEYS.len(),
                        "{batch} is seen in part: {keys:?}"
                    );
                    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{batch}: {keys:?}");
                }
                checked += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            checked
        })
    };
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let us = us.clone();
            tokio::spawn(async move {
                for i in 0..600 {
                    let key = format!("keys/{w}/{i:04}");
                    us.put(&key, format!("v{i}").as_bytes()).await.unwrap();
                    if i % 7 == 0 {
                        us.put(&key, b"rewritten").await.unwrap();
                    }
                    if i % 11 == 0 {
                        us.delete(&key).await.unwrap();
                    }
                    if i % 20 == 0 {
                        let keys = |i: usize| BATCH_KEYS.map(|k| format!("batch/{w}-{i}/{k}"));
                        let writes = keys(i)
                            .into_iter()
                            .map(|key| JsonWrite::new(key, format!("{i}").as_bytes()))
                            .collect();
                        if i % 80 == 40 {
                            // A transaction that writes this batch and deletes the one
                            // before: both sets of keys change together.
                            let outcome = us
                                .txn(&TxnRequest {
                                    preconditions: vec![],
                                    writes,
                                    deletes: keys(i - 20).to_vec(),
                                })
                                .await
                                .unwrap();
                            assert!(matches!(outcome, TxnOutcome::Applied(_)), "{outcome:?}");
                        } else {
                            us.batch(&BatchRequest {
                                writes,
                                deletes: vec![],
                            })
                            .await
                            .unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (_, entries) = owner_entries(t.cluster("us-1"));
    assert!(entries.len() >= 5_000, "{} keys", entries.len());
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(120)).await;
    done.store(true, Ordering::Relaxed);
    let checked = checker.await.unwrap();
    assert!(checked > 5, "the batch checker ran {checked} times");
    wait_converged(&t, "us-2", "eu-1", Duration::from_secs(30)).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_cut_apart_while_both_write_converge_once_healed_and_lag_rises_then_falls() {
    let (_dir, t) = start(1, 2_000).await;
    let (us, eu) = (client(&t, "us"), client(&t, "eu"));
    us.put("before/us", b"1").await.unwrap();
    eu.put("eu/before", b"1").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    wait_converged(&t, "eu-1", "us-1", Duration::from_secs(30)).await;
    // Each replica's lag is known before the cut: a heartbeat of its owner has confirmed
    // its revision. (A replica no heartbeat has reached reports its time lag as unknown,
    // and a cut leaves it unknown; on a loaded machine the data can converge before the
    // owner's first heartbeat arrives.)
    for (region, source) in [("eu", "us-1"), ("us", "eu-1")] {
        poll(
            &format!("{region}'s replica of {source} to know its lag"),
            Duration::from_secs(30),
            || async { replica_status(&t, region, source).await?.1.map(|_| ()) },
        )
        .await;
    }

    t.partition_regions("us", "eu");
    for i in 0..200 {
        us.put(&format!("cut/us/{i}"), b"x").await.unwrap();
        eu.put(&format!("eu/cut/{i}"), b"y").await.unwrap();
    }
    us.delete("before/us").await.unwrap();
    // Heartbeats no longer arrive: each side's replica of the other grows stale, and says
    // so everywhere a user looks: the router's /v1/status, a stale read's headers and the
    // router's /metrics.
    for (region, source, key) in [("eu", "us-1", "before/us"), ("us", "eu-1", "eu/before")] {
        poll(
            &format!("{region}'s replica of {source} to be seen stale"),
            Duration::from_secs(30),
            || async {
                let (_, status_lag) = replica_status(&t, region, source).await?;
                let (_, _, header_lag) = stale_read_lag(&t, region, key).await?;
                let gauge = router_lag_gauge(&t, region, source).await?;
                (status_lag? > 2.0 && header_lag? > 2.0 && gauge > 2.0).then_some(())
            },
        )
        .await;
    }
    // A bounded stale read refuses rather than serve the stale copy.
    let err = eu
        .get_with_max_lag("cut/us/0", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ReplicaBehind), "{err}");

    t.heal();
    // Every replica converges with its owner, in both directions and for both us clusters.
    for (owner, replica_of) in [
        ("us-1", "eu-1"),
        ("eu-1", "us-1"),
        ("us-2", "eu-1"),
        ("eu-1", "us-2"),
    ] {
        wait_converged(&t, owner, replica_of, Duration::from_secs(60)).await;
    }
    for (region, source, key) in [("eu", "us-1", "cut/us/199"), ("us", "eu-1", "eu/cut/199")] {
        poll(
            &format!("{region}'s lag figures for {source} to come back down"),
            Duration::from_secs(30),
            || async {
                let (_, status_lag) = replica_status(&t, region, source).await?;
                let (_, revisions, header_lag) = stale_read_lag(&t, region, key).await?;
                let gauge = router_lag_gauge(&t, region, source).await?;
                let down = status_lag? < 1.5 && header_lag? < 1.5 && gauge < 1.5;
                (down && revisions == 0).then_some(())
            },
        )
        .await;
    }
    let entry = eu
        .get_with_max_lag("cut/us/199", Duration::from_secs(2))
        .await
        .unwrap()
        .expect("written during the cut");
    assert_eq!(entry.value.as_deref(), Some("x"));
    t.shutdown().await;
}

/// Segments the next test's cut must make the importers miss: more than the 1,024 events
/// iroh-docs' live engine queues, past which one reconciliation could stop it for good.
const MISSED_SEGMENTS: u64 = 1_100;

/// The segments us-1's exporter has written (its next sequence number), if a node of it
/// exports.
fn exported_segments(t: &aspen::topology::Topology) -> Option<u64> {
    let cluster = t.cluster("us-1");
    cluster.running().into_iter().find_map(|id| {
        let status = cluster.node(id)?.federation()?.export_status()?;
        status.active.then_some(status.next_seq)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_that_misses_over_a_thousand_segments_converges_once_healed() {
    let (_dir, t) = start(3, 5_000).await;
    let us = client(&t, "us");
    us.put("before", b"1").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;

    t.partition_regions("us", "eu");
    let first = poll("us-1 exporting", Duration::from_secs(30), || async {
        exported_segments(&t)
    })
    .await;
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (us, done) = (us.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    us.put(&format!("cut/{w}/{i}"), b"x").await.unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    // The exporter writes at most one segment per linger (20 ms) while writes go on.
    poll(
        &format!("{MISSED_SEGMENTS} segments exported during the cut"),
        Duration::from_secs(180),
        || async { exported_segments(&t).filter(|n| n - first >= MISSED_SEGMENTS) },
    )
    .await;
    done.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    t.heal();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(90)).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_write_lands_at_the_owner_and_fails_without_trace_when_the_owner_is_cut_off() {
    let (_dir, t) = start(1, 2_000).await;
    let (us, eu) = (client(&t, "us"), client(&t, "eu"));
    let written = eu.put("config/from-eu", b"1").await.unwrap();
    assert_eq!(written.cluster, "us-1", "the owner applied it");
    let at_owner = us
        .get("config/from-eu", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_owner.value.as_deref(), Some("1"));
    let linearizable_from_eu = eu
        .get("config/from-eu", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(linearizable_from_eu.cluster, "us-1");
    poll(
        "the write in eu's replica",
        Duration::from_secs(30),
        || async {
            eu.get("config/from-eu", Consistency::Stale)
                .await
                .ok()
                .flatten()
        },
    )
    .await;

    t.partition_regions("us", "eu");
    let err = eu.put("config/cut-off", b"2").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    let err = eu
        .get("config/from-eu", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClusterUnavailable), "{err}");
    // The local replica still serves stale reads while cut off.
    let stale = eu.get("config/from-eu", Consistency::Stale).await.unwrap();
    assert!(stale.is_some());

    t.heal();
    us.put("config/after", b"3").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    assert_eq!(
        us.get("config/cut-off", Consistency::Linearizable)
            .await
            .unwrap(),
        None,
        "the refused write was applied nowhere"
    );
    let (_, replica_entries) = replica(t.cluster("eu-1"), 1, "us-1");
    assert!(replica_entries.iter().all(|e| e.key != "config/cut-off"));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_reads_through_a_router_never_go_back_even_when_it_switches_nodes() {
    let (_dir, mut t) = start(3, 10_000).await;
    let (us, eu) = (client(&t, "us"), client(&t, "eu"));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (us, done) = (us.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                us.put(&format!("mono/{}", n % 10), n.to_string().as_bytes())
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    // The recorded history: every stale read's key, mod_revision and replica revision.
    let reader = {
        let (eu, done) = (eu.clone(), done.clone());
        tokio::spawn(async move {
            let mut history: Vec<(String, u64)> = Vec::new();
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let key = format!("mono/{}", i % 10);
                i += 1;
                match eu.get(&key, Consistency::Stale).await {
                    Ok(Some(e)) => history.push((key, e.mod_revision)),
                    Ok(None) => history.push((key, 0)),
                    // Refusals are fine (a replica behind what was read, eu-1 without a
                    // leader for a moment); answers must never go back.
                    Err(e) if e.code().is_some() => {}
                    Err(e) => panic!("replica read failed: {e}"),
                }
            }
            history
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The router reads eu's replica through eu-1's leader: stop it, so the router moves to
    // another node (whose replica may be behind what was already read).
    let leader = t
        .cluster("eu-1")
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("eu-1 has a leader");
    let eu1 = t.cluster_mut("eu-1");
    eu1.stop(leader).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    eu1.restart(leader).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    done.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let history = reader.await.unwrap();
    assert!(
        writes > 50 && history.len() > 50,
        "{writes} writes, {} reads",
        history.len()
    );
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, (key, revision)) in history.iter().enumerate() {
        let seen = last.entry(key).or_default();
        assert!(
            revision >= seen,
            "read {i} of {key} went back from revision {seen} to {revision}"
        );
        *seen = *revision;
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_endpoint_is_refused_on_every_federation_protocol() {
    let (_dir, t) = start(1, 10_000).await;
    let node = t.cluster("us-1").node(1).unwrap();
    let addr = support::iroh_addr(node);
    let stranger = support::stranger_endpoint().await;
    let alpns = aspen_federation::stack::ALPNS;
    for alpn in alpns {
        let refused = async {
            let conn = match stranger.connect(addr.clone(), alpn).await {
                Ok(conn) => conn,
                Err(_) => return true,
            };
            // The node closes the connection right after the handshake: nothing of the
            // protocol gets through.
            let opened = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|_| ())?;
                send.write_all(b"hello").await.map_err(|_| ())?;
                send.finish().map_err(|_| ())?;
                recv.read_to_end(1024).await.map_err(|_| ())
            };
            opened.await.is_err()
        };
        let refused = tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("the refusal comes at once");
        assert!(refused, "{} was served", String::from_utf8_lossy(alpn));
    }
    let metrics = support::http_text(&format!("{}/metrics", t.cluster("us-1").url(1)))
        .await
        .unwrap();
    for alpn in alpns {
        let line = format!(
            "aspen_connections_refused{{alpn=\"{}\"}}",
            String::from_utf8_lossy(alpn)
        );
        let count: u64 = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .unwrap_or_else(|| panic!("{line} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(count >= 1, "{line} {count}");
    }
    // The configured peers still replicate: federation itself is not refused.
    client(&t, "us").put("still/works", b"1").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    stranger.close().await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_lost_with_its_federation_data_comes_back_from_a_checkpoint_not_from_history() {
    // Checkpoints follow the data closely, so a fresh replica has little to replay.
    let (_dir, mut t) = start_with(3, aspen_config::DEFAULT_REQUEST_DEADLINE_MS, |spec| {
        spec.checkpoint_replay_bytes = aspen_config::limits::MIN_CHECKPOINT_REPLAY_BYTES;
    })
    .await;
    let us = client(&t, "us");
    let value = vec![b'v'; 1_000];
    for b in 0..100 {
        let writes = (0..10)
            .map(|k| JsonWrite::new(format!("load/{b:03}/{k}"), &value))
            .collect();
        us.batch(&BatchRequest {
            writes,
            deletes: vec![],
        })
        .await
        .unwrap();
    }
    us.delete("load/000/0").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;

    // Node 2 of eu-1 loses its document store and replicas, and starts again.
    let eu = t.cluster_mut("eu-1");
    eu.stop(2).await;
    std::fs::remove_dir_all(eu.config(2).data_dir.join("federation")).unwrap();
    eu.restart(2).await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;

    let (head, _) = owner_entries(t.cluster("us-1"));
    let report = settled_report(t.cluster("eu-1"), 2, "us-1").await;
    println!(
        "us-1 at revision {head}; the new replica loaded {} checkpoints and applied {} change sets",
        report.checkpoints_loaded, report.sets_applied
    );
    assert_eq!(report.checkpoints_loaded, 1, "it started from a checkpoint");
    assert!(
        report.sets_applied < head / 2,
        "it replayed {} of {head} revisions: history, not what followed the checkpoint",
        report.sets_applied
    );
    t.shutdown().await;
}
