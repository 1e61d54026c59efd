//! The command line of `aspen`: the top-level [`Cli`] with one subcommand per command
//! group, and [`run`], which dispatches to the group's module. Each module owns its
//! arguments (a clap `Args` struct) and its `run` function.
//!
//! # Layout
//!
//! - [`node`]: `aspen node`, one cluster member from a config file.
//! - [`router`]: `aspen router`, a router from a config file (SIGHUP reloads it).
//! - [`dev`]: `aspen dev`, DESIGN's federated topology (two regions, three clusters, two
//!   routers) in one process.
//! - [`federation`]: `aspen federation keygen` and `info`, the values regions exchange.
//! - [`keygen`]: `aspen keygen`, an iroh identity file and its endpoint id.
//! - [`fedbench`]: `aspen bench-federation`, replication lag, catch-up and bootstrap.
//! - [`kv`]: `aspen kv`, reads and writes against a node's HTTP API.
//! - [`lease`]: `aspen lease`, grant, keep alive, inspect and revoke leases.
//! - [`lock`]: `aspen lock`, run a command while holding a lock.
//! - [`cluster`]: `aspen cluster`, status and membership changes.
//! - [`snapshot`]: `aspen snapshot`, back a cluster up to a file and restore it.
//! - [`bench`]: `aspen bench`, a closed-loop load generator.
//! - [`watchbench`]: `aspen bench-watch`, watch delivery latency and what watchers cost
//!   writers, against Aspen or etcd.
//! - [`token`]: `aspen token new`, a bearer token and its `[auth]` entry.
//! - [`soak`]: `aspen soak`, a long linearizability check under injected faults.
//! - [`e2e`]: `aspen e2e` (hidden), the checks of a deployment's end-to-end fault test.
//! - [`endpoint`]: the shared `--endpoint` argument and client construction.
//! - [`parse`]: parsers for `KEY=VALUE` style arguments.
//! - [`render`]: human-readable printing of values, entries and key states.
//! - [`signal`]: waiting for Ctrl-C or SIGTERM.

mod bench;
mod cluster;
mod dev;
mod e2e;
mod endpoint;
mod fedbench;
mod federation;
mod keygen;
mod kv;
mod lease;
mod lock;
mod node;
mod parse;
mod render;
mod router;
mod signal;
mod snapshot;
mod soak;
mod token;
mod watchbench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code of a read whose key does not exist (same as an error: the output is absent).
pub const EXIT_NOT_FOUND: u8 = 1;

/// Exit code of a conditional write whose precondition did not hold. Distinct from 1 so
/// scripts can tell "someone else changed it" from "something broke".
pub const EXIT_PRECONDITION_FAILED: u8 = 2;

const EXAMPLES: &str = "\
Examples:
  aspen dev                                  # regions us (us-1, us-2) and eu (eu-1), routers on :7070 and :7071
  aspen kv put greeting hello                # write a key
  aspen kv get greeting                      # read it back (linearizable)
  aspen kv scan gr --limit 10                # keys starting with \"gr\"
  aspen kv cas greeting --expected hello --new hi
  aspen kv put svc/api-1 10.0.0.7 --ttl 10s  # a key that vanishes unless its lease is kept alive
  aspen kv watch svc/                        # follow changes under a prefix
  aspen lock nightly -- ./backup.sh          # run a command while holding a lock
  aspen cluster status                       # each cluster's health, leader, term (router)
  aspen snapshot save backup.snap --endpoint http://127.0.0.1:7101   # back up a cluster
  aspen snapshot restore backup.snap --data-dir new/node-1           # seed a new cluster
  aspen bench --op put --clients 16 --duration 10
  aspen bench-federation --phase lag --rate 1000  # replication lag between regions
  aspen node --config node.toml              # one member of a real cluster
  aspen keygen --out router.key              # an identity; prints the id nodes list in kv_clients
  aspen router --config router.toml          # a router; SIGHUP reloads the route table
  aspen token new --name ci --write config/  # a bearer token and its [auth] entry
  aspen federation keygen --out us-1.key     # a cluster's federation secret
  aspen federation info --config node.toml   # what other regions paste to import it
  aspen soak --duration 600                  # linearizability under faults, 10 minutes

Commands that talk to a node or router take --endpoint URL (or ASPEN_ENDPOINT); the
default is http://127.0.0.1:7070, the router of `aspen dev`. A server with [auth] wants
--token (or ASPEN_TOKEN); one with [tls] an https:// URL and --cacert FILE.
Logging follows RUST_LOG (default: info for aspen, warn otherwise, error for openraft).";

/// Aspen: many strongly consistent key-value clusters run as one store.
#[derive(Debug, Parser)]
#[command(name = "aspen", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run one cluster member from a TOML config file.
    Node(node::NodeArgs),
    /// Run a router: one store in front of many clusters, by key prefix.
    Router(router::RouterArgs),
    /// Run the whole design in this process, for development: regions us (clusters us-1,
    /// us-2) and eu (eu-1), 3 nodes each, a router per region, federation both ways.
    Dev(dev::DevArgs),
    /// Exchange federation values between regions: make a cluster's secret, print what
    /// another region pastes into its config.
    Federation(federation::FederationArgs),
    /// Make an iroh identity (a secret key file) and print its endpoint id, so configs
    /// can name a router (`kv_clients`) or node (`[[peers]]`) before it first starts.
    Keygen(keygen::KeygenArgs),
    /// Make bearer tokens for servers whose config has an `[auth]` table.
    Token(token::TokenArgs),
    /// Read and write keys.
    Kv(kv::KvArgs),
    /// Grant, keep alive, inspect and revoke leases (keys that vanish when their owner
    /// stops renewing them).
    Lease(lease::LeaseArgs),
    /// Run a command while holding a lock; it is released when the command exits, or,
    /// if this process dies, when its lease expires.
    ///
    /// The command gets ASPEN_LOCK_KEY (the lock key), ASPEN_LOCK_REVISION (its
    /// mod_revision, a fencing token that grows with every holder) and ASPEN_LOCK_LEASE
    /// (the lease, to attach keys that should vanish with the lock). If the lease is lost,
    /// the command and everything it started are killed at once and aspen lock exits 1.
    Lock(lock::LockArgs),
    /// Show cluster status and change membership.
    Cluster(cluster::ClusterArgs),
    /// Back up a cluster's data to a file (from any member), check a backup, and start a
    /// new cluster from one.
    Snapshot(snapshot::SnapshotArgs),
    /// Measure throughput and latency of puts, gets, compare-and-swaps or a mixed load,
    /// against Aspen or (built with `--features etcd`) etcd.
    Bench(bench::BenchArgs),
    /// Measure federation on an in-process topology: replication lag under a write rate,
    /// catch-up after a partition, and a new region bootstrapping a large cluster.
    BenchFederation(fedbench::FedBenchArgs),
    /// Measure watches: delivery latency from a write's acknowledgement to its watchers at
    /// a paced write rate, and put throughput with and without idle and stalled watchers,
    /// against Aspen or (built with `--features etcd`) etcd.
    BenchWatch(watchbench::WatchBenchArgs),
    /// Check linearizability for a long run under injected faults (in-process cluster).
    Soak(soak::SoakArgs),
    /// The checks of a deployment's end-to-end fault test (deploy/e2e.sh): wait until it
    /// is ready, find a leader, drive a recorded workload through its routers and check
    /// the history, the acknowledged writes and every replica.
    #[command(hide = true)]
    E2e(e2e::E2eArgs),
}

impl Cli {
    /// Whether the command is a client whose output is meant for pipes (`| head`,
    /// `| jq`), so that it should end quietly when the reader goes away.
    pub fn is_client(&self) -> bool {
        matches!(
            self.command,
            Command::Kv(_) | Command::Cluster(_) | Command::Lease(_)
        )
    }
}

/// Runs the parsed command line. `Ok` carries the exit code of an expected outcome
/// (not found, precondition failed); `Err` is an error to print.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Node(args) => node::run(args).await,
        Command::Router(args) => router::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Federation(args) => federation::run(args).await,
        Command::Keygen(args) => keygen::run(args).await,
        Command::Token(args) => token::run(args).await,
        Command::Kv(args) => kv::run(args).await,
        Command::Lease(args) => lease::run(args).await,
        Command::Lock(args) => lock::run(args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Snapshot(args) => snapshot::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchFederation(args) => fedbench::run(args).await,
        Command::BenchWatch(args) => watchbench::run(args).await,
        Command::Soak(args) => soak::run(args).await,
        Command::E2e(args) => e2e::run(args).await,
    }
}

/// An error and its causes on one line, `outer: cause: root`. A cause whose text the
/// message already contains is skipped: many error types print their source in their own
/// message and also return it from `source()`, which would otherwise repeat it.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn one_line_skips_causes_already_in_the_message() {
        let io = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(io)
            .context("cannot read x: disk on fire")
            .context("starting");
        assert_eq!(one_line(&err), "starting: cannot read x: disk on fire");
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn zero_clients_is_refused_by_the_parser() {
        let err =
            Cli::try_parse_from(["aspen", "bench", "--op", "put", "--clients", "0"]).unwrap_err();
        assert!(err.to_string().contains("--clients"), "{err}");
    }

    #[test]
    fn cluster_init_wait_is_bounded_at_both_ends() {
        let parse = |wait: &str| {
            Cli::try_parse_from([
                "aspen",
                "cluster",
                "init",
                "--wait",
                wait,
                "--ok-if-initialized",
            ])
        };
        assert!(parse("0").is_ok());
        assert!(parse("600").is_ok());
        let err = parse("601").unwrap_err();
        assert!(err.to_string().contains("--wait"), "{err}");
    }

    #[test]
    fn e2e_run_limits_are_checked_at_their_bounds() {
        let parse = |flag: &str, value: &str| {
            Cli::try_parse_from([
                "aspen",
                "e2e",
                "run",
                "--endpoint",
                "http://r",
                "--prefix",
                "p/",
                flag,
                value,
            ])
        };
        for (flag, ok, too_many) in [
            ("--writers", "64", "65"),
            ("--clients", "256", "257"),
            ("--duration", "5", "4"),
            ("--converge-timeout", "3600", "3601"),
        ] {
            assert!(parse(flag, ok).is_ok(), "{flag} {ok}");
            let err = parse(flag, too_many).unwrap_err();
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn e2e_run_router_configs_need_an_identity() {
        let err = Cli::try_parse_from([
            "aspen",
            "e2e",
            "run",
            "--endpoint",
            "http://r",
            "--prefix",
            "p/",
            "--router-config",
            "r.toml",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--identity"), "{err}");
    }

    #[test]
    fn endpoint_is_accepted_after_the_kv_subcommand() {
        let cli = Cli::try_parse_from(["aspen", "kv", "get", "a", "--endpoint", "http://h:1"]);
        assert!(cli.is_ok(), "{cli:?}");
    }
}
