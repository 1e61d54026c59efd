//! The `aspen` client commands as a user runs them, as real processes against a real
//! cluster: output piped into a reader that goes away (`aspen kv get k | head -c 10`)
//! ends the command quietly instead of with a panic; `aspen lock` gives mutual exclusion
//! to processes, frees a killed holder's lock after its TTL, and kills its command (with
//! the command's children) when it loses its lease; `aspen cluster init --wait
//! --ok-if-initialized` waits for a node that starts after it and leaves a running cluster
//! alone.

use crate::support;
use crate::support::process::run_aspen as aspen;

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

/// `aspen lock` gives mutual exclusion: processes that each read a counter and write it
/// back plus one, with no compare-and-swap, under the lock, lose no increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aspen_lock_gives_mutual_exclusion_to_read_modify_write() {
    const PROCESSES: usize = 4;
    const INCREMENTS: usize = 5;
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    t.client(leader).put("counter", b"0").await.unwrap();
    let aspen = env!("CARGO_BIN_EXE_aspen");
    let script = format!(
        "for i in $(seq {INCREMENTS}); do \
           {aspen} lock counter --ttl 2s -- sh -c \
             'v=$({aspen} kv get counter --raw) && {aspen} kv put counter $((v+1)) >/dev/null' \
           || exit 1; \
         done"
    );
    let children: Vec<std::process::Child> = (0..PROCESSES)
        .map(|p| {
            // Each process talks to its own node, so the lock holds across nodes.
            let node = (p % 3) as u64 + 1;
            Command::new("sh")
                .args(["-c", &script])
                .env("ASPEN_ENDPOINT", t.cluster.url(node))
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "a locking process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let counter = t
        .client(leader)
        .get("counter", aspen_api::Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        counter.into_entry().unwrap().value,
        (PROCESSES * INCREMENTS).to_string().into_bytes()
    );
    t.cluster.shutdown().await;
}

/// A lock whose holder is killed (no release, no more keep-alives) frees itself when its
/// lease expires: not before the keep-alives it had sent run out, and soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_lock_holder_frees_the_lock_after_its_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let client = t.client(leader);
    let endpoint = t.cluster.url(leader);
    let aspen = env!("CARGO_BIN_EXE_aspen");
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let mut holder = Command::new(aspen)
        .args(["lock", "held", "--ttl", "3s", "--endpoint", &endpoint, "--"])
        .args([
            "sh",
            "-c",
            &format!("echo $$ > {}; exec sleep 60", pid_file.display()),
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    support::poll(
        "the holder to take the lock",
        Duration::from_secs(20),
        || async {
            let held = client
                .get("locks/held", aspen_api::Consistency::Linearizable)
                .await;
            (matches!(held, Ok(Some(_))) && pid_file.exists()).then_some(())
        },
    )
    .await;
    // Let a keep-alive or two go by, so the lease lives by them, not by its grant.
    tokio::time::sleep(TTL).await;
    holder.kill().unwrap();
    let killed = Instant::now();
    holder.wait().unwrap();
    let waiter = Command::new(aspen)
        .args([
            "lock",
            "held",
            "--ttl",
            "3s",
            "--endpoint",
            &endpoint,
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = tokio::task::spawn_blocking(move || waiter.unwrap())
        .await
        .unwrap();
    let waited = killed.elapsed();
    assert!(status.success());
    // Keep-alives go every TTL/3, so the last one left at least 2/3 of a TTL.
    assert!(
        waited >= TTL * 2 / 3 - Duration::from_millis(100),
        "freed after {waited:?}"
    );
    assert!(
        waited <= TTL + Duration::from_secs(5),
        "freed only after {waited:?}"
    );
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    t.cluster.shutdown().await;
}

/// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
fn ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A holder that loses its lease (revoked here by someone else, as an expiry would end
/// it) kills its command and everything the command started, and exits with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_holder_that_loses_its_lease_kills_its_command_and_its_children() {
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let client = t.client(leader);
    let endpoint = t.cluster.url(leader);
    let dir = tempfile::tempdir().unwrap();
    let (lease_file, pids_file) = (dir.path().join("lease"), dir.path().join("pids"));
    // A shell that starts a child of its own, then waits for it.
    let script = format!(
        "echo $ASPEN_LOCK_LEASE > {lease}.tmp && mv {lease}.tmp {lease}; sleep 60 & \
         echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; wait",
        lease = lease_file.display(),
        pids = pids_file.display()
    );
    let holder = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["lock", "lost", "--ttl", "3s", "--endpoint", &endpoint, "--"])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lease, pids) = support::poll(
        "the command to start under the lock",
        Duration::from_secs(20),
        || async {
            let lease = std::fs::read_to_string(&lease_file).ok()?;
            let pids = std::fs::read_to_string(&pids_file).ok()?;
            Some((lease, pids))
        },
    )
    .await;
    let pids: Vec<String> = pids.split_whitespace().map(String::from).collect();
    assert_eq!(pids.len(), 2, "the shell and its child: {pids:?}");
    assert!(
        pids.iter().all(|p| !ended(p)),
        "both run while the lock is held"
    );
    let lease: aspen_api::lease::LeaseId = lease.trim().parse().unwrap();
    client.lease_revoke(&lease).await.unwrap();

    let out = tokio::task::spawn_blocking(move || holder.wait_with_output().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("aspen lock ends once its lease is gone")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a lost lock is a failure");
    assert!(stderr.contains("lost the lock locks/lost"), "{stderr}");
    support::poll(
        "the command and its child to be killed",
        Duration::from_secs(10),
        || async { pids.iter().all(|p| ended(p)).then_some(()) },
    )
    .await;
    t.cluster.shutdown().await;
}

/// `aspen kv put --ttl` grants a lease and attaches the key, which vanishes after the TTL;
/// `aspen kv watch --json` prints the put and the expiry delete as they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_put_with_a_ttl_vanishes_and_kv_watch_prints_the_put_and_the_delete() {
    use std::io::{BufRead, BufReader};
    let t = support::start_cluster().await;
    let leader = t.wait_for_leader().await;
    let endpoint = t.cluster.url(leader);
    let aspen = env!("CARGO_BIN_EXE_aspen");
    let mut watch = Command::new(aspen)
        .args(["kv", "watch", "svc/", "--json", "--endpoint", &endpoint])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut changes = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let message: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            // The first message (a progress) means the watch is open.
            let _ = opened_tx.send(());
            if message["kind"] == "changes" {
                for event in message["events"].as_array().unwrap() {
                    changes.push((event["type"].to_string(), event["key"].to_string()));
                }
            }
            if changes.len() == 2 {
                break;
            }
        }
        changes
    });
    tokio::task::spawn_blocking(move || opened.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the watch opens within 20 s");
    let out = Command::new(aspen)
        .args([
            "kv",
            "put",
            "svc/a",
            "up",
            "--ttl",
            "1s",
            "--endpoint",
            &endpoint,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(printed.contains("with lease test:"), "{printed}");
    let client = t.client(leader);
    support::poll("svc/a to expire", Duration::from_secs(15), || async {
        let read = client
            .get("svc/a", aspen_api::Consistency::Linearizable)
            .await;
        matches!(read, Ok(None)).then_some(())
    })
    .await;
    let changes = tokio::task::spawn_blocking(move || lines.join().unwrap())
        .await
        .unwrap();
    watch.kill().unwrap();
    let _ = watch.wait();
    assert_eq!(
        changes,
        vec![
            ("\"put\"".to_string(), "\"svc/a\"".to_string()),
            ("\"delete\"".to_string(), "\"svc/a\"".to_string())
        ]
    );
    t.cluster.shutdown().await;
}

/// `aspen keygen --out F` writes a key and prints its endpoint id; a second run keeps the
/// file and prints the same id.
#[test]
fn keygen_prints_an_endpoint_id_and_never_overwrites_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys").join("router.key");
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_aspen"))
            .args(["keygen", "--out"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (id, said) = run();
    assert_eq!(id.len(), 64, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert!(said.contains("wrote a new secret key"), "{said}");
    let written = std::fs::read(&file).unwrap();

    let (again, said) = run();
    assert_eq!(again, id);
    assert!(said.contains("kept the existing key"), "{said}");
    assert_eq!(std::fs::read(&file).unwrap(), written);
}

/// A deployment starts a cluster's init job with its nodes: `aspen cluster init --wait`
/// started before its node still initializes it; run again with `--ok-if-initialized`
/// (every start of the deployment) it succeeds and changes nothing, while a plain init of
/// the running cluster is refused. With nothing ever listening, `--wait` gives up after
/// its bound, not before and not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_init_waits_for_its_node_and_leaves_an_initialized_cluster_alone() {
    use support::process::{free_tcp_port, free_udp_port, write_identity, Proc};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node-1");
    let endpoint_id = write_identity(&data);
    let http = free_tcp_port();
    let config = dir.path().join("node-1.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = 1\ncluster = \"init\"\ndata_dir = {data:?}\nhttp_addr = \"{http}\"\n\
             iroh_bind_addr = \"{}\"\n",
            free_udp_port()
        ),
    )
    .unwrap();
    let url = format!("http://{http}");
    let init = Command::new(env!("CARGO_BIN_EXE_aspen"))
        .args(["cluster", "init", "--endpoint", &url, "--wait", "60"])
        .arg("--ok-if-initialized")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut node = Proc {
        id: 1,
        endpoint_id,
        config,
        log: dir.path().join("node-1.log"),
        http,
        child: None,
    };
    node.spawn();
    let out = tokio::task::spawn_blocking(move || init.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("membership is now"),
        "{out:?}"
    );
    let status = aspen_api::AspenClient::new(&url).status().await.unwrap();
    assert!(status.initialized, "{status:?}");

    let (ok, stdout, stderr) = aspen(&[
        "cluster",
        "init",
        "--endpoint",
        &url,
        "--wait",
        "5",
        "--ok-if-initialized",
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("already initialized; nothing changed"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = aspen(&["cluster", "init", "--endpoint", &url]);
    assert!(!ok, "a second plain init must be refused: {stdout}");
    assert!(stderr.contains("cannot initialize"), "{stderr}");

    // Nothing listens here: the wait is spent, then the usual error.
    let nobody = format!("http://{}", free_tcp_port());
    let started = Instant::now();
    let (ok, _, stderr) = aspen(&["cluster", "init", "--endpoint", &nobody, "--wait", "2"]);
    let waited = started.elapsed();
    assert!(!ok);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20),
        "waited {waited:?}"
    );
    assert!(stderr.contains("error:"), "{stderr}");
}
