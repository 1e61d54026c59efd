//! Values above the inline limit, kept as blobs, through a node's HTTP API: they round
//! trip byte for byte through every node (whole and by range), exactly the limit stays
//! inline, preconditions compare them by hash and size, the node that took the write can
//! die right after its answer without losing the value, and bad bodies change nothing.

use std::time::Duration;

use aspen_api::blob::JsonBlob;
use aspen_api::client::{http_client, CasOutcome, TxnOutcome};
use aspen_api::json::{CadRequest, CasRequest, JsonPrecondition, JsonWrite, TxnRequest};
use aspen_api::limits::{MAX_BLOB_VALUE_BYTES, MAX_INLINE_VALUE_BYTES};
use aspen_api::{BlobRef, Consistency};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kv_basics::stage_count;
use crate::support;

const MIB: usize = 1024 * 1024;

pub(crate) fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// `GET {url}/v1/kv/{key}?raw` with `range` as the `Range` header: status, headers, body.
pub(crate) async fn raw(
    url: &str,
    key: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = http_client(Duration::from_secs(60)).get(format!("{url}/v1/kv/{key}?raw"));
    if let Some(range) = range {
        request = request.header("Range", range);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    (status, headers, answer.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_over_the_inline_limit_round_trips_as_a_blob_and_the_limit_stays_inline() {
    let t = support::start_cluster().await;
    let at_limit = content(MAX_INLINE_VALUE_BYTES, 1);
    t.client(1).put("inline", &at_limit).await.unwrap();
    let entry = t
        .client(2)
        .get("inline", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert!(
        entry.blob.is_none(),
        "exactly the inline limit became a blob"
    );
    assert!(entry.into_entry().unwrap().value == at_limit);

    let one_more = content(MAX_INLINE_VALUE_BYTES + 1, 2);
    t.client(2).put("big", &one_more).await.unwrap();
    let entry = t
        .client(3)
        .get("big", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value, None);
    assert_eq!(entry.value_base64, None);
    assert_eq!(entry.blob, Some(JsonBlob::from(&BlobRef::of(&one_more))));
    // The node that took the body timed its import and its majority hold, once each.
    let metrics = support::http_text(&format!("{}/metrics", t.cluster.url(2)))
        .await
        .unwrap();
    for stage in ["blob_import", "blob_hold"] {
        assert_eq!(stage_count(&metrics, stage), 1, "{stage} on node 2");
    }
    assert_eq!(
        stage_count(&metrics, "blob_fetch"),
        0,
        "node 2 fetched its own blob"
    );
    // Each of the others was asked to hold it and fetched it once (the second may still
    // be at it when the put is answered).
    for id in [1, 3] {
        let url = format!("{}/metrics", t.cluster.url(id));
        support::poll(
            "a member to time its fetch of the blob",
            Duration::from_secs(20),
            || async {
                let m = support::http_text(&url).await.ok()?;
                (stage_count(&m, "blob_fetch") == 1).then_some(())
            },
        )
        .await;
    }
    for id in 1..=3 {
        let (status, headers, body) = raw(&t.cluster.url(id), "big", None).await;
        assert_eq!(status, 200, "node {id}");
        assert_eq!(headers["content-length"], one_more.len().to_string());
        assert!(body == one_more, "node {id} returned other bytes");
    }
    let size = one_more.len();
    let (status, headers, body) = raw(&t.cluster.url(3), "big", Some("bytes=1048570-")).await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 1048570-{}/{size}", size - 1)
    );
    assert!(body == one_more[1048570..]);
    let (status, headers, _) = raw(&t.cluster.url(1), "big", Some("bytes=2000000-")).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{size}"));

    let large = content(50 * MIB, 3);
    t.client(1).put("large", &large).await.unwrap();
    let (status, _, body) = raw(&t.cluster.url(3), "large", None).await;
    assert_eq!(status, 200);
    assert!(body == large, "50 MiB came back different");
    // An inline value answers ranges too.
    let (status, _, body) = raw(&t.cluster.url(2), "inline", Some("bytes=-5")).await;
    assert_eq!(status, 206);
    assert!(body == at_limit[at_limit.len() - 5..]);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preconditions_compare_a_blob_by_its_hash_and_size() {
    let t = support::start_cluster().await;
    let c = t.client(1);
    let value = content(2 * MIB, 4);
    let blob = BlobRef::of(&value);
    c.put("cfg", &value).await.unwrap();
    let other = BlobRef::of(&content(2 * MIB, 5));

    let cas = |expected: BlobRef| CasRequest {
        expected_blob: Some(JsonBlob::from(&expected)),
        ..CasRequest::new("cfg", Some(b"unused"), b"small")
    };
    let mut wrong = cas(other);
    wrong.expected = None;
    assert!(matches!(
        c.cas(&wrong).await.unwrap(),
        CasOutcome::Mismatch(_)
    ));
    let mut right = cas(blob);
    right.expected = None;
    assert!(matches!(
        c.cas(&right).await.unwrap(),
        CasOutcome::Applied(_)
    ));
    let entry = c
        .get("cfg", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value.as_deref(), Some("small"));

    c.put("cfg", &value).await.unwrap();
    let txn = |expected: BlobRef| TxnRequest {
        preconditions: vec![JsonPrecondition {
            key: "cfg".into(),
            equals_blob: Some(JsonBlob::from(&expected)),
            ..Default::default()
        }],
        writes: vec![JsonWrite::new("seen", b"yes")],
        deletes: vec![],
    };
    assert!(matches!(
        c.txn(&txn(other)).await.unwrap(),
        TxnOutcome::Failed(_)
    ));
    assert!(matches!(
        c.txn(&txn(blob)).await.unwrap(),
        TxnOutcome::Applied(_)
    ));

    let cad = |expected: BlobRef| CadRequest {
        expected: None,
        expected_base64: None,
        expected_blob: Some(JsonBlob::from(&expected)),
        key: "cfg".into(),
    };
    assert!(matches!(
        c.cad(&cad(other)).await.unwrap(),
        CasOutcome::Mismatch(_)
    ));
    assert!(matches!(
        c.cad(&cad(blob)).await.unwrap(),
        CasOutcome::Applied(_)
    ));
    assert!(c
        .get("cfg", Consistency::Linearizable)
        .await
        .unwrap()
        .is_none());
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_that_took_the_write_can_die_after_its_answer_without_losing_the_value() {
    let mut t = support::start_cluster().await;
    let value = content(3 * MIB + 11, 6);
    for writer in [1u64, 2] {
        let key = format!("k{writer}");
        t.client(writer).put(&key, &value).await.unwrap();
        t.cluster.stop(writer).await;
        let reader = 3;
        let (status, _, body) = raw(&t.cluster.url(reader), &key, None).await;
        assert_eq!(status, 200, "{key} read after node {writer} died");
        assert!(body == value, "{key} came back different");
        t.cluster.restart(writer).await.unwrap();
    }
    t.cluster.shutdown().await;
}

/// Sends `head` then `body` on a fresh connection to `url` and returns what the node
/// answers (status line first), or an empty string if it closed without answering.
async fn send_raw(url: &str, head: &str, body: &[u8], close_early: bool) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    if close_early {
        drop(stream);
        return String::new();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_over_the_limit_or_cut_off_writes_nothing() {
    let t = support::start_cluster().await;
    let url = t.cluster.url(1);
    let too_long = MAX_BLOB_VALUE_BYTES + 1;
    let head = format!(
        "PUT /v1/kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: {too_long}\r\nConnection: close\r\n\r\n"
    );
    let answer = send_raw(&url, &head, b"", false).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    let at_limit = format!(
        "PUT /v1/kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BLOB_VALUE_BYTES}\r\n\r\n"
    );
    // A declared length of exactly the limit is taken (and then cut off, below).
    send_raw(&url, &at_limit, &content(MIB, 7), true).await;

    let head = format!(
        "PUT /v1/kv/cut HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        3 * MIB
    );
    send_raw(&url, &head, &content(3 * MIB / 2, 8), true).await;
    let c = t.client(2);
    for key in ["huge", "cut"] {
        // The cut-off writes are over once the node has seen the connection go; a write
        // after them is ordered after anything they could have done.
        c.put("after", b"x").await.unwrap();
        assert!(
            c.get(key, Consistency::Linearizable)
                .await
                .unwrap()
                .is_none(),
            "{key} was written from a body that was cut off"
        );
    }
    t.cluster.shutdown().await;
}

/// A member that lost its data and joined again catches up through a snapshot, which
/// holds the references but not the blobs: it fetches every blob its values reference
/// on its own, before anyone reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_wiped_and_added_again_gets_every_referenced_blob() {
    use aspen_api::admin::AddLearnerRequest;
    use aspen_api::wire::MembershipChange;
    let raft = aspen_config::RaftConfig {
        snapshot_every_logs: 20,
        logs_kept_after_snapshot: 0,
        ..support::fast_raft()
    };
    let mut t = support::start_cluster_with(3, raft).await;
    let values: Vec<Vec<u8>> = (0..3).map(|i| content(2 * MIB + i, 10 + i as u8)).collect();
    for (i, value) in values.iter().enumerate() {
        t.client(1).put(&format!("blob/{i}"), value).await.unwrap();
    }
    let leader = t.wait_for_leader().await;
    let victim = if leader == 3 { 2 } else { 3 };
    let service = t.cluster.node(leader).unwrap().service.clone();
    t.cluster.wipe(victim).await.unwrap();
    service
        .change_membership(MembershipChange::Remove(victim))
        .await
        .unwrap();
    // Enough writes that the leader snapshots and purges its log past the blob writes.
    for i in 0..40 {
        t.client(leader).put(&format!("k{i}"), b"v").await.unwrap();
    }
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
    let node = t.cluster.node(victim).unwrap();
    for value in &values {
        let blob = aspen_blobs::BlobRef::from(BlobRef::of(value));
        support::poll(
            &format!("node {victim} to hold {blob}"),
            Duration::from_secs(60),
            || async {
                let size = node.blobs().complete_size(blob.hash).await.unwrap();
                (size == Some(blob.size)).then_some(())
            },
        )
        .await;
    }
    assert!(
        t.cluster
            .config(victim)
            .data_dir
            .join("snapshot.bin")
            .exists(),
        "the member must have caught up through a snapshot"
    );
    let url = t.cluster.url(victim);
    for (i, value) in values.iter().enumerate() {
        let (status, _, body) = raw(&url, &format!("blob/{i}"), None).await;
        assert_eq!(status, 200);
        assert!(body == *value, "blob/{i} came back different");
    }
    t.cluster.shutdown().await;
}

/// Through a router, a value kept as a blob streams to the cluster owning its key and back,
/// whole and by range; exactly the inline limit stays inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_kept_as_blobs_stream_through_a_router_to_their_owner() {
    let us1 = support::start_named_cluster("us-1", 3, support::fast_raft()).await;
    let us2 = support::start_named_cluster("us-2", 3, support::fast_raft()).await;
    let config = support::router_config(&us1, &us2, 10_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = aspen_router::RunningRouter::start(&config, listener)
        .await
        .expect("router starts");
    let url = router.url();
    let client = aspen_api::AspenClient::with_timeout(&url, Duration::from_secs(60));

    let at_limit = content(MAX_INLINE_VALUE_BYTES, 20);
    client.put("inline", &at_limit).await.unwrap();
    let entry = client
        .get("inline", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert!(
        entry.blob.is_none(),
        "exactly the inline limit became a blob"
    );

    let one_more = content(MAX_INLINE_VALUE_BYTES + 1, 21);
    let large = content(50 * MIB, 22);
    for (key, value, owner, cluster) in [
        ("big", &one_more, "us-1", &us1),
        ("svc-b/large", &large, "us-2", &us2),
    ] {
        let written = client.put(key, value).await.unwrap();
        assert_eq!(written.cluster, owner);
        let entry = client
            .get(key, Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.blob, Some(JsonBlob::from(&BlobRef::of(value))));
        assert_eq!(entry.cluster, owner);
        let (status, headers, body) = raw(&url, key, None).await;
        assert_eq!(status, 200, "{key} through the router");
        assert_eq!(headers["content-length"], value.len().to_string());
        assert!(
            body == *value,
            "{key} came back different through the router"
        );
        // It landed in its owner cluster.
        let (status, _, body) = raw(&cluster.cluster.url(1), key, None).await;
        assert_eq!(status, 200);
        assert!(body == *value, "{key} differs at its owner");
    }
    let (status, headers, body) = raw(&url, "svc-b/large", Some("bytes=1000-1999")).await;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 1000-1999/{}", large.len())
    );
    assert!(body == large[1000..2000]);
    router.shutdown().await;
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}

/// `aspen kv put --file` streams a file into a value kept as a blob, and `aspen kv get`
/// shows its reference, streams it with `--raw` and into a file with `--out` (leaving no
/// file for a key that does not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_streams_a_value_kept_as_a_blob_from_and_to_files() {
    use crate::support::process::run_aspen;
    let t = support::start_cluster().await;
    let endpoint = t.cluster.url(2);
    let dir = tempfile::tempdir().unwrap();
    let value = content(5 * MIB + 3, 30);
    let input = dir.path().join("in.bin");
    std::fs::write(&input, &value).unwrap();
    let input = input.to_str().unwrap();
    let (ok, out, err) = run_aspen(&["kv", "put", "big", "--file", input, "--endpoint", &endpoint]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_aspen(&["kv", "get", "big", "--endpoint", &endpoint]);
    assert!(ok, "{err}");
    let hash = BlobRef::of(&value).hash_hex();
    assert!(
        out.contains(&format!("a blob of {} bytes", value.len())) && out.contains(&hash),
        "{out}"
    );

    let output = dir.path().join("out.bin");
    let path = output.to_str().unwrap();
    let (ok, out, err) = run_aspen(&["kv", "get", "big", "--out", path, "--endpoint", &endpoint]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("wrote {} bytes", value.len())),
        "{out}"
    );
    assert!(
        std::fs::read(&output).unwrap() == value,
        "--out wrote other bytes"
    );

    let raw = std::process::Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["kv", "get", "big", "--raw", "--endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(raw.status.success());
    assert!(raw.stdout == value, "--raw wrote other bytes");

    let missing = dir.path().join("missing.bin");
    let path = missing.to_str().unwrap();
    let (ok, _, err) = run_aspen(&[
        "kv",
        "get",
        "absent",
        "--out",
        path,
        "--endpoint",
        &endpoint,
    ]);
    assert!(!ok && err.contains("not found"), "{err}");
    assert!(
        !missing.exists(),
        "a file was left for a key that does not exist"
    );
    t.cluster.shutdown().await;
}

/// Whether node `id` of `t` holds `value`'s blob whole.
pub(crate) async fn holds(t: &support::TestCluster, id: u64, value: &[u8]) -> bool {
    let blob = aspen_blobs::BlobRef::from(BlobRef::of(value));
    let node = t.cluster.node(id).unwrap();
    node.blobs().complete_size(blob.hash).await.unwrap() == Some(blob.size)
}

/// Collection every second while writers overwrite their keys: every value a key holds
/// stays whole on every node; an overwritten value's blob goes from every node once the
/// change feed no longer holds it, and so does what an upload cut off halfway left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collection_keeps_every_referenced_blob_and_removes_the_rest_under_writes() {
    let t = support::start_cluster_adjusted(|config| {
        config.blobs.collect_every_secs = 1;
        config.feed.retain_revisions = aspen_config::limits::MIN_FEED_RETAIN_REVISIONS;
    })
    .await;
    let writers = 3u8;
    let rounds = 5u8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = t.client(1 + u64::from(w) % 3);
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for r in 0..rounds {
                let value = content(MIB + 1000 * (1 + usize::from(w)), w * 16 + r);
                client.put(&format!("gc/{w}"), &value).await.unwrap();
                written.push(value);
            }
            written
        }));
    }
    let mut overwritten = Vec::new();
    let mut current = Vec::new();
    for task in tasks {
        let mut written = task.await.unwrap();
        current.push(written.pop().unwrap());
        overwritten.extend(written);
    }
    let cut = format!(
        "PUT /v1/kv/gc/cut HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        3 * MIB
    );
    let half = content(3 * MIB / 2, 99);
    send_raw(&t.cluster.url(2), &cut, &half, true).await;

    // Push the feed past the overwritten values.
    let step = 1_300;
    let c = t.client(1);
    for i in 0..step {
        c.put(&format!("gc/small/{}", i % 10), b"x").await.unwrap();
    }
    for id in 1..=3 {
        for value in &overwritten {
            support::poll(
                &format!("node {id} to collect an overwritten value"),
                Duration::from_secs(30),
                || async { (!holds(&t, id, value).await).then_some(()) },
            )
            .await;
        }
        for value in &current {
            assert!(holds(&t, id, value).await, "node {id} lost a current value");
        }
    }
    // A cut-off upload's bytes are imported as a blob of their own, then collected; no
    // temporary file of it is left either.
    support::poll(
        "the cut-off upload's bytes to be collected",
        Duration::from_secs(30),
        || async { (!holds(&t, 2, &half).await).then_some(()) },
    )
    .await;
    let temp = t.cluster.config(2).data_dir.join("blobs").join("temp");
    let left: Vec<_> = std::fs::read_dir(&temp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    for (w, value) in current.iter().enumerate() {
        let (status, _, body) = raw(&t.cluster.url(3), &format!("gc/{w}"), None).await;
        assert_eq!(status, 200);
        assert!(body == *value, "gc/{w} came back different");
    }
    t.cluster.shutdown().await;
}
