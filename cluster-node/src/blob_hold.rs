//! `aspen/blob-hold/1`: before a reference to a blob is proposed, the node that has the blob
//! asks the other members of its cluster to hold it, and goes on only once a majority of
//! the voters (itself included) hold it whole and durably (DESIGN.md: a committed blob
//! reference always has its blob on a majority). A member asked to hold a blob copies it
//! from the asker's file and checks it against its hash ([`crate::blob_pull`]; failing
//! that, fetches it by hash through iroh-blobs, verified as it streams), flushes it to
//! disk, keeps it for [`aspen_blobs::PENDING_GRACE`] (until the reference, once applied,
//! protects it), and answers. The asker counts answers as they come; members that answer later still get the
//! blob, and one that never does fetches it when it applies the reference.
//!
//! One request and one answer per stream, postcard with a version byte. Only members and
//! configured peers may connect (see [`crate::admission::restrict_blobs`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aspen_api::codec::{CodecError, Format};
use aspen_api::wire::MemberReport;
use aspen_blobs::{BlobRef, BlobStore, Hash, Held, Pending, MAX_BLOB_BYTES};
use futures::stream::{FuturesUnordered, StreamExt};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::EndpointId;
use serde::{Deserialize, Serialize};

use crate::blob_pull::pull;
use crate::service::KvService;
use crate::stages::{Stage, Stages};
use crate::transport::{serve_streams_until_closed, ReadBudget, Transport, CLOSE_NOT_ALLOWED};

/// The ALPN of the protocol.
pub const BLOB_HOLD_ALPN: &[u8] = b"aspen/blob-hold/1";

const HOLD_FORMAT: Format = Format::new("aspen/blob-hold/1 message", 1);

/// Largest message either side sends (a request is at most 44 bytes; an answer carries a
/// reason of at most [`MAX_REASON_BYTES`]).
pub const MAX_HOLD_MESSAGE_BYTES: usize = 4096;

/// Longest failure reason an answer carries, in bytes of UTF-8 (longer ones are cut at a
/// character boundary).
pub const MAX_REASON_BYTES: usize = 1024;

/// Request bytes this node holds at once over all its hold streams.
const HOLD_READ_BUDGET_BYTES: usize = 64 * MAX_HOLD_MESSAGE_BYTES;

/// Time a member may take to hold a blob, on top of [`hold_time`]'s share per byte.
pub const HOLD_BASE_TIME: Duration = Duration::from_secs(10);

/// The slowest transfer a hold allows for, in bytes per second: 8 MiB/s, a small fraction
/// of what two members copying at once each get over loopback on a 2-core machine (60 MB/s
/// and more, docs/BENCHMARKS.md), so a busy member still makes it.
pub const MIN_HOLD_BYTES_PER_SEC: u64 = 8 * 1024 * 1024;

/// How long a member may take to fetch and store a blob of `size` bytes: a 1 MiB blob 10 s,
/// a 4 GiB one about 9 minutes.
pub fn hold_time(size: u64) -> Duration {
    HOLD_BASE_TIME + Duration::from_secs(size.div_ceil(MIN_HOLD_BYTES_PER_SEC))
}

/// What a member asks another to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    /// BLAKE3 of the blob.
    pub hash: [u8; 32],
    /// Its length.
    pub size: u64,
}

/// The answer: held (whole and durable), or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldAnswer {
    /// The blob is whole and durable on the answering node.
    Held,
    /// It is not, for this reason (at most [`MAX_REASON_BYTES`]).
    Failed { reason: String },
}

/// Encodes a request.
pub fn encode_request(request: &HoldRequest) -> Vec<u8> {
    HOLD_FORMAT.encode(request)
}

/// Decodes a request as a member receives it.
pub fn decode_request(bytes: &[u8]) -> Result<HoldRequest, CodecError> {
    HOLD_FORMAT.decode(bytes)
}

/// Encodes an answer.
pub fn encode_answer(answer: &HoldAnswer) -> Vec<u8> {
    HOLD_FORMAT.encode(answer)
}

/// Decodes an answer as the asking member receives it.
pub fn decode_answer(bytes: &[u8]) -> Result<HoldAnswer, CodecError> {
    HOLD_FORMAT.decode(bytes)
}

fn failed(reason: impl Into<String>) -> HoldAnswer {
    let mut reason: String = reason.into();
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    HoldAnswer::Failed { reason }
}

/// The blob a request names, or why it is refused.
fn requested(bytes: &[u8]) -> Result<BlobRef, HoldAnswer> {
    let request: HoldRequest = HOLD_FORMAT
        .decode(bytes)
        .map_err(|e| failed(e.to_string()))?;
    if request.size > MAX_BLOB_BYTES {
        return Err(failed(format!(
            "size {} is over the limit of {MAX_BLOB_BYTES} bytes for one value",
            request.size
        )));
    }
    Ok(BlobRef {
        hash: Hash::from_bytes(request.hash),
        size: request.size,
    })
}

/// The serving side: fetches what a member asks this node to hold, from that member.
#[derive(Clone)]
pub struct HoldProtocol {
    blobs: BlobStore,
    service: Arc<KvService>,
    transport: Arc<Transport>,
    pending: Pending,
    budget: ReadBudget,
    stages: Stages,
}

impl std::fmt::Debug for HoldProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldProtocol").finish_non_exhaustive()
    }
}

impl HoldProtocol {
    /// A handler holding blobs in `blobs`, kept in `pending` until referenced, timing
    /// each fetch into `stages` (`blob_fetch`).
    pub fn new(
        blobs: BlobStore,
        service: Arc<KvService>,
        transport: Arc<Transport>,
        pending: Pending,
        stages: Stages,
    ) -> HoldProtocol {
        let budget = ReadBudget::new(MAX_HOLD_MESSAGE_BYTES, HOLD_READ_BUDGET_BYTES);
        HoldProtocol {
            blobs,
            service,
            transport,
            pending,
            budget,
            stages,
        }
    }

    async fn answer(&self, asker: EndpointId, bytes: &[u8]) -> HoldAnswer {
        let blob = match requested(bytes) {
            Ok(blob) => blob,
            Err(refused) => return refused,
        };
        let asker_hex = asker.to_string();
        let known = self
            .service
            .members()
            .into_iter()
            .find(|m| m.endpoint_id == asker_hex)
            .map(|m| m.addrs)
            .unwrap_or_default();
        let from = self.transport.resolve(asker, &known);
        let provider = iroh::EndpointAddr::new(asker)
            .with_addrs(from.addrs.iter().map(|a| iroh::TransportAddr::Ip(*a)));
        let endpoint = self.transport.endpoint();
        let started = Instant::now();
        let wait = hold_time(blob.size);
        // The asker waits `wait` in all: a fallback fetch gets what is left of it.
        let providers = [provider];
        let fetch = || {
            let left = wait.saturating_sub(started.elapsed());
            self.blobs.fetch(endpoint, blob, &providers, left)
        };
        // A blob already here only needs keeping (the fetch does that without a transfer).
        let held = match self.blobs.complete_size(blob.hash).await {
            Ok(Some(size)) if size == blob.size => fetch().await.map_err(|e| e.to_string()),
            _ => match pull(&self.transport, &self.blobs, &from, blob, wait).await {
                Ok(held) => Ok(held),
                Err(pulled) => {
                    tracing::info!(%blob, reason = %pulled, "copying a blob from the member \
                        that asked failed; fetching it through iroh-blobs instead");
                    fetch()
                        .await
                        .map_err(|e| format!("copying it failed ({pulled}), and so did {e}"))
                }
            },
        };
        match held {
            Ok(held) => {
                self.stages.observe(Stage::BlobFetch, started.elapsed());
                self.pending.keep(held);
                HoldAnswer::Held
            }
            Err(reason) => failed(reason),
        }
    }
}

impl ProtocolHandler for HoldProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let asker = connection.remote_id();
        if self.transport.is_blocked(&asker) {
            connection.close(CLOSE_NOT_ALLOWED.into(), b"partitioned");
            return Ok(());
        }
        let this = self.clone();
        serve_streams_until_closed(connection, self.budget.clone(), move |bytes| {
            let this = this.clone();
            async move { encode_answer(&this.answer(asker, &bytes).await) }
        })
        .await;
        Ok(())
    }
}

/// Why a blob is not on a majority.
#[derive(Debug, thiserror::Error)]
#[error("blob {blob} is held by {held} of the {needed} voters it needs ({voters} in the cluster): {reasons}")]
pub struct NotOnMajority {
    pub blob: BlobRef,
    pub held: usize,
    pub needed: usize,
    pub voters: usize,
    pub reasons: String,
}

/// Asks every other member of `members` to hold `held` (a blob this node, `own_id`, has
/// whole and durably) and returns once a majority of the voters hold it, with the node ids
/// of those that said so; or, once that can no longer happen, why not for each member.
pub async fn hold_on_majority(
    transport: &Transport,
    own_id: u64,
    members: &[MemberReport],
    held: &Held,
) -> Result<Vec<u64>, NotOnMajority> {
    let blob = held.blob();
    let voters = members.iter().filter(|m| m.voter).count();
    let needed = voters / 2 + 1;
    let mut holders: Vec<u64> = members
        .iter()
        .filter(|m| m.node_id == own_id && m.voter)
        .map(|m| m.node_id)
        .collect();
    let request = encode_request(&HoldRequest {
        hash: *blob.hash.as_bytes(),
        size: blob.size,
    });
    let wait = hold_time(blob.size);
    let mut asks: FuturesUnordered<_> = members
        .iter()
        .filter(|m| m.node_id != own_id)
        .map(|member| {
            let request = &request;
            async move {
                let answer = match member.endpoint_id.parse::<EndpointId>() {
                    Err(e) => Err(format!("bad endpoint id in the membership: {e}")),
                    Ok(id) => {
                        let peer = transport.resolve(id, &member.addrs);
                        transport
                            .request(&peer, BLOB_HOLD_ALPN, request, MAX_HOLD_MESSAGE_BYTES, wait)
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| {
                                HOLD_FORMAT
                                    .decode::<HoldAnswer>(&bytes)
                                    .map_err(|e| e.to_string())
                            })
                            .and_then(|answer| match answer {
                                HoldAnswer::Held => Ok(()),
                                HoldAnswer::Failed { reason } => Err(reason),
                            })
                    }
                };
                (member, answer)
            }
        })
        .collect();
    let voting_asks = members
        .iter()
        .filter(|m| m.voter && m.node_id != own_id)
        .count();
    let (mut answered_voters, mut reasons) = (0, Vec::new());
    while holders.len() < needed {
        let Some((member, answer)) = asks.next().await else {
            break;
        };
        if member.voter {
            answered_voters += 1;
        }
        match answer {
            Ok(()) if member.voter => holders.push(member.node_id),
            Ok(()) => {}
            Err(reason) => reasons.push(format!("node {}: {reason}", member.node_id)),
        }
        if holders.len() + (voting_asks - answered_voters) < needed {
            break;
        }
    }
    if holders.len() >= needed {
        return Ok(holders);
    }
    Err(NotOnMajority {
        blob,
        held: holders.len(),
        needed,
        voters,
        reasons: if reasons.is_empty() {
            "no other voter to ask".into()
        } else {
            reasons.join("; ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(size: u64) -> Vec<u8> {
        encode_request(&HoldRequest {
            hash: [7; 32],
            size,
        })
    }

    #[test]
    fn a_request_is_taken_up_to_the_largest_value_and_refused_past_it() {
        let blob = requested(&request(MAX_BLOB_BYTES)).unwrap();
        assert_eq!(blob.size, MAX_BLOB_BYTES);
        let largest = request(u64::MAX);
        assert!(largest.len() <= MAX_HOLD_MESSAGE_BYTES);
        for bytes in [request(MAX_BLOB_BYTES + 1), largest] {
            match requested(&bytes) {
                Err(HoldAnswer::Failed { reason }) => {
                    assert!(reason.contains(&MAX_BLOB_BYTES.to_string()), "{reason}")
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert!(matches!(
            requested(b"\x01junk"),
            Err(HoldAnswer::Failed { .. })
        ));
    }

    #[test]
    fn a_reason_is_kept_up_to_its_limit_and_cut_past_it_within_the_message_limit() {
        let reason = |answer: HoldAnswer| match answer {
            HoldAnswer::Failed { reason } => reason,
            HoldAnswer::Held => unreachable!(),
        };
        let at_limit = "x".repeat(MAX_REASON_BYTES);
        assert_eq!(reason(failed(at_limit.clone())), at_limit);
        let over = "x".repeat(MAX_REASON_BYTES + 1);
        assert_eq!(reason(failed(over)).len(), MAX_REASON_BYTES);
        // Four-byte characters: cut at a character boundary, and the answer still fits.
        let wide = "\u{1F600}".repeat(MAX_REASON_BYTES);
        let cut = reason(failed(wide.clone()));
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() > MAX_REASON_BYTES - 4);
        let answer = encode_answer(&failed(wide));
        assert!(answer.len() <= MAX_HOLD_MESSAGE_BYTES, "{}", answer.len());
    }

    #[test]
    fn a_hold_may_take_longer_the_larger_the_blob() {
        assert_eq!(hold_time(0), HOLD_BASE_TIME);
        assert_eq!(hold_time(1), HOLD_BASE_TIME + Duration::from_secs(1));
        let largest = hold_time(MAX_BLOB_BYTES);
        assert_eq!(largest, HOLD_BASE_TIME + Duration::from_secs(512));
    }
}
