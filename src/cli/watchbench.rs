//! `aspen bench-watch`: how fast watchers hear of writes, and what watchers cost writers,
//! against Aspen or (with the `etcd` feature) etcd, with one harness.
//!
//! - `latency`: `--watchers` watch the prefix `bench-watch/` while a paced writer puts
//!   `--rate` keys per second under it (each put its own task, so a slow put does not
//!   delay the next). For every revision, the time from the put's acknowledgement to each
//!   watcher's receipt of it is one sample; p50, p99 and max over all samples. An event
//!   that arrives before the writer has its acknowledgement counts as 0. Every watcher
//!   must receive every acknowledged revision: the missing ones are reported. Two more
//!   figures split the samples: per revision, the first watcher's receipt after the
//!   acknowledgement (`first_*`: how soon the system starts delivering a change) and the
//!   time from the first watcher's receipt to the last's (`spread_*`: how long its fan-out
//!   to every watcher takes, server and client together). With
//!   `--connection-per-watcher` each watcher has its own client, so its own connection;
//!   otherwise the writers and every watcher share one client: for etcd one gRPC
//!   connection, for Aspen one HTTP/2 connection with `--http2` (over HTTP/1.1 a client
//!   opens a connection per watch anyway).
//! - `throughput`: `--clients` closed-loop writers put as fast as they can, first with no
//!   watchers, then with `--watchers` idle ones (watching a prefix nobody writes) plus
//!   `--stalled` that watch the written prefix and never read; then again in the other
//!   order, so drift on a shared machine shows. Reports puts/s of each run.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aspen_api::client::WatchOptions;
use aspen_api::watch::WatchMessage;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::bench::target::TargetKind;
use super::endpoint::{explain, EndpointArgs};
use super::render;

/// The prefix the writes go to.
const PREFIX: &str = "bench-watch/";
/// The prefix idle watchers watch (nobody writes it).
const IDLE_PREFIX: &str = "bench-watch-idle/";
/// Most watchers (the server's own limit is 4,096).
const MAX_WATCHERS: i64 = 4_000;
/// Highest paced write rate.
const MAX_RATE: i64 = 100_000;
/// Most puts the paced writer has in flight: beyond this the target is not keeping up
/// and the run says so instead of queueing without bound.
const MAX_IN_FLIGHT: usize = 1_024;
/// Longest run.
const MAX_DURATION_S: u64 = 600;
/// How long watchers get after the last write to receive it.
const DRAIN: Duration = Duration::from_secs(3);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Write-to-watcher delivery latency at a paced write rate.
    Latency,
    /// Put throughput with and without watchers.
    Throughput,
}

/// Arguments of `aspen bench-watch`.
#[derive(Debug, Args)]
pub struct WatchBenchArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The system at --endpoint: aspen, or etcd (needs `--features etcd`).
    #[arg(long, value_enum, default_value_t = TargetKind::Aspen)]
    target: TargetKind,
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Watchers (latency: of the written prefix; throughput: idle ones), 0 to 4000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=MAX_WATCHERS))]
    watchers: u32,
    /// Throughput: watchers of the written prefix that never read, 0 to 4000.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=MAX_WATCHERS))]
    stalled: u32,
    /// Latency: puts per second, 1 to 100000.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=MAX_RATE))]
    rate: u32,
    /// Throughput: closed-loop writers, 1 to 1024.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Measured seconds (1 to 600).
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=MAX_DURATION_S))]
    duration: u64,
    /// Latency: give each watcher its own client, so its own connection, as separate
    /// services watching have. Otherwise the watchers share the writers' client, as
    /// watchers in one process do: one connection for etcd's gRPC, and for Aspen with
    /// `--http2` (over HTTP/1.1 each watch holds a connection either way).
    #[arg(long)]
    connection_per_watcher: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The result of a latency run.
#[derive(Debug, Serialize)]
struct LatencyReport {
    target: &'static str,
    watchers: u32,
    connection_per_watcher: bool,
    http2: bool,
    rate: u32,
    writes_acked: usize,
    samples: usize,
    missing: usize,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    first_p50_us: u64,
    first_p99_us: u64,
    spread_p50_us: u64,
    spread_p99_us: u64,
}

/// The result of a throughput run: puts/s in each run, in the order run.
#[derive(Debug, Serialize)]
struct ThroughputReport {
    target: &'static str,
    idle_watchers: u32,
    stalled: u32,
    runs: Vec<(String, f64)>,
}

/// Runs the benchmark.
pub async fn run(args: WatchBenchArgs) -> anyhow::Result<ExitCode> {
    let conn = Conn::connect(args.target, &args.endpoint).await?;
    match args.mode {
        Mode::Latency => {
            let report = latency(&conn, &args).await?;
            if args.json {
                render::json(&report)?;
            } else {
                println!(
                    "{}: {} watchers, {} puts/s: {} acked, {} samples ({} missing), \
                     p50 {} us, p99 {} us, max {} us; first receipt p50 {} us, p99 {} us; \
                     fan-out spread p50 {} us, p99 {} us",
                    report.target,
                    report.watchers,
                    report.rate,
                    report.writes_acked,
                    report.samples,
                    report.missing,
                    report.p50_us,
                    report.p99_us,
                    report.max_us,
                    report.first_p50_us,
                    report.first_p99_us,
                    report.spread_p50_us,
                    report.spread_p99_us
                );
            }
        }
        Mode::Throughput => {
            let mut runs = Vec::new();
            for with in [false, true, true, false] {
                let label = if with { "with watchers" } else { "without" };
                let rate = throughput(&conn, &args, with).await?;
                if !args.json {
                    println!("{}: {label}: {rate:.0} puts/s", conn.name());
                }
                runs.push((label.to_string(), rate));
            }
            if args.json {
                render::json(&ThroughputReport {
                    target: conn.name(),
                    idle_watchers: args.watchers,
                    stalled: args.stalled,
                    runs,
                })?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One receipt: the revision a watcher got, and when.
type Receipts = Arc<Mutex<Vec<(u64, Instant)>>>;

async fn latency(conn: &Conn, args: &WatchBenchArgs) -> anyhow::Result<LatencyReport> {
    let mut watchers = JoinSet::new();
    let mut receipts = Vec::new();
    // Each watcher's own client, when asked for: held until the end of the run.
    let mut own = Vec::new();
    for _ in 0..args.watchers {
        let got: Receipts = Arc::default();
        receipts.push(got.clone());
        let via = if args.connection_per_watcher {
            own.push(Conn::connect(args.target, &args.endpoint).await?);
            own.last().expect("just pushed")
        } else {
            conn
        };
        let mut stream = via.watch(PREFIX).await?;
        watchers.spawn(async move {
            while let Some(revisions) = stream.next().await {
                let now = Instant::now();
                got.lock()
                    .unwrap()
                    .extend(revisions.into_iter().map(|r| (r, now)));
            }
        });
    }
    let acked: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut pace = tokio::time::interval(interval);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = JoinSet::new();
    let mut i = 0u64;
    while Instant::now() < end {
        pace.tick().await;
        while writes.len() >= MAX_IN_FLIGHT {
            writes.join_next().await;
        }
        let (conn, acked) = (conn.clone(), acked.clone());
        let key = format!("{PREFIX}{}", i % 1_000);
        i += 1;
        writes.spawn(async move {
            if let Ok(revision) = conn.put(&key, b"v").await {
                acked.lock().unwrap().insert(revision, Instant::now());
            }
        });
        while writes.try_join_next().is_some() {}
    }
    while writes.join_next().await.is_some() {}
    tokio::time::sleep(DRAIN).await;
    // Receipts are recorded as they arrive; the streams stop here.
    watchers.abort_all();
    while watchers.join_next().await.is_some() {}
    drop(own);

    let acked = acked.lock().unwrap().clone();
    let mut samples = Vec::new();
    let mut missing = 0;
    // Per acknowledged revision: its first and last receipt by any watcher.
    let mut span: HashMap<u64, (Instant, Instant)> = HashMap::new();
    for got in &receipts {
        let got = got.lock().unwrap();
        let seen: HashMap<u64, Instant> = got.iter().copied().collect();
        for (revision, at) in &acked {
            match seen.get(revision) {
                Some(&recv) => {
                    samples.push(recv.saturating_duration_since(*at).as_micros() as u64);
                    let (first, last) = span.entry(*revision).or_insert((recv, recv));
                    *first = (*first).min(recv);
                    *last = (*last).max(recv);
                }
                None => missing += 1,
            }
        }
    }
    let mut first = Vec::new();
    let mut spread = Vec::new();
    for (revision, (earliest, latest)) in &span {
        first.push(
            earliest
                .saturating_duration_since(acked[revision])
                .as_micros() as u64,
        );
        spread.push(latest.duration_since(*earliest).as_micros() as u64);
    }
    samples.sort_unstable();
    first.sort_unstable();
    spread.sort_unstable();
    let of = |sorted: &[u64], p: f64| {
        sorted
            .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let pct = |p: f64| of(&samples, p);
    Ok(LatencyReport {
        target: conn.name(),
        watchers: args.watchers,
        connection_per_watcher: args.connection_per_watcher,
        http2: args.endpoint.http2,
        rate: args.rate,
        writes_acked: acked.len(),
        samples: samples.len(),
        missing,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: samples.last().copied().unwrap_or(0),
        first_p50_us: of(&first, 0.50),
        first_p99_us: of(&first, 0.99),
        spread_p50_us: of(&spread, 0.50),
        spread_p99_us: of(&spread, 0.99),
    })
}

async fn throughput(conn: &Conn, args: &WatchBenchArgs, with: bool) -> anyhow::Result<f64> {
    // Held open for the run: idle ones are read (and get nothing), stalled ones never.
    let mut held = Vec::new();
    let mut idle = JoinSet::new();
    if with {
        for _ in 0..args.watchers {
            let mut stream = conn.watch(IDLE_PREFIX).await?;
            idle.spawn(async move { while stream.next().await.is_some() {} });
        }
        for _ in 0..args.stalled {
            held.push(conn.watch(PREFIX).await?);
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut writers = JoinSet::new();
    for c in 0..args.clients {
        let (conn, done) = (conn.clone(), done.clone());
        writers.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                let key = format!("{PREFIX}{c}/{}", i % 100);
                i += 1;
                if conn.put(&key, &[b'v'; 256]).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    idle.abort_all();
    while idle.join_next().await.is_some() {}
    drop(held);
    Ok(done.load(Ordering::Relaxed) as f64 / args.duration as f64)
}

/// A connection to the target, shared by writers and watchers.
#[derive(Clone)]
enum Conn {
    Aspen(aspen_api::AspenClient),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

/// One open watch: yields the revisions of each message it receives.
enum Stream {
    Aspen(aspen_api::client::WatchStream),
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::WatchStream),
}

impl Conn {
    async fn connect(kind: TargetKind, endpoint: &EndpointArgs) -> anyhow::Result<Conn> {
        match kind {
            TargetKind::Aspen => {
                let client = endpoint.client()?;
                client.any_status().await.map_err(|e| explain(e, &client))?;
                Ok(Conn::Aspen(client))
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => {
                let urls: Vec<&str> = endpoint.endpoint.split(',').map(str::trim).collect();
                let client = etcd_client::Client::connect(urls, None).await.map_err(|e| {
                    anyhow::anyhow!("cannot connect to etcd at {}: {e}", endpoint.endpoint)
                })?;
                Ok(Conn::Etcd(Box::new(client)))
            }
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => anyhow::bail!(
                "this build has no etcd support: build with `cargo build --release --features etcd` (needs protoc)"
            ),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Conn::Aspen(_) => "aspen",
            #[cfg(feature = "etcd")]
            Conn::Etcd(_) => "etcd",
        }
    }

    /// Puts `key`; the revision of the write.
    async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<u64> {
        match self {
            Conn::Aspen(client) => Ok(client.put(key, value).await?.revision),
            #[cfg(feature = "etcd")]
            Conn::Etcd(client) => {
                let answer = client.kv_client().put(key, value.to_vec(), None).await?;
                Ok(answer.header().map_or(0, |h| h.revision() as u64))
            }
        }
    }

    /// Watches every key under `prefix`, from now.
    async fn watch(&self, prefix: &str) -> anyhow::Result<Stream> {
        match self {
            Conn::Aspen(client) => {
                let options = WatchOptions {
                    prefix: true,
                    ..WatchOptions::default()
                };
                Ok(Stream::Aspen(client.watch(prefix, &options).await?))
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(client) => {
                let options = etcd_client::WatchOptions::new().with_prefix();
                let stream = client.watch_client().watch(prefix, Some(options)).await?;
                Ok(Stream::Etcd(stream))
            }
        }
    }
}

impl Stream {
    /// The revisions of the next message with changes; `None` when the stream ended.
    async fn next(&mut self) -> Option<Vec<u64>> {
        loop {
            match self {
                Stream::Aspen(stream) => match stream.next().await {
                    Ok(Some(WatchMessage::Changes { revision, .. })) => {
                        return Some(vec![revision])
                    }
                    Ok(Some(WatchMessage::Error { .. })) | Ok(None) | Err(_) => return None,
                    Ok(Some(_)) => continue,
                },
                #[cfg(feature = "etcd")]
                Stream::Etcd(stream) => match stream.message().await {
                    Ok(Some(answer)) => {
                        let mut revisions: Vec<u64> = answer
                            .events()
                            .iter()
                            .filter_map(|e| e.kv().map(|kv| kv.mod_revision() as u64))
                            .collect();
                        revisions.dedup();
                        if revisions.is_empty() {
                            continue;
                        }
                        return Some(revisions);
                    }
                    Ok(None) | Err(_) => return None,
                },
            }
        }
    }
}
