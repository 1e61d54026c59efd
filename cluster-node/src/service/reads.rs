//! Reading this node's copy of the state machine: [`StateReads`] reads a list of requests
//! on one pooled SQLite connection in one blocking task, and [`ReadQueue`] batches the
//! reads that arrive one at a time (HTTP requests, forwarded reads) so that reads which
//! pile up while others run share a task and a connection checkout too.
//!
//! Batching changes no answer: every read still happens after its own ReadIndex
//! confirmation (taken before it is queued) and reports the positions read before its
//! data.

use std::sync::Arc;

use aspen_api::types::ReadResponse;
use aspen_api::wire;
use aspen_api::{ApiError, ErrorCode, ReadRequest, ReadResult};
use tokio::sync::Semaphore;

use crate::batcher::{BatchLimits, Batcher};
use crate::leader_contact::LeaderContact;
use crate::raft_types::{AspenRaft, NodeId};
use crate::storage::state_machine::{ReadError, MAX_IDLE_READERS};
use crate::storage::StateMachine;

/// Most reads queued one at a time that run together.
pub const MAX_READS_PER_BATCH: usize = 256;

/// Most weight in one batch of queued reads: a get weighs 1 and a scan its row limit, so
/// gets batch freely while a large scan runs alone and holds up no get behind it.
pub const MAX_READ_BATCH_WEIGHT: usize = 1024;

/// Batches of queued reads running at once, each on its own connection (of the
/// [`MAX_IDLE_READERS`] the state machine keeps).
pub const MAX_READ_BATCHES_IN_FLIGHT: usize = 4;

/// Reads that may wait for a batch; more make their callers wait.
pub const MAX_QUEUED_READS: usize = 4 * MAX_READS_PER_BATCH;

type Answer = Result<ReadResponse, ApiError>;

fn storage(e: impl ToString) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// The key and value bytes a read returns.
fn result_bytes(result: &ReadResult) -> usize {
    let entry = |e: &aspen_api::KvEntry| e.key.len() + e.value.len();
    match result {
        ReadResult::Get(found) => found.as_ref().map_or(0, entry),
        ReadResult::Scan(page) => page.kvs.iter().map(entry).sum(),
    }
}

/// What reading the state machine needs: the copy, the bound on concurrent readers, and
/// what a read reports about its freshness.
pub(super) struct StateReads {
    pub(super) node_id: NodeId,
    pub(super) raft: AspenRaft,
    pub(super) sm: StateMachine,
    /// Bounds reads running on the blocking pool to the state machine's reader pool.
    pub(super) slots: Semaphore,
    pub(super) contact: Arc<LeaderContact>,
}

impl StateReads {
    /// The highest commit log index this node knows of and how long ago it heard from a
    /// leader (for the leader itself: since a quorum last acknowledged it).
    fn freshness(&self) -> (u64, Option<u64>) {
        // Read the two fields in place: every read comes through here, and cloning the
        // whole metrics (membership, replication map) would cost more than the read.
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader == Some(self.node_id) {
            let applied = metrics.last_applied.map_or(0, |l| l.index);
            (applied, metrics.millis_since_quorum_ack)
        } else {
            (self.contact.leader_commit(), self.contact.since_ms())
        }
    }

    /// Reads this node's copy as it is, for each of `requests` in order, all on one read
    /// connection and one blocking task. Once the results hold `budget` key and value
    /// bytes, the remaining requests are not read: each gets
    /// [`wire::read_left_out_error`].
    pub(super) async fn read(
        &self,
        requests: Vec<ReadRequest>,
        budget: usize,
    ) -> Result<Vec<Answer>, ApiError> {
        let sm = self.sm.clone();
        let (known_commit, since_leader_contact_ms) = self.freshness();
        let _slot = self.slots.acquire().await.map_err(storage)?;
        tokio::task::spawn_blocking(move || {
            sm.read(|reader| {
                let read_one = |request: ReadRequest| {
                    // Read the positions before the data: the data is at least this fresh.
                    let applied_index = sm.applied_index();
                    let revision = sm.revision();
                    let result = match request {
                        ReadRequest::Get { key } => ReadResult::Get(reader.get(&key)?),
                        ReadRequest::Scan {
                            prefix,
                            after,
                            limit,
                        } => ReadResult::Scan(reader.scan(&prefix, after.as_deref(), limit)?),
                    };
                    Ok(ReadResponse {
                        result,
                        revision,
                        applied_index,
                        known_commit_index: known_commit.max(applied_index),
                        since_leader_contact_ms,
                    })
                };
                let mut used = 0usize;
                requests
                    .into_iter()
                    .map(|request| {
                        if used >= budget {
                            return Err(wire::read_left_out_error());
                        }
                        let response = read_one(request).map_err(|e: ReadError| storage(e))?;
                        used = used.saturating_add(result_bytes(&response.result));
                        Ok(response)
                    })
                    .collect()
            })
        })
        .await
        .map_err(storage)?
        .map_err(storage)
    }
}

/// The queue of single reads, run in batches through [`StateReads::read`].
pub(super) struct ReadQueue {
    batcher: Batcher<ReadRequest, Answer>,
}

impl ReadQueue {
    pub(super) fn start(state: Arc<StateReads>) -> ReadQueue {
        let limits = BatchLimits {
            max_items: MAX_READS_PER_BATCH,
            max_weight: MAX_READ_BATCH_WEIGHT,
            max_in_flight: MAX_READ_BATCHES_IN_FLIGHT,
            max_queued: MAX_QUEUED_READS,
        };
        let weight = |request: &ReadRequest| match request {
            ReadRequest::Get { .. } => 1,
            ReadRequest::Scan { limit, .. } => *limit,
        };
        let batcher = Batcher::start(limits, weight, move |requests: Vec<ReadRequest>| {
            let state = state.clone();
            async move {
                let count = requests.len();
                state
                    .read(requests, usize::MAX)
                    .await
                    .unwrap_or_else(|e| vec![Err(e); count])
            }
        });
        ReadQueue { batcher }
    }

    /// Reads `request` from this node's copy as it is.
    pub(super) async fn read(&self, request: ReadRequest) -> Answer {
        self.batcher.submit(request).await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::ClusterUnavailable,
                "this node is shutting down; retry on another node",
            ))
        })
    }
}

const _: () = assert!(MAX_READ_BATCHES_IN_FLIGHT <= MAX_IDLE_READERS);
