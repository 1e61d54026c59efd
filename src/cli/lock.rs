//! `aspen lock NAME -- COMMAND`: runs a command while holding a lock, released when the
//! command exits, when `aspen lock` is stopped, or (if this process dies) when its lease
//! expires.
//!
//! The lock is the key `locks/NAME`, created with compare-and-swap (`expected: null`) and
//! attached to a lease this process keeps alive. Whoever creates the key holds the lock;
//! the others watch the key and try again when it is deleted. If the lease is lost (the
//! cluster says it ended, or no keep-alive got through for a whole TTL), the command is
//! killed at once: it no longer holds the lock. The key's `mod_revision`, given to the
//! command as `ASPEN_LOCK_REVISION`, grows with every holder: pass it along as a fencing
//! token where a stalled holder could still reach a resource. The lease id is given as
//! `ASPEN_LOCK_LEASE`, so the command can attach keys of its own (a leader's address)
//! that vanish with the lock.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aspen_api::client::{CasOutcome, WatchOptions};
use aspen_api::json::CasRequest;
use aspen_api::lease::LeaseId;
use aspen_api::watch::{EventKind, WatchMessage};
use aspen_api::AspenClient;
use clap::Args;

use super::endpoint::{explain, EndpointArgs};
use super::lease::{lost_reason, Keeper};
use super::parse;

/// The prefix of lock keys.
pub const LOCK_PREFIX: &str = "locks/";

/// Longest wait on a watch before checking the lock key again, in case a delete was
/// missed while the watch was being opened.
const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Shortest time between two tries at the lock while it is held, so a watch that ends at
/// once (a server shutting down) does not turn waiting into a busy loop.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// Arguments of `aspen lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The lock's name: the lock is the key `locks/NAME`.
    #[arg(value_parser = parse::key)]
    name: String,
    /// The lease's TTL: how long the lock outlives this process if it dies (10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse::ttl_secs)]
    ttl: u64,
    /// The command to run while holding the lock, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Takes the lock, runs the command, releases the lock; exits with the command's code.
pub async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let client = args.endpoint.client()?;
    let key = format!("{LOCK_PREFIX}{}", args.name);
    let lease = client
        .lease_grant(args.ttl, Some(&key))
        .await
        .map_err(|e| explain(e, &client))?;
    let lease_id: LeaseId = lease
        .id
        .parse()
        .map_err(|e: String| anyhow::anyhow!("the server sent a bad lease id: {e}"))?;
    let keeper = Keeper::start(
        client.clone(),
        lease_id.clone(),
        Duration::from_secs(args.ttl),
    );
    let outcome = hold(&client, &key, &lease_id, &keeper, &args.command).await;
    keeper.stop().await;
    // Revoking deletes the lock key: the next waiter goes at once, not after the TTL.
    if let Err(e) = client.lease_revoke(&lease_id).await {
        eprintln!(
            "aspen lock: could not release {key} ({e}); it frees itself within {} s",
            args.ttl
        );
    }
    outcome
}

async fn hold(
    client: &AspenClient,
    key: &str,
    lease: &LeaseId,
    keeper: &Keeper,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let holder = format!(
        "pid {} on {}",
        std::process::id(),
        std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into())
    );
    let mut lost = keeper.lost();
    let revision = tokio::select! {
        taken = acquire(client, key, lease, &holder) => taken?,
        why = lost_reason(&mut lost) => {
            anyhow::bail!("lost the lease while waiting for {key}: {why}")
        }
    };
    // Its own process group, so that losing the lock stops everything it started (a shell
    // and its children), not only the process itself.
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("ASPEN_LOCK_KEY", key)
        .env("ASPEN_LOCK_REVISION", revision.to_string())
        .env("ASPEN_LOCK_LEASE", lease.to_string())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {:?}", command[0]))?;
    let group = child.id();
    tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for the command")?;
            Ok(match status.code() {
                Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
                None => ExitCode::FAILURE,
            })
        }
        why = lost_reason(&mut lost) => {
            kill_group(group);
            let _ = child.kill().await;
            anyhow::bail!("lost the lock {key}: {why}; the command was killed")
        }
        signal = super::signal::shutdown_requested() => {
            kill_group(group);
            let _ = child.kill().await;
            anyhow::bail!("stopped by {}; the command was killed and the lock released", signal?)
        }
    }
}

/// Sends SIGKILL to the process group `group` leads (the command and all it started).
fn kill_group(group: Option<u32>) {
    if let Some(pid) = group.and_then(|g| i32::try_from(g).ok()) {
        // SAFETY: kill(2) takes no pointers; a group that is already gone is ESRCH.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Creates the lock key with the lease, waiting while another holds it; returns the
/// key's mod_revision.
async fn acquire(
    client: &AspenClient,
    key: &str,
    lease: &LeaseId,
    holder: &str,
) -> anyhow::Result<u64> {
    let mut told = false;
    loop {
        let mut request = CasRequest::new(key, None, holder.as_bytes());
        request.lease = Some(lease.to_string());
        let held_at = match client.cas(&request).await.map_err(|e| explain(e, client))? {
            CasOutcome::Applied(answer) => return Ok(answer.revision),
            CasOutcome::Mismatch(actual) => actual.mod_revision.unwrap_or(0),
        };
        if !told {
            eprintln!("aspen lock: {key} is held; waiting");
            told = true;
        }
        wait_for_delete(client, key, held_at).await;
    }
}

/// Returns once `key` was deleted after revision `after`, or after [`RECHECK_EVERY`];
/// never sooner than [`MIN_RETRY`].
async fn wait_for_delete(client: &AspenClient, key: &str, after: u64) {
    let started = tokio::time::Instant::now();
    wait_for_delete_event(client, key, after).await;
    tokio::time::sleep_until(started + MIN_RETRY).await;
}

async fn wait_for_delete_event(client: &AspenClient, key: &str, after: u64) {
    let mut options = WatchOptions {
        prefix: false,
        start_revision: Some(after + 1),
        resume: None,
    };
    let wait = async {
        let mut stream = match client.watch(key, &options).await {
            Ok(stream) => stream,
            // Revision `after` may be compacted away: watch from now instead (a delete
            // before that is caught by the next check, at most RECHECK_EVERY later).
            Err(_) => {
                options.start_revision = None;
                match client.watch(key, &options).await {
                    Ok(stream) => stream,
                    Err(_) => return std::future::pending().await,
                }
            }
        };
        while let Ok(Some(message)) = stream.next().await {
            if let WatchMessage::Changes { events, .. } = message {
                if events.iter().any(|e| e.kind == EventKind::Delete) {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(RECHECK_EVERY, wait).await;
}
