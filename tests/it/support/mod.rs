//! Shared helpers of the integration tests: start a real cluster on loopback in a temp
//! dir, wait for conditions with a deadline, and talk to nodes over HTTP.

#![allow(dead_code)]

pub mod federation;
pub mod process;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use aspen_api::AspenClient;
use aspen_cluster_node::local_cluster::{LocalCluster, LocalClusterSpec};
use aspen_cluster_node::transport::{create_secret_key_file, read_secret_key_file};
use aspen_config::RaftConfig;
use tempfile::TempDir;

/// The body of `GET url` as text (a status page, `/metrics`), or why there is none.
pub async fn http_text(url: &str) -> Result<String, String> {
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let answer = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    answer.text().await.map_err(|e| format!("GET {url}: {e}"))
}

/// Logs to stderr with the filter in `ASPEN_TEST_LOG` (unset: no logs), for debugging a
/// test run: `ASPEN_TEST_LOG=aspen_federation=debug cargo test --test it -- --nocapture`.
pub fn init_test_logs() {
    if let Ok(filter) = std::env::var("ASPEN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Raft timing for tests: fast elections so fault tests finish quickly.
pub fn fast_raft() -> RaftConfig {
    RaftConfig {
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..RaftConfig::default()
    }
}

/// A running test cluster and the temp dir holding its data.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: TempDir,
}

/// Starts `nodes` nodes with `raft` settings and waits for a leader.
pub async fn start_cluster_with(nodes: usize, raft: RaftConfig) -> TestCluster {
    start_named_cluster("test", nodes, raft).await
}

/// Starts cluster `name` of `nodes` nodes with `raft` settings and waits for a leader.
pub async fn start_named_cluster(name: &str, nodes: usize, raft: RaftConfig) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = LocalClusterSpec {
        cluster: name.into(),
        data_dir: dir.path().to_path_buf(),
        nodes,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft,
        kv_clients: kv_clients(),
    };
    let cluster = LocalCluster::start(spec).await.expect("cluster starts");
    let test = TestCluster { cluster, dir };
    test.wait_for_leader().await;
    test
}

/// Starts a 3-node cluster with fast Raft timing, each node's config changed by `adjust`
/// first, and waits for a leader.
pub async fn start_cluster_adjusted(adjust: impl Fn(&mut aspen_config::NodeConfig)) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = LocalClusterSpec {
        cluster: "test".into(),
        data_dir: dir.path().to_path_buf(),
        nodes: 3,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft: fast_raft(),
        kv_clients: kv_clients(),
    };
    let mut bound = LocalCluster::bind(spec).await.expect("cluster binds");
    bound.configs_mut().iter_mut().for_each(adjust);
    let cluster = bound.start().await.expect("cluster starts");
    let test = TestCluster { cluster, dir };
    test.wait_for_leader().await;
    test
}

/// Starts a 3-node cluster with fast Raft timing.
pub async fn start_cluster() -> TestCluster {
    start_cluster_with(3, fast_raft()).await
}

impl TestCluster {
    /// A client for node `id`.
    pub fn client(&self, id: u64) -> AspenClient {
        AspenClient::with_timeout(&self.cluster.url(id), Duration::from_secs(15))
    }

    /// Waits until a running node is leader and every running node agrees on it.
    pub async fn wait_for_leader(&self) -> u64 {
        self.cluster
            .wait_for_leader(Duration::from_secs(20))
            .await
            .expect("a leader every running node agrees on within 20 s")
    }
}

/// A node's iroh address (its endpoint id and bound sockets), to connect to it directly.
pub fn iroh_addr(node: &aspen_cluster_node::node::Node) -> iroh::EndpointAddr {
    iroh::EndpointAddr::new(node.endpoint_id())
        .with_addrs(node.iroh_addrs().into_iter().map(iroh::TransportAddr::Ip))
}

/// An iroh endpoint on loopback with a fresh identity that no node knows: a stranger.
pub async fn stranger_endpoint() -> iroh::Endpoint {
    aspen_cluster_node::transport::bind_endpoint(
        iroh::SecretKey::generate(),
        "127.0.0.1:0".parse().unwrap(),
        false,
        &aspen_cluster_node::transport::Access::open(),
    )
    .await
    .unwrap()
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `deadline`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The file holding the iroh identity test routers and raw `aspen/kv/2` clients use,
/// one per test process; [`kv_clients`] names it.
pub fn client_key_file() -> &'static Path {
    static FILE: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("client.key");
            create_secret_key_file(&path).expect("a fresh key file");
            (dir, path)
        })
        .1
}

/// The test client identity's secret key.
pub fn client_key() -> iroh::SecretKey {
    read_secret_key_file(client_key_file()).expect("the test client key")
}

/// What every test cluster lists in `kv_clients`: the test client identity.
pub fn kv_clients() -> Vec<String> {
    vec![client_key().public().to_string()]
}

/// A router config for region us: `us1` owns every key but those under `svc-b/`, which
/// `us2` owns; requests wait at most `deadline_ms` for a cluster.
pub fn router_config(
    us1: &TestCluster,
    us2: &TestCluster,
    deadline_ms: u64,
) -> aspen_config::RouterConfig {
    let cluster = |name: &str, t: &TestCluster| aspen_config::ClusterConfig {
        name: name.into(),
        region: "us".into(),
        nodes: t.cluster.members().to_vec(),
    };
    let route = |prefix: &str, cluster: &str| aspen_config::RouteConfig {
        prefix: prefix.into(),
        cluster: cluster.into(),
    };
    let mut config = aspen_config::RouterConfig::dev(
        "us",
        client_key_file(),
        vec![cluster("us-1", us1), cluster("us-2", us2)],
        vec![route("", "us-1"), route("svc-b/", "us-2")],
    );
    config.iroh_bind_addr = "127.0.0.1:0".parse().unwrap();
    config.request_deadline_ms = deadline_ms;
    config
}

/// Asserts that a workload's `history` proves something (at least `min_ok` acknowledged
/// operations) and that the checker finds every operation of it linearizable. A failing history is saved as
/// JSON in the temp dir under `name`, for the checker's own tools.
pub fn assert_linearizable(
    name: &str,
    history: &aspen_checker::History,
    stats: &aspen_checker::workload::WorkloadStats,
    faults: &impl std::fmt::Debug,
    min_ok: usize,
) {
    use aspen_checker::{check, CheckLimits, Verdict};
    let verdict = check(history, &CheckLimits::default());
    println!("faults: {faults:?}\nstats: {stats:?}\nverdict: {verdict:?}");
    assert!(
        stats.ok >= min_ok,
        "too few operations to prove anything: {stats:?}"
    );
    match verdict {
        Verdict::Linearizable { ops_checked, .. } => assert_eq!(ops_checked, history.len()),
        other => {
            let path = std::env::temp_dir().join(format!("{name}-failure.json"));
            let json = serde_json::to_vec(history).expect("history serializes");
            std::fs::write(&path, json).expect("write the failing history");
            panic!(
                "history of {} operations is not linearizable (saved to {}): {other:?}",
                history.len(),
                path.display()
            )
        }
    }
}
