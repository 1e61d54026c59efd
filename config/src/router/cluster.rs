//! One `[[clusters]]` entry of a router's config: a cluster the route table may send keys
//! to, its region, and the members (`[[clusters.nodes]]`) the router dials to find its
//! leader. Members use the same schema and rules as a node's `[[peers]]`. Rules across
//! clusters (unique names, a node in only one cluster, how many) live in
//! [`check_clusters`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::limits::{MAX_CLUSTER_NODES, MAX_ROUTER_CLUSTERS};
use crate::name::check_name;
use crate::node::PeerConfig;

/// A cluster the router forwards requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name, as its members' configs spell it (their `cluster` field);
    /// routes refer to the cluster by this name. Unique among `[[clusters]]`.
    pub name: String,
    /// The region the cluster runs in, such as `us`: where its owner data lives, and so
    /// where writes to its keys go. Same rules as a cluster name.
    pub region: String,
    /// The cluster's members (`[[clusters.nodes]]`): Raft node id, iroh endpoint id and
    /// direct addresses of each, 1 to [`MAX_CLUSTER_NODES`]. The router dials them to
    /// find the leader, so listing every member lets it ride out the loss of any one.
    pub nodes: Vec<PeerConfig>,
}

impl ClusterConfig {
    /// Rules for this entry alone; field names are relative to the entry.
    fn check(&self) -> Result<(), FieldError> {
        check_name("name", "cluster", "us-1", &self.name)?;
        check_name("region", "region", "us", &self.region)?;
        if self.nodes.is_empty() {
            return Err(FieldError::new(
                "nodes",
                format!(
                    "is empty; cluster \"{}\" needs at least one [[clusters.nodes]] entry (its \
                     members' node_id, endpoint_id and addrs) for the router to reach it",
                    self.name
                ),
            ));
        }
        if self.nodes.len() > MAX_CLUSTER_NODES {
            return Err(FieldError::new(
                "nodes",
                format!(
                    "lists {} nodes, at most {MAX_CLUSTER_NODES} are allowed in one cluster; \
                     split it into smaller clusters",
                    self.nodes.len()
                ),
            ));
        }
        let mut seen_ids: HashMap<u64, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let at = format!("nodes[{i}]");
            node.check().map_err(|e| e.under(&at))?;
            if let Some(first) = seen_ids.insert(node.node_id, i) {
                return Err(FieldError::new(
                    format!("{at}.node_id"),
                    format!(
                        "{} is also the node id of nodes[{first}]; each member of a cluster has \
                         its own id, as set in its own config",
                        node.node_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The `[[clusters]]` list: each entry, then the list as a whole. A node belongs to one
/// cluster, so an endpoint id may appear once in the whole list.
pub(crate) fn check_clusters(clusters: &[ClusterConfig]) -> Result<(), FieldError> {
    if clusters.is_empty() {
        return Err(FieldError::new(
            "clusters",
            "is empty; list at least one [[clusters]] entry (name, region and nodes) for the \
             routes to point at",
        ));
    }
    if clusters.len() > MAX_ROUTER_CLUSTERS {
        return Err(FieldError::new(
            "clusters",
            format!(
                "lists {} clusters, at most {MAX_ROUTER_CLUSTERS} are allowed; a scan of the \
                 whole key space fans out to every cluster at once",
                clusters.len()
            ),
        ));
    }
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    // Endpoint id -> (cluster index, node index) of its first appearance.
    let mut seen_endpoints: HashMap<&str, (usize, usize)> = HashMap::new();
    for (c, cluster) in clusters.iter().enumerate() {
        let at = format!("clusters[{c}]");
        cluster.check().map_err(|e| e.under(&at))?;
        if let Some(first) = seen_names.insert(cluster.name.as_str(), c) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!(
                    "\"{}\" is also the name of clusters[{first}]; each cluster is listed once, \
                     with all its nodes",
                    cluster.name
                ),
            ));
        }
        for (n, node) in cluster.nodes.iter().enumerate() {
            let Some((first_c, first_n)) = seen_endpoints.insert(&node.endpoint_id, (c, n)) else {
                continue;
            };
            let why = if first_c == c {
                "each member has its own iroh identity, so list each node once".to_string()
            } else {
                format!(
                    "that node is in cluster \"{}\", and a node belongs to exactly one cluster; \
                     remove it from one of them",
                    clusters[first_c].name
                )
            };
            return Err(FieldError::new(
                format!("{at}.nodes[{n}].endpoint_id"),
                format!(
                    "\"{}\" is also the endpoint id of clusters[{first_c}].nodes[{first_n}]; {why}",
                    node.endpoint_id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::limits::{MAX_CLUSTER_NODES, MAX_ROUTER_CLUSTERS};
    use crate::node::tests::{invalid_field, peer};
    use crate::router::tests::{cluster, invalid, route, us_config};

    #[test]
    fn zero_clusters_are_refused() {
        let mut config = us_config();
        config.clusters.clear();
        assert_eq!(invalid_field(config.validate()), "clusters");
    }

    #[test]
    fn max_router_clusters_accepted_and_one_more_refused() {
        let mut config = us_config();
        config.clusters = (0..MAX_ROUTER_CLUSTERS as u64)
            .map(|n| cluster(&format!("c-{n}"), "us", &[n + 1]))
            .collect();
        config.routes = vec![route("", "c-0")];
        config.validate().unwrap();
        let extra = MAX_ROUTER_CLUSTERS as u64 + 1;
        config
            .clusters
            .push(cluster("one-too-many", "us", &[extra]));
        assert_eq!(invalid_field(config.validate()), "clusters");
    }

    #[test]
    fn cluster_with_zero_nodes_is_refused_and_one_node_accepted() {
        let mut config = us_config();
        config.clusters[1].nodes.truncate(1);
        config.validate().unwrap();
        config.clusters[1].nodes.clear();
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "clusters[1].nodes");
        assert!(reason.contains("\"us-2\""), "{reason}");
    }

    #[test]
    fn max_cluster_nodes_accepted_and_one_more_refused() {
        let mut config = us_config();
        let nodes: Vec<u64> = (100..100 + MAX_CLUSTER_NODES as u64).collect();
        config.clusters[1] = cluster("us-2", "us", &nodes);
        config.validate().unwrap();
        config.clusters[1].nodes.push(peer(999));
        assert_eq!(invalid_field(config.validate()), "clusters[1].nodes");
    }

    #[test]
    fn duplicate_cluster_name_is_refused_naming_the_first() {
        let mut config = us_config();
        config.clusters[1].name = "us-1".to_string();
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "clusters[1].name");
        assert!(reason.contains("clusters[0]"), "{reason}");
    }

    #[test]
    fn bad_cluster_name_or_region_is_reported_under_the_cluster() {
        let mut config = us_config();
        config.clusters[1].name = "US-2".to_string();
        assert_eq!(invalid_field(config.validate()), "clusters[1].name");
        let mut config = us_config();
        config.clusters[0].region = String::new();
        assert_eq!(invalid_field(config.validate()), "clusters[0].region");
    }

    #[test]
    fn invalid_node_field_is_reported_with_cluster_and_node_index() {
        let mut config = us_config();
        config.clusters[1].nodes[2].addrs.clear();
        assert_eq!(
            invalid_field(config.validate()),
            "clusters[1].nodes[2].addrs"
        );
        let mut config = us_config();
        config.clusters[0].nodes[1].endpoint_id = "not-hex".to_string();
        assert_eq!(
            invalid_field(config.validate()),
            "clusters[0].nodes[1].endpoint_id"
        );
    }

    #[test]
    fn duplicate_node_id_in_a_cluster_is_refused_but_allowed_across_clusters() {
        let mut config = us_config();
        config.clusters[1].nodes[2].node_id = config.clusters[1].nodes[0].node_id;
        assert_eq!(
            invalid_field(config.validate()),
            "clusters[1].nodes[2].node_id"
        );
        // Node ids are per cluster: us-1 and us-2 may both have a node 1.
        let mut config = us_config();
        config.clusters[1].nodes[0].node_id = 1;
        config.validate().unwrap();
    }

    #[test]
    fn duplicate_endpoint_id_in_one_cluster_is_refused() {
        let mut config = us_config();
        config.clusters[0].nodes[2].endpoint_id = config.clusters[0].nodes[0].endpoint_id.clone();
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "clusters[0].nodes[2].endpoint_id");
        assert!(reason.contains("clusters[0].nodes[0]"), "{reason}");
    }

    #[test]
    fn endpoint_id_in_two_clusters_is_refused_naming_the_other_cluster() {
        let mut config = us_config();
        config.clusters[1].nodes[1].endpoint_id = config.clusters[0].nodes[2].endpoint_id.clone();
        let (field, reason) = invalid(config.validate());
        assert_eq!(field, "clusters[1].nodes[1].endpoint_id");
        assert!(reason.contains("clusters[0].nodes[2]"), "{reason}");
        assert!(reason.contains("\"us-1\""), "{reason}");
        assert!(reason.contains("exactly one cluster"), "{reason}");
    }

    #[test]
    fn cluster_that_no_route_points_at_is_allowed() {
        let mut config = us_config();
        config.clusters.push(cluster("us-3", "us", &[7, 8, 9]));
        config.validate().unwrap();
    }
}
