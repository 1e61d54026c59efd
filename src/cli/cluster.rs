//! `aspen cluster`: a node's view of its cluster (`status`) and membership changes
//! (`init`, `add-learner`, `promote`, `remove`). Membership changes are forwarded to the
//! leader by the node, so any member's endpoint will do. Output is a table of members, or
//! with `--json` the API's answer. `init --wait SECS --ok-if-initialized` waits for a
//! node that is still starting and leaves an initialized cluster alone, so a deployment
//! (a compose project's init job, a systemd oneshot) can run it on every start.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use aspen_api::admin::{
    AddLearnerRequest, InitRequest, MemberStatus, MembershipResponse, NodeStatus, RouterStatus,
};
use aspen_api::client::AnyStatus;
use aspen_api::{AspenClient, ClientError};
use clap::{Args, Subcommand};
use tokio::time::Instant;

use super::endpoint::{explain, EndpointArgs};
use super::parse;
use super::render;

/// Characters of an endpoint id shown in tables; enough to tell members apart.
const SHORT_ID_CHARS: usize = 10;

/// Longest `init --wait`, in seconds: a node that has not come up within 10 minutes of
/// its init job will not come up by waiting longer; a container or unit starting on a
/// slow, busy host needs well under a minute.
const MAX_INIT_WAIT_SECS: u64 = 600;

/// Default of `add-learner --wait`, in seconds: time for a snapshot of several gigabytes
/// to reach a new node over a LAN, with margin.
const DEFAULT_LEARNER_WAIT_SECS: u64 = 3_600;

/// Pause between the `add-learner` requests that wait for a learner (each of which waits
/// up to a few seconds on the leader).
const LEARNER_POLL_PAUSE: Duration = Duration::from_millis(250);

/// How often `init --wait` asks again whether the node answers.
const INIT_POLL_INTERVAL: Duration = Duration::from_millis(250);

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
        /// Wait up to this many seconds for the node to answer (it may still be
        /// starting, as in a container started at the same time), instead of failing
        /// at once when nothing listens.
        #[arg(long, value_name = "SECS", default_value_t = 0,
              value_parser = clap::value_parser!(u64).range(0..=MAX_INIT_WAIT_SECS))]
        wait: u64,
        /// Succeed without changing anything when the cluster is already initialized,
        /// so a deployment can run the same init job on every start.
        #[arg(long)]
        ok_if_initialized: bool,
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
        /// How long to wait, in seconds, for the learner to catch up (hold the log up to
        /// the leader's index when it was added: a snapshot of a large cluster takes
        /// minutes), showing its progress on a terminal; it fails if the learner has not
        /// caught up by then (it stays a learner). 0 answers once it is added. Promote a
        /// learner only once it has caught up.
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LEARNER_WAIT_SECS)]
        wait: u64,
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
        ClusterCommand::Init {
            members,
            wait,
            ok_if_initialized,
        } => {
            if wait > 0 || ok_if_initialized {
                let deadline = Instant::now() + Duration::from_secs(wait);
                let status = status_when_up(&client, deadline)
                    .await
                    .map_err(|e| explain(e, &client))?;
                if ok_if_initialized && status.initialized {
                    let note = format!(
                        "cluster {:?} is already initialized; nothing changed",
                        status.cluster
                    );
                    // stdout carries only the JSON answer with --json.
                    if args.json {
                        eprintln!("{note}");
                    } else {
                        println!("{note}");
                    }
                    return finish_membership(
                        MembershipResponse {
                            members: status.members,
                        },
                        args.json,
                    );
                }
            }
            client.cluster_init(&InitRequest { members }).await
        }
        ClusterCommand::AddLearner {
            node_id,
            endpoint_id,
            addrs,
            wait,
        } => {
            let request = AddLearnerRequest {
                node_id,
                endpoint_id,
                addrs: addrs.iter().map(SocketAddr::to_string).collect(),
            };
            let answer = add_learner(&client, &request, Duration::from_secs(wait))
                .await
                .map_err(|e| match e.downcast::<ClientError>() {
                    Ok(e) => explain(e, &client),
                    Err(e) => e,
                })?;
            return finish_membership(answer, args.json);
        }
        ClusterCommand::Promote { node_id } => client.cluster_promote(node_id).await,
        ClusterCommand::Remove { node_id } => client.cluster_remove(node_id).await,
    };
    let answer = answer.map_err(|e| explain(e, &client))?;
    finish_membership(answer, args.json)
}

/// Adds the learner, then asks again (adding the same learner again changes nothing; the
/// leader waits a few seconds for it each time) until its matched index reaches the
/// highest index in the first answer, the leader's own log, or `wait` has passed.
async fn add_learner(
    client: &AspenClient,
    request: &AddLearnerRequest,
    wait: Duration,
) -> anyhow::Result<MembershipResponse> {
    let matched = |answer: &MembershipResponse| {
        answer
            .members
            .iter()
            .find(|m| m.node_id == request.node_id)
            .and_then(|m| m.matched_index)
            .unwrap_or(0)
    };
    let mut answer = client.cluster_add_learner(request).await?;
    // The leader's own entry is the highest; none at all only from a node that is not
    // the leader, which does not happen (the change is made by the leader).
    let Some(target) = answer.members.iter().filter_map(|m| m.matched_index).max() else {
        return Ok(answer);
    };
    if wait.is_zero() || matched(&answer) >= target {
        return Ok(answer);
    }
    let progress = indicatif::ProgressBar::new(target);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "node {msg} catching up: log index {pos}/{len} [{bar:30}] {elapsed}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    progress.set_message(request.node_id.to_string());
    let start = Instant::now();
    while matched(&answer) < target {
        progress.set_position(matched(&answer));
        if start.elapsed() >= wait {
            progress.abandon();
            anyhow::bail!(
                "node {} is a learner but has not caught up within {}s (log index {} of {target}); \
                 it goes on receiving the log (or a snapshot): see `aspen cluster status` on the \
                 leader, and promote it only once its matched index reaches the leader's",
                request.node_id,
                wait.as_secs(),
                matched(&answer)
            );
        }
        tokio::time::sleep(LEARNER_POLL_PAUSE).await;
        answer = client.cluster_add_learner(request).await?;
    }
    progress.finish_and_clear();
    Ok(answer)
}

/// Prints the membership a change left (a table, or with `--json` the API's answer).
fn finish_membership(answer: MembershipResponse, json: bool) -> anyhow::Result<ExitCode> {
    if json {
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

/// The node's status, asking again while nothing listens at its address until
/// `deadline`: a node started at the same moment as its init job binds its port a little
/// later.
async fn status_when_up(
    client: &AspenClient,
    deadline: Instant,
) -> Result<NodeStatus, ClientError> {
    loop {
        match client.status().await {
            Err(ClientError::Transport { source, .. })
                if source.is_connect() && Instant::now() + INIT_POLL_INTERVAL < deadline =>
            {
                tokio::time::sleep(INIT_POLL_INTERVAL).await;
            }
            other => return other,
        }
    }
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
