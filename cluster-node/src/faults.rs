//! A fault schedule for a [`LocalCluster`]: the leader killed and restarted, the new
//! leader cut off at the iroh transport and healed, a follower killed and restarted.
//! The linearizability test runs one round; `aspen soak` runs rounds for as long as asked.

use std::time::Duration;

use crate::local_cluster::LocalCluster;
use crate::node::NodeError;

/// How long the cluster may take to elect a leader after a fault is repaired.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of a fault round.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// No leader emerged in time: the cluster did not recover.
    #[error("no leader within {RECOVERY_TIMEOUT:?} after: {after}")]
    NoLeader { after: String },
    /// A node could not be restarted.
    #[error("restarting node {id} failed: {source}")]
    Restart { id: u64, source: Box<NodeError> },
}

async fn leader(cluster: &LocalCluster, after: &str) -> Result<u64, FaultError> {
    cluster
        .wait_for_leader(RECOVERY_TIMEOUT)
        .await
        .ok_or_else(|| FaultError::NoLeader {
            after: after.to_string(),
        })
}

async fn restart(cluster: &mut LocalCluster, id: u64) -> Result<(), FaultError> {
    cluster
        .restart(id)
        .await
        .map_err(|source| FaultError::Restart {
            id,
            source: Box::new(source),
        })
}

/// One round of faults, each lasting `fault`; returns what was done, in order.
pub async fn fault_round(
    cluster: &mut LocalCluster,
    fault: Duration,
) -> Result<Vec<String>, FaultError> {
    let mut log = Vec::new();
    tokio::time::sleep(fault).await;

    let old = leader(cluster, "start").await?;
    cluster.stop(old).await;
    log.push(format!("killed leader {old}"));
    tokio::time::sleep(fault).await;
    restart(cluster, old).await?;
    log.push(format!("restarted {old}"));

    let cut = leader(cluster, "leader restart").await?;
    cluster.partition(cut);
    log.push(format!("cut off leader {cut}"));
    tokio::time::sleep(fault * 2).await;
    cluster.heal();
    log.push("healed".into());

    let current = leader(cluster, "heal").await?;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != current)
        .unwrap_or(current);
    cluster.stop(follower).await;
    log.push(format!("killed follower {follower}"));
    tokio::time::sleep(fault).await;
    restart(cluster, follower).await?;
    log.push(format!("restarted {follower}"));
    leader(cluster, "follower restart").await?;
    Ok(log)
}
