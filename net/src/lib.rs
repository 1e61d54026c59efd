//! Aspen's iroh transport, shared by cluster nodes and routers: an endpoint's identity
//! (its secret key), binding an endpoint, and request/response exchanges over QUIC, one
//! request per bi-directional stream, with connections kept and reused per peer and
//! protocol.
//!
//! It knows nothing of Raft or of the key-value API: callers bring the ALPN and the bytes.
//! Nodes use it for `aspen/raft/2` and `aspen/kv/2`; a router uses it to reach clusters
//! over `aspen/kv/2`. Keeping it out of `cluster-node` is what lets the router reach
//! clusters without linking storage or consensus.
//!
//! # Layout
//!
//! - [`access`]: [`Access`], the endpoint hook that decides per ALPN which endpoints may
//!   connect at all, bounds the connections of each ([`MAX_CONNECTIONS_PER_PEER`]), and
//!   cuts chosen peers off on every protocol (fault injection).
//! - [`batcher`]: [`batcher::Batcher`], a queue whose task runs waiting requests in
//!   batches (group commit for a node's proposals and reads, request batching for a
//!   router's cluster clients).
//! - [`drain`]: [`Drain`], how a stopping server answers every request it took before it
//!   closes, and [`CLOSE_STOPPING`], which tells requesters the rest were never taken.
//! - [`frame`]: a message on a stream (length first, so one over its limit is refused
//!   unread), [`serve_streams`], and the [`ReadBudget`] that bounds a protocol's request
//!   bytes in memory.
//! - [`transport`]: [`Transport`], [`PeerAddr`], [`TransportError`], endpoint binding (with at most [`MAX_STREAMS_PER_CONNECTION`] requests in flight per
//!   connection) and secret keys, and fault injection ([`Transport::set_blocked`]).
//! - `examples/rtt.rs`: the round trip of one request over this transport on loopback,
//!   the floor a Raft or key-value request's time is measured against.

pub mod access;
pub mod batcher;
pub mod drain;
pub mod frame;
pub mod transport;

pub use access::{Access, CLOSE_NOT_ADMITTED, CLOSE_REFUSED, MAX_CONNECTIONS_PER_PEER};
pub use drain::{Drain, CLOSE_STOPPING};
pub use frame::{
    read_message, serve_stream_pairs, serve_streams, serve_streams_until_closed, write_frame,
    write_message, FrameError, ReadBudget, CONFIRM_GRACE, RESET_STOPPING, RESET_TOO_LARGE,
};
pub use transport::{
    bind_endpoint, create_secret_key_file, load_or_create_secret_key,
    load_or_create_secret_key_file, read_secret_key_file, PeerAddr, Transport, TransportError,
    CLOSE_NOT_ALLOWED, CONNECT_TIMEOUT, MAX_STREAMS_PER_CONNECTION, SECRET_KEY_FILE,
};

#[cfg(test)]
mod tests;
