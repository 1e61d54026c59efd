//! One cluster member's config file: who the node is ([`NodeConfig::node_id`], its
//! cluster), where it keeps data, where it listens, how it runs Raft ([`RaftConfig`]) and
//! which other members it talks to ([`PeerConfig`]). [`NodeConfig::load`] reads, parses
//! and validates a file; `config/examples/node.toml` is a commented example.

mod blobs;
mod federation;
mod feed;
mod peer;
mod raft;

pub use blobs::BlobsConfig;
pub use federation::{ExportConfig, FederationConfig, ImportConfig, RemoteNodeConfig};
pub use feed::FeedConfig;
pub use peer::PeerConfig;
pub use raft::RaftConfig;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::error::{ConfigError, FieldError};
use crate::file;
use crate::limits::{MAX_CLUSTER_PEERS, MAX_KV_CLIENTS};
use crate::name::check_name;
use crate::tls::TlsConfig;
use peer::check_endpoint_id;

/// Cluster name used when the file names none: a single local cluster.
pub const DEFAULT_CLUSTER_NAME: &str = "local";

/// Default address of the node's HTTP API: loopback only, the port the public contract
/// documents. Listening on other interfaces is an explicit choice.
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070));

/// Default UDP address of the node's iroh endpoint: loopback, any free port. Fine for
/// tests and one-off runs; a real cluster needs a fixed port (see
/// [`NodeConfig::iroh_bind_addr`]).
pub const DEFAULT_IROH_BIND_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// The configuration of one cluster member, as read from its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's Raft node id, unique in its cluster and never reused; must be >= 1.
    pub node_id: u64,
    /// Name of the cluster this node belongs to: 1 to 64 characters of `[a-z0-9-]`, such
    /// as `us-1`. Routes and federation refer to clusters by this name.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Directory holding the Raft log, the state machine, blobs and the node's iroh secret
    /// key (its identity). Required: losing it means the node is a new, empty member.
    pub data_dir: PathBuf,
    /// TCP address of the HTTP API for apps and operators.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// UDP address the node's iroh endpoint binds; peers and routers dial it. Port 0 picks
    /// any free port, which changes on every restart so peers listing the old address
    /// cannot find the node: production configs should set a fixed port.
    #[serde(default = "default_iroh_bind_addr")]
    pub iroh_bind_addr: SocketAddr,
    /// Whether the iroh endpoint uses relay servers to reach peers behind NAT.
    #[serde(default)]
    pub relay: RelayModeConfig,
    /// Raft timing, snapshot and replication batch settings (`[raft]`).
    #[serde(default)]
    pub raft: RaftConfig,
    /// Change feed retention (`[feed]`).
    #[serde(default)]
    pub feed: FeedConfig,
    /// The blob store (`[blobs]`).
    #[serde(default)]
    pub blobs: BlobsConfig,
    /// Federation with other regions (`[federation]`); absent: this cluster neither
    /// exports nor imports.
    #[serde(default)]
    pub federation: Option<FederationConfig>,
    /// Who may use the HTTP API (`[auth]`); absent: everyone who reaches it.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS of the HTTP API (`[tls]`); absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The other members, or would-be members, of the cluster (`[[peers]]`): how to
    /// reach them and which iroh identity to accept Raft RPCs from. Excludes this node.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Iroh endpoint ids allowed to use the KV protocol (`aspen/kv/2`) besides the
    /// cluster's members: the routers of every region that route to this cluster or read
    /// its replicas, and tools. Any other endpoint is refused when it connects, and
    /// counted in `aspen_connections_refused{alpn="aspen/kv/2"}`. Each is 64 lowercase hex
    /// characters: a router logs its id at start, and `aspen keygen` prints the id of the
    /// key it writes. At most [`MAX_KV_CLIENTS`].
    #[serde(default)]
    pub kv_clients: Vec<String>,
    /// Testing only: serve `POST /v1/debug/partition`, which cuts this node off from chosen
    /// peers at its iroh transport (fault injection for tests of separate processes).
    /// Never enable it in production: anyone who reaches the HTTP port could isolate the
    /// node. Default false.
    #[serde(default)]
    pub fault_injection: bool,
}

/// Relay use of the node's iroh endpoint. Written in lowercase in TOML.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayModeConfig {
    /// No relays: peers are reached only at the direct addresses in `[[peers]]`. Works
    /// offline; the right choice for tests, dev and clusters on one network.
    #[default]
    Disabled,
    /// n0's public relay servers, for members that cannot reach each other directly.
    Default,
}

fn default_cluster() -> String {
    DEFAULT_CLUSTER_NAME.to_string()
}

fn default_http_addr() -> SocketAddr {
    DEFAULT_HTTP_ADDR
}

fn default_iroh_bind_addr() -> SocketAddr {
    DEFAULT_IROH_BIND_ADDR
}

impl NodeConfig {
    /// A config for the embedded dev mode: the given identity and data directory, every
    /// other field at its default (no peers, relays disabled). Not validated; call
    /// [`NodeConfig::validate`] after changing fields.
    pub fn dev(node_id: u64, cluster: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            cluster: cluster.into(),
            data_dir: data_dir.into(),
            http_addr: DEFAULT_HTTP_ADDR,
            iroh_bind_addr: DEFAULT_IROH_BIND_ADDR,
            relay: RelayModeConfig::default(),
            raft: RaftConfig::default(),
            feed: FeedConfig::default(),
            blobs: BlobsConfig::default(),
            federation: None,
            auth: None,
            tls: None,
            peers: Vec::new(),
            kv_clients: Vec::new(),
            fault_injection: false,
        }
    }

    /// Reads, parses and validates the config file at `path`. Errors name `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        file::load(path)
    }

    /// Parses and validates TOML `text`, as [`NodeConfig::load`] does for a file's
    /// contents. `path_for_errors` is the name errors report (pass
    /// [`INLINE_CONFIG_PATH`](crate::INLINE_CONFIG_PATH) for text that came from no file).
    pub fn from_toml_str(text: &str, path_for_errors: &Path) -> Result<Self, ConfigError> {
        file::parse(text, path_for_errors)
    }

    /// Checks every rule a loaded file is checked against. Errors report the path
    /// [`INLINE_CONFIG_PATH`](crate::INLINE_CONFIG_PATH), since this config need not come
    /// from a file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        file::validate(self)
    }

    /// All rules, first failure wins, in the order the fields appear in a file.
    fn check(&self) -> Result<(), FieldError> {
        if self.node_id == 0 {
            return Err(FieldError::new(
                "node_id",
                "is 0; Raft node ids start at 1: give each member of the cluster its own id >= 1",
            ));
        }
        check_name("cluster", "cluster", "us-1", &self.cluster)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(FieldError::new(
                "data_dir",
                "is empty; set the directory where this node keeps its Raft log, data and identity",
            ));
        }
        self.raft.check().map_err(|e| e.under("raft"))?;
        self.feed.check().map_err(|e| e.under("feed"))?;
        self.blobs.check().map_err(|e| e.under("blobs"))?;
        if let Some(federation) = &self.federation {
            federation
                .check(&self.cluster)
                .map_err(|e| e.under("federation"))?;
        }
        if let Some(auth) = &self.auth {
            auth.check().map_err(|e| e.under("auth"))?;
        }
        if let Some(tls) = &self.tls {
            tls.check().map_err(|e| e.under("tls"))?;
        }
        self.check_peers()?;
        self.check_kv_clients()
    }

    /// Each id well formed, none twice, at most [`MAX_KV_CLIENTS`].
    fn check_kv_clients(&self) -> Result<(), FieldError> {
        if self.kv_clients.len() > MAX_KV_CLIENTS {
            return Err(FieldError::new(
                "kv_clients",
                format!(
                    "lists {} endpoint ids, at most {MAX_KV_CLIENTS} are allowed; give the \
                     routers and tools that talk to many clusters one identity each, not one \
                     per process",
                    self.kv_clients.len()
                ),
            ));
        }
        for (i, id) in self.kv_clients.iter().enumerate() {
            let at = format!("kv_clients[{i}]");
            check_endpoint_id(id).map_err(|e| FieldError::new(&at, e.reason))?;
            if let Some(first) = self.kv_clients[..i].iter().position(|other| other == id) {
                return Err(FieldError::new(
                    at,
                    format!("\"{id}\" is also kv_clients[{first}]; list each endpoint id once"),
                ));
            }
        }
        Ok(())
    }

    /// Each peer on its own, then the list as a whole: size, no duplicates, not this node.
    fn check_peers(&self) -> Result<(), FieldError> {
        if self.peers.len() > MAX_CLUSTER_PEERS {
            return Err(FieldError::new(
                "peers",
                format!(
                    "lists {} peers, at most {MAX_CLUSTER_PEERS} are allowed (a cluster has at \
                     most {} members including this node); split the cluster into smaller ones",
                    self.peers.len(),
                    MAX_CLUSTER_PEERS + 1,
                ),
            ));
        }
        let mut seen_ids: HashMap<u64, usize> = HashMap::new();
        let mut seen_endpoints: HashMap<&str, usize> = HashMap::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let at = format!("peers[{i}]");
            peer.check().map_err(|e| e.under(&at))?;
            if peer.node_id == self.node_id {
                return Err(FieldError::new(
                    format!("{at}.node_id"),
                    format!(
                        "is {}, this node's own node_id; list only the other members in [[peers]]",
                        peer.node_id
                    ),
                ));
            }
            if let Some(first) = seen_ids.insert(peer.node_id, i) {
                return Err(FieldError::new(
                    format!("{at}.node_id"),
                    format!(
                        "{} is also the node id of peers[{first}]; each member needs its own id",
                        peer.node_id
                    ),
                ));
            }
            if let Some(first) = seen_endpoints.insert(peer.endpoint_id.as_str(), i) {
                return Err(FieldError::new(
                    format!("{at}.endpoint_id"),
                    format!(
                        "\"{}\" is also the endpoint id of peers[{first}]; each member has its \
                         own iroh identity, so list each peer once",
                        peer.endpoint_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl file::Rules for NodeConfig {
    fn check(&self) -> Result<(), FieldError> {
        NodeConfig::check(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::limits::MAX_CLUSTER_NAME_LEN;

    /// A valid peer numbered `n`: node id `n`, a distinct valid endpoint id, one address.
    pub(crate) fn peer(n: u64) -> PeerConfig {
        PeerConfig {
            node_id: n,
            endpoint_id: format!("{n:064x}"),
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 7400 + n as u16))],
        }
    }

    /// Node 1 of cluster "us-1" with peers 2 and 3: valid.
    pub(crate) fn three_node_config() -> NodeConfig {
        let mut config = NodeConfig::dev(1, "us-1", "/var/lib/aspen");
        config.peers = vec![peer(2), peer(3)];
        config
    }

    /// The field named by an `Invalid` error; panics on any other outcome.
    pub(crate) fn invalid_field(result: Result<(), ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_toml_str(text, Path::new("test.toml"))
    }

    fn parse_message(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Parse { message, .. }) => message,
            other => panic!("expected a Parse error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_with_node_id_and_data_dir_gets_all_defaults() {
        let config = parse("node_id = 7\ndata_dir = \"/data\"\n").unwrap();
        assert_eq!(config, NodeConfig::dev(7, DEFAULT_CLUSTER_NAME, "/data"));
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:7070");
        assert_eq!(config.iroh_bind_addr.to_string(), "127.0.0.1:0");
        assert_eq!(config.relay, RelayModeConfig::Disabled);
        assert_eq!(config.raft, RaftConfig::default());
        assert!(config.peers.is_empty());
    }

    #[test]
    fn full_file_parses_every_field() {
        let config = parse(
            r#"
            node_id = 1
            cluster = "eu-1"
            data_dir = "/d"
            http_addr = "0.0.0.0:8080"
            iroh_bind_addr = "0.0.0.0:7401"
            relay = "default"
            [raft]
            heartbeat_interval_ms = 50
            [[peers]]
            node_id = 2
            endpoint_id = "00000000000000000000000000000000000000000000000000000000000000ab"
            addrs = ["10.0.0.2:7401", "[::1]:7401"]
            "#,
        )
        .unwrap();
        assert_eq!(config.cluster, "eu-1");
        assert_eq!(config.relay, RelayModeConfig::Default);
        assert_eq!(config.raft.heartbeat_interval_ms, 50);
        assert_eq!(
            config.raft.election_timeout_min_ms,
            RaftConfig::default().election_timeout_min_ms
        );
        assert_eq!(config.peers[0].addrs.len(), 2);
    }

    #[test]
    fn config_survives_a_toml_round_trip() {
        let config = three_node_config();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(parse(&text).unwrap(), config);
    }

    #[test]
    fn unknown_top_level_field_is_refused_by_name() {
        let message = parse_message("node_id = 1\ndata_dir = \"/d\"\nhttp_adr = \"1.2.3.4:1\"\n");
        assert!(message.contains("unknown field `http_adr`"), "{message}");
    }

    #[test]
    fn unknown_raft_field_is_refused_by_name() {
        let message = parse_message("node_id = 1\ndata_dir = \"/d\"\n[raft]\nheartbeat_ms = 5\n");
        assert!(
            message.contains("unknown field `heartbeat_ms`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_peer_field_is_refused_by_name() {
        let message = parse_message(
            "node_id = 1\ndata_dir = \"/d\"\n[[peers]]\nnode_id = 2\naddrs = []\nweight = 3\n",
        );
        assert!(message.contains("unknown field `weight`"), "{message}");
    }

    #[test]
    fn unknown_relay_mode_is_refused() {
        let message = parse_message("node_id = 1\ndata_dir = \"/d\"\nrelay = \"custom\"\n");
        assert!(message.contains("custom"), "{message}");
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = NodeConfig::load(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Io { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn syntax_error_is_a_parse_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "node_id = = 1\n").unwrap();
        let err = NodeConfig::load(&path).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("broken.toml"), "{err}");
    }

    #[test]
    fn invalid_file_error_names_path_field_and_value() {
        let err = parse("node_id = 1\ndata_dir = \"/d\"\ncluster = \"US\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("invalid config test.toml: field `cluster`: \"US\""),
            "{text}"
        );
    }

    #[test]
    fn validate_reports_the_inline_path() {
        let err = NodeConfig::dev(0, "local", "/d").validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid config <inline>: field `node_id`"),
            "{err}"
        );
    }

    #[test]
    fn node_id_zero_is_refused_and_one_accepted() {
        assert_eq!(
            invalid_field(NodeConfig::dev(0, "local", "/d").validate()),
            "node_id"
        );
        NodeConfig::dev(1, "local", "/d").validate().unwrap();
    }

    #[test]
    fn empty_data_dir_is_refused() {
        assert_eq!(
            invalid_field(NodeConfig::dev(1, "local", "").validate()),
            "data_dir"
        );
    }

    #[test]
    fn cluster_name_length_limits_are_enforced() {
        let ok = "a".repeat(MAX_CLUSTER_NAME_LEN);
        NodeConfig::dev(1, ok.as_str(), "/d").validate().unwrap();
        let long = "a".repeat(MAX_CLUSTER_NAME_LEN + 1);
        assert_eq!(
            invalid_field(NodeConfig::dev(1, long, "/d").validate()),
            "cluster"
        );
        assert_eq!(
            invalid_field(NodeConfig::dev(1, "", "/d").validate()),
            "cluster"
        );
    }

    #[test]
    fn cluster_name_outside_lowercase_digits_and_dash_is_refused() {
        NodeConfig::dev(1, "us-east-2", "/d").validate().unwrap();
        for bad in ["US-1", "us_1", "us 1", "us.1", "üs"] {
            assert_eq!(
                invalid_field(NodeConfig::dev(1, bad, "/d").validate()),
                "cluster",
                "{bad}"
            );
        }
    }

    #[test]
    fn invalid_raft_field_is_reported_under_raft() {
        let mut config = three_node_config();
        config.raft.snapshot_every_logs = 0;
        assert_eq!(invalid_field(config.validate()), "raft.snapshot_every_logs");
    }

    #[test]
    fn invalid_peer_field_is_reported_with_its_index() {
        let mut config = three_node_config();
        config.peers[1].addrs.clear();
        assert_eq!(invalid_field(config.validate()), "peers[1].addrs");
    }

    #[test]
    fn max_cluster_peers_accepted_and_one_more_refused() {
        let mut config = NodeConfig::dev(1, "big", "/d");
        config.peers = (2..2 + MAX_CLUSTER_PEERS as u64).map(peer).collect();
        assert_eq!(config.peers.len(), 63);
        config.validate().unwrap();
        config.peers.push(peer(100));
        assert_eq!(invalid_field(config.validate()), "peers");
    }

    #[test]
    fn peer_with_this_nodes_id_is_refused() {
        let mut config = three_node_config();
        config.peers[0].node_id = 1;
        assert_eq!(invalid_field(config.validate()), "peers[0].node_id");
    }

    #[test]
    fn duplicate_peer_node_id_is_refused() {
        let mut config = three_node_config();
        config.peers[1].node_id = 2;
        assert_eq!(invalid_field(config.validate()), "peers[1].node_id");
    }

    #[test]
    fn duplicate_peer_endpoint_id_is_refused() {
        let mut config = three_node_config();
        config.peers[1].endpoint_id = config.peers[0].endpoint_id.clone();
        assert_eq!(invalid_field(config.validate()), "peers[1].endpoint_id");
    }

    /// Endpoint id `n` as 64 hex characters.
    fn client_id(n: usize) -> String {
        format!("{n:064x}")
    }

    #[test]
    fn kv_clients_up_to_the_most_are_accepted_and_one_more_refused() {
        let mut config = three_node_config();
        config.kv_clients = (0..MAX_KV_CLIENTS).map(client_id).collect();
        config.validate().unwrap();
        config.kv_clients.push(client_id(MAX_KV_CLIENTS));
        assert_eq!(invalid_field(config.validate()), "kv_clients");
    }

    #[test]
    fn a_malformed_or_repeated_kv_client_is_refused_with_its_index() {
        let mut config = three_node_config();
        config.kv_clients = vec![client_id(1), client_id(2)];
        config.validate().unwrap();
        config.kv_clients[1] = "abc".into();
        assert_eq!(invalid_field(config.validate()), "kv_clients[1]");
        config.kv_clients[1] = client_id(1);
        assert_eq!(invalid_field(config.validate()), "kv_clients[1]");
    }

    #[test]
    fn kv_clients_parse_from_a_file() {
        let text = format!(
            "node_id = 1\ndata_dir = \"/d\"\nkv_clients = [\"{}\"]\n",
            client_id(7)
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.kv_clients, vec![client_id(7)]);
    }
}
