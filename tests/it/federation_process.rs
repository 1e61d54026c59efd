//! Federation with nodes that are separate `aspen node` processes, killed with SIGKILL:
//! cluster us-1 (three processes) exports to region eu, where cluster eu-1 (one process)
//! imports it. (1) The importer is killed part way through a backlog of many small
//! revisions and resumes from its replica: it applies exactly the revisions it lacked and
//! loads no checkpoint, although one past its replica exists. (2) The exporting leader is
//! killed under writes: the next leader continues the document's ring of segments where
//! its copy of it ends, and the importer loads no checkpoint. Afterwards eu's replica must
//! equal us-1 exactly (every key, value, revision and version): nothing lost, nothing
//! applied twice.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aspen_api::admin::InitRequest;
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
    eu_dir: PathBuf,
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

/// Writes the configs of us-1's three nodes (with `us_federation`, more `[federation]`
/// settings) and eu-1's one, and starts them.
fn start(root: &Path, us_federation: &str) -> Layout {
    start_importing(root, us_federation, None)
}

/// [`start`], with eu-1 told to import document `namespace` instead of us-1's own.
fn start_importing(root: &Path, us_federation: &str, namespace: Option<String>) -> Layout {
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
            "[federation]\nregion = \"us\"\nsecret_file = {secret_file:?}\n{us_federation}\
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
        namespace.unwrap_or_else(|| secret.namespace_id().to_string()),
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
        eu_dir: dirs[3].clone(),
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

/// `/v1/status` of node `p`, if it answers.
async fn status(p: &Proc) -> Option<serde_json::Value> {
    let http = aspen_api::client::http_client(Duration::from_secs(2));
    http.get(format!("{}/v1/status", p.url()))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The eu node's replica of us-1, as its `/v1/status` reports it.
#[derive(Debug, Clone, Copy)]
struct Replica {
    revision: u64,
    /// Checkpoints loaded since the process started.
    loaded: u64,
    /// Change sets applied since the process started.
    applied: u64,
}

async fn replica_state(eu: &Proc) -> Option<Replica> {
    let status = status(eu).await?;
    let r = status["replicas"].as_array()?.first()?;
    Some(Replica {
        revision: r["revision"].as_u64()?,
        loaded: r["checkpoints_loaded"].as_u64()?,
        applied: r["sets_applied"].as_u64()?,
    })
}

/// A us-1 node's view of the export, as its `/v1/status` reports it.
#[derive(Debug, Clone, Copy)]
struct Export {
    active: bool,
    next_seq: u64,
    resumed_seq: Option<u64>,
    checkpoint: Option<u64>,
    /// On a follower: sync rounds it started with the other owner nodes.
    follower_syncs: u64,
    /// On a follower: content its copy lacks after its last round.
    missing_content: u64,
}

async fn export_state(p: &Proc) -> Option<Export> {
    let status = status(p).await?;
    let e = &status["export"];
    Some(Export {
        active: e["active"].as_bool()?,
        next_seq: e["next_seq"].as_u64()?,
        resumed_seq: e["resumed_seq"].as_u64(),
        checkpoint: e["checkpoint"].as_u64(),
        follower_syncs: e["follower_syncs"].as_u64()?,
        missing_content: e["missing_content"].as_u64()?,
    })
}

/// Every key through `router`, at `consistency`, paging to the end.
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

/// Starts both clusters' processes, initializes the clusters and waits for us-1's leader
/// and for eu's first replica of it (its revision).
async fn start_and_replicate(root: &Path, us_federation: &str) -> (Layout, u64) {
    support::init_test_logs();
    let l = start(root, us_federation);
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
    let head = us.put("first", b"1").await.unwrap().revision;
    let first = poll("eu's first replica", Duration::from_secs(60), || async {
        let r = replica_state(&l.eu).await?;
        (r.revision >= head).then_some(r.revision)
    })
    .await;
    (l, first)
}

/// The export as us-1's leader reports it, once a leader exports.
async fn leader_export(us: &[Proc]) -> (u64, Export) {
    poll(
        "us-1's leader exporting",
        Duration::from_secs(30),
        || async {
            let id = leader(us).await;
            let e = export_state(&us[id as usize - 1]).await?;
            e.active.then_some((id, e))
        },
    )
    .await
}

/// Writes a last key, waits for eu's replica to reach it, then compares the replica with
/// the owner through a router of region eu: every key, value, revision and version equal.
async fn assert_replica_equals_owner(l: &Layout) {
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
    // A last write, through the router to us-1's leader: every earlier one is at or below
    // its revision. (A node's own status may lag: a new leader applies its log after the
    // election.)
    let head = client.put("the-end", b"1").await.unwrap().revision;
    let caught_up = tokio::time::timeout(Duration::from_secs(120), async {
        while replica_state(&l.eu).await.is_none_or(|r| r.revision < head) {
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
    assert!(
        owner == replica,
        "the replica differs from the owner ({} and {} keys)",
        owner.len(),
        replica.len()
    );
    router.shutdown().await;
}

/// Single puts from `writers` clients at once, `each` per client, on 50 keys per
/// client: many small revisions.
async fn put_backlog(url: &str, writers: usize, each: usize) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let client = AspenClient::with_timeout(url, Duration::from_secs(30));
            tokio::spawn(async move {
                for i in 0..each {
                    let key = format!("load/{w}/{:02}", i % 50);
                    client
                        .put(&key, format!("{i:0100}").as_bytes())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Apply runs the importer's backlog must span, so that a kill lands part way.
const BACKLOG_RUNS: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_importer_resumes_from_its_replica_without_loading_anything_again() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints follow the data closely, so one is soon past the killed replica.
    let replay = format!(
        "checkpoint_replay_bytes = {}\n",
        aspen_config::limits::MIN_CHECKPOINT_REPLAY_BYTES
    );
    let (mut l, first) = start_and_replicate(dir.path(), &replay).await;
    let (leader_id, export) = leader_export(&l.us).await;
    let us_url = l.us[leader_id as usize - 1].url();

    // A backlog of many small revisions while the importer is down: segments enough for
    // many of the importer's apply runs.
    l.eu.kill9();
    let want = export.next_seq + BACKLOG_RUNS * aspen_federation::import::APPLY_RUN_SEGMENTS as u64;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        put_backlog(&us_url, 4, 100).await;
        let (_, e) = leader_export(&l.us).await;
        if e.next_seq >= want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "us-1 wrote {} segments of the {want} wanted within 300 s",
            e.next_seq
        );
    }
    let head = AspenClient::new(&us_url)
        .put("backlog/end", b"1")
        .await
        .unwrap()
        .revision;

    // Killed as soon as it has applied part of the backlog.
    l.eu.spawn();
    let partial = poll(
        "the importer part way",
        Duration::from_secs(120),
        || async {
            let r = replica_state(&l.eu).await?;
            (r.revision > first).then_some(r.revision)
        },
    )
    .await;
    l.eu.kill9();
    let resumed_at = {
        let store = aspen_federation::replica::ReplicaStore::open(
            &l.eu_dir.join("federation").join("replica.db"),
        )
        .unwrap();
        store.state("us-1").unwrap().unwrap().revision
    };
    println!("killed at revision {partial} of {head}; {resumed_at} on disk");
    assert!(
        partial < head,
        "the kill landed after the sync ({partial} of {head})"
    );
    assert!(
        resumed_at >= partial,
        "the replica kept what it had applied"
    );

    // More writes while it is down, until us-1 has a checkpoint past the replica: an
    // importer that started over would load it.
    let checkpoint = loop {
        put_backlog(&us_url, 4, 25).await;
        let (_, e) = leader_export(&l.us).await;
        if let Some(checkpoint) = e.checkpoint.filter(|c| *c > resumed_at) {
            break checkpoint;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no checkpoint past revision {resumed_at} within 300 s"
        );
    };
    let head = AspenClient::new(&us_url)
        .put("backlog/end", b"2")
        .await
        .unwrap()
        .revision;
    println!("us-1 at revision {head}, its checkpoint at {checkpoint}");

    l.eu.spawn();
    wait_healthy(&l.eu).await;
    let done = poll(
        "the importer caught up",
        Duration::from_secs(120),
        || async {
            let r = replica_state(&l.eu).await?;
            (r.revision >= head).then_some(r)
        },
    )
    .await;
    assert_eq!(
        done.loaded, 0,
        "it resumed from its replica, not from a checkpoint"
    );
    assert_eq!(
        done.applied,
        head - resumed_at,
        "it applied exactly the revisions it lacked"
    );
    assert_replica_equals_owner(&l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_exporting_leader_is_continued_by_the_next_losing_and_duplicating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut l, _) = start_and_replicate(dir.path(), "").await;
    let before = replica_state(&l.eu).await.unwrap();

    // Writes go on while the exporting leader is killed and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let endpoints: Vec<String> = l.us.iter().map(Proc::url).collect();
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let client = AspenClient::with_timeout(
                    &endpoints[i as usize % endpoints.len()],
                    Duration::from_secs(5),
                );
                let key = format!("live/{i:05}");
                if client.put(&key, b"x").await.is_ok() {
                    acknowledged.push(key);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            acknowledged
        })
    };
    let (victim, export) = poll(
        "some history in the ring",
        Duration::from_secs(60),
        || async {
            let (id, e) = leader_export(&l.us).await;
            (e.next_seq >= 50).then_some((id, e))
        },
    )
    .await;
    // The other owner nodes keep their copies of the document, content included, in sync
    // with the leader's.
    for p in l.us.iter().filter(|p| p.id != victim) {
        poll(
            &format!("node {} to hold segment {}", p.id, export.next_seq - 1),
            Duration::from_secs(30),
            || async {
                let e = export_state(p).await?;
                let synced = !e.active && e.follower_syncs > 0 && e.next_seq >= export.next_seq;
                (synced && e.missing_content == 0).then_some(())
            },
        )
        .await;
    }
    l.us[victim as usize - 1].kill9();
    let (successor, resumed) = poll(
        "a new leader exporting",
        Duration::from_secs(60),
        || async {
            let (id, e) = leader_export(&l.us).await;
            (id != victim).then_some((id, e.resumed_seq?))
        },
    )
    .await;
    println!(
        "node {victim} killed at segment {} or later; node {successor} took over at {resumed}",
        export.next_seq
    );
    assert!(
        resumed >= export.next_seq,
        "the new leader numbers on from the old one's ring ({resumed}, held {})",
        export.next_seq
    );
    // The new leader goes on exporting the writes that go on.
    let acked_at_takeover = acked.load(Ordering::Relaxed);
    poll(
        "the new leader exporting on",
        Duration::from_secs(60),
        || async {
            let (_, e) = leader_export(&l.us).await;
            let more = acked.load(Ordering::Relaxed) >= acked_at_takeover + 100;
            (more && e.next_seq >= resumed + 20).then_some(())
        },
    )
    .await;
    l.us[victim as usize - 1].spawn();
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.await.unwrap();
    assert_replica_equals_owner(&l).await;
    let owner = all_keys(
        &AspenClient::with_timeout(&l.us[successor as usize - 1].url(), Duration::from_secs(30)),
        Consistency::Linearizable,
    )
    .await;
    for key in &acknowledged {
        assert!(
            owner.iter().any(|(k, ..)| k == key),
            "acknowledged write {key} is missing at the owner"
        );
    }
    let after = replica_state(&l.eu).await.unwrap();
    assert_eq!(
        after.loaded, before.loaded,
        "the importer went on with the new leader's segments, loading no checkpoint"
    );
    // Segments the new leader wrote again over revisions the old one had exported were
    // skipped: one change set applied per revision, none twice, none left out.
    assert_eq!(
        after.applied - before.applied,
        after.revision - before.revision,
        "change sets applied from revision {} to {}",
        before.revision,
        after.revision
    );
}

/// An importing region whose config names the wrong document (a namespace the owner nodes
/// do not serve) says so: its replica's error names every owner node as refusing that
/// document, instead of a replica that silently stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_importer_given_the_wrong_document_names_every_owner_node_refusing_it() {
    support::init_test_logs();
    let dir = tempfile::tempdir().unwrap();
    let wrong = FederationSecret::generate().namespace_id().to_string();
    let l = start_importing(dir.path(), "", Some(wrong.clone()));
    for p in l.us.iter().chain([&l.eu]) {
        wait_healthy(p).await;
    }
    for url in [l.us[0].url(), l.eu.url()] {
        AspenClient::new(&url)
            .cluster_init(&InitRequest::default())
            .await
            .unwrap();
    }
    leader(&l.us).await;
    let error = poll(
        "eu's replica error naming every owner node",
        Duration::from_secs(60),
        || async {
            let status = status(&l.eu).await?;
            let error = status["replicas"].as_array()?.first()?["error"].as_str()?;
            let all = l.us.iter().all(|p| error.contains(&p.endpoint_id));
            all.then(|| error.to_string())
        },
    )
    .await;
    assert!(error.contains("does not serve"), "{error}");
    assert!(error.contains("aspen federation info"), "{error}");
    assert!(error.contains(&wrong), "{error}");
}
