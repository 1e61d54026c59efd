//! Serving an `aspen/kv/2` `Batch` (what a router sends when requests for one cluster
//! queue up): writes are queued for the proposer together and share its proposals; reads share one
//! ReadIndex confirmation and one pass over the state machine on one read connection,
//! up to [`MAX_BATCH_READ_BYTES`] of results.
//! Every item is still answered on its own, in order, exactly as if it came alone.

use aspen_api::wire::{KvRequest, KvResponse, MAX_WIRE_BATCH, MAX_WIRE_MESSAGE_BYTES};
use aspen_api::{ApiError, Command, Consistency, ReadRequest};

use super::{unavailable, validate_read, KvService};
use crate::proposer::ProposeError;
use crate::read_index::ReadIndexError;

/// Most key and value bytes a batch's reads return together. The read that reaches it is
/// kept; the ones after it are left out (each answered with
/// [`aspen_api::wire::read_left_out_of_batch`], and sent again alone by the router). A
/// quarter of the message limit, so that the answer still fits when the last kept read
/// alone is as large as a read can be (a scan page plus one entry).
pub const MAX_BATCH_READ_BYTES: usize = MAX_WIRE_MESSAGE_BYTES / 4;

/// A read item of a batch, with its place in the batch.
struct BatchRead {
    index: usize,
    request: ReadRequest,
    consistency: Consistency,
}

impl KvService {
    /// Serves the requests of a batch concurrently and answers them in order.
    pub(super) async fn serve_batch(&self, requests: Vec<KvRequest>) -> KvResponse {
        if requests.len() > MAX_WIRE_BATCH {
            return KvResponse::Error(ApiError::bad_request(format!(
                "a batch of {} requests is over the limit of {MAX_WIRE_BATCH}; send fewer",
                requests.len()
            )));
        }
        if let Some(i) = requests
            .iter()
            .position(|r| !matches!(r, KvRequest::Write(_) | KvRequest::Read { .. }))
        {
            return KvResponse::Error(ApiError::bad_request(format!(
                "batch item {i}: only writes and reads may be batched"
            )));
        }
        let count = requests.len();
        let mut answers: Vec<Option<KvResponse>> = vec![None; count];
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            match request {
                KvRequest::Read {
                    request,
                    consistency,
                } => match validate_read(&request) {
                    Err(e) => answers[index] = Some(KvResponse::Error(e)),
                    Ok(()) => reads.push(BatchRead {
                        index,
                        request,
                        consistency,
                    }),
                },
                KvRequest::Write(command) => match self.check_command(&command) {
                    Err(e) => answers[index] = Some(KvResponse::Error(e)),
                    Ok(()) => writes.push((index, command)),
                },
                _ => unreachable!("only writes and reads, checked above"),
            }
        }
        let (written, read) = tokio::join!(self.serve_writes(writes), self.serve_reads(reads));
        for (index, answer) in written.into_iter().chain(read) {
            answers[index] = Some(answer);
        }
        KvResponse::Batch(
            answers
                .into_iter()
                .map(|a| a.expect("every batch item is answered"))
                .collect(),
        )
    }

    /// Answers the (valid) write items of a batch: all are queued for the proposer at
    /// once, so they share proposals, and each gets its own result.
    async fn serve_writes(&self, writes: Vec<(usize, Command)>) -> Vec<(usize, KvResponse)> {
        if writes.is_empty() {
            return Vec::new();
        }
        let (indexes, commands): (Vec<usize>, Vec<Command>) = writes.into_iter().unzip();
        let answers = self.proposer.propose_all(commands).await;
        indexes
            .into_iter()
            .zip(answers)
            .map(|(index, answer)| {
                let answer = match answer {
                    Ok(result) => KvResponse::Write(result),
                    Err(ProposeError::NotLeader(leader)) => KvResponse::NotLeader {
                        leader: leader.map(|(id, _)| id),
                    },
                    Err(ProposeError::Failed(e)) => KvResponse::Error(e),
                };
                (index, answer)
            })
            .collect()
    }

    /// Answers the read items of a batch: one ReadIndex confirmation covers every
    /// linearizable read (none is needed when all are stale), then all are read together.
    async fn serve_reads(&self, reads: Vec<BatchRead>) -> Vec<(usize, KvResponse)> {
        if reads.is_empty() {
            return Vec::new();
        }
        let confirmed = if reads.iter().all(|r| r.consistency == Consistency::Stale) {
            Ok(())
        } else {
            self.read_index.confirm().await
        };
        let mut answers = Vec::with_capacity(reads.len());
        let mut to_read = Vec::with_capacity(reads.len());
        for read in reads {
            match &confirmed {
                Err(e) if read.consistency != Consistency::Stale => {
                    answers.push((read.index, unconfirmed(e)));
                }
                _ => to_read.push(read),
            }
        }
        let (indexes, requests): (Vec<usize>, Vec<ReadRequest>) =
            to_read.into_iter().map(|r| (r.index, r.request)).unzip();
        match self.state.read(requests, MAX_BATCH_READ_BYTES).await {
            Ok(results) => {
                answers.extend(indexes.into_iter().zip(results).map(|(index, result)| {
                    (
                        index,
                        result.map_or_else(KvResponse::Error, KvResponse::Read),
                    )
                }))
            }
            Err(e) => answers.extend(
                indexes
                    .into_iter()
                    .map(|index| (index, KvResponse::Error(e.clone()))),
            ),
        }
        answers
    }
}

/// The answer to a linearizable read this node could not confirm, as `serve_remote` gives
/// it for a read on its own.
fn unconfirmed(e: &ReadIndexError) -> KvResponse {
    match e {
        ReadIndexError::NotLeader(leader) => KvResponse::NotLeader {
            leader: leader.as_ref().map(|(id, _)| *id),
        },
        // The leader may be deposed: the router tries again.
        ReadIndexError::NoQuorum => KvResponse::NotLeader { leader: None },
        ReadIndexError::Stopped(f) => {
            KvResponse::Error(unavailable(format!("this node's Raft has stopped: {f}")))
        }
    }
}
