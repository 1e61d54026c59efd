//! The replica side: one [`Importer`] per source cluster keeps that cluster's replica on
//! this node, applying its feed in revision order whatever order iroh-docs delivers it in.
//!
//! The importer never applies an entry because it arrived. It keeps the ring of segments
//! its replica of the document holds, and applies the segment holding the replica's next
//! revision, then the next, each in one replica transaction. When no known segment holds
//! the next revision it has a gap: it waits for more of the document (asking for a new
//! sync round while the gap lasts, since iroh-docs has no periodic anti-entropy), and if
//! the owner's checkpoint is past the gap and the gap persists, the ring has moved on
//! without it: it loads the checkpoint and continues from there. The same holds when the
//! segment that would continue the replica cannot be downloaded from any owner node for
//! [`UNAVAILABLE_GRACE`] while a checkpoint is past it. A replica's revision
//! therefore only grows, its state is always one the owner had, and it says exactly which.
//!
//! Subscribers of a document apply backpressure to iroh-docs' single storage thread, so the
//! importer drains its subscription into a wake-up signal at once and does the work from
//! its own view of the document.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::feed::ChangeSet;
use iroh::{EndpointAddr, EndpointId};
use iroh_blobs::Hash;
use iroh_docs::api::Doc;
use iroh_docs::engine::LiveEvent;
use iroh_docs::AuthorId;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::checkpoint;
use crate::content::{self, CHECKPOINT_DOWNLOAD_TIMEOUT};
use crate::format::{CheckpointMeta, Heartbeat, Segment, CHECKPOINT_META, HEARTBEAT, SEGMENT};
use crate::keys::{SegmentKey, CHECKPOINT_META_KEY, HEARTBEAT_KEY};
use crate::lag::{Lag, LagInputs};
use crate::pull::{Puller, SyncFailures};
use crate::push;
use crate::replica::ReplicaStore;
use crate::ring::{stack_err, Ring, Seg};
use crate::stack::DocsStack;
use crate::FederationError;

/// How long a gap may last, with the owner's checkpoint past it, before the importer
/// bootstraps from the checkpoint. Long enough for a sync round to bring the segments in
/// flight; a wrong guess costs a download, never correctness.
pub const GAP_GRACE: Duration = Duration::from_secs(3);

/// How long the segment that continues the replica may fail to download, with the owner's
/// checkpoint past the replica, before the importer loads the checkpoint instead. Its
/// content can be gone from every owner node: a leader that took over without the old
/// leader's part of the document starts the ring again after a new checkpoint, and reuses
/// the old segments' slots. Longer than [`GAP_GRACE`]: a download may also fail because the
/// owner node holding it is restarting.
pub const UNAVAILABLE_GRACE: Duration = Duration::from_secs(10);

/// How often the importer asks for a new sync round while it has a gap or hears nothing.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How long without a new heartbeat (the owner writes one every 500 ms) before the
/// importer counts as hearing nothing.
pub const QUIET_AFTER: Duration = Duration::from_secs(2);

/// How often the importer reconciles with each owner node even when all looks well (a
/// push link may have been cut between two entries).
pub const IDLE_RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// How long a gap lasts before the importer reconciles for it. A heartbeat announces a
/// head a little before the segment that reaches it is written, so a gap that short is
/// the normal course of things, not a missed entry.
pub const KICK_AFTER: Duration = Duration::from_millis(500);

/// How often the importer looks at its document even without news (heartbeats arrive
/// every half second; this bounds how stale its lag figures can get).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where an importer stands, for reads, status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportState {
    /// What lag is computed from.
    pub inputs: LagInputs,
    /// `bootstrapping`, `resuming`, `live` or `gap`.
    pub phase: &'static str,
    /// Checkpoints loaded since start.
    pub checkpoints_loaded: u64,
    /// Change sets applied since start.
    pub sets_applied: u64,
    /// The last error, if the last step failed.
    pub error: Option<String>,
    /// Why no owner node could be synced with, while none could.
    pub sync_error: Option<String>,
}

impl ImportState {
    /// The lag at `now_ms`.
    pub fn lag(&self, now_ms: u64) -> Lag {
        self.inputs.lag(now_ms)
    }

    /// What to report as the importer's error: the last step's, else the sync error.
    pub fn reported_error(&self) -> Option<String> {
        self.error.clone().or_else(|| self.sync_error.clone())
    }
}

/// Everything an importer needs.
pub struct Importer {
    /// The source cluster's name.
    pub source: String,
    /// The node's docs stack.
    pub stack: DocsStack,
    /// The source's document, read-only.
    pub doc: Doc,
    /// The source's author: entries by anyone else are ignored.
    pub author: AuthorId,
    /// The source cluster's nodes: synced with, and downloaded from.
    pub owners: Vec<EndpointAddr>,
    /// The node's replica store.
    pub replicas: Arc<ReplicaStore>,
    /// Shared with readers.
    pub state: Arc<Mutex<ImportState>>,
    /// The owner nodes' last reconciliations (one slot per owner node).
    pub failures: SyncFailures,
}

/// The importer's working knowledge of the document: loaded whole at start (and now and
/// then), kept up to date from the subscription's arrivals in between.
struct View {
    ring: Ring,
    checkpoint: Option<CheckpointMeta>,
    heartbeat: Option<Heartbeat>,
    /// When it was last loaded whole.
    loaded: Instant,
    /// Load it whole at the next step.
    reload: bool,
}

/// An entry the subscription reported, passed from the drain task to the importer.
struct Arrival {
    key: bytes::Bytes,
    hash: Hash,
    len: u64,
}

/// Most segments applied in one replica transaction (each is at most
/// [`crate::export::MAX_SEGMENT_BYTES`], so this bounds what one run holds in memory).
pub const APPLY_RUN_SEGMENTS: usize = 64;

/// Segment contents fetched at once while applying a run.
const FETCHES_IN_FLIGHT: usize = 16;

/// Entries that may wait between two import steps; past it the importer reloads its view
/// from the document instead (nothing is lost: the document holds them).
const MAX_PENDING_ARRIVALS: usize = 16_384;

/// How often the importer rebuilds its view from the document even without a reason, in
/// case an event was missed (a resubscription, an entry replaced in between).
const FULL_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

impl Importer {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let overflow = Arc::new(AtomicBool::new(false));
        let (arrivals_tx, mut arrivals) = mpsc::channel(MAX_PENDING_ARRIVALS);
        let drain = self.spawn_drain(wake.clone(), arrivals_tx, overflow.clone());
        let (kick, kicked) = watch::channel(0u64);
        let kick = Arc::new(kick);
        let links = self.spawn_links(&kick, kicked, &stop);
        let mut last_kick = Instant::now();
        let mut gap_since: Option<Instant> = None;
        let mut confirmed: Option<u64> = None;
        let mut view: Option<View> = None;
        let mut newest_beat = None;
        let mut last_news = Instant::now();
        loop {
            let refreshed = self.refresh(&mut view, &mut arrivals, &overflow).await;
            let beat = view.as_ref().and_then(|v| v.heartbeat).map(|h| h.time_ms);
            if beat > newest_beat {
                newest_beat = beat;
                last_news = Instant::now();
            }
            let stepped = match (refreshed, view.as_ref()) {
                (Ok(()), Some(v)) => self.step(v, &mut gap_since, &mut confirmed).await,
                (Err(e), _) => Err(e),
                (Ok(()), None) => Ok(()),
            };
            match stepped {
                Ok(()) => self.state.lock().expect("import state").error = None,
                Err(e) => {
                    tracing::debug!(source = %self.source, "import step: {e}");
                    self.note_error(&e);
                    // Look at the whole document again next time.
                    view = None;
                }
            }
            // A gap, or no heartbeat for a while (the link to the owner broke and healed):
            // reconcile with the owner nodes.
            let stuck = gap_since.is_some_and(|s| s.elapsed() >= KICK_AFTER)
                || last_news.elapsed() >= QUIET_AFTER;
            if stuck && last_kick.elapsed() >= RESYNC_INTERVAL {
                last_kick = Instant::now();
                kick.send_modify(|n| *n += 1);
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => break,
            }
        }
        drain.abort();
        for link in links {
            let _ = link.await;
        }
    }

    /// Per owner node: a task that reconciles with it when kicked (at most once per
    /// [`RESYNC_INTERVAL`], and at least once per [`IDLE_RESYNC_INTERVAL`]), and a push
    /// link to it (which kicks each time it is made). They stop with `stop`.
    fn spawn_links(
        &self,
        kick: &Arc<watch::Sender<u64>>,
        kicked: watch::Receiver<u64>,
        stop: &watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (i, owner) in self.owners.iter().enumerate() {
            let pull = Puller {
                peers: self.stack.peers.clone(),
                namespace: self.doc.id(),
                owner: owner.clone(),
                index: i,
                failures: self.failures.clone(),
                state: self.state.clone(),
            };
            tasks.push(tokio::spawn(pull.run(kicked.clone(), stop.clone())));
            let (kick, source) = (kick.clone(), self.source.clone());
            let (linked, failed) = (self.failures.clone(), self.failures.clone());
            let (state, refused_state) = (self.state.clone(), self.state.clone());
            tasks.push(tokio::spawn(push::follow(
                self.stack.peers.clone(),
                self.doc.id(),
                owner.clone(),
                move || {
                    let error = linked.set_refused(i, None);
                    state.lock().expect("import state").sync_error = error;
                    kick.send_modify(|n| *n += 1)
                },
                move |e| {
                    tracing::debug!(source = %source, "push link: {e}");
                    if let FederationError::NotServed { .. } = e {
                        let error = failed.set_refused(i, Some(e.to_string()));
                        refused_state.lock().expect("import state").sync_error = error;
                    }
                },
                stop.clone(),
            )));
        }
        tasks
    }

    fn note_error(&self, e: &FederationError) {
        self.state.lock().expect("import state").error = Some(e.to_string());
    }

    /// Drains the document's events at once: entries by the source's author go to
    /// `arrivals` (or, when it is full, `overflow` asks for a reload), and every event
    /// wakes the importer. Resubscribes if the stream ends.
    fn spawn_drain(
        &self,
        wake: Arc<Notify>,
        arrivals: mpsc::Sender<Arrival>,
        overflow: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let (doc, author) = (self.doc.clone(), self.author);
        tokio::spawn(async move {
            loop {
                if let Ok(mut events) = doc.subscribe().await {
                    while let Some(event) = futures::StreamExt::next(&mut events).await {
                        let entry = match event {
                            Ok(LiveEvent::InsertRemote { entry, .. })
                            | Ok(LiveEvent::InsertLocal { entry }) => Some(entry),
                            _ => None,
                        };
                        if let Some(entry) = entry.filter(|e| e.author() == author) {
                            let arrival = Arrival {
                                key: entry.key().to_vec().into(),
                                hash: entry.content_hash(),
                                len: entry.content_len(),
                            };
                            if arrivals.try_send(arrival).is_err() {
                                overflow.store(true, Ordering::Relaxed);
                            }
                        }
                        wake.notify_one();
                    }
                }
                // The subscription ended (the document was reopened): look again.
                overflow.store(true, Ordering::Relaxed);
                tokio::time::sleep(RESYNC_INTERVAL).await;
            }
        })
    }

    /// The owner nodes to fetch content from, those that answered last time first.
    fn owner_ids(&self) -> Vec<EndpointId> {
        let ids: Vec<EndpointId> = self.owners.iter().map(|o| o.id).collect();
        self.failures.answering_first(&ids)
    }

    /// Brings the view up to date: the arrivals since the last step, or the whole document
    /// when there is no view yet, arrivals were dropped, a group was deleted, or the last
    /// full look is old.
    async fn refresh(
        &self,
        view: &mut Option<View>,
        arrivals: &mut mpsc::Receiver<Arrival>,
        overflow: &AtomicBool,
    ) -> Result<(), FederationError> {
        let reload = overflow.swap(false, Ordering::Relaxed)
            || view
                .as_ref()
                .is_none_or(|v| v.reload || v.loaded.elapsed() >= FULL_RELOAD_INTERVAL);
        if reload {
            // What is pending is in the document too, and the load below sees it.
            while arrivals.try_recv().is_ok() {}
            *view = Some(self.load_view().await?);
            return Ok(());
        }
        let v = view.as_mut().expect("reload covers a missing view");
        while let Ok(arrival) = arrivals.try_recv() {
            if arrival.len == 0 {
                // A group's tombstone: which of its segments it removed depends on their
                // times, which the ring does not keep. Look at the document again.
                v.reload = true;
                continue;
            }
            match &arrival.key[..] {
                CHECKPOINT_META_KEY => {
                    let bytes =
                        content::fetch(&self.stack, arrival.hash, &self.owner_ids()).await?;
                    v.checkpoint = Some(
                        CHECKPOINT_META
                            .decode(&bytes)
                            .map_err(|e| FederationError::Checkpoint(e.to_string()))?,
                    );
                }
                HEARTBEAT_KEY => {
                    let bytes =
                        content::fetch(&self.stack, arrival.hash, &self.owner_ids()).await?;
                    let beat: Heartbeat = HEARTBEAT
                        .decode(&bytes)
                        .map_err(|e| FederationError::Stack(e.to_string()))?;
                    // Entries may arrive out of order: keep the newest.
                    if v.heartbeat.is_none_or(|h| beat.time_ms > h.time_ms) {
                        v.heartbeat = Some(beat);
                    }
                }
                key => {
                    if let Some((group, key)) = SegmentKey::decode(key) {
                        v.ring.insert(Seg {
                            key,
                            group,
                            hash: arrival.hash,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    async fn load_view(&self) -> Result<View, FederationError> {
        let ring = Ring::load(&self.doc, self.author).await?;
        let checkpoint = self
            .small(CHECKPOINT_META_KEY)
            .await?
            .map(|b| CHECKPOINT_META.decode::<CheckpointMeta>(&b))
            .transpose()
            .map_err(|e| FederationError::Checkpoint(e.to_string()))?;
        let heartbeat = self
            .small(HEARTBEAT_KEY)
            .await?
            .map(|b| HEARTBEAT.decode::<Heartbeat>(&b))
            .transpose()
            .map_err(|e| FederationError::Stack(e.to_string()))?;
        Ok(View {
            ring,
            checkpoint,
            heartbeat,
            loaded: Instant::now(),
            reload: false,
        })
    }

    /// The content of a small entry (`k`, `h`), if the document has it.
    async fn small(&self, key: &[u8]) -> Result<Option<bytes::Bytes>, FederationError> {
        let entry = self
            .doc
            .get_exact(self.author, key, false)
            .await
            .map_err(stack_err)?;
        match entry {
            Some(e) => Ok(Some(
                content::fetch(&self.stack, e.content_hash(), &self.owner_ids()).await?,
            )),
            None => Ok(None),
        }
    }

    /// One round: look at the document, apply what continues the replica, bootstrap if
    /// the replica fell behind the ring, update the lag figures.
    async fn step(
        &self,
        view: &View,
        gap_since: &mut Option<Instant>,
        confirmed: &mut Option<u64>,
    ) -> Result<(), FederationError> {
        let mut revision = self.revision().await?;
        // A new replica starts from the checkpoint, never replaying the history it covers
        // (the exporter keeps the segments after it no larger than it). The exporter writes
        // a checkpoint before any segment, so until one has arrived a new replica waits.
        let waiting = revision == 0 && view.checkpoint.is_none();
        let fresh = revision == 0 && view.checkpoint.is_some_and(|c| c.revision > 0);
        let result = if waiting || fresh {
            Ok(())
        } else {
            self.apply_ring(&view.ring, &mut revision).await
        };
        // The checkpoint is the way on for a replica that fell behind the ring (no known
        // segment holds its next revision), and for one whose next segment is known but
        // could not be applied (a download) for longer: its content may be gone from
        // every owner node.
        let past = view.checkpoint.filter(|c| c.revision > revision);
        let next_known = view.ring.covering(revision + 1).is_some();
        let behind_ring = past.is_some() && (fresh || !next_known);
        // The owner is known to be past the replica, and nothing known continues it: the
        // segments in between are missing here (a heartbeat arrives a little before the
        // segment it announces, so this counts only once it has lasted).
        let head_past = view.heartbeat.is_some_and(|b| b.head > revision);
        let mut phase = "live";
        if waiting {
            gap_since.get_or_insert_with(Instant::now);
            phase = "bootstrapping";
        } else if head_past && !behind_ring && !next_known {
            let since = *gap_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= KICK_AFTER {
                phase = "gap";
            }
        } else if behind_ring || next_known {
            let since = *gap_since.get_or_insert_with(Instant::now);
            phase = "gap";
            let grace = if behind_ring {
                GAP_GRACE
            } else {
                UNAVAILABLE_GRACE
            };
            let due = revision == 0 || since.elapsed() >= grace;
            if let Some(meta) = past.filter(|_| due) {
                if !behind_ring {
                    tracing::info!(source = %self.source, revision, checkpoint = meta.revision, "the segment after this replica's revision cannot be downloaded; loading the owner's checkpoint past it");
                }
                self.set_phase("bootstrapping");
                self.bootstrap(&meta).await?;
                revision = meta.revision;
                *gap_since = None;
                self.apply_ring(&view.ring, &mut revision).await?;
                phase = "live";
            }
        } else {
            *gap_since = None;
        }
        if let Some(beat) = view.heartbeat {
            if beat.head <= revision {
                *confirmed = Some(confirmed.map_or(beat.time_ms, |c| c.max(beat.time_ms)));
            }
        }
        let owner_head = [
            view.heartbeat.map_or(0, |b| b.head),
            view.ring.max_last(),
            view.checkpoint.map_or(0, |c| c.revision),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let mut state = self.state.lock().expect("import state");
        state.inputs = LagInputs {
            revision,
            owner_head: owner_head.max(state.inputs.owner_head),
            next_change_ms: view
                .ring
                .covering(revision + 1)
                .map(|s| s.key.first_time_ms),
            confirmed_ms: *confirmed,
        };
        state.phase = phase;
        drop(state);
        result
    }

    fn set_phase(&self, phase: &'static str) {
        self.state.lock().expect("import state").phase = phase;
    }

    /// The replica's revision, read from the store on a blocking thread (the store's
    /// writer may be busy applying or loading a checkpoint).
    async fn revision(&self) -> Result<u64, FederationError> {
        let (replicas, source) = (self.replicas.clone(), self.source.clone());
        tokio::task::spawn_blocking(move || replicas.state(&source))
            .await
            .map_err(|e| FederationError::Replica(e.to_string()))?
            .map(|s| s.map_or(0, |s| s.revision))
    }

    /// Applies segments from the ring while one continues the replica: the next run of up
    /// to [`APPLY_RUN_SEGMENTS`] consecutive segments is fetched [`FETCHES_IN_FLIGHT`] at a
    /// time and applied in one replica transaction, so a backlog costs neither a round
    /// trip nor a commit per segment. A segment whose content cannot be fetched gives way
    /// to another that holds the same revisions, if the ring has one (a new leader exports
    /// again what its predecessor wrote but it never received, and the predecessor may be
    /// gone with the only copy).
    async fn apply_ring(&self, ring: &Ring, revision: &mut u64) -> Result<(), FederationError> {
        let mut unavailable = HashSet::new();
        let mut failures = HashMap::new();
        loop {
            let mut run = Vec::new();
            let mut end = *revision;
            while run.len() < APPLY_RUN_SEGMENTS {
                let Some(seg) = ring.covering_except(end + 1, &unavailable) else {
                    break;
                };
                end = seg.key.last;
                run.push(seg.clone());
            }
            if run.is_empty() {
                // Either the ring ends here, or every segment holding the next revision
                // failed: then the error is that of the one that would carry it furthest.
                return match ring.covering(*revision + 1) {
                    Some(seg) => Err(failures.remove(&seg.hash).unwrap_or_else(|| {
                        FederationError::Stack(format!(
                            "segment {} could not be applied",
                            seg.key.seq
                        ))
                    })),
                    None => Ok(()),
                };
            }
            let owners = self.owner_ids();
            let fetches: Vec<_> = run
                .into_iter()
                .map(|seg| {
                    let hash = seg.hash;
                    let fetch =
                        fetch_segment(self.stack.clone(), self.source.clone(), seg, owners.clone());
                    async move { (hash, fetch.await) }
                })
                .collect();
            let mut fetched =
                futures::StreamExt::buffered(futures::stream::iter(fetches), FETCHES_IN_FLIGHT);
            // What arrived in order before a failed fetch is still applied.
            let mut sets = Vec::new();
            let mut failed = None;
            while let Some((hash, result)) = futures::StreamExt::next(&mut fetched).await {
                match result {
                    Ok(more) => sets.extend(more),
                    Err(e) => {
                        failed = Some((hash, e));
                        break;
                    }
                }
            }
            drop(fetched);
            if !sets.is_empty() {
                let replicas = self.replicas.clone();
                let source = self.source.clone();
                let applied = tokio::task::spawn_blocking(move || replicas.apply(&source, &sets))
                    .await
                    .map_err(|e| FederationError::Replica(e.to_string()))??;
                *revision = applied.revision;
                let mut state = self.state.lock().expect("import state");
                state.sets_applied += applied.sets;
                state.inputs.revision = applied.revision;
            }
            if let Some((hash, e)) = failed {
                tracing::debug!(source = %self.source, "segment {}: {e}", hash.fmt_short());
                unavailable.insert(hash);
                failures.insert(hash, e);
            }
        }
    }

    /// Loads the owner's checkpoint into the replica.
    async fn bootstrap(&self, meta: &CheckpointMeta) -> Result<(), FederationError> {
        let hash = Hash::from_bytes(meta.hash);
        tracing::info!(source = %self.source, revision = meta.revision, keys = meta.keys, bytes = meta.size, "loading a checkpoint");
        // Held while loading: a newer checkpoint would leave this one unreferenced, and
        // garbage collection could remove it mid-load.
        let _tag = self
            .stack
            .blobs()
            .tags()
            .temp_tag(hash)
            .await
            .map_err(stack_err)?;
        content::ensure(
            &self.stack,
            hash,
            &self.owner_ids(),
            CHECKPOINT_DOWNLOAD_TIMEOUT,
        )
        .await?;
        let keys = checkpoint::load(
            &self.source,
            meta,
            self.stack.blobs(),
            self.replicas.clone(),
        )
        .await?;
        self.state.lock().expect("import state").checkpoints_loaded += 1;
        tracing::info!(source = %self.source, revision = meta.revision, keys, "checkpoint loaded");
        Ok(())
    }
}

/// The change sets of segment `seg` of `source`, fetched from the local store or `owners`
/// and checked against its key.
async fn fetch_segment(
    stack: DocsStack,
    source: String,
    seg: Seg,
    owners: Vec<EndpointId>,
) -> Result<Vec<ChangeSet>, FederationError> {
    let bytes = content::fetch(&stack, seg.hash, &owners).await?;
    let segment: Segment = SEGMENT
        .decode(&bytes)
        .map_err(|e| FederationError::Stack(e.to_string()))?;
    segment
        .check(&source, &seg.key)
        .map_err(FederationError::Stack)?;
    Ok(segment.sets)
}
