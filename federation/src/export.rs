//! The owner side: the leader of a cluster writes its change feed into the cluster's
//! document as segments, a heartbeat, and checkpoints.
//!
//! Every node of the owner cluster runs an [`Exporter`]; only the leader writes. The others
//! keep their copy of the document in sync with the other owner nodes (a sync round every
//! [`FOLLOWER_SYNC_INTERVAL`], besides what gossip brings), so that a node that takes over
//! holds nearly all its predecessor wrote. Whenever a node becomes leader it rebuilds its
//! view of the document ([`Ring`]) from its own replica of it, and resumes from what the
//! document really holds there: the end of the contiguous run of segments after the
//! latest checkpoint, numbering on from the highest segment it holds. A segment the
//! previous leader wrote but this node's replica lacks (iroh-docs makes writes durable up
//! to 500 ms late, and syncs in no order) is simply exported again: segments are cut from
//! the committed, totally ordered feed, so two segments that hold the same revision hold
//! the same change, and importers apply each revision once whichever segment brings it.
//! Nothing is lost either: the feed itself is durable, and a revision is in the document
//! before the exporter moves past it.
//!
//! The ring of segment slots is reused group by group. Before a group is reused, every
//! revision it holds must be at or below the latest checkpoint, so that the checkpoint
//! and the segments after it always cover every revision to the head without a gap; the
//! exporter starts a new checkpoint well before that point, and waits for it if it must.
//! If the feed was compacted past the document (the cluster lost leadership for longer
//! than the feed's retention), the exporter checkpoints and continues from there.

use std::sync::Arc;
use std::time::Duration;

use iroh::EndpointAddr;
use iroh_docs::api::Doc;
use iroh_docs::AuthorId;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checkpoint::{self, Built};
use crate::content::{self, CHECKPOINT_DOWNLOAD_TIMEOUT};
use crate::format::{CheckpointMeta, Heartbeat, Segment, CHECKPOINT_META, HEARTBEAT, SEGMENT};
use crate::keys::{
    group_prefix, RingSize, SegmentKey, CHECKPOINT_BLOB_KEY, CHECKPOINT_META_KEY, GROUP_SEGMENTS,
    HEARTBEAT_KEY,
};
use crate::ring::{stack_err, Ring, Seg};
use crate::source::FeedSource;
use crate::stack::DocsStack;
use crate::FederationError;

/// The least time between two segments: a revision that arrives sooner after the last
/// segment waits for the rest of this interval, gathering the revisions that follow into
/// its segment; one that arrives later is written at once. Under load this keeps segments
/// large (about 20 revisions each at 1,000 writes/s) and the ring's history long (at most
/// 50 segments a second, whatever the write rate); when writes are sparse it adds nothing
/// to the lag.
pub const SEGMENT_LINGER: Duration = Duration::from_millis(20);

/// Most revisions in one segment.
pub const MAX_SEGMENT_SETS: usize = 1_024;

/// Key and value bytes after which a segment ends (a single larger revision still goes
/// whole, alone). Importers download a segment whole, so this bounds their memory per
/// segment.
pub const MAX_SEGMENT_BYTES: usize = 1024 * 1024;

/// How often the leader confirms its head with a quorum and writes a heartbeat. A caught-up
/// replica's time lag is at most about this plus the delivery time.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// How often a node that is not the leader checks whether it has become one.
const LEADER_POLL: Duration = Duration::from_millis(100);

/// Pause after a failed step before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// How long a new leader waits for one sync round with the other owner nodes.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// How often a node that does not lead starts a sync round with the other owner nodes,
/// keeping its copy of the document (entries and their content) close to the leader's.
/// Gossip brings most entries at once but drops them under load, and iroh-docs has no
/// periodic anti-entropy of its own; so a node that takes over lacks at most about this
/// much of its predecessor's last segments, and continues its ring instead of starting a
/// new one. Each round is one set reconciliation per other owner node over a document of
/// at most a few thousand entries: a fingerprint exchange when nothing differs.
pub const FOLLOWER_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Everything an exporter needs.
pub struct Exporter {
    /// The cluster's name.
    pub source: String,
    /// The node's feed.
    pub feed: Arc<dyn FeedSource>,
    /// The node's docs stack.
    pub stack: DocsStack,
    /// The cluster's document, with write access.
    pub doc: Doc,
    /// The cluster's author.
    pub author: AuthorId,
    /// The other members of the owner cluster, synced with when this node takes over.
    pub peers: Vec<EndpointAddr>,
    /// A new checkpoint is built once the segments since the last hold more bytes than
    /// this and than the checkpoint (a new region then replays at most about that much).
    pub checkpoint_replay_bytes: u64,
    /// The document's ring of segment slots.
    pub ring_size: RingSize,
}

/// What the exporter tells the node about itself, for status. On a node that does not
/// lead, `exported` and `next_seq` describe its own copy of the document: what it would
/// continue from if it took over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStatus {
    /// Whether this node is exporting (it leads its cluster).
    pub active: bool,
    /// The last revision in the document.
    pub exported: u64,
    /// The latest checkpoint's revision (known to the leader only).
    pub checkpoint: Option<u64>,
    /// The next segment's sequence number.
    pub next_seq: u64,
    /// The sequence number this node's export began at when it last took over: one past
    /// the highest segment its copy of the document held (0 for a new document).
    pub resumed_seq: Option<u64>,
    /// Sync rounds this node started with the other owner nodes while not leading.
    pub follower_syncs: u64,
    /// On a node that does not lead: entries of its copy of the document (the checkpoint,
    /// segments) whose content it could not fetch in its last round.
    pub missing_content: u64,
    /// The last error, if the last step failed.
    pub error: Option<String>,
}

/// The leader's export position.
struct Position {
    ring: Ring,
    checkpoint: CheckpointMeta,
    /// Segments written since that checkpoint was started.
    since_checkpoint: u64,
    /// Bytes of those segments.
    bytes_since_checkpoint: u64,
    exported: u64,
    next_seq: u64,
}

impl Exporter {
    /// Runs until `stop` turns true, reporting on `status`: exports while this node
    /// leads, and keeps its copy of the document in sync with the other owner nodes while
    /// it does not.
    pub async fn run(self, mut stop: watch::Receiver<bool>, status: watch::Sender<ExportStatus>) {
        // Before the first round: iroh-docs accepts sync requests (from the other owner
        // nodes and from importers) only for a document it was asked to sync.
        let mut last_sync: Option<Instant> = None;
        let mut held = std::collections::HashSet::new();
        loop {
            if *stop.borrow() {
                return;
            }
            if self.feed.is_leader() {
                let led = tokio::select! {
                    r = self.lead(&status) => r,
                    _ = stop.changed() => return,
                };
                status.send_modify(|s| {
                    s.active = false;
                    s.error = led.err().map(|e| e.to_string());
                });
                last_sync = None;
            } else if last_sync.is_none_or(|t| t.elapsed() >= FOLLOWER_SYNC_INTERVAL) {
                last_sync = Some(Instant::now());
                // A round may wait on a download from a peer that is gone (say, the
                // leader that just died): leading does not wait for it.
                let synced = tokio::select! {
                    r = self.follow_round(&mut held, &status) => r,
                    _ = self.became_leader() => Ok(()),
                    _ = stop.changed() => return,
                };
                if let Err(e) = synced {
                    tracing::debug!(source = %self.source, "syncing the document while following: {e}");
                    status.send_modify(|s| s.error = Some(e.to_string()));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(LEADER_POLL) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Returns once this node leads (checked every [`LEADER_POLL`]).
    async fn became_leader(&self) {
        while !self.feed.is_leader() {
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// Exports while this node leads. Returns `Ok` when leadership is lost.
    async fn lead(&self, status: &watch::Sender<ExportStatus>) -> Result<(), FederationError> {
        self.catch_up_with_peers().await?;
        let mut at = self.resume().await?;
        let resumed_seq = at.next_seq;
        tracing::info!(source = %self.source, exported = at.exported, checkpoint = at.checkpoint.revision, next_seq = at.next_seq, "exporting");
        let mut revisions = self.feed.watch_revision();
        let mut next_beat = Instant::now();
        let started = Instant::now();
        let mut last_segment = started.checked_sub(SEGMENT_LINGER).unwrap_or(started);
        let mut building: Option<JoinHandle<Result<Built, FederationError>>> = None;
        loop {
            if !self.feed.is_leader() {
                return Ok(());
            }
            status.send_modify(|s| {
                *s = ExportStatus {
                    active: true,
                    exported: at.exported,
                    checkpoint: Some(at.checkpoint.revision),
                    next_seq: at.next_seq,
                    resumed_seq: Some(resumed_seq),
                    follower_syncs: s.follower_syncs,
                    missing_content: 0,
                    error: None,
                }
            });
            if building.as_ref().is_some_and(|b| b.is_finished()) {
                let built = building.take().expect("checked just above");
                let built = built.await.map_err(cp_join)??;
                self.publish_checkpoint(&mut at, built).await?;
            }
            if Instant::now() >= next_beat {
                self.heartbeat().await;
                next_beat = Instant::now() + HEARTBEAT_INTERVAL;
            }
            let head = *revisions.borrow_and_update();
            if head > at.exported {
                tokio::time::sleep_until(last_segment + SEGMENT_LINGER).await;
                last_segment = Instant::now();
                self.export_once(&mut at, &mut building).await?;
                continue;
            }
            tokio::select! {
                _ = revisions.changed() => {}
                _ = tokio::time::sleep_until(next_beat) => {}
            }
        }
    }

    /// Syncs the document with the other owner nodes (each for at most
    /// [`CATCH_UP_WAIT`]), so a new leader starts from what the previous one wrote.
    async fn catch_up_with_peers(&self) -> Result<(), FederationError> {
        let (received, failures) = self
            .stack
            .peers
            .reconcile_all(self.doc.id(), &self.peers, CATCH_UP_WAIT)
            .await;
        // Either way the exporter goes on: a segment this node lacks is exported again.
        if !failures.is_empty() {
            tracing::debug!(source = %self.source, received, "catching up with the other owner nodes: {}", failures.join("; "));
        }
        Ok(())
    }

    /// The export position from this node's replica of the document; a first checkpoint
    /// if the document has none, or a new one if the feed no longer reaches it.
    async fn resume(&self) -> Result<Position, FederationError> {
        let ring = Ring::load(&self.doc, self.author).await?;
        // The segments go on from the checkpoint the document had, whether or not its
        // content can still be had: replicas past it continue with segments.
        let (checkpoint, from) = match self.read_meta().await? {
            Some(meta) if self.checkpoint_available(&meta).await => (meta, meta.revision),
            // The node that built it died before anyone fetched it: new replicas could
            // not bootstrap from it.
            Some(meta) => {
                tracing::info!(source = %self.source, revision = meta.revision, "no owner node can provide the latest checkpoint's content; building a new one");
                (self.checkpoint_now().await?, meta.revision)
            }
            None => {
                tracing::info!(source = %self.source, segments = ring.len(), "the document here holds no checkpoint; building one");
                let meta = self.checkpoint_now().await?;
                (meta, meta.revision)
            }
        };
        let exported = self.held_end(&ring, from).await?;
        let next_seq = ring.max_seq().map_or(0, |s| s + 1);
        let mut at = Position {
            ring,
            checkpoint,
            since_checkpoint: 0,
            bytes_since_checkpoint: 0,
            exported,
            next_seq,
        };
        if let Ok(Err(_compacted)) = self.read_feed(at.exported, 1, 1).await {
            let meta = self.checkpoint_now().await?;
            at.checkpoint = meta;
            at.exported = meta.revision;
        }
        Ok(at)
    }

    fn peer_ids(&self) -> Vec<iroh::EndpointId> {
        self.peers.iter().map(|p| p.id).collect()
    }

    async fn checkpoint_available(&self, meta: &CheckpointMeta) -> bool {
        let hash = iroh_blobs::Hash::from_bytes(meta.hash);
        content::ensure(
            &self.stack,
            hash,
            &self.peer_ids(),
            CHECKPOINT_DOWNLOAD_TIMEOUT,
        )
        .await
        .is_ok()
    }

    async fn read_meta(&self) -> Result<Option<CheckpointMeta>, FederationError> {
        let Some(entry) = self
            .doc
            .get_exact(self.author, CHECKPOINT_META_KEY, false)
            .await
            .map_err(stack_err)?
        else {
            return Ok(None);
        };
        let bytes = content::fetch(&self.stack, entry.content_hash(), &self.peer_ids()).await?;
        Ok(Some(
            CHECKPOINT_META
                .decode(&bytes)
                .map_err(|e| FederationError::Checkpoint(e.to_string()))?,
        ))
    }

    /// The end of the contiguous run of segments after `from` whose contents this node
    /// holds. A segment whose blob is gone here (not yet fetched from the previous leader,
    /// or lost) is written again from the feed rather than left for importers to find
    /// missing: covering a revision twice is harmless, a hole is not.
    async fn held_end(&self, ring: &Ring, from: u64) -> Result<u64, FederationError> {
        let mut end = from;
        while let Some(seg) = ring.covering(end + 1) {
            if !self.stack.has(seg.hash).await? {
                tracing::info!(source = %self.source, seq = seg.key.seq, first = seg.key.first, "a segment's content is missing here; exporting from its first revision again");
                break;
            }
            end = seg.key.last;
        }
        Ok(end)
    }

    /// Builds a checkpoint and publishes it before returning.
    async fn checkpoint_now(&self) -> Result<CheckpointMeta, FederationError> {
        let built = checkpoint::build(&self.source, self.feed.clone(), self.stack.blobs()).await?;
        let meta = built.meta;
        self.write_checkpoint(built).await?;
        Ok(meta)
    }

    async fn write_checkpoint(&self, built: Built) -> Result<(), FederationError> {
        let hash = built.tag.hash();
        // The blob entry first: once it references the blob, garbage collection keeps it
        // and the other owner nodes fetch it. Then the metadata importers read.
        self.doc
            .set_hash(self.author, CHECKPOINT_BLOB_KEY, hash, built.meta.size)
            .await
            .map_err(stack_err)?;
        self.stack
            .put(
                &self.doc,
                self.author,
                CHECKPOINT_META_KEY,
                CHECKPOINT_META.encode(&built.meta),
            )
            .await?;
        tracing::info!(source = %self.source, revision = built.meta.revision, keys = built.meta.keys, bytes = built.meta.size, "checkpoint published");
        self.stack.hold(built.tag);
        Ok(())
    }

    async fn publish_checkpoint(
        &self,
        at: &mut Position,
        built: Built,
    ) -> Result<(), FederationError> {
        let meta = built.meta;
        self.write_checkpoint(built).await?;
        at.checkpoint = meta;
        Ok(())
    }

    /// Reads the feed after `after` on a blocking thread (it is a SQLite read).
    async fn read_feed(
        &self,
        after: u64,
        max_sets: usize,
        max_bytes: usize,
    ) -> Result<Result<Vec<aspen_api::feed::ChangeSet>, aspen_api::feed::Compacted>, FederationError>
    {
        let feed = self.feed.clone();
        tokio::task::spawn_blocking(move || feed.changes_after(after, max_sets, max_bytes))
            .await
            .map_err(|e| FederationError::Feed(e.to_string()))?
            .map_err(FederationError::Feed)
    }

    /// Writes one segment of the revisions after `at.exported`.
    async fn export_once(
        &self,
        at: &mut Position,
        building: &mut Option<JoinHandle<Result<Built, FederationError>>>,
    ) -> Result<(), FederationError> {
        let sets = match self
            .read_feed(at.exported, MAX_SEGMENT_SETS, MAX_SEGMENT_BYTES)
            .await?
        {
            Ok(sets) => sets,
            Err(compacted) => {
                tracing::warn!(source = %self.source, %compacted, "the change feed no longer reaches the document; checkpointing");
                let meta = self.checkpoint_now().await?;
                at.checkpoint = meta;
                at.exported = meta.revision;
                return Ok(());
            }
        };
        let (Some(first), Some(last)) = (sets.first(), sets.last()) else {
            return Ok(());
        };
        let key = SegmentKey {
            seq: at.next_seq,
            first: first.revision,
            last: last.revision,
            first_time_ms: first.time_ms,
        };
        let group = self.ring_size.group_of(key.seq);
        if key.seq.is_multiple_of(GROUP_SEGMENTS) {
            self.reuse_group(at, group, building).await?;
        }
        let segment = Segment {
            source: self.source.clone(),
            seq: key.seq,
            sets,
        };
        let encoded = SEGMENT.encode(&segment);
        let segment_bytes = encoded.len() as u64;
        let hash = self
            .stack
            .put(&self.doc, self.author, self.ring_size.encode(&key), encoded)
            .await
            .map_err(|e| {
                // Most likely a clock behind the previous writer's; the next try will
                // succeed once the clock passes it.
                FederationError::Stack(format!("writing segment {}: {e}", key.seq))
            })?;
        at.ring.insert(Seg { key, group, hash });
        at.exported = key.last;
        at.next_seq += 1;
        at.since_checkpoint += 1;
        at.bytes_since_checkpoint += segment_bytes;
        let by_ring = at.since_checkpoint >= self.ring_size.checkpoint_after();
        // A new region loads the checkpoint and then every segment after it: keep that
        // within about twice the data's size.
        let by_bytes =
            at.bytes_since_checkpoint > at.checkpoint.size.max(self.checkpoint_replay_bytes);
        if (by_ring || by_bytes) && building.is_none() {
            at.since_checkpoint = 0;
            at.bytes_since_checkpoint = 0;
            let (source, feed, blobs) = (
                self.source.clone(),
                self.feed.clone(),
                (**self.stack.blobs()).clone(),
            );
            *building = Some(tokio::spawn(async move {
                checkpoint::build(&source, feed, &blobs).await
            }));
        }
        Ok(())
    }

    /// Deletes `group` so its slots can be reused, once the checkpoint covers everything
    /// it holds (waiting for, or building, a newer checkpoint if not).
    async fn reuse_group(
        &self,
        at: &mut Position,
        group: u16,
        building: &mut Option<JoinHandle<Result<Built, FederationError>>>,
    ) -> Result<(), FederationError> {
        let held = at.ring.max_last_in_group(group);
        if held.is_some_and(|last| last > at.checkpoint.revision) {
            let built = match building.take() {
                Some(b) => b.await.map_err(cp_join)??,
                None => {
                    checkpoint::build(&self.source, self.feed.clone(), self.stack.blobs()).await?
                }
            };
            at.since_checkpoint = 0;
            at.bytes_since_checkpoint = 0;
            self.publish_checkpoint(at, built).await?;
        }
        if held.is_some_and(|last| last > at.checkpoint.revision) {
            return Err(FederationError::Checkpoint(format!(
                "group {group} still holds revisions after checkpoint {}",
                at.checkpoint.revision
            )));
        }
        self.doc
            .del(self.author, group_prefix(group))
            .await
            .map_err(stack_err)?;
        at.ring.remove_group(group);
        Ok(())
    }

    /// Confirms the head with a quorum and writes the heartbeat. A failure (not leader any
    /// more, no quorum) writes nothing: a heartbeat is a promise of freshness.
    async fn heartbeat(&self) {
        let time_ms = crate::node::unix_time_ms();
        let head = match self.feed.confirm_head().await {
            Ok(head) => head,
            Err(e) => {
                tracing::debug!(source = %self.source, "no heartbeat: {e}");
                return;
            }
        };
        let beat = HEARTBEAT.encode(&Heartbeat { head, time_ms });
        if let Err(e) = self
            .stack
            .put(&self.doc, self.author, HEARTBEAT_KEY, beat)
            .await
        {
            tracing::warn!(source = %self.source, "writing the heartbeat failed: {e}");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

fn cp_join(e: tokio::task::JoinError) -> FederationError {
    FederationError::Checkpoint(format!("the checkpoint task failed: {e}"))
}
