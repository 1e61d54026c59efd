//! The federation document's ring of segments, with a ring small enough to wrap in a
//! test: whole groups are deleted before their slots are reused, the document's entry
//! count stays bounded by the ring whatever the history, a replica that keeps up never
//! needs the checkpoint, and one cut off while the ring moves past it comes back through
//! the checkpoint.

use crate::support;

use std::time::Duration;

use aspen::topology::Topology;
use aspen_api::wire::ReplicaReport;
use aspen_api::AspenClient;
use aspen_config::limits::MIN_SEGMENT_SLOTS;
use aspen_federation::export::ExportStatus;
use aspen_federation::keys::GROUP_SEGMENTS;
use aspen_federation::DocumentInfo;
use support::federation::{client, replica, start_with, wait_converged};
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
    t.cluster("eu-1")
        .node(1)
        .unwrap()
        .federation()
        .unwrap()
        .replicas()
        .reports()
        .into_iter()
        .find(|r| r.source == "us-1")
        .unwrap()
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
    let loaded_at_start = report(&t).checkpoints_loaded;

    // (1) The ring wraps more than twice while eu keeps up.
    write_segments(&t, &us, 2 * SLOTS + SLOTS / 2).await;
    wait_converged(&t, "us-1", "eu-1", Duration::from_secs(60)).await;
    assert_eq!(
        report(&t).checkpoints_loaded,
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
        report(&t).checkpoints_loaded,
        loaded_at_start + 1,
        "the replica behind the ring loaded the checkpoint once"
    );
    assert_bounded(
        "us-1's document at the owner",
        &document(&t, "us-1", id, "us-1").await,
    );
    t.shutdown().await;
}
