//! [`RouteError`], the one error type of the route table: a config it cannot be built
//! from, a key no route owns, a set of keys spread over several clusters. Each variant
//! carries the offending value so the HTTP layer can name it in its response.

use aspen_config::ConfigError;

/// Why a key, or a set of keys, cannot be sent to one cluster.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The router config breaks a rule, so no table can be built from it.
    #[error("cannot build the route table: {0}")]
    Config(#[from] ConfigError),
    /// No route's prefix matches the key and the table has no catch-all `""` route (the
    /// config set `allow_unrouted_keys`). Nothing owns the key, so nothing may store it.
    #[error(
        "no route owns key {key:?}: no route's prefix matches it and the route table has no \
         catch-all route (prefix \"\")"
    )]
    NoRoute {
        /// The key that matched no route.
        key: String,
    },
    /// The keys of one multi-key command belong to more than one cluster. There is no
    /// cross-cluster transaction, so the command is refused (HTTP 422 `cross_cluster`)
    /// and nothing is applied.
    #[error(
        "the keys belong to {} clusters ({}); a multi-key command must keep all its keys in \
         one cluster: split it into one command per cluster",
        .clusters.len(),
        .clusters.join(", ")
    )]
    CrossCluster {
        /// Every cluster owning at least one of the keys, sorted by name.
        clusters: Vec<String>,
    },
    /// A set of keys was empty, so no cluster owns them all. Validating a command refuses
    /// empty ones first; this is for callers that skipped that.
    #[error("no keys were given, so there is no cluster to send them to")]
    NoKeys,
}
