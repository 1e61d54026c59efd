//! The serving side of `aspen/value/1` (wire format in `aspen_api::value_wire`): values
//! kept as blobs, streamed from a router into this node's blob store ([`BlobValues::put`])
//! and out of it ([`BlobValues::read`]), a chunk at a time. Admitted like `aspen/kv/2`:
//! members and the configured `kv_clients`; drained with it when the node stops (see
//! [`aspen_net::drain`]): puts and reads taken finish, new ones are refused unread.

use std::sync::Arc;

use aspen_api::lease::LeaseId;
use aspen_api::server::BlobPut;
use aspen_api::value_wire::{self, ValueAnswer, ValueRequest, MAX_VALUE_HEADER_BYTES};
use aspen_api::{ApiError, ErrorCode};
use futures::StreamExt;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::blob_values::BlobValues;
use crate::transport::{serve_stream_pairs, Drain, FrameError, Transport, CLOSE_NOT_ALLOWED};

/// Bytes of a put's stream taken at once (the store imports them as one piece).
const PUT_CHUNK_BYTES: usize = 256 * 1024;

/// Stream reset code of a read whose bytes could not all be sent (the store failed
/// midway): the requester sees the reset, never a short value taken as whole.
pub const RESET_READ_FAILED: u32 = 2;

/// iroh protocol handler for `aspen/value/1`.
#[derive(Clone)]
pub struct ValueProtocol {
    values: BlobValues,
    transport: Arc<Transport>,
    /// Stopped with `aspen/kv/2`'s, before Raft is: every put and read taken finishes.
    drain: Drain,
}

impl std::fmt::Debug for ValueProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueProtocol").finish_non_exhaustive()
    }
}

impl ValueProtocol {
    /// A handler storing and reading values through `values`, until `drain` stops it.
    pub fn new(values: BlobValues, transport: Arc<Transport>, drain: Drain) -> Self {
        ValueProtocol {
            values,
            transport,
            drain,
        }
    }
}

impl ProtocolHandler for ValueProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if self.transport.is_blocked(&connection.remote_id()) {
            connection.close(CLOSE_NOT_ALLOWED.into(), b"partitioned");
            return Ok(());
        }
        let values = self.values.clone();
        serve_stream_pairs(connection, &self.drain, move |send, recv| {
            serve(values.clone(), send, recv)
        })
        .await;
        Ok(())
    }
}

/// Serves one stream: reads its request, then stores or sends the value. Returns once the
/// requester has received the answer (or gave up on it): the request is settled.
async fn serve(values: BlobValues, mut send: SendStream, mut recv: RecvStream) -> bool {
    let header = match aspen_net::frame::read_message(&mut recv, MAX_VALUE_HEADER_BYTES).await {
        Ok(header) => header,
        Err(e) => {
            tracing::debug!(error = %e, "aspen/value/1: no request on the stream");
            return true;
        }
    };
    let answer = match value_wire::decode::<ValueRequest>(&header) {
        Err(e) => ValueAnswer::Error(ApiError::new(ErrorCode::BadRequest, e.to_string())),
        Ok(ValueRequest::Put {
            key,
            lease,
            declared,
        }) => put(&values, key, lease, declared, recv).await,
        // A reference no value can have (empty, over the limit) is refused before any
        // fetch is tried for it.
        Ok(ValueRequest::Read { blob, start, len }) => match blob.validate("blob") {
            Err(e) => ValueAnswer::Error(e.into()),
            Ok(()) => match values.read(blob, start, len).await {
                Err(e) => ValueAnswer::Error(e),
                Ok(stream) => return send_bytes(send, len, stream).await,
            },
        },
    };
    answer_with(&mut send, &answer).await
}

async fn put(
    values: &BlobValues,
    key: String,
    lease: Option<(String, u64)>,
    declared: Option<u64>,
    recv: RecvStream,
) -> ValueAnswer {
    let body = aspen_net::frame::read_chunks(recv, PUT_CHUNK_BYTES)
        .map(|chunk| chunk.map_err(|e| format!("the value's {e}")))
        .boxed();
    let put = BlobPut {
        key,
        lease: lease.map(|(cluster, id)| LeaseId { cluster, id }),
        declared,
        body,
    };
    match values.put(put).await {
        Ok(result) => ValueAnswer::Written(result),
        Err(e) => ValueAnswer::Error(e),
    }
}

/// Sends [`ValueAnswer::Bytes`] and then the bytes; a failure midway resets the stream
/// (a read may always be asked again, so the request is settled either way).
async fn send_bytes(
    mut send: SendStream,
    len: u64,
    mut stream: aspen_api::server::ValueStream,
) -> bool {
    let head = match value_wire::encode(&ValueAnswer::Bytes { len }) {
        Ok(head) => head,
        Err(e) => {
            let error = ApiError::new(ErrorCode::Internal, e.to_string());
            return answer_with(&mut send, &ValueAnswer::Error(error)).await;
        }
    };
    if aspen_net::frame::write_frame(&mut send, &head)
        .await
        .is_err()
    {
        return true;
    }
    while let Some(chunk) = stream.next().await {
        let sent = match chunk {
            Ok(chunk) => send.write_chunk(chunk).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "aspen/value/1: a read stopped midway");
            let _ = send.reset(RESET_READ_FAILED.into());
            return true;
        }
    }
    if send.finish().is_ok() {
        // Resolves once the requester's QUIC stack has every byte, stopped the stream,
        // or the connection went: a stopping node closes only after that.
        let _ = send.stopped().await;
    }
    true
}

/// Sends `answer` and waits until the requester has received it; returns whether the
/// request is settled (answered and received, or the requester gave up on it).
async fn answer_with(send: &mut SendStream, answer: &ValueAnswer) -> bool {
    let bytes = value_wire::encode(answer).unwrap_or_else(|e| {
        let error = ApiError::new(ErrorCode::Internal, format!("encoding the answer: {e}"));
        value_wire::encode(&ValueAnswer::Error(error)).expect("a short error encodes")
    });
    match aspen_net::frame::write_message(send, &bytes).await {
        Ok(()) => {
            let _ = send.stopped().await;
            true
        }
        Err(FrameError::Stopped | FrameError::ConnectionLost | FrameError::NotTaken) => true,
        Err(e) => {
            tracing::debug!(error = %e, "aspen/value/1: the answer could not be sent");
            false
        }
    }
}
