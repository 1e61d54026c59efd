//! `aspen/snapshot/1`: a leader streams a whole snapshot to a follower on one QUIC stream.
//!
//! Goals: send a snapshot of any size with memory bounded on both sides (the bytes go from
//! the leader's snapshot file to the follower's disk through fixed buffers, with QUIC flow
//! control as backpressure), install it, and tell the leader the outcome; accept it only
//! from members and configured peers, as `aspen/raft/2` does.
//!
//! Non-goals: resuming a cut transfer (the leader sends the snapshot again), compression.
//!
//! On a stream: the leader writes an [`Offer`] (one framed message: its vote, the
//! snapshot's metadata and length), then exactly that many bytes, and ends the stream;
//! the follower answers one framed [`Reply`]. A follower whose vote is newer than the
//! offer's answers at once without reading the bytes (openraft's chunked transfer checks
//! the same at every chunk). The follower reads the received stream through once before
//! installing it, so a damaged or cut stream is refused and changes nothing. This replaces openraft's chunked InstallSnapshot RPCs, whose
//! last chunk had to be installed within one RPC timeout: here the wait for the install
//! has its own bound ([`INSTALL_WAIT`]) and the transfer fails only when it stops moving
//! ([`STALL_TIMEOUT`]).

use std::sync::Arc;
use std::time::Duration;

use aspen_api::codec::Format;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::EndpointId;
use openraft::error::{
    Fatal, NetworkError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::raft::SnapshotResponse;
use openraft::{Snapshot, Vote};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::RaftProtocol;
use crate::raft_types::{MemberNode, NodeId, TypeConfig};
use crate::storage::snapshot::{verify, Meta, SnapshotFile};
use crate::transport::{read_message, write_frame, PeerAddr, Transport, CLOSE_NOT_ALLOWED};

/// ALPN of the snapshot transfer protocol, version 1.
pub const SNAPSHOT_ALPN: &[u8] = b"aspen/snapshot/1";

/// The encoding of the offer and the reply. Any change to [`Offer`] or [`Reply`] (openraft's
/// types included) bumps it.
pub const SNAPSHOT_FORMAT: Format = Format::new("aspen/snapshot/1 message", 1);

/// Largest offer: a vote and the metadata, whose membership lists at most 64 members with
/// their addresses, far below this.
pub const MAX_OFFER_BYTES: usize = 1024 * 1024;

/// Largest reply: a vote, or an error message.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Largest snapshot a node accepts, in bytes: well above the gigabytes of data a cluster
/// is meant to hold; an offer over it is refused before a byte is written to disk.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Snapshots a node receives at once (a new leader may offer one while an old leader's
/// transfer is still running); one more is refused, and its leader tries again later.
pub const MAX_INCOMING_SNAPSHOTS: usize = 2;

/// The longest a transfer may go without moving a byte (either side): past it the stream
/// is given up, and the leader sends the snapshot again later.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the leader waits, after its last byte, for the follower to install the
/// snapshot and answer: installing writes every key into SQLite, about a minute per
/// few million keys on a small machine.
pub const INSTALL_WAIT: Duration = Duration::from_secs(10 * 60);

/// Bytes moved per read and write while streaming.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// QUIC code the follower stops the stream with when it declines the bytes (it answered
/// already, or refused the offer).
const STOP_DECLINED: u32 = 1;

/// What a leader announces before the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The leader's vote: the follower installs only for a vote at least its own.
    pub vote: Vote<NodeId>,
    /// The snapshot's metadata; the stream's first record must equal it.
    pub meta: Meta,
    /// The bytes that follow.
    pub len: u64,
}

/// The follower's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The follower's vote after the offer: installed, or declined because the vote is
    /// newer than the leader's (the leader then steps down).
    Done(Vote<NodeId>),
    /// Refused: not a member, too large, a damaged stream, a failed install.
    Refused(String),
    /// The follower's Raft stopped.
    Fatal(Fatal<NodeId>),
}

/// The leader's side: streams `snapshot` to `target` and returns its answer. Gives up
/// when `cancel` completes (openraft dropped the replication).
pub(crate) async fn send(
    transport: &Transport,
    peer: &PeerAddr,
    target: (NodeId, &MemberNode),
    vote: Vote<NodeId>,
    mut snapshot: Snapshot<TypeConfig>,
    cancel: impl std::future::Future<Output = ReplicationClosed>,
) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
    let network = |e: &dyn std::fmt::Display| {
        StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
    };
    let exchange = async {
        let file = &mut snapshot.snapshot;
        file.rewind().await.map_err(|e| network(&e))?;
        let len = file.len().await.map_err(|e| network(&e))?;
        let offer = Offer {
            vote,
            meta: snapshot.meta.clone(),
            len,
        };
        let (mut send, mut recv) = transport
            .open_stream(peer, SNAPSHOT_ALPN)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let streamed = async {
            within(write_frame(&mut send, &SNAPSHOT_FORMAT.encode(&offer))).await?;
            copy_to_stream(file, &mut send).await?;
            send.finish().map_err(|e| e.to_string())
        };
        // A follower that declines stops the stream: its reply is already on the way.
        let stream_error = streamed.await.err();
        let reply = tokio::time::timeout(INSTALL_WAIT, read_message(&mut recv, MAX_REPLY_BYTES))
            .await
            .map_err(|_| {
                network(&format!(
                    "no answer within {INSTALL_WAIT:?} of the last byte"
                ))
            })?
            .map_err(|e| match &stream_error {
                Some(first) => network(first),
                None => network(&e),
            })?;
        let reply: Reply = SNAPSHOT_FORMAT.decode(&reply).map_err(|e| network(&e))?;
        match reply {
            Reply::Done(vote) => Ok(SnapshotResponse::new(vote)),
            Reply::Refused(reason) => Err(StreamingError::Unreachable(Unreachable::new(
                &std::io::Error::other(reason),
            ))),
            Reply::Fatal(fatal) => Err(StreamingError::RemoteError(RemoteError::new_with_node(
                target.0,
                target.1.clone(),
                fatal,
            ))),
        }
    };
    tokio::select! {
        result = exchange => result,
        closed = cancel => Err(StreamingError::Closed(closed)),
    }
}

/// Runs one step of a transfer within [`STALL_TIMEOUT`].
async fn within<T, E: std::fmt::Display>(
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STALL_TIMEOUT, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the transfer stalled for {STALL_TIMEOUT:?}")),
    }
}

/// Copies the whole snapshot file into `send`.
async fn copy_to_stream(file: &mut SnapshotFile, send: &mut SendStream) -> Result<(), String> {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        let n = within(file.read(&mut buf)).await?;
        if n == 0 {
            return Ok(());
        }
        within(send.write_all(&buf[..n])).await?;
    }
}

/// Serves `aspen/snapshot/1` for one Raft node.
#[derive(Clone)]
pub struct SnapshotProtocol {
    /// The Raft handler, for its admission rule and its Raft handle.
    raft: RaftProtocol,
    /// Transfers this node receives at once ([`MAX_INCOMING_SNAPSHOTS`]).
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for SnapshotProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotProtocol").finish_non_exhaustive()
    }
}

impl SnapshotProtocol {
    /// The handler for the Raft node `raft` serves, admitting whom it admits.
    pub fn new(raft: RaftProtocol) -> Self {
        SnapshotProtocol {
            raft,
            slots: Arc::new(Semaphore::new(MAX_INCOMING_SNAPSHOTS)),
        }
    }

    /// Receives one snapshot from `recv` and installs it; the reply to send back.
    async fn receive(&self, remote: EndpointId, recv: &mut RecvStream) -> Reply {
        if !self.raft.allowed(&remote) {
            return Reply::Refused(format!(
                "endpoint {remote} is not a member or configured peer of this cluster"
            ));
        }
        let offer = match within(read_message(recv, MAX_OFFER_BYTES)).await {
            Ok(bytes) => match SNAPSHOT_FORMAT.decode::<Offer>(&bytes) {
                Ok(offer) => offer,
                Err(e) => return Reply::Refused(format!("malformed snapshot offer: {e}")),
            },
            Err(e) => return Reply::Refused(format!("no snapshot offer: {e}")),
        };
        if offer.len > MAX_SNAPSHOT_BYTES {
            return Reply::Refused(format!(
                "a snapshot of {} bytes is over this node's limit of {MAX_SNAPSHOT_BYTES}",
                offer.len
            ));
        }
        let raft = self.raft.raft();
        let own_vote = raft.metrics().borrow().vote;
        if offer.vote < own_vote {
            return Reply::Done(own_vote);
        }
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            return Reply::Refused(format!(
                "this node is already receiving {MAX_INCOMING_SNAPSHOTS} snapshots"
            ));
        };
        let mut file = match raft.begin_receiving_snapshot().await {
            Ok(file) => file,
            Err(e) => return Reply::Refused(format!("cannot receive a snapshot: {e}")),
        };
        if let Err(e) = copy_from_stream(recv, &mut file, offer.len).await {
            return Reply::Refused(format!("the snapshot did not arrive whole: {e}"));
        }
        if let Err(e) = file.flush().await {
            return Reply::Refused(format!("cannot write the received snapshot: {e}"));
        }
        let (path, meta) = (file.path().to_path_buf(), offer.meta.clone());
        match tokio::task::spawn_blocking(move || verify(&path, &meta)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Reply::Refused(format!("the snapshot is damaged: {e}")),
            Err(e) => return Reply::Refused(format!("checking the snapshot failed: {e}")),
        }
        let snapshot = Snapshot {
            meta: offer.meta,
            snapshot: file,
        };
        match raft.install_full_snapshot(offer.vote, snapshot).await {
            Ok(response) => Reply::Done(response.vote),
            Err(fatal) => Reply::Fatal(fatal),
        }
    }
}

/// Copies exactly `len` bytes, then the end of the stream, from `recv` into `file`.
async fn copy_from_stream(
    recv: &mut RecvStream,
    file: &mut SnapshotFile,
    len: u64,
) -> Result<(), String> {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut received = 0u64;
    loop {
        match within(recv.read(&mut buf)).await? {
            None if received == len => return Ok(()),
            None => return Err(format!("the stream ended after {received} of {len} bytes")),
            Some(n) => {
                received += n as u64;
                if received > len {
                    return Err(format!("more than the {len} bytes offered"));
                }
                within(file.write_all(&buf[..n])).await?;
            }
        }
    }
}

impl ProtocolHandler for SnapshotProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let remote = connection.remote_id();
        if !self.raft.allowed(&remote) {
            tracing::warn!(%remote, "refused a snapshot connection from an endpoint that is not a member or configured peer");
            connection.close(CLOSE_NOT_ALLOWED.into(), b"not a member of this cluster");
            return Ok(());
        }
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let this = self.clone();
            tokio::spawn(async move {
                let reply = this.receive(remote, &mut recv).await;
                if let Reply::Refused(reason) = &reply {
                    tracing::warn!(%remote, %reason, "refused a snapshot");
                }
                let _ = recv.stop(STOP_DECLINED.into());
                let _ = within(write_frame(&mut send, &SNAPSHOT_FORMAT.encode(&reply))).await;
                let _ = send.finish();
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::strategies::{snapshot_meta, vote};

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            vote().prop_map(Reply::Done),
            "\\PC{0,16}".prop_map(Reply::Refused),
            any::<bool>().prop_map(|p| Reply::Fatal(if p {
                Fatal::Panicked
            } else {
                Fatal::Stopped
            })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_offer_round_trips(vote in vote(), meta in snapshot_meta(), len in any::<u64>()) {
            let offer = Offer { vote, meta, len };
            let bytes = SNAPSHOT_FORMAT.encode(&offer);
            prop_assert_eq!(SNAPSHOT_FORMAT.decode::<Offer>(&bytes).unwrap(), offer);
        }

        #[test]
        fn every_reply_round_trips(reply in reply()) {
            let bytes = SNAPSHOT_FORMAT.encode(&reply);
            prop_assert_eq!(SNAPSHOT_FORMAT.decode::<Reply>(&bytes).unwrap(), reply);
        }
    }
}
