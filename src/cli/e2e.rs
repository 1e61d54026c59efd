//! `aspen e2e` (hidden from `--help`; deploy/README.md documents it): the checks of a
//! deployment's end-to-end test, run from outside against its routers' HTTP APIs while a
//! script (deploy/e2e.sh) injects faults into the containers.
//!
//! - `wait-ready`: wait until every router answers and sees every cluster healthy with a
//!   leader; print how long that took.
//! - `leader`: print the node id of a cluster's leader, as a router sees it, so the
//!   script knows which container to kill (and, with `--other-than`, that the cluster
//!   elected another once it was gone).
//! - `run`: drive a recorded workload through every router for a fixed time (the
//!   checker's random single-key operations, plus a ledger of unique writes), then check
//!   that the history is linearizable per key ([`aspen_checker::check`]), that every
//!   acknowledged ledger write is present ([`ledger`]), and that every federation replica
//!   on every node equals its owner's data ([`replicas`]); print the verdict with counts.
//!   Exit 1 if any check fails.

mod ledger;
mod replicas;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aspen_api::admin::RouterStatus;
use aspen_api::client::AnyStatus;
use aspen_api::AspenClient;
use aspen_checker::workload::{self, WorkloadSpec, MAX_WORKLOAD_CLIENTS};
use aspen_checker::{check, CheckLimits, Verdict};
use aspen_config::RouterConfig;
use clap::{Args, Subcommand};
use tokio::time::Instant;

/// Longest `--timeout` of `wait-ready` and `leader`, and longest `--converge-timeout` of
/// `run`, in seconds: a deployment that is not ready, or a replica not converged, an hour
/// after being asked is broken, and a test must end.
const MAX_WAIT_SECS: u64 = 3_600;

/// Longest workload, in seconds: a day, as `aspen soak`; the history of a longer run
/// would not fit the checker's bound on recorded operations anyway.
const MAX_RUN_SECS: u64 = 86_400;

/// How long one workload request may take before it is recorded with an unknown outcome:
/// above a router's default request deadline (10 s), so the router answers
/// `cluster_unavailable` (nothing applied) before the client gives up on a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How often `wait-ready` and `leader` ask the routers again.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long one status request of `wait-ready` and `leader` may take: a router answers
/// its status from each cluster's first answering node, within a few seconds even with
/// one node down.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Arguments of `aspen e2e`.
#[derive(Debug, Args)]
pub struct E2eArgs {
    #[command(subcommand)]
    command: E2eCommand,
}

#[derive(Debug, Subcommand)]
enum E2eCommand {
    /// Wait until every router answers and reports every cluster healthy with a leader.
    WaitReady {
        /// A router's HTTP API (repeat for each router).
        #[arg(long = "endpoint", value_name = "URL", required = true)]
        endpoints: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 120,
              value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
        timeout: u64,
    },
    /// Print the node id of a cluster's leader, as a router sees it.
    Leader {
        /// A router's HTTP API.
        #[arg(long, value_name = "URL")]
        endpoint: String,
        /// The cluster's name.
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// Wait for a leader other than this node (one just killed or cut off), so the
        /// test knows the cluster noticed the fault.
        #[arg(long, value_name = "N")]
        other_than: Option<u64>,
        /// Give up after this many seconds without a (fitting) leader.
        #[arg(long, value_name = "SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
        timeout: u64,
    },
    /// Drive a recorded workload through the routers, then check it and every replica.
    Run(RunArgs),
}

/// Arguments of `aspen e2e run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// A router's HTTP API (repeat for each router; clients are spread over them and move
    /// to the next when one refuses connections).
    #[arg(long = "endpoint", value_name = "URL", required = true)]
    endpoints: Vec<String>,
    /// A key prefix to write under (repeat); give one per cluster so every cluster takes
    /// load, e.g. `e2e/`, `svc-b/e2e/`, `eu/e2e/` for the design's route table. Each run
    /// writes under a `run-ID/` of its own below each prefix, so runs do not meet.
    #[arg(long = "prefix", value_name = "PREFIX", required = true)]
    prefixes: Vec<String>,
    /// How long the workload runs, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(5..=MAX_RUN_SECS))]
    duration: u64,
    /// Concurrent clients of the single-key workload.
    #[arg(long, default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WORKLOAD_CLIENTS as u64))]
    clients: u64,
    /// Keys the single-key workload shares, spread over the prefixes.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    keys: u64,
    /// Concurrent ledger writers (each writes new keys, one at a time).
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=ledger::MAX_LEDGER_WRITERS as u64))]
    writers: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A router's config file (repeat, one per region): the regions, clusters and node
    /// addresses whose replicas are compared with their owners, node by node. Without
    /// it, replicas are not checked.
    #[arg(long = "router-config", value_name = "FILE", requires = "identity")]
    router_configs: Vec<PathBuf>,
    /// The iroh identity (secret key file) to read replicas with: every node must list
    /// its endpoint id in `kv_clients`.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// How long replicas may take to equal their owners after the workload ends.
    #[arg(long, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=MAX_WAIT_SECS))]
    converge_timeout: u64,
}

/// Runs one `aspen e2e` command.
pub async fn run(args: E2eArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        E2eCommand::WaitReady { endpoints, timeout } => wait_ready(&endpoints, timeout).await,
        E2eCommand::Leader {
            endpoint,
            cluster,
            other_than,
            timeout,
        } => leader(&endpoint, &cluster, other_than, timeout).await,
        E2eCommand::Run(args) => run_checked(args).await,
    }
}

/// A router's status, or why there is none.
async fn router_status(client: &AspenClient) -> Result<RouterStatus, String> {
    match client.any_status().await {
        Ok(AnyStatus::Router(status)) => Ok(status),
        Ok(AnyStatus::Node(_)) => Err(format!(
            "{} is a node, not a router; give routers' endpoints",
            client.endpoint()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Why `status` is not ready yet, or `None` when every cluster is healthy with a leader.
fn not_ready(status: &RouterStatus) -> Option<String> {
    if status.clusters.is_empty() {
        return Some("the router lists no clusters".into());
    }
    let waiting: Vec<String> = status
        .clusters
        .iter()
        .filter(|c| !c.healthy || c.leader.is_none())
        .map(|c| match &c.error {
            Some(error) => format!("{}: {error}", c.name),
            None => format!("{}: no leader yet", c.name),
        })
        .collect();
    (!waiting.is_empty()).then(|| waiting.join("; "))
}

async fn wait_ready(endpoints: &[String], timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout_secs);
    let clients: Vec<AspenClient> = endpoints
        .iter()
        .map(|e| AspenClient::with_timeout(e, STATUS_TIMEOUT))
        .collect();
    let mut pending: Vec<usize> = (0..clients.len()).collect();
    let mut last = String::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            match router_status(&clients[i]).await {
                Ok(status) => {
                    if let Some(why) = not_ready(&status) {
                        last = format!("{}: {why}", endpoints[i]);
                        still.push(i);
                    }
                }
                Err(e) => {
                    last = e;
                    still.push(i);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            anyhow::bail!("not ready after {timeout_secs} s: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    println!(
        "ready after {:.1} s: {} router(s) see every cluster with a leader",
        start.elapsed().as_secs_f64(),
        endpoints.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn leader(
    endpoint: &str,
    cluster: &str,
    other_than: Option<u64>,
    timeout_secs: u64,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let client = AspenClient::with_timeout(endpoint, STATUS_TIMEOUT);
    let mut last;
    loop {
        last = match router_status(&client).await {
            Ok(status) => match status.clusters.iter().find(|c| c.name == cluster) {
                None => anyhow::bail!(
                    "the router at {endpoint} has no cluster {cluster:?}; it has {}",
                    status
                        .clusters
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(c) => match c.leader {
                    Some(id) if Some(id) != other_than => {
                        println!("{id}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some(id) => format!("node {id} still leads"),
                    None => c.error.clone().unwrap_or_else(|| "no leader known".into()),
                },
            },
            Err(e) => e,
        };
        if Instant::now() + POLL_INTERVAL > deadline {
            anyhow::bail!("no leader of {cluster} after {timeout_secs} s: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs the workload and the ledger together, then every check; prints the verdict.
async fn run_checked(args: RunArgs) -> anyhow::Result<ExitCode> {
    let configs = args
        .router_configs
        .iter()
        .map(|path| RouterConfig::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let duration = Duration::from_secs(args.duration);
    // Each run writes under prefixes of its own: the checker assumes every key starts
    // absent, and the ledger must not count an earlier run's keys.
    let run_id = format!(
        "run-{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let prefixes: Vec<String> = args
        .prefixes
        .iter()
        .map(|p| format!("{p}{run_id}/"))
        .collect();
    let spec = WorkloadSpec {
        endpoints: args.endpoints.clone(),
        clients: args.clients as usize,
        keys: args.keys as usize,
        key_prefixes: prefixes.clone(),
        duration,
        request_timeout: REQUEST_TIMEOUT,
        seed: args.seed,
    };
    println!(
        "e2e: {} s through {}: {} clients on {} keys and {} ledger writers under {}",
        args.duration,
        args.endpoints.join(", "),
        args.clients,
        args.keys,
        args.writers,
        prefixes.join(", ")
    );
    let ledger_spec = ledger::LedgerSpec {
        endpoints: args.endpoints.clone(),
        prefixes: prefixes.clone(),
        writers: args.writers as usize,
        duration,
        request_timeout: REQUEST_TIMEOUT,
    };
    let workload = tokio::spawn(async move { workload::run(&spec).await });
    let ledger = tokio::spawn(async move { ledger::write(&ledger_spec).await });
    let (history, stats) = workload.await.context("workload task")??;
    let ledger = ledger.await.context("ledger task")?;
    println!(
        "history: {} operations recorded ({} with known outcome, {} unknown); {} refused \
         with nothing applied, not recorded",
        history.len(),
        stats.ok,
        stats.unknown,
        stats.refused
    );
    let mut failed = false;
    match check(&history, &CheckLimits::default()) {
        Verdict::Linearizable { ops_checked, keys } => {
            println!("linearizability: PASS ({ops_checked} operations on {keys} keys)")
        }
        Verdict::NotLinearizable {
            key,
            ops_checked,
            explanation,
        } => {
            failed = true;
            println!(
                "linearizability: FAIL on key {key} ({ops_checked} operations)\n{explanation}"
            );
        }
        Verdict::Unknown { key, reason } => {
            failed = true;
            println!("linearizability: UNDECIDED on key {key}: {reason}");
        }
    }
    if failed {
        let path = std::env::temp_dir().join(format!("aspen-e2e-{run_id}-history.json"));
        match serde_json::to_vec(&history).map(|json| std::fs::write(&path, json)) {
            Ok(Ok(())) => println!("the history is saved in {}", path.display()),
            Ok(Err(e)) => println!("cannot save the history in {}: {e}", path.display()),
            Err(e) => println!("cannot serialize the history: {e}"),
        }
    }
    let reader = AspenClient::with_timeout(&args.endpoints[0], REQUEST_TIMEOUT);
    let lost = ledger::verify(&ledger, &reader, &prefixes).await?;
    println!("ledger: {}", lost.summary());
    failed |= !lost.passed();
    if configs.is_empty() {
        println!("replicas: not checked (no --router-config)");
    } else {
        let identity = args.identity.as_deref().context("--identity is required")?;
        let outcome = replicas::compare(
            &configs,
            identity,
            &reader,
            Duration::from_secs(args.converge_timeout),
        )
        .await?;
        println!("replicas: {}", outcome.summary());
        failed |= !outcome.passed();
    }
    println!("verdict: {}", if failed { "FAIL" } else { "PASS" });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_api::admin::ClusterHealth;

    fn health(name: &str, healthy: bool, leader: Option<u64>) -> ClusterHealth {
        ClusterHealth {
            name: name.into(),
            region: "us".into(),
            healthy,
            leader,
            term: leader.map(|_| 1),
            applied_revision: Some(0),
            error: None,
        }
    }

    fn status(clusters: Vec<ClusterHealth>) -> RouterStatus {
        RouterStatus {
            role: "router".into(),
            region: "us".into(),
            clusters,
            replicas: Vec::new(),
        }
    }

    #[test]
    fn ready_only_when_every_cluster_is_healthy_with_a_leader() {
        assert_eq!(
            not_ready(&status(vec![
                health("us-1", true, Some(1)),
                health("us-2", true, Some(3))
            ])),
            None
        );
        let why = not_ready(&status(vec![
            health("us-1", true, Some(1)),
            health("us-2", false, None),
        ]))
        .expect("us-2 has no leader");
        assert!(why.contains("us-2") && !why.contains("us-1"), "{why}");
        assert!(not_ready(&status(Vec::new())).is_some());
    }
}
