//! `aspen cluster`: a node's view of its cluster (`status`) and membership changes
//! (`init`, `add-learner`, `promote`, `remove`). Membership changes are forwarded to the
//! leader by the node, so any member's endpoint will do. Output is a table of members, or
//! with `--json` the API's answer.

use std::net::SocketAddr;
use std::process::ExitCode;

use aspen_api::admin::{AddLearnerRequest, InitRequest, MemberStatus, NodeStatus, RouterStatus};
use aspen_api::client::AnyStatus;
use clap::{Args, Subcommand};

use super::endpoint::{explain, EndpointArgs};
use super::parse;
use super::render;

/// Characters of an endpoint id shown in tables; enough to tell members apart.
const SHORT_ID_CHARS: usize = 10;

/// Arguments of `aspen cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The operation.
    #[command(subcommand)]
    command: ClusterCommand,
}

/// The cluster operations.
#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Show the status: from a node, the members, its Raft state, the leader, term and
    /// applied revision; from a router, every cluster's health, leader, term and revision.
    Status,
    /// Initialize a new cluster once, from this node and its configured peers.
    Init {
        /// Node ids of the first voters, comma-separated; they must include this node and
        /// be configured peers. Default: this node and every configured peer.
        #[arg(long, value_name = "IDS", value_delimiter = ',')]
        members: Vec<u64>,
    },
    /// Add a node as a learner: it receives the log but does not vote yet.
    AddLearner {
        /// The new node's Raft id.
        #[arg(long, value_name = "N")]
        node_id: u64,
        /// The new node's iroh endpoint id (64 hex characters, printed by `aspen node`).
        #[arg(long, value_name = "HEX", value_parser = parse::endpoint_id)]
        endpoint_id: String,
        /// An ip:port of the new node's iroh endpoint (repeatable).
        #[arg(long = "addr", value_name = "IP:PORT", required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's Raft id.
        #[arg(long, value_name = "N")]
        node_id: u64,
    },
    /// Remove a voter or learner from the cluster.
    Remove {
        /// The member's Raft id.
        #[arg(long, value_name = "N")]
        node_id: u64,
    },
}

/// Runs one cluster command.
pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let client = args.endpoint.client()?;
    let answer = match args.command {
        ClusterCommand::Status => {
            let status = client.any_status().await.map_err(|e| explain(e, &client))?;
            match (&status, args.json) {
                (_, true) => render::json(&status)?,
                (AnyStatus::Node(node), false) => print_status(node),
                (AnyStatus::Router(router), false) => print_router_status(router),
            }
            return Ok(ExitCode::SUCCESS);
        }
        ClusterCommand::Init { members } => client.cluster_init(&InitRequest { members }).await,
        ClusterCommand::AddLearner {
            node_id,
            endpoint_id,
            addrs,
        } => {
            let addrs = addrs.iter().map(SocketAddr::to_string).collect();
            client
                .cluster_add_learner(&AddLearnerRequest {
                    node_id,
                    endpoint_id,
                    addrs,
                })
                .await
        }
        ClusterCommand::Promote { node_id } => client.cluster_promote(node_id).await,
        ClusterCommand::Remove { node_id } => client.cluster_remove(node_id).await,
    };
    let answer = answer.map_err(|e| explain(e, &client))?;
    if args.json {
        render::json(&answer)?;
    } else {
        println!("membership is now:");
        print_members(&answer.members);
        if answer.members.is_empty() {
            println!("(the node listed no members yet; see `aspen cluster status`)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &NodeStatus) {
    let leader = status
        .leader
        .map_or_else(|| "none known".to_string(), |l| format!("node {l}"));
    println!(
        "cluster {:?}: this is node {} ({}), leader {leader}, term {}, revision {}, log index applied {} of {}",
        status.cluster, status.node_id, status.raft_state, status.term, status.applied_revision, status.applied_index, status.last_log_index
    );
    if !status.initialized {
        println!("not initialized: run `aspen cluster init` against one member");
        return;
    }
    print_members(&status.members);
}

fn print_router_status(status: &RouterStatus) {
    println!(
        "router in region {:?}, {} cluster(s):",
        status.region,
        status.clusters.len()
    );
    println!(
        "{:<16}  {:<8}  {:<9}  {:>6}  {:>6}  {:>9}",
        "CLUSTER", "REGION", "HEALTH", "LEADER", "TERM", "REVISION"
    );
    let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for c in &status.clusters {
        let health = if c.healthy { "healthy" } else { "unhealthy" };
        println!(
            "{:<16}  {:<8}  {:<9}  {:>6}  {:>6}  {:>9}",
            c.name,
            c.region,
            health,
            or_dash(c.leader),
            or_dash(c.term),
            or_dash(c.applied_revision)
        );
        if let Some(error) = &c.error {
            println!("    {error}");
        }
    }
    println!("(membership changes go to a node: pass --endpoint with a node's HTTP address)");
}

fn print_members(members: &[MemberStatus]) {
    println!(
        "{:>4}  {:<8}  {:<12}  {:<24}  MATCHED INDEX",
        "ID", "ROLE", "ENDPOINT", "ADDRS"
    );
    for m in members {
        let matched = m
            .matched_index
            .map_or_else(|| "-".to_string(), |r| r.to_string());
        println!(
            "{:>4}  {:<8}  {:<12}  {:<24}  {matched}",
            m.node_id,
            m.role,
            render::short(&m.endpoint_id, SHORT_ID_CHARS),
            m.addrs.join(",")
        );
    }
}
