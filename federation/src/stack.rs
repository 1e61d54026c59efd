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
//! Layout under the node's data dir: `federation/blobs/` (the blob store) and
//! `federation/docs/` (`docs.redb`). The protocol handlers it returns must be registered on
//! the node's one iroh `Router` together with Raft and KV: iroh sets an endpoint's ALPNs to
//! exactly those of its router.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iroh_blobs::api::TempTag;
use iroh_blobs::Hash;
use iroh_docs::api::Doc;
use iroh_docs::AuthorId;

use iroh::protocol::DynProtocolHandler;
use iroh::Endpoint;
use iroh_blobs::store::fs::options::Options;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::GcConfig;
use iroh_blobs::BlobsProtocol;
use iroh_docs::engine::{DefaultAuthorStorage, Engine, ProtectCallbackHandler};
use iroh_docs::protocol::Docs;
use iroh_gossip::net::Gossip;

use crate::peersync::PeerSync;
use crate::push::PushHandler;
use crate::FederationError;

/// How often unreferenced blobs (segments and heartbeats that were replaced, old
/// checkpoints) are collected. Each run walks every document's entries, which are bounded
/// by design (see `keys`), so once a minute costs little.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);

/// How long a blob this node wrote to a document stays protected by its own temporary
/// tag: longer than two collection intervals, so the next collection that starts after
/// the entry landed (and sees it in the document) has begun before the tag goes.
pub const WRITE_HOLD: Duration = Duration::from_secs(3 * GC_INTERVAL.as_secs());

/// The ALPNs the stack serves, which the endpoint's access policy restricts.
pub const ALPNS: [&[u8]; 3] = [iroh_docs::ALPN, crate::push::ALPN, iroh_blobs::ALPN];

/// iroh-blobs' protocol handler without its shutdown (see [`DocsStack::handlers`]).
#[derive(Debug, Clone)]
struct BlobsHandler(BlobsProtocol);

impl iroh::protocol::ProtocolHandler for BlobsHandler {
    async fn accept(
        &self,
        connection: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        iroh::protocol::ProtocolHandler::accept(&self.0, connection).await
    }
}

/// A node's docs, gossip and blobs.
#[derive(Debug, Clone)]
pub struct DocsStack {
    /// The blob store (segment contents, checkpoints).
    pub blobs: FsStore,
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

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> FederationError + '_ {
    move |e| FederationError::Stack(format!("{what}: {e}"))
}

impl DocsStack {
    /// Opens (creating if needed) the stack under `dir` on `endpoint`.
    pub async fn spawn(endpoint: &Endpoint, dir: &Path) -> Result<DocsStack, FederationError> {
        let blobs_dir = dir.join("blobs");
        let docs_dir = dir.join("docs");
        for d in [&blobs_dir, &docs_dir] {
            std::fs::create_dir_all(d).map_err(|e| {
                err("creating the federation dirs")(&format!("{}: {e}", d.display()))
            })?;
        }
        let (protect, protect_cb) = ProtectCallbackHandler::new();
        let mut options = Options::new(&blobs_dir);
        options.gc = Some(GcConfig {
            interval: GC_INTERVAL,
            add_protected: Some(protect_cb),
        });
        let blobs = FsStore::load_with_opts(blobs_dir.join("blobs.db"), options)
            .await
            .map_err(|e| err("opening the blob store")(&e))?;
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
            (*blobs).clone(),
            downloader.clone(),
            DefaultAuthorStorage::Persistent(docs_dir.join("default-author")),
            Some(protect),
        )
        .await
        .map_err(|e| err("starting iroh-docs")(&format!("{e:#}")))?;
        let peers = PeerSync::new(endpoint.clone(), engine.sync.clone());
        let docs = Docs::new(engine);
        Ok(DocsStack {
            blobs,
            docs,
            peers,
            downloader,
            endpoint: endpoint.clone(),
            holds: Arc::default(),
            withheld: Arc::default(),
        })
    }

    /// Whether the blob `hash` is complete here (and not withheld, see
    /// [`DocsStack::withhold`]).
    pub async fn has(&self, hash: Hash) -> Result<bool, FederationError> {
        if self.is_withheld(hash) {
            return Ok(false);
        }
        self.blobs
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
            .blobs
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

    /// The protocol handlers to register on the node's iroh router, by ALPN.
    ///
    /// The iroh router shuts all handlers down at once, and iroh-blobs' handler shuts the
    /// blob store down with it, while iroh-docs may still be using the store (a panic in
    /// the store's threads was seen here). So the blobs handler registered here leaves the
    /// store alone, and [`DocsStack::close`] closes it after the router is down.
    pub fn handlers(&self) -> Vec<(&'static [u8], Box<dyn DynProtocolHandler>)> {
        vec![
            (iroh_docs::ALPN, Box::new(self.peers.handler())),
            (crate::push::ALPN, Box::new(PushHandler(self.peers.clone()))),
            (
                iroh_blobs::ALPN,
                Box::new(BlobsHandler(BlobsProtocol::new(&self.blobs, None))),
            ),
        ]
    }

    /// Stops iroh-docs, then closes the blob store; call once the iroh router is down.
    pub async fn close(&self) {
        iroh::protocol::ProtocolHandler::shutdown(&self.docs).await;
        if let Err(e) = self.blobs.shutdown().await {
            tracing::warn!("closing the blob store: {e}");
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
