//! Stopping a request server without leaving a requester unsure whether a request ran.
//!
//! A request whose connection closes before its answer arrives may or may not have been
//! processed, and for a write that is an unknown outcome the client has to be told
//! about. A server that simply closes its endpoint makes exactly that: whatever it was
//! working on, and any answer still in its send buffers, is cut off. So a stopping server
//! [`Drain::stop`]s its protocols first: each connection served by
//! [`serve_streams`](crate::serve_streams) takes no new request stream (it refuses each
//! unread, with [`RESET_STOPPING`](crate::RESET_STOPPING)), finishes every request it
//! took, waits until the requester has received each answer, and then closes with
//! [`CLOSE_STOPPING`], once the connection is old enough for the requester to read that
//! code ([`CONFIRM_GRACE`](crate::CONFIRM_GRACE): a close during the handshake reaches it
//! as a bare transport error). A connection accepted meanwhile is handled the same way.
//!
//! A connection closed with [`CLOSE_STOPPING`] therefore tells the requesting side that
//! any request on it still without an answer was never taken: nothing was processed, and
//! sending it to another member is safe ([`Transport::request`](crate::Transport::request)
//! reports it as [`TransportError::Unreachable`](crate::TransportError::Unreachable)).

use std::time::Duration;

use tokio::sync::watch;

/// QUIC close code of a connection its server closed while stopping, after answering
/// every request it had taken: requests on it without an answer were not processed.
pub const CLOSE_STOPPING: u32 = 503;

/// A stop signal for the connections of one or more protocols, and a count of those still
/// draining. Clones share both.
#[derive(Debug, Clone)]
pub struct Drain {
    stopping: watch::Sender<bool>,
    open: watch::Sender<usize>,
    /// False for [`Drain::never`]: its servers need not wait for acknowledgements.
    stoppable: bool,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    /// A drain not yet stopping, serving no connection.
    pub fn new() -> Drain {
        Drain {
            stopping: watch::Sender::new(false),
            open: watch::Sender::new(0),
            stoppable: true,
        }
    }

    /// A drain that is never stopped, for a protocol whose connections simply end with the
    /// endpoint (its requests are safe to lose, as Raft's are): its servers answer without
    /// waiting for acknowledgements.
    pub(crate) fn never() -> Drain {
        Drain {
            stoppable: false,
            ..Drain::new()
        }
    }

    /// Whether [`Drain::stop`] may be called on it (it was not made by [`Drain::never`]).
    pub fn can_stop(&self) -> bool {
        self.stoppable
    }

    /// Whether [`Drain::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once [`Drain::stop`] is called.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Counts a connection as served until the returned guard is dropped.
    pub fn enter(&self) -> DrainGuard {
        self.open.send_modify(|n| *n += 1);
        DrainGuard(self.open.clone())
    }

    /// Connections still being served.
    pub fn open_connections(&self) -> usize {
        *self.open.borrow()
    }

    /// Tells every connection to stop taking requests and waits, at most `within`, until
    /// each has answered what it took (it closes later, see the module docs). Returns
    /// whether all of them did.
    ///
    /// # Panics
    /// On a drain made by [`Drain::never`].
    pub async fn stop(&self, within: Duration) -> bool {
        assert!(self.stoppable, "a Drain::never is never stopped");
        self.stopping.send_replace(true);
        let mut rx = self.open.subscribe();
        let drained = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        drained.is_ok()
    }
}

/// One connection counted by a [`Drain`] (see [`Drain::enter`]).
#[derive(Debug)]
pub struct DrainGuard(watch::Sender<usize>);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
