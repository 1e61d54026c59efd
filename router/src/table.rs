//! [`RouteTable`]: the router's map from key prefixes to clusters, built once from a
//! validated [`RouterConfig`] and read by every request. A key's owner is the cluster of
//! the longest route prefix the key starts with, compared byte by byte. Lookups cost one
//! hash probe per distinct route prefix length, never a scan of all routes.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use aspen_config::{ClusterConfig, ConfigError, RouterConfig, INLINE_CONFIG_PATH};

use crate::error::RouteError;

/// The route table: which cluster owns which keys. Immutable once built; share it behind
/// an `Arc` and swap in a new one to change routes.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Every cluster of the config, sorted by name. Routes refer to clusters by index into
    /// this list, so index order is name order and a set of indexes lists names in order.
    clusters: Vec<ClusterConfig>,
    /// Every route as (prefix, cluster index), sorted by prefix bytes. Listing reads it in
    /// order, and the routes under a scan prefix are one contiguous run of it.
    sorted_routes: Vec<(String, usize)>,
    /// The same routes keyed by prefix, for the lookups on every request.
    by_prefix: HashMap<String, usize>,
    /// The distinct prefix lengths in bytes, longest first: a lookup cuts the key only at
    /// these lengths, so the first hit is the longest matching prefix.
    prefix_lens: Vec<usize>,
}

impl RouteTable {
    /// Builds the table from `config`, validating it first (a config from
    /// [`RouterConfig::load`] passes again; one built in code is checked here).
    pub fn new(config: &RouterConfig) -> Result<Self, RouteError> {
        config.validate()?;
        let mut clusters = config.clusters.clone();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let mut by_prefix = HashMap::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            let Ok(cluster) = clusters.binary_search_by(|c| c.name.as_str().cmp(&route.cluster))
            else {
                // Validation refuses this; kept as an error rather than a panic.
                return Err(RouteError::Config(ConfigError::Invalid {
                    path: PathBuf::from(INLINE_CONFIG_PATH),
                    field: format!("routes[{i}].cluster"),
                    reason: format!("\"{}\" is not a cluster in [[clusters]]", route.cluster),
                }));
            };
            by_prefix.insert(route.prefix.clone(), cluster);
        }
        let mut sorted_routes: Vec<(String, usize)> =
            by_prefix.iter().map(|(p, &c)| (p.clone(), c)).collect();
        sorted_routes.sort_unstable();
        let lens: BTreeSet<usize> = by_prefix.keys().map(String::len).collect();
        let prefix_lens = lens.into_iter().rev().collect();
        Ok(Self {
            clusters,
            sorted_routes,
            by_prefix,
            prefix_lens,
        })
    }

    /// The cluster that owns `key`: the one whose route has the longest prefix of `key`.
    /// [`RouteError::NoRoute`] if no route matches (possible only without a catch-all).
    /// The key is not checked against the API's key rules; validate it first.
    pub fn owner(&self, key: &str) -> Result<&str, RouteError> {
        self.owner_index(key)
            .map(|i| self.name(i))
            .ok_or_else(|| RouteError::NoRoute {
                key: key.to_string(),
            })
    }

    /// The one cluster that owns every key in `keys`, for a multi-key command (its
    /// writes, deletes and precondition keys alike). [`RouteError::NoRoute`] for the first
    /// key no route owns, whatever the other keys; [`RouteError::CrossCluster`] naming
    /// every cluster involved if they are more than one; [`RouteError::NoKeys`] for none.
    pub fn owner_of_all<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<&str, RouteError> {
        let mut owners = BTreeSet::new();
        for key in keys {
            let cluster = self.owner_index(key).ok_or_else(|| RouteError::NoRoute {
                key: key.to_string(),
            })?;
            owners.insert(cluster);
        }
        if owners.len() > 1 {
            return Err(RouteError::CrossCluster {
                clusters: owners
                    .into_iter()
                    .map(|i| self.name(i).to_string())
                    .collect(),
            });
        }
        owners
            .first()
            .map(|&i| self.name(i))
            .ok_or(RouteError::NoKeys)
    }

    /// Every cluster that may own a key starting with `prefix`, sorted by name: the owner
    /// of `prefix` itself (its longest matching route also covers every key under it that
    /// no longer route claims), plus the cluster of every route whose prefix starts with
    /// `prefix`. Empty if no route covers any such key. A scan asks exactly these.
    pub fn scan_plan(&self, prefix: &str) -> Vec<String> {
        let mut owners = BTreeSet::new();
        if let Some(owner) = self.owner_index(prefix) {
            owners.insert(owner);
        }
        // Strings starting with `prefix` sort at or after it, and contiguously.
        let start = self
            .sorted_routes
            .partition_point(|(p, _)| p.as_str() < prefix);
        let below = self.sorted_routes[start..]
            .iter()
            .take_while(|(p, _)| p.starts_with(prefix));
        owners.extend(below.map(|&(_, cluster)| cluster));
        owners
            .into_iter()
            .map(|i| self.name(i).to_string())
            .collect()
    }

    /// Whether `cluster` owns `key`. A merged scan uses it to drop keys a cluster returned
    /// that a longer route gives to another cluster.
    pub fn owns(&self, cluster: &str, key: &str) -> bool {
        self.owner_index(key)
            .is_some_and(|i| self.name(i) == cluster)
    }

    /// Every route as `(prefix, cluster)`, sorted by prefix bytes.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.sorted_routes
            .iter()
            .map(|(prefix, cluster)| (prefix.as_str(), self.name(*cluster)))
    }

    /// Every cluster of the config, routed to or not, sorted by name, with its region and
    /// members.
    pub fn clusters(&self) -> &[ClusterConfig] {
        &self.clusters
    }

    /// The cluster named `name`, if the config lists it.
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.clusters[i])
    }

    /// Index of the owner of `key`: try each route prefix length, longest first. A cut
    /// that is not on a character boundary cannot equal a prefix (prefixes are whole
    /// UTF-8 strings), and `str::get` skips it.
    fn owner_index(&self, key: &str) -> Option<usize> {
        self.prefix_lens
            .iter()
            .filter_map(|&len| key.get(..len))
            .find_map(|cut| self.by_prefix.get(cut).copied())
    }

    /// Name of the cluster at `index`, an index this table handed out.
    fn name(&self, index: usize) -> &str {
        &self.clusters[index].name
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aspen_config::{PeerConfig, RouteConfig};
    use proptest::prelude::*;
    use std::net::SocketAddr;

    /// A one-node cluster `name` whose node has a distinct endpoint id per `n`.
    fn cluster(name: &str, n: u16) -> ClusterConfig {
        ClusterConfig {
            name: name.to_string(),
            region: "us".to_string(),
            nodes: vec![PeerConfig {
                node_id: 1,
                endpoint_id: format!("{n:064x}"),
                addrs: vec![SocketAddr::from(([127, 0, 0, 1], 7400 + n))],
            }],
        }
    }

    /// A table over clusters `a`, `b`, `c` with `routes` as (prefix, cluster); unrouted
    /// keys are allowed so tables without a catch-all can be built.
    pub(crate) fn table(routes: &[(&str, &str)]) -> RouteTable {
        let mut config = RouterConfig::dev(
            "us",
            "/r/router.key",
            vec![cluster("c", 3), cluster("a", 1), cluster("b", 2)],
            routes
                .iter()
                .map(|(prefix, cluster)| RouteConfig {
                    prefix: prefix.to_string(),
                    cluster: cluster.to_string(),
                })
                .collect(),
        );
        config.allow_unrouted_keys = true;
        RouteTable::new(&config).expect("valid test table")
    }

    /// The table of the scan examples: `""` → a, `svc-b/` → b, `svc-b/x` → a.
    fn nested() -> RouteTable {
        table(&[("", "a"), ("svc-b/", "b"), ("svc-b/x", "a")])
    }

    #[test]
    fn longest_matching_prefix_wins() {
        let t = nested();
        assert_eq!(t.owner("svc-b/y").unwrap(), "b");
        assert_eq!(t.owner("svc-b/x").unwrap(), "a");
        assert_eq!(t.owner("svc-b/xyz").unwrap(), "a");
        assert_eq!(t.owner("svc-b/").unwrap(), "b");
    }

    #[test]
    fn catch_all_owns_keys_no_other_route_matches() {
        let t = nested();
        assert_eq!(t.owner("svc-b").unwrap(), "a");
        assert_eq!(t.owner("eu/x").unwrap(), "a");
        assert_eq!(t.owner("").unwrap(), "a");
    }

    #[test]
    fn key_matching_no_route_is_a_no_route_error_naming_it() {
        let t = table(&[("svc-a/", "a")]);
        let err = t.owner("svc-b/1").unwrap_err();
        assert!(
            matches!(&err, RouteError::NoRoute { key } if key == "svc-b/1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"svc-b/1\""), "{err}");
    }

    #[test]
    fn prefixes_match_bytes_of_multibyte_characters_whole() {
        let t = table(&[("é", "b"), ("e", "c")]);
        assert_eq!(t.owner("été").unwrap(), "b");
        assert_eq!(t.owner("eté").unwrap(), "c");
        // "€" shares no byte prefix with "é"; the 2-byte cut of "€" is not a boundary.
        assert!(t.owner("€").is_err());
    }

    #[test]
    fn keys_in_one_cluster_through_different_prefixes_have_one_owner() {
        let t = nested();
        let owner = t.owner_of_all(["svc-b/x1", "other", "svc-b/xyz"]).unwrap();
        assert_eq!(owner, "a");
        assert_eq!(t.owner_of_all(["svc-b/1"]).unwrap(), "b");
    }

    #[test]
    fn keys_in_different_clusters_are_cross_cluster_naming_all_sorted() {
        let t = table(&[("", "c"), ("svc-a/", "a"), ("svc-b/", "b")]);
        let err = t
            .owner_of_all(["svc-b/1", "x", "svc-a/1", "svc-b/2"])
            .unwrap_err();
        match &err {
            RouteError::CrossCluster { clusters } => assert_eq!(clusters, &["a", "b", "c"]),
            other => panic!("expected CrossCluster, got {other:?}"),
        }
        assert!(err.to_string().contains("3 clusters (a, b, c)"), "{err}");
    }

    #[test]
    fn unrouted_key_among_many_is_no_route_even_if_others_cross_clusters() {
        let t = table(&[("svc-a/", "a"), ("svc-b/", "b")]);
        let err = t.owner_of_all(["svc-a/1", "svc-b/1", "zzz"]).unwrap_err();
        assert!(
            matches!(&err, RouteError::NoRoute { key } if key == "zzz"),
            "{err:?}"
        );
    }

    #[test]
    fn no_keys_have_no_owner() {
        let err = nested().owner_of_all([]).unwrap_err();
        assert!(matches!(err, RouteError::NoKeys), "{err:?}");
    }

    #[test]
    fn scan_above_route_boundaries_includes_every_route_below() {
        assert_eq!(nested().scan_plan("svc"), ["a", "b"]);
        assert_eq!(nested().scan_plan(""), ["a", "b"]);
    }

    #[test]
    fn scan_at_a_route_boundary_includes_its_owner_and_longer_routes() {
        assert_eq!(nested().scan_plan("svc-b/"), ["a", "b"]);
        assert_eq!(nested().scan_plan("svc-b/x"), ["a"]);
    }

    #[test]
    fn scan_below_a_route_boundary_asks_only_the_owner() {
        assert_eq!(nested().scan_plan("svc-b/y"), ["b"]);
        assert_eq!(nested().scan_plan("eu"), ["a"]);
    }

    #[test]
    fn scan_outside_every_route_asks_no_cluster() {
        let t = table(&[("svc-a/", "a"), ("svc-b/", "b")]);
        assert!(t.scan_plan("eu/").is_empty());
        assert_eq!(t.scan_plan("svc-"), ["a", "b"]);
    }

    #[test]
    fn owns_is_true_only_for_the_owner() {
        let t = nested();
        assert!(t.owns("a", "svc-b/x1"));
        assert!(!t.owns("b", "svc-b/x1"));
        assert!(t.owns("b", "svc-b/y"));
        assert!(!t.owns("nope", "svc-b/y"));
        assert!(!table(&[("svc-a/", "a")]).owns("a", "zzz"));
    }

    #[test]
    fn routes_are_listed_by_prefix_and_clusters_by_name() {
        let t = table(&[("svc-b/x", "a"), ("", "a"), ("svc-b/", "b")]);
        let routes: Vec<_> = t.routes().collect();
        assert_eq!(routes, [("", "a"), ("svc-b/", "b"), ("svc-b/x", "a")]);
        let names: Vec<_> = t.clusters().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(t.cluster("b").map(|c| c.nodes.len()), Some(1));
        assert!(t.cluster("d").is_none());
    }

    #[test]
    fn invalid_config_is_refused_with_the_config_error() {
        let mut config =
            RouterConfig::dev("us", "/r/router.key", vec![cluster("a", 1)], Vec::new());
        config.allow_unrouted_keys = true;
        let err = RouteTable::new(&config).unwrap_err();
        match err {
            RouteError::Config(ConfigError::Invalid { field, .. }) => assert_eq!(field, "routes"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// Routes over a small alphabet with a two-byte character, so prefixes nest, overlap
    /// and cut keys inside characters; the catch-all is present in about half the cases.
    fn routes_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        let cluster = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from);
        proptest::collection::btree_map("[ab/é]{0,3}", cluster, 1..12)
            .prop_map(|routes| routes.into_iter().collect())
    }

    /// The owner by definition: the longest route prefix of `key`, over all routes.
    fn brute_force_owner<'r>(routes: &'r [(String, String)], key: &str) -> Option<&'r str> {
        routes
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, cluster)| cluster.as_str())
    }

    fn table_of(routes: &[(String, String)]) -> RouteTable {
        let pairs: Vec<(&str, &str)> = routes
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        table(&pairs)
    }

    proptest! {
        #[test]
        fn owner_equals_brute_force_longest_prefix(
            routes in routes_strategy(),
            keys in proptest::collection::vec("[ab/éx]{0,6}", 1..20),
        ) {
            let t = table_of(&routes);
            for key in &keys {
                prop_assert_eq!(t.owner(key).ok(), brute_force_owner(&routes, key), "{}", key);
            }
        }

        #[test]
        fn owner_of_a_key_under_a_prefix_is_in_that_prefixs_scan_plan(
            routes in routes_strategy(),
            prefix in "[ab/é]{0,3}",
            suffixes in proptest::collection::vec("[ab/éx]{0,4}", 1..20),
        ) {
            let t = table_of(&routes);
            let plan = t.scan_plan(&prefix);
            prop_assert!(plan.windows(2).all(|w| w[0] < w[1]), "{:?} not sorted", plan);
            for suffix in &suffixes {
                let key = format!("{prefix}{suffix}");
                if let Ok(owner) = t.owner(&key) {
                    prop_assert!(
                        plan.iter().any(|c| c == owner),
                        "{} owns {} but scan_plan({}) = {:?}", owner, key, prefix, plan
                    );
                }
            }
        }
    }
}
