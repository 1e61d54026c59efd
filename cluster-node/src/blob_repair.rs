//! Every blob the state machine's values reference, on this node too.
//!
//! A reference is committed once a majority holds its blob, so a member that was down, is
//! new, or caught up from a snapshot may apply references to blobs it lacks. This task
//! fetches them from the other members, verified, so that every member ends up holding
//! every blob its copy references (and a `GET ?raw` on it never waits for a fetch).
//!
//! It follows the change feed: each revision's blob puts are checked once, in order, as
//! they are applied (the feed is read only when a blob was put or a snapshot installed
//! since the last revision checked: [`StateMachine::blobs_changed_at`]). At start, when the feed was compacted past what it checked (a
//! snapshot was installed), and after a fetch failed, it checks every key's value instead
//! (a page at a time), then follows the feed from there. A fetch that fails is tried again
//! after [`REPAIR_RETRY`].

use std::time::Duration;

use aspen_api::feed::ChangeKind;
use aspen_api::BlobRef;
use tokio::sync::watch;

use crate::blob_values::BlobValues;
use crate::storage::StateMachine;

/// Wait before checking again after a blob could not be fetched.
pub const REPAIR_RETRY: Duration = Duration::from_secs(10);

/// Keys whose blob references a full check reads at once.
const CHECK_PAGE_KEYS: usize = 1_000;

/// Change sets read from the feed at once.
const FEED_PAGE_SETS: usize = 1_024;

/// Bytes of keys and values read from the feed at once (a page may pass it by one set).
const FEED_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a check did not reach its end.
enum Incomplete {
    /// The feed no longer holds the revisions after the last one checked.
    Compacted,
    /// A blob could not be fetched (or the state read): try again later.
    Failed(String),
}

/// Runs until `stop` turns true (or the state machine is gone).
pub async fn run(values: BlobValues, sm: StateMachine, mut stop: watch::Receiver<bool>) {
    let mut revisions = sm.watch_revision();
    // Every reference of the values at this revision is held here.
    let mut checked: Option<u64> = None;
    loop {
        let head = *revisions.borrow_and_update();
        let outcome = match checked {
            Some(from) => follow(&values, &sm, from, head).await,
            None => check_all(&values, &sm).await.map(|()| head),
        };
        let retry = match outcome {
            Ok(reached) => {
                checked = Some(reached);
                false
            }
            Err(Incomplete::Compacted) => {
                checked = None;
                continue;
            }
            Err(Incomplete::Failed(reason)) => {
                tracing::warn!(%reason, "a blob this node's values reference is not here yet; trying again in {REPAIR_RETRY:?}");
                checked = None;
                true
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            changed = revisions.changed(), if !retry => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(REPAIR_RETRY), if retry => {}
        }
    }
}

/// Makes sure every blob the values reference is here, a page of keys at a time. The
/// values may change meanwhile: what changes is then checked by following the feed from
/// the revision read before this check began.
async fn check_all(values: &BlobValues, sm: &StateMachine) -> Result<(), Incomplete> {
    let mut after = Vec::new();
    loop {
        let (blobs, next) = sm
            .read(|r| r.value_blobs(&after, CHECK_PAGE_KEYS))
            .and_then(|r| r)
            .map_err(|e| Incomplete::Failed(e.to_string()))?;
        for blob in blobs {
            ensure(values, blob).await?;
        }
        match next {
            Some(key) => after = key,
            None => return Ok(()),
        }
    }
}

/// Checks the blob puts of the revisions after `from` through `head`; returns the revision
/// reached.
async fn follow(
    values: &BlobValues,
    sm: &StateMachine,
    from: u64,
    head: u64,
) -> Result<u64, Incomplete> {
    // Most writes put no blob: then there is nothing to read (`head` was read first).
    if sm.blobs_changed_at() <= from {
        return Ok(head.max(from));
    }
    let mut reached = from;
    while reached < head {
        let sets = sm
            .read(|r| r.changes_after(reached, FEED_PAGE_SETS, FEED_PAGE_BYTES))
            .and_then(|r| r)
            .map_err(|e| Incomplete::Failed(e.to_string()))?
            .map_err(|_| Incomplete::Compacted)?;
        let Some(last) = sets.last().map(|s| s.revision) else {
            break;
        };
        for set in &sets {
            for change in &set.changes {
                if let ChangeKind::PutBlob { blob, .. } = &change.kind {
                    ensure(values, *blob).await?;
                }
            }
        }
        reached = last;
    }
    Ok(reached.max(head))
}

async fn ensure(values: &BlobValues, blob: BlobRef) -> Result<(), Incomplete> {
    values
        .ensure(blob)
        .await
        .map_err(|e| Incomplete::Failed(e.to_string()))
}
