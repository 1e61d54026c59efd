//! `aspen dev`: a whole cluster in this process, for development. Starts a
//! [`LocalCluster`] named `dev` with its data under `--data-dir` (resuming when the
//! directory already holds a cluster), waits a bounded time for a leader, prints the
//! nodes and a few ready-to-paste curl lines, and runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aspen_cluster_node::local_cluster::{node_dir, LocalCluster, LocalClusterSpec};
use aspen_config::RaftConfig;
use clap::Args;
use tokio::time::Instant;

use super::render::short;
use super::signal::shutdown_requested;

/// Name of the dev cluster, as reported in every answer.
const DEV_CLUSTER_NAME: &str = "dev";

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
    /// Directory for every node's data (node-1, node-2, ...). Running again with the same
    /// directory resumes the cluster with its data.
    #[arg(long, value_name = "DIR", default_value = "./aspen-dev-data")]
    data_dir: PathBuf,
    /// HTTP address of node 1; the other nodes take free ports on loopback.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    http: SocketAddr,
    /// Number of nodes in the cluster (1 to 7).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(1..=MAX_DEV_NODES as i64))]
    nodes: u8,
}

/// Runs the dev cluster until a signal asks it to stop.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let existing = existing_nodes(&args.data_dir);
    if existing > 0 && existing != usize::from(args.nodes) {
        anyhow::bail!(
            "{} holds the data of a {existing}-node cluster; run with --nodes {existing}, or pick \
             another --data-dir to start a new cluster",
            args.data_dir.display()
        );
    }
    check_port_free(args.http).await?;
    let spec = LocalClusterSpec {
        cluster: DEV_CLUSTER_NAME.to_string(),
        data_dir: args.data_dir.clone(),
        nodes: usize::from(args.nodes),
        first_http: args.http,
        raft: RaftConfig::default(),
    };
    let cluster = LocalCluster::start(spec).await.map_err(|e| {
        let message = e.to_string();
        if message.contains("binding HTTP") {
            anyhow::anyhow!("{message}; choose another address with --http")
        } else {
            anyhow::Error::new(e).context("cannot start the dev cluster")
        }
    })?;
    let leader = wait_for_leader(&cluster).await;
    print_summary(&cluster, &args, existing > 0, leader);
    let signal = shutdown_requested().await;
    match &signal {
        Ok(name) => println!("{name} received; stopping the dev cluster"),
        Err(e) => tracing::warn!("cannot wait for signals ({e}); stopping"),
    }
    cluster.shutdown().await;
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

fn print_summary(cluster: &LocalCluster, args: &DevArgs, resumed: bool, leader: Option<u64>) {
    let how = if resumed {
        "resumed from"
    } else {
        "new, data in"
    };
    println!(
        "aspen dev: cluster {DEV_CLUSTER_NAME:?} with {} node(s) ({how} {})",
        args.nodes,
        args.data_dir.display()
    );
    for id in cluster.running() {
        let Some(node) = cluster.node(id) else {
            continue;
        };
        let addrs: Vec<String> = node.iroh_addrs().iter().map(|a| a.to_string()).collect();
        let endpoint_id = node.endpoint_id().to_string();
        let mark = if leader == Some(id) { "  (leader)" } else { "" };
        println!(
            "  node {id}  {:<24} iroh {} at {}{mark}",
            cluster.url(id),
            short(&endpoint_id, 10),
            addrs.join(",")
        );
    }
    match leader {
        Some(leader) => println!("leader: node {leader}"),
        None => println!(
            "no leader yet after {} s; writes will wait for one (see the logs)",
            LEADER_WAIT.as_secs()
        ),
    }
    print_curl_lines(&cluster.url(1));
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
    println!("  curl {url}/v1/status");
}
