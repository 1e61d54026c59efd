//! Syncing documents with the peers the configuration names, without iroh-docs' live
//! engine: set reconciliation of one document with one peer, started by this crate and
//! bounded in time ([`PeerSync::reconcile`]), and the incoming side of it
//! ([`ReconcileHandler`]). The live updates the engine would get from gossip come from
//! [`crate::push`] instead.
//!
//! Why not the engine (`Doc::start_sync`): in iroh-docs 0.101 the engine's live actor is
//! subscribed to every syncing document's events through a channel of 1,024 events, and it
//! also waits on the storage thread (after every finished sync, and for every sync report
//! gossip brings). The storage thread, in turn, waits for room in that channel when a sync
//! inserts more entries than it holds. A reconciliation that brings more than about a
//! thousand entries while the live actor waits on the storage thread therefore stops both
//! for good, and every later docs call of the node with them. Seen here: after a 60 s
//! partition at 1,000 writes/s, every node of the importing region stopped syncing in 4 of
//! 9 runs. Driving the reconciliation from here subscribes nothing but this crate's own
//! subscribers, which never wait on the storage thread while it may wait on them.
//!
//! Reconciliation costs time in the size of the document (iroh-docs computes each range's
//! fingerprint by reading the range), so it runs when a replica needs it (at start, after a
//! push link is made, while it has a gap or hears nothing, and now and then), never per
//! write.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};
use iroh_docs::actor::{OpenOpts, SyncHandle};
use iroh_docs::net::{AbortReason, AcceptOutcome};
use iroh_docs::NamespaceId;

use crate::FederationError;

/// Longest one reconciliation with one peer may take, connecting included. A document
/// holds at most [`aspen_config::limits::MAX_SEGMENT_SLOTS`] segments plus a few entries,
/// which a reconciliation moves in well under a second on a working link; one that takes
/// longer is on a broken link and is given up (and tried again later).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// A node's reconciliations: the documents it serves to peers, and syncing one with a peer.
#[derive(Debug, Clone)]
pub struct PeerSync {
    endpoint: Endpoint,
    sync: SyncHandle,
    served: Arc<Mutex<HashSet<NamespaceId>>>,
}

/// Renders an error with its sources (iroh-docs' own messages say little: "Failed to sync").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl PeerSync {
    /// Reconciliations over `endpoint` of documents in the store behind `sync`.
    pub fn new(endpoint: Endpoint, sync: SyncHandle) -> PeerSync {
        PeerSync {
            endpoint,
            sync,
            served: Arc::default(),
        }
    }

    /// The endpoint it syncs over.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The store's storage thread.
    pub fn handle(&self) -> &SyncHandle {
        &self.sync
    }

    /// Lets the store reconcile `namespace` (iroh-docs refuses to otherwise, in both
    /// directions). Call once per document, after importing it.
    pub async fn open(&self, namespace: NamespaceId) -> Result<(), FederationError> {
        self.sync
            .open(namespace, OpenOpts::default().sync())
            .await
            .map_err(|e| FederationError::Stack(format!("opening a document for sync: {e:#}")))
    }

    /// Serves `namespace` to peers that ask (reconciliation and push). Only this node's own
    /// cluster's document is served; who may connect at all is the endpoint's access rule.
    pub fn serve(&self, namespace: NamespaceId) {
        self.served.lock().expect("served lock").insert(namespace);
    }

    /// Whether `namespace` is served.
    pub fn serves(&self, namespace: &NamespaceId) -> bool {
        self.served.lock().expect("served lock").contains(namespace)
    }

    /// One reconciliation of `namespace` with `peer`, bounded by `limit` (at most
    /// [`SYNC_TIMEOUT`]). Returns how many entries it brought (0 when iroh-docs lost the
    /// count, see `closed_after_the_end`).
    pub async fn reconcile(
        &self,
        namespace: NamespaceId,
        peer: EndpointAddr,
        limit: Duration,
    ) -> Result<usize, FederationError> {
        let (id, limit) = (peer.id, limit.min(SYNC_TIMEOUT));
        let sync =
            iroh_docs::net::connect_and_sync(&self.endpoint, &self.sync, namespace, peer, None);
        match tokio::time::timeout(limit, sync).await {
            Ok(Ok(finished)) => Ok(finished.outcome.num_recv),
            Ok(Err(e)) if closed_after_the_end(&e) => Ok(0),
            Ok(Err(e)) => Err(FederationError::Stack(format!(
                "syncing with {}: {}",
                id.fmt_short(),
                chain(&e)
            ))),
            Err(_) => Err(FederationError::Stack(format!(
                "syncing with {}: no result within {limit:?}",
                id.fmt_short()
            ))),
        }
    }

    /// Reconciles `namespace` with every peer at once, each bounded by `limit`. Returns the
    /// entries brought and the failures.
    pub async fn reconcile_all(
        &self,
        namespace: NamespaceId,
        peers: &[EndpointAddr],
        limit: Duration,
    ) -> (usize, Vec<String>) {
        let rounds = peers
            .iter()
            .map(|peer| self.reconcile(namespace, peer.clone(), limit));
        let mut received = 0;
        let mut failures = Vec::new();
        for result in futures::future::join_all(rounds).await {
            match result {
                Ok(n) => received += n,
                Err(e) => failures.push(e.to_string()),
            }
        }
        (received, failures)
    }

    /// The handler for incoming reconciliations (iroh-docs' ALPN).
    pub fn handler(&self) -> ReconcileHandler {
        ReconcileHandler(self.clone())
    }
}

/// Whether a reconciliation failed only in its very last step, after both sides finished
/// their streams: iroh-docs 0.101 reads its receiving stream to the end once more after
/// the exchange, which the QUIC streams of iroh 1.x refuse with "closed stream" when the
/// exchange already read that end. Every reconciliation ends so here; the entries were
/// exchanged (and how many is lost with the error).
fn closed_after_the_end(e: &iroh_docs::net::ConnectError) -> bool {
    use iroh::endpoint::{ReadError, ReadToEndError};
    match e {
        iroh_docs::net::ConnectError::Close { error } => matches!(
            error.downcast_ref::<ReadToEndError>(),
            Some(ReadToEndError::Read(ReadError::ClosedStream))
        ),
        _ => false,
    }
}

/// Answers reconciliations of served documents; refuses every other document.
#[derive(Debug, Clone)]
pub struct ReconcileHandler(PeerSync);

impl ProtocolHandler for ReconcileHandler {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = connection.remote_id();
        let served = self.0.clone();
        let accept = move |namespace: NamespaceId, _peer| {
            let allowed = served.serves(&namespace);
            async move {
                if allowed {
                    AcceptOutcome::Allow
                } else {
                    AcceptOutcome::Reject(AbortReason::NotFound)
                }
            }
        };
        let sync = iroh_docs::net::handle_connection(self.0.sync.clone(), connection, accept, None);
        match tokio::time::timeout(SYNC_TIMEOUT, sync).await {
            Ok(Ok(_)) => {}
            // The same last read as `closed_after_the_end`, on this side.
            Ok(Err(iroh_docs::net::AcceptError::Close { .. })) => {}
            Ok(Err(e)) => tracing::debug!(peer = %peer.fmt_short(), "incoming sync: {}", chain(&e)),
            Err(_) => tracing::debug!(
                peer = %peer.fmt_short(),
                "incoming sync: no result within {SYNC_TIMEOUT:?}"
            ),
        }
        Ok(())
    }
}
