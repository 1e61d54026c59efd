//! Who may hold a connection with this endpoint, decided once per connection, for every
//! protocol at once, by an iroh endpoint hook ([`Access`]).
//!
//! iroh-docs, iroh-gossip and iroh-blobs serve any authenticated endpoint that asks (a
//! peer that knows a document's id may read it), so a node restricts those protocols to
//! the endpoints its configuration names. The hook runs after the TLS handshake, when the
//! remote's identity and the connection's ALPN are known, for incoming and outgoing
//! connections alike, so neither side of a refused pair exchanges a byte of the protocol.
//! Each ALPN either is open (its own handler checks, as `aspen/raft/2` does) or has a rule:
//! a predicate over the remote's endpoint id, read at every connection, so membership
//! changes take effect for the next connection.
//!
//! Every remote may hold at most [`MAX_CONNECTIONS_PER_PEER`] connections at once; one
//! more is refused at the handshake and counted like a refusal by rule.
//!
//! Fault injection lives here too: [`Access::set_blocked`] refuses every connection with
//! chosen peers on every ALPN and closes the ones already open, which is what a network
//! partition does to a node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks, WeakConnectionHandle};
use iroh::EndpointId;

/// QUIC error code of an open connection [`Access`] closes because fault injection cut its
/// peer off: requests in flight on it may have been processed.
pub const CLOSE_REFUSED: u32 = 403;

/// QUIC error code of a connection [`Access`] refuses at its handshake (an endpoint that is
/// not allowed, over the per-peer bound, or cut off): it is closed before any stream is
/// accepted, so nothing the remote sent on it reached a protocol, and a request on it
/// can be reported as not delivered.
pub const CLOSE_NOT_ADMITTED: u32 = 401;

/// A predicate deciding which endpoints may use one ALPN.
pub type Rule = Arc<dyn Fn(&EndpointId) -> bool + Send + Sync>;

/// The access policy of one endpoint; clones share it. Install it with
/// [`crate::bind_endpoint`].
#[derive(Clone, Default)]
pub struct Access {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    rules: RwLock<HashMap<Vec<u8>, Rule>>,
    blocked: RwLock<HashSet<EndpointId>>,
    /// Open connections by remote, so that blocking a peer can close them.
    live: Mutex<HashMap<EndpointId, Vec<WeakConnectionHandle>>>,
    /// Connections refused by a rule, per ALPN.
    refused: Mutex<HashMap<Vec<u8>, u64>>,
    /// Remotes whose refusal was logged at warn level already (later ones log at debug).
    warned: Mutex<HashSet<EndpointId>>,
}

/// Most connections one remote endpoint may hold with this endpoint at once, over every
/// ALPN and both directions. A member holds about one per protocol each way (Raft, KV
/// and, when federated, docs, gossip and blobs), plus for a while those of an incarnation
/// that died without closing them; past this one more is refused at the handshake and
/// counted like a refusal by rule, so an endpoint that connects in a loop cannot exhaust
/// this one.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;

/// What [`Access::track`] made of a connection.
enum Tracked {
    /// Recorded as open: admitted.
    Open,
    /// Its remote is cut off by fault injection.
    Blocked,
    /// Its remote holds [`MAX_CONNECTIONS_PER_PEER`] open connections already.
    Full,
}

/// Most distinct refused endpoints remembered for logging; past it every refusal logs at
/// debug level, so a flood of strangers cannot grow memory or flood the log.
const MAX_WARNED_REMOTES: usize = 1024;

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alpns: Vec<String> = self
            .inner
            .rules
            .read()
            .expect("rules lock")
            .keys()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        f.debug_struct("Access")
            .field("restricted_alpns", &alpns)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// A policy with every ALPN open and nobody blocked.
    pub fn open() -> Access {
        Access::default()
    }

    /// Restricts `alpn` to the endpoints `allowed` accepts, replacing an earlier rule.
    pub fn restrict(&self, alpn: &[u8], allowed: Rule) {
        self.inner
            .rules
            .write()
            .expect("rules lock")
            .insert(alpn.to_vec(), allowed);
    }

    /// Whether `remote` may hold a connection on `alpn` right now.
    pub fn allows(&self, remote: &EndpointId, alpn: &[u8]) -> bool {
        if self.is_blocked(remote) {
            return false;
        }
        let rules = self.inner.rules.read().expect("rules lock");
        rules.get(alpn).is_none_or(|rule| rule(remote))
    }

    /// Cuts this endpoint off from `peers` on every ALPN, both directions, closing the
    /// connections already open with them; an empty set heals (fault injection).
    pub fn set_blocked(&self, peers: HashSet<EndpointId>) {
        let mut live = self.inner.live.lock().expect("live connections lock");
        for peer in &peers {
            for handle in live.remove(peer).unwrap_or_default() {
                if let Some(conn) = handle.upgrade() {
                    conn.close(CLOSE_REFUSED.into(), b"partitioned");
                }
            }
        }
        *self.inner.blocked.write().expect("blocked lock") = peers;
    }

    /// Whether traffic with `peer` is cut by fault injection.
    pub fn is_blocked(&self, peer: &EndpointId) -> bool {
        self.inner
            .blocked
            .read()
            .expect("blocked lock")
            .contains(peer)
    }

    /// Connections refused by a rule so far, per ALPN (for metrics).
    pub fn refused_counts(&self) -> Vec<(String, u64)> {
        let refused = self.inner.refused.lock().expect("refused lock");
        let mut counts: Vec<(String, u64)> = refused
            .iter()
            .map(|(alpn, n)| (String::from_utf8_lossy(alpn).into_owned(), *n))
            .collect();
        counts.sort();
        counts
    }

    /// Records `conn` as open, unless its remote is cut off or already holds
    /// [`MAX_CONNECTIONS_PER_PEER`] open connections (then it is not recorded).
    ///
    /// The cut is read under the lock [`Access::set_blocked`] holds while it closes the
    /// open connections and replaces the cut, so a connection whose handshake ends while a
    /// cut is being made is either recorded first (and closed by the cut) or sees the cut:
    /// none is admitted unseen by it and lives on through the partition.
    fn track(&self, conn: &Connection) -> Tracked {
        let mut live = self.inner.live.lock().expect("live connections lock");
        if self.is_blocked(&conn.remote_id()) {
            return Tracked::Blocked;
        }
        let handles = live.entry(conn.remote_id()).or_default();
        handles.retain(|h| h.upgrade().is_some_and(|c| c.close_reason().is_none()));
        if handles.len() >= MAX_CONNECTIONS_PER_PEER {
            return Tracked::Full;
        }
        handles.push(conn.weak_handle());
        Tracked::Open
    }

    fn count_refused(&self, alpn: &[u8]) {
        *self
            .inner
            .refused
            .lock()
            .expect("refused lock")
            .entry(alpn.to_vec())
            .or_default() += 1;
    }

    /// Refuses `remote`'s connection on `alpn` because of `why`, counting it; the first
    /// refusal of a remote logs at warn level, later ones at debug.
    fn refuse(
        &self,
        remote: EndpointId,
        alpn: &[u8],
        why: &str,
        reason: &[u8],
    ) -> AfterHandshakeOutcome {
        self.count_refused(alpn);
        let alpn = String::from_utf8_lossy(alpn);
        if self.first_refusal(remote) {
            tracing::warn!(%remote, %alpn, "refused a connection: {why} (further refusals of it are counted in /metrics)");
        } else {
            tracing::debug!(%remote, %alpn, "refused a connection: {why}");
        }
        AfterHandshakeOutcome::Reject {
            error_code: CLOSE_NOT_ADMITTED.into(),
            reason: reason.to_vec(),
        }
    }

    /// Whether a refusal of `remote` should be logged at warn level (its first one).
    fn first_refusal(&self, remote: EndpointId) -> bool {
        let mut warned = self.inner.warned.lock().expect("warned lock");
        warned.len() < MAX_WARNED_REMOTES && warned.insert(remote)
    }

    fn decide(&self, conn: &Connection) -> AfterHandshakeOutcome {
        let remote = conn.remote_id();
        let alpn = conn.alpn();
        let partitioned = || AfterHandshakeOutcome::Reject {
            error_code: CLOSE_NOT_ADMITTED.into(),
            reason: b"partitioned".to_vec(),
        };
        if self.is_blocked(&remote) {
            return partitioned();
        }
        if !self.allows(&remote, alpn) {
            return self.refuse(
                remote,
                alpn,
                "an endpoint this node's configuration does not allow",
                b"this endpoint is not allowed on this protocol",
            );
        }
        match self.track(conn) {
            Tracked::Open => AfterHandshakeOutcome::Accept,
            Tracked::Blocked => partitioned(),
            Tracked::Full => self.refuse(
                remote,
                alpn,
                "the endpoint already holds the most connections allowed with this node",
                b"too many connections from this endpoint",
            ),
        }
    }
}

impl EndpointHooks for Access {
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        self.decide(conn)
    }
}
