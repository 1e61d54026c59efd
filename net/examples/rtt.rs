//! The floor of one request over Aspen's transport on this machine: request round trips
//! between two iroh endpoints on loopback (relays off) in one process, each request on a
//! new stream of one kept connection, framed and served as `aspen/raft/2` and
//! `aspen/kv/2` requests are (`write_message`, `serve_streams`). A write's AppendEntries
//! round trip less the follower's `append_serve` stage, set against this, is what load
//! and the nodes' other tasks add to the transport (docs/BENCHMARKS.md).
//!
//! Usage: `cargo run --release -p aspen-net --example rtt [back-to-back|paced]`:
//! back-to-back sends the next request as soon as the answer is in; paced waits 1 ms
//! between requests, as a lone client's writes come. Prints p50, p90 and p99 of 5,000
//! round trips of a 400-byte request and answer, after 1,000 to warm up.

use std::time::{Duration, Instant};

use aspen_net::{read_message, serve_streams, write_message, Drain, ReadBudget};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};

mod common;
use common::{address, endpoint};

const ALPN: &[u8] = b"aspen/rtt/1";
const WARM_UP: usize = 1_000;
const MEASURED: usize = 5_000;
const MESSAGE_BYTES: usize = 400;

/// Answers each request with its own bytes.
#[derive(Debug, Clone)]
struct Echo {
    drain: Drain,
}

impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let budget = ReadBudget::new(1 << 20, 1 << 24);
        serve_streams(conn, budget, &self.drain, |bytes| async move { bytes }).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let paced = match std::env::args().nth(1).as_deref() {
        None | Some("back-to-back") => false,
        Some("paced") => true,
        Some(other) => {
            eprintln!("unknown mode {other:?}: back-to-back or paced");
            std::process::exit(2);
        }
    };
    let server = endpoint().await;
    let addr = address(&server);
    let drain = Drain::new();
    let _router = Router::builder(server).accept(ALPN, Echo { drain }).spawn();
    let client = endpoint().await;
    let conn = client.connect(addr, ALPN).await.expect("connecting");
    let payload = vec![7u8; MESSAGE_BYTES];
    let mut samples = Vec::with_capacity(MEASURED);
    for i in 0..WARM_UP + MEASURED {
        let started = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        write_message(&mut send, &payload)
            .await
            .expect("request sent");
        let answer = read_message(&mut recv, 1 << 20).await.expect("answer read");
        assert_eq!(answer.len(), MESSAGE_BYTES);
        if i >= WARM_UP {
            samples.push(started.elapsed());
        }
        if paced {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    samples.sort();
    let pct = |q: f64| samples[(samples.len() as f64 * q) as usize].as_micros();
    let mode = if paced { "paced" } else { "back-to-back" };
    println!(
        "{mode}: p50 {} us, p90 {} us, p99 {} us over {MEASURED} round trips",
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
}
