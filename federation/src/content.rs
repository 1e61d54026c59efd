//! Fetching an entry's content: from the local blob store when it is there, else from the
//! given peers by hash (verified as it streams). iroh-docs downloads remote entries'
//! content by itself, but retries a failed download only when a neighbour announces the
//! content again, and never after a restart, so every reader of content goes through here.

use std::time::Duration;

use bytes::Bytes;
use iroh::EndpointId;
use iroh_blobs::Hash;

use crate::ring::stack_err;
use crate::stack::DocsStack;
use crate::FederationError;

/// Longest one download may take before it counts as failed (and is retried later). A
/// segment is at most a few MB; a checkpoint may be gigabytes, so checkpoint loads use
/// [`CHECKPOINT_DOWNLOAD_TIMEOUT`].
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a checkpoint download may take.
pub const CHECKPOINT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3_600);

/// Makes sure the blob `hash` is complete locally, downloading it from `providers` (tried
/// in turn) if not.
pub async fn ensure(
    stack: &DocsStack,
    hash: Hash,
    providers: &[EndpointId],
    timeout: Duration,
) -> Result<(), FederationError> {
    if stack.is_withheld(hash) {
        return Err(FederationError::Stack(format!(
            "blob {} is withheld on this node (fault injection)",
            hash.fmt_short()
        )));
    }
    if stack.has(hash).await? {
        return Ok(());
    }
    if providers.is_empty() {
        return Err(FederationError::Stack(format!(
            "blob {} is missing here and no peer to fetch it from is known",
            hash.fmt_short()
        )));
    }
    let download = stack.downloader.download(hash, providers.to_vec());
    match tokio::time::timeout(timeout, download).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(FederationError::Stack(format!(
            "downloading blob {}: {e}",
            hash.fmt_short()
        ))),
        Err(_) => Err(FederationError::Stack(format!(
            "downloading blob {} took over {timeout:?}",
            hash.fmt_short()
        ))),
    }
}

/// The bytes of the (small) blob `hash`, fetched as [`ensure`] does.
pub async fn fetch(
    stack: &DocsStack,
    hash: Hash,
    providers: &[EndpointId],
) -> Result<Bytes, FederationError> {
    ensure(stack, hash, providers, DOWNLOAD_TIMEOUT).await?;
    stack.blobs().get_bytes(hash).await.map_err(stack_err)
}
