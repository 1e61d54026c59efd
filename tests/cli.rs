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

/// `aspen bench-federation --rate` is bounded at both ends: out of range is a usage error
/// naming the flag and the range, in range gets past the check (here to the next error,
/// an --etcd-source without its --etcd-mirror, so nothing starts).
#[test]
fn bench_federation_rate_is_checked_at_both_bounds() {
    let run = |rate: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(["bench-federation", "--rate", rate, "--etcd-source", "x"])
            .output()
            .expect("aspen runs");
        assert_eq!(out.status.code(), Some(1), "usage errors exit with 1");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for bad in ["0", "100001"] {
        let err = run(bad);
        assert!(
            err.contains("--rate") && err.contains("1..=100000"),
            "{err}"
        );
    }
    for good in ["1", "100000"] {
        let err = run(good);
        assert!(
            !err.contains("1..=100000") && err.contains("--etcd-mirror"),
            "{err}"
        );
    }
}
