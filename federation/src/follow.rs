//! An owner node that does not lead keeps its copy of its cluster's document, content
//! included, close to the leader's, so that if it takes over it continues the leader's
//! ring and checkpoint instead of starting new ones.
//!
//! iroh-docs accepts sync requests only for a document it was asked to sync, joins its
//! gossip only then, delivers nothing again that gossip dropped until the next
//! reconciliation round (there is no periodic one), and does not retry a content download
//! that failed. So every [`crate::export::FOLLOWER_SYNC_INTERVAL`] a follower starts a
//! round with the other owner nodes, then makes sure it holds the content of every segment
//! and of the checkpoint its copy references, fetching what is missing from them.

use std::collections::HashSet;

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
        self.doc
            .start_sync(self.peers.clone())
            .await
            .map_err(stack_err)?;
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
