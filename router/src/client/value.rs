//! Values kept as blobs, streamed between the router's HTTP clients and one cluster's
//! nodes over `aspen/value/1` (wire format in `aspen_api::value_wire`). The router holds
//! no value whole: a put's body goes to the node chunk by chunk as it arrives, a read's
//! bytes go to the HTTP answer as the node sends them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aspen_api::server::{BlobPut, ValueStream};
use aspen_api::value_wire::{self, ValueAnswer, ValueRequest, MAX_VALUE_HEADER_BYTES, VALUE_ALPN};
use aspen_api::{ApiError, BlobRef, ErrorCode, WriteResult};
use aspen_net::frame::{read_chunks, read_message, write_frame, write_message};
use bytes::BytesMut;
use futures::StreamExt;
use iroh::endpoint::{RecvStream, SendStream};

use super::link::Link;

/// Time a node may take to answer a put once its last byte is sent, on top of
/// [`PER_MIB_ANSWER_TIME`] per MiB: it makes the blob durable, has a majority of its
/// cluster fetch and store it, then commits the reference.
pub const PUT_ANSWER_BASE_TIME: Duration = Duration::from_secs(30);

/// Answer time a put may take per MiB of its value: its majority copy runs at far more
/// than 8 MiB/s on any working network.
pub const PER_MIB_ANSWER_TIME: Duration = Duration::from_millis(125);

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
    pub(super) async fn put_blob(&self, put: BlobPut) -> Result<WriteResult, ApiError> {
        let BlobPut {
            key,
            lease,
            declared,
            mut body,
        } = put;
        let header = value_wire::encode(&ValueRequest::Put {
            key,
            lease: lease.map(|l| (l.cluster, l.id)),
            declared,
        })
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (mut send, mut recv) = self.open_value_stream().await?;
        let lost = |e: &dyn std::fmt::Display| {
            unavailable(
                &self.name,
                "the node stopped taking the value; nothing was written",
                e,
            )
        };
        write_frame(&mut send, &header)
            .await
            .map_err(|e| lost(&e))?;
        let mut sent = 0u64;
        // The HTTP body's frames, gathered into writes of WRITE_CHUNK_BYTES: one QUIC write
        // per small frame costs more than copying them together.
        let mut pending = BytesMut::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    sent += chunk.len() as u64;
                    pending.extend_from_slice(&chunk);
                    if pending.len() >= WRITE_CHUNK_BYTES {
                        let full = pending.split().freeze();
                        send.write_chunk(full).await.map_err(|e| lost(&e))?;
                    }
                }
                Err(e) => {
                    // The node sees the stream reset and keeps nothing of it.
                    let _ = send.reset(0u32.into());
                    return Err(ApiError::bad_request(format!("{e}; nothing was written")));
                }
            }
        }
        if !pending.is_empty() {
            send.write_chunk(pending.freeze())
                .await
                .map_err(|e| lost(&e))?;
        }
        send.finish().map_err(|e| lost(&e))?;
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
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "cluster {}: the node went away after the value was sent ({e}); it \
                         may or may not have been written",
                        self.name
                    ),
                )
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

    /// Streams `len` bytes of `blob` from `start`, from the first member that sends them.
    pub(super) async fn read_blob(
        &self,
        blob: BlobRef,
        start: u64,
        len: u64,
    ) -> Result<ValueStream, ApiError> {
        let header = value_wire::encode(&ValueRequest::Read { blob, start, len })
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let (mut send, mut recv) = self.open_value_stream().await?;
        let asked = async {
            write_message(&mut send, &header).await?;
            read_message(&mut recv, MAX_VALUE_HEADER_BYTES).await
        };
        let answer = tokio::time::timeout(self.deadline, asked)
            .await
            .map_err(|_| unavailable(&self.name, "no answer to a read", "timed out"))?
            .map_err(|e| unavailable(&self.name, "a read failed", e))?;
        match value_wire::decode::<ValueAnswer>(&answer) {
            Ok(ValueAnswer::Bytes { len: sending }) if sending == len => {}
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
        let cluster = self.name.clone();
        let chunks = read_chunks(recv, READ_CHUNK_BYTES).boxed();
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
                    Some(Err(e)) => {
                        Some((Err(format!("cluster {cluster}: the value's {e}")), None))
                    }
                }
            }
        });
        Ok(stream.boxed())
    }
}
