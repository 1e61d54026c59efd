//! `aspen lease`: grant, keep alive, inspect and revoke leases; and [`Keeper`], the
//! background keep-alive that `kv put --ttl` users run with `lease keepalive` and that
//! `aspen lock` holds its lock with.

use std::process::ExitCode;
use std::time::Duration;

use aspen_api::lease::{LeaseId, LeaseResponse};
use aspen_api::{AspenClient, ErrorCode};
use clap::{Args, Subcommand};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::endpoint::{explain, EndpointArgs};
use super::{parse, render};

/// Arguments of `aspen lease`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Print the API's JSON answer instead of a human summary.
    #[arg(long, global = true)]
    json: bool,
    /// The operation.
    #[command(subcommand)]
    command: LeaseCommand,
}

/// The lease operations.
#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Grant a lease: keys written with it (`kv put --lease ID`) are deleted when it ends.
    ///
    /// It ends when revoked, or when no keep-alive reaches its cluster's leader for TTL.
    /// Prints the lease id.
    Grant {
        /// Time to live without keep-alives: 10, 10s, 5m, 1h (at least the cluster's
        /// minimum, 1.5 election timeouts).
        #[arg(value_parser = parse::ttl_secs)]
        ttl: u64,
        /// Through a router: a key of the cluster that should hold the lease.
        #[arg(long, value_parser = parse::key)]
        key: Option<String>,
    },
    /// Keep a lease alive: every third of its TTL until Ctrl-C (or once, with --once).
    ///
    /// Exits 1 when the lease has ended (its keys are gone).
    Keepalive {
        /// The lease id.
        #[arg(value_parser = parse::lease_id)]
        id: LeaseId,
        /// Send one keep-alive and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's granted TTL, the time left and its keys.
    Get {
        /// The lease id.
        #[arg(value_parser = parse::lease_id)]
        id: LeaseId,
    },
    /// End a lease now, deleting its keys (in one revision).
    Revoke {
        /// The lease id.
        #[arg(value_parser = parse::lease_id)]
        id: LeaseId,
    },
}

/// Runs one lease command.
pub async fn run(args: LeaseArgs) -> anyhow::Result<ExitCode> {
    let client = args.endpoint.client()?;
    let json = args.json;
    let answer = match args.command {
        LeaseCommand::Grant { ttl, key } => {
            let answer = client
                .lease_grant(ttl, key.as_deref())
                .await
                .map_err(|e| explain(e, &client))?;
            if !json {
                println!("{}", answer.id);
                eprintln!(
                    "granted lease {} on cluster {} for {} s; keep it alive with `aspen lease \
                     keepalive {}`",
                    answer.id,
                    answer.cluster,
                    answer.granted_ttl.unwrap_or(ttl),
                    answer.id
                );
                return Ok(ExitCode::SUCCESS);
            }
            answer
        }
        LeaseCommand::Keepalive { id, once } => {
            if once {
                client
                    .lease_keepalive(&id)
                    .await
                    .map_err(|e| explain(e, &client))?
            } else {
                return keep_alive_until_stopped(&client, &id, json).await;
            }
        }
        LeaseCommand::Get { id } => client
            .lease_get(&id)
            .await
            .map_err(|e| explain(e, &client))?,
        LeaseCommand::Revoke { id } => client
            .lease_revoke(&id)
            .await
            .map_err(|e| explain(e, &client))?,
    };
    if json {
        render::json(&answer)?;
    } else {
        print_lease(&answer);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_lease(answer: &LeaseResponse) {
    if let Some(deleted) = answer.deleted_count {
        println!(
            "revoked {}: deleted {deleted} key(s) (revision {})",
            answer.id,
            answer.revision.unwrap_or(0)
        );
        return;
    }
    println!(
        "{}: {} ms left of {} s (cluster {})",
        answer.id,
        answer.remaining_ms.unwrap_or(0),
        answer.granted_ttl.unwrap_or(0),
        answer.cluster
    );
    for key in answer.keys.iter().flatten() {
        println!("  {}", render::quote(key));
    }
}

async fn keep_alive_until_stopped(
    client: &AspenClient,
    id: &LeaseId,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let first = client
        .lease_keepalive(id)
        .await
        .map_err(|e| explain(e, client))?;
    let ttl = Duration::from_secs(first.granted_ttl.unwrap_or(1).max(1));
    if !json {
        eprintln!("keeping {id} alive every {:?}; Ctrl-C stops", ttl / 3);
    }
    let keeper = Keeper::start(client.clone(), id.clone(), ttl);
    let mut lost = keeper.lost();
    tokio::select! {
        signal = super::signal::shutdown_requested() => {
            signal?;
            keeper.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        why = lost_reason(&mut lost) => {
            eprintln!("lease {id} ended: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Waits until a [`Keeper`] reports its lease lost; returns why.
pub async fn lost_reason(lost: &mut watch::Receiver<Option<String>>) -> String {
    match lost.wait_for(|l| l.is_some()).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => "the keep-alive task stopped".to_string(),
    }
}

/// Keeps one lease alive in the background: a keep-alive every third of the TTL, retried
/// soon after a failure, until stopped or the lease is lost.
///
/// Lost means the cluster says the lease is gone, or no keep-alive has succeeded for most
/// of a TTL. The clock runs from when the last successful keep-alive was *sent* (the
/// leader counts its TTL from no earlier than that), and a keep-alive still unanswered at
/// that point is given up on: the lease may be expiring right then, so whoever relies on
/// it must stop before the cluster can hand it to someone else.
pub struct Keeper {
    task: JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

impl Keeper {
    /// Starts keeping `lease` (of `ttl`) alive through `client`.
    pub fn start(client: AspenClient, lease: LeaseId, ttl: Duration) -> Keeper {
        let (tx, lost) = watch::channel(None);
        let task = tokio::spawn(async move {
            let every = ttl / 3;
            // Lost a tenth of a TTL before the lease could end, for the holder to stop.
            let give_up_after = ttl - ttl / 10;
            let mut last_ok_sent = tokio::time::Instant::now();
            let mut pause = every;
            loop {
                tokio::time::sleep(pause).await;
                let sent = tokio::time::Instant::now();
                let give_up = last_ok_sent + give_up_after;
                let reason =
                    match tokio::time::timeout_at(give_up, client.lease_keepalive(&lease)).await {
                        Ok(Ok(_)) => {
                            last_ok_sent = sent;
                            pause = every;
                            continue;
                        }
                        Ok(Err(e)) if e.code() == Some(ErrorCode::LeaseNotFound) => e.to_string(),
                        // One miss (an election) costs nothing: try again soon.
                        Ok(Err(e)) if tokio::time::Instant::now() + every / 4 < give_up => {
                            tracing::debug!("keep-alive of {lease} failed: {e}");
                            pause = every / 4;
                            continue;
                        }
                        Ok(Err(e)) => format!(
                            "no keep-alive succeeded for {give_up_after:?}, the lease may be \
                         expiring (last error: {e})"
                        ),
                        Err(_) => format!(
                            "no keep-alive succeeded for {give_up_after:?}, the lease may be \
                         expiring (the last one is still unanswered)"
                        ),
                    };
                tx.send_replace(Some(reason));
                return;
            }
        });
        Keeper { task, lost }
    }

    /// Changes to `Some(reason)` when the lease is lost.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Stops sending keep-alives.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
