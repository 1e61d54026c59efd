//! `config`: the bytes as a node's and as a router's TOML config, loaded and validated by
//! `NodeConfig::from_toml_str` and `RouterConfig::from_toml_str`, the path `load` takes
//! for a file's text.
//!
//! What either accepts must be usable: within every documented limit, valid again when
//! validated in memory, the same after printing it as TOML and loading that, and fit for
//! what a process derives from it at start (openraft's configuration and the lease TTL
//! floor for a node, the route table for a router, the token policy for both).

use std::path::Path;

use aspen_api::lease::min_lease_ttl_secs;
use aspen_api::server::auth::Policy;
use aspen_config::limits::{
    MAX_AUTH_TOKENS, MAX_CLUSTER_NAME_LEN, MAX_CLUSTER_NODES, MAX_CLUSTER_PEERS, MAX_KV_CLIENTS,
    MAX_PAYLOAD_ENTRIES_LIMIT, MAX_PEER_ADDRS, MAX_REQUEST_DEADLINE_MS, MAX_ROUTER_CLUSTERS,
    MAX_ROUTES, MAX_ROUTE_PREFIX_BYTES, MIN_HEARTBEAT_INTERVAL_MS, MIN_REQUEST_DEADLINE_MS,
};
use aspen_config::{AuthConfig, NodeConfig, RouterConfig, MAX_IN_FLIGHT_PER_CLUSTER_LIMIT};

/// The name errors report for the fuzzed text.
const FILE: &str = "fuzz.toml";

/// The fuzz body: the input as node config and as router config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(node) = NodeConfig::from_toml_str(text, Path::new(FILE)) {
        check_node(&node);
    }
    if let Ok(router) = RouterConfig::from_toml_str(text, Path::new(FILE)) {
        check_router(&router);
    }
}

fn check_node(node: &NodeConfig) {
    node.validate().expect("a loaded config validates");
    assert!(node.node_id >= 1);
    assert!((1..=MAX_CLUSTER_NAME_LEN).contains(&node.cluster.len()));
    assert!(node.peers.len() <= MAX_CLUSTER_PEERS);
    for peer in &node.peers {
        assert!((1..=MAX_PEER_ADDRS).contains(&peer.addrs.len()));
        assert_ne!(peer.node_id, node.node_id);
    }
    assert!(node.kv_clients.len() <= MAX_KV_CLIENTS);
    let raft = &node.raft;
    assert!(raft.heartbeat_interval_ms >= MIN_HEARTBEAT_INTERVAL_MS);
    assert!(raft.max_payload_entries <= MAX_PAYLOAD_ENTRIES_LIMIT);
    assert!(raft.election_timeout_min_ms < raft.election_timeout_max_ms);
    aspen_cluster_node::node::openraft_config(node)
        .unwrap_or_else(|e| panic!("accepted, yet openraft refuses it: {e}"));
    // The shortest lease a node grants derives from its election timeout.
    let _ = min_lease_ttl_secs(raft.election_timeout_max_ms);
    check_auth(node.auth.as_ref());
    let printed = toml::to_string(node).expect("a config prints as TOML");
    let back = NodeConfig::from_toml_str(&printed, Path::new(FILE))
        .unwrap_or_else(|e| panic!("a printed config loads again: {e}\n{printed}"));
    assert_eq!(&back, node, "printed and loaded again:\n{printed}");
}

fn check_router(router: &RouterConfig) {
    router.validate().expect("a loaded config validates");
    assert!(router.clusters.len() <= MAX_ROUTER_CLUSTERS);
    for cluster in &router.clusters {
        assert!(cluster.nodes.len() <= MAX_CLUSTER_NODES);
        assert!((1..=MAX_CLUSTER_NAME_LEN).contains(&cluster.name.len()));
    }
    assert!(router.routes.len() <= MAX_ROUTES);
    assert!(router
        .routes
        .iter()
        .all(|r| r.prefix.len() <= MAX_ROUTE_PREFIX_BYTES));
    assert!(
        (MIN_REQUEST_DEADLINE_MS..=MAX_REQUEST_DEADLINE_MS).contains(&router.request_deadline_ms)
    );
    assert!((1..=MAX_IN_FLIGHT_PER_CLUSTER_LIMIT).contains(&router.max_in_flight_per_cluster));
    aspen_router::table::RouteTable::new(router)
        .unwrap_or_else(|e| panic!("accepted, yet no route table: {e}"));
    check_auth(router.auth.as_ref());
    let printed = toml::to_string(router).expect("a config prints as TOML");
    let back = RouterConfig::from_toml_str(&printed, Path::new(FILE))
        .unwrap_or_else(|e| panic!("a printed config loads again: {e}\n{printed}"));
    assert_eq!(&back, router, "printed and loaded again:\n{printed}");
}

fn check_auth(auth: Option<&AuthConfig>) {
    let Some(auth) = auth else {
        return;
    };
    assert!((1..=MAX_AUTH_TOKENS).contains(&auth.tokens.len()));
    let policy = Policy::from_config(auth);
    assert_eq!(policy.tokens.len(), auth.tokens.len());
}
