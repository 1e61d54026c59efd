//! The language every part of Aspen speaks: commands, results, limits, errors, the JSON
//! shapes of the public HTTP API, the `aspen/kv/2` wire messages, and a Rust HTTP client.
//!
//! This crate depends on no storage crate and on no other part of Aspen but its config
//! types (the serving side reads the `[auth]` and `[tls]` tables), so that the router, the
//! cluster node, the CLI and applications can all share it. The serving side of the HTTP
//! API (axum) is behind the `server` feature, which only the node and the router enable;
//! clients get the types and the HTTP client alone.
//!
//! # Layout
//!
//! - [`admin`]: status and cluster-membership bodies (JSON).
//! - [`blob`]: [`BlobRef`], how a value kept in the blob store is named.
//! - [`codec`]: the versioned binary encoding of every wire and disk format.
//! - [`limits`]: every size and count limit, as named constants.
//! - [`command`]: the write commands (`Set` … `ConditionalSetMulti`) and their validation.
//! - [`types`]: stored entries, key states, write outcomes, reads and scan pages.
//! - [`feed`]: the change feed's records: one [`feed::ChangeSet`] per revision.
//! - [`error`]: the error codes of the HTTP contract and the validation errors.
//! - [`lease`]: lease ids, lease operations and their JSON bodies.
//! - [`json`]: the JSON bodies of the HTTP API and their conversion to commands.
//! - [`headers`]: the names of the HTTP API's response headers (read freshness).
//! - [`wire`]: the `aspen/kv/2` request and response messages and their encoding.
//! - [`value_wire`]: `aspen/value/1`, values kept as blobs streamed to and from a node.
//! - [`watch`]: watch requests, resume tokens and the JSON messages of a watch stream.
//! - `testing` (feature `testing`): proptest strategies for every wire and disk type.
//! - [`client`]: an HTTP client for the API, used by the CLI, the benchmark and tests.
//! - [`tls`]: PEM certificate and key files into rustls configurations.
//! - `server` (feature `server`): the HTTP KV routes over a `KvBackend`, shared by the
//!   node and the router.

pub mod admin;
pub mod blob;
pub mod client;
pub mod codec;
pub mod command;
pub mod error;
pub mod feed;
pub mod headers;
pub mod json;
pub mod lease;
pub mod limits;
#[cfg(feature = "server")]
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod types;
pub mod value_wire;
pub mod watch;
pub mod wire;

pub use blob::BlobRef;
pub use client::{AspenClient, ClientError};
pub use command::{Command, Precondition};
pub use error::{ApiError, ErrorCode, ValidationError};
pub use types::{
    Consistency, KeyState, KvEntry, ReadRequest, ReadResult, ScanPage, WriteOutcome, WriteResult,
};
