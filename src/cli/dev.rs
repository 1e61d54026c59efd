//! `aspen dev`: DESIGN's whole topology in this process, for development: region `us`
//! (clusters `us-1`, every key no other route owns, and `us-2`, keys under `svc-b/`) with
//! its router on `--http`, region `eu` (cluster `eu-1`, keys under `eu/`) with its router
//! on the next port, and federation both ways: `us-1` and `us-2` replicate to `eu`, `eu-1`
//! to `us` (see [`aspen::topology`]). Data lives under `--data-dir` and is resumed when the
//! directory already holds it. It waits a bounded time for leaders, prints what it started
//! and a few ready-to-paste curl lines, and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aspen::topology::{Topology, TopologySpec};
use aspen_cluster_node::local_cluster::{node_dir, LocalCluster};
use clap::Args;
use tokio::time::Instant;

use super::render::short;
use super::signal::shutdown_requested;

/// Most nodes `aspen dev` starts per cluster: 7 voters tolerate 3 failures, and more nodes
/// in one process only slow a laptop down without teaching anything new.
const MAX_DEV_NODES: u8 = 7;

/// How long to wait for the first leader before printing the nodes anyway. An election
/// on loopback takes well under a second; 10 s covers a slow, loaded machine.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How often to look for a leader while waiting.
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Arguments of `aspen dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for every node's data (us-1/node-1, ..., eu-1/node-3) and each cluster's
    /// federation secret. Running again with the same directory resumes everything.
    #[arg(long, value_name = "DIR", default_value = "./aspen-dev-data")]
    data_dir: PathBuf,
    /// HTTP address of region us's router; region eu's router takes the next port. Node 1
    /// of us-1, us-2 and eu-1 serves on this port + 31, + 131 and + 231; the other nodes
    /// take free ports on loopback.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    http: SocketAddr,
    /// Number of nodes in each cluster (1 to 7).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(1..=MAX_DEV_NODES as i64))]
    nodes: u8,
}

/// Runs the dev topology until a signal asks it to stop.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    if node_dir(&args.data_dir, 1).is_dir() {
        anyhow::bail!(
            "{} holds a single-cluster dev setup from an earlier version of aspen dev; pick \
             another --data-dir (or remove it) to start the federated setup",
            args.data_dir.display()
        );
    }
    let spec = TopologySpec::design(&args.data_dir, args.http, usize::from(args.nodes));
    let mut resumed = false;
    for region in &spec.regions {
        check_port_free(region.router_http).await?;
        for cluster in &region.clusters {
            check_port_free(cluster.first_http).await?;
            let existing = existing_nodes(&args.data_dir.join(&cluster.name));
            if existing > 0 && existing != usize::from(args.nodes) {
                anyhow::bail!(
                    "{} holds the data of a {existing}-node cluster {}; run with --nodes \
                     {existing}, or pick another --data-dir to start anew",
                    args.data_dir.display(),
                    cluster.name
                );
            }
            resumed |= existing > 0;
        }
    }
    let topology = Topology::start(spec)
        .await
        .context("cannot start the dev topology")?;
    let mut leaders = Vec::new();
    for (_, _, cluster) in topology.clusters() {
        leaders.push(wait_for_leader(cluster).await);
    }
    print_summary(&topology, &leaders, &args, resumed);
    let signal = shutdown_requested().await;
    match &signal {
        Ok(name) => println!("{name} received; stopping the routers and clusters"),
        Err(e) => tracing::warn!("cannot wait for signals ({e}); stopping"),
    }
    topology.shutdown().await;
    signal.map(|_| ExitCode::SUCCESS)
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
            let suggestion = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1000));
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

fn print_summary(topology: &Topology, leaders: &[Option<u64>], args: &DevArgs, resumed: bool) {
    let how = if resumed {
        "resumed from"
    } else {
        "new, data in"
    };
    let spec = topology.spec();
    println!(
        "aspen dev: {} regions, {} clusters of {} node(s), federated both ways ({how} {})",
        spec.regions.len(),
        topology.clusters().len(),
        args.nodes,
        args.data_dir.display()
    );
    let mut leaders = leaders.iter();
    for region in &spec.regions {
        let router = topology.router(&region.name);
        println!("\nregion {}  router {}", region.name, router.url());
        for cluster_spec in &region.clusters {
            let cluster = topology.cluster(&cluster_spec.name);
            let leader = leaders.next().copied().flatten();
            let prefixes: Vec<String> = cluster_spec
                .routes
                .iter()
                .map(|p| {
                    if p.is_empty() {
                        "\"\" (every key no other route owns)".to_string()
                    } else {
                        format!("{p:?}")
                    }
                })
                .collect();
            println!(
                "  cluster {} owns {}",
                cluster_spec.name,
                prefixes.join(", ")
            );
            print_nodes(cluster, leader);
        }
    }
    println!(
        "\nfederation: each region keeps a read-only replica of every other region's clusters"
    );
    for region in &spec.regions {
        let names: Vec<&str> = region.clusters.iter().map(|c| c.name.as_str()).collect();
        let others: Vec<&str> = spec
            .regions
            .iter()
            .filter(|r| r.name != region.name)
            .map(|r| r.name.as_str())
            .collect();
        println!("  {} replicate to {}", names.join(", "), others.join(", "));
    }
    let us = topology.router("us").url();
    let eu = topology.router("eu").url();
    print_curl_lines(&us, &eu);
    println!(
        "\nThis is plain HTTP with no tokens, for loopback. On a network, give each node and \
         router\n  [tls] (cert_file, key_file, optional client_ca_file) and [auth] tokens \
         (`aspen token new --name NAME --write PREFIX`);\n  see docs/OPERATIONS.md, \
         \"Security\"."
    );
    println!("\nPress Ctrl-C to stop.");
}

fn print_nodes(cluster: &LocalCluster, leader: Option<u64>) {
    for id in cluster.running() {
        let Some(node) = cluster.node(id) else {
            continue;
        };
        let addrs: Vec<String> = node.iroh_addrs().iter().map(|a| a.to_string()).collect();
        let endpoint_id = node.endpoint_id().to_string();
        let mark = if leader == Some(id) { "  (leader)" } else { "" };
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

fn print_curl_lines(us: &str, eu: &str) {
    println!("\nTry it (or use `aspen kv ... --endpoint {us}`):");
    println!("  curl -X PUT --data-binary hello {us}/v1/kv/greeting");
    println!("  curl {us}/v1/kv/greeting");
    println!("  curl '{us}/v1/kv/gr?prefix=true&limit=10'");
    println!(
        "  curl -X POST {us}/v1/cas -d '{{\"key\":\"greeting\",\"expected\":\"hello\",\"new_value\":\"hi\"}}'"
    );
    println!("  curl -X PUT --data-binary 8080 {us}/v1/kv/svc-b/port   # lands in us-2");
    println!("  curl '{us}/v1/routes?key=svc-b/port'");
    println!("Across regions:");
    println!("  curl -i '{eu}/v1/kv/greeting?consistency=stale'        # eu's replica of us-1, with its lag");
    println!("  curl '{eu}/v1/kv/greeting?consistency=stale&max_lag=2s'");
    println!("  curl -X PUT --data-binary bonjour {eu}/v1/kv/eu/greeting  # eu-1 owns eu/");
    println!("  curl -X PUT --data-binary hola {eu}/v1/kv/greeting     # goes to the owner, us-1");
    println!("  curl {us}/v1/status                                    # leaders and replica lag");
}
