//! Watches served by a node from its own copy of the change feed, and the feed reads a
//! router's watches make over `aspen/kv/1`.
//!
//! Every member applies every entry, so any member can serve a watch of its cluster, in
//! revision order: the feed rows are written in the apply transaction (`storage::feed`).
//!
//! One [`FeedHub`] task per node takes each new page of the feed once, when the applied
//! revision moves, and publishes it; each watcher filters the shared page for its keys. So
//! a hundred watchers cost one feed read per apply, not a hundred, and one encoding of
//! each change set they all take whole ([`SharedSet`]). While it has watchers the hub takes
//! the sets from the applies themselves (`StateMachine::take_recent`), reading the feed
//! only when that in-memory run does not reach back to its revision.
//!
//! The hub keeps the last [`HUB_PAGES_KEPT`] pages for watchers that have not taken them
//! yet; a watcher further behind (or starting from an older revision) reads the feed itself
//! until it is back at the hub's pages: its history never depends on the hub having kept
//! anything. A watcher never waits on its client while following live pages: a full
//! buffer ends it with `slow_watcher` (`aspen_api::server::watch`).

use std::sync::Arc;
use std::time::Duration;

use aspen_api::feed::{ChangeSet, Compacted};
use aspen_api::limits::MAX_FEED_WAIT_MS;
use aspen_api::server::{
    SharedSet, WatchEnd as Stop, WatchFrame, WatchSender, WatchSlots, WatchStream,
};
use aspen_api::watch::{compacted_message, WatchError, WatchRequest, PROGRESS_INTERVAL_MS};
use aspen_api::wire::{FeedReadRequest, FeedReadResponse, KeyFilter};
use aspen_api::{ApiError, ErrorCode};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use crate::storage::StateMachine;

/// Most change sets in one page the hub or a watcher reads from the feed.
pub const FEED_PAGE_SETS: usize = 256;

/// Most key and value bytes in one page read from the feed (a page may pass it by one
/// change set, which is at most one command's bytes).
pub const FEED_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Pages the hub keeps for watchers that have not taken them yet: a watcher up to this
/// many pages behind (busy, or not yet scheduled) takes them from memory; one further
/// behind reads the feed itself.
pub const HUB_PAGES_KEPT: usize = 16;

/// How long a watcher catching up from history waits for its client to make room in its
/// buffer before it ends the watch with `slow_watcher`.
pub const CATCH_UP_STALL: Duration = Duration::from_secs(10);

/// Resolves once `stop` is set (the `Ref` it yields is not `Send`: drop it here).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A page of the feed as the hub read it: every set in `(after, through]`.
#[derive(Debug)]
struct Page {
    after: u64,
    through: u64,
    sets: Vec<Arc<SharedSet>>,
}

/// The node's watches: the shared feed reader, and the bound on open watches.
pub struct FeedHub {
    sm: StateMachine,
    cluster: String,
    pages: broadcast::Sender<Arc<Page>>,
    stop: watch::Sender<bool>,
    slots: WatchSlots,
}

/// Reads the feed after `after` (at most one page) off the async runtime.
async fn read_feed(
    sm: &StateMachine,
    after: u64,
) -> Result<Result<Vec<ChangeSet>, Compacted>, ApiError> {
    let sm = sm.clone();
    tokio::task::spawn_blocking(move || {
        sm.read(|r| r.changes_after(after, FEED_PAGE_SETS, FEED_PAGE_BYTES))
            .and_then(|r| r)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("feed read stopped: {e}")))?
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("feed read failed: {e}")))
}

fn compacted_error(cluster: &str, c: &Compacted) -> ApiError {
    ApiError::new(
        ErrorCode::Compacted,
        compacted_message(cluster, c.requested, c.oldest),
    )
}

/// `set` with only the keys `filter` wants, sharing it (and its encoding) when it wants
/// them all.
fn filtered(filter: &KeyFilter, set: &Arc<SharedSet>) -> Option<Arc<SharedSet>> {
    if set.changes.iter().all(|c| filter.matches(&c.key)) {
        return (!set.changes.is_empty()).then(|| set.clone());
    }
    filter.apply(set).map(SharedSet::new)
}

impl FeedHub {
    /// The hub of `sm`'s feed, running until [`FeedHub::stop`].
    pub fn start(sm: StateMachine, cluster: String) -> Arc<FeedHub> {
        let hub = Arc::new(FeedHub {
            sm,
            cluster,
            pages: broadcast::Sender::new(HUB_PAGES_KEPT),
            stop: watch::Sender::new(false),
            slots: WatchSlots::default(),
        });
        tokio::spawn(hub.clone().run());
        hub
    }

    /// Ends every watch and the hub's task.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Watches open on this node.
    pub fn watchers(&self) -> usize {
        self.slots.in_use()
    }

    async fn run(self: Arc<Self>) {
        let mut revisions = self.sm.watch_revision();
        let mut stop = self.stop.subscribe();
        let mut published = self.sm.revision();
        loop {
            // The target is read before the watcher count: a watcher that subscribes
            // after the count was read has read the feed past the target itself.
            let target = *revisions.borrow_and_update();
            if target > published && self.pages.receiver_count() == 0 {
                self.sm.keep_recent(false);
                published = target;
            } else if target > published {
                self.sm.keep_recent(true);
                let sets = match self.sm.take_recent(published) {
                    Some(sets) if !sets.is_empty() => Ok(Ok(sets)),
                    _ => read_feed(&self.sm, published).await,
                };
                match sets {
                    Ok(Ok(sets)) => {
                        let through = sets.last().map_or(target, |s| s.revision);
                        let sets = sets.into_iter().map(SharedSet::new).collect();
                        // No receiver left: nobody needs it (a new watcher reads the feed
                        // up to where it starts following).
                        let _ = self.pages.send(Arc::new(Page {
                            after: published,
                            through,
                            sets,
                        }));
                        published = through;
                    }
                    // Only a hub that fell behind the retention can see this; watchers
                    // that need those revisions find out from their own reads.
                    Ok(Err(c)) => published = c.oldest.saturating_sub(1).max(published),
                    Err(e) => {
                        tracing::warn!(cluster = %self.cluster, "watch hub: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// Opens a watch of this node's cluster.
    pub async fn watch(self: &Arc<Self>, request: WatchRequest) -> Result<WatchStream, ApiError> {
        let (sender, stream) = self.slots.open()?;
        // Subscribed before the start is read: every page published from here on is seen.
        let pages = self.pages.subscribe();
        let after = match request.after(&self.cluster) {
            Some(after) => {
                let check = self
                    .sm
                    .read(|r| r.changes_after(after, 0, 0))
                    .and_then(|r| r)
                    .map_err(|e| {
                        ApiError::new(ErrorCode::Internal, format!("feed read failed: {e}"))
                    })?;
                if let Err(c) = check {
                    return Err(compacted_error(&self.cluster, &c));
                }
                after
            }
            None => self.sm.revision(),
        };
        let watcher = Watcher {
            hub: self.clone(),
            filter: request.filter,
            pos: after,
            sender,
        };
        tokio::spawn(watcher.run(pages));
        Ok(stream)
    }
}

/// One watch on this node.
struct Watcher {
    hub: Arc<FeedHub>,
    filter: KeyFilter,
    /// Every revision up to this one has been looked at (and sent, when it matched).
    pos: u64,
    sender: WatchSender,
}

impl Watcher {
    fn progress(&self) -> WatchFrame {
        WatchFrame::Progress {
            cluster: self.hub.cluster.clone(),
            revision: self.pos,
        }
    }

    async fn run(mut self, pages: broadcast::Receiver<Arc<Page>>) {
        let stop = match self.follow(pages).await {
            Ok(()) => Stop::Quietly,
            Err(stop) => stop,
        };
        self.sender.close(stop);
    }

    async fn follow(&mut self, mut pages: broadcast::Receiver<Arc<Page>>) -> Result<(), Stop> {
        self.sender.offer(self.progress())?;
        self.catch_up().await?;
        let mut stop = self.hub.stop.subscribe();
        let interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                page = pages.recv() => match page {
                    Ok(page) => self.take(&page).await?,
                    // More than HUB_PAGES_KEPT pages went by: read them from the feed.
                    Err(RecvError::Lagged(_)) => self.catch_up().await?,
                    Err(RecvError::Closed) => return Err(Stop::Quietly),
                },
                _ = ticks.tick() => self.sender.offer(self.progress())?,
                _ = stopped(&mut stop) => return Err(Stop::Quietly),
                _ = self.sender.closed() => return Err(Stop::Quietly),
            }
        }
    }

    /// Sends what `page` has for this watcher, reading the feed first if the page starts
    /// past where the watcher is.
    async fn take(&mut self, page: &Page) -> Result<(), Stop> {
        if page.through <= self.pos {
            return Ok(());
        }
        if page.after > self.pos {
            return self.catch_up().await;
        }
        for set in page.sets.iter().filter(|s| s.revision > self.pos) {
            if let Some(set) = filtered(&self.filter, set) {
                let cluster = self.hub.cluster.clone();
                self.sender.offer(WatchFrame::Changes { cluster, set })?;
            }
        }
        self.pos = page.through;
        Ok(())
    }

    /// Reads the feed from `pos` until it has nothing more, sending what matches at the
    /// client's pace.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let sets = match read_feed(&self.hub.sm, self.pos).await {
                Ok(Ok(sets)) => sets,
                Ok(Err(c)) => {
                    let error = WatchError::compacted(&self.hub.cluster, c.requested, c.oldest);
                    return Err(Stop::With(error));
                }
                Err(e) => return Err(Stop::With(WatchError::new(e.code, e.message))),
            };
            let Some(last) = sets.last().map(|s| s.revision) else {
                return Ok(());
            };
            for set in sets.into_iter().map(SharedSet::new) {
                if let Some(set) = filtered(&self.filter, &set) {
                    let cluster = self.hub.cluster.clone();
                    let frame = WatchFrame::Changes { cluster, set };
                    self.sender.send(frame, CATCH_UP_STALL).await?;
                }
            }
            self.pos = last;
        }
    }
}

/// Serves a router's `FeedRead`: the matching change sets after `after`, waiting up to
/// the request's wait (at most [`MAX_FEED_WAIT_MS`]) for a revision past it.
pub async fn feed_read(
    sm: &StateMachine,
    request: FeedReadRequest,
) -> Result<FeedReadResponse, ApiError> {
    let Some(after) = request.after else {
        return Ok(FeedReadResponse::Page {
            sets: Vec::new(),
            through: sm.revision(),
        });
    };
    let wait = Duration::from_millis(request.wait_ms.min(MAX_FEED_WAIT_MS));
    let mut revisions = sm.watch_revision();
    let _ = tokio::time::timeout(wait, revisions.wait_for(|r| *r > after)).await;
    match read_feed(sm, after).await? {
        Err(c) => Ok(FeedReadResponse::Compacted { oldest: c.oldest }),
        Ok(sets) => {
            let through = sets.last().map_or(after, |s| s.revision);
            let sets = sets
                .iter()
                .filter_map(|s| request.filter.apply(s))
                .collect();
            Ok(FeedReadResponse::Page { sets, through })
        }
    }
}
