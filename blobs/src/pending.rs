//! Blobs kept while no committed reference protects them yet: one a member fetched because
//! another asked it to hold it before proposing a reference (the reference commits, or the
//! write is abandoned, well within [`PENDING_GRACE`]), or one this node took in and
//! wrote. Each is kept by its [`Held`] temporary tag, dropped once a collection run finds
//! it referenced ([`Pending::release`]) or once its grace has passed; the queue is pruned
//! whenever a blob joins it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Hash, Held};

/// How long a blob stays kept without a reference: far longer than a write takes from its
/// upload to its commit (a 4 GiB value included), short enough that an abandoned write's
/// blob is collected the same hour.
pub const PENDING_GRACE: Duration = Duration::from_secs(15 * 60);

/// Blobs kept for [`PENDING_GRACE`]; clones share the queue.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    queue: Arc<Mutex<VecDeque<(Instant, Held)>>>,
}

impl Pending {
    /// Keeps `held` for [`PENDING_GRACE`] from now, and lets go of those whose grace ended.
    pub fn keep(&self, held: Held) {
        self.keep_for(held, PENDING_GRACE);
    }

    fn keep_for(&self, held: Held, grace: Duration) {
        let now = Instant::now();
        let mut queue = self.queue.lock().expect("pending blobs lock");
        while queue.front().is_some_and(|(until, _)| *until <= now) {
            queue.pop_front();
        }
        queue.push_back((now + grace, held));
    }

    /// Lets go of every blob `referenced` names: called with the hashes a collection run
    /// protects, before the run reads the temporary tags, so that run keeps them by their
    /// reference and every later run as long as they stay referenced.
    pub fn release(&self, referenced: &HashSet<Hash>) {
        self.queue
            .lock()
            .expect("pending blobs lock")
            .retain(|(_, held)| !referenced.contains(&held.blob().hash));
    }

    /// How many blobs are kept.
    pub fn len(&self) -> usize {
        self.queue.lock().expect("pending blobs lock").len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{body, content};
    use crate::BlobStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_is_kept_until_its_grace_ends_and_let_go_at_the_next_keep() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), None).await.unwrap();
        let pending = Pending::default();
        let limit = crate::MAX_BLOB_BYTES;
        let first = store.import(body(&content(1000, 1)), limit).await.unwrap();
        pending.keep_for(first, Duration::ZERO);
        assert_eq!(pending.len(), 1, "let go before another joined");
        let second = store.import(body(&content(1000, 2)), limit).await.unwrap();
        pending.keep(second);
        assert_eq!(pending.len(), 1, "the first was kept past its grace");
        let third = store.import(body(&content(1000, 3)), limit).await.unwrap();
        let (second, third) = (Hash::new(content(1000, 2)), third);
        let kept = third.blob().hash;
        pending.keep(third);
        pending.release(&HashSet::from([second]));
        assert_eq!(pending.len(), 1, "a referenced blob was not let go");
        pending.release(&HashSet::from([kept]));
        assert!(pending.is_empty());
        store.shutdown().await;
    }
}
