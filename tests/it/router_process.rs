//! `aspen router --config FILE` as a real process in front of two in-process clusters:
//! SIGHUP reloads the route table while writes keep flowing (none fails), and a reload
//! with an invalid file is refused, keeping the old table and the process.

use crate::support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aspen_api::AspenClient;
use support::{fast_raft, poll, start_named_cluster, TestCluster};

fn free_tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The router's TOML: us-1 owns everything, us-2 owns `svc-b/`, plus `extra` routes.
fn router_toml(http: SocketAddr, us1: &TestCluster, us2: &TestCluster, extra: &str) -> String {
    let mut text = format!(
        "region = \"us\"\nhttp_addr = \"{http}\"\niroh_bind_addr = \"127.0.0.1:0\"\n\
         request_deadline_ms = 10000\nsecret_key_file = {:?}\n",
        support::client_key_file()
    );
    for (name, t) in [("us-1", us1), ("us-2", us2)] {
        text.push_str(&format!(
            "\n[[clusters]]\nname = \"{name}\"\nregion = \"us\"\n"
        ));
        for node in t.cluster.members() {
            text.push_str(&format!(
                "[[clusters.nodes]]\nnode_id = {}\nendpoint_id = \"{}\"\naddrs = [\"{}\"]\n",
                node.node_id, node.endpoint_id, node.addrs[0]
            ));
        }
    }
    text.push_str("\n[[routes]]\nprefix = \"\"\ncluster = \"us-1\"\n");
    text.push_str("\n[[routes]]\nprefix = \"svc-b/\"\ncluster = \"us-2\"\n");
    text.push_str(extra);
    text
}

/// Kills the router process when the test ends, however it ends.
struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hangup(child: &Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn owner(client: &reqwest::Client, url: &str, key: &str) -> Option<String> {
    let body: serde_json::Value = client
        .get(format!("{url}/v1/routes?key={key}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["cluster"].as_str().map(str::to_string)
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_route_table_without_dropping_requests_and_refuses_a_bad_file() {
    let us1 = start_named_cluster("us-1", 3, fast_raft()).await;
    let us2 = start_named_cluster("us-2", 3, fast_raft()).await;
    let dir = tempfile::tempdir().unwrap();
    let http = free_tcp_port();
    let config = dir.path().join("router.toml");
    write_file(&config, &router_toml(http, &us1, &us2, ""));
    let log = dir.path().join("router.log");
    let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["router", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("router.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start aspen router");
    let router = Router(child);
    let url = format!("http://{http}");
    let http_client = aspen_api::client::http_client(Duration::from_secs(5));
    poll("the router to serve", Duration::from_secs(20), || async {
        owner(&http_client, &url, "new/x").await
    })
    .await;
    assert_eq!(
        owner(&http_client, &url, "new/x").await.as_deref(),
        Some("us-1")
    );

    // Writes keep flowing through every reload; each must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (AspenClient::new(&url), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client
                    .put(&format!("load/{n}"), b"v")
                    .await
                    .unwrap_or_else(|e| panic!("write {n} during reloads failed: {e}"));
                n += 1;
            }
            n
        })
    };

    let moved = "\n[[routes]]\nprefix = \"new/\"\ncluster = \"us-2\"\n";
    write_file(&config, &router_toml(http, &us1, &us2, moved));
    hangup(&router.0);
    poll(
        "the new route to take effect",
        Duration::from_secs(10),
        || async {
            (owner(&http_client, &url, "new/x").await.as_deref() == Some("us-2")).then_some(())
        },
    )
    .await;
    let written = AspenClient::new(&url).put("new/x", b"v").await.unwrap();
    assert_eq!(written.cluster, "us-2");

    // An invalid file: a route to a cluster that does not exist.
    let broken = "\n[[routes]]\nprefix = \"x/\"\ncluster = \"nowhere\"\n";
    write_file(&config, &router_toml(http, &us1, &us2, broken));
    hangup(&router.0);
    let err_log = dir.path().join("router.err");
    poll(
        "the refusal to be logged",
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&err_log).ok()?;
            text.contains("kept the previous route table").then_some(())
        },
    )
    .await;
    let text = std::fs::read_to_string(&err_log).unwrap();
    assert!(
        text.contains("nowhere"),
        "the refusal names the bad value: {text}"
    );
    assert_eq!(
        owner(&http_client, &url, "new/x").await.as_deref(),
        Some("us-2"),
        "the previous table is still in force"
    );

    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("no write failed during the reloads");
    assert!(writes > 0);
    drop(router);
    us1.cluster.shutdown().await;
    us2.cluster.shutdown().await;
}
