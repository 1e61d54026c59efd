//! The lag phase against etcd's own cross-cluster replication, `etcdctl make-mirror`
//! (started by the caller, as `scripts/bench-federation-vs-etcd.sh` does): puts paced
//! into the source cluster, each value its sequence number, and a watch on the mirror
//! cluster recording when each arrives there. A watch is pushed, so this method is, if
//! anything, kinder to etcd than Aspen's (a read loop, up to one read late).

use std::time::Duration;

/// Measures make-mirror's lag from `source` (client URLs, comma-separated) to `mirror`.
#[cfg(feature = "etcd")]
pub async fn lag(rate: u32, duration: Duration, source: &str, mirror: &str) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use anyhow::Context;
    use etcd_client::{Client, WatchOptions};

    let connect = |urls: &str| {
        let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
        async move { Client::connect(urls, None).await }
    };
    let src = connect(source)
        .await
        .with_context(|| format!("connecting to the source etcd at {source}"))?;
    let mut dst = connect(mirror)
        .await
        .with_context(|| format!("connecting to the mirror etcd at {mirror}"))?;
    let mut stream = dst
        .watch("bench/", Some(WatchOptions::new().with_prefix()))
        .await
        .context("watching the mirror")?;
    // Warm up: make-mirror carries a write before the clock starts.
    src.clone().put("bench/warm", "warm", None).await?;
    let warm = async {
        while let Some(response) = stream.message().await? {
            if response.events().iter().any(|e| {
                e.kv()
                    .is_some_and(|kv| kv.key() == b"bench/warm".as_slice())
            }) {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the mirror's watch ended")
    };
    tokio::time::timeout(Duration::from_secs(30), warm)
        .await
        .context("make-mirror did not carry a write to the mirror within 30 s: is it running?")??;

    let seen: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut events = 0u64;
            while let Ok(Some(response)) = stream.message().await {
                let now = Instant::now();
                let mut seen = seen.lock().expect("seen");
                for event in response.events() {
                    let n = event
                        .kv()
                        .and_then(|kv| kv.value_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if let Some(n) = n {
                        seen.entry(n).or_insert(now);
                        events += 1;
                    }
                }
            }
            events
        })
    };
    let (acks, errors) = super::paced(rate, duration, |n| {
        let mut client = src.clone();
        async move {
            client
                .put(format!("bench/{}", n % 1000), n.to_string(), None)
                .await?;
            Ok(n)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    collector.abort();
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let mut lags = Vec::new();
    let mut missing = 0;
    for (n, acked) in &acks {
        match seen.get(n) {
            Some(at) => lags.push(at.saturating_duration_since(*acked).as_micros() as u64),
            None => missing += 1,
        }
    }
    lags.sort_unstable();
    println!(
        "lag: etcd make-mirror: {} writes at {rate}/s for {} s ({errors} failed); {} seen on the mirror",
        acks.len(),
        duration.as_secs(),
        seen.len()
    );
    super::print_lags(
        "acknowledgement by the source to visible on the mirror",
        &lags,
        missing,
    );
    Ok(())
}

/// Without the `etcd` feature there is no etcd client.
#[cfg(not(feature = "etcd"))]
pub async fn lag(_: u32, _: Duration, _: &str, _: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build has no etcd support: build with `cargo build --release --features etcd` \
         (needs protoc)"
    )
}
