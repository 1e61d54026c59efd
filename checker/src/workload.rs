//! A workload runner: concurrent clients drive random gets, puts, deletes, CAS and CAD
//! against a deployment over its HTTP API and record every operation, with its call and
//! return times, for [`check()`](crate::check()).
//!
//! Each operation's outcome is classified the way the API promises: a success or a
//! failed precondition is recorded with its result; an error that says nothing was
//! applied (4xx, `no_leader`, `cluster_unavailable`, connection refused) is not recorded;
//! anything else (timeout, broken connection, 5xx) is recorded as [`Output::Unknown`],
//! since a write may or may not have taken effect. After either kind of failure the client
//! pauses ([`FAILURE_PAUSE`]) and moves to the next endpoint.

use std::time::Duration;

use aspen_api::client::{CasOutcome, ClientError};
use aspen_api::json::{CadRequest, CasRequest};
use aspen_api::{AspenClient, Consistency, ErrorCode};
use rand::{Rng, SeedableRng};

use crate::history::{History, Operation, Recorder};
use crate::model::{Input, Output};

/// Most concurrent clients of one workload: each is a task holding a connection.
pub const MAX_WORKLOAD_CLIENTS: usize = 256;

/// How long a client waits after a failed request (refused, or of unknown outcome)
/// before its next one, which goes to the next endpoint: the endpoint that failed is
/// likely down, restarting or cut off, and asking again at once would spin (a port
/// proxy in front of a stopped container fails each request within microseconds),
/// filling the history with unknown outcomes that prove nothing. Short against an
/// election (hundreds of ms), so the clients are back as soon as the cluster is.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(50);

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
    /// Where the keys live: key `i` is `key_prefixes[i % len]` followed by `i`, so a
    /// deployment's keys can be spread over the clusters that own those prefixes. Empty:
    /// every key under `lin/`.
    pub key_prefixes: Vec<String>,
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
    /// Why the first [`MAX_FAILURES_KEPT`] unknown or refused operations failed (client,
    /// operation, key, error), so a run that must fail none says what went wrong.
    pub failures: Vec<String>,
}

/// Most failure descriptions a run keeps in [`WorkloadStats::failures`].
pub const MAX_FAILURES_KEPT: usize = 8;

impl WorkloadStats {
    fn keep_failure(&mut self, failure: String) {
        if self.failures.len() < MAX_FAILURES_KEPT {
            self.failures.push(failure);
        }
    }
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
    Refused(String),
    Unknown(String),
}

/// Whether a failed request certainly changed nothing, as the API promises for a 4xx
/// answer, `no_leader`, `cluster_unavailable` and a refused connection. Anything else (a
/// timeout, a broken connection, another 5xx) may or may not have been applied.
pub fn nothing_applied(err: &ClientError) -> bool {
    match err {
        ClientError::Api { status, body } => {
            matches!(
                body.error.code,
                ErrorCode::NoLeader | ErrorCode::ClusterUnavailable
            ) || (400..500).contains(status)
        }
        ClientError::Transport { source, .. } => source.is_connect(),
        _ => false,
    }
}

fn classify_error(err: &ClientError) -> Classified {
    if nothing_applied(err) {
        Classified::Refused(err.to_string())
    } else {
        Classified::Unknown(err.to_string())
    }
}

/// The name of key `i` of a workload over `prefixes` (empty: `lin/`).
pub fn key_name(prefixes: &[String], i: usize) -> String {
    match prefixes.len() {
        0 => format!("lin/{i}"),
        n => format!("{}{i}", prefixes[i % n]),
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
            key_prefixes: spec.key_prefixes.clone(),
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
        for failure in s.failures {
            stats.keep_failure(failure);
        }
    }
    Ok((recorder.history(), stats))
}

struct Worker {
    id: u64,
    clients: Vec<AspenClient>,
    current: usize,
    keys: usize,
    key_prefixes: Vec<String>,
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
            let key = key_name(&self.key_prefixes, self.rng.random_range(0..self.keys));
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
                Classified::Unknown(why) => {
                    self.stats.unknown += 1;
                    let failure = format!("client {} {input:?} {key}: unknown: {why}", self.id);
                    self.stats.keep_failure(failure);
                    self.next_endpoint_after_failure().await;
                    Output::Unknown
                }
                Classified::Refused(why) => {
                    self.stats.refused += 1;
                    let failure = format!("client {} {input:?} {key}: refused: {why}", self.id);
                    self.stats.keep_failure(failure);
                    self.next_endpoint_after_failure().await;
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

    /// After a failed request: pause, then try another endpoint (this one may be down or
    /// cut off).
    async fn next_endpoint_after_failure(&mut self) {
        self.current = (self.current + 1) % self.clients.len();
        tokio::time::sleep(FAILURE_PAUSE).await;
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
            Ok(Err(())) => Classified::Unknown("an answer the workload could not read".into()),
            Err(e) => classify_error(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spread_over_the_prefixes_in_turn() {
        let prefixes = vec!["a/".to_string(), "svc-b/a/".to_string()];
        let names: Vec<String> = (0..4).map(|i| key_name(&prefixes, i)).collect();
        assert_eq!(names, ["a/0", "svc-b/a/1", "a/2", "svc-b/a/3"]);
    }

    #[test]
    fn without_prefixes_every_key_is_under_lin() {
        assert_eq!(key_name(&[], 7), "lin/7");
    }
}
