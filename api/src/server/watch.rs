//! `GET /v1/watch/{key}`: a backend's watch rendered as Server-Sent Events (the default)
//! or newline-delimited JSON (`Accept: application/x-ndjson`), and the blocking read
//! (`GET /v1/kv/{key}?index=R&wait=30s`) built on the same watch.
//!
//! A backend answers a watch with a [`WatchStream`], fed through its [`WatchSender`]: a
//! bounded buffer of at most [`WATCH_BUFFER_REVISIONS`] revisions and
//! [`WATCH_BUFFER_BYTES`] bytes between the backend and the client's connection. The
//! backend never waits on a full buffer while following live changes: it ends the watch
//! with `slow_watcher`, so a client that stops reading costs a bounded amount of memory
//! and never holds up writes. [`WatchSlots`] bounds the watches of a process.
//!
//! `render` writes the messages: a change set many watchers take whole is encoded once
//! ([`SharedSet`]), and a chunk carries every message already waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

mod render;

pub use render::SharedSet;
use render::{Framing, Renderer};

use super::auth::Checked;
use super::read::{parse_bool, parse_duration_ms, path_key, query_pairs};
use super::{HttpError, HttpResult, KvBackend};
use crate::error::{ApiError, ErrorCode, ValidationError};
use crate::limits::{MAX_WATCHERS, WATCH_BUFFER_BYTES, WATCH_BUFFER_REVISIONS};
use crate::watch::{ResumeToken, WatchError, WatchRequest};
use crate::wire::KeyFilter;

/// Most bytes of messages written to a watch's connection in one chunk (a single message
/// larger than this is still written whole, in its own chunk).
pub const WATCH_CHUNK_BYTES: usize = 256 * 1024;

/// One item a backend sends down a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFrame {
    /// A revision of `cluster`, filtered to the watched keys (never empty).
    Changes {
        /// The cluster.
        cluster: String,
        /// Its changes to watched keys.
        set: Arc<SharedSet>,
    },
    /// `cluster` has been read through `revision`.
    Progress {
        /// The cluster.
        cluster: String,
        /// The revision.
        revision: u64,
    },
}

impl WatchFrame {
    fn bytes(&self) -> usize {
        match self {
            WatchFrame::Changes { set, .. } => set.payload_bytes(),
            WatchFrame::Progress { .. } => 0,
        }
    }
}

/// The watches a process may serve at once ([`MAX_WATCHERS`]).
#[derive(Debug, Clone)]
pub struct WatchSlots(Arc<Semaphore>);

impl Default for WatchSlots {
    fn default() -> Self {
        WatchSlots(Arc::new(Semaphore::new(MAX_WATCHERS)))
    }
}

impl WatchSlots {
    /// Watches open right now.
    pub fn in_use(&self) -> usize {
        MAX_WATCHERS - self.0.available_permits()
    }

    /// A new watch's two ends, or 503 `overloaded` when [`MAX_WATCHERS`] are open. The
    /// slot is held until the sender is dropped.
    pub fn open(&self) -> Result<(WatchSender, WatchStream), ApiError> {
        let slot = self.0.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "this server already serves {MAX_WATCHERS} watches (the most it allows); \
                     close one, or retry later or elsewhere"
                ),
            )
        })?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER_REVISIONS);
        let (end_tx, end_rx) = oneshot::channel();
        let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
        let shared = Arc::new(Buffered {
            bytes: AtomicUsize::new(0),
            consumed: Notify::new(),
        });
        let sender = WatchSender {
            tx,
            end: end_tx,
            shared: shared.clone(),
            alive: alive_rx,
            _slot: slot,
        };
        let stream = WatchStream {
            rx,
            end: Some(end_rx),
            shared,
            _alive: alive_tx,
        };
        Ok((sender, stream))
    }
}

#[derive(Debug)]
struct Buffered {
    bytes: AtomicUsize,
    consumed: Notify,
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client's buffer is full: end the watch with [`WatchSender::slow`].
    Full,
    /// The client went away: stop.
    Gone,
}

/// How a backend's watch task ended, for [`WatchSender::close`].
#[derive(Debug)]
pub enum WatchEnd {
    /// The client left or the server stops: end without a message.
    Quietly,
    /// The client fell behind its buffer: end with `slow_watcher`.
    Slow,
    /// End with this error.
    With(WatchError),
}

impl From<Refused> for WatchEnd {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Full => WatchEnd::Slow,
            Refused::Gone => WatchEnd::Quietly,
        }
    }
}

/// The backend's end of a watch.
#[derive(Debug)]
pub struct WatchSender {
    tx: mpsc::Sender<WatchFrame>,
    end: oneshot::Sender<WatchError>,
    shared: Arc<Buffered>,
    /// Closes when the [`WatchStream`] is dropped.
    alive: tokio::sync::watch::Receiver<()>,
    _slot: OwnedSemaphorePermit,
}

impl WatchSender {
    /// Queues `frame` without waiting; `Full` when the buffer's revision or byte bound
    /// would be passed.
    pub fn offer(&self, frame: WatchFrame) -> Result<(), Refused> {
        self.try_offer(frame).map_err(|(refused, _)| refused)
    }

    fn try_offer(&self, frame: WatchFrame) -> Result<(), (Refused, WatchFrame)> {
        if self.tx.is_closed() {
            return Err((Refused::Gone, frame));
        }
        let bytes = frame.bytes();
        let held = self.shared.bytes.load(Ordering::Acquire);
        if held > 0 && held + bytes > WATCH_BUFFER_BYTES {
            return Err((Refused::Full, frame));
        }
        self.shared.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.tx.try_send(frame).map_err(|e| {
            self.shared.bytes.fetch_sub(bytes, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(f) => (Refused::Full, f),
                mpsc::error::TrySendError::Closed(f) => (Refused::Gone, f),
            }
        })
    }

    /// Queues `frame`, waiting up to `within` for room (used while catching up from
    /// history, where the backend reads at the client's pace); `Full` if none came.
    pub async fn send(&self, mut frame: WatchFrame, within: Duration) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.try_offer(frame) {
                Ok(()) => return Ok(()),
                Err((Refused::Gone, _)) => return Err(Refused::Gone),
                Err((Refused::Full, back)) => frame = back,
            }
            tokio::select! {
                _ = self.shared.consumed.notified() => {}
                _ = self.tx.closed() => return Err(Refused::Gone),
                _ = tokio::time::sleep_until(deadline) => return Err(Refused::Full),
            }
        }
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Resolves when the client's end has been dropped, like [`Self::closed`], but as a
    /// future of its own: a task can wait for it while another holds the sender.
    pub fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut alive = self.alive.clone();
        async move { while alive.changed().await.is_ok() {} }
    }

    /// Ends the watch as `end` says.
    pub fn close(self, end: WatchEnd) {
        match end {
            WatchEnd::Quietly => {}
            WatchEnd::Slow => self.slow(),
            WatchEnd::With(error) => self.end(error),
        }
    }

    /// Ends the watch: the client receives what is buffered, then `error`.
    pub fn end(self, error: WatchError) {
        let _ = self.end.send(error);
    }

    /// Ends the watch with `slow_watcher`.
    pub fn slow(self) {
        self.end(WatchError::new(
            ErrorCode::SlowWatcher,
            format!(
                "the client did not read its events fast enough (more than \
                 {WATCH_BUFFER_REVISIONS} revisions or {WATCH_BUFFER_BYTES} bytes waited); \
                 resume from the last token received"
            ),
        ))
    }
}

/// The client's end of a watch: frames, then possibly one final error.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<WatchFrame>,
    end: Option<oneshot::Receiver<WatchError>>,
    shared: Arc<Buffered>,
    _alive: tokio::sync::watch::Sender<()>,
}

/// What a [`WatchStream`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A frame.
    Frame(WatchFrame),
    /// The backend ended the watch with this error; nothing follows.
    End(WatchError),
}

impl WatchStream {
    /// The next item; `None` when the watch ended without an error (the server stops).
    pub async fn next(&mut self) -> Option<WatchItem> {
        match self.rx.recv().await {
            Some(frame) => Some(WatchItem::Frame(self.taken(frame))),
            None => self.end.take()?.await.ok().map(WatchItem::End),
        }
    }

    /// A frame that is already waiting, if one is; never the end (use [`Self::next`]).
    pub fn try_next(&mut self) -> Option<WatchFrame> {
        let frame = self.rx.try_recv().ok()?;
        Some(self.taken(frame))
    }

    /// Frees `frame`'s room in the buffer.
    fn taken(&self, frame: WatchFrame) -> WatchFrame {
        self.shared.bytes.fetch_sub(frame.bytes(), Ordering::AcqRel);
        self.shared.consumed.notify_one();
        frame
    }
}

/// The query of `GET /v1/watch/...`.
fn parse_watch(
    key: String,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<WatchRequest, HttpError> {
    let mut request = WatchRequest {
        filter: KeyFilter { key, prefix: false },
        start_revision: None,
        resume: ResumeToken::default(),
    };
    let token = |field: &str, value: &str| {
        value.parse::<ResumeToken>().map_err(|e| {
            HttpError::from(ValidationError::field(
                field,
                format!("not a resume token from this watch's messages: {e}"),
            ))
        })
    };
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default();
        request.resume = token("Last-Event-ID", text)?;
    }
    for (name, value) in pairs {
        match name.as_str() {
            "prefix" => request.filter.prefix = parse_bool("prefix", &value)?,
            "start_revision" => {
                let r: u64 = value.parse().map_err(|_| {
                    ValidationError::field(
                        "start_revision",
                        format!("{value:?} is not a revision (0 or absent: from now)"),
                    )
                })?;
                request.start_revision = (r > 0).then_some(r);
            }
            "resume" => request.resume = token("resume", &value)?,
            other => {
                return Err(ValidationError::field(
                    other,
                    "unknown query parameter; known: prefix, start_revision, resume",
                )
                .into())
            }
        }
    }
    if request.filter.key.len() > crate::limits::MAX_KEY_BYTES {
        return Err(ValidationError::KeyTooLarge {
            len: request.filter.key.len(),
            max: crate::limits::MAX_KEY_BYTES,
        }
        .into());
    }
    if request.filter.key.is_empty() && !request.filter.prefix {
        return Err(ValidationError::field(
            "key",
            "a watch of the empty key must be a prefix watch: add prefix=true",
        )
        .into());
    }
    Ok(request)
}

async fn open_watch<B: KvBackend>(
    backend: &B,
    key: String,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> HttpResult {
    let request = parse_watch(key, pairs, headers)?;
    let framing = match headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) {
        Some(accept) if accept.contains("application/x-ndjson") => Framing::NdJson,
        _ => Framing::Sse,
    };
    let renderer = Renderer {
        token: request.resume.clone(),
        framing,
    };
    let stream = backend.watch(request).await?;
    // One chunk carries every message already waiting, up to WATCH_CHUNK_BYTES: a
    // watcher that fell behind catches up in few writes, not one write per revision.
    let body = futures::stream::unfold(
        (stream, renderer),
        move |(mut stream, mut renderer)| async move {
            let mut chunk = Vec::new();
            renderer.write(&mut chunk, stream.next().await?);
            while chunk.len() < WATCH_CHUNK_BYTES {
                let Some(frame) = stream.try_next() else {
                    break;
                };
                renderer.write(&mut chunk, WatchItem::Frame(frame));
            }
            Some((Ok::<_, std::convert::Infallible>(chunk), (stream, renderer)))
        },
    );
    let content_type = match framing {
        Framing::Sse => "text/event-stream",
        Framing::NdJson => "application/x-ndjson",
    };
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `GET /v1/watch/{key}`.
pub(super) async fn watch<B: KvBackend>(
    backend: Checked<B>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let result =
        async { open_watch(&backend, path_key(path)?, query_pairs(query)?, &headers).await }.await;
    super::finish(&backend, "watch", start, result)
}

/// `GET /v1/watch/` (and `/v1/watch`): a watch of every key (`?prefix=true`).
pub(super) async fn watch_root<B: KvBackend>(
    backend: Checked<B>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let start = Instant::now();
    let result =
        async { open_watch(&backend, String::new(), query_pairs(query)?, &headers).await }.await;
    super::finish(&backend, "watch", start, result)
}

/// A blocking read's wait: until a watched key changes after `index`, or `wait_ms`
/// passes. A revision the feed no longer keeps answers at once (the read that follows
/// shows the current state, which is what the client needs then).
pub(super) async fn wait_for_change<B: KvBackend>(
    backend: &B,
    filter: KeyFilter,
    index: u64,
    wait_ms: u64,
) -> Result<(), HttpError> {
    // No revision follows the largest: such a read waits its whole `wait`.
    let request = WatchRequest {
        filter,
        start_revision: Some(index.saturating_add(1)),
        resume: ResumeToken::default(),
    };
    let mut stream = match backend.watch(request).await {
        Ok(stream) => stream,
        Err(e) if e.code == ErrorCode::Compacted => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) | Ok(Some(WatchItem::End(_))) => return Ok(()),
            Ok(Some(WatchItem::Frame(WatchFrame::Changes { .. }))) => return Ok(()),
            Ok(Some(WatchItem::Frame(WatchFrame::Progress { .. }))) => {}
        }
    }
}

/// Parses a blocking read's `wait`.
pub(super) fn parse_wait(value: &str) -> Result<u64, HttpError> {
    parse_duration_ms("wait", value, crate::limits::MAX_BLOCKING_WAIT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(revision: u64) -> WatchFrame {
        WatchFrame::Progress {
            cluster: "c".into(),
            revision,
        }
    }

    #[tokio::test]
    async fn a_watcher_buffer_holds_its_limit_and_refuses_one_more() {
        let slots = WatchSlots::default();
        let (tx, mut rx) = slots.open().unwrap();
        for r in 0..WATCH_BUFFER_REVISIONS as u64 {
            tx.offer(progress(r)).unwrap();
        }
        assert_eq!(tx.offer(progress(0)), Err(Refused::Full));
        assert_eq!(
            rx.next().await,
            Some(WatchItem::Frame(progress(0))),
            "what was buffered is still delivered"
        );
        tx.offer(progress(1)).unwrap();
        tx.slow();
        let mut last = None;
        while let Some(item) = rx.next().await {
            last = Some(item);
        }
        match last {
            Some(WatchItem::End(e)) => assert_eq!(e.code, "slow_watcher"),
            other => panic!("expected slow_watcher at the end, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_byte_bound_refuses_what_would_pass_it_but_never_a_lone_revision() {
        let big = |revision| WatchFrame::Changes {
            cluster: "c".into(),
            set: SharedSet::new(crate::feed::ChangeSet {
                revision,
                time_ms: 0,
                changes: vec![crate::feed::KeyChange {
                    key: "k".into(),
                    kind: crate::feed::ChangeKind::Put {
                        value: vec![0; WATCH_BUFFER_BYTES / 2 - 1].into(),
                        create_revision: 1,
                        version: 1,
                    },
                }],
            }),
        };
        let (tx, mut rx) = WatchSlots::default().open().unwrap();
        tx.offer(big(1)).unwrap();
        tx.offer(big(2)).expect("exactly the byte bound fits");
        assert_eq!(tx.offer(big(3)), Err(Refused::Full));
        rx.next().await.unwrap();
        rx.next().await.unwrap();
        let huge = WatchFrame::Changes {
            cluster: "c".into(),
            set: SharedSet::new(crate::feed::ChangeSet {
                revision: 4,
                time_ms: 0,
                changes: vec![crate::feed::KeyChange {
                    key: "k".into(),
                    kind: crate::feed::ChangeKind::Put {
                        value: vec![0; WATCH_BUFFER_BYTES + 1].into(),
                        create_revision: 1,
                        version: 1,
                    },
                }],
            }),
        };
        tx.offer(huge)
            .expect("an empty buffer takes any one revision");
    }

    #[tokio::test]
    async fn a_process_serves_at_most_max_watchers_and_a_closed_one_frees_its_slot() {
        let slots = WatchSlots::default();
        let mut open: Vec<_> = (0..MAX_WATCHERS).map(|_| slots.open().unwrap()).collect();
        assert_eq!(slots.in_use(), MAX_WATCHERS);
        let refused = slots.open().unwrap_err();
        assert_eq!(refused.code, ErrorCode::Overloaded);
        assert!(refused.message.contains(&MAX_WATCHERS.to_string()));
        open.pop();
        slots.open().expect("a slot is free again");
    }

    #[tokio::test]
    async fn gone_resolves_when_the_stream_is_dropped_and_never_holds_it_open() {
        let (tx, mut rx) = WatchSlots::default().open().unwrap();
        let gone = tokio::spawn(tx.gone());
        tx.offer(progress(1)).unwrap();
        tx.slow();
        assert!(matches!(rx.next().await, Some(WatchItem::Frame(_))));
        let end = tokio::time::timeout(Duration::from_secs(10), rx.next()).await;
        let Ok(Some(WatchItem::End(error))) = end else {
            panic!("the stream must end while gone() waits: {end:?}");
        };
        assert_eq!(error.code, ErrorCode::SlowWatcher.as_str());
        assert!(!gone.is_finished(), "the client's end is still there");
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("gone() resolves once the stream is dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn a_catching_up_sender_waits_for_room_and_gives_up_at_its_deadline() {
        let (tx, mut rx) = WatchSlots::default().open().unwrap();
        for r in 0..WATCH_BUFFER_REVISIONS as u64 {
            tx.offer(progress(r)).unwrap();
        }
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rx.next().await;
            rx
        });
        tx.send(progress(9), Duration::from_secs(10))
            .await
            .expect("room freed by the reader");
        let _rx = reader.await.unwrap();
        let out = tx.send(progress(10), Duration::from_millis(50)).await;
        assert_eq!(out, Err(Refused::Full));
    }
}
