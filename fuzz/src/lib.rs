//! Fuzz bodies for every decoder that takes bytes from outside an Aspen process: one
//! plain function `fn(&[u8])` per target, which panics when the input breaks a property.
//! The cargo-fuzz targets (`fuzz/targets`, nightly) only call these bodies, and the
//! integration test `tests/it/fuzz_corpus.rs` (stable, in `cargo test --workspace`)
//! replays every committed corpus and regression input through them, so a regression
//! fails CI without nightly or cargo-fuzz.
//!
//! Every body runs the product's own decoding path (the wire decoders, the HTTP handlers
//! behind the real axum app, the config loaders), never a copy of it, and checks cheap
//! properties beyond "no panic": decode, encode and decode again gives the same value;
//! what the HTTP layer hands its backend is what the request said and what the caller's
//! token grants; what a loader accepts is within the documented limits.
//!
//! # Layout
//!
//! - [`wire`]: `kv_message` (`aspen/kv/2` requests a node decodes and answers a router
//!   decodes), `raft_message` (`aspen/raft/2` RPCs and answers), `snapshot`
//!   (`aspen/snapshot/1` offers and replies, snapshot streams), `docs_push`
//!   (`aspen/docs-push/1` requests and entries), `blob_hold_message`
//!   (`aspen/blob-hold/1` requests and answers) and `value_message` (`aspen/value/1`
//!   request and answer headers).
//! - [`http`]: the shared harness (the real KV app over a recording backend, one request
//!   at a time) and the checks every answer passes.
//! - `http/body.rs`: `http_body`, the JSON bodies of `/v1/batch`, `/v1/cas`, `/v1/cad`,
//!   `/v1/txn` and `/v1/lease`.
//! - `http/request.rs`: `http_request`, the rest of a request: the percent-decoded key in
//!   the path, the query (a scan's continuation token `after`, `limit`, `max_lag`, a
//!   watch's `resume` token...), `Last-Event-ID`, the lease id in the path and the bearer
//!   token.
//! - [`config`]: `config`, node and router TOML files, loaded and validated from text.
//! - [`corpus`]: where each target's committed corpus and regression inputs live.
//! - `seeds` (tests): valid inputs of every kind that seeded each corpus, and the test
//!   that writes them.
//!
//! # Adding a target
//!
//! 1. Write the body, `pub fn NAME(data: &[u8])`, in the module of its layer (or a new
//!    one): decode with the product's own function, then assert what must hold.
//! 2. Add it to [`TARGETS`].
//! 3. Add `fuzz/targets/fuzz_targets/NAME.rs` (copy a sibling: it only calls the body)
//!    and its `[[bin]]` in `fuzz/targets/Cargo.toml`; the replay test refuses a target
//!    without both.
//! 4. Add its seeds in `seeds.rs` and write them (its module docs say how; the replay
//!    test refuses an empty corpus), run it with `nice -n 10 scripts/fuzz.sh NAME 600`,
//!    and commit the minimized corpus the script leaves in `fuzz/corpus/NAME/`.
//! 5. Put every input that found a bug in `fuzz/regressions/NAME/`, next to the fix and
//!    its unit test, and record the run in docs/RELIABILITY.md ("Fuzzing").

pub mod config;
pub mod corpus;
pub mod http;
pub mod wire;

#[cfg(test)]
mod seeds;

/// One fuzz target: its name (of the cargo-fuzz binary and the corpus directories), its
/// body, and what it covers.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The cargo-fuzz target's name.
    pub name: &'static str,
    /// The body: panics on a broken property.
    pub body: fn(&[u8]),
    /// What it feeds and checks, in a line.
    pub covers: &'static str,
}

/// Every target, in the order of docs/RELIABILITY.md.
pub const TARGETS: &[Target] = &[
    Target {
        name: "kv_message",
        body: wire::kv_message,
        covers: "aspen/kv/2 requests and answers: decode, re-encode, decode again",
    },
    Target {
        name: "raft_message",
        body: wire::raft_message,
        covers: "aspen/raft/2 requests and answers: decode, re-encode, decode again",
    },
    Target {
        name: "snapshot",
        body: wire::snapshot,
        covers: "aspen/snapshot/1 offers and replies, and snapshot streams read through and written again",
    },
    Target {
        name: "docs_push",
        body: wire::docs_push,
        covers: "aspen/docs-push/1 requests and signed entries: decode, re-encode, decode again",
    },
    Target {
        name: "blob_hold_message",
        body: wire::blob_hold_message,
        covers: "aspen/blob-hold/1 requests and answers: decode, re-encode, decode again",
    },
    Target {
        name: "value_message",
        body: wire::value_message,
        covers: "aspen/value/1 request and answer headers: decode, re-encode, decode again",
    },
    Target {
        name: "http_body",
        body: http::body::http_body,
        covers: "JSON bodies of batch, cas, cad, txn and lease grant through the real app",
    },
    Target {
        name: "http_request",
        body: http::request::http_request,
        covers: "path key, query, resume token, lease id and bearer token through the app",
    },
    Target {
        name: "config",
        body: config::config,
        covers: "node and router TOML: load and validate from text, limits, round trip",
    },
];
