//! How a member copies a blob it is asked to hold ([`crate::blob_hold`]): straight from
//! the asker's file, as a read over `aspen/value/1` (the asker sends the bytes as they lie
//! on its disk, [`aspen_blobs::store::READ_CHUNK_BYTES`] at a time), imported into this
//! node's store and believed only when they hash to the name and size asked for.
//!
//! iroh-blobs' own fetch checks every 16 KiB group against the hash as it streams, but
//! moves a blob at about half the rate on the same hardware (two members fetching at
//! once got 60 to 82 MB/s each, docs/BENCHMARKS.md), and a value's majority copy is most
//! of a large put's time. A whole-blob check at the end is as safe for holding: bytes that
//! hash to anything else are a blob of their own that nothing references, so nothing is
//! answered for them and collection removes them. The fetch stays the fallback (and the
//! way a lagging member gets a blob from whichever peer has it, [`crate::blob_values`]).

use std::time::Duration;

use aspen_api::server::{stall_bounded, VALUE_STALL_TIMEOUT};
use aspen_api::value_wire::{self, ValueAnswer, ValueRequest, MAX_VALUE_HEADER_BYTES, VALUE_ALPN};
use aspen_blobs::{BlobRef, BlobStore, Held};
use futures::StreamExt;

use crate::transport::{read_chunks, PeerAddr, Transport};

/// Bytes of the asker's stream imported as one piece.
const PULL_CHUNK_BYTES: usize = 256 * 1024;

/// Copies `blob` from `from` into `blobs` within `within`; the blob it returns is whole,
/// durable and exactly `blob`. Any failure is a reason, and what came is left to
/// collection.
pub(crate) async fn pull(
    transport: &Transport,
    blobs: &BlobStore,
    from: &PeerAddr,
    blob: BlobRef,
    within: Duration,
) -> Result<Held, String> {
    let whole = async {
        let request = ValueRequest::Read {
            blob: blob.into(),
            start: 0,
            len: blob.size,
        };
        let header = value_wire::encode(&request).map_err(|e| e.to_string())?;
        let (answer, recv) = transport
            .request_stream(from, VALUE_ALPN, &header, MAX_VALUE_HEADER_BYTES, within)
            .await
            .map_err(|e| e.to_string())?;
        match value_wire::decode::<ValueAnswer>(&answer) {
            Ok(ValueAnswer::Bytes { len }) if len == blob.size => {}
            Ok(ValueAnswer::Error(e)) => return Err(e.message),
            Ok(other) => return Err(format!("a read of the whole blob was answered {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
        let body = read_chunks(recv, PULL_CHUNK_BYTES).boxed();
        let body = stall_bounded(body, VALUE_STALL_TIMEOUT, "the blob from the asker");
        let held = blobs
            .import(body, blob.size)
            .await
            .map_err(|e| e.to_string())?;
        believed(held, blob)
    };
    tokio::time::timeout(within, whole)
        .await
        .unwrap_or_else(|_| Err(format!("no whole blob within {within:?}")))
}

/// `held` if it is `wanted`; else why not (and `held` goes, left to collection).
fn believed(held: Held, wanted: BlobRef) -> Result<Held, String> {
    let got = held.blob();
    if got == wanted {
        Ok(held)
    } else {
        Err(format!(
            "the bytes sent are blob {got}, not the {wanted} asked for; nothing of them is kept"
        ))
    }
}
