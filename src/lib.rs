//! The library half of the `aspen` package: what the CLI and the integration tests share.
//!
//! # Layout
//!
//! - [`topology`]: several federated regions of clusters and routers in one process
//!   (`aspen dev`, tests).

pub mod topology;
