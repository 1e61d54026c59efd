//! The replica side: one [`Importer`] per source cluster keeps that cluster's replica on
//! this node, applying its feed in revision order whatever order iroh-docs delivers it in.
//!
//! The importer never applies an entry because it arrived. It keeps the ring of segments
//! its replica of the document holds, and applies the segment holding the replica's next
//! revision, then the next, each in one replica transaction. When no known segment holds
//! the next revision it has a gap: it waits for more of the document (asking for a new
//! sync round while the gap lasts, since iroh-docs has no periodic anti-entropy), and if
//! the owner's checkpoint is past the gap and the gap persists, the ring has moved on
//! without it: it loads the checkpoint and continues from there. A replica's revision
//! therefore only grows, its state is always one the owner had, and it says exactly which.
//!
//! Subscribers of a document apply backpressure to iroh-docs' single storage thread, so the
//! importer drains its subscription into a wake-up signal at once and does the work from
//! its own view of the document.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::{EndpointAddr, EndpointId};
use iroh_blobs::Hash;
use iroh_docs::api::Doc;
use iroh_docs::AuthorId;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::checkpoint;
use crate::content::{self, CHECKPOINT_DOWNLOAD_TIMEOUT};
use crate::format::{CheckpointMeta, Heartbeat, Segment, CHECKPOINT_META, HEARTBEAT, SEGMENT};
use crate::keys::{CHECKPOINT_META_KEY, HEARTBEAT_KEY};
use crate::lag::{Lag, LagInputs};
use crate::replica::ReplicaStore;
use crate::ring::{stack_err, Ring};
use crate::stack::DocsStack;
use crate::FederationError;

/// How long a gap may last, with the owner's checkpoint past it, before the importer
/// bootstraps from the checkpoint. Long enough for a sync round to bring the segments in
/// flight; a wrong guess costs a download, never correctness.
pub const GAP_GRACE: Duration = Duration::from_secs(3);

/// How often the importer asks for a new sync round while it has a gap or hears nothing.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// How often the importer looks at its document even without news (heartbeats arrive
/// every half second; this bounds how stale its lag figures can get).
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Where an importer stands, for reads, status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportState {
    /// What lag is computed from.
    pub inputs: LagInputs,
    /// `bootstrapping`, `live` or `gap`.
    pub phase: &'static str,
    /// Checkpoints loaded since start.
    pub checkpoints_loaded: u64,
    /// Change sets applied since start.
    pub sets_applied: u64,
    /// The last error, if the last step failed.
    pub error: Option<String>,
}

impl ImportState {
    /// The lag at `now_ms`.
    pub fn lag(&self, now_ms: u64) -> Lag {
        self.inputs.lag(now_ms)
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
}

/// The importer's working knowledge, rebuilt from the document on each wake-up.
struct View {
    ring: Ring,
    checkpoint: Option<CheckpointMeta>,
    heartbeat: Option<Heartbeat>,
}

impl Importer {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let drain = self.spawn_drain(wake.clone());
        let mut last_sync = Instant::now();
        if let Err(e) = self.doc.start_sync(self.owners.clone()).await {
            self.note_error(&stack_err(e));
        }
        let mut gap_since: Option<Instant> = None;
        let mut confirmed: Option<u64> = None;
        loop {
            match self.step(&mut gap_since, &mut confirmed).await {
                Ok(()) => self.state.lock().expect("import state").error = None,
                Err(e) => {
                    tracing::debug!(source = %self.source, "import step: {e}");
                    self.note_error(&e);
                }
            }
            let gap = gap_since.is_some();
            if (gap || last_sync.elapsed() >= RESYNC_INTERVAL * 5)
                && last_sync.elapsed() >= RESYNC_INTERVAL
            {
                last_sync = Instant::now();
                if let Err(e) = self.doc.start_sync(self.owners.clone()).await {
                    self.note_error(&stack_err(e));
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => break,
            }
        }
        drain.abort();
    }

    fn note_error(&self, e: &FederationError) {
        self.state.lock().expect("import state").error = Some(e.to_string());
    }

    /// Drains the document's events into `wake` (one coalesced signal), resubscribing if
    /// the stream ends.
    fn spawn_drain(&self, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
        let doc = self.doc.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut events) = doc.subscribe().await {
                    while futures::StreamExt::next(&mut events).await.is_some() {
                        wake.notify_one();
                    }
                }
                tokio::time::sleep(RESYNC_INTERVAL).await;
            }
        })
    }

    fn owner_ids(&self) -> Vec<EndpointId> {
        self.owners.iter().map(|o| o.id).collect()
    }

    async fn view(&self) -> Result<View, FederationError> {
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
        gap_since: &mut Option<Instant>,
        confirmed: &mut Option<u64>,
    ) -> Result<(), FederationError> {
        let view = self.view().await?;
        let mut revision = self.revision()?;
        let result = self.apply_ring(&view.ring, &mut revision).await;
        let behind_ring = view.checkpoint.is_some_and(|c| c.revision > revision)
            && view.ring.covering(revision + 1).is_none();
        let mut phase = "live";
        if behind_ring {
            let since = *gap_since.get_or_insert_with(Instant::now);
            phase = "gap";
            if revision == 0 || since.elapsed() >= GAP_GRACE {
                let meta = view.checkpoint.expect("checked by behind_ring");
                self.set_phase("bootstrapping");
                self.bootstrap(&meta).await?;
                revision = meta.revision;
                *gap_since = None;
                self.apply_ring(&view.ring, &mut revision).await?;
                phase = "live";
            }
        } else if view.ring.covering(revision + 1).is_some() {
            // A known segment continues the replica, but applying it failed (a download):
            // still a gap until it works.
            gap_since.get_or_insert_with(Instant::now);
            phase = "gap";
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

    fn revision(&self) -> Result<u64, FederationError> {
        Ok(self.replicas.state(&self.source)?.map_or(0, |s| s.revision))
    }

    /// Applies segments from the ring while one continues the replica.
    async fn apply_ring(&self, ring: &Ring, revision: &mut u64) -> Result<(), FederationError> {
        while let Some(seg) = ring.covering(*revision + 1) {
            let bytes = content::fetch(&self.stack, seg.hash, &self.owner_ids()).await?;
            let segment: Segment = SEGMENT
                .decode(&bytes)
                .map_err(|e| FederationError::Stack(e.to_string()))?;
            segment
                .check(&self.source, &seg.key)
                .map_err(FederationError::Stack)?;
            let replicas = self.replicas.clone();
            let source = self.source.clone();
            let new = tokio::task::spawn_blocking(move || replicas.apply(&source, &segment.sets))
                .await
                .map_err(|e| FederationError::Replica(e.to_string()))??;
            let applied = new - *revision;
            *revision = new;
            let mut state = self.state.lock().expect("import state");
            state.sets_applied += applied;
            state.inputs.revision = new;
        }
        Ok(())
    }

    /// Loads the owner's checkpoint into the replica.
    async fn bootstrap(&self, meta: &CheckpointMeta) -> Result<(), FederationError> {
        let hash = Hash::from_bytes(meta.hash);
        tracing::info!(source = %self.source, revision = meta.revision, keys = meta.keys, bytes = meta.size, "loading a checkpoint");
        // Held while loading: a newer checkpoint would leave this one unreferenced, and
        // garbage collection could remove it mid-load.
        let _tag = self
            .stack
            .blobs
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
        let keys =
            checkpoint::load(&self.source, meta, &self.stack.blobs, self.replicas.clone()).await?;
        self.state.lock().expect("import state").checkpoints_loaded += 1;
        tracing::info!(source = %self.source, revision = meta.revision, keys, "checkpoint loaded");
        Ok(())
    }
}
