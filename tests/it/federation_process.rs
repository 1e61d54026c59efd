//! Federation with nodes that are separate `aspen node` processes, killed with SIGKILL:
//! cluster us-1 (three processes) exports to region eu, where cluster eu-1 (one process)
//! imports it. (1) The importer is killed mid-sync and resumes from its replica without
//! loading the whole data again. (2) The exporting leader is killed mid-export under
//! writes. Afterwards eu's replica must equal us-1 exactly: every key, value, revision and
//! version, nothing lost, nothing applied twice.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aspen_api::admin::InitRequest;
use aspen_api::json::{BatchRequest, JsonWrite};
use aspen_api::{AspenClient, Consistency};
use aspen_config::{ClusterConfig, PeerConfig, RouteConfig, RouterConfig};
use aspen_federation::secret::FederationSecret;
use aspen_router::RunningRouter;
use support::poll;
use support::process::{free_tcp_port, free_udp_port, leader, wait_healthy, write_identity, Proc};

const RAFT: &str = "[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 400\nelection_timeout_max_ms = 800\n";

struct Layout {
    us: Vec<Proc>,
    eu: Proc,
    us_peers: Vec<PeerConfig>,
    eu_peer: PeerConfig,
}

fn peer(id: u64, endpoint_id: &str, addr: SocketAddr) -> PeerConfig {
    PeerConfig {
        node_id: id,
        endpoint_id: endpoint_id.to_string(),
        addrs: vec![addr],
    }
}

/// Writes the configs of us-1's three nodes and eu-1's one, and starts them.
fn start(root: &Path) -> Layout {
    let secret_file = root.join("us-1.federation.key");
    let secret = FederationSecret::generate();
    secret.save(&secret_file).unwrap();
    let iroh: Vec<SocketAddr> = (0..4).map(|_| free_udp_port()).collect();
    let http: Vec<SocketAddr> = (0..4).map(|_| free_tcp_port()).collect();
    let dirs: Vec<PathBuf> = ["us-1/node-1", "us-1/node-2", "us-1/node-3", "eu-1/node-1"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let ids: Vec<String> = dirs.iter().map(|d| write_identity(d)).collect();
    let clients = support::kv_clients();
    let base = |i: usize, cluster: &str, node_id: u64| {
        format!(
            "node_id = {node_id}\ncluster = \"{cluster}\"\ndata_dir = {:?}\nhttp_addr = \"{}\"\n\
             iroh_bind_addr = \"{}\"\nkv_clients = {clients:?}\n{RAFT}",
            dirs[i], http[i], iroh[i]
        )
    };
    let mut us = Vec::new();
    for i in 0..3 {
        let mut toml = base(i, "us-1", i as u64 + 1);
        toml.push_str(&format!(
            "[federation]\nregion = \"us\"\nsecret_file = {secret_file:?}\n\
             [[federation.export]]\nregion = \"eu\"\nreaders = [\"{}\"]\n",
            ids[3]
        ));
        for j in (0..3).filter(|j| *j != i) {
            toml.push_str(&format!(
                "[[peers]]\nnode_id = {}\nendpoint_id = \"{}\"\naddrs = [\"{}\"]\n",
                j + 1,
                ids[j],
                iroh[j]
            ));
        }
        us.push(proc(root, i as u64 + 1, &ids[i], &toml, http[i], "us-1"));
    }
    let mut toml = base(3, "eu-1", 1);
    toml.push_str(&format!(
        "[federation]\nregion = \"eu\"\n[[federation.import]]\ncluster = \"us-1\"\n\
         region = \"us\"\nnamespace = \"{}\"\nauthor = \"{}\"\nnodes = [{}]\n",
        secret.namespace_id(),
        secret.author_id(),
        (0..3)
            .map(|j| format!(
                "{{ endpoint_id = \"{}\", addrs = [\"{}\"] }}",
                ids[j], iroh[j]
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let eu = proc(root, 1, &ids[3], &toml, http[3], "eu-1");
    Layout {
        us_peers: (0..3)
            .map(|i| peer(i as u64 + 1, &ids[i], iroh[i]))
            .collect(),
        eu_peer: peer(1, &ids[3], iroh[3]),
        us,
        eu,
    }
}

fn proc(
    root: &Path,
    id: u64,
    endpoint_id: &str,
    toml: &str,
    http: SocketAddr,
    cluster: &str,
) -> Proc {
    let config = root.join(format!("{cluster}-node-{id}.toml"));
    std::fs::write(&config, toml).unwrap();
    let mut p = Proc {
        id,
        endpoint_id: endpoint_id.to_string(),
        config,
        log: root.join(format!("{cluster}-node-{id}.log")),
        http,
        child: None,
    };
    p.spawn();
    p
}

/// The eu node's replica of us-1: (revision, checkpoints loaded since it started).
async fn replica_state(eu: &Proc) -> Option<(u64, u64)> {
    let http = aspen_api::client::http_client(Duration::from_secs(2));
    let status: serde_json::Value = http
        .get(format!("{}/v1/status", eu.url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let r = status["replicas"].as_array()?.first()?;
    Some((
        r["revision"].as_u64()?,
        r["checkpoints_loaded"].as_u64().unwrap_or(0),
    ))
}

/// us-1's revision, from its leader.
async fn owner_revision(us: &[Proc]) -> u64 {
    let id = leader(us).await;
    let client = AspenClient::with_timeout(&us[id as usize - 1].url(), Duration::from_secs(5));
    client.status().await.unwrap().applied_revision
}

/// Every key under `prefix` through `router`, at `consistency`, paging to the end.
async fn all_keys(
    router: &AspenClient,
    consistency: Consistency,
) -> Vec<(String, String, u64, u64)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = router
            .scan("", after.as_deref(), Some(10_000), consistency)
            .await
            .unwrap();
        for e in &page.kvs {
            out.push((
                e.key.clone(),
                e.value.clone().unwrap_or_default(),
                e.mod_revision,
                e.version,
            ));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

async fn write_batches(client: &AspenClient, from: usize, count: usize, value_bytes: usize) {
    let value = "v".repeat(value_bytes);
    for b in from..from + count {
        let writes = (0..50)
            .map(|k| JsonWrite::new(format!("load/{b:05}/{k:02}"), value.as_bytes()))
            .collect();
        client
            .batch(&BatchRequest {
                writes,
                deletes: vec![],
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_importer_and_exporting_leader_lose_and_duplicate_nothing() {
    support::init_test_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut l = start(dir.path());
    for p in l.us.iter().chain([&l.eu]) {
        wait_healthy(p).await;
    }
    AspenClient::new(&l.us[0].url())
        .cluster_init(&InitRequest::default())
        .await
        .unwrap();
    AspenClient::new(&l.eu.url())
        .cluster_init(&InitRequest::default())
        .await
        .unwrap();
    leader(&l.us).await;
    let us = AspenClient::with_timeout(&l.us[0].url(), Duration::from_secs(30));

    // (1) A backlog for the importer to sync, then kill it while it applies.
    l.eu.kill9();
    write_batches(&us, 0, 300, 2_000).await;
    let head = owner_revision(&l.us).await;
    l.eu.spawn();
    let partial = poll(
        "the importer part way through",
        Duration::from_secs(60),
        || async {
            let (revision, _) = replica_state(&l.eu).await?;
            (revision > 0).then_some(revision)
        },
    )
    .await;
    l.eu.kill9();
    l.eu.spawn();
    wait_healthy(&l.eu).await;
    let (resumed_at, loaded) = poll("the importer back", Duration::from_secs(30), || async {
        replica_state(&l.eu).await
    })
    .await;
    println!("killed at revision {partial} of {head}; resumed at {resumed_at}");
    assert!(
        resumed_at >= partial,
        "the replica kept what it had applied"
    );
    poll(
        "the importer caught up",
        Duration::from_secs(120),
        || async {
            let (revision, loaded) = replica_state(&l.eu).await?;
            (revision >= head).then_some(loaded)
        },
    )
    .await;
    assert_eq!(
        loaded, 0,
        "it resumed from its replica, not from a checkpoint"
    );

    // (2) Writes go on while the exporting leader is killed and comes back.
    let writer = {
        let endpoints: Vec<String> = l.us.iter().map(Proc::url).collect();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..600u32 {
                let client = AspenClient::with_timeout(
                    &endpoints[i as usize % endpoints.len()],
                    Duration::from_secs(5),
                );
                let key = format!("live/{i:04}");
                if client.put(&key, b"x").await.is_ok() {
                    acknowledged.push(key);
                }
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = leader(&l.us).await;
    l.us[victim as usize - 1].kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    l.us[victim as usize - 1].spawn();
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 300,
        "{} writes acknowledged",
        acknowledged.len()
    );

    // The replica equals the owner exactly, read through a router of region eu.
    let config = RouterConfig::dev(
        "eu",
        support::client_key_file(),
        vec![
            ClusterConfig {
                name: "us-1".into(),
                region: "us".into(),
                nodes: l.us_peers.clone(),
            },
            ClusterConfig {
                name: "eu-1".into(),
                region: "eu".into(),
                nodes: vec![l.eu_peer.clone()],
            },
        ],
        vec![
            RouteConfig {
                prefix: "".into(),
                cluster: "us-1".into(),
            },
            RouteConfig {
                prefix: "eu/".into(),
                cluster: "eu-1".into(),
            },
        ],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&config, listener).await.unwrap();
    let client = AspenClient::with_timeout(&router.url(), Duration::from_secs(30));
    let head = owner_revision(&l.us).await;
    let caught_up = tokio::time::timeout(Duration::from_secs(120), async {
        while replica_state(&l.eu)
            .await
            .is_none_or(|(revision, _)| revision < head)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if caught_up.is_err() {
        for p in l.us.iter().chain([&l.eu]) {
            let status = support::http_text(&format!("{}/v1/status", p.url())).await;
            eprintln!("status of {}: {}", p.url(), status.unwrap_or_else(|e| e));
        }
        panic!("eu's replica did not reach us-1's head {head} within 120 s");
    }
    let owner = all_keys(&client, Consistency::Linearizable).await;
    let replica = all_keys(&client, Consistency::Stale).await;
    for key in &acknowledged {
        assert!(
            owner.iter().any(|(k, ..)| k == key),
            "acknowledged write {key} is missing at the owner"
        );
    }
    assert!(
        owner == replica,
        "the replica differs from the owner ({} and {} keys)",
        owner.len(),
        replica.len()
    );
    router.shutdown().await;
}
