//! Watches and blocking reads on real clusters: a watcher sees exactly the changes after its
//! start revision, in order, across a leader kill and a node restart; a router merges the
//! streams of two clusters and resumes from its token; a compacted start is refused with
//! `compacted`; a watcher that never reads is closed as `slow_watcher` while writes and
//! other watchers go on; watchers that open on every node while writes go on each see
//! exactly their keys' changes after their start; a blocking read answers when its key
//! changes. `leases` holds the lease tests, which watch their expiry deletes.

mod leases;
use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::client::WatchOptions;
use aspen_api::json::{BatchRequest, JsonWrite};
use aspen_api::watch::{EventKind, WatchMessage};
use aspen_api::{AspenClient, Consistency, ErrorCode};
use aspen_cluster_node::local_cluster::{LocalCluster, LocalClusterSpec};
use aspen_router::RunningRouter;
use support::{fast_raft, poll, router_config, start_named_cluster, TestCluster};

/// A change as a watcher received it: cluster, revision, key, value (`None`: deleted).
type Seen = (String, u64, String, Option<String>);

/// Follows a watch across servers: on any end of the stream it moves to the next URL and
/// resumes from the last token, as a client riding out node loss does.
fn follow(urls: Vec<String>, key: &str, start_revision: Option<u64>) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let key = key.to_string();
    tokio::spawn(async move {
        let mut options = WatchOptions {
            prefix: true,
            start_revision,
            resume: None,
        };
        for url in urls.iter().cycle() {
            let client = AspenClient::new(url);
            let Ok(mut stream) = client.watch(&key, &options).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while let Ok(Some(message)) = stream.next().await {
                match message {
                    WatchMessage::Changes {
                        cluster,
                        revision,
                        events,
                        resume,
                    } => {
                        let mut seen = out.lock().unwrap();
                        for e in events {
                            assert_eq!(e.mod_revision, revision);
                            let value = (e.kind == EventKind::Put).then(|| e.value.unwrap());
                            seen.push((cluster.clone(), revision, e.key, value));
                        }
                        options.resume = Some(resume);
                    }
                    WatchMessage::Progress { resume, .. } => options.resume = Some(resume),
                    WatchMessage::Error { error, .. } => {
                        panic!("watch ended: {} {}", error.code, error.message)
                    }
                }
            }
        }
    });
    seen
}

/// The last revision `seen` holds.
fn last_revision(seen: &Mutex<Vec<Seen>>) -> u64 {
    seen.lock().unwrap().last().map_or(0, |s| s.1)
}

/// Writes through whichever running node answers; the revisions acknowledged.
async fn write_some(t: &TestCluster, from: usize, count: usize) -> Vec<u64> {
    let mut acked = Vec::new();
    for i in from..from + count {
        let key = format!("w/k{}", i % 17);
        for id in t.cluster.running() {
            let client = AspenClient::with_timeout(&t.cluster.url(id), Duration::from_secs(5));
            let answer = if i % 5 == 4 {
                client.delete(&key).await
            } else {
                client.put(&key, format!("v{i}").as_bytes()).await
            };
            if let Ok(answer) = answer {
                acked.push(answer.revision);
                break;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_exactly_the_changes_after_its_start_across_a_leader_kill_and_a_restart() {
    let mut t = start_named_cluster("us-1", 3, fast_raft()).await;
    let before = write_some(&t, 0, 20).await;
    let start = before.last().unwrap() + 1;
    let urls = (1..=3).map(|id| t.cluster.url(id)).collect();
    let seen = follow(urls, "w/", Some(start));

    let mut acked = write_some(&t, 20, 60).await;
    let leader = t.wait_for_leader().await;
    t.cluster.stop(leader).await;
    acked.extend(write_some(&t, 80, 60).await);
    t.cluster.restart(leader).await.unwrap();
    acked.extend(write_some(&t, 140, 60).await);
    let last = *acked.iter().max().unwrap();
    poll(
        "the watcher to reach the last write",
        Duration::from_secs(30),
        || async { (last_revision(&seen) >= last).then_some(()) },
    )
    .await;

    let seen = seen.lock().unwrap().clone();
    let revisions: Vec<u64> = seen.iter().map(|s| s.1).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "in order, once each"
    );
    assert!(revisions[0] >= start, "nothing from before the start");
    for r in &acked {
        assert!(revisions.contains(r), "acknowledged revision {r} delivered");
    }
    // Folding the events gives every key's final state, at its final mod_revision.
    let mut state: BTreeMap<String, Option<(String, u64)>> = BTreeMap::new();
    for (_, revision, key, value) in &seen {
        state.insert(key.clone(), value.clone().map(|v| (v, *revision)));
    }
    let leader = t.wait_for_leader().await;
    let page = t
        .client(leader)
        .scan("w/", None, None, Consistency::Linearizable)
        .await
        .unwrap();
    for (key, expected) in &state {
        let actual = page.kvs.iter().find(|e| &e.key == key);
        let actual = actual.map(|e| (e.value.clone().unwrap(), e.mod_revision));
        assert_eq!(&actual, expected, "{key}");
    }
    for entry in page.kvs.iter().filter(|e| e.mod_revision >= start) {
        assert!(
            state.contains_key(&entry.key),
            "{} was delivered",
            entry.key
        );
    }
    t.cluster.shutdown().await;
}

/// One acknowledged change: revision, key, value.
type Acked = (u64, String, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_joining_during_writes_each_see_exactly_their_keys_after_their_start() {
    let t = start_named_cluster("us-1", 3, fast_raft()).await;
    let leader = t.wait_for_leader().await;
    let truth: Arc<Mutex<Vec<Acked>>> = Arc::default();
    // Four writers: single puts to j/a/ or j/b/, and batches that write both at once.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = t.client(leader);
            let truth = truth.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let (a, b) = (format!("j/a/{}", i % 7), format!("j/b/{}", i % 5));
                    let value = format!("w{w}-{i}");
                    let keys = match i % 3 {
                        0 => vec![a],
                        1 => vec![b],
                        _ => vec![a, b],
                    };
                    let writes = keys.iter().map(|k| JsonWrite::new(k, value.as_bytes()));
                    let batch = BatchRequest {
                        writes: writes.collect(),
                        deletes: vec![],
                    };
                    let revision = client.batch(&batch).await.expect("write").revision;
                    let mut truth = truth.lock().unwrap();
                    truth.extend(keys.into_iter().map(|k| (revision, k, value.clone())));
                }
            })
        })
        .collect();
    // While they write, watchers open on every node: from just past the newest write
    // (joining the node's live pages at once) or from well before it (reading history
    // first), each on one of the two prefixes.
    let urls: Vec<String> = (1..=3).map(|id| t.cluster.url(id)).collect();
    let mut watchers = Vec::new();
    for n in 0..40usize {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let newest = truth.lock().unwrap().iter().map(|c| c.0).max().unwrap_or(0);
        let start = if n % 2 == 0 {
            newest + 1
        } else {
            newest.saturating_sub(40).max(1)
        };
        let prefix = if n % 4 < 2 { "j/a/" } else { "j/b/" };
        let url = urls[n % urls.len()].clone();
        watchers.push((prefix, start, follow(vec![url], prefix, Some(start))));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut truth = truth.lock().unwrap().clone();
    truth.sort();
    for (prefix, start, seen) in &watchers {
        let expected: Vec<Acked> = truth
            .iter()
            .filter(|c| c.0 >= *start && c.1.starts_with(prefix))
            .cloned()
            .collect();
        let last = expected.last().map_or(0, |c| c.0);
        poll(
            "each watcher to reach its last change",
            Duration::from_secs(30),
            || async { (last_revision(seen) >= last).then_some(()) },
        )
        .await;
        let got: Vec<Acked> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r, k, v)| (*r, k.clone(), v.clone().expect("only puts")))
            .collect();
        // One watched key per revision here, so the order is the revisions'.
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "{prefix} from {start}: in revision order, once each"
        );
        let missing: Vec<_> = expected.iter().filter(|c| !got.contains(c)).collect();
        let extra: Vec<_> = got.iter().filter(|c| !expected.contains(c)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{prefix} from {start}: missing {missing:?}, not written there {extra:?}"
        );
    }
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_watch_merges_both_clusters_keeps_a_batch_together_and_resumes_from_its_token() {
    let us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&router_config(&us1, &us2, 10_000), listener)
        .await
        .unwrap();
    let client = AspenClient::new(&router.url());
    let all = WatchOptions {
        prefix: true,
        ..WatchOptions::default()
    };
    let mut stream = client.watch("", &all).await.unwrap();
    let mut progress = BTreeMap::new();
    while progress.len() < 2 {
        match stream.next().await.unwrap().unwrap() {
            WatchMessage::Progress {
                cluster, revision, ..
            } => progress.insert(cluster, revision),
            other => panic!("a new watch starts with each cluster's position: {other:?}"),
        };
    }
    assert!(progress.contains_key("us-1") && progress.contains_key("us-2"));

    let a = client.put("app/a", b"1").await.unwrap();
    let x = client.put("svc-b/x", b"2").await.unwrap();
    let batch = BatchRequest {
        writes: vec![
            JsonWrite::new("svc-b/y", b"3"),
            JsonWrite::new("svc-b/z", b"4"),
        ],
        deletes: vec![],
    };
    let yz = client.batch(&batch).await.unwrap();
    let mut changes = Vec::new();
    while changes.len() < 3 {
        if let WatchMessage::Changes {
            cluster,
            revision,
            events,
            resume,
        } = stream.next().await.unwrap().unwrap()
        {
            let keys: Vec<String> = events.into_iter().map(|e| e.key).collect();
            changes.push((cluster, revision, keys, resume));
        }
    }
    assert_eq!(
        changes
            .iter()
            .map(|(c, r, k, _)| (c.as_str(), *r, k.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("us-1", a.revision, vec!["app/a".to_string()]),
            ("us-2", x.revision, vec!["svc-b/x".to_string()]),
            (
                "us-2",
                yz.revision,
                vec!["svc-b/y".into(), "svc-b/z".into()]
            ),
        ],
        "each revision once, naming its cluster, a batch's keys together"
    );
    drop(stream);

    // Resume after the second message: exactly the third, then what was written since.
    let b = client.put("app/b", b"5").await.unwrap();
    let resume = WatchOptions {
        resume: Some(changes[1].3.clone()),
        ..all.clone()
    };
    let mut again = client.watch("", &resume).await.unwrap();
    let mut resumed = Vec::new();
    while resumed.len() < 2 {
        if let WatchMessage::Changes {
            cluster, revision, ..
        } = again.next().await.unwrap().unwrap()
        {
            resumed.push((cluster, revision));
        }
    }
    let expected = vec![
        ("us-2".to_string(), yz.revision),
        ("us-1".to_string(), b.revision),
    ];
    let mut sorted = resumed.clone();
    sorted.sort_by_key(|(c, _)| c.clone());
    let mut want = expected.clone();
    want.sort_by_key(|(c, _)| c.clone());
    assert_eq!(sorted, want, "got {resumed:?}");

    // A one-key watch through the router sees only that key.
    let one = WatchOptions {
        start_revision: Some(1),
        ..WatchOptions::default()
    };
    let mut only = client.watch("svc-b/x", &one).await.unwrap();
    loop {
        if let WatchMessage::Changes { events, .. } = only.next().await.unwrap().unwrap() {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].key, "svc-b/x");
            break;
        }
    }
    router.shutdown().await;
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_a_compacted_revision_is_refused_with_compacted_naming_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LocalClusterSpec {
        cluster: "c".into(),
        data_dir: dir.path().to_path_buf(),
        nodes: 1,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft: fast_raft(),
        kv_clients: support::kv_clients(),
    };
    let mut bound = LocalCluster::bind(spec).await.unwrap();
    for config in bound.configs_mut() {
        config.feed.retain_revisions = aspen_config::limits::MIN_FEED_RETAIN_REVISIONS;
    }
    let cluster = bound.start().await.unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let client = AspenClient::new(&cluster.url(1));
    let writes = (0..1_300).map(|i| {
        let client = client.clone();
        async move { client.put(&format!("k{}", i % 10), b"v").await.unwrap() }
    });
    futures::future::join_all(writes).await;

    let from_start = WatchOptions {
        prefix: true,
        start_revision: Some(1),
        resume: None,
    };
    let err = client.watch("", &from_start).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Compacted), "{err}");
    assert!(err
        .to_string()
        .contains("oldest revision still in the change feed is"));
    let oldest: u64 = err
        .to_string()
        .rsplit("feed is ")
        .next()
        .and_then(|t| t.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("the message names the oldest revision");
    let kept = WatchOptions {
        start_revision: Some(oldest),
        ..from_start
    };
    let mut stream = client
        .watch("", &kept)
        .await
        .expect("the oldest kept is served");
    loop {
        if let WatchMessage::Changes { revision, .. } = stream.next().await.unwrap().unwrap() {
            assert_eq!(revision, oldest);
            break;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_never_reads_is_closed_as_slow_while_writes_and_other_watchers_go_on() {
    let t = start_named_cluster("us-1", 3, fast_raft()).await;
    let client = AspenClient::new(&t.cluster.url(1));
    a_stuck_watcher_is_closed_as_slow(&client).await;
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_one_http2_connection_a_stuck_watch_is_closed_as_slow_and_the_rest_go_on() {
    let t = start_named_cluster("us-1", 3, fast_raft()).await;
    let client = AspenClient::http2(&t.cluster.url(1), Duration::from_secs(30));
    a_stuck_watcher_is_closed_as_slow(&client).await;
    t.cluster.shutdown().await;
}

/// Many watches sharing one HTTP/2 connection, whose frames the server gathers into few
/// socket writes: every watch gets every change, in order, none held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_one_http2_connection_each_of_many_watches_gets_every_change_in_order() {
    const WATCHES: usize = 64;
    const WRITES: u64 = 40;
    let t = start_named_cluster("us-1", 3, fast_raft()).await;
    let client = AspenClient::http2(&t.cluster.url(1), Duration::from_secs(30));
    let everything = WatchOptions {
        prefix: true,
        ..WatchOptions::default()
    };
    let mut streams = Vec::new();
    for _ in 0..WATCHES {
        streams.push(client.watch("many/", &everything).await.unwrap());
    }
    // Written one at a time, so each change is its own revision and its own frames.
    let mut revisions = Vec::new();
    for i in 0..WRITES {
        revisions.push(
            client
                .put(&format!("many/{i}"), b"v")
                .await
                .unwrap()
                .revision,
        );
    }
    let readers = streams.into_iter().map(|mut stream| {
        let count = revisions.len();
        async move {
            let mut seen = Vec::new();
            while seen.len() < count {
                match stream.next().await {
                    Ok(Some(WatchMessage::Changes { revision, .. })) => seen.push(revision),
                    Ok(Some(_)) => {}
                    other => panic!("the watch ended early: {other:?}"),
                }
            }
            seen
        }
    });
    let all = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(readers))
        .await
        .expect("every watch gets every change within 30 s");
    for seen in all {
        assert_eq!(seen, revisions);
    }
    t.cluster.shutdown().await;
}

/// Through `client`, one watch that is never read, one that is, and writes: more than
/// the watcher buffer holds (revisions and bytes), beyond what socket buffers and HTTP/2
/// flow-control windows absorb. The writes and the reading watch must not be held up,
/// and the stuck watch must end with `slow_watcher`.
async fn a_stuck_watcher_is_closed_as_slow(client: &AspenClient) {
    let everything = WatchOptions {
        prefix: true,
        ..WatchOptions::default()
    };
    let mut stuck = client.watch("", &everything).await.unwrap();
    let mut reading = client.watch("", &everything).await.unwrap();
    // The reader's count of events and its last revision.
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel((0usize, 0u64));
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = reading.next().await {
            if let WatchMessage::Changes {
                revision, events, ..
            } = message
            {
                seen_tx.send_modify(|(count, last)| {
                    *count += events.len();
                    *last = revision;
                });
            }
        }
    });
    let value = vec![b'x'; 32 * 1024];
    let mut last = 0;
    for chunk in 0..60 {
        let writes = (0..20).map(|i| {
            let (client, value) = (client.clone(), value.clone());
            async move { client.put(&format!("big/{chunk}/{i}"), &value).await }
        });
        for answer in futures::future::join_all(writes).await {
            last = last.max(
                answer
                    .expect("writes are never held up by a watcher")
                    .revision,
            );
        }
    }
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        seen_rx.wait_for(|(_, seen)| *seen >= last),
    )
    .await
    .expect("the reading watcher gets every write")
    .unwrap()
    .0;
    assert_eq!(events, 1_200);
    reader.abort();

    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stuck.next().await {
                Ok(Some(WatchMessage::Error { error, .. })) => return error.code,
                Ok(Some(_)) => continue,
                other => panic!("the stuck watch ended without an error: {other:?}"),
            }
        }
    })
    .await
    .expect("the stuck watch was closed by the server");
    assert_eq!(end, "slow_watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_read_answers_when_its_key_changes_past_index_or_when_wait_ends() {
    let t = start_named_cluster("us-1", 3, fast_raft()).await;
    let url = t.cluster.url(2);
    let client = AspenClient::new(&url);
    let first = client.put("cfg/a", b"old").await.unwrap().revision;
    let http = aspen_api::client::http_client(Duration::from_secs(30));

    let waiting = {
        let http = http.clone();
        let url = format!("{url}/v1/kv/cfg/a?index={first}&wait=20s");
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            response.json::<serde_json::Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing changed past index yet");
    let second = client.put("cfg/a", b"new").await.unwrap().revision;
    let body = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered when the key changed")
        .unwrap();
    assert_eq!(body["value"], "new");
    assert_eq!(body["mod_revision"], second);

    let start = std::time::Instant::now();
    let response = http
        .get(format!("{url}/v1/kv/cfg/a?index={second}&wait=300ms"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "waited out its wait"
    );
    assert_eq!(body["value"], "new");

    for (query, field) in [
        ("wait=1s", "wait"),
        ("index=1&wait=11m", "wait"),
        ("index=x", "index"),
    ] {
        let response = http
            .get(format!("{url}/v1/kv/cfg/a?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{query}: {message}");
    }
    let response = http
        .get(format!("{url}/v1/kv/cfg/a?index=1&wait=10m"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the longest wait is accepted");

    // Server-Sent Events are the default framing, the resume token as each event's id.
    let mut sse = http
        .get(format!("{url}/v1/watch/cfg/?prefix=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let chunk = sse.chunk().await.unwrap().unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    assert!(
        text.starts_with(&format!(
            "event: progress\nid: us-1={}\ndata: {{",
            second + 1
        )),
        "{text}"
    );

    // A watched key is a key: up to MAX_KEY_BYTES, and not one byte more.
    let longest = "k".repeat(aspen_api::limits::MAX_KEY_BYTES);
    let ok = http
        .get(format!("{url}/v1/watch/{longest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let over = http
        .get(format!("{url}/v1/watch/{longest}k"))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 400);
    let body: serde_json::Value = over.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("1024"), "{message}");
    t.cluster.shutdown().await;
}
