//! Aspen's configuration files: the TOML schemas, loading them from disk, and validating
//! them with errors that name the field, the bad value and what to do about it.
//!
//! A config is plain data: this crate opens no socket and starts nothing. Callers load a
//! file with [`NodeConfig::load`] or [`RouterConfig::load`] (read, parse, validate in one
//! step) or build one in code with [`NodeConfig::dev`] or [`RouterConfig::dev`] and check
//! it with [`NodeConfig::validate`] or [`RouterConfig::validate`]. Unknown fields are
//! refused everywhere, so a misspelled setting is an error rather than a silent default.
//!
//! Commented examples live in `config/examples/`; a unit test loads every one of them.
//!
//! # Layout
//!
//! - [`node`]: [`NodeConfig`], one cluster member's file, with its `[raft]` and `[[peers]]` parts.
//! - [`router`]: [`RouterConfig`], one router's file: its `[[clusters]]` and the `[[routes]]`
//!   table mapping key prefixes to them.
//! - [`limits`]: the bounds validation enforces, as named constants.
//! - [`error`]: [`ConfigError`], every way loading or validating a config can fail.
//! - `name` (private): the naming rule shared by cluster and region names.

pub mod auth;
pub mod error;
mod file;
pub mod limits;
mod name;
pub mod node;
pub mod router;
pub mod tls;

pub use auth::{AuthConfig, TokenConfig, DEFAULT_OPEN_PATHS};
pub use error::{ConfigError, INLINE_CONFIG_PATH};
pub use limits::{
    MAX_AUTH_TOKENS, MAX_CLUSTER_NAME_LEN, MAX_CLUSTER_NODES, MAX_CLUSTER_PEERS,
    MAX_ELECTION_TIMEOUT_MS, MAX_GRANTS_PER_TOKEN, MAX_IN_FLIGHT_PER_CLUSTER_LIMIT, MAX_KV_CLIENTS,
    MAX_PAYLOAD_ENTRIES_LIMIT, MAX_PEER_ADDRS, MAX_REQUEST_DEADLINE_MS, MAX_ROUTER_CLUSTERS,
    MAX_ROUTES, MAX_ROUTE_PREFIX_BYTES, MIN_HEARTBEAT_INTERVAL_MS, MIN_REQUEST_DEADLINE_MS,
};
pub use node::{
    BlobsConfig, ExportConfig, FederationConfig, FeedConfig, ImportConfig, NodeConfig, PeerConfig,
    RaftConfig, RelayModeConfig, RemoteNodeConfig, DEFAULT_CLUSTER_NAME, DEFAULT_HTTP_ADDR,
    DEFAULT_IROH_BIND_ADDR,
};
pub use router::{
    ClusterConfig, RouteConfig, RouterConfig, RouterFederationConfig,
    DEFAULT_MAX_IN_FLIGHT_PER_CLUSTER, DEFAULT_REQUEST_DEADLINE_MS,
};
pub use tls::TlsConfig;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Every file in `config/examples/` must load and validate, so the examples users copy
    /// never drift from the schema. The file name says which schema it follows.
    #[test]
    fn every_example_file_loads_and_validates() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("config/examples exists") {
            let path = entry.expect("readable dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("node") && name.ends_with(".toml") {
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            } else if name.starts_with("router") && name.ends_with(".toml") {
                RouterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            } else {
                panic!(
                    "{}: no schema known for this example; add one here",
                    path.display()
                );
            }
            checked += 1;
        }
        assert!(
            checked >= 2,
            "expected node and router examples in {}",
            dir.display()
        );
    }
}
