//! The floor of a large value's hop over Aspen's transport on this machine: one stream
//! between two iroh endpoints on loopback (relays off) in one process carries a value
//! in 256 KiB writes, read on the other side in 256 KiB chunks (`read_chunks`), as
//! `aspen/value/1` carries a blob between a router and a node. A routed `GET ?raw` or
//! `PUT` of a large value cannot pass a value faster than this (docs/BENCHMARKS.md).
//!
//! Usage: `cargo run --release -p aspen-net --example bulk [MiB]` (default 1024): prints
//! MB/s of five transfers of that many MiB on one connection, a new stream each, and
//! their median. With both ends in two processes, as a router and a node are: `bulk
//! serve` prints the receiving endpoint's id and address and serves until killed, and
//! `bulk send ID ADDR [MiB]` sends to it.

use std::time::Instant;

use aspen_net::frame::read_chunks;
use bytes::Bytes;
use futures::StreamExt;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::EndpointAddr;

mod common;
use common::{address, endpoint};

const ALPN: &[u8] = b"aspen/bulk/1";
const CHUNK_BYTES: usize = 256 * 1024;
const TRANSFERS: usize = 5;

/// Reads every stream to its end and answers with the number of bytes it carried.
#[derive(Debug, Clone)]
struct Sink;

impl ProtocolHandler for Sink {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        while let Ok((mut send, recv)) = conn.accept_bi().await {
            let mut total = 0u64;
            let mut chunks = std::pin::pin!(read_chunks(recv, CHUNK_BYTES));
            while let Some(Ok(chunk)) = chunks.next().await {
                total += chunk.len() as u64;
            }
            let _ = send.write_all(&total.to_be_bytes()).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve"] => {
            let server = endpoint().await;
            let addr = server.bound_sockets()[0];
            println!("{} {addr}", server.id());
            let _router = Router::builder(server).accept(ALPN, Sink).spawn();
            std::future::pending::<()>().await;
        }
        ["send", id, addr, rest @ ..] => {
            let id: iroh::EndpointId = id.parse().unwrap_or_else(|_| usage());
            let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| usage());
            let to = EndpointAddr::new(id).with_addrs([iroh::TransportAddr::Ip(addr)]);
            send(to, size(rest)).await;
        }
        rest => {
            let server = endpoint().await;
            let addr = address(&server);
            let _router = Router::builder(server).accept(ALPN, Sink).spawn();
            send(addr, size(rest)).await;
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: bulk [MiB] | bulk serve | bulk send ID ADDR [MiB]");
    std::process::exit(2);
}

/// MiB to send: the first argument, 1024 without one.
fn size(args: &[&str]) -> u64 {
    match args {
        [] => 1024,
        [mib] => mib.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    }
}

async fn send(addr: EndpointAddr, mib: u64) {
    let bytes = mib * 1024 * 1024;
    let client = endpoint().await;
    let conn = client.connect(addr, ALPN).await.expect("connecting");
    let chunk = Bytes::from(vec![7u8; CHUNK_BYTES]);
    let mut rates = Vec::with_capacity(TRANSFERS);
    for _ in 0..TRANSFERS {
        let started = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
        let mut left = bytes;
        while left > 0 {
            let piece = chunk.slice(..CHUNK_BYTES.min(left as usize));
            left -= piece.len() as u64;
            send.write_chunk(piece).await.expect("writing");
        }
        send.finish().expect("finishing");
        let mut answer = [0u8; 8];
        recv.read_exact(&mut answer).await.expect("the count");
        assert_eq!(u64::from_be_bytes(answer), bytes, "every byte arrived");
        let rate = bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
        println!("{mib} MiB at {rate:.0} MB/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("median {:.0} MB/s", rates[TRANSFERS / 2]);
}
