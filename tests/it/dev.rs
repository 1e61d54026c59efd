//! `aspen dev`, the README's first command, run as a new user runs it: both regions'
//! routers serve, a write in one region is read from the other's replica, SIGTERM stops
//! it cleanly, and a second run on the same directory resumes the data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aspen_api::{AspenClient, Consistency};

use crate::support::poll;
use crate::support::process::free_tcp_port;

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
    // Region eu's router and the first nodes take ports above this one; `aspen dev` says
    // so and exits if one is taken.
    let http = free_tcp_port();
    let eu_http = SocketAddr::new(http.ip(), http.port() + 1);
    let mut dev = Dev::start(&data, http, dir.path().join("dev.log"));
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
    assert!(dev.output().contains("resumed from"), "{}", dev.output());
    let status = dev.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}
