//! Snapshots. `aspen/snapshot/1` against a real node, from a real iroh endpoint: a member
//! offering a snapshot over the size limit, a snapshot cut short, a damaged one, or one
//! whose bytes belong to another snapshot is refused, and the node keeps serving with its
//! data and its Raft unchanged and no partial file left; an offer under a stale vote is
//! answered at once without the bytes; a stranger is refused. And backups as a user makes
//! them: `aspen snapshot save` from a running cluster, `inspect`, and `restore` into a new
//! cluster that has every key and goes on from the backup's revision.

use crate::support;

use std::process::Command;
use std::time::Duration;

use aspen_api::Consistency;
use aspen_cluster_node::local_cluster::{node_dir, LocalCluster, LocalClusterSpec};
use aspen_cluster_node::raft_network::snapshot::{
    Offer, Reply, MAX_REPLY_BYTES, MAX_SNAPSHOT_BYTES, SNAPSHOT_ALPN, SNAPSHOT_FORMAT,
};
use aspen_cluster_node::storage::snapshot::stream::{Header, StreamWriter};
use aspen_cluster_node::transport::{
    bind_endpoint, read_message, read_secret_key_file, write_frame, Access, PeerAddr, Transport,
    SECRET_KEY_FILE,
};
use openraft::Vote;

/// Sends `offer` and then `bytes` to node `target` from an endpoint with identity `key`;
/// the node's reply, or why there was none.
async fn offer(
    key: iroh::SecretKey,
    t: &support::TestCluster,
    target: u64,
    offer: &Offer,
    bytes: &[u8],
) -> Result<Reply, String> {
    let node = t.cluster.node(target).unwrap();
    let endpoint = bind_endpoint(key, "127.0.0.1:0".parse().unwrap(), false, &Access::open())
        .await
        .unwrap();
    let transport = Transport::new(endpoint.clone(), Access::open());
    let peer = PeerAddr {
        id: node.endpoint_id(),
        addrs: node.iroh_addrs(),
    };
    let exchange = async {
        let (mut send, mut recv) = transport
            .open_stream(&peer, SNAPSHOT_ALPN)
            .await
            .map_err(|e| e.to_string())?;
        write_frame(&mut send, &SNAPSHOT_FORMAT.encode(offer))
            .await
            .map_err(|e| e.to_string())?;
        // A node that declines stops reading: its reply is what counts.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        let reply = read_message(&mut recv, MAX_REPLY_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        SNAPSHOT_FORMAT
            .decode::<Reply>(&reply)
            .map_err(|e| e.to_string())
    };
    let reply = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| Err("no reply within 20 s".into()));
    endpoint.close().await;
    reply
}

fn refused(reply: &Result<Reply, String>, containing: &str) {
    match reply {
        Ok(Reply::Refused(reason)) if reason.contains(containing) => {}
        other => panic!("expected a refusal naming {containing:?}, got {other:?}"),
    }
}

/// Files a snapshot being received left in node `id`'s data dir.
fn incoming_files(t: &support::TestCluster, id: u64) -> Vec<String> {
    std::fs::read_dir(&t.cluster.config(id).data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snapshot.incoming"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_offering_a_bad_snapshot_is_refused_and_the_node_keeps_its_data() {
    let mut t = support::start_cluster().await;
    for i in 0..20 {
        let key = format!("keep/{i:02}");
        t.client(1).put(&key, key.as_bytes()).await.unwrap();
    }
    let leader = t.wait_for_leader().await;
    let mut followers = (1..=3).filter(|id| *id != leader);
    let (target, impostor) = (followers.next().unwrap(), followers.next().unwrap());
    // Speak as a member: the impostor node's own identity, with that node stopped.
    let key =
        read_secret_key_file(&t.cluster.config(impostor).data_dir.join(SECRET_KEY_FILE)).unwrap();
    t.cluster.stop(impostor).await;
    let raft = t.cluster.node(target).unwrap().raft().clone();
    let vote = raft.metrics().borrow().vote;
    let meta = t
        .cluster
        .node(leader)
        .unwrap()
        .raft()
        .metrics()
        .borrow()
        .snapshot
        .map(|last_log_id| openraft::SnapshotMeta {
            last_log_id: Some(last_log_id),
            ..Default::default()
        })
        .unwrap_or_default();
    let stream = |meta: &openraft::SnapshotMeta<u64, _>| {
        let header = Header {
            revision: 1,
            time_ms: 0,
            feed_compacted: 0,
        };
        StreamWriter::start(Vec::new(), meta, header)
            .unwrap()
            .finish()
            .unwrap()
    };
    let good = stream(&meta);

    // Over the size limit: refused before a byte is taken.
    let over = Offer {
        vote,
        meta: meta.clone(),
        len: MAX_SNAPSHOT_BYTES + 1,
    };
    refused(&offer(key.clone(), &t, target, &over, &[]).await, "limit");
    // Cut short: fewer bytes than offered.
    let short = Offer {
        vote,
        meta: meta.clone(),
        len: good.len() as u64,
    };
    let cut = offer(key.clone(), &t, target, &short, &good[..good.len() - 1]).await;
    refused(&cut, "did not arrive whole");
    // Damaged: the offered length, but not a snapshot.
    let junk = vec![7u8; good.len()];
    refused(
        &offer(key.clone(), &t, target, &short, &junk).await,
        "damaged",
    );
    // Whole and well formed, but of another snapshot than the one offered.
    let other_meta = openraft::SnapshotMeta {
        snapshot_id: "another".into(),
        ..meta.clone()
    };
    let other = stream(&other_meta);
    let mismatch = Offer {
        vote,
        meta: meta.clone(),
        len: other.len() as u64,
    };
    refused(
        &offer(key.clone(), &t, target, &mismatch, &other).await,
        "as announced",
    );
    // Under a vote older than the node's: answered with the node's vote, bytes unread.
    let stale = Offer {
        vote: Vote::default(),
        meta: meta.clone(),
        len: good.len() as u64,
    };
    match offer(key.clone(), &t, target, &stale, &good).await {
        Ok(Reply::Done(answered)) => assert!(answered >= vote, "{answered:?} vs {vote:?}"),
        other => panic!("a stale vote is answered with the node's own: {other:?}"),
    }
    // A stranger is not answered at all.
    let stranger = offer(iroh::SecretKey::generate(), &t, target, &short, &good).await;
    assert!(stranger.is_err(), "a stranger got a reply: {stranger:?}");

    // Nothing changed: every key is still there, the node still follows its leader, and
    // no partial file is left.
    let c = t.client(target);
    for i in 0..20 {
        let key = format!("keep/{i:02}");
        let got = c.get(&key, Consistency::Stale).await.unwrap().unwrap();
        assert_eq!(got.value.as_deref(), Some(key.as_str()));
    }
    t.client(leader).put("after", b"1").await.unwrap();
    support::poll(
        "the target to apply a write made after the refusals",
        Duration::from_secs(10),
        || async {
            let got = c.get("after", Consistency::Stale).await.ok()??;
            (got.value.as_deref() == Some("1")).then_some(())
        },
    )
    .await;
    assert_eq!(incoming_files(&t, target), Vec::<String>::new());
    t.cluster.shutdown().await;
}

/// Runs `aspen ARGS`; its exit code, stdout and stderr.
fn aspen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restored_into_a_new_cluster_has_every_key_and_goes_on_from_its_revision() {
    let a = support::start_cluster().await;
    let c = a.client(1);
    for i in 0..60 {
        c.put(&format!("app/{i:02}"), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    for i in 0..10 {
        c.delete(&format!("app/{i:02}")).await.unwrap();
    }
    let lease: aspen_api::lease::LeaseId =
        c.lease_grant(3600, None).await.unwrap().id.parse().unwrap();
    c.put_with_lease("svc/one", b"10.0.0.1", &lease)
        .await
        .unwrap();
    let before: Vec<_> = c
        .scan("", None, Some(1000), Consistency::Linearizable)
        .await
        .unwrap()
        .kvs;
    let revision = c.status().await.unwrap().applied_revision;
    assert_eq!(before.len(), 51);

    // Save from a follower, as a user would, and check the file.
    let leader = a.wait_for_leader().await;
    let follower = if leader == 1 { 2 } else { 1 };
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup.snap");
    let backup_arg = backup.to_str().unwrap();
    let (code, out, err) = aspen(&[
        "snapshot",
        "save",
        backup_arg,
        "--endpoint",
        &a.cluster.url(follower),
    ]);
    assert_eq!(code, 0, "save failed: {err}");
    assert!(out.contains("51 keys, 1 leases"), "{out}");
    let (code, out, err) = aspen(&["snapshot", "inspect", backup_arg]);
    assert_eq!(code, 0, "inspect failed: {err}");
    assert!(
        out.contains(&format!("revision:       {revision}")),
        "{out}"
    );
    // A cut copy is refused by inspect and by restore, which leaves its dir reusable.
    let bytes = std::fs::read(&backup).unwrap();
    let cut = dir.path().join("cut.snap");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let (code, _, err) = aspen(&["snapshot", "inspect", cut.to_str().unwrap()]);
    assert_eq!(code, 1, "a cut backup passed inspect");
    assert!(err.contains("truncated"), "{err}");
    a.cluster.shutdown().await;

    // A new cluster from the backup: every member's data dir restored from the same file.
    let b_dir = tempfile::tempdir().unwrap();
    let (code, _, err) = aspen(&[
        "snapshot",
        "restore",
        cut.to_str().unwrap(),
        "--data-dir",
        node_dir(b_dir.path(), 1).to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a cut backup was restored");
    assert!(err.contains("truncated"), "{err}");
    for id in 1..=3 {
        let target = node_dir(b_dir.path(), id);
        let (code, out, err) = aspen(&[
            "snapshot",
            "restore",
            backup_arg,
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "restore into node {id} failed: {err}");
        assert!(
            out.contains(&format!("restored revision {revision}")),
            "{out}"
        );
    }
    let (code, _, err) = aspen(&[
        "snapshot",
        "restore",
        backup_arg,
        "--data-dir",
        node_dir(b_dir.path(), 1).to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a second restore into a used dir was accepted");
    assert!(err.contains("already holds a node"), "{err}");
    let spec = LocalClusterSpec {
        // The same name: a restore brings the cluster back (lease ids carry it).
        cluster: "test".into(),
        data_dir: b_dir.path().to_path_buf(),
        nodes: 3,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft: support::fast_raft(),
        kv_clients: support::kv_clients(),
    };
    let b = support::TestCluster {
        cluster: LocalCluster::start(spec).await.unwrap(),
        dir: b_dir,
    };
    b.wait_for_leader().await;
    let c = b.client(2);
    let after = c
        .scan("", None, Some(1000), Consistency::Linearizable)
        .await
        .unwrap()
        .kvs;
    assert_eq!(
        after, before,
        "the new cluster holds exactly the backed-up keys"
    );
    let lease_now = c.lease_get(&lease).await.unwrap();
    assert_eq!(lease_now.keys, Some(vec!["svc/one".to_string()]));
    let written = c.put("app/new", b"x").await.unwrap();
    assert!(
        written.revision > revision,
        "revision {} after restore is not past the backup's {revision}",
        written.revision
    );
    b.cluster.shutdown().await;
}
