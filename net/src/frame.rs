//! How a message travels on a request stream of Aspen's protocols (`aspen/kv/2`,
//! `aspen/raft/2`): a 4-byte big-endian length, then that many bytes, then the end of the
//! stream. The length comes first so a receiver refuses a message over its limit before
//! it reads a byte of it (the stream is reset with [`RESET_TOO_LARGE`], and the sender
//! learns that nothing was processed), and so a server takes the message's bytes from its
//! protocol's [`ReadBudget`] before reading it: however many connections and streams
//! peers open, a protocol holds at most its budget of request bytes at once. The budget
//! is at least one message, and each message takes all its bytes at once, so a message
//! waits for room (QUIC flow control holds its sender back meanwhile) but never deadlocks.

use std::sync::Arc;
use std::time::Duration;

use iroh::endpoint::{Connection, ReadError, ReadExactError, RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::drain::{Drain, CLOSE_STOPPING};

/// Bytes of the length prefix of every message.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// QUIC stream error code of a message refused for its declared length: nothing of it was
/// read or processed.
pub const RESET_TOO_LARGE: u32 = 413;

/// QUIC stream error code of a request a stopping server refused unread.
pub const RESET_STOPPING: u32 = 503;

/// How old a connection must be before a stopping server closes it with
/// [`CLOSE_STOPPING`]: by then the requester has confirmed the handshake and reads the
/// close's code. Meanwhile new request streams are refused unread ([`RESET_STOPPING`]).
pub const CONFIRM_GRACE: Duration = Duration::from_secs(1);

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Its declared length is over the receiver's limit; nothing of it was read.
    #[error("a message of {len} bytes is over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    /// The peer refused what this side sent as too large ([`RESET_TOO_LARGE`]).
    #[error("the peer refused the message as over its size limit")]
    RefusedTooLarge,
    /// The connection went before the whole message passed (its close reason says why).
    #[error("connection lost")]
    ConnectionLost,
    /// The peer stopped reading what this side was sending.
    #[error("the peer stopped reading the stream")]
    Stopped,
    /// The peer is stopping and refused the request unread ([`RESET_STOPPING`]).
    #[error("the peer is stopping and refused the request unread")]
    NotTaken,
    /// The stream ended or failed before the whole message arrived.
    #[error("{0}")]
    Stream(String),
}

/// How many request bytes one protocol's server may hold at once, over all its
/// connections and streams, and the largest one message may be; clones share the budget.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    max_message: usize,
    bytes: Arc<Semaphore>,
}

impl ReadBudget {
    /// A budget of `total` bytes for messages of at most `max_message` bytes.
    ///
    /// # Panics
    /// If `total` is below `max_message` (a message could never be read) or a message
    /// does not fit in the `u32` the semaphore counts in.
    pub fn new(max_message: usize, total: usize) -> ReadBudget {
        assert!(
            total >= max_message,
            "a read budget holds at least one message"
        );
        assert!(
            u32::try_from(max_message).is_ok(),
            "messages fit a u32 length"
        );
        ReadBudget {
            max_message,
            bytes: Arc::new(Semaphore::new(total)),
        }
    }

    /// The largest message it admits.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Bytes free right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Writes `bytes` as one message and ends the stream.
pub async fn write_message(send: &mut SendStream, bytes: &[u8]) -> Result<(), FrameError> {
    write_frame(send, bytes).await?;
    send.finish().map_err(|e| FrameError::Stream(e.to_string()))
}

/// Writes `bytes` as one message and leaves the stream open, for a protocol that sends
/// more after it (a snapshot's bytes after its offer).
pub async fn write_frame(send: &mut SendStream, bytes: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| FrameError::Stream(format!("a message of {} bytes", bytes.len())))?;
    let written = async {
        send.write_all(&len.to_be_bytes()).await?;
        send.write_all(bytes).await
    };
    written.await.map_err(|e| match e {
        iroh::endpoint::WriteError::Stopped(code) if code == RESET_TOO_LARGE.into() => {
            FrameError::RefusedTooLarge
        }
        iroh::endpoint::WriteError::Stopped(code) if code == RESET_STOPPING.into() => {
            FrameError::NotTaken
        }
        iroh::endpoint::WriteError::Stopped(_) => FrameError::Stopped,
        iroh::endpoint::WriteError::ConnectionLost(_) => FrameError::ConnectionLost,
        e => FrameError::Stream(e.to_string()),
    })
}

/// Reads one message's length; a length over `limit` resets the stream with
/// [`RESET_TOO_LARGE`] and is an error, before any of the message is read.
async fn read_length(recv: &mut RecvStream, limit: usize) -> Result<usize, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await.map_err(exact_error)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        let _ = recv.stop(RESET_TOO_LARGE.into());
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(exact_error)?;
    Ok(body)
}

fn exact_error(e: ReadExactError) -> FrameError {
    match e {
        ReadExactError::ReadError(ReadError::Reset(code)) if code == RESET_TOO_LARGE.into() => {
            FrameError::RefusedTooLarge
        }
        ReadExactError::ReadError(ReadError::Reset(code)) if code == RESET_STOPPING.into() => {
            FrameError::NotTaken
        }
        ReadExactError::ReadError(ReadError::ConnectionLost(_)) => FrameError::ConnectionLost,
        e => FrameError::Stream(e.to_string()),
    }
}

/// The bytes `recv` carries until its end, in chunks of `chunk` bytes (the last may be
/// shorter), for a protocol that streams a value after its frames. QUIC hands over a
/// packet's worth (about a KiB) at a time: passed on one by one, each would cost more
/// downstream (a channel send, an HTTP frame) than copying them together does.
pub fn read_chunks(
    recv: RecvStream,
    chunk: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, String>> + Send + 'static {
    futures::stream::unfold(Some(recv), move |recv| async move {
        let mut recv = recv?;
        let mut buf = bytes::BytesMut::with_capacity(chunk);
        let mut ended = false;
        while buf.len() < chunk {
            match tokio::io::AsyncReadExt::read_buf(&mut recv, &mut buf).await {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => return Some((Err(format!("the stream broke off: {e}")), None)),
            }
        }
        if buf.is_empty() {
            return None;
        }
        Some((Ok(buf.freeze()), (!ended).then_some(recv)))
    })
}

/// Reads one message of at most `limit` bytes (an answer, on the requesting side).
pub async fn read_message(recv: &mut RecvStream, limit: usize) -> Result<Vec<u8>, FrameError> {
    let len = read_length(recv, limit).await?;
    read_body(recv, len).await
}

/// Reads one request within `budget`: the bytes stay taken from it until the permit
/// returned with them is dropped.
async fn read_request(
    recv: &mut RecvStream,
    budget: &ReadBudget,
) -> Result<(Vec<u8>, OwnedSemaphorePermit), FrameError> {
    let len = read_length(recv, budget.max_message).await?;
    let permit = budget
        .bytes
        .clone()
        .acquire_many_owned(len as u32)
        .await
        .map_err(|_| FrameError::Stream("the read budget is closed".into()))?;
    Ok((read_body(recv, len).await?, permit))
}

/// Serves every request stream of one accepted connection with `handle`, one task per
/// stream, until the connection closes or `drain` stops (see [`crate::drain`]: then it
/// refuses new streams unread, finishes the ones it took, waits until each answer is
/// received, and closes the connection with [`CLOSE_STOPPING`] once it is
/// [`CONFIRM_GRACE`] old). Each request is read within `budget`, and its bytes count
/// against it until its answer is written.
pub async fn serve_streams<F, Fut>(conn: Connection, budget: ReadBudget, drain: &Drain, handle: F)
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let acked = drain.can_stop();
    serve_stream_pairs(conn, drain, move |send, recv| {
        serve_stream(send, recv, budget.clone(), acked, handle.clone())
    })
    .await
}

/// [`serve_streams`] for a protocol that streams rather than exchanging one message each
/// way (`aspen/value/1`): `handle` serves one stream pair whole and returns whether its
/// request is settled (see [`serve_stream`]); with a stoppable `drain` it returns only
/// once its answer was received, so the close after a stop can say the rest were not taken.
pub async fn serve_stream_pairs<F, Fut>(conn: Connection, drain: &Drain, handle: F)
where
    F: Fn(SendStream, RecvStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let accepted_at = std::time::Instant::now();
    let counted = drain.enter();
    let mut streams = JoinSet::new();
    // Whether every request taken so far has been answered and its answer received (or
    // given up on by the requester): only then may the close say the rest were not taken.
    let mut settled = true;
    let stopping = drain.stopping();
    tokio::pin!(stopping);
    let stopped = loop {
        tokio::select! {
            biased;
            () = &mut stopping => break true,
            Some(done) = streams.join_next(), if !streams.is_empty() => {
                settled &= done.unwrap_or(false);
            }
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(handle(send, recv));
                }
                Err(_) => break false,
            },
        }
    };
    if stopped {
        // The requests taken finish; a stream opened meanwhile is refused unread.
        let finished = async {
            while let Some(done) = streams.join_next().await {
                settled &= done.unwrap_or(false);
            }
        };
        if !refuse_new_streams(&conn, finished).await {
            return;
        }
        drop(counted);
        // A close's code reaches the requester only once it has confirmed the handshake;
        // before that it arrives as a bare transport error, an unknown outcome (seen: a
        // router connecting to a stopping node). So a young connection refuses new streams
        // unread until it is CONFIRM_GRACE old, and only then closes.
        let old_enough = tokio::time::sleep_until((accepted_at + CONFIRM_GRACE).into());
        if !refuse_new_streams(&conn, old_enough).await {
            return;
        }
        if settled {
            conn.close(CLOSE_STOPPING.into(), b"stopping");
        } else {
            // An answer may not have arrived: the requester must not take it as untaken.
            conn.close(0u32.into(), b"stopping");
        }
    } else {
        // The connection is gone; requests already running finish on their own (a
        // proposal is not abandoned halfway because its requester left).
        streams.detach_all();
    }
}

/// Refuses every request stream opened on `conn` unread, as a stopping server does (the
/// requester learns that nothing was processed, [`FrameError::NotTaken`]), until `until`
/// resolves. Returns false if the connection went first.
async fn refuse_new_streams(
    conn: &Connection,
    until: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::pin!(until);
    loop {
        tokio::select! {
            biased;
            () = &mut until => return true,
            accepted = conn.accept_bi() => match accepted {
                Ok((mut send, mut recv)) => {
                    let _ = recv.stop(RESET_STOPPING.into());
                    let _ = send.reset(RESET_STOPPING.into());
                }
                Err(_) => return false,
            },
        }
    }
}

/// [`serve_streams`] for a protocol that is never drained (Raft, blob holds): its
/// connections end with the endpoint's close, and answers are not waited on.
pub async fn serve_streams_until_closed<F, Fut>(conn: Connection, budget: ReadBudget, handle: F)
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    static NEVER: std::sync::LazyLock<Drain> = std::sync::LazyLock::new(Drain::never);
    serve_streams(conn, budget, &NEVER, handle).await
}

/// Serves one request stream: reads the request and answers it; with `acked`, also waits
/// until the requester's QUIC stack acknowledged the answer, so that a stopping server
/// closes the connection only after every answer arrived (the drain's own deadline bounds
/// the wait; a requester that vanished ends it with the connection's idle timeout).
/// Returns whether the request is settled: not taken (it could not be read), answered and
/// received, or given up on by the requester (it stopped the stream, so it already counts
/// the request as without an answer), or the connection is gone (no close reaches it).
async fn serve_stream<F, Fut>(
    mut send: SendStream,
    mut recv: RecvStream,
    budget: ReadBudget,
    acked: bool,
    handle: F,
) -> bool
where
    F: Fn(Vec<u8>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let (request, permit) = match read_request(&mut recv, &budget).await {
        Ok(read) => read,
        Err(FrameError::TooLarge { len, limit }) => {
            tracing::debug!(len, limit, "refused a request over the message limit");
            let _ = send.reset(RESET_TOO_LARGE.into());
            return true;
        }
        Err(_) => return true,
    };
    let answer = handle(request).await;
    drop(permit);
    drop(recv);
    match write_message(&mut send, &answer).await {
        Ok(()) if acked => {
            // Resolves once acknowledged, stopped by the requester, or the connection went.
            let _ = send.stopped().await;
            true
        }
        Ok(()) => true,
        Err(FrameError::Stopped | FrameError::RefusedTooLarge | FrameError::ConnectionLost) => true,
        Err(_) => false,
    }
}
