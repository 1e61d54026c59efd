//! Stale reads of keys another region owns, served from a federation replica in this
//! router's region (DESIGN.md, "Federation rules").
//!
//! A router sends such a read to a cluster of its own region, whose nodes keep replicas of
//! the owner (`KvRequest::ReplicaRead`), trying its region's clusters in table order and,
//! in each, one member after another: every node keeps its own replica, at its own
//! revision. The router remembers, per owner, the highest replica revision it has
//! returned, and asks every later read for at least that revision: a replica behind it
//! answers `replica_behind`, so the router moves to another node, and when none is fresh
//! enough waits briefly ([`REPLICA_CATCH_UP_WAIT`]) for one to catch up before answering
//! 503 `replica_behind`. A client reading through one router therefore never sees a key go
//! back to an older revision, whichever node serves it.
//!
//! The memory is the router's own and lives in its memory only: a restarted router, or a
//! client that switches to another router, starts from what the replicas hold and may see
//! an older revision than it saw before. A region without clusters has no replicas; its
//! routers serve stale reads from the owner, as within one region.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aspen_api::server::ReplicaLag;
use aspen_api::types::ReadResponse;
use aspen_api::wire::{KvRequest, KvResponse, ReplicaReadRequest, ReplicaReport};
use aspen_api::{ApiError, ErrorCode, ReadRequest};
use tokio::time::Instant;

use super::{client_of, RouterService, Routing};
use aspen_kv_client::refusal_rank;

/// How long a replica read waits for this region's replicas to reach the revision this
/// router already returned (or to meet `max_lag`) before it answers `replica_behind`.
/// Replicas apply within milliseconds of each other when healthy; waiting longer would
/// only hide a partitioned region behind slow answers.
pub const REPLICA_CATCH_UP_WAIT: Duration = Duration::from_millis(500);

/// Pause between tries while waiting for a replica to catch up.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The highest replica revision returned per owner cluster.
#[derive(Debug, Default)]
pub(crate) struct Floors(Mutex<HashMap<String, u64>>);

impl Floors {
    fn get(&self, source: &str) -> u64 {
        *self
            .0
            .lock()
            .expect("floors lock")
            .get(source)
            .unwrap_or(&0)
    }

    fn raise(&self, source: &str, revision: u64) {
        let mut floors = self.0.lock().expect("floors lock");
        let floor = floors.entry(source.to_string()).or_default();
        *floor = (*floor).max(revision);
    }
}

impl RouterService {
    /// Whether `cluster` runs in another region than this router.
    pub(crate) fn is_foreign(&self, routing: &Routing, cluster: &str) -> bool {
        routing
            .table
            .clusters()
            .iter()
            .any(|c| c.name == cluster && c.region != self.region)
    }

    /// The clusters of this router's region that keep the replicas: those the config's
    /// `[federation] replica_clusters` names, in its order, else every one in table order.
    pub(crate) fn replica_hosts<'a>(&self, routing: &'a Routing) -> Vec<&'a str> {
        match &routing.replica_clusters {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => routing
                .table
                .clusters()
                .iter()
                .filter(|c| c.region == self.region)
                .map(|c| c.name.as_str())
                .collect(),
        }
    }

    /// A stale read of `source`'s replica in this region, as a node's read answer plus the
    /// replica's lag; `None` when this region has no cluster to keep replicas.
    pub(crate) async fn replica_read(
        &self,
        routing: &Routing,
        source: &str,
        request: ReadRequest,
        max_lag_ms: Option<u64>,
    ) -> Result<Option<(ReadResponse, ReplicaLag)>, ApiError> {
        let hosts = self.replica_hosts(routing);
        if hosts.is_empty() {
            return Ok(None);
        }
        let now = Instant::now();
        let deadline = now + self.deadline;
        let give_up = (now + REPLICA_CATCH_UP_WAIT).min(deadline);
        loop {
            let ask = ReplicaReadRequest {
                source: source.to_string(),
                request: request.clone(),
                min_revision: self.floors.get(source),
                max_lag_ms,
            };
            let mut refusal: Option<ApiError> = None;
            for host in &hosts {
                let client = client_of(routing, host)?;
                match client.replica_read(ask.clone(), deadline).await {
                    Ok(r) => {
                        self.floors.raise(source, r.revision);
                        let lag = ReplicaLag {
                            revisions: r.lag_revisions,
                            ms: r.lag_ms,
                        };
                        let response = ReadResponse {
                            result: r.result,
                            revision: r.revision,
                            applied_index: 0,
                            known_commit_index: 0,
                            since_leader_contact_ms: None,
                        };
                        return Ok(Some((response, lag)));
                    }
                    Err(e) if e.code == ErrorCode::BadRequest => return Err(e),
                    Err(e) => {
                        if refusal
                            .as_ref()
                            .is_none_or(|r| refusal_rank(e.code) > refusal_rank(r.code))
                        {
                            refusal = Some(e);
                        }
                    }
                }
            }
            let last = refusal.unwrap_or_else(|| {
                ApiError::new(ErrorCode::ReplicaUnavailable, "no replica answered")
            });
            // Only a replica that is behind may catch up soon enough to be worth waiting for.
            let worth_waiting = last.code == ErrorCode::ReplicaBehind;
            if !worth_waiting || Instant::now() + RETRY_PAUSE >= give_up {
                return Err(ApiError::new(
                    last.code,
                    format!(
                        "no replica of {source} in region {} could serve: {}",
                        self.region, last.message
                    ),
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The replicas of every foreign cluster as the first answering host of this region
    /// reports them.
    pub(crate) async fn replica_reports(&self, routing: &Routing) -> Vec<(String, ReplicaReport)> {
        let mut out = Vec::new();
        for host in self.replica_hosts(routing) {
            let Ok(client) = client_of(routing, host) else {
                continue;
            };
            if let Ok(Ok(KvResponse::ReplicaStatus(reports))) =
                tokio::time::timeout(super::STATUS_TIMEOUT, client.call(KvRequest::ReplicaStatus))
                    .await
            {
                for report in reports {
                    if !out
                        .iter()
                        .any(|(_, r): &(String, ReplicaReport)| r.source == report.source)
                    {
                        out.push((host.to_string(), report));
                    }
                }
            }
        }
        out
    }
}
