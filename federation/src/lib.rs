//! Federation: each cluster replicates what it owns to other regions through iroh-docs,
//! and each region keeps durable, read-only replicas of the clusters it imports, exact at
//! a revision of their owner and never going back in time.
//!
//! # How it works
//!
//! The owner cluster's leader ([`export`]) reads the cluster's change feed in revision
//! order and writes it into the cluster's iroh-docs document as *segments*: runs of
//! consecutive revisions, each one entry whose key says which revisions it holds
//! ([`keys`]). The document holds a bounded ring of segments, plus a *checkpoint* (every
//! key at one revision, as one iroh-blob, built from a consistent read) and a heartbeat
//! (the owner's revision at a time it confirmed with a quorum). The document therefore
//! never grows with history, and a new or far-behind region bootstraps from the
//! checkpoint and the segments after it, never replaying all history.
//!
//! Documents move between nodes in two ways, both started by this crate rather than by
//! iroh-docs' live engine (which can stop for good under a large reconciliation, see
//! [`peersync`]): each owner node pushes every entry that lands in its copy to the
//! importers linked to it ([`push`]), and importers reconcile with the owner nodes when a
//! link is made, while they have a gap or hear nothing, and every ten seconds
//! ([`peersync`]).
//!
//! Entries arrive in no order, twice, or late, so an importer ([`import`])
//! does not apply entries as they come: it keeps an index of the segments it knows of and
//! applies the one that continues its revision, a change set per revision, in order
//! ([`replica`]). It knows when it has a gap (no known segment holds its next revision),
//! asks for a new sync while the gap lasts, and falls back to the checkpoint when the
//! owner's ring has moved past it. The replica is exact at its revision, and its lag is
//! known in revisions and in seconds ([`lag`]).
//!
//! Only the owner can write its document: the write key derives from a secret its nodes
//! share ([`secret`]); other regions hold the document id (read access) and the author id
//! to check entries against. A node serves only its own cluster's document, and its
//! endpoint refuses the docs, push and blob protocols to every endpoint its configuration
//! does not name (`aspen_net::Access`).
//!
//! # Layout
//!
//! - [`keys`]: the document's keys, prefix-free, and the segment ring.
//! - [`format`]: segment, checkpoint and heartbeat encodings.
//! - [`secret`]: the cluster's federation secret and the ids derived from it.
//! - [`stack`]: a node's iroh-docs and blobs on its endpoint.
//! - [`peersync`]: reconciling a document with one peer, and serving that.
//! - [`push`]: live entries from owner nodes to importers (`aspen/docs-push/1`).
//! - [`pull`]: an importer's reconciliations with one owner node.
//! - [`source`]: [`FeedSource`], what the exporter needs from the node.
//! - [`export`]: the owner side: segments, heartbeats, checkpoints.
//! - `follow`: an owner node that does not lead keeps its copy of the document in sync.
//! - [`checkpoint`]: building and loading checkpoints as streams.
//! - [`content`]: fetching an entry's content, locally or from peers.
//! - [`import`]: the replica side: in-order apply, gaps, bootstrap.
//! - [`replica`]: the durable replica store and its reads.
//! - [`ring`]: the segments a document holds, as one node sees them.
//! - [`lag`]: how far behind a replica is.
//! - [`node`]: [`Federation`], one node's exporter and importers, wired from config.

pub mod checkpoint;
pub mod content;
pub mod export;
mod follow;
pub mod format;
pub mod import;
pub mod keys;
pub mod lag;
pub mod node;
pub mod peersync;
pub mod pull;
pub mod push;
pub mod replica;
pub mod ring;
pub mod secret;
pub mod source;
pub mod stack;

pub use node::{DocumentInfo, Federation, FederationSetup, ImportSetup, Replicas};
pub use source::FeedSource;

/// Errors of federation.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The docs, gossip or blob stack failed.
    #[error("iroh-docs: {0}")]
    Stack(String),
    /// The replica store failed.
    #[error("replica store: {0}")]
    Replica(String),
    /// A change set does not follow the replica's revision.
    #[error("replica of {source_cluster} is at revision {have}; got revision {got}, which does not follow it")]
    Gap {
        source_cluster: String,
        have: u64,
        got: u64,
    },
    /// A checkpoint could not be built or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The owner's feed could not be read.
    #[error("change feed: {0}")]
    Feed(String),
    /// The configuration cannot be used.
    #[error("federation config: {0}")]
    Config(String),
    /// A node named as an owner node answered that it does not serve the document: the
    /// importing side's configuration names the wrong nodes or namespace.
    #[error("owner node {node} does not serve document {namespace}")]
    NotServed { node: String, namespace: String },
}
