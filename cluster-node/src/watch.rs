//! Watches served by a node from its own copy of the change feed, and the feed reads a
//! router's watches make over `aspen/kv/2`.
//!
//! Every member applies every entry, so any member can serve a watch of its cluster, in
//! revision order: the feed rows are written in the apply transaction (`storage::feed`).
//!
//! One [`FeedHub`] task per node takes each new page of the feed once, when the applied
//! revision moves, and hands each following watcher what the page holds for its keys,
//! straight into that watcher's buffer. So a hundred watchers cost one feed read per
//! apply, not a hundred; a watcher the page does not concern is not woken at all; and a
//! change set that many watchers take whole is encoded once ([`SharedSet`]). While it has
//! followers the hub takes the sets from the applies themselves
//! (`StateMachine::take_recent`), reading the feed only when that in-memory run does not
//! reach back to its revision.
//!
//! A new watch first reads the feed itself, from its start revision, at its client's
//! pace, until it is no further behind than the hub; then it joins the hub's followers.
//! The join happens under the hub's lock, so nothing falls between the two: its history
//! never depends on the hub having kept anything. A follower never waits on its client:
//! a full buffer ends it with `slow_watcher` (`aspen_api::server::watch`), so a client
//! that stops reading never holds up the hub or writes.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use aspen_api::feed::{ChangeSet, Compacted};
use aspen_api::limits::MAX_FEED_WAIT_MS;
use aspen_api::server::{
    Refused, SharedSet, WatchEnd as Stop, WatchFrame, WatchSender, WatchSlots, WatchStream,
};
use aspen_api::watch::{compacted_message, WatchError, WatchRequest, PROGRESS_INTERVAL_MS};
use aspen_api::wire::{FeedReadRequest, FeedReadResponse, KeyFilter};
use aspen_api::{ApiError, ErrorCode};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::storage::StateMachine;

/// Most change sets in one page the hub or a watcher reads from the feed.
pub const FEED_PAGE_SETS: usize = 256;

/// Most key and value bytes in one page read from the feed (a page may pass it by one
/// change set, which is at most one command's bytes).
pub const FEED_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// How long a watcher catching up from history waits for its client to make room in its
/// buffer before it ends the watch with `slow_watcher`.
pub const CATCH_UP_STALL: Duration = Duration::from_secs(10);

/// Resolves once `stop` is set (the `Ref` it yields is not `Send`: drop it here).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The node's watches: the shared feed reader, its followers, and the bound on open
/// watches.
pub struct FeedHub {
    sm: StateMachine,
    cluster: String,
    followers: Mutex<Followers>,
    stop: watch::Sender<bool>,
    slots: WatchSlots,
}

/// The watches the hub feeds, and how far it has fed them.
#[derive(Default)]
struct Followers {
    /// Every change set through this revision has been offered to every follower (what
    /// concerns it); a watcher may join once it has read the feed this far.
    published: u64,
    next_id: u64,
    /// The hub has stopped: a watcher that would join ends instead.
    stopped: bool,
    list: Vec<Follower>,
}

/// A watch the hub feeds.
struct Follower {
    id: u64,
    filter: KeyFilter,
    /// Every revision up to this one has been looked at (and sent, when it matched).
    pos: u64,
    sender: WatchSender,
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

impl Follower {
    fn progress(&self, cluster: &str) -> WatchFrame {
        WatchFrame::Progress {
            cluster: cluster.to_owned(),
            revision: self.pos,
        }
    }

    /// Offers what `sets` (every set in some run ending at `through`) hold for this
    /// watch past its position.
    fn take(
        &mut self,
        cluster: &str,
        sets: &[Arc<SharedSet>],
        through: u64,
    ) -> Result<(), Refused> {
        for set in sets.iter().filter(|s| s.revision > self.pos) {
            if let Some(set) = filtered(&self.filter, set) {
                let cluster = cluster.to_owned();
                self.sender.offer(WatchFrame::Changes { cluster, set })?;
            }
        }
        self.pos = self.pos.max(through);
        Ok(())
    }
}

impl Followers {
    /// Runs `f` on every follower, ending (and dropping) each one it refuses.
    fn each(&mut self, mut f: impl FnMut(&mut Follower) -> Result<(), Stop>) {
        let mut i = 0;
        while i < self.list.len() {
            match f(&mut self.list[i]) {
                Ok(()) => i += 1,
                Err(stop) => self.list.swap_remove(i).sender.close(stop),
            }
        }
    }

    /// Hands every follower what `sets`, the run `(published, through]`, hold for it.
    fn publish(&mut self, cluster: &str, sets: &[Arc<SharedSet>], through: u64) {
        self.each(|f| Ok(f.take(cluster, sets, through)?));
        self.published = self.published.max(through);
    }

    /// Tells every follower how far it has been read.
    fn progress(&mut self, cluster: &str) {
        let published = self.published;
        self.each(|f| {
            f.pos = f.pos.max(published);
            Ok(f.sender.offer(f.progress(cluster))?)
        });
    }
}

impl FeedHub {
    /// The hub of `sm`'s feed, running until [`FeedHub::stop`].
    pub fn start(sm: StateMachine, cluster: String) -> Arc<FeedHub> {
        let published = sm.revision();
        let hub = Arc::new(FeedHub {
            sm,
            cluster,
            followers: Mutex::new(Followers {
                published,
                ..Followers::default()
            }),
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

    fn followers(&self) -> MutexGuard<'_, Followers> {
        self.followers.lock().expect("watch followers lock")
    }

    async fn run(self: Arc<Self>) {
        let mut revisions = self.sm.watch_revision();
        let mut stop = self.stop.subscribe();
        let interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
        let mut progress_at = Instant::now() + interval;
        loop {
            if Instant::now() >= progress_at {
                self.followers().progress(&self.cluster);
                progress_at = Instant::now() + interval;
            }
            let target = *revisions.borrow_and_update();
            if target > self.followers().published {
                self.publish(target).await;
                continue;
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(progress_at) => {}
                _ = stopped(&mut stop) => break,
            }
        }
        let mut followers = self.followers();
        followers.stopped = true;
        followers.list.clear();
    }

    /// Hands the followers the sets after what they have been handed, up to `target` at
    /// most, moving `published` as far as that got.
    async fn publish(&self, target: u64) {
        let published = {
            // With nobody to hand them to, the sets need not even be read: a watcher that
            // joins later has read the feed past `target` itself.
            let mut followers = self.followers();
            if followers.list.is_empty() {
                self.sm.keep_recent(false);
                followers.published = target;
                return;
            }
            followers.published
        };
        self.sm.keep_recent(true);
        let sets = match self.sm.take_recent(published) {
            Some(sets) if !sets.is_empty() => Ok(Ok(sets)),
            _ => read_feed(&self.sm, published).await,
        };
        match sets {
            Ok(Ok(sets)) => {
                let through = sets.last().map_or(target, |s| s.revision);
                let sets: Vec<_> = sets.into_iter().map(SharedSet::new).collect();
                self.followers().publish(&self.cluster, &sets, through);
            }
            // Only a hub that fell behind the retention can see this: a follower that
            // had not looked at the compacted revisions yet has lost them.
            Ok(Err(c)) => {
                let through = c.oldest.saturating_sub(1).max(published);
                let mut followers = self.followers();
                followers.each(|f| {
                    if f.pos >= through {
                        return Ok(());
                    }
                    let error = WatchError::compacted(&self.cluster, f.pos, c.oldest);
                    Err(Stop::With(error))
                });
                followers.published = through;
            }
            Err(e) => {
                tracing::warn!(cluster = %self.cluster, "watch hub: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Opens a watch of this node's cluster.
    pub async fn watch(self: &Arc<Self>, request: WatchRequest) -> Result<WatchStream, ApiError> {
        let (sender, stream) = self.slots.open()?;
        let pos = match request.after(&self.cluster) {
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
        let id = {
            let mut followers = self.followers();
            followers.next_id += 1;
            followers.next_id
        };
        let follower = Follower {
            id,
            filter: request.filter,
            pos,
            sender,
        };
        tokio::spawn(self.clone().join(follower));
        Ok(stream)
    }

    /// Brings a new watch up to the hub from history, then hands it to the hub; frees its
    /// slot as soon as its client goes away.
    async fn join(self: Arc<Self>, mut follower: Follower) {
        if let Err(refused) = follower.sender.offer(follower.progress(&self.cluster)) {
            return follower.sender.close(refused.into());
        }
        let gone = follower.sender.gone();
        let id = follower.id;
        loop {
            if let Err(stop) = self.catch_up(&mut follower).await {
                return follower.sender.close(stop);
            }
            let mut followers = self.followers();
            if followers.stopped {
                return;
            }
            if follower.pos >= followers.published {
                followers.list.push(follower);
                break;
            }
        }
        // The hub drops a follower it ends; this drops one whose client left first.
        let hub = Arc::downgrade(&self);
        drop(self);
        gone.await;
        forget(hub, id);
    }

    /// Reads the feed after the watch's position until it has nothing more, sending
    /// what matches at the client's pace.
    async fn catch_up(&self, follower: &mut Follower) -> Result<(), Stop> {
        loop {
            // Every revision up to `applied` is in the feed when it is read.
            let applied = self.sm.revision();
            let sets = match read_feed(&self.sm, follower.pos).await {
                Ok(Ok(sets)) => sets,
                Ok(Err(c)) => {
                    let error = WatchError::compacted(&self.cluster, c.requested, c.oldest);
                    return Err(Stop::With(error));
                }
                Err(e) => return Err(Stop::With(WatchError::new(e.code, e.message))),
            };
            let Some(last) = sets.last().map(|s| s.revision) else {
                follower.pos = follower.pos.max(applied);
                return Ok(());
            };
            for set in sets.into_iter().map(SharedSet::new) {
                if let Some(set) = filtered(&follower.filter, &set) {
                    let cluster = self.cluster.clone();
                    let frame = WatchFrame::Changes { cluster, set };
                    follower.sender.send(frame, CATCH_UP_STALL).await?;
                }
            }
            follower.pos = last;
        }
    }
}

/// Drops follower `id` of `hub` (if both are still there).
fn forget(hub: Weak<FeedHub>, id: u64) {
    if let Some(hub) = hub.upgrade() {
        hub.followers().list.retain(|f| f.id != id);
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
