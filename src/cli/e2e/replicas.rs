//! The replica check of `aspen e2e run`: every node that imports a cluster of another
//! region must hold exactly that cluster's data (every key, value, revision and version)
//! once the faults are healed.
//!
//! A router spreads replica reads over its region's nodes, so reading through the
//! deployment's routers would not show each node's replica. Instead, for each importing
//! node and each cluster it imports, this starts a router in this process whose table
//! has just that owner (owning every key) and a one-node cluster of the importer's region
//! holding only that node: its stale scan is served from that node's replica. The routers
//! run one at a time (they share one identity, which every node lists in `kv_clients`).
//! The owner's data is a linearizable scan through a deployment router, read before and
//! after each round: a round passes when the owner did not change during it and every
//! replica equals it; rounds repeat until one passes or the deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use aspen_api::json::JsonEntry;
use aspen_api::{AspenClient, Consistency};
use aspen_config::{ClusterConfig, PeerConfig, RouteConfig, RouterConfig, RouterFederationConfig};
use aspen_router::RunningRouter;
use tokio::time::Instant;

/// Keys per scan page: the API's largest page.
const SCAN_PAGE: usize = 10_000;

/// Pause between rounds while replicas catch up.
const ROUND_PAUSE: Duration = Duration::from_secs(1);

/// How long one replica or owner read may take: a replica answers from its own disk.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Differing keys named per replica in a failure; the counts say how many in all.
const KEYS_SHOWN: usize = 5;

/// One node's replica of one owner cluster.
#[derive(Debug, Clone)]
struct Target {
    /// The importing node's region.
    region: String,
    /// Its cluster.
    host: String,
    /// The node, as its region's router config lists it.
    node: PeerConfig,
    /// The owner, as that config lists it (addresses reachable from that region).
    source: ClusterConfig,
}

impl Target {
    fn name(&self) -> String {
        format!(
            "{} node {}'s replica of {}",
            self.host, self.node.node_id, self.source.name
        )
    }
}

/// Every (importing node, owner) pair the router configs describe: each cluster of a
/// region imports every cluster of every other region. One config per region is used.
fn targets(configs: &[RouterConfig]) -> Vec<Target> {
    let mut seen_regions = Vec::new();
    let mut out = Vec::new();
    for config in configs {
        if seen_regions.contains(&config.region) {
            continue;
        }
        seen_regions.push(config.region.clone());
        let (local, foreign): (Vec<_>, Vec<_>) = config
            .clusters
            .iter()
            .partition(|c| c.region == config.region);
        for host in &local {
            for node in &host.nodes {
                for source in &foreign {
                    out.push(Target {
                        region: config.region.clone(),
                        host: host.name.clone(),
                        node: node.clone(),
                        source: (*source).clone(),
                    });
                }
            }
        }
    }
    out
}

/// The router config that reads `target`'s replica and nothing else.
fn probe_config(target: &Target, identity: &Path) -> RouterConfig {
    let host = ClusterConfig {
        name: target.host.clone(),
        region: target.region.clone(),
        nodes: vec![target.node.clone()],
    };
    let mut config = RouterConfig::dev(
        target.region.clone(),
        identity,
        vec![target.source.clone(), host],
        vec![RouteConfig {
            prefix: String::new(),
            cluster: target.source.name.clone(),
        }],
    );
    config.federation = Some(RouterFederationConfig {
        replica_clusters: vec![target.host.clone()],
    });
    // Nodes are reached at their deployment addresses, not on loopback.
    config.iroh_bind_addr = SocketAddr::from(([0, 0, 0, 0], 0));
    config
}

/// Every key under "" through `client`, in key order.
async fn scan_all(
    client: &AspenClient,
    consistency: Consistency,
) -> Result<Vec<JsonEntry>, String> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .scan("", after.as_deref(), Some(SCAN_PAGE), consistency)
            .await
            .map_err(|e| e.to_string())?;
        out.extend(page.kvs);
        match page.next {
            Some(next) if page.more => after = Some(next),
            _ => return Ok(out),
        }
    }
}

/// The owners' data: every key through a deployment router, by owner cluster.
async fn owners(reader: &AspenClient) -> Result<BTreeMap<String, Vec<JsonEntry>>, String> {
    let mut by_cluster: BTreeMap<String, Vec<JsonEntry>> = BTreeMap::new();
    for entry in scan_all(reader, Consistency::Linearizable).await? {
        by_cluster
            .entry(entry.cluster.clone())
            .or_default()
            .push(entry);
    }
    Ok(by_cluster)
}

/// How a replica differs from its owner, or `None` when equal.
fn difference(owner: &[JsonEntry], replica: &[JsonEntry]) -> Option<String> {
    let owner: BTreeMap<&str, &JsonEntry> = owner.iter().map(|e| (e.key.as_str(), e)).collect();
    let replica: BTreeMap<&str, &JsonEntry> = replica.iter().map(|e| (e.key.as_str(), e)).collect();
    let missing: Vec<&str> = owner
        .keys()
        .filter(|k| !replica.contains_key(*k))
        .copied()
        .collect();
    let extra: Vec<&str> = replica
        .keys()
        .filter(|k| !owner.contains_key(*k))
        .copied()
        .collect();
    let differ: Vec<&str> = owner
        .iter()
        .filter(|(k, e)| replica.get(*k).is_some_and(|r| r != *e))
        .map(|(k, _)| *k)
        .collect();
    if missing.is_empty() && extra.is_empty() && differ.is_empty() {
        return None;
    }
    let list = |keys: &[&str]| {
        keys.iter()
            .take(KEYS_SHOWN)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "{} keys missing [{}], {} extra [{}], {} differ [{}] (owner has {} keys)",
        missing.len(),
        list(&missing),
        extra.len(),
        list(&extra),
        differ.len(),
        list(&differ),
        owner.len()
    ))
}

/// What the last round found.
#[derive(Debug)]
pub struct ReplicaCheck {
    /// Replicas compared (importing node and owner pairs).
    pub replicas: usize,
    /// Keys each owner holds.
    pub owner_keys: BTreeMap<String, usize>,
    /// Replicas that differ, with how (empty when the check passed).
    pub differing: Vec<String>,
    /// Why the owners could not be read, if they could not.
    pub owner_error: Option<String>,
    /// Seconds from the start of the check to the round that passed (or the deadline).
    pub elapsed_secs: f64,
}

impl ReplicaCheck {
    /// Whether every replica equals its owner.
    pub fn passed(&self) -> bool {
        self.replicas > 0 && self.differing.is_empty() && self.owner_error.is_none()
    }

    /// One line (or, on failure, one per differing replica) for the verdict.
    pub fn summary(&self) -> String {
        let owners = self
            .owner_keys
            .iter()
            .map(|(c, n)| format!("{c} {n} keys"))
            .collect::<Vec<_>>()
            .join(", ");
        if self.passed() {
            return format!(
                "PASS: all {} replicas (every importing node, every owner) equal their owners \
                 ({owners}) after {:.1} s",
                self.replicas, self.elapsed_secs
            );
        }
        let mut text = format!(
            "FAIL after {:.1} s: {} of {} replicas differ from their owners ({owners})",
            self.elapsed_secs,
            self.differing.len(),
            self.replicas
        );
        if let Some(e) = &self.owner_error {
            text.push_str(&format!("; the owners could not be read: {e}"));
        }
        if self.replicas == 0 {
            text.push_str("; the router configs describe no replica");
        }
        for d in &self.differing {
            text.push_str(&format!("\n  {d}"));
        }
        text
    }
}

/// Reads `target`'s replica through a router of its own.
async fn read_replica(target: &Target, identity: &Path) -> anyhow::Result<Vec<JsonEntry>> {
    let config = probe_config(target, identity);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let router = RunningRouter::start(&config, listener)
        .await
        .with_context(|| format!("cannot start a router to read {}", target.name()))?;
    let client = AspenClient::with_timeout(&router.url(), READ_TIMEOUT);
    let scanned = scan_all(&client, Consistency::Stale).await;
    router.shutdown().await;
    scanned.map_err(|e| anyhow::anyhow!(e))
}

/// One round: the owners, every replica, the owners again.
async fn round(
    targets: &[Target],
    identity: &Path,
    reader: &AspenClient,
    check: &mut ReplicaCheck,
) {
    check.differing.clear();
    let before = match owners(reader).await {
        Ok(o) => o,
        Err(e) => {
            check.owner_error = Some(e);
            return;
        }
    };
    check.owner_error = None;
    check.owner_keys = before
        .iter()
        .map(|(c, keys)| (c.clone(), keys.len()))
        .collect();
    for target in targets {
        let owner = before
            .get(&target.source.name)
            .map_or(&[][..], Vec::as_slice);
        match read_replica(target, identity).await {
            Ok(replica) => {
                if let Some(d) = difference(owner, &replica) {
                    check.differing.push(format!("{}: {d}", target.name()));
                }
            }
            Err(e) => check.differing.push(format!(
                "{}: unreadable: {}",
                target.name(),
                crate::cli::one_line(&e)
            )),
        }
    }
    match owners(reader).await {
        Ok(after) if after == before => {}
        Ok(_) => check
            .differing
            .push("the owners changed during the round; comparing again".into()),
        Err(e) => check.owner_error = Some(e),
    }
}

/// Compares every replica the configs describe with its owner, round after round until
/// one passes or `timeout` has passed.
pub async fn compare(
    configs: &[RouterConfig],
    identity: &Path,
    reader: &AspenClient,
    timeout: Duration,
) -> anyhow::Result<ReplicaCheck> {
    let start = Instant::now();
    let deadline = start + timeout;
    let targets = targets(configs);
    let mut check = ReplicaCheck {
        replicas: targets.len(),
        owner_keys: BTreeMap::new(),
        differing: Vec::new(),
        owner_error: None,
        elapsed_secs: 0.0,
    };
    loop {
        round(&targets, identity, reader, &mut check).await;
        check.elapsed_secs = start.elapsed().as_secs_f64();
        if check.passed() || Instant::now() + ROUND_PAUSE > deadline || targets.is_empty() {
            return Ok(check);
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, rev: u64) -> JsonEntry {
        JsonEntry {
            key: key.into(),
            value: Some(value.into()),
            value_base64: None,
            blob: None,
            create_revision: 1,
            mod_revision: rev,
            version: 1,
            cluster: "us-1".into(),
        }
    }

    /// Node `id` of the cluster numbered `cluster`: endpoint ids differ across clusters.
    fn node(cluster: u8, id: u64) -> PeerConfig {
        PeerConfig {
            node_id: id,
            endpoint_id: format!("{cluster:02x}{id:062x}"),
            addrs: vec![SocketAddr::from(([10, 0, cluster, id as u8], 7401))],
        }
    }

    fn cluster(number: u8, name: &str, region: &str) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            region: region.into(),
            nodes: (1..=3).map(|id| node(number, id)).collect(),
        }
    }

    fn router(region: &str) -> RouterConfig {
        RouterConfig::dev(
            region,
            "/k",
            vec![
                cluster(1, "us-1", "us"),
                cluster(2, "us-2", "us"),
                cluster(3, "eu-1", "eu"),
            ],
            vec![RouteConfig {
                prefix: String::new(),
                cluster: "us-1".into(),
            }],
        )
    }

    #[test]
    fn every_importing_node_of_every_region_is_checked_against_every_foreign_owner() {
        let t = targets(&[router("us"), router("eu"), router("eu")]);
        // us: 6 nodes import eu-1; eu: 3 nodes import us-1 and us-2. The second eu
        // config adds nothing.
        assert_eq!(t.len(), 12);
        assert_eq!(t.iter().filter(|t| t.source.name == "eu-1").count(), 6);
        assert!(t.iter().all(|t| t.source.region != t.region));
    }

    #[test]
    fn a_probe_reads_one_node_and_is_a_valid_router_config() {
        let t = targets(&[router("eu")]);
        let config = probe_config(&t[0], Path::new("/k"));
        config.validate().unwrap();
        let host = config.clusters.iter().find(|c| c.region == "eu").unwrap();
        assert_eq!(host.nodes.len(), 1);
    }

    #[test]
    fn equal_data_has_no_difference_and_each_kind_of_difference_is_named() {
        let owner = vec![entry("a", "1", 2), entry("b", "2", 3)];
        assert_eq!(difference(&owner, &owner.clone()), None);
        let replica = vec![entry("a", "1", 1), entry("c", "9", 4)];
        let d = difference(&owner, &replica).unwrap();
        assert!(d.contains("1 keys missing [b]"), "{d}");
        assert!(d.contains("1 extra [c]"), "{d}");
        assert!(d.contains("1 differ [a]"), "{d}");
    }
}
