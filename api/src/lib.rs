//! The language every part of Aspen speaks: commands, results, limits, errors, the JSON
//! shapes of the public HTTP API, the `aspen/kv/1` wire messages, and a Rust HTTP client.
//!
//! This crate depends on nothing else of Aspen's and on no transport or storage crate, so
//! that the router, the cluster node, the CLI and applications can all share it.
//!
//! # Layout
//!
//! - [`admin`]: status and cluster-membership bodies.
//! - [`limits`]: every size and count limit, as named constants.
//! - [`command`]: the write commands (`Set` … `ConditionalSetMulti`) and their validation.
//! - [`types`]: stored entries, key states, write outcomes, reads and scan pages.
//! - [`error`]: the error codes of the HTTP contract and the validation errors.
//! - [`json`]: the JSON bodies of the HTTP API and their conversion to commands.
//! - [`wire`]: the `aspen/kv/1` request and response messages and their encoding.
//! - [`client`]: an HTTP client for the API, used by the CLI, the benchmark and tests.

pub mod admin;
pub mod client;
pub mod command;
pub mod error;
pub mod json;
pub mod limits;
pub mod types;
pub mod wire;

pub use client::{AspenClient, ClientError};
pub use command::{Command, Precondition};
pub use error::{ApiError, ErrorCode, ValidationError};
pub use types::{
    Consistency, KeyState, KvEntry, ReadRequest, ReadResult, ScanPage, WriteOutcome, WriteResult,
};
