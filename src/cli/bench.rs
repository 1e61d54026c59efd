//! `aspen bench`: a closed-loop load generator against one endpoint of Aspen or etcd
//! ([`target`]). C clients (tokio tasks sharing the target's connections) each loop until
//! the deadline, issuing one request at a time and recording its latency in microseconds.
//! Ops during the warmup are not recorded; only successful ops count toward throughput;
//! errors and CAS retries are counted apart. The per-client latency lists are merged and
//! sorted once at the end for the percentiles.
//!
//! Client `c` works under prefix `P = prefixes[c % n]` (`--prefix`, default `bench/`), so
//! several prefixes spread the load over the clusters behind a router.
//!
//! - `put`: sets a random key `P{i}`, i < --keys.
//! - `get`: preloads `P0..P{keys-1}` for every prefix (not timed), then does linearizable
//!   gets of random keys.
//! - `cas`: each client increments its own counter `Pcas/{client}` by read-modify-write
//!   with compare-and-swap against the last value it knows; a mismatch is a retry.
//! - `mixed`: preloads like `get`, then 80% linearizable gets and 20% puts of random keys.

pub(crate) mod target;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aspen_api::limits::MAX_INLINE_VALUE_BYTES;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::endpoint::EndpointArgs;
use super::render;
use target::{Cas, Target, TargetKind};

/// Most concurrent clients. `AspenClient` keeps up to 1024 idle connections per host, so
/// up to this many clients each keep reusing their own connection instead of reconnecting.
const MAX_CLIENTS: i64 = 1024;
/// Longest measured run: an hour is enough for any soak a laptop CLI should run.
const MAX_DURATION_S: u64 = 3600;
/// Longest warmup.
const MAX_WARMUP_S: u64 = 600;
/// Largest key space: the `get` preload writes every key, so keep it to minutes of work.
const MAX_KEYS: u64 = 10_000_000;
/// Most `--prefix` values: enough to spread load over every cluster of a large route
/// table's test setup, few enough that the `get` preload stays short.
const MAX_PREFIXES: usize = 64;
/// Longest `--prefix`: the key limit minus room for the key number.
const MAX_PREFIX_BYTES: usize = aspen_api::limits::MAX_KEY_BYTES - 24;
/// Pause after a failed request, so a dead endpoint is not hammered in a tight loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// The operation to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchOp {
    /// Set random keys.
    Put,
    /// Linearizable gets of random preloaded keys.
    Get,
    /// Compare-and-swap increments, one counter key per client.
    Cas,
    /// 80% linearizable gets, 20% puts, of random preloaded keys.
    Mixed,
}

impl BenchOp {
    fn name(self) -> &'static str {
        match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
            BenchOp::Cas => "cas",
            BenchOp::Mixed => "mixed",
        }
    }
}

/// Arguments of `aspen bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The system at --endpoint: aspen, or etcd (comma-separated client URLs; needs a
    /// build with `--features etcd`).
    #[arg(long, value_enum, default_value_t = TargetKind::Aspen)]
    target: TargetKind,
    /// The operation to measure.
    #[arg(long, value_enum)]
    op: BenchOp,
    /// Concurrent clients, each with one request in flight (1 to 1024).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=MAX_CLIENTS))]
    clients: u32,
    /// Measured seconds, after the warmup (1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DURATION_S))]
    duration: u64,
    /// Bytes per value for put and get (0 to 1 MiB; cas writes its counter).
    #[arg(long, value_name = "BYTES", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(0..=MAX_INLINE_VALUE_BYTES as u64))]
    value_size: u64,
    /// Size of the key space put and get pick from (`bench/0` .. `bench/{N-1}`).
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    keys: u64,
    /// Key prefixes, comma-separated: client c uses prefix c mod n. With `aspen dev`,
    /// `--prefix bench/,svc-b/bench/` spreads the load over clusters us-1 and us-2.
    #[arg(long = "prefix", value_name = "PREFIX[,PREFIX...]", default_value = "bench/",
          value_delimiter = ',', value_parser = parse_prefix)]
    prefixes: Vec<String>,
    /// Seconds of load before measuring starts (0 to 600).
    #[arg(long, value_name = "SECONDS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WARMUP_S))]
    warmup: u64,
    /// Skip the preload of get and mixed: the keys are there already (from an earlier
    /// run with the same --keys, --prefix and --value-size); a missing key fails the run.
    #[arg(long)]
    preloaded: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What every client shares.
struct Plan {
    target: Target,
    op: BenchOp,
    keys: u64,
    prefixes: Vec<String>,
    value: Vec<u8>,
    /// Ops started before this are warmup and not recorded.
    measure_from: Instant,
    /// No op starts at or after this.
    deadline: Instant,
}

/// What one client measured.
#[derive(Default)]
struct ClientStats {
    latencies_us: Vec<u64>,
    errors: u64,
    retries: u64,
    first_error: Option<String>,
    finished: Option<Instant>,
}

/// The result, printed as a line or as JSON.
#[derive(Debug, Serialize)]
struct Report {
    target: &'static str,
    op: &'static str,
    clients: u32,
    duration_s: f64,
    ops: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    /// CAS mismatches that were retried (always 0 for put and get).
    retries: u64,
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    check_prefix_count(args.prefixes.len())?;
    let target = Target::connect(args.target, &args.endpoint, args.clients as usize).await?;
    let value = vec![b'x'; args.value_size as usize];
    if matches!(args.op, BenchOp::Get | BenchOp::Mixed) && !args.preloaded {
        eprintln!(
            "preloading {} keys of {} bytes (not timed)...",
            args.keys,
            value.len()
        );
        for prefix in &args.prefixes {
            target.preload(prefix, args.keys, &value).await?;
        }
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let deadline = measure_from + Duration::from_secs(args.duration);
    let plan = Arc::new(Plan {
        target,
        op: args.op,
        keys: args.keys,
        prefixes: args.prefixes.clone(),
        value,
        measure_from,
        deadline,
    });
    let mut tasks = JoinSet::new();
    for id in 0..args.clients {
        tasks.spawn(run_client(plan.clone(), id));
    }
    let mut all = ClientStats::default();
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.map_err(|e| anyhow::anyhow!("a bench client failed: {e}"))?;
        all.latencies_us.extend(stats.latencies_us);
        all.errors += stats.errors;
        all.retries += stats.retries;
        all.first_error = all.first_error.or(stats.first_error);
        all.finished = all.finished.max(stats.finished);
    }
    let report = report(
        &args,
        &plan,
        all.latencies_us,
        all.errors,
        all.retries,
        all.finished,
    );
    if args.json {
        render::json(&report)?;
    } else {
        print_report(&report);
    }
    if let Some(first) = all.first_error {
        eprintln!("{} error(s); the first: {first}", report.errors);
    }
    Ok(ExitCode::SUCCESS)
}

/// What one request came to.
enum Step {
    Done,
    /// A CAS that lost a race; it will be retried with the value it saw.
    Retry,
}

/// One client's loop until the deadline.
async fn run_client(plan: Arc<Plan>, id: u32) -> ClientStats {
    let mut stats = ClientStats::default();
    let cas_key = format!("{}cas/{id}", plan.prefix(id as usize));
    let mut last: Option<Vec<u8>> = None;
    if plan.op == BenchOp::Cas {
        // Learn the counter's value left by an earlier run: one CAS from "absent" does it.
        if let Ok(Cas::Mismatch(actual)) = plan.target.cas(id as usize, &cas_key, None, b"0").await
        {
            last = actual;
        } else {
            last = Some(b"0".to_vec());
        }
    }
    loop {
        let started = Instant::now();
        if started >= plan.deadline {
            break;
        }
        let client = id as usize;
        let result = match plan.op {
            BenchOp::Put => put(&plan, client).await,
            BenchOp::Get => get(&plan, client).await,
            BenchOp::Cas => cas(&plan, client, &cas_key, &mut last).await,
            BenchOp::Mixed if rand::random_range(0..100) < 80 => get(&plan, client).await,
            BenchOp::Mixed => put(&plan, client).await,
        };
        let latency_us = started.elapsed().as_micros() as u64;
        let measured = started >= plan.measure_from;
        match result {
            Ok(Step::Done) if measured => stats.latencies_us.push(latency_us),
            Ok(Step::Retry) if measured => stats.retries += 1,
            Ok(_) => {}
            Err(e) => {
                if measured {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(e);
                }
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    stats.finished = Some(Instant::now());
    stats
}

impl Plan {
    /// The prefix client `client` works under.
    fn prefix(&self, client: usize) -> &str {
        &self.prefixes[client % self.prefixes.len()]
    }
}

fn random_key(plan: &Plan, client: usize) -> String {
    format!(
        "{}{}",
        plan.prefix(client),
        rand::random_range(0..plan.keys)
    )
}

/// Refuses more than [`MAX_PREFIXES`] prefixes.
fn check_prefix_count(count: usize) -> anyhow::Result<()> {
    if count > MAX_PREFIXES {
        anyhow::bail!("--prefix: {count} prefixes given, at most {MAX_PREFIXES} are allowed");
    }
    Ok(())
}

/// A `--prefix` value: at most [`MAX_PREFIX_BYTES`], so every key it makes is valid.
fn parse_prefix(prefix: &str) -> Result<String, String> {
    if prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "{} bytes is longer than {MAX_PREFIX_BYTES}, the most that leaves room for key numbers",
            prefix.len()
        ));
    }
    Ok(prefix.to_string())
}

async fn put(plan: &Plan, client: usize) -> Result<Step, String> {
    plan.target
        .put(client, &random_key(plan, client), &plan.value)
        .await?;
    Ok(Step::Done)
}

async fn get(plan: &Plan, client: usize) -> Result<Step, String> {
    let key = random_key(plan, client);
    if plan.target.get(client, &key).await? {
        Ok(Step::Done)
    } else {
        Err(format!("{key} not found although it was preloaded"))
    }
}

/// One CAS increment of `key` from the last value this client knows.
async fn cas(
    plan: &Plan,
    client: usize,
    key: &str,
    last: &mut Option<Vec<u8>>,
) -> Result<Step, String> {
    let current = last
        .as_deref()
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let next = (current + 1).to_string().into_bytes();
    match plan.target.cas(client, key, last.as_deref(), &next).await? {
        Cas::Swapped => {
            *last = Some(next);
            Ok(Step::Done)
        }
        Cas::Mismatch(actual) => {
            *last = actual;
            Ok(Step::Retry)
        }
    }
}

fn report(
    args: &BenchArgs,
    plan: &Plan,
    mut latencies_us: Vec<u64>,
    errors: u64,
    retries: u64,
    finished: Option<Instant>,
) -> Report {
    latencies_us.sort_unstable();
    // The window ends when the last client finished its last op, which may be a little
    // after the deadline; dividing by the nominal duration would overstate throughput.
    let window = finished
        .unwrap_or(plan.deadline)
        .saturating_duration_since(plan.measure_from);
    let window_s = window.as_secs_f64().max(f64::EPSILON);
    let ms = |us: u64| us as f64 / 1000.0;
    let ops = latencies_us.len() as u64;
    Report {
        target: match args.target {
            TargetKind::Aspen => "aspen",
            TargetKind::Etcd => "etcd",
        },
        op: args.op.name(),
        clients: args.clients,
        duration_s: window_s,
        ops,
        ops_per_sec: ops as f64 / window_s,
        p50_ms: ms(percentile(&latencies_us, 50.0)),
        p99_ms: ms(percentile(&latencies_us, 99.0)),
        max_ms: ms(latencies_us.last().copied().unwrap_or(0)),
        errors,
        retries,
    }
}

fn print_report(r: &Report) {
    let retries = if r.op == "cas" {
        format!(", {} retries", r.retries)
    } else {
        String::new()
    };
    println!(
        "{} {} x{} for {:.1} s: {} ops, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors{retries}",
        r.target, r.op, r.clients, r.duration_s, r.ops, r.ops_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors
    );
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` by the nearest-rank method: the
/// smallest sample with at least p% of the samples at or below it. 0 when empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_limited_in_length_and_number_at_both_edges() {
        assert!(parse_prefix(&"p".repeat(MAX_PREFIX_BYTES)).is_ok());
        let err = parse_prefix(&"p".repeat(MAX_PREFIX_BYTES + 1)).unwrap_err();
        assert!(err.contains(&MAX_PREFIX_BYTES.to_string()), "{err}");
        assert!(check_prefix_count(MAX_PREFIXES).is_ok());
        assert!(check_prefix_count(MAX_PREFIXES + 1).is_err());
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 50);
        assert_eq!(percentile(&samples, 99.0), 99);
        assert_eq!(percentile(&samples, 100.0), 100);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
        assert_eq!(percentile(&[1, 2], 99.0), 2);
    }

    #[test]
    fn percentile_of_nothing_is_zero() {
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn tiny_percentiles_pick_the_smallest_sample() {
        assert_eq!(percentile(&[5, 9], 0.1), 5);
    }
}
