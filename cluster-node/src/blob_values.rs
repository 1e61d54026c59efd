//! Values kept as blobs, through a node's HTTP API.
//!
//! A `PUT` above the inline limit streams into this node's blob store (never whole in
//! memory), is made durable here, is held by a majority of the cluster's voters
//! ([`crate::blob_hold`]), and only then is its reference proposed
//! ([`Command::SetBlob`]): a committed reference always has its blob on a majority, so
//! losing the node that took the `PUT` loses nothing. The blob stays in
//! [`Pending`] for its grace period after the write, so the collector keeps it until its
//! reference is in the state machine it reads (and an abandoned write's blob is collected
//! once the grace ends).
//!
//! At most [`MAX_PUTS_IN_FLIGHT`] puts run at once on a node, and a body that stops
//! coming for [`VALUE_STALL_TIMEOUT`] ends its put with nothing written.
//!
//! A `GET ?raw` of a blob streams it from this node's store, fetching it first from the
//! other members when this node lacks it (a member that was down or lagging when the
//! blob was held).

use std::sync::Arc;
use std::time::Instant;

use aspen_api::json::with_leases;
use aspen_api::server::{stall_bounded, BlobPut, ValueStream, VALUE_STALL_TIMEOUT};
use aspen_api::{ApiError, BlobRef, Command, ErrorCode, WriteResult};
use aspen_blobs::{BlobError, BlobStore, Hash, Pending, MAX_BLOB_BYTES};
use futures::StreamExt;

use crate::blob_hold::{hold_on_majority, hold_time};
use crate::service::KvService;
use crate::stages::{Stage, Stages};
use crate::transport::Transport;

/// Most values one node takes as blobs at once, over HTTP and `aspen/value/1` together:
/// each holds a temporary file, a write buffer and, once stored, its majority copy; past
/// the limit a put is refused at once (503 `overloaded`, nothing written) rather than
/// queued with its body unread. More at once would not write faster to one disk.
pub const MAX_PUTS_IN_FLIGHT: usize = 16;

/// The upload slots of one node ([`MAX_PUTS_IN_FLIGHT`]); clones share them.
#[derive(Clone, Debug)]
pub struct PutSlots(Arc<tokio::sync::Semaphore>);

impl Default for PutSlots {
    fn default() -> Self {
        PutSlots(Arc::new(tokio::sync::Semaphore::new(MAX_PUTS_IN_FLIGHT)))
    }
}

impl PutSlots {
    /// Puts running now.
    pub fn in_flight(&self) -> usize {
        MAX_PUTS_IN_FLIGHT - self.0.available_permits()
    }

    fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "this node is taking {MAX_PUTS_IN_FLIGHT} values as blobs already (the \
                     most it takes at once); nothing was written, retry shortly"
                ),
            )
        })
    }
}

/// What a node needs to write and read values kept as blobs.
#[derive(Clone)]
pub struct BlobValues {
    /// The node's store.
    pub store: BlobStore,
    /// Blobs kept until a reference protects them.
    pub pending: Pending,
    /// To ask the other members to hold a blob, and to fetch one.
    pub transport: Arc<Transport>,
    /// This node.
    pub node_id: u64,
    /// Proposes the reference; knows the members.
    pub service: Arc<KvService>,
    /// The nodes of every cluster this node imports through federation: where the blobs
    /// its replicas reference come from (see [`crate::replica_blobs`]).
    pub sources: Arc<Vec<iroh::EndpointAddr>>,
    /// The puts running now, at most [`MAX_PUTS_IN_FLIGHT`].
    pub puts: PutSlots,
    /// Where a put's time goes (`blob_import`, `blob_hold`).
    pub stages: Stages,
}

impl BlobValues {
    /// Stores `put`'s body as a blob, has a majority hold it, then writes its reference.
    pub async fn put(&self, put: BlobPut) -> Result<WriteResult, ApiError> {
        let BlobPut {
            key, lease, body, ..
        } = put;
        aspen_api::command::validate_key(&key)?;
        let _slot = self.puts.take()?;
        let body = stall_bounded(body, VALUE_STALL_TIMEOUT, "the value's body");
        let started = Instant::now();
        let held = self
            .store
            .import(body, MAX_BLOB_BYTES)
            .await
            .map_err(import_error)?;
        self.stages.observe(Stage::BlobImport, started.elapsed());
        let blob = BlobRef::from(held.blob());
        let members = self.service.members();
        let started = Instant::now();
        hold_on_majority(&self.transport, self.node_id, &members, &held)
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::ClusterUnavailable,
                    format!(
                        "the value for {key:?} was not stored: {e}; nothing was written, retry \
                         once the cluster's members are up"
                    ),
                )
            })?;
        self.stages.observe(Stage::BlobHold, started.elapsed());
        let leases = lease.map(|l| vec![(key.clone(), l)]).unwrap_or_default();
        let command = with_leases(
            Command::SetBlob {
                key,
                blob,
                preconditions: vec![],
            },
            leases,
        )?;
        let result = self.service.write(command).await;
        // Kept past the commit: the collector lets a blob go only on a run that began
        // after its reference was applied here.
        self.pending.keep(held);
        result
    }

    /// Streams bytes `start..start + len` of `blob`, fetching it first when this node does
    /// not hold it whole: from the other members, then from the clusters it imports (the
    /// blob of a replicated value).
    pub async fn read(&self, blob: BlobRef, start: u64, len: u64) -> Result<ValueStream, ApiError> {
        let hash = Hash::from_bytes(blob.hash);
        self.ensure_from(blob, &self.sources)
            .await
            .map_err(|e| match e {
                BlobError::Fetch { .. } => ApiError::new(
                    ErrorCode::ClusterUnavailable,
                    format!("this node lacks blob {blob} and could not fetch it: {e}"),
                ),
                other => store_error(other),
            })?;
        Ok(self
            .store
            .read_range(hash, start, len)
            .map(|chunk| chunk.map_err(|e| e.to_string()))
            .boxed())
    }

    /// Makes sure this node holds `blob` whole and durably, fetching it from the other
    /// members when it does not.
    pub async fn ensure(&self, blob: BlobRef) -> Result<(), BlobError> {
        self.ensure_from(blob, &[]).await
    }

    /// [`BlobValues::ensure`], asking `also` after the other members.
    pub async fn ensure_from(
        &self,
        blob: BlobRef,
        also: &[iroh::EndpointAddr],
    ) -> Result<(), BlobError> {
        let hash = Hash::from_bytes(blob.hash);
        if self.store.complete_size(hash).await? == Some(blob.size) {
            return Ok(());
        }
        let mut providers = self.providers();
        providers.extend(also.iter().cloned());
        let held = self
            .store
            .fetch(
                self.transport.endpoint(),
                blob.into(),
                &providers,
                hold_time(blob.size),
            )
            .await?;
        self.pending.keep(held);
        Ok(())
    }

    /// The other members, to fetch a blob from.
    fn providers(&self) -> Vec<iroh::EndpointAddr> {
        self.service
            .members()
            .into_iter()
            .filter(|m| m.node_id != self.node_id)
            .filter_map(|m| {
                let id: iroh::EndpointId = m.endpoint_id.parse().ok()?;
                let known = self.transport.resolve(id, &m.addrs);
                Some(
                    iroh::EndpointAddr::new(id)
                        .with_addrs(known.addrs.iter().map(|a| iroh::TransportAddr::Ip(*a))),
                )
            })
            .collect()
    }
}

/// The API error of a failed import: over the limit (413), a body that broke off (400), or
/// the store or disk (500).
fn import_error(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge { limit } => ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the value is over the limit of {limit} bytes for one value; nothing was written"
            ),
        ),
        BlobError::Body(reason) => ApiError::new(
            ErrorCode::BadRequest,
            format!("{reason}; nothing was written"),
        ),
        other => ApiError::new(
            ErrorCode::Internal,
            format!("{other}; nothing was written (check the disk of the node's data dir)"),
        ),
    }
}

fn store_error(e: BlobError) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("{e} (check the disk of the node's data dir)"),
    )
}
