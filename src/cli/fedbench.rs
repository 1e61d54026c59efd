//! `aspen bench-federation`: federation's speed, on DESIGN's topology started in this
//! process (a fresh temp dir each run), measured end to end through the routers:
//!
//! - **lag**: writes paced at `--rate` through region us's router; a reader in region eu
//!   reads a us-1 key from eu's replica without pause and records the replica revision
//!   each answer carries. A write's lag is the time from its acknowledgement to the first
//!   eu answer at or past its revision (at most one read's round trip late).
//! - **catch-up**: the regions are cut apart for `--partition` seconds while writes go on
//!   at `--rate`; after healing, how fast eu's replica covers the backlog (changes/s).
//! - **bootstrap**: `--keys` keys of 256 bytes are loaded into us-1, then a new node of a
//!   new cluster in region eu (a separate `aspen node` process, so its memory is its own)
//!   imports us-1 from nothing; its time to reach us-1's revision and its peak RSS.
//!
//! With `--etcd-source` and `--etcd-mirror` the lag phase measures etcd's make-mirror
//! instead ([`etcd`]).

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aspen::topology::{secret_path, Topology, TopologySpec};
use aspen_api::json::{BatchRequest, JsonWrite};
use aspen_api::AspenClient;
use aspen_federation::secret::FederationSecret;
use clap::{Args, ValueEnum};

use super::bench::percentile;

mod etcd;

/// Most writes in flight while pacing: a write slower than this many intervals makes the
/// pacer wait rather than pile up unbounded.
const MAX_WRITES_IN_FLIGHT: usize = 64;

/// Highest `--rate`: pacing finer than 10 µs is not pacing on this machine.
const MAX_RATE: u32 = 100_000;

/// Most `--nodes` per cluster: three clusters of them run in this one process.
const MAX_NODES: usize = 9;

/// Keys per write of the bootstrap load (the most one command may carry).
const LOAD_BATCH_KEYS: usize = 100;

/// Batch writes in flight while loading.
const LOAD_CONCURRENCY: usize = 8;

/// Longest wait for a replica to catch up before the run is called failed.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);

/// How often a long wait says where it stands.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Replication lag under a sustained write rate.
    Lag,
    /// Catch-up rate after a partition.
    CatchUp,
    /// A new region bootstrapping a large cluster.
    Bootstrap,
    /// All three, in that order, each on a fresh topology.
    All,
}

/// Arguments of `aspen bench-federation`.
#[derive(Debug, Args)]
pub struct FedBenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value = "all")]
    phase: Phase,
    /// Writes per second during lag and partition.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_RATE as i64))]
    rate: u32,
    /// Seconds of the paced write load of the lag phase.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds the regions stay cut apart in the catch-up phase.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    partition: u64,
    /// Keys loaded before the bootstrap.
    #[arg(long, default_value_t = 1_000_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    keys: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 3,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_NODES as u64))]
    nodes: usize,
    /// Measure etcd's make-mirror instead of Aspen (lag only; needs a build with
    /// `--features etcd`): the source cluster's client URLs, comma-separated. Mirroring
    /// must already run to --etcd-mirror (scripts/bench-federation-vs-etcd.sh sets it up).
    #[arg(long, requires = "etcd_mirror")]
    etcd_source: Option<String>,
    /// The mirror cluster's client URLs, comma-separated (with --etcd-source).
    #[arg(long, requires = "etcd_source")]
    etcd_mirror: Option<String>,
}

/// Runs the benchmark.
pub async fn run(args: FedBenchArgs) -> anyhow::Result<ExitCode> {
    if let (Some(source), Some(mirror)) = (&args.etcd_source, &args.etcd_mirror) {
        anyhow::ensure!(
            args.phase == Phase::Lag,
            "--etcd-source measures the lag phase only; add --phase lag"
        );
        etcd::lag(
            args.rate,
            Duration::from_secs(args.duration),
            source,
            mirror,
        )
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let phases: &[Phase] = match args.phase {
        Phase::All => &[Phase::Lag, Phase::CatchUp, Phase::Bootstrap],
        Phase::Lag => &[Phase::Lag],
        Phase::CatchUp => &[Phase::CatchUp],
        Phase::Bootstrap => &[Phase::Bootstrap],
    };
    for phase in phases {
        let dir = tempfile::tempdir().context("a temp dir")?;
        match phase {
            Phase::Lag => lag(&args, dir.path()).await?,
            Phase::CatchUp => catch_up(&args, dir.path()).await?,
            Phase::Bootstrap => bootstrap(&args, dir.path()).await?,
            Phase::All => unreachable!("expanded above"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn start(
    args: &FedBenchArgs,
    dir: &Path,
    extra: Vec<(String, String)>,
) -> anyhow::Result<Topology> {
    let mut spec = TopologySpec::design(dir, "127.0.0.1:0".parse()?, args.nodes);
    spec.extra_readers = extra;
    let t = Topology::start(spec)
        .await
        .context("starting the topology")?;
    for (_, name, cluster) in t.clusters() {
        cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .with_context(|| format!("{name} has no leader"))?;
    }
    Ok(t)
}

/// Calls `write(n)` for n = 0, 1, ... at `rate` per second for `duration`, at most
/// [`MAX_WRITES_IN_FLIGHT`] at once, recording each acknowledged write's tag (what `write`
/// returns: Aspen's revision, or `n` for etcd) and when it was acknowledged; and counting
/// failures.
pub(crate) async fn paced<F, Fut>(
    rate: u32,
    duration: Duration,
    write: F,
) -> (Vec<(u64, Instant)>, u64)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let acks = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (acks, errors) = (acks.clone(), errors.clone());
        let written = write(n);
        n += 1;
        tokio::spawn(async move {
            match written.await {
                Ok(tag) => acks.lock().expect("acks").push((tag, Instant::now())),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    let _ = permits.acquire_many(MAX_WRITES_IN_FLIGHT as u32).await;
    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    (acks, errors.load(Ordering::Relaxed))
}

/// Aspen puts of 16-byte values to 1,000 keys at `rate`, tagged with their revisions.
async fn paced_writes(
    client: AspenClient,
    rate: u32,
    duration: Duration,
) -> (Vec<(u64, Instant)>, u64) {
    paced(rate, duration, |n| {
        let client = client.clone();
        async move {
            let key = format!("bench/{}", n % 1000);
            Ok(client.put(&key, b"0123456789abcdef").await?.revision)
        }
    })
    .await
}

/// Prints the lag percentiles of `lags` (microseconds, sorted).
pub(crate) fn print_lags(what: &str, lags: &[u64], missing: usize) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "lag: {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({missing} never seen)",
        ms(percentile(lags, 50.0)),
        ms(percentile(lags, 99.0)),
        ms(lags.last().copied().unwrap_or(0)),
    );
}

/// Reads a us-1 key from eu's replica without pause until `stop`, recording each answer's
/// revision and when it came.
async fn watch_replica(url: String, stop: Arc<AtomicBool>) -> Vec<(Instant, u64)> {
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let response = http
            .get(format!("{url}/v1/kv/bench/0?consistency=stale"))
            .send()
            .await;
        let revision = response.ok().and_then(|r| {
            r.headers()
                .get(aspen_api::headers::REVISION_HEADER)?
                .to_str()
                .ok()?
                .parse::<u64>()
                .ok()
        });
        if let Some(revision) = revision {
            seen.push((Instant::now(), revision));
        }
    }
    seen
}

async fn lag(args: &FedBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let t = start(args, dir, Vec::new()).await?;
    let us = AspenClient::with_timeout(&t.router("us").url(), Duration::from_secs(30));
    // Warm up: the key exists in eu's replica before the clock starts.
    us.put("bench/0", b"warm").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_replica(t.router("eu").url(), stop.clone()));
    let (acks, errors) = paced_writes(us, args.rate, Duration::from_secs(args.duration)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await?;
    let mut lags: Vec<u64> = Vec::new();
    let mut missing = 0;
    for (revision, acked) in &acks {
        match seen
            .iter()
            .find(|(at, seen_revision)| at >= acked && seen_revision >= revision)
        {
            Some((at, _)) => lags.push(at.duration_since(*acked).as_micros() as u64),
            None => missing += 1,
        }
    }
    lags.sort_unstable();
    println!(
        "lag: {} writes at {}/s for {} s ({} failed), {} nodes per cluster; eu read {} times",
        acks.len(),
        args.rate,
        args.duration,
        errors,
        args.nodes,
        seen.len()
    );
    print_lags("acknowledgement in us to visible in eu", &lags, missing);
    t.shutdown().await;
    Ok(())
}

/// eu-1 node 1's replica revision of us-1.
fn eu_revision(t: &Topology) -> u64 {
    let node = t.cluster("eu-1").node(1).expect("eu-1 node 1 runs");
    let store = node
        .federation()
        .expect("federated")
        .replicas()
        .store()
        .clone();
    store.state("us-1").ok().flatten().map_or(0, |s| s.revision)
}

/// eu-1 node 1's importer of us-1, as `/v1/status` reports it.
fn eu_report(t: &Topology) -> String {
    let node = t.cluster("eu-1").node(1).expect("eu-1 node 1 runs");
    let reports = node.federation().expect("federated").replicas().reports();
    match reports.iter().find(|r| r.source == "us-1") {
        Some(r) => format!(
            "replica at {} of {} ({}){}",
            r.revision,
            r.owner_head,
            r.phase,
            r.error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ),
        None => "no replica of us-1".into(),
    }
}

fn us_head(t: &Topology) -> u64 {
    let cluster = t.cluster("us-1");
    cluster
        .leader()
        .and_then(|id| cluster.node(id))
        .map_or(0, |n| n.service.state_machine().revision())
}

async fn catch_up(args: &FedBenchArgs, dir: &Path) -> anyhow::Result<()> {
    let t = start(args, dir, Vec::new()).await?;
    let us = AspenClient::with_timeout(&t.router("us").url(), Duration::from_secs(30));
    us.put("bench/0", b"warm").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.partition_regions("us", "eu");
    let (acks, errors) = paced_writes(us, args.rate, Duration::from_secs(args.partition)).await;
    let head = us_head(&t);
    let before = eu_revision(&t);
    let healed = Instant::now();
    t.heal();
    let mut reported = Instant::now();
    while eu_revision(&t) < head {
        if reported.elapsed() >= PROGRESS_INTERVAL {
            reported = Instant::now();
            eprintln!("catch-up: still waiting: {}", eu_report(&t));
        }
        anyhow::ensure!(
            healed.elapsed() < CATCH_UP_LIMIT,
            "eu did not catch up to revision {head}: {}",
            eu_report(&t)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = healed.elapsed();
    let behind = head - before;
    println!(
        "catch-up: {} writes at {}/s during a {} s partition ({} failed); eu was {behind} revisions behind",
        acks.len(),
        args.rate,
        args.partition,
        errors
    );
    println!(
        "catch-up: caught up in {:.2} s after healing: {:.0} changes/s",
        took.as_secs_f64(),
        behind as f64 / took.as_secs_f64()
    );
    t.shutdown().await;
    Ok(())
}

/// Peak and current resident memory of process `pid`, in MiB (VmHWM, VmRSS).
fn memory_mib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmHWM:")? / 1024, field("VmRSS:")? / 1024))
}

async fn load(client: &AspenClient, keys: usize) -> anyhow::Result<()> {
    let value = vec![b'v'; 256];
    let batches = keys.div_ceil(LOAD_BATCH_KEYS);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..LOAD_CONCURRENCY {
        let (client, next, value) = (client.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<_, anyhow::Error>(());
                }
                let writes = (0..LOAD_BATCH_KEYS)
                    .map(|k| JsonWrite::new(format!("load/{b:07}/{k:03}"), &value))
                    .collect();
                client
                    .batch(&BatchRequest {
                        writes,
                        deletes: vec![],
                    })
                    .await
                    .with_context(|| format!("loading batch {b}"))?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn bootstrap(args: &FedBenchArgs, dir: &Path) -> anyhow::Result<()> {
    // The new node's identity exists before the topology starts, so us-1 lists it as a
    // reader from the start.
    let node_dir = dir.join("eu-2/node-1");
    let key = aspen_cluster_node::transport::load_or_create_secret_key(&node_dir)?;
    let node_id = key.public().to_string();
    let t = start(args, dir, vec![("eu".into(), node_id)]).await?;
    let us = AspenClient::with_timeout(&t.router("us").url(), Duration::from_secs(60));
    let loading = Instant::now();
    load(&us, args.keys).await?;
    let head = us_head(&t);
    println!(
        "bootstrap: loaded {} keys of 256 bytes into us-1 in {:.1} s (revision {head})",
        args.keys,
        loading.elapsed().as_secs_f64()
    );
    // Let the exporter write the load out and publish a checkpoint of it.
    while eu_revision(&t) < head {
        anyhow::ensure!(loading.elapsed() < CATCH_UP_LIMIT, "eu-1 did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let owner = std::process::id();
    let secret = FederationSecret::load(&secret_path(dir, "us-1"))?;
    let nodes: Vec<String> = t
        .cluster("us-1")
        .members()
        .iter()
        .map(|m| {
            format!(
                "{{ endpoint_id = \"{}\", addrs = [\"{}\"] }}",
                m.endpoint_id, m.addrs[0]
            )
        })
        .collect();
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = format!(
        "node_id = 1\ncluster = \"eu-2\"\ndata_dir = {node_dir:?}\nhttp_addr = \"{http}\"\n\
         iroh_bind_addr = \"127.0.0.1:0\"\n[federation]\nregion = \"eu\"\n\
         [[federation.import]]\ncluster = \"us-1\"\nregion = \"us\"\nnamespace = \"{}\"\n\
         author = \"{}\"\nnodes = [{}]\n",
        secret.namespace_id(),
        secret.author_id(),
        nodes.join(", ")
    );
    let config_path = dir.join("eu-2.toml");
    std::fs::write(&config_path, config)?;
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["node", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("eu-2.log"))?)
        .spawn()
        .context("starting the new region's node")?;
    let client = aspen_api::client::http_client(Duration::from_secs(5));
    let mut peak = 0;
    loop {
        anyhow::ensure!(
            started.elapsed() < CATCH_UP_LIMIT,
            "the new node did not bootstrap"
        );
        if let Some((hwm, _)) = memory_mib(child.id()) {
            peak = peak.max(hwm);
        }
        let revision = async {
            let status: serde_json::Value = client
                .get(format!("http://{http}/v1/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            status["replicas"][0]["revision"].as_u64()
        }
        .await;
        if revision.is_some_and(|r| r >= head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let (hwm, rss) = memory_mib(child.id()).unwrap_or((peak, 0));
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "bootstrap: a new region's node imported {} keys (revision {head}) in {:.1} s from process start; its peak RSS {} MiB (now {rss} MiB)",
        args.keys,
        took.as_secs_f64(),
        hwm.max(peak)
    );
    if let Some((owner_hwm, owner_rss)) = memory_mib(owner) {
        println!(
            "bootstrap: this process (every other node, both routers, the load) peak RSS {owner_hwm} MiB, now {owner_rss} MiB"
        );
    }
    t.shutdown().await;
    Ok(())
}
