//! The bytes of every blob this node's federation replicas reference, here too.
//!
//! A federation document carries a blob value's reference, never its bytes (DESIGN.md,
//! "Federation"). For a region to read such a value locally, and to go on reading it
//! while the owner region is cut off, each importing node fetches the bytes from the
//! owner cluster's nodes over iroh-blobs (verified against the hash) once the reference
//! is in its replica, and its collector keeps them as long as the replica references them
//! (see `node::open_blobs`).
//!
//! The task looks at the replicas' revisions every [`REPLICA_BLOB_POLL`]; when one moved,
//! it lists the blobs the replicas reference (an index holds only those) and fetches each
//! one it has not seen here: first from the node's own members (another member of the
//! region may hold it already), then from the source's nodes. A blob that could not be
//! fetched is tried again after [`REPLICA_BLOB_RETRY`]; meanwhile a `GET ?raw` of it
//! fetches it on demand the same way. The replica itself never waits for bytes: its
//! revision, and every read of references, stay exact whatever the fetches do.
//!
//! Each pass lists the referenced blobs whole (a partial index holds only the rows that
//! reference one, so the cost follows the number of blob values, not of keys) and fetches
//! one at a time; following each source's changes instead would make a pass cost only
//! what changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aspen_federation::Replicas;
use iroh::EndpointAddr;
use tokio::sync::watch;

use crate::blob_values::BlobValues;

/// How often the replicas' revisions are looked at.
pub const REPLICA_BLOB_POLL: Duration = Duration::from_millis(250);

/// Wait before trying again a blob that could not be fetched.
pub const REPLICA_BLOB_RETRY: Duration = Duration::from_secs(10);

/// Runs until `stop` turns true. `sources` names each imported cluster's nodes; blobs
/// referenced by a replica of a cluster no longer imported are left alone. `collections`
/// counts the node's blob collection runs.
pub async fn run(
    values: BlobValues,
    replicas: Arc<Replicas>,
    sources: BTreeMap<String, Vec<EndpointAddr>>,
    collections: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut fetcher = Fetcher {
        values,
        sources,
        held: HashSet::new(),
        failed: HashMap::new(),
        collections_seen: collections.load(Ordering::Relaxed),
        collections,
    };
    let mut seen: Vec<(String, u64)> = Vec::new();
    loop {
        let revisions: Vec<(String, u64)> = replicas
            .reports()
            .into_iter()
            .map(|r| (r.source, r.revision))
            .collect();
        if revisions != seen || fetcher.retry_due() {
            seen = revisions;
            tokio::select! {
                _ = stop.changed() => return,
                () = fetcher.pass(&replicas) => {}
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(REPLICA_BLOB_POLL) => {}
        }
    }
}

struct Fetcher {
    values: BlobValues,
    sources: BTreeMap<String, Vec<EndpointAddr>>,
    /// Blobs seen whole here since the last collection run, still referenced.
    held: HashSet<[u8; 32]>,
    /// Blobs whose last fetch failed, and when: tried again after [`REPLICA_BLOB_RETRY`].
    failed: HashMap<[u8; 32], Instant>,
    collections: Arc<AtomicU64>,
    collections_seen: u64,
}

impl Fetcher {
    fn retry_due(&self) -> bool {
        self.failed
            .values()
            .any(|at| at.elapsed() >= REPLICA_BLOB_RETRY)
    }

    /// Fetches every referenced blob not held here, apart from those that failed less
    /// than [`REPLICA_BLOB_RETRY`] ago; forgets the ones no longer referenced.
    async fn pass(&mut self, replicas: &Arc<Replicas>) {
        let store = replicas.store().clone();
        let referenced = match tokio::task::spawn_blocking(move || store.referenced_blobs()).await {
            Ok(Ok(referenced)) => referenced,
            Ok(Err(e)) => return tracing::warn!(error = %e, "listing the replicas' blobs"),
            Err(e) => return tracing::warn!(error = %e, "listing the replicas' blobs"),
        };
        // A collection run may have removed a blob that was unreferenced for a while and
        // is referenced again: after one, each is looked at again (a cheap local check).
        let collections = self.collections.load(Ordering::Relaxed);
        if collections != self.collections_seen {
            self.collections_seen = collections;
            self.held.clear();
        }
        let wanted: HashSet<[u8; 32]> = referenced.iter().map(|(_, b)| b.hash).collect();
        self.held.retain(|h| wanted.contains(h));
        self.failed.retain(|h, _| wanted.contains(h));
        for (source, blob) in referenced {
            let Some(from) = self.sources.get(&source) else {
                continue;
            };
            let recent = self
                .failed
                .get(&blob.hash)
                .is_some_and(|at| at.elapsed() < REPLICA_BLOB_RETRY);
            if self.held.contains(&blob.hash) || recent {
                continue;
            }
            match self.values.ensure_from(blob, from).await {
                Ok(()) => {
                    self.failed.remove(&blob.hash);
                    self.held.insert(blob.hash);
                }
                Err(e) => {
                    tracing::warn!(%blob, %source, error = %e, "a blob this node's replica references is not here yet; trying again in {REPLICA_BLOB_RETRY:?}");
                    self.failed.insert(blob.hash, Instant::now());
                }
            }
        }
    }
}
