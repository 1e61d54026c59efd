//! Aspen's router: a stateless proxy in front of many small single-Raft clusters. A global
//! route table maps key prefixes to the cluster that owns them (the longest prefix wins);
//! apps talk to any router as if it were one store, and the router sends each request to
//! the owning cluster.
//!
//! The router holds no data and links no storage: it depends on `aspen-api`, `aspen-config`,
//! `aspen-net` (the iroh transport) and `aspen-kv-client` (its client of each cluster, the
//! same one nodes forward with), never on `aspen-cluster-node`. Refusals that
//! protect the contract happen here: a key no route owns, and a multi-key command whose
//! keys belong to more than one cluster (there is no cross-cluster transaction, by design).
//!
//! # Layout
//!
//! - [`table`]: [`RouteTable`], built from a validated `RouterConfig`: a key's owner, the one
//!   owner of a multi-key command's keys, and which clusters a prefix scan must ask.
//! - [`service`]: [`service::RouterService`], the request logic: route, refuse cross-cluster
//!   commands, fan scans out, report status, reload the table.
//! - [`merge`]: merging scan pages from several clusters, with continuation across them.
//! - [`http`]: the HTTP API (the node's KV routes plus `/v1/routes` and status).
//! - [`metrics`]: Prometheus metrics.
//! - [`run`]: [`RunningRouter`], a started router (endpoint, service, HTTP server).
//! - [`error`]: [`RouteError`], every way routing a key or building the table can fail.

pub mod error;
pub mod http;
pub mod merge;
pub mod metrics;
pub mod run;
pub mod service;
pub mod table;

pub use error::RouteError;
pub use run::RunningRouter;
pub use table::RouteTable;
