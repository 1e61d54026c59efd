//! A router's config file: where the router listens, how long it works on one request,
//! which clusters exist ([`ClusterConfig`], with the members to dial) and which cluster
//! owns which key prefix ([`RouteConfig`]). [`RouterConfig::load`] reads, parses and
//! validates a file; `config/examples/router.toml` is a commented example.
//!
//! The route table is global: every router, in every region, should load the same
//! `[[clusters]]` and `[[routes]]`. Validation guarantees the table is usable on its own
//! (every route names a listed cluster, each prefix has one owner, every key has an owner
//! unless the file says otherwise); it cannot compare files of different routers.

mod cluster;
mod route;

pub use cluster::ClusterConfig;
pub use route::RouteConfig;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::error::{ConfigError, FieldError};
use crate::file;
use crate::limits::{
    MAX_IN_FLIGHT_PER_CLUSTER_LIMIT, MAX_REQUEST_DEADLINE_MS, MIN_REQUEST_DEADLINE_MS,
};
use crate::name::check_name;
use crate::node::{RelayModeConfig, DEFAULT_HTTP_ADDR, DEFAULT_IROH_BIND_ADDR};
use crate::tls::TlsConfig;

/// Default time a router spends on one request, retries included, in milliseconds: long
/// enough to ride out a few leader elections, short enough that an app sees a clear 503
/// while it can still do something about it.
pub const DEFAULT_REQUEST_DEADLINE_MS: u64 = 10_000;

/// Default cap on requests a router has outstanding to one cluster at once: enough to keep
/// a cluster's leader busy (it batches concurrent writes into Raft entries) without
/// letting one slow cluster pile up unbounded work in the router.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CLUSTER: usize = 256;

/// The configuration of one router, as read from its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The region this router runs in, such as `us`: same rules as a cluster name. Stale
    /// reads of keys owned elsewhere may be served from this region's replicas.
    pub region: String,
    /// TCP address of the HTTP API apps talk to; the same default port as a node, since
    /// apps use a router exactly as they would use one cluster.
    #[serde(default = "default_http_addr")]
    pub http_addr: SocketAddr,
    /// UDP address the router's iroh endpoint binds. The router only dials out to cluster
    /// members and nobody dials it, so the default, any free loopback port, is fine
    /// unless members are on other hosts (then bind an interface that reaches them).
    #[serde(default = "default_iroh_bind_addr")]
    pub iroh_bind_addr: SocketAddr,
    /// Whether the router's iroh endpoint uses relay servers to reach cluster members.
    #[serde(default)]
    pub relay: RelayModeConfig,
    /// File holding the router's iroh secret key, its identity: created (readable by its
    /// owner only) at the first start if absent, or beforehand with `aspen keygen`. Nodes
    /// serve the KV protocol only to their members and the endpoint ids in their
    /// `kv_clients`, so list this router's id there; it logs the id at start.
    pub secret_key_file: PathBuf,
    /// Time the router spends on one request, retries and leader changes included, before
    /// answering 503 `cluster_unavailable`, in ms; [`MIN_REQUEST_DEADLINE_MS`] to
    /// [`MAX_REQUEST_DEADLINE_MS`].
    #[serde(default = "default_request_deadline_ms")]
    pub request_deadline_ms: u64,
    /// Most requests the router has outstanding to one cluster at once; more are refused
    /// with 503 rather than queued without bound. 1 to [`MAX_IN_FLIGHT_PER_CLUSTER_LIMIT`].
    #[serde(default = "default_max_in_flight_per_cluster")]
    pub max_in_flight_per_cluster: usize,
    /// Whether keys that match no route are allowed to exist in the table's key space.
    /// False (the default) requires a catch-all `prefix = ""` route so that every key has
    /// an owner; true accepts a table with gaps, and keys in a gap are refused per request.
    #[serde(default)]
    pub allow_unrouted_keys: bool,
    /// Every cluster the table may route to (`[[clusters]]`), with the members to dial.
    /// A cluster no route points at is allowed: it may be about to receive a prefix.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// The route table (`[[routes]]`): each key prefix and the cluster that owns it. The
    /// longest prefix of a key wins; `prefix = ""` is the catch-all.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Federation reads (`[federation]`). Absent: every cluster of this router's region
    /// may serve stale reads of other regions' clusters from its replicas.
    #[serde(default)]
    pub federation: Option<RouterFederationConfig>,
    /// Who may use the HTTP API (`[auth]`); absent: everyone who reaches it.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS of the HTTP API (`[tls]`); absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Which clusters of the router's region keep replicas of other regions' clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterFederationConfig {
    /// Clusters of this router's region asked, in this order, for stale reads of keys
    /// other regions own (those whose nodes import them). 1 or more.
    pub replica_clusters: Vec<String>,
}

fn default_http_addr() -> SocketAddr {
    DEFAULT_HTTP_ADDR
}

fn default_iroh_bind_addr() -> SocketAddr {
    DEFAULT_IROH_BIND_ADDR
}

fn default_request_deadline_ms() -> u64 {
    DEFAULT_REQUEST_DEADLINE_MS
}

fn default_max_in_flight_per_cluster() -> usize {
    DEFAULT_MAX_IN_FLIGHT_PER_CLUSTER
}

impl RouterConfig {
    /// A config for region `region` with the given identity file, clusters and routes,
    /// every other field at its default (relays disabled, unrouted keys refused). Not
    /// validated; call [`RouterConfig::validate`] after building or changing it.
    pub fn dev(
        region: impl Into<String>,
        secret_key_file: impl Into<PathBuf>,
        clusters: Vec<ClusterConfig>,
        routes: Vec<RouteConfig>,
    ) -> Self {
        Self {
            region: region.into(),
            http_addr: DEFAULT_HTTP_ADDR,
            iroh_bind_addr: DEFAULT_IROH_BIND_ADDR,
            relay: RelayModeConfig::default(),
            secret_key_file: secret_key_file.into(),
            request_deadline_ms: DEFAULT_REQUEST_DEADLINE_MS,
            max_in_flight_per_cluster: DEFAULT_MAX_IN_FLIGHT_PER_CLUSTER,
            allow_unrouted_keys: false,
            clusters,
            routes,
            federation: None,
            auth: None,
            tls: None,
        }
    }

    /// Reads, parses and validates the config file at `path`. Errors name `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        file::load(path)
    }

    /// Parses and validates TOML `text`, as [`RouterConfig::load`] does for a file's
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
        check_name("region", "region", "us", &self.region)?;
        if self.secret_key_file.as_os_str().is_empty() {
            return Err(FieldError::new(
                "secret_key_file",
                "is empty; name the file that holds (or will hold) this router's iroh \
                 identity, such as \"/var/lib/aspen/router.key\"",
            ));
        }
        self.check_request_deadline()?;
        self.check_max_in_flight()?;
        cluster::check_clusters(&self.clusters)?;
        route::check_routes(&self.routes, &self.clusters, self.allow_unrouted_keys)?;
        if let Some(federation) = &self.federation {
            self.check_federation(federation)
                .map_err(|e| e.under("federation"))?;
        }
        if let Some(auth) = &self.auth {
            auth.check().map_err(|e| e.under("auth"))?;
        }
        if let Some(tls) = &self.tls {
            tls.check().map_err(|e| e.under("tls"))?;
        }
        Ok(())
    }

    fn check_federation(&self, federation: &RouterFederationConfig) -> Result<(), FieldError> {
        if federation.replica_clusters.is_empty() {
            return Err(FieldError::new(
                "replica_clusters",
                "is empty; name the clusters of this region whose nodes import other \
                 regions, or leave out [federation] to ask every cluster of the region",
            ));
        }
        for (i, name) in federation.replica_clusters.iter().enumerate() {
            let field = format!("replica_clusters[{i}]");
            match self.clusters.iter().find(|c| &c.name == name) {
                None => {
                    return Err(FieldError::new(
                        field,
                        format!("\"{name}\" is not in [[clusters]]; list it there first"),
                    ))
                }
                Some(c) if c.region != self.region => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "\"{name}\" runs in region \"{}\", not this router's \"{}\": \
                             replicas are read in the router's own region",
                            c.region, self.region
                        ),
                    ))
                }
                Some(_) => {}
            }
            if federation.replica_clusters[..i].contains(name) {
                return Err(FieldError::new(
                    field,
                    format!("\"{name}\" is listed twice"),
                ));
            }
        }
        Ok(())
    }

    fn check_request_deadline(&self) -> Result<(), FieldError> {
        let deadline_ms = self.request_deadline_ms;
        if deadline_ms < MIN_REQUEST_DEADLINE_MS {
            return Err(FieldError::new(
                "request_deadline_ms",
                format!(
                    "is {deadline_ms}, below the minimum of {MIN_REQUEST_DEADLINE_MS} ms; a \
                     shorter deadline cannot outlast a leader election, so leader changes would \
                     reach apps as errors. Use {MIN_REQUEST_DEADLINE_MS} or more"
                ),
            ));
        }
        if deadline_ms > MAX_REQUEST_DEADLINE_MS {
            return Err(FieldError::new(
                "request_deadline_ms",
                format!(
                    "is {deadline_ms}, above the maximum of {MAX_REQUEST_DEADLINE_MS} ms; no \
                     caller waits that long. Use {MAX_REQUEST_DEADLINE_MS} or less"
                ),
            ));
        }
        Ok(())
    }

    fn check_max_in_flight(&self) -> Result<(), FieldError> {
        let max = self.max_in_flight_per_cluster;
        if max == 0 {
            return Err(FieldError::new(
                "max_in_flight_per_cluster",
                format!(
                    "is 0, which would refuse every request; use at least 1 (the default is \
                     {DEFAULT_MAX_IN_FLIGHT_PER_CLUSTER})"
                ),
            ));
        }
        if max > MAX_IN_FLIGHT_PER_CLUSTER_LIMIT {
            return Err(FieldError::new(
                "max_in_flight_per_cluster",
                format!(
                    "is {max}, above the maximum of {MAX_IN_FLIGHT_PER_CLUSTER_LIMIT}; more \
                     outstanding requests only queue latency inside the router. Use \
                     {MAX_IN_FLIGHT_PER_CLUSTER_LIMIT} or less"
                ),
            ));
        }
        Ok(())
    }
}

/// `s` for an error message: whole if short, else its first characters and its length.
pub(crate) fn abbreviate(s: &str) -> String {
    const SHOWN_CHARS: usize = 40;
    if s.chars().count() <= SHOWN_CHARS {
        format!("\"{s}\"")
    } else {
        let head: String = s.chars().take(SHOWN_CHARS).collect();
        format!("\"{head}…\" ({} bytes)", s.len())
    }
}

impl file::Rules for RouterConfig {
    fn check(&self) -> Result<(), FieldError> {
        RouterConfig::check(self)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::node::tests::{invalid_field, peer};

    /// Cluster `name` in region `region` whose members are `peer(n)` for each `n`.
    pub(crate) fn cluster(name: &str, region: &str, nodes: &[u64]) -> ClusterConfig {
        ClusterConfig {
            name: name.to_string(),
            region: region.to_string(),
            nodes: nodes.iter().copied().map(peer).collect(),
        }
    }

    /// A route from `prefix` to `cluster`.
    pub(crate) fn route(prefix: &str, cluster: &str) -> RouteConfig {
        RouteConfig {
            prefix: prefix.to_string(),
            cluster: cluster.to_string(),
        }
    }

    /// The `us` region of the dev topology: us-1 owns everything but `svc-b/`, which
    /// us-2 owns. Valid.
    pub(crate) fn us_config() -> RouterConfig {
        RouterConfig::dev(
            "us",
            "/r/router.key",
            vec![
                cluster("us-1", "us", &[1, 2, 3]),
                cluster("us-2", "us", &[4, 5, 6]),
            ],
            vec![route("", "us-1"), route("svc-b/", "us-2")],
        )
    }

    /// The `Invalid` error's field and reason; panics on any other outcome.
    pub(crate) fn invalid(result: Result<(), ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { field, reason, .. }) => (field, reason),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn parse(text: &str) -> Result<RouterConfig, ConfigError> {
        RouterConfig::from_toml_str(text, Path::new("router-test.toml"))
    }

    #[test]
    fn replica_clusters_must_be_known_clusters_of_the_routers_region() {
        let mut config = us_config();
        config.clusters.push(cluster("eu-1", "eu", &[7]));
        config.routes.push(route("eu/", "eu-1"));
        let with = |names: &[&str]| {
            let mut c = config.clone();
            c.federation = Some(RouterFederationConfig {
                replica_clusters: names.iter().map(|n| n.to_string()).collect(),
            });
            c.validate()
        };
        assert!(with(&["us-1"]).is_ok());
        assert!(with(&["us-2", "us-1"]).is_ok());
        let field = |names: &[&str]| invalid(with(names)).0;
        assert_eq!(field(&[]), "federation.replica_clusters");
        assert_eq!(field(&["nowhere"]), "federation.replica_clusters[0]");
        assert_eq!(field(&["us-1", "eu-1"]), "federation.replica_clusters[1]");
        assert_eq!(field(&["us-1", "us-1"]), "federation.replica_clusters[1]");
    }

    fn parse_message(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Parse { message, .. }) => message,
            other => panic!("expected a Parse error, got {other:?}"),
        }
    }

    const MINIMAL: &str = r#"
        region = "us"
        secret_key_file = "/var/lib/aspen/router.key"
        [[clusters]]
        name = "us-1"
        region = "us"
        [[clusters.nodes]]
        node_id = 1
        endpoint_id = "00000000000000000000000000000000000000000000000000000000000000ab"
        addrs = ["127.0.0.1:7401"]
        [[routes]]
        prefix = ""
        cluster = "us-1"
    "#;

    #[test]
    fn minimal_file_with_one_cluster_and_catch_all_gets_all_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.http_addr, DEFAULT_HTTP_ADDR);
        assert_eq!(config.iroh_bind_addr, DEFAULT_IROH_BIND_ADDR);
        assert_eq!(config.relay, RelayModeConfig::Disabled);
        assert_eq!(config.request_deadline_ms, 10_000);
        assert_eq!(config.max_in_flight_per_cluster, 256);
        assert!(!config.allow_unrouted_keys);
        assert_eq!(config.clusters[0].nodes[0].node_id, 1);
        assert_eq!(config.routes, vec![route("", "us-1")]);
    }

    #[test]
    fn full_file_parses_every_field() {
        let text = format!(
            "http_addr = \"0.0.0.0:8080\"\niroh_bind_addr = \"0.0.0.0:7500\"\nrelay = \
             \"default\"\nrequest_deadline_ms = 2500\nmax_in_flight_per_cluster = 64\n\
             allow_unrouted_keys = true\n{MINIMAL}"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.iroh_bind_addr.to_string(), "0.0.0.0:7500");
        assert_eq!(config.relay, RelayModeConfig::Default);
        assert_eq!(config.request_deadline_ms, 2500);
        assert_eq!(config.max_in_flight_per_cluster, 64);
        assert!(config.allow_unrouted_keys);
    }

    #[test]
    fn config_survives_a_toml_round_trip() {
        let config = us_config();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(parse(&text).unwrap(), config);
    }

    #[test]
    fn a_missing_or_empty_secret_key_file_is_refused() {
        let message = parse_message(&MINIMAL.replacen(
            "secret_key_file = \"/var/lib/aspen/router.key\"",
            "",
            1,
        ));
        assert!(
            message.contains("missing field `secret_key_file`"),
            "{message}"
        );
        let mut config = us_config();
        config.secret_key_file = PathBuf::new();
        assert_eq!(invalid_field(config.validate()), "secret_key_file");
    }

    #[test]
    fn missing_region_is_a_parse_error() {
        let message = parse_message(&MINIMAL.replacen("region = \"us\"", "", 1));
        assert!(message.contains("missing field `region`"), "{message}");
    }

    #[test]
    fn unknown_field_is_refused_at_every_level() {
        let cases = [
            (
                "region = \"us\"",
                "region = \"us\"\nallow_unrouted = true",
                "allow_unrouted",
            ),
            ("name = \"us-1\"", "name = \"us-1\"\nleader = 1", "leader"),
            ("node_id = 1", "node_id = 1\nrole = \"voter\"", "role"),
            ("prefix = \"\"", "prefix = \"\"\nowner = \"us-1\"", "owner"),
        ];
        for (from, to, field) in cases {
            let message = parse_message(&MINIMAL.replacen(from, to, 1));
            assert!(
                message.contains(&format!("unknown field `{field}`")),
                "{message}"
            );
        }
    }

    #[test]
    fn invalid_file_error_names_path_field_and_value() {
        let err = parse(&MINIMAL.replacen("region = \"us\"", "region = \"US\"", 1)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("invalid config router-test.toml: field `region`: \"US\""),
            "{text}"
        );
    }

    #[test]
    fn validate_reports_the_inline_path() {
        let mut config = us_config();
        config.region = String::new();
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid config <inline>: field `region`"),
            "{err}"
        );
    }

    #[test]
    fn us_dev_topology_is_valid() {
        us_config().validate().unwrap();
    }

    #[test]
    fn region_follows_the_cluster_naming_rules() {
        for bad in ["", "US", "us_east", &"a".repeat(65)] {
            let mut config = us_config();
            config.region = bad.to_string();
            assert_eq!(invalid_field(config.validate()), "region", "{bad}");
        }
        let mut config = us_config();
        config.region = "a".repeat(64);
        config.validate().unwrap();
    }

    #[test]
    fn request_deadline_bounds_are_enforced_at_both_ends() {
        let with = |deadline_ms| {
            let mut config = us_config();
            config.request_deadline_ms = deadline_ms;
            config.validate()
        };
        with(MIN_REQUEST_DEADLINE_MS).unwrap();
        with(MAX_REQUEST_DEADLINE_MS).unwrap();
        for bad in [0, MIN_REQUEST_DEADLINE_MS - 1, MAX_REQUEST_DEADLINE_MS + 1] {
            let (field, reason) = invalid(with(bad));
            assert_eq!(field, "request_deadline_ms");
            assert!(reason.starts_with(&format!("is {bad},")), "{reason}");
        }
    }

    #[test]
    fn max_in_flight_per_cluster_bounds_are_enforced_at_both_ends() {
        let with = |max| {
            let mut config = us_config();
            config.max_in_flight_per_cluster = max;
            config.validate()
        };
        with(1).unwrap();
        with(MAX_IN_FLIGHT_PER_CLUSTER_LIMIT).unwrap();
        for bad in [0, MAX_IN_FLIGHT_PER_CLUSTER_LIMIT + 1] {
            assert_eq!(
                invalid_field(with(bad)),
                "max_in_flight_per_cluster",
                "{bad}"
            );
        }
    }

    #[test]
    fn abbreviate_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(abbreviate("svc-b/"), "\"svc-b/\"");
        let long = "é".repeat(41);
        assert_eq!(
            abbreviate(&long),
            format!("\"{}…\" (82 bytes)", "é".repeat(40))
        );
    }
}
