//! Nodes as separate `aspen node` processes: start, SIGKILL, restart, and the ports and
//! identities a config needs before the process starts.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aspen_api::AspenClient;

use super::poll;

/// One node process and what it needs to be started again.
pub struct Proc {
    pub id: u64,
    pub endpoint_id: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub http: SocketAddr,
    pub child: Option<Child>,
}

impl Proc {
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(["node", "--config"])
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start aspen node");
        self.child = Some(child);
    }

    /// SIGTERM, as systemd or docker stop a node, then waits for the process to exit;
    /// fails the test if it does not within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "SIGTERM to node {}",
            self.id
        );
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "node {} exited with {status}", self.id);
                return;
            }
            if start.elapsed() > grace {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("node {} still running {grace:?} after SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// Lines of a process's log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        // The temp dir with the log goes with the test: show the end of it while it is
        // still there, so a failure (in CI, say) says what the process was doing.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- last {} lines of {}:\n{}",
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

pub fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn free_tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A member's address as its peers' configs name it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: u64,
    pub endpoint_id: String,
    pub iroh: SocketAddr,
}

/// Writes node `id`'s config and identity under `root` (fast elections, `peers` as its
/// `[[peers]]`) and starts it; also returns its address as a peer.
pub fn start_node(
    root: &Path,
    cluster: &str,
    id: u64,
    fault_injection: bool,
    peers: &[Peer],
) -> (Proc, Peer) {
    let (http, iroh) = (free_tcp_port(), free_udp_port());
    let dir = root.join(format!("node-{id}"));
    let endpoint_id = write_identity(&dir);
    let config = root.join(format!("node-{id}.toml"));
    std::fs::write(
        &config,
        node_toml(id, cluster, &dir, http, iroh, fault_injection, peers),
    )
    .unwrap();
    let mut p = Proc {
        id,
        endpoint_id: endpoint_id.clone(),
        config,
        log: root.join(format!("node-{id}.log")),
        http,
        child: None,
    };
    p.spawn();
    (
        p,
        Peer {
            id,
            endpoint_id,
            iroh,
        },
    )
}

/// Starts nodes 1..=count of a new cluster, each with the others as peers (identities
/// written first, so every config is whole before any node starts).
pub fn start_nodes(
    root: &Path,
    cluster: &str,
    count: u64,
    fault_injection: bool,
) -> (Vec<Proc>, Vec<Peer>) {
    let peers: Vec<Peer> = (1..=count)
        .map(|id| Peer {
            id,
            endpoint_id: write_identity(&root.join(format!("node-{id}"))),
            iroh: free_udp_port(),
        })
        .collect();
    let procs = peers
        .iter()
        .map(|me| {
            let http = free_tcp_port();
            let dir = root.join(format!("node-{}", me.id));
            let others: Vec<Peer> = peers.iter().filter(|p| p.id != me.id).cloned().collect();
            let config = root.join(format!("node-{}.toml", me.id));
            let toml = node_toml(
                me.id,
                cluster,
                &dir,
                http,
                me.iroh,
                fault_injection,
                &others,
            );
            std::fs::write(&config, toml).unwrap();
            let mut p = Proc {
                id: me.id,
                endpoint_id: me.endpoint_id.clone(),
                config,
                log: root.join(format!("node-{}.log", me.id)),
                http,
                child: None,
            };
            p.spawn();
            p
        })
        .collect();
    (procs, peers)
}

fn node_toml(
    id: u64,
    cluster: &str,
    dir: &Path,
    http: SocketAddr,
    iroh: SocketAddr,
    fault_injection: bool,
    peers: &[Peer],
) -> String {
    // The test client identity (routers and tools of the tests) may use aspen/kv/2.
    let kv_clients = super::kv_clients();
    let mut toml = format!(
        "node_id = {id}\ncluster = \"{cluster}\"\ndata_dir = {dir:?}\nhttp_addr = \"{http}\"\n\
         iroh_bind_addr = \"{iroh}\"\nfault_injection = {fault_injection}\n\
         kv_clients = {kv_clients:?}\n\
         [raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 300\n\
         election_timeout_max_ms = 600\n"
    );
    for p in peers {
        toml.push_str(&format!(
            "[[peers]]\nnode_id = {}\nendpoint_id = \"{}\"\naddrs = [\"{}\"]\n",
            p.id, p.endpoint_id, p.iroh
        ));
    }
    toml
}

/// Writes the node's identity key so its endpoint id is known before it starts.
pub fn write_identity(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let key = iroh::SecretKey::generate();
    let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("iroh.key"), hex).unwrap();
    key.public().to_string()
}

/// Waits until every process in `procs` serves HTTP, then initializes their cluster
/// through the first (it and its configured peers become the members).
pub async fn init_when_healthy(procs: &[Proc]) {
    for p in procs {
        wait_healthy(p).await;
    }
    AspenClient::new(&procs[0].url())
        .cluster_init(&aspen_api::admin::InitRequest::default())
        .await
        .unwrap();
}

pub async fn wait_healthy(p: &Proc) {
    let client = AspenClient::with_timeout(&p.url(), Duration::from_secs(2));
    poll(
        &format!("node {} to serve HTTP", p.id),
        Duration::from_secs(30),
        || async { client.status().await.ok().map(|_| ()) },
    )
    .await;
}

/// The leader's id as node `via` sees it, once there is one.
pub async fn leader(procs: &[Proc]) -> u64 {
    poll("a leader", Duration::from_secs(30), || async {
        for p in procs.iter().filter(|p| p.child.is_some()) {
            let client = AspenClient::with_timeout(&p.url(), Duration::from_secs(2));
            if let Ok(status) = client.status().await {
                if let Some(leader) = status.leader {
                    return Some(leader);
                }
            }
        }
        None
    })
    .await
}

/// Runs `aspen ARGS...` to its end, as a user at a shell would (no stdin): (success,
/// stdout, stderr).
pub fn run_aspen(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
