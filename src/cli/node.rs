//! `aspen node --config FILE`: run one cluster member. Loads and validates the config,
//! binds the HTTP listener and the iroh endpoint (so a taken port fails before anything
//! starts), starts the node, prints one line saying who and where it is, and runs until
//! Ctrl-C or SIGTERM, then (a leader first handing its leadership to another member)
//! shuts down HTTP, Raft and iroh in order.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use aspen_cluster_node::handoff::HandOff;
use aspen_cluster_node::node::{bind, Node};
use aspen_config::NodeConfig;
use clap::Args;

use super::signal::shutdown_requested;

/// Arguments of `aspen node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's TOML config file (see config/examples/node.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs the node until a signal asks it to stop.
pub async fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    // ConfigError's message already names the file, the field and the fix.
    let config = NodeConfig::load(&args.config)?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {} (set `http_addr` in {})",
                config.http_addr,
                args.config.display()
            )
        })?;
    // Bound after the HTTP listener: a taken port is the likelier failure, and an iroh
    // endpoint dropped without being closed logs an error.
    let endpoint = bind(&config)
        .await
        .context("cannot start the iroh endpoint")?;
    let (node_id, cluster) = (config.node_id, config.cluster.clone());
    let node = Node::start(config, endpoint, listener)
        .await
        .context("cannot start the node")?;
    let iroh_addrs: Vec<String> = node.iroh_addrs().iter().map(|a| a.to_string()).collect();
    println!(
        "aspen node {node_id} of cluster {cluster:?}: endpoint id {}, iroh {}, HTTP http://{}",
        node.endpoint_id(),
        iroh_addrs.join(","),
        node.http_addr()
    );
    if let Ok(false) = node.raft().is_initialized().await {
        println!(
            "the cluster is not initialized yet; once every member runs, initialize it once with \
             `aspen cluster init --endpoint http://{}`",
            node.http_addr()
        );
    }
    let signal = shutdown_requested().await?;
    tracing::info!("{signal} received; shutting down");
    // A leader hands over first, so a rolling restart fails no request (see
    // aspen_cluster_node::handoff).
    match node.service.hand_off_leadership().await {
        HandOff::NotLeader => {}
        HandOff::To(leader) => tracing::info!("leadership handed over to node {leader}"),
        other => tracing::warn!("leadership not handed over: {other:?}; stopping anyway"),
    }
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
