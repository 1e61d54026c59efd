//! `aspen dev`, the README's first command, run as a new user runs it: both regions'
//! routers serve, a write in one region is read from the other's replica, SIGTERM stops
//! it cleanly, and a second run on the same directory resumes the data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aspen_api::{AspenClient, Consistency};

use crate::support::poll;

/// The ports `aspen dev` takes at and above its `--http` port: region eu's router and the
/// first node of us-1, us-2 and eu-1 (see `aspen dev --help`).
const DEV_PORT_OFFSETS: [u16; 5] = [0, 1, 31, 131, 231];

/// Where the test looks for a free `--http` port: below Linux's ephemeral range (32768 and
/// up), where the ports other tests bind with port 0 never land.
const DEV_BASE_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// Attempts at starting `aspen dev` on free ports before the test gives up.
const DEV_START_ATTEMPTS: usize = 5;

/// A `--http` address whose every port `aspen dev` takes is free now.
fn free_dev_base() -> SocketAddr {
    for _ in 0..1_000 {
        let port = rand::random_range(DEV_BASE_PORTS.clone());
        let free = DEV_PORT_OFFSETS
            .iter()
            .all(|offset| std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok());
        if free {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
    panic!("no free run of ports for aspen dev in {DEV_BASE_PORTS:?} after 1,000 draws");
}

/// A running `aspen dev`, killed if the test ends without stopping it.
struct Dev {
    child: Option<Child>,
    log: PathBuf,
}

impl Dev {
    /// Starts `aspen dev` on `data` with one node per cluster and region us's router on
    /// `http` (eu's on the next port).
    fn start(data: &Path, http: SocketAddr, log: PathBuf) -> Dev {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args([
                "dev",
                "--nodes",
                "1",
                "--http",
                &http.to_string(),
                "--data-dir",
            ])
            .arg(data)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start aspen dev");
        Dev {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, then its exit status within `grace`.
    fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < grace,
                "aspen dev still running {grace:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts `aspen dev` on `data` on free ports, starting again on others if one was
    /// taken in between (it then exits saying so); waits until region us's router
    /// answers. Returns it and region us's router address.
    async fn start_on_free_ports(data: &Path, log: PathBuf) -> (Dev, SocketAddr) {
        for _ in 0..DEV_START_ATTEMPTS {
            let http = free_dev_base();
            let mut dev = Dev::start(data, http, log.clone());
            let health = format!("http://{http}/healthz");
            let up = poll(
                "aspen dev to answer or exit",
                Duration::from_secs(60),
                || {
                    let child = dev.child.as_mut().expect("running");
                    let exited = child.try_wait().unwrap().is_some();
                    let health = health.clone();
                    async move {
                        if exited {
                            return Some(false);
                        }
                        crate::support::http_text(&health).await.ok().map(|_| true)
                    }
                },
            )
            .await;
            if up {
                return (dev, http);
            }
            let output = dev.output();
            assert!(
                output.contains("already in use"),
                "aspen dev exited: {output}"
            );
            dev.child = None;
        }
        panic!("aspen dev found a port taken {DEV_START_ATTEMPTS} times in a row");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- output of aspen dev:\n{}", self.output());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aspen_dev_serves_both_regions_replicates_between_them_and_resumes_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut dev, http) = Dev::start_on_free_ports(&data, dir.path().join("dev.log")).await;
    let eu_http = SocketAddr::new(http.ip(), http.port() + 1);
    let us = AspenClient::with_timeout(&format!("http://{http}"), Duration::from_secs(10));
    let eu = AspenClient::with_timeout(&format!("http://{eu_http}"), Duration::from_secs(10));

    let written = poll(
        "us's router taking a write",
        Duration::from_secs(60),
        || async { us.put("greeting", b"hello").await.ok() },
    )
    .await;
    assert_eq!(written.cluster, "us-1");
    let eu_written = poll(
        "eu's router taking a write",
        Duration::from_secs(30),
        || async { eu.put("eu/greeting", b"bonjour").await.ok() },
    )
    .await;
    assert_eq!(eu_written.cluster, "eu-1");
    // Each region reads the other's key from its own replica.
    for (client, key, value) in [(&eu, "greeting", "hello"), (&us, "eu/greeting", "bonjour")] {
        let entry = poll(
            &format!("{key} in the other region's replica"),
            Duration::from_secs(30),
            || async { client.get(key, Consistency::Stale).await.ok().flatten() },
        )
        .await;
        assert_eq!(entry.value.as_deref(), Some(value));
    }
    let printed = dev.output();
    assert!(
        printed.contains("curl"),
        "it prints how to try it: {printed}"
    );

    let status = dev.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(dev.output().contains("stopping the routers and clusters"));

    // The same directory again: the data is there.
    let mut dev = Dev::start(&data, http, dir.path().join("dev-again.log"));
    assert!(
        poll(
            "the resumed setup serving",
            Duration::from_secs(60),
            || async { us.get("greeting", Consistency::Linearizable).await.ok() }
        )
        .await
        .is_some_and(|e| e.value.as_deref() == Some("hello")),
        "the write made before the restart is read back"
    );
    // The summary comes once every cluster has a leader, which may be after us-1 serves.
    poll(
        "the summary saying it resumed",
        Duration::from_secs(60),
        || async { dev.output().contains("resumed from").then_some(()) },
    )
    .await;
    let status = dev.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}
