//! A workload runner: concurrent clients drive random gets, puts, deletes, CAS and CAD
//! against a deployment over its HTTP API and record every operation, with its call and
//! return times, for [`check()`](crate::check()).
//!
//! Each operation's outcome is classified the way the API promises: a success or a
//! failed precondition is recorded with its result; an error that says nothing was
//! applied (4xx, `no_leader`, `cluster_unavailable`, connection refused) is not recorded;
//! anything else (timeout, broken connection, 5xx) is recorded as [`Output::Unknown`],
//! since a write may or may not have taken effect.

use std::time::Duration;

use aspen_api::client::{CasOutcome, ClientError};
use aspen_api::json::{CadRequest, CasRequest};
use aspen_api::{AspenClient, Consistency, ErrorCode};
use rand::{Rng, SeedableRng};

use crate::history::{History, Operation, Recorder};
use crate::model::{Input, Output};

/// Most concurrent clients of one workload: each is a task holding a connection.
pub const MAX_WORKLOAD_CLIENTS: usize = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Base URLs of the nodes (or routers); client `i` starts on `endpoints[i % n]` and
    /// moves to the next endpoint when one refuses connections.
    pub endpoints: Vec<String>,
    /// Concurrent clients, 1 to [`MAX_WORKLOAD_CLIENTS`].
    pub clients: usize,
    /// Keys the clients share: few keys mean much contention, which is what finds bugs.
    pub keys: usize,
    /// How long clients keep issuing operations.
    pub duration: Duration,
    /// Per-request timeout; a request that takes longer is recorded as unknown.
    pub request_timeout: Duration,
    /// Seed of the random choices, so a failing run can be repeated.
    pub seed: u64,
}

/// Counts of what a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Operations recorded with a known result.
    pub ok: usize,
    /// Operations recorded as unknown (may or may not have taken effect).
    pub unknown: usize,
    /// Operations refused with "nothing applied", not recorded.
    pub refused: usize,
}

/// Errors of a workload run.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The spec is unusable.
    #[error("invalid workload: {0}")]
    Invalid(String),
    /// A client task failed.
    #[error("client task failed: {0}")]
    Task(String),
    /// The history could not be recorded.
    #[error("recording failed: {0}")]
    Record(#[from] crate::history::HistoryError),
}

enum Classified {
    Done(Output),
    Refused,
    Unknown,
}

fn classify_error(err: &ClientError) -> Classified {
    match err {
        ClientError::Api { status, body } => match body.error.code {
            ErrorCode::NoLeader | ErrorCode::ClusterUnavailable => Classified::Refused,
            _ if (400..500).contains(status) => Classified::Refused,
            _ => Classified::Unknown,
        },
        ClientError::Transport { source, .. } if source.is_connect() => Classified::Refused,
        _ => Classified::Unknown,
    }
}

/// Runs the workload and returns the recorded history.
pub async fn run(spec: &WorkloadSpec) -> Result<(History, WorkloadStats), WorkloadError> {
    if spec.endpoints.is_empty() {
        return Err(WorkloadError::Invalid("no endpoints".into()));
    }
    if spec.clients == 0 || spec.clients > MAX_WORKLOAD_CLIENTS {
        return Err(WorkloadError::Invalid(format!(
            "clients must be 1 to {MAX_WORKLOAD_CLIENTS}, not {}",
            spec.clients
        )));
    }
    if spec.keys == 0 {
        return Err(WorkloadError::Invalid("keys must be at least 1".into()));
    }
    let recorder = Recorder::new();
    let clients: Vec<AspenClient> = spec
        .endpoints
        .iter()
        .map(|e| AspenClient::with_timeout(e, spec.request_timeout))
        .collect();
    let deadline = tokio::time::Instant::now() + spec.duration;
    let mut tasks = Vec::new();
    for id in 0..spec.clients {
        let worker = Worker {
            id: id as u64,
            clients: clients.clone(),
            current: id % clients.len(),
            keys: spec.keys,
            recorder: recorder.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(spec.seed.wrapping_add(id as u64)),
            stats: WorkloadStats::default(),
            seq: 0,
            last_seen: std::collections::HashMap::new(),
        };
        tasks.push(tokio::spawn(worker.run(deadline)));
    }
    let mut stats = WorkloadStats::default();
    for task in tasks {
        let s = task
            .await
            .map_err(|e| WorkloadError::Task(e.to_string()))??;
        stats.ok += s.ok;
        stats.unknown += s.unknown;
        stats.refused += s.refused;
    }
    Ok((recorder.history(), stats))
}

struct Worker {
    id: u64,
    clients: Vec<AspenClient>,
    current: usize,
    keys: usize,
    recorder: Recorder,
    rng: rand::rngs::StdRng,
    stats: WorkloadStats,
    seq: u64,
    /// The value this client last saw for each key: CAS and CAD expect it, so they
    /// succeed often enough to matter.
    last_seen: std::collections::HashMap<String, Option<Vec<u8>>>,
}

impl Worker {
    async fn run(mut self, deadline: tokio::time::Instant) -> Result<WorkloadStats, WorkloadError> {
        while tokio::time::Instant::now() < deadline {
            let key = format!("lin/{}", self.rng.random_range(0..self.keys));
            let input = self.next_input(&key);
            let call_ns = self.recorder.now_ns();
            let classified = self.execute(&key, &input).await;
            let return_ns = self.recorder.now_ns();
            let output = match classified {
                Classified::Done(output) => {
                    self.stats.ok += 1;
                    self.remember(&key, &input, &output);
                    output
                }
                Classified::Unknown => {
                    self.stats.unknown += 1;
                    Output::Unknown
                }
                Classified::Refused => {
                    self.stats.refused += 1;
                    // Try another endpoint next: this one may be down or cut off.
                    self.current = (self.current + 1) % self.clients.len();
                    continue;
                }
            };
            self.recorder.record(Operation {
                client: self.id,
                key,
                input,
                output,
                call_ns,
                return_ns,
            })?;
        }
        Ok(self.stats)
    }

    /// A unique value per operation, so every read names the write it saw.
    fn value(&mut self) -> Vec<u8> {
        self.seq += 1;
        format!("c{}-{}", self.id, self.seq).into_bytes()
    }

    fn next_input(&mut self, key: &str) -> Input {
        let seen = self.last_seen.get(key).cloned().flatten();
        match self.rng.random_range(0..100) {
            0..40 => Input::Get,
            40..70 => Input::Put {
                value: self.value(),
            },
            70..80 => Input::Delete,
            80..95 => Input::Cas {
                expected: seen,
                new_value: self.value(),
            },
            _ => Input::Cad {
                expected: seen.unwrap_or_else(|| self.value()),
            },
        }
    }

    fn remember(&mut self, key: &str, input: &Input, output: &Output) {
        let seen = match (input, output) {
            (_, Output::Get { value }) => value.clone(),
            (Input::Put { value }, _) => Some(value.clone()),
            (Input::Cas { new_value, .. }, Output::Cas { swapped: true }) => {
                Some(new_value.clone())
            }
            (_, Output::Delete { .. }) | (_, Output::Cad { deleted: true }) => None,
            _ => return,
        };
        self.last_seen.insert(key.to_string(), seen);
    }

    async fn execute(&self, key: &str, input: &Input) -> Classified {
        let client = &self.clients[self.current];
        let result = match input {
            Input::Get => client
                .get(key, Consistency::Linearizable)
                .await
                .map(|entry| match entry.map(|e| e.into_entry()) {
                    None => Ok(Output::Get { value: None }),
                    Some(Ok(e)) => Ok(Output::Get {
                        value: Some(e.value),
                    }),
                    Some(Err(_)) => Err(()),
                }),
            Input::Put { value } => client.put(key, value).await.map(|_| Ok(Output::Put)),
            Input::Delete => client.delete(key).await.map(|r| {
                Ok(Output::Delete {
                    deleted: r.deleted.unwrap_or(false),
                })
            }),
            Input::Cas {
                expected,
                new_value,
            } => client
                .cas(&CasRequest::new(key, expected.as_deref(), new_value))
                .await
                .map(|o| {
                    Ok(Output::Cas {
                        swapped: matches!(o, CasOutcome::Applied(_)),
                    })
                }),
            Input::Cad { expected } => client.cad(&CadRequest::new(key, expected)).await.map(|o| {
                Ok(Output::Cad {
                    deleted: matches!(o, CasOutcome::Applied(ref r) if r.deleted == Some(true)),
                })
            }),
        };
        match result {
            Ok(Ok(output)) => Classified::Done(output),
            Ok(Err(())) => Classified::Unknown,
            Err(e) => classify_error(&e),
        }
    }
}
