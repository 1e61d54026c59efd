//! [`BlobStore`]: a node's iroh-blobs store on disk, with imports bounded in size, fetches
//! from named peers, and every blob it hands out durable first (see [`crate::durable`]).

use std::collections::HashSet;
use std::fmt::Display;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use iroh::{Endpoint, EndpointAddr};
use iroh_blobs::api::blobs::{BlobReader, BlobStatus};
use iroh_blobs::api::proto::ExportRangesItem;
use iroh_blobs::api::TempTag;
use iroh_blobs::store::fs::options::Options;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::{GcConfig, ProtectCb, ProtectOutcome};
use iroh_blobs::Hash;

use crate::{durable, BlobError, BlobRef};

/// Chunks of an import waiting between its source and the store: the most of a value an
/// import holds in memory is this many of its source's chunks.
pub const IMPORT_CHUNKS: usize = 4;

/// The hashes the caller keeps alive (the blobs the state machine references), asked for
/// on every collection run. An `Err` (the references could not be read) skips the run:
/// nothing is deleted on a list that may be incomplete.
pub type Protect = Arc<dyn Fn() -> Result<Vec<Hash>, String> + Send + Sync>;

/// Garbage collection: how often, and what besides temporary tags it keeps.
pub struct GcSettings {
    /// Pause between two collection runs (the first comes one interval after opening).
    pub interval: Duration,
    /// What the caller keeps alive.
    pub protect: Protect,
    /// Another user's callback, asked first (iroh-docs' for the blobs its documents
    /// reference: iroh-blobs has one slot). When it aborts, the run is skipped.
    pub also: Option<ProtectCb>,
}

/// iroh-blobs' protocol handler for a store that outlives the iroh router: the router
/// shuts every handler down at once, and iroh-blobs' handler would shut the store down
/// with it while others (iroh-docs) may still use it. Close the store with
/// [`BlobStore::shutdown`] once the router is down.
#[derive(Debug, Clone)]
pub struct ServeBlobs(iroh_blobs::BlobsProtocol);

impl iroh::protocol::ProtocolHandler for ServeBlobs {
    async fn accept(
        &self,
        connection: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        iroh::protocol::ProtocolHandler::accept(&self.0, connection).await
    }
}

/// A blob complete and durable in this store, kept from garbage collection while this
/// value lives (by a temporary tag); once the caller's [`Protect`] names it, it may go.
#[derive(Debug)]
pub struct Held {
    blob: BlobRef,
    _tag: TempTag,
}

impl Held {
    /// The blob.
    pub fn blob(&self) -> BlobRef {
        self.blob
    }
}

/// A node's blob store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    store: FsStore,
    options: Arc<Options>,
}

fn store_err(what: &str) -> impl Fn(&dyn Display) -> BlobError + '_ {
    move |e| BlobError::Store(format!("{what}: {e}"))
}

/// Bytes [`BlobStore::read_range`] hands out at once (the last chunk may be shorter).
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

impl BlobStore {
    /// Opens (creating if needed) the store in `dir`; with `gc`, unreferenced blobs are
    /// collected.
    pub async fn open(dir: &Path, gc: Option<GcSettings>) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(dir).map_err(|e| store_err("creating its directory")(&e))?;
        let mut options = Options::new(dir);
        sweep_temp(&options.path.temp_path).map_err(|e| store_err("clearing temp/")(&e))?;
        let kept = Arc::new(options.clone());
        options.gc = gc.map(|gc| GcConfig {
            interval: gc.interval,
            add_protected: Some(protect_cb(gc.protect, gc.also)),
        });
        let store = FsStore::load_with_opts(dir.join("blobs.db"), options)
            .await
            .map_err(|e| store_err("opening")(&e))?;
        Ok(BlobStore {
            store,
            options: kept,
        })
    }

    /// Takes a value from `body` into the store: at most `limit` bytes (more is
    /// [`BlobError::TooLarge`]), never more than [`IMPORT_CHUNKS`] chunks of it in memory.
    /// A body that fails or passes the limit is an error, and what came of it is left to
    /// collection (an unreferenced blob).
    pub async fn import<S, E>(&self, body: S, limit: u64) -> Result<Held, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let (mut tx, rx) = futures::channel::mpsc::channel::<io::Result<Bytes>>(IMPORT_CHUNKS);
        // A failed body ends the stream as if it were whole: the store keeps what came as a
        // blob of its own, unreferenced, which collection removes. Sending the store an error
        // instead, or dropping the import, leaves its temporary file behind for good
        // (iroh-blobs 0.103, STACK.md).
        let pump = tokio::spawn(async move {
            let mut body = std::pin::pin!(body);
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) => {
                        total = total.saturating_add(chunk.len() as u64);
                        if total > limit {
                            return Some(BlobError::TooLarge { limit });
                        }
                        if tx.send(Ok(chunk)).await.is_err() {
                            return None;
                        }
                    }
                    Err(e) => return Some(BlobError::Body(e.to_string())),
                }
            }
            None
        });
        let added = self.store.add_stream(rx).await.temp_tag().await;
        let failure = pump
            .await
            .unwrap_or_else(|e| Some(BlobError::Body(format!("reading the body stopped: {e}"))));
        if let Some(failure) = failure {
            return Err(failure);
        }
        let tag = added.map_err(|e| store_err("importing")(&e))?;
        let size = self
            .complete_size(tag.hash())
            .await?
            .ok_or_else(|| store_err("importing")(&"the imported blob is not complete"))?;
        self.make_durable(tag.hash(), size).await?;
        Ok(Held {
            blob: BlobRef {
                hash: tag.hash(),
                size,
            },
            _tag: tag,
        })
    }

    /// Makes sure `blob` is complete and durable here, fetching what is missing from
    /// `providers` in turn (each attempt bounded by `timeout`), verified as it streams.
    pub async fn fetch(
        &self,
        endpoint: &Endpoint,
        blob: BlobRef,
        providers: &[EndpointAddr],
        timeout: Duration,
    ) -> Result<Held, BlobError> {
        let tag = self
            .store
            .tags()
            .temp_tag(blob.hash)
            .await
            .map_err(|e| store_err("protecting a fetch")(&e))?;
        let fetch_err = |reason: String| BlobError::Fetch {
            hash: blob.hash,
            providers: providers.len(),
            reason,
        };
        let mut reasons = Vec::new();
        for provider in providers {
            if self.complete_size(blob.hash).await?.is_some() {
                break;
            }
            let attempt = async {
                let connection = endpoint
                    .connect(provider.clone(), iroh_blobs::ALPN)
                    .await
                    .map_err(|e| e.to_string())?;
                let fetched = self.store.remote().fetch(connection, blob.hash).await;
                fetched.map(|_| ()).map_err(|e| e.to_string())
            };
            let outcome = tokio::time::timeout(timeout, attempt).await;
            let id = provider.id.fmt_short();
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => reasons.push(format!("{id}: {e}")),
                Err(_) => reasons.push(format!("{id}: no whole blob within {timeout:?}")),
            }
        }
        match self.complete_size(blob.hash).await? {
            Some(size) if size == blob.size => {}
            Some(size) => {
                return Err(fetch_err(format!(
                    "its content has {size} bytes, not the {} the reference says",
                    blob.size
                )))
            }
            None if reasons.is_empty() => return Err(fetch_err("no peer to ask".into())),
            None => return Err(fetch_err(reasons.join("; "))),
        }
        self.make_durable(blob.hash, blob.size).await?;
        Ok(Held { blob, _tag: tag })
    }

    /// The size of blob `hash` if it is complete here.
    pub async fn complete_size(&self, hash: Hash) -> Result<Option<u64>, BlobError> {
        let status = self
            .store
            .status(hash)
            .await
            .map_err(|e| store_err("reading a blob's status")(&e))?;
        Ok(match status {
            BlobStatus::Complete { size } => Some(size),
            BlobStatus::NotFound | BlobStatus::Partial { .. } => None,
        })
    }

    /// Reads blob `hash` (seekable; through iroh-blobs' export, which does not check the
    /// bytes against the hash: they were checked when the blob came in).
    pub fn reader(&self, hash: Hash) -> BlobReader {
        self.store.reader(hash)
    }

    /// Streams `len` bytes of blob `hash` from byte `start` in chunks of
    /// [`READ_CHUNK_BYTES`] (the last may be shorter). A blob that is not here whole, or
    /// shorter than the range, is an error (the stream's only item).
    ///
    /// A blob kept in a file of its own is read from that file, [`READ_AHEAD`] chunks
    /// ahead of the reader: iroh-blobs' own export sends it through a channel 1 KiB at a
    /// time (0.103), a wake-up per KiB. Like that export, the bytes are not checked against
    /// the hash on the way out (peers fetching a blob get it verified, by iroh-blobs'
    /// protocol); they were when the blob came in. The file is opened under a temporary
    /// tag, so collection cannot take the blob between the status check and the open, and
    /// an open file stays readable whatever happens to its name afterwards.
    pub fn read_range(
        &self,
        hash: Hash,
        start: u64,
        len: u64,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
        let end = start.saturating_add(len);
        let this = self.clone();
        futures::stream::once(async move {
            match this.open_range(hash, start, end).await {
                Ok(Some(file)) => read_file(file, start, end).boxed(),
                Ok(None) => this.export_range(hash, start, end).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
    }

    /// The open file holding bytes `start..end` of blob `hash`, or `None` when the store
    /// keeps its data elsewhere (inlined in its database).
    async fn open_range(
        &self,
        hash: Hash,
        start: u64,
        end: u64,
    ) -> Result<Option<OpenBlob>, BlobError> {
        let tag = self
            .store
            .tags()
            .temp_tag(hash)
            .await
            .map_err(|e| store_err("protecting a read")(&e))?;
        let size = match self.complete_size(hash).await? {
            Some(size) if size >= end => size,
            Some(size) => return Err(short_blob(hash, size, start, end)),
            None => {
                return Err(store_err("reading a blob")(&format!(
                    "blob {hash} is not here whole"
                )))
            }
        };
        let path = self.options.path.data_path(&hash);
        let inlined = self.options.is_inlined_data(size);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<std::fs::File>> {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && inlined => return Ok(None),
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            };
            let len = file.metadata()?.len();
            if len != size {
                return Err(io::Error::other(format!(
                    "{} holds {len} bytes, not the blob's {size}",
                    path.display()
                )));
            }
            Ok(Some(file))
        })
        .await
        .map_err(|e| store_err("opening a blob")(&e))?
        .map_err(|e| store_err("opening a blob")(&e))?;
        Ok(opened.map(|file| OpenBlob { file, _tag: tag }))
    }

    /// Bytes `start..end` of blob `hash` through iroh-blobs' export (data it inlines).
    fn export_range(
        &self,
        hash: Hash,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
        let items = Box::pin(self.store.export_ranges(hash, start..end).stream());
        futures::stream::unfold(Some((items, start)), move |state| async move {
            let (mut items, mut at) = state?;
            let mut out = BytesMut::new();
            loop {
                match items.next().await {
                    Some(ExportRangesItem::Size(_)) => {}
                    // iroh-blobs rounds the range out to whole chunks: cut each leaf to it.
                    Some(ExportRangesItem::Data(leaf)) => {
                        let leaf_end = leaf.offset + leaf.data.len() as u64;
                        let to = end.min(leaf_end);
                        if to <= at {
                            continue;
                        }
                        if leaf.offset > at {
                            return Some((Err(short_blob(hash, at, start, end)), None));
                        }
                        let bytes = leaf
                            .data
                            .slice((at - leaf.offset) as usize..(to - leaf.offset) as usize);
                        at = to;
                        out.extend_from_slice(&bytes);
                        if out.len() >= READ_CHUNK_BYTES {
                            return Some((Ok(out.freeze()), Some((items, at))));
                        }
                    }
                    Some(ExportRangesItem::Error(e)) => {
                        return Some((Err(store_err("reading a blob")(&e)), None))
                    }
                    None if at < end => return Some((Err(short_blob(hash, at, start, end)), None)),
                    None if out.is_empty() => return None,
                    None => return Some((Ok(out.freeze()), None)),
                }
            }
        })
    }

    /// The iroh-blobs store (for iroh-docs).
    pub fn inner(&self) -> &FsStore {
        &self.store
    }

    /// The handler serving this store's blobs to peers on [`iroh_blobs::ALPN`] (any peer
    /// the endpoint admits may read any blob: restrict the ALPN).
    pub fn serve(&self) -> ServeBlobs {
        ServeBlobs(iroh_blobs::BlobsProtocol::new(&self.store, None))
    }

    /// Stops the store; every clone is unusable afterwards.
    pub async fn shutdown(&self) {
        let _ = self.store.shutdown().await;
    }

    /// Flushes the blob's files, then commits the store's metadata (see [`durable`]).
    async fn make_durable(&self, hash: Hash, size: u64) -> Result<(), BlobError> {
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || durable::flush_files(&options, &hash, size))
            .await
            .map_err(|e| store_err("flushing a blob")(&e))?
            .map_err(|e| store_err("flushing a blob")(&e))?;
        self.store
            .sync_db()
            .await
            .map_err(|e| store_err("committing the blob store")(&e))
    }
}

/// Chunks [`BlobStore::read_range`] reads from a blob's file ahead of its reader.
pub const READ_AHEAD: usize = 2;

/// A blob's file, open, with the tag that kept collection off it while it was opened.
struct OpenBlob {
    file: std::fs::File,
    _tag: TempTag,
}

fn short_blob(hash: Hash, at: u64, start: u64, end: u64) -> BlobError {
    store_err("reading a blob")(&format!(
        "blob {hash} ended at byte {at}, before the end of bytes {start}..{end}"
    ))
}

/// Bytes `start..end` of an open blob file, [`READ_CHUNK_BYTES`] at a time, each read on
/// a blocking thread, [`READ_AHEAD`] at once; the stream ends after an error.
fn read_file(
    blob: OpenBlob,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
    let blob = Arc::new(blob);
    let offsets = (start..end).step_by(READ_CHUNK_BYTES);
    futures::stream::iter(offsets)
        .map(move |at| {
            let blob = blob.clone();
            let len = (end - at).min(READ_CHUNK_BYTES as u64) as usize;
            async move {
                let read = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
                    let mut buf = BytesMut::zeroed(len);
                    std::os::unix::fs::FileExt::read_exact_at(&blob.file, &mut buf, at)?;
                    Ok(buf.freeze())
                });
                read.await
                    .map_err(|e| store_err("reading a blob")(&e))?
                    .map_err(|e| store_err("reading a blob")(&e))
            }
        })
        .buffered(READ_AHEAD)
        .scan(false, |failed, chunk| {
            let next = (!*failed).then(|| {
                *failed = chunk.is_err();
                chunk
            });
            futures::future::ready(next)
        })
}

/// Removes what imports cut off by a crash left in `temp/`: no import runs before the
/// store is open, and nothing else in the store keeps a file there.
fn sweep_temp(temp: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(temp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_file() {
            tracing::info!(path = %path.display(), "removing an abandoned import's file");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The collector's callback: asks `also` first (its abort skips the run), then adds what
/// `protect` names to the live set.
fn protect_cb(protect: Protect, also: Option<ProtectCb>) -> ProtectCb {
    Arc::new(move |live: &mut HashSet<Hash>| {
        let also = also.clone();
        let protect = protect.clone();
        Box::pin(async move {
            if let Some(also) = also {
                if let ProtectOutcome::Abort = also(live).await {
                    return ProtectOutcome::Abort;
                }
            }
            match protect() {
                Ok(hashes) => {
                    live.extend(hashes);
                    ProtectOutcome::Continue
                }
                Err(e) => {
                    tracing::warn!(error = %e, "blob collection skipped: its references could not be read");
                    ProtectOutcome::Abort
                }
            }
        })
    })
}

#[cfg(test)]
pub(crate) mod tests;
