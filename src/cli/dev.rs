//! `aspen dev`: region `us` of the DESIGN topology in this process, for development: two
//! [`LocalCluster`]s, `us-1` (every key not routed elsewhere) and `us-2` (keys under
//! `svc-b/`), with their data under `--data-dir` (resuming when the directory already
//! holds them), and a router in front of both on `--http`. It waits a bounded time for
//! leaders, prints the topology and a few ready-to-paste curl lines, and runs until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aspen_cluster_node::local_cluster::{node_dir, LocalCluster, LocalClusterSpec};
use aspen_config::{ClusterConfig, RaftConfig, RouteConfig, RouterConfig};
use aspen_router::RunningRouter;
use clap::Args;
use tokio::time::Instant;

use super::render::short;
use super::signal::shutdown_requested;

/// The dev clusters and the route each owns, in DESIGN's region `us`.
const DEV_CLUSTERS: [(&str, &str); 2] = [("us-1", ""), ("us-2", "svc-b/")];

/// Region of the dev router and clusters.
const DEV_REGION: &str = "us";

/// Node 1 of dev cluster `i` serves HTTP on the router's port plus this plus `100 * i`
/// (7101 and 7201 by default), so the clusters can be reached directly at known ports.
const NODE_HTTP_PORT_OFFSET: u16 = 31;

/// Most nodes `aspen dev` starts: 7 voters tolerate 3 failures, and more nodes in one
/// process only slow a laptop down without teaching anything new.
const MAX_DEV_NODES: u8 = 7;

/// How long to wait for the first leader before printing the nodes anyway. An election
/// on loopback takes well under a second; 10 s covers a slow, loaded machine.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How often to look for a leader while waiting.
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Arguments of `aspen dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for every node's data (us-1/node-1, ..., us-2/node-1, ...). Running again
    /// with the same directory resumes both clusters with their data.
    #[arg(long, value_name = "DIR", default_value = "./aspen-dev-data")]
    data_dir: PathBuf,
    /// HTTP address of the router. Node 1 of us-1 serves on this port + 31, node 1 of
    /// us-2 on this port + 131; the other nodes take free ports on loopback.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    http: SocketAddr,
    /// Number of nodes in each cluster (1 to 7).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(1..=MAX_DEV_NODES as i64))]
    nodes: u8,
}

/// Runs the dev clusters and router until a signal asks it to stop.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if node_dir(&args.data_dir, 1).is_dir() {
        anyhow::bail!(
            "{} holds a single-cluster dev setup from an earlier version of aspen dev; pick \
             another --data-dir (or remove it) to start the two-cluster setup",
            args.data_dir.display()
        );
    }
    let mut resumed = false;
    for (name, _) in DEV_CLUSTERS {
        let existing = existing_nodes(&args.data_dir.join(name));
        if existing > 0 && existing != usize::from(args.nodes) {
            anyhow::bail!(
                "{} holds the data of a {existing}-node cluster {name}; run with --nodes \
                 {existing}, or pick another --data-dir to start anew",
                args.data_dir.display()
            );
        }
        resumed |= existing > 0;
    }
    check_port_free(args.http).await?;
    let mut clusters = Vec::new();
    for (i, (name, _)) in DEV_CLUSTERS.iter().enumerate() {
        let http = node_http(args.http, i)?;
        check_port_free(http).await?;
        let spec = LocalClusterSpec {
            cluster: name.to_string(),
            data_dir: args.data_dir.join(name),
            nodes: usize::from(args.nodes),
            first_http: http,
            raft: RaftConfig::default(),
        };
        let cluster = LocalCluster::start(spec)
            .await
            .with_context(|| format!("cannot start dev cluster {name}"))?;
        clusters.push(cluster);
    }
    let mut leaders = Vec::new();
    for cluster in &clusters {
        leaders.push(wait_for_leader(cluster).await);
    }
    let config = router_config(&args, &clusters);
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http))?;
    let router = RunningRouter::start(&config, listener)
        .await
        .context("cannot start the dev router")?;
    print_summary(&router, &clusters, &leaders, &args, resumed);
    let signal = shutdown_requested().await;
    match &signal {
        Ok(name) => println!("{name} received; stopping the router and clusters"),
        Err(e) => tracing::warn!("cannot wait for signals ({e}); stopping"),
    }
    router.shutdown().await;
    for cluster in clusters {
        cluster.shutdown().await;
    }
    signal.map(|_| ExitCode::SUCCESS)
}

/// The HTTP address of node 1 of dev cluster `index`.
fn node_http(router: SocketAddr, index: usize) -> anyhow::Result<SocketAddr> {
    let offset = NODE_HTTP_PORT_OFFSET + 100 * index as u16;
    let port = router.port().checked_add(offset).with_context(|| {
        format!(
            "--http port {} leaves no room for the nodes' ports (+{offset})",
            router.port()
        )
    })?;
    Ok(SocketAddr::new(router.ip(), port))
}

/// The router config of the dev topology: both clusters, their routes.
fn router_config(args: &DevArgs, clusters: &[LocalCluster]) -> RouterConfig {
    let cluster_configs = DEV_CLUSTERS
        .iter()
        .zip(clusters)
        .map(|((name, _), cluster)| ClusterConfig {
            name: name.to_string(),
            region: DEV_REGION.to_string(),
            nodes: cluster.members().to_vec(),
        })
        .collect();
    let routes = DEV_CLUSTERS
        .iter()
        .map(|(name, prefix)| RouteConfig {
            prefix: prefix.to_string(),
            cluster: name.to_string(),
        })
        .collect();
    let mut config = RouterConfig::dev(DEV_REGION, cluster_configs, routes);
    config.http_addr = args.http;
    config.iroh_bind_addr = SocketAddr::new(args.http.ip(), 0);
    config
}

/// How many nodes' data `dir` holds (0 for a new or missing directory).
fn existing_nodes(dir: &Path) -> usize {
    let mut count = 0;
    while count < usize::from(MAX_DEV_NODES) && node_dir(dir, count as u64 + 1).is_dir() {
        count += 1;
    }
    count
}

/// Fails with a clear message when `addr` is taken. The listener is dropped again: the
/// cluster binds it itself, and a race with another process is reported by that bind.
async fn check_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let suggestion = SocketAddr::new(addr.ip(), addr.port().wrapping_add(100));
            anyhow::bail!(
                "HTTP address {addr} is already in use (another `aspen dev` or node?); pick \
                 another with --http, e.g. --http {suggestion}"
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen for HTTP on {addr}")),
    }
}

/// The leader's id, once some node knows it, or `None` after [`LEADER_WAIT`].
async fn wait_for_leader(cluster: &LocalCluster) -> Option<u64> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(leader) = cluster.leader() {
            return Some(leader);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(LEADER_POLL_INTERVAL).await;
    }
}

fn print_summary(
    router: &RunningRouter,
    clusters: &[LocalCluster],
    leaders: &[Option<u64>],
    args: &DevArgs,
    resumed: bool,
) {
    let how = if resumed {
        "resumed from"
    } else {
        "new, data in"
    };
    println!(
        "aspen dev: region {DEV_REGION:?}, {} clusters of {} node(s) behind one router ({how} {})",
        clusters.len(),
        args.nodes,
        args.data_dir.display()
    );
    println!("  router  {}", router.url());
    for (((name, prefix), cluster), leader) in DEV_CLUSTERS.iter().zip(clusters).zip(leaders) {
        println!(
            "  cluster {name} owns keys under {prefix:?}{}",
            if prefix.is_empty() {
                " (every key no other route owns)"
            } else {
                ""
            }
        );
        for id in cluster.running() {
            let Some(node) = cluster.node(id) else {
                continue;
            };
            let addrs: Vec<String> = node.iroh_addrs().iter().map(|a| a.to_string()).collect();
            let endpoint_id = node.endpoint_id().to_string();
            let mark = if *leader == Some(id) {
                "  (leader)"
            } else {
                ""
            };
            println!(
                "    node {id}  {:<24} iroh {} at {}{mark}",
                cluster.url(id),
                short(&endpoint_id, 10),
                addrs.join(",")
            );
        }
        if leader.is_none() {
            println!(
                "    no leader yet after {} s; writes will wait for one (see the logs)",
                LEADER_WAIT.as_secs()
            );
        }
    }
    print_curl_lines(&router.url());
    println!("\nPress Ctrl-C to stop.");
}

fn print_curl_lines(url: &str) {
    println!("\nTry it (or use `aspen kv ... --endpoint {url}`):");
    println!("  curl -X PUT --data-binary hello {url}/v1/kv/greeting");
    println!("  curl {url}/v1/kv/greeting");
    println!("  curl '{url}/v1/kv/gr?prefix=true&limit=10'");
    println!(
        "  curl -X POST {url}/v1/cas -d '{{\"key\":\"greeting\",\"expected\":\"hello\",\"new_value\":\"hi\"}}'"
    );
    println!(
        "  curl -X POST {url}/v1/txn -d '{{\"preconditions\":[{{\"key\":\"greeting\",\"equals\":\"hi\"}}],\"writes\":[{{\"key\":\"owner\",\"value\":\"me\"}}]}}'"
    );
    println!("  curl -X PUT --data-binary 8080 {url}/v1/kv/svc-b/port   # lands in us-2");
    println!("  curl '{url}/v1/routes?key=svc-b/port'");
    println!("  curl {url}/v1/status");
}
