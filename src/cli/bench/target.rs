//! What `aspen bench` measures against: Aspen's HTTP API, or (with the `etcd` cargo
//! feature) an etcd cluster through its v3 gRPC API, so one harness drives both with the
//! same operations: put, linearizable get, and compare-and-swap (for etcd a transaction
//! comparing the value, or the create revision for "absent").

use aspen_api::client::CasOutcome;
use aspen_api::json::{decode_value, BatchRequest, CasRequest, JsonWrite};
use aspen_api::limits::{MAX_COMMAND_VALUE_BYTES, MAX_KEYS_PER_COMMAND};
use aspen_api::{AspenClient, Consistency};
use clap::ValueEnum;
use tokio::task::JoinSet;

use crate::cli::endpoint::{explain, EndpointArgs};

/// Most concurrent batches while preloading keys.
const MAX_PRELOAD_TASKS: usize = 32;
/// Most gRPC connections to etcd: clients share them round-robin (each multiplexes many
/// requests over HTTP/2), like etcd's own benchmark tool with `--conns`.
#[cfg(feature = "etcd")]
const MAX_ETCD_CONNECTIONS: usize = 64;

/// Which system to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// An Aspen node or router, over its HTTP API.
    Aspen,
    /// An etcd cluster, over the etcd v3 API (needs a build with `--features etcd`).
    Etcd,
}

/// The outcome of one compare-and-swap.
pub enum Cas {
    /// Applied.
    Swapped,
    /// Lost a race; the key's actual value (`None`: absent).
    Mismatch(Option<Vec<u8>>),
}

/// A connected benchmark target.
pub enum Target {
    /// Aspen over HTTP.
    Aspen(AspenClient),
    /// etcd over gRPC: a few connections shared by the clients.
    #[cfg(feature = "etcd")]
    Etcd(Vec<etcd_client::Client>),
}

impl Target {
    /// Connects to `endpoint` and checks that it answers.
    pub async fn connect(
        kind: TargetKind,
        endpoint: &EndpointArgs,
        clients: usize,
    ) -> anyhow::Result<Target> {
        match kind {
            TargetKind::Aspen => {
                let client = endpoint.client()?;
                client.any_status().await.map_err(|e| explain(e, &client))?;
                Ok(Target::Aspen(client))
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let mut conns = Vec::new();
                for _ in 0..clients.clamp(1, MAX_ETCD_CONNECTIONS) {
                    let urls: Vec<&str> = endpoint.endpoint.split(',').map(str::trim).collect();
                    let client = etcd_client::Client::connect(urls, None)
                        .await
                        .map_err(|e| {
                            anyhow::anyhow!("cannot connect to etcd at {}: {e}", endpoint.endpoint)
                        })?;
                    conns.push(client);
                }
                Ok(Target::Etcd(conns))
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => {
                let _ = clients;
                anyhow::bail!("this build has no etcd support: build with `cargo build --release --features etcd` (needs protoc)")
            }
        }
    }

    /// Sets `key`.
    pub async fn put(&self, client: usize, key: &str, value: &[u8]) -> Result<(), String> {
        let _ = client;
        match self {
            Target::Aspen(c) => c
                .put(key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            #[cfg(feature = "etcd")]
            Target::Etcd(conns) => {
                let mut c = conns[client % conns.len()].clone();
                c.put(key, value, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Reads `key` linearizably; whether it exists.
    pub async fn get(&self, client: usize, key: &str) -> Result<bool, String> {
        let _ = client;
        match self {
            Target::Aspen(c) => c
                .get(key, Consistency::Linearizable)
                .await
                .map(|e| e.is_some())
                .map_err(|e| e.to_string()),
            #[cfg(feature = "etcd")]
            Target::Etcd(conns) => {
                // etcd's default range request is linearizable (not serializable).
                let mut c = conns[client % conns.len()].clone();
                c.get(key, None)
                    .await
                    .map(|r| !r.kvs().is_empty())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sets `key` to `next` if it holds `last` (`None`: if it is absent).
    pub async fn cas(
        &self,
        client: usize,
        key: &str,
        last: Option<&[u8]>,
        next: &[u8],
    ) -> Result<Cas, String> {
        let _ = client;
        match self {
            Target::Aspen(c) => match c
                .cas(&CasRequest::new(key, last, next))
                .await
                .map_err(|e| e.to_string())?
            {
                CasOutcome::Applied(_) => Ok(Cas::Swapped),
                CasOutcome::Mismatch(actual) => Ok(Cas::Mismatch(if actual.exists {
                    decode_value("value", actual.value, actual.value_base64)
                        .ok()
                        .map(Vec::from)
                } else {
                    None
                })),
            },
            #[cfg(feature = "etcd")]
            Target::Etcd(conns) => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
                let compare = match last {
                    None => Compare::create_revision(key, CompareOp::Equal, 0),
                    Some(value) => Compare::value(key, CompareOp::Equal, value),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key, next, None)])
                    .or_else([TxnOp::get(key, None)]);
                let mut c = conns[client % conns.len()].clone();
                let response = c.txn(txn).await.map_err(|e| e.to_string())?;
                if response.succeeded() {
                    return Ok(Cas::Swapped);
                }
                let actual = response.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(get) => {
                        Some(get.kvs().first().map(|kv| kv.value().to_vec()))
                    }
                    _ => None,
                });
                Ok(Cas::Mismatch(actual.flatten()))
            }
        }
    }

    /// Writes `{prefix}0..keys` (not timed), several writes at a time.
    pub async fn preload(&self, prefix: &str, keys: u64, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Target::Aspen(client) => preload_aspen(client, prefix, keys, value).await,
            #[cfg(feature = "etcd")]
            Target::Etcd(_) => {
                let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
                for i in 0..keys {
                    if tasks.len() >= MAX_PRELOAD_TASKS {
                        if let Some(done) = tasks.join_next().await {
                            done?.map_err(|e: String| anyhow::anyhow!(e))?;
                        }
                    }
                    let (target, value) = (self.clone_etcd(i as usize), value.to_vec());
                    let key = format!("{prefix}{i}");
                    tasks.spawn(async move {
                        let mut c = target;
                        c.put(key, value, None)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done?.map_err(|e: String| anyhow::anyhow!(e))?;
                }
                Ok(())
            }
        }
    }

    #[cfg(feature = "etcd")]
    fn clone_etcd(&self, i: usize) -> etcd_client::Client {
        match self {
            Target::Etcd(conns) => conns[i % conns.len()].clone(),
            Target::Aspen(_) => unreachable!("only called for etcd"),
        }
    }
}

/// Writes `{prefix}0..keys` in batches, several batches at a time.
async fn preload_aspen(
    client: &AspenClient,
    prefix: &str,
    keys: u64,
    value: &[u8],
) -> anyhow::Result<()> {
    let per_batch =
        (MAX_COMMAND_VALUE_BYTES / value.len().max(1)).clamp(1, MAX_KEYS_PER_COMMAND) as u64;
    let batches: Vec<(u64, u64)> = (0..keys)
        .step_by(per_batch as usize)
        .map(|from| (from, (from + per_batch).min(keys)))
        .collect();
    let mut tasks = JoinSet::new();
    for (n, (from, to)) in batches.into_iter().enumerate() {
        if n >= MAX_PRELOAD_TASKS {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
        let request = BatchRequest {
            writes: (from..to)
                .map(|i| JsonWrite::new(format!("{prefix}{i}"), value))
                .collect(),
            deletes: Vec::new(),
        };
        let client = client.clone();
        tasks.spawn(async move {
            client
                .batch(&request)
                .await
                .map(|_| ())
                .map_err(|e| explain(e, &client))
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
