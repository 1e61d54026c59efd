//! One `[[routes]]` entry of a router's config: a key prefix and the cluster that owns
//! the keys starting with it, and the rules on the table as a whole: every route names a
//! listed cluster, each prefix has exactly one owner, and, unless the file says otherwise,
//! every key has an owner because a catch-all `""` route exists.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::abbreviate;
use super::cluster::ClusterConfig;
use crate::error::FieldError;
use crate::limits::{MAX_ROUTES, MAX_ROUTE_PREFIX_BYTES};

/// One route: keys starting with `prefix` belong to `cluster`, unless a longer route's
/// prefix also matches them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The key prefix, compared byte by byte with keys: `"svc-b/"` matches `svc-b/x` but
    /// not `svc-b`. The empty prefix `""` matches every key (the catch-all). At most
    /// [`MAX_ROUTE_PREFIX_BYTES`] bytes; unique in the table.
    pub prefix: String,
    /// Name of the owning cluster: one of the `[[clusters]]` entries.
    pub cluster: String,
}

/// The `[[routes]]` list: size, each entry, uniqueness, then coverage of the key space.
pub(crate) fn check_routes(
    routes: &[RouteConfig],
    clusters: &[ClusterConfig],
    allow_unrouted_keys: bool,
) -> Result<(), FieldError> {
    if routes.is_empty() {
        return Err(FieldError::new(
            "routes",
            "is empty; add at least one [[routes]] entry, such as prefix = \"\" with the cluster \
             that should own every key",
        ));
    }
    if routes.len() > MAX_ROUTES {
        return Err(FieldError::new(
            "routes",
            format!(
                "lists {} routes, at most {MAX_ROUTES} are allowed; route shorter, shared \
                 prefixes (such as \"team-a/\") instead of many long ones",
                routes.len()
            ),
        ));
    }
    let mut seen_prefixes: HashMap<&str, usize> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        check_route(route, clusters).map_err(|e| e.under(&at))?;
        if let Some(first) = seen_prefixes.insert(route.prefix.as_str(), i) {
            return Err(FieldError::new(
                format!("{at}.prefix"),
                format!(
                    "{} is also the prefix of routes[{first}] (cluster \"{}\"); each prefix has \
                     exactly one owner: remove routes[{first}] or routes[{i}]",
                    abbreviate(&route.prefix),
                    routes[first].cluster
                ),
            ));
        }
    }
    if !allow_unrouted_keys && !seen_prefixes.contains_key("") {
        let example = match example_unrouted_key(routes) {
            Some(key) => format!("a key such as \"{key}\""),
            None => "a key outside every prefix".to_string(),
        };
        return Err(FieldError::new(
            "routes",
            format!(
                "has no catch-all route (prefix = \"\") and allow_unrouted_keys is false, so \
                 {example} matches no route and would be refused. Add a [[routes]] entry with \
                 prefix = \"\" and the cluster that should own such keys, or set \
                 allow_unrouted_keys = true to refuse them on purpose"
            ),
        ));
    }
    Ok(())
}

/// Rules for one route alone; field names are relative to the entry.
fn check_route(route: &RouteConfig, clusters: &[ClusterConfig]) -> Result<(), FieldError> {
    if route.prefix.len() > MAX_ROUTE_PREFIX_BYTES {
        return Err(FieldError::new(
            "prefix",
            format!(
                "{} is longer than {MAX_ROUTE_PREFIX_BYTES} bytes, the longest key there can be, \
                 so no key could match it; shorten it",
                abbreviate(&route.prefix)
            ),
        ));
    }
    if !clusters.iter().any(|c| c.name == route.cluster) {
        return Err(FieldError::new(
            "cluster",
            format!(
                "\"{}\" is not a cluster in [[clusters]] (known: {}); route to one of those or \
                 add a [[clusters]] entry with that name",
                route.cluster,
                known_cluster_names(clusters)
            ),
        ));
    }
    Ok(())
}

/// The clusters' names, sorted, for an error message; a long list is cut short.
fn known_cluster_names(clusters: &[ClusterConfig]) -> String {
    const SHOWN: usize = 10;
    let mut names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// A key that no route's prefix matches, for an error message about a table without a
/// catch-all. Tries a readable key first, then single characters: with no `""` route, a
/// one-character key is matched only by a route whose prefix is exactly that character,
/// and there are fewer routes than characters, so one of them is free.
fn example_unrouted_key(routes: &[RouteConfig]) -> Option<String> {
    let is_routed = |key: &str| routes.iter().any(|r| key.starts_with(r.prefix.as_str()));
    let readable = ["other/key", "x"].into_iter().map(str::to_string);
    let single_chars = ('a'..='z')
        .chain('0'..='9')
        .chain((0x21..=0x2_FFFF).filter_map(char::from_u32))
        .map(String::from);
    readable.chain(single_chars).find(|key| !is_routed(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::invalid_field;
    use crate::router::tests::{invalid, route, us_config};

    #[test]
    fn zero_routes_are_refused_even_when_unrouted_keys_are_allowed() {
        let mut config = us_config();
        config.routes.clear();
        config.allow_unrouted_keys = true;
        assert_eq!(invalid_field(config.validate()), "routes");
    }

    #[test]
    fn max_routes_accepted_and_one_more_refused() {
        let mut config = us_config();
        config.routes = (0..MAX_ROUTES - 1)
            .map(|n| route(&format!("p{n}/"), "us-2"))
            .collect();
        config.routes.push(route("", "us-1"));
        config.validate().unwrap();
        config.routes.push(route("one-too-many/", "us-2"));
        assert_eq!(invalid_field(config.validate()), "routes");
    }

    #[test]
    fn prefix_of_max_key_bytes_accepted_and_one_byte_more_refused() {
        let mut config = us_config();
        config
            .routes
            .push(route(&"k".repeat(MAX_ROUTE_PREFIX_BYTES), "us-2"));
        config.validate().unwrap();
        config.routes[2].prefix.push('k');
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "routes[2].prefix");
        assert!(reason.contains("(1025 bytes)"), "{reason}");
    }

    #[test]
    fn prefix_limit_counts_bytes_not_characters() {
        let mut config = us_config();
        // 513 two-byte characters: 513 characters but 1026 bytes.
        config.routes.push(route(&"é".repeat(513), "us-2"));
        assert_eq!(invalid_field(config.validate()), "routes[2].prefix");
    }

    #[test]
    fn route_to_unknown_cluster_is_refused_naming_the_known_ones() {
        let mut config = us_config();
        config.routes.push(route("eu/", "eu-1"));
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "routes[2].cluster");
        assert!(reason.starts_with("\"eu-1\" is not a cluster"), "{reason}");
        assert!(reason.contains("(known: \"us-1\", \"us-2\")"), "{reason}");
    }

    #[test]
    fn known_cluster_list_in_errors_is_sorted_and_cut_short() {
        let mut config = us_config();
        config.clusters = (0..12u64)
            .rev()
            .map(|n| crate::router::tests::cluster(&format!("c-{n:02}"), "us", &[n + 1]))
            .collect();
        config.routes = vec![route("", "nope")];
        let (_, reason) = invalid(config.validate());
        assert!(
            reason.contains(
                "(known: \"c-00\", \"c-01\", \"c-02\", \"c-03\", \"c-04\", \"c-05\", \
                             \"c-06\", \"c-07\", \"c-08\", \"c-09\" and 2 more)"
            ),
            "{reason}"
        );
    }

    #[test]
    fn duplicate_prefix_is_refused_naming_both_indexes() {
        let mut config = us_config();
        config.routes.push(route("svc-b/", "us-1"));
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "routes[2].prefix");
        assert!(reason.contains("routes[1]"), "{reason}");
        assert!(reason.contains("routes[2]"), "{reason}");
    }

    #[test]
    fn second_catch_all_is_a_duplicate_prefix() {
        let mut config = us_config();
        config.routes.push(route("", "us-2"));
        assert_eq!(invalid_field(config.validate()), "routes[2].prefix");
    }

    #[test]
    fn missing_catch_all_is_refused_with_an_unrouted_example_key() {
        let mut config = us_config();
        config.routes.remove(0);
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "routes");
        assert!(reason.contains("a key such as \"other/key\""), "{reason}");
        assert!(reason.contains("prefix = \"\""), "{reason}");
        assert!(reason.contains("allow_unrouted_keys = true"), "{reason}");
    }

    #[test]
    fn missing_catch_all_is_accepted_when_unrouted_keys_are_allowed() {
        let mut config = us_config();
        config.routes.remove(0);
        config.allow_unrouted_keys = true;
        config.validate().unwrap();
    }

    #[test]
    fn example_unrouted_key_matches_no_route_even_when_common_keys_are_taken() {
        let taken: Vec<RouteConfig> = ('a'..='z')
            .chain('0'..='9')
            .map(|c| route(&c.to_string(), "us-1"))
            .collect();
        let key = example_unrouted_key(&taken).expect("a free character exists");
        assert!(
            taken.iter().all(|r| !key.starts_with(r.prefix.as_str())),
            "{key}"
        );
        assert_eq!(
            example_unrouted_key(&[route("svc/", "a")]).as_deref(),
            Some("other/key")
        );
    }
}
