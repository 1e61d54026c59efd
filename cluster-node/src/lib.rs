//! One member of an Aspen cluster: openraft consensus carried over iroh QUIC, the log and
//! state machine in SQLite, the KV service that executes commands and reads, and the HTTP
//! API every node serves.
//!
//! # Layout
//!
//! - [`raft_types`]: the openraft type configuration (an entry carries a proposal: one or
//!   more `aspen_api::Command`s).
//! - [`storage`]: SQLite log store with group commit, state machine, snapshots.
//! - [`transport`]: the iroh endpoint, node identity, request/response over QUIC streams,
//!   fault injection (the `aspen-net` crate, shared with the router).
//! - [`raft_network`]: `aspen/raft/2`, openraft's RPCs over the transport, member-only.
//! - [`service`]: executes writes, reads and membership changes; forwards to the leader
//!   through `aspen-kv-client` (the client routers use, so forwarded requests batch too);
//!   `service/batch.rs` serves a router's `aspen/kv/2` batches (shared proposals and reads);
//!   `service/reads.rs` reads the state machine, batching single reads that pile up.
//! - [`proposer`]: group commit: concurrent writes share one log entry.
//! - [`read_index`]: concurrent linearizable reads share one leadership confirmation.
//! - [`batcher`]: the queue-and-batch task both of those are built on.
//! - [`kv_server`]: `aspen/kv/2`, the serving side of forwarded and router requests.
//! - [`admission`]: who may use `aspen/kv/2` (members and the configured `kv_clients`),
//!   the node's blob protocols and the federation protocols, decided when a connection is
//!   made.
//! - [`blob_hold`]: `aspen/blob-hold/1`, asking the other members to hold a blob before a
//!   reference to it is proposed, and serving those asks; [`blob_pull`]: how a member
//!   copies the blob it is asked to hold, straight from the asker's file.
//! - [`value_server`]: `aspen/value/1`, values kept as blobs streamed to and from a
//!   router.
//! - [`blob_repair`]: fetching the blobs this node's values reference and it lacks.
//! - [`replica_blobs`]: fetching the blobs this node's federation replicas reference,
//!   from the clusters they come from.
//! - [`blob_values`]: values above the inline limit: a `PUT` streamed into the blob store
//!   and held on a majority before its reference is written; a `GET ?raw` streamed out.
//! - [`leader_contact`]: when a follower last heard from its leader, for stale reads.
//! - [`http`]: the public HTTP API: `aspen_api::server`'s KV routes over the KV service,
//!   plus status, membership, health and metrics.
//! - [`metrics`]: Prometheus metrics.
//! - [`stages`]: where a write's time goes on a node, one histogram per stage.
//! - [`node`]: wires one node together, in a fixed order; start and shutdown.
//! - [`local_cluster`]: several nodes in one process (`aspen dev`, tests).
//! - [`faults`]: a fault schedule over a local cluster (tests, `aspen soak`).
//! - [`watch`]: watches served from the node's own feed (one shared reader, a bounded
//!   buffer per watcher), and the feed reads a router's watches make.
//! - [`lease`]: the lease clock (when each lease expires, on the leader) and the rules
//!   that keep a leader change from ending a lease early; `service/lease.rs` serves lease
//!   operations and runs the leader's expiry task.
//! - [`federation`]: the node's side of federation: its feed for the exporter, the setup
//!   from config, and the access rules of the docs sync, docs push and blob protocols.

// openraft's `StorageError` is large and its storage traits require it as the error type,
// so results carrying it are large by design; boxing it at every call would only add noise.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod batcher;
pub mod blob_hold;
pub mod blob_pull;
pub mod blob_repair;
pub mod blob_values;
pub mod faults;
pub mod federation;
pub mod handoff;
pub mod http;
pub mod kv_server;
pub mod leader_contact;
pub mod lease;
pub mod local_cluster;
pub mod metrics;
pub mod node;
pub mod proposer;
pub mod raft_network;
pub mod raft_types;
pub mod read_index;
pub mod replica_blobs;
pub mod service;
pub mod stages;
pub mod storage;
#[cfg(test)]
mod strategies;
pub mod transport;
pub mod value_server;
pub mod watch;
