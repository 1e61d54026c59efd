//! Gathering an HTTP/2 connection's frames into fewer socket writes.
//!
//! On HTTP/2 every stream's body is sent by a task of its own, and the connection's task
//! writes and flushes whatever frames are queued each time it runs. When one change
//! reaches a hundred watches sharing a connection, the connection's task ran between the
//! streams' tasks and wrote their frames a few at a time: about 41 socket writes per
//! change (measured with `perf stat` on a node serving 100 watches at 1,000 puts/s), each
//! a pass through the kernel's TCP stack on a machine whose cores the watchers also need.
//!
//! [`Coalesced`] holds what the connection writes until it flushes, and on a flush lets
//! the task yield before writing: the streams' tasks already woken queue their frames
//! meanwhile. It yields again while each yield brought more frames (the hundred streams'
//! tasks wake one after another, as the watch hub hands each its change), at most
//! [`MAX_FLUSH_YIELDS`] times, and writes once a yield brings nothing: a lone answer
//! waits one yield, as before, and a change's frames for many watches leave in a few
//! writes instead of one write per two or three frames. At most [`COALESCE_BYTES`] are
//! held; a write that would pass that writes out what is held first, and one at least that
//! large with nothing held goes straight through (a value's bytes are not copied again).
//! An HTTP/1.1 connection, told apart by its first bytes (HTTP/2 starts with its preface),
//! passes through untouched: its one response at a time gains nothing by waiting.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes of an HTTP/2 connection's frames held before they are written to the
/// socket.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// The most times one flush yields while frames keep arriving, before it writes what is
/// held anyway: a bound on the wait a steady stream of frames can add to a flush.
pub const MAX_FLUSH_YIELDS: u8 = 8;

/// The most room an emptied buffer keeps for the next frames; a larger one (after a burst)
/// is let go, so an idle connection holds at most this much.
const KEEP_BYTES: usize = 8 * 1024;

/// How an HTTP/2 connection begins (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The bytes read so far are the first this many of the HTTP/2 preface (as with the
    /// listener's own choice, only the whole preface makes it HTTP/2).
    Unknown(usize),
    /// HTTP/1.1: every call passes through.
    Direct,
    /// HTTP/2: writes are gathered until a flush has yielded (see the module docs).
    Gather,
}

/// A connection's stream with its HTTP/2 writes gathered (see the module docs).
#[derive(Debug)]
pub(super) struct Coalesced<S> {
    io: S,
    mode: Mode,
    /// What the connection wrote and the socket has not taken yet: `held[sent..]`.
    held: Vec<u8>,
    sent: usize,
    /// Yields of the flush under way (0: none yet).
    yields: u8,
    /// How many bytes were held at its last yield: more now means frames still arrive.
    held_at_yield: usize,
}

impl<S> Coalesced<S> {
    #[cfg(test)]
    fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub(super) fn new(io: S) -> Self {
        Coalesced {
            io,
            mode: Mode::Unknown(0),
            held: Vec::new(),
            sent: 0,
            yields: 0,
            held_at_yield: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Writes out everything held; `Pending` while the socket takes no more.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.held.len() {
            let this = &mut *self;
            let unsent = &this.held[this.sent..];
            let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, unsent))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        self.held.shrink_to(KEEP_BYTES);
        self.yields = 0;
        self.held_at_yield = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs` (`len` bytes in all) into what is held, or past it when it is large
    /// and nothing is held.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        len: usize,
    ) -> Poll<std::io::Result<usize>> {
        if self.held.len() - self.sent + len > COALESCE_BYTES {
            std::task::ready!(self.poll_drain(cx))?;
        }
        if len >= COALESCE_BYTES {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Mode::Unknown(matched) = self.mode {
            let new = &buf.filled()[before..];
            let n = new.len().min(PREFACE.len() - matched);
            self.mode = if new[..n] != PREFACE[matched..matched + n] {
                Mode::Direct
            } else if matched + n == PREFACE.len() {
                Mode::Gather
            } else {
                Mode::Unknown(matched + n)
            };
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.mode != Mode::Gather {
            return Pin::new(&mut self.io).poll_write(cx, buf);
        }
        self.poll_gather(cx, &[IoSlice::new(buf)], buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.mode != Mode::Gather {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_gather(cx, bufs, len)
    }

    fn is_write_vectored(&self) -> bool {
        // Gathering takes slices as cheaply as one buffer; otherwise the stream's own say.
        self.mode == Mode::Gather || self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.sent < self.held.len() {
            // The tasks woken with this one queue their frames before the write; again
            // while they still do.
            let arriving = self.held.len() > self.held_at_yield;
            if self.yields == 0 || (arriving && self.yields < MAX_FLUSH_YIELDS) {
                self.yields += 1;
                self.held_at_yield = self.held.len();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(self.poll_drain(cx))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A stream that answers reads from `input` and records every write it is given.
    #[derive(Default)]
    struct Recorder {
        input: Vec<u8>,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.input.len().min(buf.remaining());
            buf.put_slice(&self.input[..n]);
            self.input.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection that has read `first` from its client, and the record of its writes.
    async fn opened(first: &[u8]) -> (Coalesced<Recorder>, Arc<Mutex<Vec<Vec<u8>>>>) {
        let recorder = Recorder {
            input: first.to_vec(),
            ..Recorder::default()
        };
        let writes = recorder.writes.clone();
        let mut conn = Coalesced::new(recorder);
        let mut got = vec![0u8; first.len()];
        conn.read_exact(&mut got).await.unwrap();
        (conn, writes)
    }

    fn written(writes: &Mutex<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
        writes.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn http2_frames_reach_the_socket_together_after_one_yield_on_flush() {
        let (mut conn, writes) = opened(PREFACE).await;
        assert!(conn.is_write_vectored(), "slices are gathered");
        conn.write_all(b"frame 1;").await.unwrap();
        conn.write_all(b"frame 2;").await.unwrap();
        assert!(written(&writes).is_empty(), "held until a flush");
        // The first poll of a flush yields, writing nothing; the next writes all at once.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert!(written(&writes).is_empty(), "the first flush only yields");
        conn.write_all(b"frame 3;").await.unwrap();
        conn.flush().await.unwrap();
        assert_eq!(written(&writes), vec![b"frame 1;frame 2;frame 3;".to_vec()]);
        // Nothing held: a flush passes through without yielding.
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_flush_yields_again_while_frames_arrive_at_most_max_flush_yields_times() {
        let (mut conn, writes) = opened(PREFACE).await;
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        conn.write_all(b"f;").await.unwrap();
        // Every yield brings another frame: the flush yields MAX_FLUSH_YIELDS times...
        for _ in 0..MAX_FLUSH_YIELDS {
            assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
            assert!(written(&writes).is_empty(), "held while frames arrive");
            conn.write_all(b"f;").await.unwrap();
        }
        // ...and then writes them all in one write, though frames still arrive.
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        let all = b"f;".repeat(usize::from(MAX_FLUSH_YIELDS) + 1);
        assert_eq!(written(&writes), vec![all]);
        // A yield that brings nothing ends the next flush at once.
        conn.write_all(b"g;").await.unwrap();
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert_eq!(written(&writes).len(), 2);
        assert_eq!(written(&writes)[1], b"g;".to_vec());
    }

    /// A connection fed `pieces`, one read each: whether it gathers its writes after.
    async fn gathers_after(pieces: &[&[u8]]) -> bool {
        let (mut conn, writes) = opened(pieces[0]).await;
        for piece in &pieces[1..] {
            conn.get_mut().input.extend_from_slice(piece);
            let mut got = vec![0u8; piece.len()];
            conn.read_exact(&mut got).await.unwrap();
        }
        conn.write_all(b"x").await.unwrap();
        written(&writes).is_empty()
    }

    #[tokio::test]
    async fn only_the_whole_preface_makes_a_connection_http2_even_read_in_pieces() {
        assert!(gathers_after(&[b"P", b"RI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]).await);
        assert!(!gathers_after(&[b"P", b"OST /v1/kv/a HTTP/1.1\r\n\r\n"]).await);
        assert!(
            !gathers_after(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r"]).await,
            "one short"
        );
    }

    #[tokio::test]
    async fn a_buffer_emptied_after_a_burst_keeps_no_more_than_keep_bytes() {
        let (mut conn, writes) = opened(PREFACE).await;
        conn.write_all(&vec![1u8; COALESCE_BYTES - 1])
            .await
            .unwrap();
        assert!(conn.held.capacity() > KEEP_BYTES);
        conn.flush().await.unwrap();
        assert_eq!(written(&writes)[0].len(), COALESCE_BYTES - 1);
        assert!(
            conn.held.capacity() <= KEEP_BYTES,
            "{}",
            conn.held.capacity()
        );
    }

    #[tokio::test]
    async fn http1_writes_pass_straight_through() {
        let (mut conn, writes) = opened(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(!conn.is_write_vectored(), "the stream's own answer");
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(written(&writes), vec![b"HTTP/1.1 200 OK\r\n".to_vec()]);
    }

    #[tokio::test]
    async fn at_most_coalesce_bytes_are_held_and_a_write_that_large_goes_straight_through() {
        let (mut conn, writes) = opened(PREFACE).await;
        // Exactly the bound is held.
        conn.write_all(&vec![1u8; COALESCE_BYTES - 1])
            .await
            .unwrap();
        conn.write_all(&[2u8]).await.unwrap();
        assert!(
            written(&writes).is_empty(),
            "{COALESCE_BYTES} bytes are held"
        );
        // One byte more writes out what is held first, then holds the byte.
        conn.write_all(&[3u8]).await.unwrap();
        let first = written(&writes);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].len(), COALESCE_BYTES);
        assert_eq!(first[0][COALESCE_BYTES - 1], 2);
        // A write of the bound itself, with one byte held: the byte goes out first, then
        // the write, uncopied.
        conn.write_all(&vec![4u8; COALESCE_BYTES]).await.unwrap();
        let all = written(&writes);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], vec![3u8]);
        assert_eq!(all[2].len(), COALESCE_BYTES);
        // One byte under the bound with nothing held is held.
        conn.write_all(&vec![5u8; COALESCE_BYTES - 1])
            .await
            .unwrap();
        assert_eq!(written(&writes).len(), 3);
        conn.shutdown().await.unwrap();
        assert_eq!(
            written(&writes)[3].len(),
            COALESCE_BYTES - 1,
            "written at shutdown"
        );
    }
}
