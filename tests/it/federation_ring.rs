//! The federation document's ring of segments, with a ring small enough to wrap in a
//! test: whole groups are deleted before their slots are reused, the document's entry
//! count stays bounded by the ring whatever the history, a replica that keeps up never
//! needs the checkpoint, and one cut off while the ring moves past it comes back through
//! the checkpoint. And the importer's ways past a segment whose content cannot be fetched:
//! another segment holding the same revisions (as a new leader writes them again), and as
//! a last resort, when the content is gone from every node, the checkpoint past it after
//! `UNAVAILABLE_GRACE`.

use crate::support;

use std::time::Duration;

use aspen::topology::Topology;
use aspen_api::wire::ReplicaReport;
use aspen_api::AspenClient;
use aspen_config::limits::{MIN_CHECKPOINT_REPLAY_BYTES, MIN_SEGMENT_SLOTS};
use aspen_federation::export::ExportStatus;
use aspen_federation::keys::GROUP_SEGMENTS;
use aspen_federation::{DocumentInfo, Federation};
use support::federation::{
    client, replica, replica_report, settled_report, stale_read_lag, start_with, wait_converged,
};
use support::poll;

/// The ring of these tests: two groups.
const SLOTS: u64 = MIN_SEGMENT_SLOTS;
const GROUPS: u64 = SLOTS / GROUP_SEGMENTS;

/// The exporting node of `cluster` (its leader) and its status.
fn exporter(t: &Topology, cluster: &str) -> Option<(u64, ExportStatus)> {
    let c = t.cluster(cluster);
    let id = c.leader()?;
    let status = c.node(id)?.federation()?.export_status()?;
    status.active.then_some((id, status))
}

/// Node `id` of `cluster`'s copy of `source`'s document.
async fn document(t: &Topology, cluster: &str, id: u64, source: &str) -> DocumentInfo {
    t.cluster(cluster)
        .node(id)
        .expect("running")
        .federation()
        .expect("federated")
        .document(source)
        .await
        .expect("readable")
        .expect("held")
}

/// eu-1 node 1's replica of us-1.
fn report(t: &Topology) -> ReplicaReport {
    report_of(t, 1)
}

/// eu-1 node `id`'s replica of us-1.
fn report_of(t: &Topology, id: u64) -> ReplicaReport {
    replica_report(t.cluster("eu-1"), id, "us-1").expect("eu-1 node running, keeping us-1")
}

/// eu-1 node `id`'s checkpoints loaded so far, once its report has caught up with its
/// replica ([`settled_report`]).
async fn loads_settled(t: &Topology, id: u64) -> u64 {
    settled_report(t.cluster("eu-1"), id, "us-1")
        .await
        .checkpoints_loaded
}

/// Puts one key after another (each soon its own segment) until us-1's exporter has
/// written `segments` more segments.
async fn write_segments(t: &Topology, us: &AspenClient, segments: u64) {
    let start = exporter(t, "us-1").expect("us-1 exports").1.next_seq;
    let mut i = 0u64;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        for _ in 0..10 {
            us.put(&format!("ring/{:02}", i % 20), format!("{i}").as_bytes())
                .await
                .unwrap();
            i += 1;
        }
        if exporter(t, "us-1").is_some_and(|(_, e)| e.next_seq >= start + segments) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{segments} segments not written within 180 s"
        );
    }
}

/// Runs `f` on the federation of every running node of every cluster.
fn on_every_node(t: &Topology, f: impl Fn(&Federation)) {
    for (_, _, cluster) in t.clusters() {
        for node in cluster.running() {
            if let Some(federation) = cluster.node(node).and_then(|n| n.federation()) {
                f(federation);
            }
        }
    }
}

/// The document's entries are bounded by the ring: at most `SLOTS` segments, one
/// tombstone per group and the checkpoint, its metadata and the heartbeat.
fn assert_bounded(what: &str, doc: &DocumentInfo) {
    assert!(
        doc.ring.len() as u64 <= SLOTS,
        "{what}: {} segments in a ring of {SLOTS}",
        doc.ring.len()
    );
    assert!(
        doc.entries as u64 <= SLOTS + GROUPS + 3,
        "{what}: {} entries, more than {SLOTS} segments + {GROUPS} tombstones + 3",
        doc.entries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_ring_wraps_by_whole_groups_stays_bounded_and_a_replica_behind_it_loads_the_checkpoint(
) {
    let (_dir, t) = start_with(1, 10_000, |spec| spec.segment_slots = SLOTS).await;
    let us = client(&t, "us");
    us.put("ring/start", b"0").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    let loaded_at_start = loads_settled(&t, 1).await;

    // (1) The ring wraps more than twice while eu keeps up.
    write_segments(&t, &us, 2 * SLOTS + SLOTS / 2).await;
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;
    assert_eq!(
        loads_settled(&t, 1).await,
        loaded_at_start,
        "a replica that keeps up applies segments, never the checkpoint"
    );
    let (id, status) = exporter(&t, "us-1").unwrap();
    let own = document(&t, "us-1", id, "us-1").await;
    assert_bounded("us-1's document at the owner", &own);
    let oldest = own.ring.segments().map(|s| s.key.seq).min().unwrap();
    println!(
        "owner: next segment {}, oldest held {oldest}, {} segments, {} entries",
        status.next_seq,
        own.ring.len(),
        own.entries
    );
    assert!(
        oldest + SLOTS >= status.next_seq && status.next_seq > 2 * SLOTS,
        "segments {oldest} to {} of a ring of {SLOTS}: the old groups are gone",
        status.next_seq - 1
    );
    assert!(
        own.ring.groups().iter().all(|g| u64::from(*g) < GROUPS),
        "every segment is in one of the ring's {GROUPS} groups"
    );
    // The importer's copy follows the deletes (iroh-docs applies a synced prefix delete).
    poll(
        "eu-1's copy of the document bounded",
        Duration::from_secs(30),
        || async {
            let copy = document(&t, "eu-1", 1, "us-1").await;
            let bounded = copy.ring.len() as u64 <= SLOTS
                && copy.entries as u64 <= SLOTS + GROUPS + 3
                && copy.ring.segments().all(|s| s.key.seq >= oldest);
            bounded.then_some(())
        },
    )
    .await;

    // (2) eu cut off while the ring moves past its replica: the segment after its
    // revision is deleted, so it comes back through the checkpoint.
    t.partition_regions("us", "eu");
    let (behind, _) = replica(t.cluster("eu-1"), 1, "us-1");
    write_segments(&t, &us, SLOTS + GROUP_SEGMENTS).await;
    let (id, status) = exporter(&t, "us-1").unwrap();
    let own = document(&t, "us-1", id, "us-1").await;
    assert!(
        own.ring.covering(behind + 1).is_none(),
        "the segment after eu's revision {behind} is deleted"
    );
    assert!(status.checkpoint.unwrap() > behind);
    t.heal();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;
    assert_eq!(
        loads_settled(&t, 1).await,
        loaded_at_start + 1,
        "the replica behind the ring loaded the checkpoint once"
    );
    assert_bounded(
        "us-1's document at the owner",
        &document(&t, "us-1", id, "us-1").await,
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segment_gone_from_every_node_gives_way_to_the_checkpoint_after_the_grace() {
    // Checkpoints follow the data closely, so one is soon past the lost segment.
    let (_dir, t) = start_with(1, 10_000, |spec| {
        spec.checkpoint_replay_bytes = MIN_CHECKPOINT_REPLAY_BYTES;
    })
    .await;
    let us = client(&t, "us");
    us.put("gone/start", b"0").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    let loaded_at_start = loads_settled(&t, 1).await;

    // eu is cut off while the segment after its revision is written, and that segment's
    // content is then gone from every node of both regions (fault injection).
    t.partition_regions("us", "eu");
    let (at, _) = replica(t.cluster("eu-1"), 1, "us-1");
    us.put("gone/lost", b"1").await.unwrap();
    let (id, _) = exporter(&t, "us-1").unwrap();
    let lost = poll(
        "the segment after eu's revision",
        Duration::from_secs(30),
        || async {
            document(&t, "us-1", id, "us-1")
                .await
                .ring
                .covering(at + 1)
                .cloned()
        },
    )
    .await;
    on_every_node(&t, |f| f.withhold_blob(lost.hash));
    // More than checkpoint_replay_bytes of changes after it, so a checkpoint covers it.
    let value = vec![b'v'; 1_024];
    for i in 0..100 {
        us.put(&format!("gone/after/{i:03}"), &value).await.unwrap();
    }
    poll(
        "a checkpoint past the lost segment",
        Duration::from_secs(30),
        || async {
            let (_, e) = exporter(&t, "us-1")?;
            (e.checkpoint? > lost.key.last).then_some(())
        },
    )
    .await;

    t.heal();
    let healed = tokio::time::Instant::now();
    // Judged on one report: once the grace is over the checkpoint loads, so a second
    // read may already see it (the first failed download can take a while to report).
    let stuck = poll(
        "eu's importer stuck before the lost segment",
        Duration::from_secs(30),
        || async {
            let r = report(&t);
            (r.phase == "gap" && r.revision == at && r.error.is_some()).then_some(r)
        },
    )
    .await;
    assert_eq!(
        stuck.checkpoints_loaded, loaded_at_start,
        "no checkpoint loaded while stuck"
    );
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;
    let waited = healed.elapsed();
    assert_eq!(
        loads_settled(&t, 1).await,
        loaded_at_start + 1,
        "the checkpoint past the lost segment was loaded"
    );
    assert!(
        waited >= aspen_federation::import::UNAVAILABLE_GRACE,
        "it gave up on the segment after {waited:?}, before the grace of {:?}",
        aspen_federation::import::UNAVAILABLE_GRACE
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segment_whose_content_cannot_be_fetched_gives_way_to_another_holding_its_revisions() {
    let (_dir, mut t) = start_with(3, 10_000, |_| {}).await;
    let us = client(&t, "us");
    us.put("again/start", b"0").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(30)).await;
    let mut loaded_at_start = Vec::new();
    for id in t.cluster("eu-1").running() {
        loaded_at_start.push(loads_settled(&t, id).await);
    }

    // eu is cut off while one segment is written after its revision; us-1's other nodes
    // copy it, content included, and then act as if that content were gone, so that
    // whichever takes over writes those revisions again in a segment of its own.
    t.partition_regions("us", "eu");
    let (at, _) = replica(t.cluster("eu-1"), 1, "us-1");
    us.put("again/one", b"1").await.unwrap();
    let (old_leader, _) = exporter(&t, "us-1").unwrap();
    let first = poll(
        "the segment after eu's revision",
        Duration::from_secs(30),
        || async {
            document(&t, "us-1", old_leader, "us-1")
                .await
                .ring
                .covering(at + 1)
                .cloned()
        },
    )
    .await;
    let us_1 = t.cluster("us-1");
    for id in us_1.running().into_iter().filter(|id| *id != old_leader) {
        poll(
            &format!("us-1 node {id} holding segment {}", first.key.seq),
            Duration::from_secs(30),
            || async {
                let e = us_1.node(id)?.federation()?.export_status()?;
                let held = !e.active && e.next_seq > first.key.seq && e.missing_content == 0;
                held.then_some(())
            },
        )
        .await;
        us_1.node(id)
            .unwrap()
            .federation()
            .unwrap()
            .withhold_blob(first.hash);
    }
    // Until both are in eu's copy of the document, eu cannot fetch the first either.
    let eu_nodes = t.cluster("eu-1").running();
    for id in &eu_nodes {
        let node = t.cluster("eu-1").node(*id).unwrap();
        node.federation().unwrap().withhold_blob(first.hash);
    }
    t.cluster_mut("us-1").stop(old_leader).await;
    let again = poll(
        "a new leader writing eu's next revision again",
        Duration::from_secs(60),
        || async {
            let (id, _) = exporter(&t, "us-1").filter(|(id, _)| *id != old_leader)?;
            document(&t, "us-1", id, "us-1")
                .await
                .ring
                .segments()
                .find(|s| s.key.covers(at + 1) && s.key.seq > first.key.seq)
                .cloned()
        },
    )
    .await;
    assert_ne!(again.hash, first.hash);
    // The new segment reaches at least as far, so importers try it first: its content
    // is now gone from every node.
    on_every_node(&t, |f| f.withhold_blob(again.hash));

    t.heal();
    let tried = again.hash.fmt_short().to_string();
    for id in &eu_nodes {
        poll(
            &format!("eu-1 node {id} failing on segment {}", again.key.seq),
            Duration::from_secs(30),
            || async {
                let r = report_of(&t, *id);
                let failing = r.error.is_some_and(|e| e.contains(&tried));
                (r.revision == at && failing).then_some(())
            },
        )
        .await;
    }
    // Every eu node knows of a revision it cannot apply yet: a stale read through eu's
    // router says the replica is behind in revisions, not only in time.
    let (revision, lag_revisions, _) = poll(
        "eu's router to report the replica behind",
        Duration::from_secs(30),
        || async { stale_read_lag(&t, "eu", "again/start").await },
    )
    .await;
    assert_eq!(revision, at);
    assert!(
        lag_revisions >= 1,
        "lag of {lag_revisions} revisions at {at}"
    );
    // The first segment's content can be had again (us-1's nodes serve it): the importers
    // go on with it instead of the new one, and load no checkpoint.
    for id in &eu_nodes {
        let node = t.cluster("eu-1").node(*id).unwrap();
        node.federation().unwrap().release_blob(first.hash);
    }
    us.put("again/two", b"2").await.unwrap();
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;
    for (id, loaded) in eu_nodes.iter().zip(loaded_at_start) {
        assert_eq!(
            loads_settled(&t, *id).await,
            loaded,
            "eu-1 node {id} applied segments, loading no checkpoint"
        );
    }
    t.shutdown().await;
}
