//! Values kept as blobs, streamed between the router's HTTP clients and one cluster's
//! nodes over `aspen/value/1` (wire format in `aspen_api::value_wire`). The router holds
//! no value whole: a put's body goes to the node chunk by chunk as it arrives, a read's
//! bytes go to the HTTP answer as the node sends them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aspen_api::server::{stall_bounded, BlobPut, ValueStream, VALUE_STALL_TIMEOUT};
use aspen_api::value_wire::{self, ValueAnswer, ValueRequest, MAX_VALUE_HEADER_BYTES, VALUE_ALPN};
use aspen_api::{ApiError, BlobRef, ErrorCode, WriteResult};
use aspen_net::frame::{read_chunks, read_message, write_frame, FrameError, RESET_STOPPING};
use bytes::BytesMut;
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};

use crate::link::Link;

/// Time a node may take to answer a put once its last byte is sent, on top of
/// [`PER_MIB_ANSWER_TIME`] per MiB: it makes the blob durable, has a majority of its
/// cluster fetch and store it, then commits the reference.
pub const PUT_ANSWER_BASE_TIME: Duration = Duration::from_secs(30);

/// Answer time a put may take per MiB of its value: its majority copy runs at far more
/// than 8 MiB/s on any working network.
pub const PER_MIB_ANSWER_TIME: Duration = Duration::from_millis(125);

/// How long a node that stopped reading a put's body has to say why (its answer is
/// already on the way when it refuses the put).
const REFUSAL_ANSWER_TIME: Duration = Duration::from_secs(2);

/// Bytes of a put written to the node's stream at once.
const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// Bytes of a read taken from the node's stream at once (one frame of the HTTP answer).
const READ_CHUNK_BYTES: usize = 256 * 1024;

fn unavailable(cluster: &str, what: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::ClusterUnavailable,
        format!("cluster {cluster}: {what}: {reason}"),
    )
}

/// How a put's body went to the node.
enum Sent {
    /// Every byte, and the stream's end: this many bytes.
    All(u64),
    /// The HTTP client's body broke off.
    BodyFailed(String),
    /// The node stopped reading, or the connection went.
    Refused(FrameError),
}

/// Writes a put's header and then its body to `send`, gathered into writes of
/// [`WRITE_CHUNK_BYTES`] (one QUIC write per small HTTP frame costs more than copying them
/// together), and ends the stream.
async fn send_body(send: &mut SendStream, header: &[u8], mut body: ValueStream) -> Sent {
    if let Err(e) = write_frame(send, header).await {
        return Sent::Refused(e);
    }
    let mut sent = 0u64;
    let mut pending = BytesMut::new();
    loop {
        let full = match body.next().await {
            Some(Ok(chunk)) => {
                sent += chunk.len() as u64;
                pending.extend_from_slice(&chunk);
                if pending.len() < WRITE_CHUNK_BYTES {
                    continue;
                }
                pending.split().freeze()
            }
            Some(Err(e)) => return Sent::BodyFailed(e),
            None if pending.is_empty() => break,
            None => pending.split().freeze(),
        };
        if let Err(e) = send.write_chunk(full).await {
            return Sent::Refused(write_error(e));
        }
    }
    match send.finish() {
        Ok(()) => Sent::All(sent),
        Err(_) => Sent::Refused(FrameError::ConnectionLost),
    }
}

/// A failed write as the frame layer names it (a stopping node's refusal included).
fn write_error(e: iroh::endpoint::WriteError) -> FrameError {
    match e {
        iroh::endpoint::WriteError::Stopped(code) if code == RESET_STOPPING.into() => {
            FrameError::NotTaken
        }
        iroh::endpoint::WriteError::Stopped(_) => FrameError::Stopped,
        iroh::endpoint::WriteError::ConnectionLost(_) => FrameError::ConnectionLost,
        e => FrameError::Stream(e.to_string()),
    }
}

impl Link {
    /// Opens an `aspen/value/1` stream to a member, the believed leader first, then the
    /// others in turn; the error names each failure.
    async fn open_value_stream(&self) -> Result<(SendStream, RecvStream), ApiError> {
        let start = self.leader.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..self.members.len() {
            let member = &self.members[(start + i) % self.members.len()];
            match self.transport.open_stream(&member.peer, VALUE_ALPN).await {
                Ok(streams) => return Ok(streams),
                Err(e) => reasons.push(format!("node {}: {e}", member.node_id)),
            }
        }
        Err(unavailable(
            &self.name,
            "no node could be reached",
            reasons.join("; "),
        ))
    }

    /// Streams `put`'s body to a node of the cluster, which stores it as a blob and writes
    /// the key; returns the write's outcome.
    pub(crate) async fn put_blob(&self, put: BlobPut) -> Result<WriteResult, ApiError> {
        let BlobPut {
            key,
            lease,
            declared,
            body,
        } = put;
        let header = value_wire::encode(&ValueRequest::Put {
            key,
            lease: lease.map(|l| (l.cluster, l.id)),
            declared,
        })
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (mut send, mut recv) = self.open_value_stream().await?;
        let sent = match send_body(&mut send, &header, body).await {
            Sent::All(sent) => sent,
            Sent::BodyFailed(e) => {
                // The node sees the stream reset and keeps nothing of it.
                let _ = send.reset(0u32.into());
                return Err(ApiError::bad_request(format!("{e}; nothing was written")));
            }
            Sent::Refused(e) => return Err(self.refused_put(&mut recv, e).await),
        };
        let wait = PUT_ANSWER_BASE_TIME + PER_MIB_ANSWER_TIME * (sent / (1 << 20)) as u32;
        let answer = tokio::time::timeout(wait, read_message(&mut recv, MAX_VALUE_HEADER_BYTES))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "cluster {}: no answer within {wait:?} after the value was sent; it \
                         may or may not have been written",
                        self.name
                    ),
                )
            })?
            .map_err(|e| match e {
                FrameError::NotTaken => unavailable(
                    &self.name,
                    "a value's upload",
                    "the node is stopping and took nothing of it; nothing was written, retry",
                ),
                e => ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "cluster {}: the node went away after the value was sent ({e}); it \
                         may or may not have been written",
                        self.name
                    ),
                ),
            })?;
        match value_wire::decode::<ValueAnswer>(&answer) {
            Ok(ValueAnswer::Written(result)) => Ok(result),
            Ok(ValueAnswer::Error(e)) => Err(e),
            Ok(other) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("cluster {}: a put answered with {other:?}", self.name),
            )),
            Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
        }
    }

    /// The error of a put whose node stopped taking its body: the node's own answer when
    /// it refused the put with one (too many uploads, a bad key), else why the stream
    /// ended. Either way the node wrote nothing: it commits a value only from a whole body.
    async fn refused_put(&self, recv: &mut RecvStream, e: FrameError) -> ApiError {
        if !matches!(e, FrameError::NotTaken) {
            let answer = tokio::time::timeout(
                REFUSAL_ANSWER_TIME,
                read_message(recv, MAX_VALUE_HEADER_BYTES),
            )
            .await;
            if let Ok(Ok(bytes)) = answer {
                if let Ok(ValueAnswer::Error(refusal)) = value_wire::decode(&bytes) {
                    return refusal;
                }
            }
        }
        let why = match e {
            FrameError::NotTaken => "the node is stopping and took nothing of it".to_string(),
            e => format!("the node stopped taking it ({e})"),
        };
        unavailable(
            &self.name,
            "a value's upload",
            format!("{why}; nothing was written, retry"),
        )
    }

    /// Streams `len` bytes of `blob` from `start`, from the first member that sends them:
    /// the believed leader first, then the others (a stopping node refuses the read unread,
    /// a member that lacks the blob and cannot fetch it says so, and a read is safe to ask
    /// again). The bytes then end with an error if they stop for [`VALUE_STALL_TIMEOUT`].
    pub(crate) async fn read_blob(
        &self,
        blob: BlobRef,
        start: u64,
        len: u64,
    ) -> Result<ValueStream, ApiError> {
        let header = value_wire::encode(&ValueRequest::Read { blob, start, len })
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let first = self.leader.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        for i in 0..self.members.len() {
            let member = &self.members[(first + i) % self.members.len()];
            let asked = self
                .transport
                .request_stream(
                    &member.peer,
                    VALUE_ALPN,
                    &header,
                    MAX_VALUE_HEADER_BYTES,
                    self.deadline,
                )
                .await;
            let (answer, recv) = match asked {
                Ok(asked) => asked,
                Err(e) => {
                    reasons.push(format!("node {}: {e}", member.node_id));
                    continue;
                }
            };
            match value_wire::decode::<ValueAnswer>(&answer) {
                Ok(ValueAnswer::Bytes { len: sending }) if sending == len => {
                    return Ok(self.value_bytes(recv, len));
                }
                // This member lacks the blob and could not fetch it; another may have it.
                Ok(ValueAnswer::Error(e)) if e.code == ErrorCode::ClusterUnavailable => {
                    reasons.push(format!("node {}: {}", member.node_id, e.message));
                }
                Ok(ValueAnswer::Error(e)) => return Err(e),
                Ok(other) => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "cluster {}: a read of {len} bytes answered {other:?}",
                            self.name
                        ),
                    ))
                }
                Err(e) => return Err(ApiError::new(ErrorCode::Internal, e.to_string())),
            }
        }
        Err(unavailable(
            &self.name,
            "no node sent the value",
            reasons.join("; "),
        ))
    }

    /// The `len` bytes a member streams after its answer, as they arrive; an error if they
    /// end early or stall.
    fn value_bytes(&self, recv: RecvStream, len: u64) -> ValueStream {
        let cluster = self.name.clone();
        let chunks = read_chunks(recv, READ_CHUNK_BYTES).boxed();
        let chunks = stall_bounded(chunks, VALUE_STALL_TIMEOUT, "the value from the node");
        let stream = futures::stream::unfold(Some((chunks, 0u64)), move |state| {
            let cluster = cluster.clone();
            async move {
                let (mut chunks, got) = state?;
                match chunks.next().await {
                    Some(Ok(chunk)) => {
                        let got = got + chunk.len() as u64;
                        Some((Ok(chunk), Some((chunks, got))))
                    }
                    None if got == len => None,
                    None => Some((
                        Err(format!(
                            "cluster {cluster}: the value ended after {got} of {len} bytes"
                        )),
                        None,
                    )),
                    Some(Err(e)) => Some((Err(format!("cluster {cluster}: {e}")), None)),
                }
            }
        });
        stream.boxed()
    }
}
