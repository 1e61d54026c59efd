//! The integration tests of Aspen, in one test binary: each links iroh, openraft and
//! SQLite, so one binary links once instead of once per file. Each module is one area;
//! run one with `cargo test --test it watch::` (or any test name's part).
//!
//! - `kv_basics`, `kv_wire`, `http_errors`: the KV API over HTTP and `aspen/kv/2`, and
//!   its refusal of bad input at every limit.
//! - `cluster_faults`, `linearizability`, `process_kill`: clusters under leader kills,
//!   restarts and partitions, in one process and as `aspen node` processes, checked by
//!   `aspen-checker`.
//! - `snapshots`: `aspen/snapshot/1` refusing bad snapshots from a member and strangers;
//!   `aspen snapshot save`, `inspect` and `restore` into a new cluster.
//! - `operations`: a dead member replaced with the CLI, and a rolling restart through a
//!   router failing no request, on `aspen node` processes.
//! - `router`, `router_linearizability`, `router_process`: the router in front of
//!   several clusters.
//! - `federation`, `federation_process`, `federation_reads`, `federation_ring`: regions
//!   replicating through iroh-docs; `federation_blobs`: values kept as blobs across
//!   regions; `federation_cli`: `aspen federation keygen` and `info`.
//! - `watch` (with `watch::leases`): the change feed, watches and leases.
//! - `blobs`: each node's blob store, served to its cluster's members only;
//!   `blob_values`: values above the inline limit kept as blobs, through the HTTP API;
//!   `blob_serving`: the bound on uploads at once, and reads across a stopping node.
//! - `auth`, `tls`: bearer tokens and their grants, at a node and through a router; TLS
//!   (mutual) on the HTTP API from the CLI and curl.
//! - `cli`, `dev`: the `aspen` binary as a user runs it; `aspen dev` started, used across
//!   both regions, stopped and resumed.
//! - `fuzz_corpus`: every committed fuzz input through its target's body (`aspen-fuzz`).
//! - `support`: starting clusters, polling with a deadline, child processes.

mod support;

mod auth;
mod blob_serving;
mod blob_values;
mod blobs;
mod cli;
mod cluster_faults;
mod dev;
mod federation;
mod federation_blobs;
mod federation_cli;
mod federation_process;
mod federation_reads;
mod federation_ring;
mod fuzz_corpus;
mod http_errors;
mod kv_basics;
mod kv_wire;
mod linearizability;
mod operations;
mod process_kill;
mod router;
mod router_linearizability;
mod router_process;
mod snapshots;
mod tls;
mod watch;
