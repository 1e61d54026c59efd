//! What the exporter needs from the node it runs on: the change feed, a consistent scan of
//! every key, whether the node leads, and a leadership-confirmed revision. The node
//! implements [`FeedSource`] over its state machine and Raft; this crate depends on no
//! storage or consensus code.

use std::future::Future;
use std::pin::Pin;

use aspen_api::feed::{ChangeSet, Compacted};
use aspen_api::KvEntry;
use tokio::sync::watch;

/// A boxed future, for the one async method of [`FeedSource`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A cluster's change feed and state, as one node sees it.
pub trait FeedSource: Send + Sync + 'static {
    /// The cluster's revision, watched: changes when an apply moves it.
    fn watch_revision(&self) -> watch::Receiver<u64>;

    /// The change sets after revision `after`, in order (at most `max_sets`, stopping after
    /// the set that reaches `max_bytes`), or `Compacted` if `after + 1` is gone.
    fn changes_after(
        &self,
        after: u64,
        max_sets: usize,
        max_bytes: usize,
    ) -> Result<Result<Vec<ChangeSet>, Compacted>, String>;

    /// Reads every key at one consistent revision, handing pages of entries in key order to
    /// `page` (at most `page_entries` entries, and at most a scan page's bytes,
    /// `aspen_api::limits::MAX_SCAN_PAGE_BYTES`, each); returns that revision and its
    /// time. Blocking: call it on a blocking thread.
    fn scan_all(
        &self,
        page_entries: usize,
        page: &mut dyn FnMut(Vec<KvEntry>) -> Result<(), String>,
    ) -> Result<(u64, u64), String>;

    /// Whether this node is its cluster's leader right now (only the leader exports).
    fn is_leader(&self) -> bool;

    /// Confirms with a quorum that this node still leads (a linearizable read) and returns
    /// the cluster's revision then: no change committed before the call began is above it.
    fn confirm_head(&self) -> BoxFuture<'_, Result<u64, String>>;
}
