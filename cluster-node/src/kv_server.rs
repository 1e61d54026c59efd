//! The serving side of `aspen/kv/2` (wire format in `aspen_api::wire`): requests from
//! follower nodes forwarding to this leader, and later from routers.

use std::sync::Arc;

use aspen_api::wire::{self, KvRequest, KvResponse, MAX_WIRE_MESSAGE_BYTES};
use aspen_api::{ApiError, ErrorCode};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::service::KvService;
use crate::transport::{serve_streams, Drain, ReadBudget, Transport, CLOSE_NOT_ALLOWED};

/// iroh protocol handler for `aspen/kv/2`.
#[derive(Clone)]
pub struct KvProtocol {
    service: Arc<KvService>,
    transport: Arc<Transport>,
    /// Request bytes all `aspen/kv/2` streams of this node may hold at once.
    budget: ReadBudget,
    /// Stopped before Raft is, so every request taken is answered (see [`aspen_net::drain`]).
    drain: Drain,
}

/// Most request bytes a node holds at once over all its `aspen/kv/2` streams (four
/// largest messages): past it a request waits, unread, for room.
pub const KV_READ_BUDGET_BYTES: usize = 4 * MAX_WIRE_MESSAGE_BYTES;

impl KvProtocol {
    /// A handler executing requests on `service`, until `drain` stops it.
    pub fn new(service: Arc<KvService>, transport: Arc<Transport>, drain: Drain) -> Self {
        let budget = ReadBudget::new(MAX_WIRE_MESSAGE_BYTES, KV_READ_BUDGET_BYTES);
        KvProtocol {
            service,
            transport,
            budget,
            drain,
        }
    }
}

impl std::fmt::Debug for KvProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvProtocol").finish_non_exhaustive()
    }
}

async fn answer(service: &KvService, bytes: &[u8]) -> KvResponse {
    match wire::decode::<KvRequest>(bytes) {
        Ok(request) => service.serve_remote(request).await,
        Err(e) => KvResponse::Error(ApiError::new(ErrorCode::BadRequest, e.to_string())),
    }
}

impl ProtocolHandler for KvProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        if self.transport.is_blocked(&connection.remote_id()) {
            connection.close(CLOSE_NOT_ALLOWED.into(), b"partitioned");
            return Ok(());
        }
        let service = self.service.clone();
        serve_streams(connection, self.budget.clone(), &self.drain, move |bytes| {
            let service = service.clone();
            async move {
                // Always within the message limit: an oversized batch answer leaves out
                // reads (the router sends them again alone), never a write's outcome.
                wire::encode_response(answer(&service, &bytes).await)
            }
        })
        .await;
        Ok(())
    }
}
