//! `aspen soak`: the long form of the CI linearizability test. Starts a 3-node cluster in
//! this process (real iroh endpoints on loopback, real SQLite files), drives a recorded
//! random workload against all three nodes while rounds of faults run (leader killed and
//! restarted, leader cut off and healed, follower killed and restarted), then checks the
//! whole history for linearizability and prints the verdict.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aspen_checker::workload::{self, WorkloadSpec, MAX_WORKLOAD_CLIENTS};
use aspen_checker::{check, CheckLimits, Verdict};
use aspen_cluster_node::faults::fault_round;
use aspen_cluster_node::local_cluster::{LocalCluster, LocalClusterSpec};
use aspen_config::RaftConfig;
use clap::Args;

/// Arguments of `aspen soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long the workload runs, in seconds; fault rounds repeat until it ends.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(5..=86_400))]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys the clients share (few keys: more contention, more chances to catch a bug).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    keys: u64,
    /// How long each fault lasts before it is repaired, in milliseconds.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    fault_ms: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the nodes keep their data (default: a new directory under the system temp
    /// dir, deleted afterwards).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Runs the soak and prints the verdict; exit 1 when the history is not linearizable.
pub async fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.clients > MAX_WORKLOAD_CLIENTS {
        anyhow::bail!(
            "--clients must be 1 to {MAX_WORKLOAD_CLIENTS}, not {}",
            args.clients
        );
    }
    let (data_dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("aspen-soak-{}", std::process::id())),
            true,
        ),
    };
    let spec = LocalClusterSpec {
        cluster: "soak".into(),
        data_dir: data_dir.clone(),
        nodes: 3,
        first_http: "127.0.0.1:0".parse().expect("valid address"),
        raft: RaftConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            ..RaftConfig::default()
        },
        kv_clients: Vec::new(),
    };
    let mut cluster = LocalCluster::start(spec)
        .await
        .context("cannot start the cluster")?;
    let duration = Duration::from_secs(args.duration);
    let workload = WorkloadSpec {
        endpoints: (1..=3).map(|id| cluster.url(id)).collect(),
        clients: args.clients,
        keys: args.keys as usize,
        key_prefixes: Vec::new(),
        duration,
        request_timeout: Duration::from_secs(15),
        seed: args.seed,
    };
    println!(
        "soak: {} clients on {} keys for {} s, faults of {} ms, data in {}",
        args.clients,
        args.keys,
        args.duration,
        args.fault_ms,
        data_dir.display()
    );
    let run = tokio::spawn(async move { workload::run(&workload).await });
    let end = tokio::time::Instant::now() + duration;
    let mut rounds = 0;
    while tokio::time::Instant::now() < end {
        let log = fault_round(&mut cluster, Duration::from_millis(args.fault_ms)).await?;
        rounds += 1;
        println!("fault round {rounds}: {}", log.join(", "));
    }
    let (history, stats) = run.await.context("workload task")??;
    cluster.shutdown().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!(
        "recorded {} operations ({} with known outcome, {} unknown; {} refused, not recorded)",
        history.len(),
        stats.ok,
        stats.unknown,
        stats.refused
    );
    match check(&history, &CheckLimits::default()) {
        Verdict::Linearizable { ops_checked, keys } => {
            println!("verdict: linearizable ({ops_checked} operations on {keys} keys checked)");
            Ok(ExitCode::SUCCESS)
        }
        Verdict::NotLinearizable {
            key,
            ops_checked,
            explanation,
        } => {
            println!(
                "verdict: NOT linearizable on key {key} ({ops_checked} operations)\n{explanation}"
            );
            Ok(ExitCode::FAILURE)
        }
        Verdict::Unknown { key, reason } => {
            println!("verdict: undecided on key {key}: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}
