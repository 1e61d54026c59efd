//! The `aspen` client commands as a user runs them, as real processes against a real
//! cluster: output piped into a reader that goes away (`aspen kv get k | head -c 10`)
//! ends the command quietly instead of with a panic.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_command_whose_reader_goes_away_ends_without_a_panic() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    t.client(leader).put("k", b"some value").await.unwrap();
    let endpoint = t.cluster.url(leader);
    for args in [
        vec!["kv", "get", "k", "--json"],
        vec!["cluster", "status", "--json"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(&args)
            .args(["--endpoint", &endpoint])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // The reader goes away before the command prints anything.
        drop(child.stdout.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("aspen {} did not end within 30 s", args.join(" "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            !stderr.contains("panicked"),
            "aspen {} panicked on a closed stdout: {stderr}",
            args.join(" ")
        );
    }
    t.cluster.shutdown().await;
}
