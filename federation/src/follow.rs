//! An owner node that does not lead keeps its copy of its cluster's document, content
//! included, close to the leader's, so that if it takes over it continues the leader's
//! ring and checkpoint instead of starting new ones.
//!
//! Every [`crate::export::FOLLOWER_SYNC_INTERVAL`] a follower reconciles its copy with the
//! other owner nodes (each bounded by [`FOLLOWER_SYNC_TIMEOUT`], so an unreachable one
//! does not hold the round up), then makes sure it holds the content of every segment and
//! of the checkpoint its copy references, fetching what is missing from them (iroh-docs
//! downloads nothing by itself here).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use iroh_blobs::Hash;
use tokio::sync::watch;

use crate::content::{self, CHECKPOINT_DOWNLOAD_TIMEOUT, DOWNLOAD_TIMEOUT};
use crate::export::{ExportStatus, Exporter};
use crate::keys::{CHECKPOINT_BLOB_KEY, CHECKPOINT_META_KEY};
use crate::ring::{stack_err, Ring};
use crate::FederationError;

/// Contents a follower fetches at once (each a segment of at most
/// [`crate::export::MAX_SEGMENT_BYTES`], so this bounds what a round holds in memory).
const FETCHES_IN_FLIGHT: usize = 16;

/// Longest a follower's reconciliation with one other owner node may take. A round runs
/// every second; one owner node cut off must not stall it for long.
pub const FOLLOWER_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

impl Exporter {
    /// One round while following: starts a sync round with the other owner nodes (it runs
    /// on in the background), fetches the content its copy lacks, and reports what the
    /// copy holds. `held` is the content known to be here, kept between rounds so that a
    /// round looks only at what is new.
    pub(crate) async fn follow_round(
        &self,
        held: &mut HashSet<Hash>,
        status: &watch::Sender<ExportStatus>,
    ) -> Result<(), FederationError> {
        let (_, failures) = self
            .stack
            .peers
            .reconcile_all(self.doc.id(), &self.peers, FOLLOWER_SYNC_TIMEOUT)
            .await;
        if failures.len() == self.peers.len() && !failures.is_empty() {
            tracing::debug!(
                "following: no other owner node answered: {}",
                failures.join("; ")
            );
        }
        let ring = Ring::load(&self.doc, self.author).await?;
        let mut small: HashSet<Hash> = ring.segments().map(|s| s.hash).collect();
        if let Some(meta) = self.entry_hash(CHECKPOINT_META_KEY).await? {
            small.insert(meta);
        }
        let checkpoint = self.entry_hash(CHECKPOINT_BLOB_KEY).await?;
        held.retain(|h| small.contains(h) || Some(*h) == checkpoint);
        let peers: Vec<_> = self.peers.iter().map(|p| p.id).collect();
        let missing: Vec<Hash> = small.into_iter().filter(|h| !held.contains(h)).collect();
        let fetches = missing.into_iter().map(|hash| {
            let (stack, peers) = (&self.stack, &peers);
            async move {
                let fetched = content::ensure(stack, hash, peers, DOWNLOAD_TIMEOUT).await;
                (hash, fetched)
            }
        });
        let mut fetched = futures::stream::iter(fetches).buffer_unordered(FETCHES_IN_FLIGHT);
        let mut failed = 0u64;
        let mut error = None;
        while let Some((hash, result)) = fetched.next().await {
            match result {
                Ok(()) => {
                    held.insert(hash);
                }
                Err(e) => {
                    failed += 1;
                    error = Some(e);
                }
            }
        }
        drop(fetched);
        if let Some(hash) = checkpoint.filter(|h| !held.contains(h)) {
            match content::ensure(&self.stack, hash, &peers, CHECKPOINT_DOWNLOAD_TIMEOUT).await {
                Ok(()) => {
                    held.insert(hash);
                }
                Err(e) => {
                    failed += 1;
                    error = Some(e);
                }
            }
        }
        status.send_modify(|s| {
            s.active = false;
            s.exported = ring.max_last();
            s.next_seq = ring.max_seq().map_or(0, |q| q + 1);
            s.checkpoint = None;
            s.resumed_seq = None;
            s.follower_syncs += 1;
            s.missing_content = failed;
            s.error = None;
        });
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The content hash of the document's entry `key`, if it has one.
    async fn entry_hash(&self, key: &[u8]) -> Result<Option<Hash>, FederationError> {
        Ok(self
            .doc
            .get_exact(self.author, key, false)
            .await
            .map_err(stack_err)?
            .map(|e| e.content_hash()))
    }
}
