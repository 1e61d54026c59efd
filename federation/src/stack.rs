//! One node's iroh-docs stack: a persistent iroh-blobs store and docs on the node's own
//! endpoint, with the blob garbage collector protecting every blob a document references
//! (iroh-docs hands its hashes to the collector before each run).
//!
//! Documents are synced by this crate ([`crate::peersync`], [`crate::push`]), not by
//! iroh-docs' live engine, which can stop for good under a large reconciliation (see
//! `peersync`). The engine still runs (the docs API needs it) but is never asked to sync,
//! and neither its protocol handler nor gossip's is registered: the endpoint serves
//! reconciliation through [`crate::peersync::ReconcileHandler`] on iroh-docs' ALPN, pushes
//! on [`crate::push::ALPN`], and blobs.
//!
//! That protection has a window: iroh-docs lists the referenced hashes *before* the
//! collector clears the store's record of blobs added since the last run, so a blob added
//! while the list is being made, whose entry lands after its part of the list was read and
//! whose temporary tag is dropped before the collector looks at tags, is collected while its
//! entry references it (seen here: a segment lost on every owner node, its importers stuck
//! at the gap). Every document write of this crate therefore goes through
//! [`DocsStack::put`], which keeps the blob's temporary tag for [`WRITE_HOLD`], past any
//! collection that began before the entry existed.
//!
//! The blob store is the node's one store (`aspen-blobs`, `blobs/` under the data dir), which
//! also keeps large values: the node opens it with iroh-docs' protection from
//! [`docs_protection`] and hands it to [`DocsStack::spawn_on`], serves it and closes it.
//! [`DocsStack::spawn`] opens a store of its own instead (tests). Layout under the node's
//! data dir: `federation/docs/` (`docs.redb`); a `federation/blobs/` of an earlier version is
//! moved to the node's store by [`move_old_blob_store`]. The protocol handlers it returns
//! must be registered on the node's one iroh `Router` together with Raft and KV: iroh sets an
//! endpoint's ALPNs to exactly those of its router.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh_blobs::api::TempTag;
use iroh_blobs::Hash;
use iroh_docs::api::Doc;
use iroh_docs::AuthorId;

use aspen_blobs::{BlobStore, GcSettings, GC_INTERVAL};
use iroh::protocol::DynProtocolHandler;
use iroh::Endpoint;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::ProtectCb;
use iroh_docs::engine::{DefaultAuthorStorage, Engine, ProtectCallbackHandler};
use iroh_docs::protocol::Docs;
use iroh_gossip::net::Gossip;

use crate::peersync::PeerSync;
use crate::push::PushHandler;
use crate::FederationError;

/// How long a blob this node wrote to a document stays protected by its own temporary
/// tag: longer than two collection intervals, so the next collection that starts after
/// the entry landed (and sees it in the document) has begun before the tag goes.
pub const WRITE_HOLD: Duration = Duration::from_secs(3 * GC_INTERVAL.as_secs());

/// The ALPNs the stack serves, which the endpoint's access policy restricts.
pub const ALPNS: [&[u8]; 3] = [iroh_docs::ALPN, crate::push::ALPN, iroh_blobs::ALPN];

/// iroh-docs' side of blob protection: made before the node's blob store opens (which takes
/// the callback of [`docs_protection`]) and given to [`DocsStack::spawn_on`].
pub struct DocsProtection(ProtectCallbackHandler);

impl std::fmt::Debug for DocsProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocsProtection")
    }
}

/// iroh-docs' protection, and the collection callback for the node's blob store
/// ([`GcSettings::also`]) that keeps every blob a document references (segments, replaced
/// heartbeats and checkpoints go; see [`WRITE_HOLD`] for the window this leaves).
pub fn docs_protection() -> (DocsProtection, ProtectCb) {
    let (handler, callback) = ProtectCallbackHandler::new();
    (DocsProtection(handler), callback)
}

/// Moves the blob store an earlier version kept under `federation/blobs/` to `to` (the
/// node's store), once: its blobs are the segments and checkpoints the node's documents
/// reference, which peers fetch from it. Does nothing when there is none or `to` exists.
pub fn move_old_blob_store(data_dir: &Path, to: &Path) -> Result<(), FederationError> {
    let old = stack_dir(data_dir).join("blobs");
    if !old.exists() || to.exists() {
        return Ok(());
    }
    std::fs::rename(&old, to).map_err(|e| {
        err("moving the blob store")(&format!("{} to {}: {e}", old.display(), to.display()))
    })?;
    tracing::info!(from = %old.display(), to = %to.display(), "moved the federation blob store to the node's");
    Ok(())
}

/// A node's docs, gossip and blobs.
#[derive(Debug, Clone)]
pub struct DocsStack {
    /// The blob store (segment contents, checkpoints), and whether this stack opened it
    /// (and so serves and closes it).
    store: BlobStore,
    owns_store: bool,
    /// The documents.
    pub docs: Docs,
    /// Reconciliation with peers, and what this node serves.
    pub peers: PeerSync,
    /// Fetches blobs from peers by hash.
    pub downloader: iroh_blobs::api::downloader::Downloader,
    endpoint: Endpoint,
    holds: Arc<Mutex<VecDeque<(Instant, TempTag)>>>,
    /// Fault injection: blobs this node acts as if it lacked and could not download.
    withheld: Arc<Mutex<HashSet<Hash>>>,
}

/// The directory of the stack under a node's data dir.
pub fn stack_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("federation")
}

/// Whether the node's data dir holds federation documents (it was federated once): their
/// blobs are in the node's store, and only a running stack knows which they are.
pub fn has_documents(data_dir: &Path) -> bool {
    stack_dir(data_dir).join("docs").exists()
}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> FederationError + '_ {
    move |e| FederationError::Stack(format!("{what}: {e}"))
}

impl DocsStack {
    /// Opens (creating if needed) the stack under `dir` on `endpoint`, with a blob store of
    /// its own in `dir/blobs`, which it serves and closes.
    pub async fn spawn(endpoint: &Endpoint, dir: &Path) -> Result<DocsStack, FederationError> {
        let (protection, callback) = docs_protection();
        let gc = GcSettings {
            interval: GC_INTERVAL,
            protect: Arc::new(|| Ok(Vec::new())),
            also: Some(callback),
        };
        let store = BlobStore::open(&dir.join("blobs"), Some(gc))
            .await
            .map_err(|e| err("opening the blob store")(&e))?;
        let mut stack = DocsStack::spawn_on(endpoint, dir, store, protection).await?;
        stack.owns_store = true;
        Ok(stack)
    }

    /// Opens (creating if needed) the stack under `dir` on `endpoint`, keeping document
    /// contents in the node's `store`, which was opened with the callback of `protection`
    /// and which the node serves and closes.
    pub async fn spawn_on(
        endpoint: &Endpoint,
        dir: &Path,
        store: BlobStore,
        protection: DocsProtection,
    ) -> Result<DocsStack, FederationError> {
        let docs_dir = dir.join("docs");
        std::fs::create_dir_all(&docs_dir).map_err(|e| {
            err("creating the federation dirs")(&format!("{}: {e}", docs_dir.display()))
        })?;
        let blobs = store.inner();
        // The engine takes a gossip instance; with no gossip handler registered and no
        // document ever joined, it stays idle.
        let gossip = Gossip::builder().spawn(endpoint.clone());
        // One downloader (one connection pool) for iroh-docs and for this crate's fetches.
        let downloader = blobs.downloader(endpoint);
        let replica_store = iroh_docs::store::Store::persistent(docs_dir.join("docs.redb"))
            .map_err(|e| err("opening the docs store")(&format!("{e:#}")))?;
        let engine = Engine::spawn(
            endpoint.clone(),
            gossip,
            replica_store,
            (**blobs).clone(),
            downloader.clone(),
            DefaultAuthorStorage::Persistent(docs_dir.join("default-author")),
            Some(protection.0),
        )
        .await
        .map_err(|e| err("starting iroh-docs")(&format!("{e:#}")))?;
        let peers = PeerSync::new(endpoint.clone(), engine.sync.clone());
        let docs = Docs::new(engine);
        Ok(DocsStack {
            store,
            owns_store: false,
            docs,
            peers,
            downloader,
            endpoint: endpoint.clone(),
            holds: Arc::default(),
            withheld: Arc::default(),
        })
    }

    /// The blob store (segment contents, checkpoints), as iroh-blobs' API.
    pub fn blobs(&self) -> &FsStore {
        self.store.inner()
    }

    /// Whether the blob `hash` is complete here (and not withheld, see
    /// [`DocsStack::withhold`]).
    pub async fn has(&self, hash: Hash) -> Result<bool, FederationError> {
        if self.is_withheld(hash) {
            return Ok(false);
        }
        self.blobs()
            .has(hash)
            .await
            .map_err(|e| err("reading the blob store")(&e))
    }

    /// Fault injection for tests: from now on this node acts as if the blob `hash` were
    /// missing here and no peer could provide it (as when garbage collection removed it
    /// everywhere). Withholding it on every node of both sides drops it from the system.
    pub fn withhold(&self, hash: Hash) {
        self.withheld.lock().expect("withheld lock").insert(hash);
    }

    /// Fault injection for tests: ends [`DocsStack::withhold`] of `hash` on this node.
    pub fn release(&self, hash: Hash) {
        self.withheld.lock().expect("withheld lock").remove(&hash);
    }

    /// Whether `hash` is withheld (see [`DocsStack::withhold`]).
    pub fn is_withheld(&self, hash: Hash) -> bool {
        self.withheld.lock().expect("withheld lock").contains(&hash)
    }

    /// Writes `bytes` as the entry `key` of `doc` by `author`, keeping the blob protected
    /// for [`WRITE_HOLD`] (see the module docs). Returns the blob's hash.
    pub async fn put(
        &self,
        doc: &Doc,
        author: AuthorId,
        key: impl Into<Bytes>,
        bytes: impl Into<Bytes>,
    ) -> Result<Hash, FederationError> {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        let tag = self
            .blobs()
            .add_bytes(bytes)
            .temp_tag()
            .await
            .map_err(|e| err("adding a blob")(&e))?;
        let hash = tag.hash();
        doc.set_hash(author, key, hash, len)
            .await
            .map_err(|e| err("writing an entry")(&e))?;
        self.hold(tag);
        Ok(hash)
    }

    /// Keeps `tag` (a blob just referenced by a document entry) for [`WRITE_HOLD`].
    pub fn hold(&self, tag: TempTag) {
        let now = Instant::now();
        let mut holds = self.holds.lock().expect("blob holds lock");
        while holds
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WRITE_HOLD)
        {
            holds.pop_front();
        }
        holds.push_back((now, tag));
    }

    /// The protocol handlers to register on the node's iroh router, by ALPN: blobs too
    /// when the stack opened its own store (the node serves its store itself).
    pub fn handlers(&self) -> Vec<(&'static [u8], Box<dyn DynProtocolHandler>)> {
        let mut handlers: Vec<(&'static [u8], Box<dyn DynProtocolHandler>)> = vec![
            (iroh_docs::ALPN, Box::new(self.peers.handler())),
            (crate::push::ALPN, Box::new(PushHandler(self.peers.clone()))),
        ];
        if self.owns_store {
            handlers.push((iroh_blobs::ALPN, Box::new(self.store.serve())));
        }
        handlers
    }

    /// Stops iroh-docs, then closes the blob store if the stack opened it; call once the
    /// iroh router is down (iroh-blobs' own handler would close the store with the router
    /// while iroh-docs still uses it: a panic in the store's threads was seen here).
    pub async fn close(&self) {
        iroh::protocol::ProtocolHandler::shutdown(&self.docs).await;
        if self.owns_store {
            self.store.shutdown().await;
        }
    }

    /// The endpoint the stack runs on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn bind(addr: std::net::SocketAddr) -> Result<Endpoint, String> {
        Endpoint::builder(iroh::endpoint::presets::Minimal)
            .relay_mode(iroh::RelayMode::Disabled)
            .clear_ip_transports()
            .bind_addr(addr)
            .map_err(|e| e.to_string())?
            .bind()
            .await
            .map_err(|e| e.to_string())
    }

    /// The store an earlier version kept under `federation/blobs/` becomes the node's,
    /// once; a node that has its store already, or never had the old one, keeps what it has.
    #[test]
    fn an_old_federation_blob_store_becomes_the_nodes() {
        let data = tempfile::tempdir().unwrap();
        let to = aspen_blobs::store_dir(data.path());
        move_old_blob_store(data.path(), &to).unwrap();
        assert!(!to.exists(), "made a store out of nothing");

        let old = stack_dir(data.path()).join("blobs");
        std::fs::create_dir_all(old.join("data")).unwrap();
        std::fs::write(old.join("blobs.db"), b"old store").unwrap();
        move_old_blob_store(data.path(), &to).unwrap();
        assert!(!old.exists());
        assert_eq!(std::fs::read(to.join("blobs.db")).unwrap(), b"old store");
        assert!(to.join("data").is_dir());

        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("blobs.db"), b"another").unwrap();
        move_old_blob_store(data.path(), &to).unwrap();
        assert_eq!(std::fs::read(to.join("blobs.db")).unwrap(), b"old store");
        assert!(old.exists(), "a second old store replaced the node's");
    }

    /// iroh-blobs 0.103's downloader keeps its endpoint (and so its UDP socket) until the
    /// process exits: its connection pool holds a sender to its own actor. This test
    /// documents that upstream behaviour, which `LocalCluster::restart` works around by
    /// moving a restarted node to a new port; it fails once upstream fixes the leak,
    /// which is the signal to drop the workaround.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upstream_a_stopped_stack_keeps_its_endpoints_port_bound() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = endpoint.bound_sockets()[0];
        let stack = DocsStack::spawn(&endpoint, dir.path()).await.unwrap();
        let mut router = iroh::protocol::Router::builder(endpoint.clone());
        for (alpn, handler) in stack.handlers() {
            router = router.accept(alpn, handler);
        }
        let router = router.spawn();
        router.shutdown().await.unwrap();
        stack.close().await;
        drop(stack);
        drop(router);
        drop(endpoint);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(
            bind(addr).await.is_err(),
            "{addr} is free again: iroh-blobs released the endpoint; remove the port move \
             from LocalCluster::restart"
        );
    }
}
