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

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aspen_api::BlobRef;
use aspen_federation::Replicas;
use iroh::EndpointAddr;
use tokio::sync::watch;

use crate::blob_values::BlobValues;

/// How often the replicas' revisions are looked at.
pub const REPLICA_BLOB_POLL: Duration = Duration::from_millis(250);

/// Wait before trying again a blob that could not be fetched.
pub const REPLICA_BLOB_RETRY: Duration = Duration::from_secs(10);

/// Runs until `stop` turns true. `sources` names each imported cluster's nodes.
pub async fn run(
    values: BlobValues,
    replicas: Arc<Replicas>,
    sources: BTreeMap<String, Vec<EndpointAddr>>,
    mut stop: watch::Receiver<bool>,
) {
    // Blobs seen whole here and still referenced: the collector keeps them while they are.
    let mut held: HashSet<[u8; 32]> = HashSet::new();
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut failed_at: Option<tokio::time::Instant> = None;
    loop {
        let revisions: Vec<(String, u64)> = replicas
            .reports()
            .into_iter()
            .map(|r| (r.source, r.revision))
            .collect();
        let retry_due = failed_at.is_some_and(|at| at.elapsed() >= REPLICA_BLOB_RETRY);
        if revisions != seen || retry_due {
            seen = revisions;
            failed_at = match pass(&values, &replicas, &sources, &mut held).await {
                Ok(()) => None,
                Err(reason) => {
                    tracing::warn!(%reason, "a blob this node's replicas reference is not here yet; trying again in {REPLICA_BLOB_RETRY:?}");
                    Some(tokio::time::Instant::now())
                }
            };
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(REPLICA_BLOB_POLL) => {}
        }
    }
}

/// Fetches every referenced blob not held here yet; forgets the ones no longer referenced.
async fn pass(
    values: &BlobValues,
    replicas: &Arc<Replicas>,
    sources: &BTreeMap<String, Vec<EndpointAddr>>,
    held: &mut HashSet<[u8; 32]>,
) -> Result<(), String> {
    let store = replicas.store().clone();
    let referenced = tokio::task::spawn_blocking(move || store.referenced_blobs())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let wanted: HashSet<[u8; 32]> = referenced.iter().map(|(_, b)| b.hash).collect();
    held.retain(|h| wanted.contains(h));
    let mut first_failure = None;
    for (source, blob) in referenced {
        if held.contains(&blob.hash) {
            continue;
        }
        let from = sources.get(&source).map(Vec::as_slice).unwrap_or_default();
        match fetch(values, blob, from).await {
            Ok(()) => {
                held.insert(blob.hash);
            }
            Err(e) => {
                first_failure.get_or_insert_with(|| format!("blob {blob} of {source}: {e}"));
            }
        }
    }
    first_failure.map_or(Ok(()), Err)
}

async fn fetch(values: &BlobValues, blob: BlobRef, source: &[EndpointAddr]) -> Result<(), String> {
    values
        .ensure_from(blob, source)
        .await
        .map_err(|e| e.to_string())
}
