//! One node's federation, wired from its configuration: the docs stack, the exporter of
//! its own cluster (when it has a federation secret), an importer per source cluster, and
//! [`Replicas`], which serves stale reads of those sources with their lag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aspen_api::wire::{ReplicaReadRequest, ReplicaReadResponse, ReplicaReport};
use aspen_api::{ApiError, ErrorCode};
use iroh::{Endpoint, EndpointAddr};
use iroh_docs::{AuthorId, Capability, NamespaceId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::export::{ExportStatus, Exporter};
use crate::import::{ImportState, Importer};
use crate::keys::RingSize;
use crate::pull::SyncFailures;
use crate::replica::ReplicaStore;
use crate::ring::{stack_err, Ring};
use crate::secret::FederationSecret;
use crate::source::FeedSource;
use crate::stack::{stack_dir, DocsStack};
use crate::FederationError;

/// This host's clock, in ms since the Unix epoch.
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one node's federation is made of.
#[derive(Debug, Clone)]
pub struct FederationSetup {
    /// This node's cluster.
    pub cluster: String,
    /// This node's region.
    pub region: String,
    /// The node's data dir (the stack and the replica store live under it).
    pub data_dir: PathBuf,
    /// The cluster's federation secret: present when the cluster exports.
    pub secret: Option<FederationSecret>,
    /// The other members of this node's cluster, which hold the same document.
    pub cluster_peers: Vec<EndpointAddr>,
    /// The clusters of other regions this node keeps replicas of.
    pub imports: Vec<ImportSetup>,
    /// See [`Exporter::checkpoint_replay_bytes`].
    pub checkpoint_replay_bytes: u64,
    /// The document's ring of segment slots when exporting (`[federation] segment_slots`).
    pub segment_slots: u64,
}

/// One source cluster to import.
#[derive(Debug, Clone)]
pub struct ImportSetup {
    /// The source cluster's name.
    pub cluster: String,
    /// Its region.
    pub region: String,
    /// Its document.
    pub namespace: NamespaceId,
    /// The author its entries must carry.
    pub author: AuthorId,
    /// Its nodes.
    pub nodes: Vec<EndpointAddr>,
}

/// One imported source as readers see it: its region and its importer's state.
type SourceEntry = (String, Arc<Mutex<ImportState>>);

/// The replicas one node keeps, for reads and status.
#[derive(Debug)]
pub struct Replicas {
    store: Arc<ReplicaStore>,
    sources: RwLock<BTreeMap<String, SourceEntry>>,
}

impl Replicas {
    /// Opens the replica store of the node whose data dir is `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Arc<Replicas>, FederationError> {
        let dir = stack_dir(data_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| FederationError::Replica(format!("creating {}: {e}", dir.display())))?;
        Ok(Arc::new(Replicas {
            store: Arc::new(ReplicaStore::open(&dir.join("replica.db"))?),
            sources: RwLock::new(BTreeMap::new()),
        }))
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<ReplicaStore> {
        &self.store
    }

    /// Registers `source`, reporting the revision its replica already holds (a restarted
    /// node must not report 0 until its importer's first round).
    fn add(&self, source: &str, region: &str) -> Result<Arc<Mutex<ImportState>>, FederationError> {
        let revision = self.store.state(source)?.map_or(0, |s| s.revision);
        let mut state = ImportState {
            phase: if revision == 0 {
                "bootstrapping"
            } else {
                "resuming"
            },
            ..ImportState::default()
        };
        state.inputs.revision = revision;
        state.inputs.owner_head = revision;
        let state = Arc::new(Mutex::new(state));
        self.sources
            .write()
            .expect("replica sources lock")
            .insert(source.to_string(), (region.to_string(), state.clone()));
        Ok(state)
    }

    /// Serves a stale read of the replica of `request.source`, refusing one that is behind
    /// `min_revision` or may be staler than `max_lag_ms`.
    pub fn read(&self, request: &ReplicaReadRequest) -> Result<ReplicaReadResponse, ApiError> {
        let state = self
            .sources
            .read()
            .expect("replica sources lock")
            .get(&request.source)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ReplicaUnavailable,
                    format!("this node keeps no replica of cluster {}", request.source),
                )
            })?;
        let (result, revision) = self
            .store
            .read(&request.source, &request.request)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let mut inputs = state.lock().expect("import state").inputs;
        // The lag of what was read: the read's revision, not whatever came after.
        if revision < inputs.revision {
            inputs.next_change_ms = None;
        }
        inputs.revision = revision;
        if revision == 0 && inputs.owner_head > 0 {
            return Err(ApiError::new(
                ErrorCode::ReplicaUnavailable,
                format!(
                    "the replica of {} is still bootstrapping (owner at revision {})",
                    request.source, inputs.owner_head
                ),
            ));
        }
        if revision < request.min_revision {
            return Err(ApiError::new(
                ErrorCode::ReplicaBehind,
                format!(
                    "the replica of {} here is at revision {revision}, behind revision {} already read",
                    request.source, request.min_revision
                ),
            ));
        }
        let lag = inputs.lag(unix_time_ms());
        if let Some(max) = request.max_lag_ms {
            if lag.ms.is_none_or(|ms| ms > max) {
                return Err(ApiError::new(
                    ErrorCode::ReplicaBehind,
                    format!(
                        "the replica of {} may be {} stale, more than max_lag ({max} ms); read with consistency=linearizable to ask the owner",
                        request.source,
                        lag.ms.map_or("an unknown time".to_string(), |ms| format!("{ms} ms"))
                    ),
                ));
            }
        }
        Ok(ReplicaReadResponse {
            source: request.source.clone(),
            result,
            revision,
            lag_revisions: lag.revisions,
            lag_ms: lag.ms,
        })
    }

    /// Every replica's state.
    pub fn reports(&self) -> Vec<ReplicaReport> {
        let now = unix_time_ms();
        let sources = self.sources.read().expect("replica sources lock");
        sources
            .iter()
            .map(|(source, (region, state))| {
                let state = state.lock().expect("import state");
                let lag = state.lag(now);
                ReplicaReport {
                    source: source.clone(),
                    region: region.clone(),
                    revision: state.inputs.revision,
                    owner_head: state.inputs.owner_head,
                    lag_revisions: lag.revisions,
                    lag_ms: lag.ms,
                    phase: state.phase.to_string(),
                    checkpoints_loaded: state.checkpoints_loaded,
                    sets_applied: state.sets_applied,
                    error: state.reported_error(),
                }
            })
            .collect()
    }
}

/// How long an exporter or importer may take to stop once asked (it finishes the step it
/// is in: a download, a replica transaction) before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What one node's copy of a federation document holds (for tests and diagnostics).
#[derive(Debug, Clone)]
pub struct DocumentInfo {
    /// Every entry of the document's author, tombstones included.
    pub entries: usize,
    /// Its segments.
    pub ring: Ring,
}

/// One node's running federation.
pub struct Federation {
    stack: DocsStack,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    export: Option<watch::Receiver<ExportStatus>>,
    replicas: Arc<Replicas>,
    /// Every document this node holds (its cluster's, those it imports), by cluster, with
    /// the author its entries carry.
    docs: BTreeMap<String, (iroh_docs::api::Doc, AuthorId)>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("exports", &self.export.is_some())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Starts the stack on `endpoint` with the node's blob `store` (opened with the callback
    /// of `protection`, see [`crate::stack::docs_protection`]), the exporter over `feed` (if
    /// `setup` has a secret) and an importer per source, keeping replicas in `replicas`.
    pub async fn start(
        setup: FederationSetup,
        endpoint: &Endpoint,
        feed: Arc<dyn FeedSource>,
        replicas: Arc<Replicas>,
        store: aspen_blobs::BlobStore,
        protection: crate::stack::DocsProtection,
    ) -> Result<Federation, FederationError> {
        let ring_size = RingSize::new(setup.segment_slots).map_err(FederationError::Config)?;
        let dir = stack_dir(&setup.data_dir);
        let stack = DocsStack::spawn_on(endpoint, &dir, store, protection).await?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut export = None;
        let mut docs = BTreeMap::new();
        if let Some(secret) = &setup.secret {
            stack
                .docs
                .author_import(secret.author())
                .await
                .map_err(stack_err)?;
            let doc = stack
                .docs
                .import_namespace(Capability::Write(secret.namespace()))
                .await
                .map_err(stack_err)?;
            stack.peers.open(doc.id()).await?;
            stack.peers.serve(doc.id());
            docs.insert(setup.cluster.clone(), (doc.clone(), secret.author_id()));
            let (status_tx, status_rx) = watch::channel(ExportStatus::default());
            let exporter = Exporter {
                source: setup.cluster.clone(),
                feed,
                stack: stack.clone(),
                doc,
                author: secret.author_id(),
                peers: setup.cluster_peers.clone(),
                checkpoint_replay_bytes: setup.checkpoint_replay_bytes,
                ring_size,
            };
            tasks.push(tokio::spawn(exporter.run(stopped.clone(), status_tx)));
            export = Some(status_rx);
        }
        for import in &setup.imports {
            replicas
                .store
                .register(&import.cluster, &import.namespace.to_string())?;
            let doc = stack
                .docs
                .import_namespace(Capability::Read(import.namespace))
                .await
                .map_err(stack_err)?;
            // Synced only by its importer, from its owner nodes: never served.
            stack.peers.open(doc.id()).await?;
            docs.insert(import.cluster.clone(), (doc.clone(), import.author));
            let importer = Importer {
                source: import.cluster.clone(),
                stack: stack.clone(),
                doc,
                author: import.author,
                owners: import.nodes.clone(),
                replicas: replicas.store.clone(),
                state: replicas.add(&import.cluster, &import.region)?,
                failures: SyncFailures::new(import.nodes.len()),
            };
            tasks.push(tokio::spawn(importer.run(stopped.clone())));
        }
        Ok(Federation {
            stack,
            stop,
            tasks,
            export,
            replicas,
            docs,
        })
    }

    /// What this node's copy of `cluster`'s document holds (its own cluster's, or one it
    /// imports); `None` if it holds no such document.
    pub async fn document(&self, cluster: &str) -> Result<Option<DocumentInfo>, FederationError> {
        let Some((doc, author)) = self.docs.get(cluster) else {
            return Ok(None);
        };
        let query = iroh_docs::store::Query::author(*author).include_empty();
        let stream = doc.get_many(query).await.map_err(stack_err)?;
        let mut stream = std::pin::pin!(stream);
        let mut entries = 0;
        while let Some(entry) = futures::StreamExt::next(&mut stream).await {
            entry.map_err(stack_err)?;
            entries += 1;
        }
        Ok(Some(DocumentInfo {
            entries,
            ring: Ring::load(doc, *author).await?,
        }))
    }

    /// Fault injection for tests: this node acts from now on as if the blob `hash` were
    /// gone here and from every peer (see [`DocsStack::withhold`]).
    pub fn withhold_blob(&self, hash: iroh_blobs::Hash) {
        self.stack.withhold(hash);
    }

    /// Fault injection for tests: ends [`Federation::withhold_blob`] of `hash` on this node.
    pub fn release_blob(&self, hash: iroh_blobs::Hash) {
        self.stack.release(hash);
    }

    /// The exporter's status, watched, if this node's cluster exports.
    pub fn export_watch(&self) -> Option<watch::Receiver<ExportStatus>> {
        self.export.clone()
    }

    /// The stack's protocol handlers, to register on the node's iroh router.
    pub fn handlers(&self) -> Vec<(&'static [u8], Box<dyn iroh::protocol::DynProtocolHandler>)> {
        self.stack.handlers()
    }

    /// The exporter's status, if this node's cluster exports.
    pub fn export_status(&self) -> Option<ExportStatus> {
        self.export.as_ref().map(|s| s.borrow().clone())
    }

    /// The replicas.
    pub fn replicas(&self) -> &Arc<Replicas> {
        &self.replicas
    }

    /// Stops the exporter and importers. (Gossip stops with the iroh router; call
    /// [`Federation::close_docs`] after it.)
    pub async fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!(
                    "a federation task did not stop within {STOP_GRACE:?} of being asked; \
                     aborting it"
                );
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Stops iroh-docs, once the iroh router is down (and before the node closes its blob
    /// store, which iroh-docs uses).
    pub async fn close_docs(&self) {
        self.stack.close().await;
    }
}
