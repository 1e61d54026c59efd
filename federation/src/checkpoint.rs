//! Checkpoints: every key of the owner at one revision, as one iroh-blob, written and read
//! as a stream of pages (see `format`), so memory stays bounded by a few pages whatever
//! the key count.
//!
//! Building reads the owner's state machine through one consistent read transaction on a
//! blocking thread and feeds the pages, framed, through a bounded channel into the blob
//! store (which hashes as it writes). Loading reads the blob back a frame at a time and
//! feeds the entries through a bounded channel into one replica transaction, which
//! commits only once the end frame confirms the revision and the key count.

use std::sync::Arc;

use aspen_api::KvEntry;
use bytes::Bytes;
use iroh_blobs::api::Store;
use iroh_blobs::api::TempTag;
use iroh_blobs::Hash;

use crate::format::{
    frame, read_frame, read_magic, CheckpointFrame, CheckpointMeta, CHECKPOINT_MAGIC,
    CHECKPOINT_PAGE_ENTRIES,
};
use crate::replica::ReplicaStore;
use crate::source::FeedSource;
use crate::FederationError;

/// Frames in flight between the reading thread and the blob store, and pages between the
/// blob reader and the replica transaction: the bound on what a checkpoint holds in
/// memory (a few pages of at most a scan page's bytes each).
const PAGES_IN_FLIGHT: usize = 4;

fn cp(e: impl std::fmt::Display) -> FederationError {
    FederationError::Checkpoint(e.to_string())
}

/// A checkpoint just built: its metadata, and the temporary tag that keeps its blob from
/// garbage collection until a document entry references it.
pub struct Built {
    /// What the `k` entry will say.
    pub meta: CheckpointMeta,
    /// Protects the blob until dropped.
    pub tag: TempTag,
}

/// Builds a checkpoint of `feed`'s whole state into `blobs`.
pub async fn build(
    source_name: &str,
    feed: Arc<dyn FeedSource>,
    blobs: &Store,
) -> Result<Built, FederationError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(PAGES_IN_FLIGHT);
    let header = CheckpointFrame::Header {
        source: source_name.to_string(),
    };
    let mut head = CHECKPOINT_MAGIC.to_vec();
    head.extend(frame(&header));
    let reader = tokio::task::spawn_blocking(move || {
        let send = |bytes: Vec<u8>| {
            tx.blocking_send(Ok(Bytes::from(bytes)))
                .map_err(|_| "the blob store stopped reading the checkpoint".to_string())
        };
        send(head)?;
        let mut keys = 0u64;
        let (revision, time_ms) = feed.scan_all(CHECKPOINT_PAGE_ENTRIES, &mut |page| {
            keys += page.len() as u64;
            send(frame(&CheckpointFrame::Entries(page)))
        })?;
        send(frame(&CheckpointFrame::End {
            keys,
            revision,
            time_ms,
        }))?;
        Ok::<_, String>((keys, revision, time_ms))
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let tag = blobs
        .add_stream(stream)
        .await
        .temp_tag()
        .await
        .map_err(cp)?;
    let (keys, revision, time_ms) = reader.await.map_err(cp)?.map_err(cp)?;
    let size = match blobs.status(tag.hash()).await.map_err(cp)? {
        iroh_blobs::api::blobs::BlobStatus::Complete { size } => size,
        other => {
            return Err(cp(format!(
                "the checkpoint blob is not complete: {other:?}"
            )))
        }
    };
    Ok(Built {
        meta: CheckpointMeta {
            revision,
            time_ms,
            hash: *tag.hash().as_bytes(),
            size,
            keys,
        },
        tag,
    })
}

/// Loads the checkpoint `meta` describes (its blob complete in `blobs`) into `source`'s
/// replica, replacing it whole. Returns the key count.
pub async fn load(
    source_name: &str,
    meta: &CheckpointMeta,
    blobs: &Store,
    replicas: Arc<ReplicaStore>,
) -> Result<u64, FederationError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<KvEntry>, String>>(PAGES_IN_FLIGHT);
    let source = source_name.to_string();
    let (revision, time_ms) = (meta.revision, meta.time_ms);
    let writer = tokio::task::spawn_blocking(move || {
        let pages = std::iter::from_fn(move || rx.blocking_recv());
        replicas.load_checkpoint(&source, revision, time_ms, pages)
    });
    let read = read_pages(source_name, meta, blobs, &tx).await;
    if let Err(e) = &read {
        // Aborts the replica transaction: the old copy stays.
        let _ = tx.send(Err(e.to_string())).await;
    }
    drop(tx);
    let loaded = writer.await.map_err(cp)?;
    read?;
    loaded
}

async fn read_pages(
    source_name: &str,
    meta: &CheckpointMeta,
    blobs: &Store,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<KvEntry>, String>>,
) -> Result<(), FederationError> {
    let mut reader = blobs.reader(Hash::from_bytes(meta.hash));
    read_magic(&mut reader).await.map_err(cp)?;
    match read_frame(&mut reader).await.map_err(cp)? {
        Some(CheckpointFrame::Header { source }) if source == source_name => {}
        other => {
            return Err(cp(format!(
                "checkpoint does not start with {source_name:?}'s header: {other:?}"
            )))
        }
    }
    let mut keys = 0u64;
    loop {
        match read_frame(&mut reader).await.map_err(cp)? {
            Some(CheckpointFrame::Entries(page)) => {
                keys += page.len() as u64;
                tx.send(Ok(page))
                    .await
                    .map_err(|_| cp("the replica stopped loading"))?;
            }
            Some(CheckpointFrame::End {
                keys: count,
                revision,
                ..
            }) => {
                if count != keys || revision != meta.revision || count != meta.keys {
                    return Err(cp(format!(
                        "checkpoint ends with {count} keys at revision {revision}, expected {} keys ({keys} read) at {}",
                        meta.keys, meta.revision
                    )));
                }
                return Ok(());
            }
            Some(CheckpointFrame::Header { .. }) => return Err(cp("a second header")),
            None => return Err(cp("the checkpoint ends without its end frame")),
        }
    }
}
