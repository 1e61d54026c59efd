//! Lease operations of the KV service. Grant and revoke are writes (a `LeaseGrant` or
//! `LeaseRevoke` command through Raft); keep-alive and get are answered by the leader from
//! its lease clock after a heartbeat round confirms it still leads ([`crate::lease`]).
//! Also the leader's expiry task, and the lease rules every write is checked against.

use std::sync::Arc;

use aspen_api::lease::{min_lease_ttl_secs, validate_ttl, LeaseAnswer, LeaseFailure, LeaseRequest};
use aspen_api::wire::KvRequest;
use aspen_api::wire::KvResponse;
use aspen_api::{ApiError, Command, ErrorCode, WriteOutcome, WriteResult};
use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{unavailable, Attempt, KvService};
use crate::lease::{LeaseTime, EXPIRY_TICK, MAX_EXPIRIES_PER_TICK};
use crate::read_index::ReadIndexError;

/// Tries at picking an unused lease number before giving up (a collision of random
/// 64-bit numbers is already one in billions).
const GRANT_ATTEMPTS: usize = 3;

impl KvService {
    /// The shortest TTL this cluster grants, seconds (1.5 election timeouts).
    pub fn min_lease_ttl_secs(&self) -> u64 {
        min_lease_ttl_secs(self.raft.config().election_timeout_max)
    }

    /// Checks what only this node can: a leased write's leases are this cluster's, and a
    /// grant's TTL is within this cluster's bounds.
    pub(super) fn check_command(&self, command: &Command) -> Result<(), ApiError> {
        command.validate()?;
        match command {
            Command::Leased { cluster, .. } if *cluster != self.cluster => {
                Err(aspen_api::lease::cross_cluster(cluster, &self.cluster))
            }
            Command::LeaseGrant { ttl_ms, .. } => {
                let min_ms = self.min_lease_ttl_secs() * 1_000;
                if *ttl_ms < min_ms {
                    return Err(ApiError::bad_request(format!(
                        "field `ttl`: {ttl_ms} ms is shorter than this cluster's minimum lease \
                         TTL of {min_ms} ms (1.5 election timeouts)"
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Serves a lease operation, forwarding to the leader as needed.
    pub async fn lease(&self, request: LeaseRequest) -> Result<LeaseAnswer, ApiError> {
        match request {
            LeaseRequest::Grant { .. } | LeaseRequest::Revoke { .. } => {
                match self.lease_attempt(&request, false).await? {
                    Attempt::Done(answer) => Ok(answer),
                    Attempt::Forward(_) => Err(unavailable("the write was not applied")),
                }
            }
            LeaseRequest::KeepAlive { .. } | LeaseRequest::Get { .. } => {
                let wire = KvRequest::Lease(request.clone());
                self.with_leader(
                    &wire,
                    |this| this.lease_attempt(&request, true),
                    |answer| match answer {
                        KvResponse::Lease(a) => Some(Ok(a)),
                        _ => None,
                    },
                )
                .await
            }
        }
    }

    /// Serves a lease operation here only (from `aspen/kv/2`): `NotLeader` if it needs
    /// the leader and this node is not.
    pub(super) async fn serve_lease(&self, request: LeaseRequest) -> KvResponse {
        match self.lease_attempt(&request, true).await {
            Ok(Attempt::Done(answer)) => KvResponse::Lease(answer),
            Ok(Attempt::Forward(leader)) => KvResponse::NotLeader { leader },
            Err(e) => KvResponse::Error(e),
        }
    }

    /// One attempt at `request`; writes forward to the leader unless `local_only`.
    async fn lease_attempt(
        &self,
        request: &LeaseRequest,
        local_only: bool,
    ) -> Result<Attempt<LeaseAnswer>, ApiError> {
        match *request {
            LeaseRequest::Grant { ttl_secs } => {
                validate_ttl(ttl_secs, self.min_lease_ttl_secs())?;
                let ttl_ms = ttl_secs * 1_000;
                for _ in 0..GRANT_ATTEMPTS {
                    let lease = (rand::random::<u64>() >> 1).max(1);
                    let command = Command::LeaseGrant { lease, ttl_ms };
                    let result = match self.lease_write(command, local_only).await? {
                        Attempt::Done(result) => result,
                        Attempt::Forward(leader) => return Ok(Attempt::Forward(leader)),
                    };
                    match result.outcome {
                        WriteOutcome::LeaseFailed(LeaseFailure::Exists { .. }) => continue,
                        outcome => {
                            self.lease_outcome(&outcome)?;
                            return Ok(Attempt::Done(answer(lease, ttl_ms, ttl_ms)));
                        }
                    }
                }
                Err(ApiError::new(
                    ErrorCode::Internal,
                    "no unused lease number found; retry",
                ))
            }
            LeaseRequest::Revoke { lease } => {
                let command = Command::LeaseRevoke { lease };
                let result = match self.lease_write(command, local_only).await? {
                    Attempt::Done(result) => result,
                    Attempt::Forward(leader) => return Ok(Attempt::Forward(leader)),
                };
                let deleted = self.lease_outcome(&result.outcome)?;
                let mut out = answer(lease, 0, 0);
                out.revision = result.revision;
                out.deleted = deleted;
                Ok(Attempt::Done(out))
            }
            LeaseRequest::KeepAlive { lease } => {
                let started = Instant::now();
                if let Some(leader) = self.confirm_leader().await? {
                    return Ok(Attempt::Forward(leader));
                }
                let time = self.sm.lease_clock().keep_alive(lease, started);
                let time = time.ok_or_else(|| self.not_found(lease))?;
                Ok(Attempt::Done(timed(lease, time)))
            }
            LeaseRequest::Get { lease } => {
                if let Some(leader) = self.confirm_leader().await? {
                    return Ok(Attempt::Forward(leader));
                }
                let time = self.sm.lease_clock().time_left(lease);
                let time = time.ok_or_else(|| self.not_found(lease))?;
                let sm = self.sm.clone();
                let keys = tokio::task::spawn_blocking(move || sm.read(|r| r.lease_keys(lease)))
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                    .and_then(|r| r)
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                let mut out = timed(lease, time);
                out.keys = keys;
                Ok(Attempt::Done(out))
            }
        }
    }

    fn not_found(&self, lease: u64) -> ApiError {
        LeaseFailure::NotFound { lease }.to_error(&self.cluster)
    }

    /// `None` once a heartbeat round confirmed this node leads; else the leader to ask.
    async fn confirm_leader(&self) -> Result<Option<Option<u64>>, ApiError> {
        match self.read_index.confirm().await {
            Ok(()) => Ok(None),
            Err(ReadIndexError::NotLeader(leader)) => Ok(Some(leader.map(|(id, _)| id))),
            Err(ReadIndexError::NoQuorum) => Ok(Some(None)),
            Err(ReadIndexError::Stopped(f)) => {
                Err(unavailable(format!("this node's Raft has stopped: {f}")))
            }
        }
    }

    async fn lease_write(
        &self,
        command: Command,
        local_only: bool,
    ) -> Result<Attempt<WriteResult>, ApiError> {
        if local_only {
            self.check_command(&command)?;
            self.write_local(&command).await
        } else {
            self.write(command).await.map(Attempt::Done)
        }
    }

    /// The keys deleted by an applied lease command, or its failure as an error.
    fn lease_outcome(&self, outcome: &WriteOutcome) -> Result<u32, ApiError> {
        match outcome {
            WriteOutcome::Applied { deleted } => Ok(*deleted),
            WriteOutcome::LeaseFailed(failure) => Err(failure.to_error(&self.cluster)),
            WriteOutcome::PreconditionFailed(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "a lease command reported a precondition failure",
            )),
        }
    }
}

fn answer(lease: u64, granted_ttl_ms: u64, remaining_ms: u64) -> LeaseAnswer {
    LeaseAnswer {
        lease,
        granted_ttl_ms,
        remaining_ms,
        keys: vec![],
        revision: 0,
        deleted: 0,
    }
}

fn timed(lease: u64, time: LeaseTime) -> LeaseAnswer {
    answer(
        lease,
        time.ttl.as_millis() as u64,
        time.remaining.as_millis() as u64,
    )
}

/// The leader's expiry task: each [`EXPIRY_TICK`], if this node leads, proposes a
/// `LeaseRevoke` for every expired lease (at most [`MAX_EXPIRIES_PER_TICK`]). On becoming
/// leader it first restarts every TTL ([`crate::lease::LeaseClock::refresh_all`]). Ends
/// when `stop` changes.
pub async fn run_expiry(service: Arc<KvService>, mut stop: watch::Receiver<bool>) {
    let clock = service.sm.lease_clock().clone();
    let mut metrics = service.raft.metrics();
    let mut leading_term: Option<u64> = None;
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (state, term) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            leading_term = None;
            continue;
        }
        if leading_term != Some(term) {
            clock.refresh_all();
            tracing::info!(
                term,
                leases = clock.len(),
                "leading: every lease's TTL restarts now"
            );
            leading_term = Some(term);
            continue;
        }
        for lease in clock.take_expired(Instant::now(), MAX_EXPIRIES_PER_TICK) {
            let service = service.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let command = Command::LeaseRevoke { lease };
                match service.write_local(&command).await {
                    Ok(Attempt::Done(result)) => {
                        tracing::debug!(lease, revision = result.revision, "lease expired");
                    }
                    // Refused before it was appended: not leader any more.
                    Ok(Attempt::Forward(_)) => clock.unmark(lease),
                    // It may still commit: keep the lease expiring, revoke it again.
                    Err(e) => {
                        tracing::debug!(lease, "revoke of an expired lease failed: {e}");
                        clock.retry(lease);
                    }
                }
            });
        }
    }
}
