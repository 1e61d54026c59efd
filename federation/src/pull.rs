//! An importer's reconciliations with one owner node ([`Puller`]): one at start, then one
//! each time the importer (or a new push link) asks, at most one per
//! [`RESYNC_INTERVAL`], and at least one per [`IDLE_RESYNC_INTERVAL`]. Their outcomes
//! ([`SyncFailures`]) are the importer's sync error while no owner node answers, and put
//! the owner nodes that answer first when content is fetched: a download tries its
//! providers in turn, and one stuck on a node that is down holds the importer up.

use std::sync::{Arc, Mutex};

use iroh::EndpointAddr;
use iroh_docs::NamespaceId;
use tokio::sync::watch;

use crate::import::{ImportState, IDLE_RESYNC_INTERVAL, RESYNC_INTERVAL};
use crate::peersync::{PeerSync, SYNC_TIMEOUT};

/// What an operator should check when an owner node refuses the document.
const REFUSED_HINT: &str = " (check the owner's endpoint ids and namespace in this region's \
     federation import config: `aspen federation info` prints them on the owner's side)";

/// Per owner node, why it cannot be synced with: its last reconciliation's failure, and
/// its refusal of the document on the push link (a reconciliation with a node that does not
/// serve the document ends like an empty one, so only the link tells). Shared by an
/// importer's pullers and push links.
#[derive(Debug, Clone, Default)]
pub struct SyncFailures(Arc<Mutex<Vec<OwnerFailure>>>);

#[derive(Debug, Clone, Default)]
struct OwnerFailure {
    /// The last reconciliation's failure (`None` once one succeeds).
    sync: Option<String>,
    /// The last push link's refusal (`None` once a link is made).
    refused: Option<String>,
}

impl OwnerFailure {
    fn failed(&self) -> bool {
        self.sync.is_some() || self.refused.is_some()
    }
}

impl SyncFailures {
    /// For `owners` owner nodes, none failed yet.
    pub fn new(owners: usize) -> SyncFailures {
        SyncFailures(Arc::new(Mutex::new(vec![OwnerFailure::default(); owners])))
    }

    /// Notes owner node `index`'s last reconciliation; returns the sync error to report.
    pub fn set_sync(&self, index: usize, failure: Option<String>) -> Option<String> {
        self.update(index, |slot| slot.sync = failure)
    }

    /// Notes whether owner node `index` refused the document on the push link (`None`
    /// when a link was made); returns the sync error to report.
    pub fn set_refused(&self, index: usize, refusal: Option<String>) -> Option<String> {
        self.update(index, |slot| slot.refused = refusal)
    }

    /// The sync error to report: set when every owner node failed, naming why each did.
    fn update(&self, index: usize, change: impl FnOnce(&mut OwnerFailure)) -> Option<String> {
        let mut failures = self.0.lock().expect("sync failures lock");
        if let Some(slot) = failures.get_mut(index) {
            change(slot);
        }
        failures.iter().all(OwnerFailure::failed).then(|| {
            let reasons = failures
                .iter()
                .flat_map(|f| f.refused.iter().chain(f.sync.iter()))
                .cloned();
            let hint = if failures.iter().any(|f| f.refused.is_some()) {
                REFUSED_HINT
            } else {
                ""
            };
            format!(
                "no owner node could be synced with: {}{hint}",
                reasons.collect::<Vec<_>>().join("; ")
            )
        })
    }

    /// `items` (one per owner node, in the same order), those that did not fail first.
    pub fn answering_first<T: Clone>(&self, items: &[T]) -> Vec<T> {
        let failures = self.0.lock().expect("sync failures lock");
        let failed = |i: usize| failures.get(i).is_some_and(OwnerFailure::failed);
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for (i, item) in items.iter().enumerate() {
            if failed(i) {
                last.push(item.clone());
            } else {
                first.push(item.clone());
            }
        }
        first.extend(last);
        first
    }
}

/// Reconciles one imported document with one owner node.
pub(crate) struct Puller {
    pub peers: PeerSync,
    pub namespace: NamespaceId,
    pub owner: EndpointAddr,
    /// This owner node's place in `failures`.
    pub index: usize,
    /// Every owner node's last outcome.
    pub failures: SyncFailures,
    pub state: Arc<Mutex<ImportState>>,
}

impl Puller {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut kicked: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        loop {
            // Asks made from here on call for another round after this one.
            kicked.borrow_and_update();
            let result = tokio::select! {
                r = self.peers.reconcile(self.namespace, self.owner.clone(), SYNC_TIMEOUT) => r,
                _ = stop.changed() => return,
            };
            match &result {
                Ok(received) => {
                    tracing::debug!(owner = %self.owner.id.fmt_short(), received, "reconciled")
                }
                Err(e) => tracing::debug!(owner = %self.owner.id.fmt_short(), "reconciling: {e}"),
            }
            self.record(result.err().map(|e| e.to_string()));
            tokio::select! {
                _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = kicked.changed() => {}
                _ = tokio::time::sleep(IDLE_RESYNC_INTERVAL.saturating_sub(RESYNC_INTERVAL)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Notes this round's outcome; the importer reports a sync error only while every
    /// owner node's last round failed.
    fn record(&self, failure: Option<String>) {
        let error = self.failures.set_sync(self.index, failure);
        self.state.lock().expect("import state").sync_error = error;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_nodes_that_answer_come_first_and_the_error_waits_for_all() {
        let f = SyncFailures::new(3);
        assert_eq!(f.answering_first(&[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(f.set_sync(0, Some("down".into())), None);
        assert_eq!(f.answering_first(&[1, 2, 3]), vec![2, 3, 1]);
        assert_eq!(f.set_sync(2, Some("cut".into())), None);
        assert_eq!(f.answering_first(&[1, 2, 3]), vec![2, 1, 3]);
        let all = f
            .set_sync(1, Some("gone".into()))
            .expect("every one failed");
        assert!(
            all.contains("down") && all.contains("gone") && all.contains("cut"),
            "{all}"
        );
        assert_eq!(f.set_sync(0, None), None);
        assert_eq!(f.answering_first(&[1, 2, 3]), vec![1, 2, 3]);
    }

    /// A node that refuses the document stays failed while its reconciliations "succeed"
    /// (a refused reconciliation ends like an empty one), until a link is made.
    #[test]
    fn a_refusal_outlasts_reconciliations_until_a_link_is_made() {
        let f = SyncFailures::new(2);
        assert_eq!(f.set_refused(0, Some("not served by a".into())), None);
        assert_eq!(f.set_sync(0, None), None, "node 1 has not failed");
        assert_eq!(f.answering_first(&[1, 2]), vec![2, 1]);
        let all = f
            .set_refused(1, Some("not served by b".into()))
            .expect("both refuse");
        assert!(
            all.contains("not served by a") && all.contains("not served by b"),
            "{all}"
        );
        assert!(
            f.set_sync(1, None).is_some(),
            "a reconciliation does not clear a refusal"
        );
        assert_eq!(f.set_refused(1, None), None, "a link does");
        assert_eq!(f.answering_first(&[1, 2]), vec![2, 1]);
    }
}
