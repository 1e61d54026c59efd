//! The node's iroh endpoint and how it sends one request to a peer.
//!
//! Every protocol of a node (`aspen/raft/2`, `aspen/kv/2`) is request/response, one
//! request per QUIC bi-directional stream. [`Transport`] keeps one connection per peer
//! and protocol and reuses it; a request that cannot be sent because the connection is
//! gone is reported as [`TransportError::Unreachable`] (nothing was delivered), while one
//! that broke after sending is [`TransportError::Failed`] (it may have been processed),
//! unless the peer closed the connection as a stopping server does
//! ([`CLOSE_STOPPING`](crate::CLOSE_STOPPING)): then it was not, and it is `Unreachable`.
//!
//! Fault injection for tests lives here too: [`Transport::set_blocked`] cuts this node off
//! from chosen peers in both directions, on every protocol of the endpoint (through its
//! [`Access`] hook), as a network partition would.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use iroh::endpoint::{
    presets, Connection, ConnectionError, QuicTransportConfig, RecvStream, SendStream,
    TransportErrorCode,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode, SecretKey};

use crate::access::Access;
use crate::frame::{read_message, write_message, FrameError};

/// File in the data dir holding the node's iroh secret key (its identity).
pub const SECRET_KEY_FILE: &str = "iroh.key";
/// How long establishing a connection may take. On loopback or a LAN a handshake takes
/// milliseconds; a peer that is down would otherwise hold a request for the QUIC timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection with no traffic for this long is considered dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive interval; well under [`IDLE_TIMEOUT`] so live connections never idle out.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// QUIC error code sent when closing a connection from an unknown endpoint.
pub const CLOSE_NOT_ALLOWED: u32 = 403;
/// Most request streams a peer may have open at once on one connection, on every ALPN:
/// QUIC's stream credit, so a peer with this many open waits for one to finish before it
/// can open another. With each request read up to its protocol's message limit, one
/// connection can make this endpoint hold at most this many messages.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// Errors of one request.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Nothing was delivered: no connection could be made or the stream never opened.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: String, reason: String },
    /// The request was (perhaps) delivered but no answer came back.
    #[error("request to {peer} failed after sending: {reason}")]
    Failed { peer: String, reason: String },
}

/// Loads the node's secret key from `dir` ([`SECRET_KEY_FILE`] in it), creating and
/// saving one on first start.
pub fn load_or_create_secret_key(dir: &Path) -> std::io::Result<SecretKey> {
    load_or_create_secret_key_file(&dir.join(SECRET_KEY_FILE))
}

/// Loads the secret key in `path`, creating and saving a new one if there is no file.
pub fn load_or_create_secret_key_file(path: &Path) -> std::io::Result<SecretKey> {
    match read_secret_key_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_secret_key_file(path),
        other => other,
    }
}

/// Reads the secret key in `path` (64 hex characters, as this module writes them).
pub fn read_secret_key_file(path: &Path) -> std::io::Result<SecretKey> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse::<SecretKey>().map_err(|e| {
        std::io::Error::other(format!(
            "{} is not a valid iroh secret key: {e}",
            path.display()
        ))
    })
}

/// Writes a new secret key to `path`, readable by its owner only, creating the parent
/// directory. Refuses (`AlreadyExists`) if `path` exists: an identity is never
/// overwritten. The file appears whole or not at all.
pub fn create_secret_key_file(path: &Path) -> std::io::Result<SecretKey> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let key = SecretKey::generate();
    let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    write_owner_only(&tmp, hex.as_bytes())?;
    // A hard link fails if `path` exists, where a rename would replace it.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked?;
    Ok(key)
}

/// Writes `contents` to a new or truncated file at `path` that is readable by its owner
/// only from the moment it exists (never, even briefly, with the umask's mode), and
/// flushes it to disk.
pub fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, contents)?;
    file.sync_all()
}

/// Binds an iroh endpoint with `key` on `bind_addr`, relays on or off, every connection
/// checked by `access`.
pub async fn bind_endpoint(
    key: SecretKey,
    bind_addr: SocketAddr,
    relays: bool,
    access: &Access,
) -> Result<Endpoint, String> {
    let transport = QuicTransportConfig::builder()
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits")))
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .build();
    let relay_mode = if relays {
        RelayMode::Default
    } else {
        RelayMode::Disabled
    };
    Endpoint::builder(presets::Minimal)
        .secret_key(key)
        .relay_mode(relay_mode)
        .transport_config(transport)
        .hooks(access.clone())
        .clear_ip_transports()
        .bind_addr(bind_addr)
        .map_err(|e| format!("invalid iroh bind address {bind_addr}: {e}"))?
        .bind()
        .await
        .map_err(|e| format!("binding the iroh endpoint on {bind_addr} failed: {e}"))
}

/// Where a peer is: its identity and direct addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The peer's EndpointId.
    pub id: EndpointId,
    /// Its direct addresses.
    pub addrs: Vec<SocketAddr>,
}

/// Outgoing requests over the node's endpoint, with connection reuse.
#[derive(Debug)]
pub struct Transport {
    endpoint: Endpoint,
    conns: Mutex<HashMap<(EndpointId, &'static [u8]), Connection>>,
    /// Configured addresses; they win over addresses recorded in the membership.
    book: RwLock<HashMap<EndpointId, Vec<SocketAddr>>>,
    /// The endpoint's access policy, which also holds the peers this node pretends it
    /// cannot reach (fault injection).
    access: Access,
}

impl Transport {
    /// A transport over `endpoint`, bound with `access` (see [`bind_endpoint`]).
    pub fn new(endpoint: Endpoint, access: Access) -> Arc<Transport> {
        Arc::new(Transport {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            book: RwLock::new(HashMap::new()),
            access,
        })
    }

    /// The endpoint's access policy.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Records configured addresses of a peer.
    pub fn set_addresses(&self, id: EndpointId, addrs: Vec<SocketAddr>) {
        self.book
            .write()
            .expect("address book lock")
            .insert(id, addrs);
    }

    /// Resolves a peer: configured addresses when known, else `fallback`.
    pub fn resolve(&self, id: EndpointId, fallback: &[String]) -> PeerAddr {
        let book = self.book.read().expect("address book lock");
        let addrs = match book.get(&id) {
            Some(addrs) => addrs.clone(),
            None => fallback.iter().filter_map(|a| a.parse().ok()).collect(),
        };
        PeerAddr { id, addrs }
    }

    /// Cuts this node off from `peers` (both directions, every protocol: iroh-docs and
    /// gossip too), or heals with an empty set.
    pub fn set_blocked(&self, peers: HashSet<EndpointId>) {
        let mut conns = self.conns.lock().expect("connection cache lock");
        conns.retain(|(id, _), conn| {
            let keep = !peers.contains(id);
            if !keep {
                conn.close(0u32.into(), b"partitioned");
            }
            keep
        });
        self.access.set_blocked(peers);
    }

    /// Whether traffic with `peer` is currently cut (fault injection).
    pub fn is_blocked(&self, peer: &EndpointId) -> bool {
        self.access.is_blocked(peer)
    }

    async fn connection(
        &self,
        peer: &PeerAddr,
        alpn: &'static [u8],
    ) -> Result<Connection, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            peer: peer.id.fmt_short().to_string(),
            reason,
        };
        if self.is_blocked(&peer.id) {
            return Err(unreachable("partitioned by fault injection".into()));
        }
        let key = (peer.id, alpn);
        if let Some(conn) = self.conns.lock().expect("connection cache lock").get(&key) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let addr = EndpointAddr::new(peer.id)
            .with_addrs(peer.addrs.iter().map(|a| iroh::TransportAddr::Ip(*a)));
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr, alpn))
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        self.conns
            .lock()
            .expect("connection cache lock")
            .insert(key, conn.clone());
        Ok(conn)
    }

    fn evict(&self, peer: &EndpointId, alpn: &'static [u8], conn: &Connection) {
        let mut conns = self.conns.lock().expect("connection cache lock");
        if conns
            .get(&(*peer, alpn))
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&(*peer, alpn));
        }
    }

    /// Opens a new bi-directional stream to `peer` on `alpn`, for a protocol that streams
    /// rather than exchanging one request and one answer.
    pub async fn open_stream(
        &self,
        peer: &PeerAddr,
        alpn: &'static [u8],
    ) -> Result<(SendStream, RecvStream), TransportError> {
        let conn = self.connection(peer, alpn).await?;
        conn.open_bi().await.map_err(|e| {
            self.evict(&peer.id, alpn, &conn);
            let reason = match not_admitted(&conn) {
                Some(why) => format!("the peer refused this endpoint at connection: {why}"),
                None => e.to_string(),
            };
            TransportError::Unreachable {
                peer: peer.id.fmt_short().to_string(),
                reason,
            }
        })
    }

    /// Sends one request on a new stream and waits up to `timeout` for the answer.
    pub async fn request(
        &self,
        peer: &PeerAddr,
        alpn: &'static [u8],
        payload: &[u8],
        max_answer: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let (answer, _rest) = self
            .request_stream(peer, alpn, payload, max_answer, timeout)
            .await?;
        Ok(answer)
    }

    /// [`Transport::request`] for a protocol whose answer message is followed by more on
    /// the stream (a value's bytes): returns the answer and the stream, to read the rest.
    /// Its errors say what [`Transport::request`]'s say: [`TransportError::Unreachable`]
    /// means the peer took nothing of the request.
    pub async fn request_stream(
        &self,
        peer: &PeerAddr,
        alpn: &'static [u8],
        payload: &[u8],
        max_answer: usize,
        timeout: Duration,
    ) -> Result<(Vec<u8>, RecvStream), TransportError> {
        let conn = self.connection(peer, alpn).await?;
        let short = peer.id.fmt_short().to_string();
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                self.evict(&peer.id, alpn, &conn);
                return Err(TransportError::Unreachable {
                    peer: short,
                    reason: e.to_string(),
                });
            }
        };
        let exchange = async {
            write_message(&mut send, payload).await?;
            read_message(&mut recv, max_answer).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok((answer, recv)),
            Ok(Err(FrameError::NotTaken)) => Err(TransportError::Unreachable {
                peer: short,
                reason: "the peer is stopping and refused this request unread".into(),
            }),
            Ok(Err(FrameError::RefusedTooLarge)) => Err(TransportError::Unreachable {
                peer: short,
                reason: format!(
                    "the peer refused a request of {} bytes as over its limit",
                    payload.len()
                ),
            }),
            Ok(Err(e)) => {
                // Why the connection went, when it did: closed by the peer (and with what
                // code), timed out, reset by a restarted peer that no longer knows it.
                let reason = match conn.close_reason() {
                    Some(why) => format!("{e} ({why})"),
                    None => e.to_string(),
                };
                self.evict(&peer.id, alpn, &conn);
                if let Some(why) = not_admitted(&conn) {
                    return Err(TransportError::Unreachable {
                        peer: short,
                        reason: format!("the peer refused this endpoint at connection: {why}"),
                    });
                }
                if matches!(e, FrameError::ConnectionLost) && closed_in_handshake(&conn) {
                    return Err(TransportError::Unreachable {
                        peer: short,
                        reason: format!(
                            "the peer closed the connection before completing its handshake \
                             ({}), so it took no request on it",
                            conn.close_reason()
                                .map(|r| r.to_string())
                                .unwrap_or_default()
                        ),
                    });
                }
                if matches!(e, FrameError::ConnectionLost) && closed_stopping(&conn) {
                    return Err(TransportError::Unreachable {
                        peer: short,
                        reason: "the peer is stopping; it answered every request it took, \
                                 and did not take this one"
                            .into(),
                    });
                }
                Err(TransportError::Failed {
                    peer: short,
                    reason,
                })
            }
            Err(_) => {
                self.evict(&peer.id, alpn, &conn);
                Err(TransportError::Failed {
                    peer: short,
                    reason: format!("no answer within {timeout:?}"),
                })
            }
        }
    }
}

/// Whether the peer's application closed `conn` before the peer's side of the handshake
/// was complete: QUIC then carries the close as the transport error APPLICATION_ERROR,
/// without the application's code (RFC 9000, 10.2.3), because a side that completed its
/// handshake has discarded its handshake keys and closes in 1-RTT packets, code and all.
/// A server hands a connection to its protocol handler only once its handshake is
/// complete, so such a close means no request on the connection was taken (seen: a
/// router connecting to a node whose endpoint was closing).
fn closed_in_handshake(conn: &Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(ConnectionError::ConnectionClosed(close))
            if close.error_code == TransportErrorCode::APPLICATION_ERROR
    )
}

/// Whether the peer closed `conn` as a stopping server does ([`CLOSE_STOPPING`]), after
/// answering every request it took: one without an answer was not processed.
fn closed_stopping(conn: &Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(ConnectionError::ApplicationClosed(close))
            if close.error_code == crate::drain::CLOSE_STOPPING.into()
    )
}

/// Why the peer refused `conn` at its handshake ([`CLOSE_NOT_ADMITTED`]), if it did: then
/// nothing sent on it was processed.
fn not_admitted(conn: &Connection) -> Option<String> {
    match conn.close_reason()? {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == crate::access::CLOSE_NOT_ADMITTED.into() =>
        {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => None,
    }
}
