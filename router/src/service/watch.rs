//! Watches through the router. A watch follows every cluster that may own a watched key
//! (the owner of a key; for a prefix, the clusters a scan of it would ask) by long-polling
//! each one's change feed over `aspen/kv/2` (`FeedRead`), and merges their revisions into
//! one stream, each message naming its cluster. Only keys a cluster owns by the route
//! table are passed on, as for a merged scan.
//!
//! The router keeps no feed: it holds each cluster's position and asks for what follows.
//! So a leader change or a lost node costs nothing but a retry on another member (any
//! member serves its feed), and a slow client only slows the router's polling, never the
//! clusters: when the client has not made room for [`CATCH_UP_STALL`] the watch ends
//! with `slow_watcher`, resumable from the last token.

use std::sync::Arc;
use std::time::Duration;

use aspen_api::server::{SharedSet, WatchEnd as Stop, WatchFrame, WatchSender, WatchStream};
use aspen_api::watch::{compacted_message, WatchError, WatchRequest, PROGRESS_INTERVAL_MS};
use aspen_api::wire::{FeedReadRequest, FeedReadResponse, KeyFilter};
use aspen_api::{ApiError, ErrorCode};
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};

use super::{route_error, RouterService};
use crate::table::RouteTable;
use aspen_kv_client::ClusterClient;

/// How long a feed read waits at the node for a new revision: a watch with nothing to
/// deliver costs one request per cluster this often.
pub const FEED_POLL_WAIT_MS: u64 = PROGRESS_INTERVAL_MS;

/// How long the router waits for a slow client to make room before ending its watch.
pub const CATCH_UP_STALL: Duration = Duration::from_secs(10);

/// Pause before asking a cluster again after its feed read failed (it is unreachable).
pub const FEED_RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// One cluster a watch follows.
struct Follow {
    cluster: String,
    client: Arc<ClusterClient>,
    /// Read through this revision.
    pos: u64,
}

fn compacted(cluster: &str, oldest: u64, requested: u64) -> ApiError {
    ApiError::new(
        ErrorCode::Compacted,
        compacted_message(cluster, requested, oldest),
    )
}

impl RouterService {
    /// Opens a watch of the clusters owning `request`'s keys.
    pub async fn watch(&self, request: WatchRequest) -> Result<WatchStream, ApiError> {
        let filter = request.filter.clone();
        let routing = self.routing();
        let clusters = if filter.prefix {
            routing.table.scan_plan(&filter.key)
        } else {
            vec![routing
                .table
                .owner(&filter.key)
                .map_err(route_error)?
                .to_string()]
        };
        if clusters.is_empty() {
            return Err(ApiError::bad_request(format!(
                "no route covers any key under {:?}",
                filter.key
            )));
        }
        let (sender, stream) = self.watch_slots.open()?;
        let starts = clusters.into_iter().map(|cluster| {
            let routing = routing.clone();
            let filter = filter.clone();
            let after = request.after(&cluster);
            async move {
                let client = routing.clients.get(&cluster).cloned().ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::Internal,
                        format!("the router has no client of cluster {cluster}"),
                    )
                })?;
                let first = client
                    .feed_read(FeedReadRequest {
                        filter,
                        after,
                        wait_ms: 0,
                    })
                    .await?;
                match first {
                    FeedReadResponse::Compacted { oldest } => {
                        Err(compacted(&cluster, oldest, after.unwrap_or(0) + 1))
                    }
                    FeedReadResponse::Page { sets, through } => {
                        let pos = after.unwrap_or(through);
                        Ok((
                            Follow {
                                cluster,
                                client,
                                pos,
                            },
                            sets,
                            through,
                        ))
                    }
                }
            }
        });
        let starts = join_all(starts)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, ApiError>>()?;
        let stop = self.watch_stop.subscribe();
        tokio::spawn(run(starts, sender, routing.table.clone(), filter, stop));
        Ok(stream)
    }

    /// Ends every watch (the router stops: open streams would hold its HTTP server up).
    pub fn stop_watches(&self) {
        self.watch_stop.send_replace(true);
    }

    /// Watches open through this router.
    pub fn watchers(&self) -> usize {
        self.watch_slots.in_use()
    }
}

/// Sends the sets of one page of `follow`'s cluster, keeping only owned, watched keys.
async fn deliver(
    sender: &WatchSender,
    table: &RouteTable,
    follow: &mut Follow,
    sets: Vec<aspen_api::feed::ChangeSet>,
    through: u64,
) -> Result<(), Stop> {
    for mut set in sets.into_iter().filter(|s| s.revision > follow.pos) {
        set.changes.retain(|c| table.owns(&follow.cluster, &c.key));
        if set.changes.is_empty() {
            continue;
        }
        let frame = WatchFrame::Changes {
            cluster: follow.cluster.clone(),
            set: SharedSet::new(set),
        };
        sender.send(frame, CATCH_UP_STALL).await?;
    }
    follow.pos = follow.pos.max(through);
    Ok(())
}

async fn run(
    starts: Vec<(Follow, Vec<aspen_api::feed::ChangeSet>, u64)>,
    sender: WatchSender,
    table: Arc<RouteTable>,
    filter: KeyFilter,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let stop = tokio::select! {
        stop = follow_all(starts, &sender, &table, &filter) => stop,
        _ = async { let _ = stopping.wait_for(|s| *s).await; } => Stop::Quietly,
    };
    sender.close(stop);
}

async fn follow_all(
    starts: Vec<(Follow, Vec<aspen_api::feed::ChangeSet>, u64)>,
    sender: &WatchSender,
    table: &RouteTable,
    filter: &KeyFilter,
) -> Stop {
    let poll = |i: usize, client: Arc<ClusterClient>, after: u64, delay: Duration| {
        let request = FeedReadRequest {
            filter: filter.clone(),
            after: Some(after),
            wait_ms: FEED_POLL_WAIT_MS,
        };
        async move {
            tokio::time::sleep(delay).await;
            (i, client.feed_read(request).await)
        }
    };
    let mut follows = Vec::with_capacity(starts.len());
    let mut polls = FuturesUnordered::new();
    for (mut follow, sets, through) in starts {
        let progress = WatchFrame::Progress {
            cluster: follow.cluster.clone(),
            revision: follow.pos,
        };
        if let Err(r) = sender.offer(progress) {
            return r.into();
        }
        if let Err(stop) = deliver(sender, table, &mut follow, sets, through).await {
            return stop;
        }
        polls.push(poll(
            follows.len(),
            follow.client.clone(),
            follow.pos,
            Duration::ZERO,
        ));
        follows.push(follow);
    }
    let interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            Some((i, answer)) = polls.next() => {
                let follow = &mut follows[i];
                let delay = match answer {
                    Ok(FeedReadResponse::Page { sets, through }) => {
                        if let Err(stop) = deliver(sender, table, follow, sets, through).await {
                            return stop;
                        }
                        Duration::ZERO
                    }
                    Ok(FeedReadResponse::Compacted { oldest }) => {
                        let error = WatchError::compacted(&follow.cluster, follow.pos + 1, oldest);
                        return Stop::With(error);
                    }
                    // Unreachable for a whole request deadline: ask again (its progress
                    // stops meanwhile, which is how a client sees the cluster is away).
                    Err(_) => FEED_RETRY_BACKOFF,
                };
                polls.push(poll(i, follow.client.clone(), follow.pos, delay));
            }
            _ = ticks.tick() => {
                for follow in &follows {
                    let progress = WatchFrame::Progress {
                        cluster: follow.cluster.clone(),
                        revision: follow.pos,
                    };
                    if let Err(r) = sender.offer(progress) {
                        return r.into();
                    }
                }
            }
            _ = sender.closed() => return Stop::Quietly,
        }
    }
}
