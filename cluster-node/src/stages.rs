//! Where a write's time goes on a node, stage by stage: one latency histogram per stage,
//! exported at `/metrics` as `aspen_write_stage_seconds{stage}` so that the breakdown of
//! docs/BENCHMARKS.md ("Where a write's time goes") can be taken again on any cluster.
//!
//! The stages, in the order a write on the leader passes them:
//!
//! - `propose`: one proposal through openraft (`client_write`, from the proposer's batch
//!   to the applied result): everything below plus openraft's own queueing;
//! - `log_queue`: an append waiting for the log writer thread;
//! - `log_write`: one log transaction, its fsync included (appends of many proposals,
//!   votes and purges share it);
//! - `append_entries`: one AppendEntries round trip to a follower that carries entries,
//!   the follower's log fsync included;
//! - `append_serve` (on the follower): serving one such AppendEntries, from its decoded
//!   request to its encoded answer, the follower's log fsync included; the round trip
//!   less this is what the transport, the hand-offs around it and the message's encoding
//!   and decoding cost (small for a lone write, not for a batch near the message limit);
//! - `apply`: applying a batch of committed entries to the state machine, from handing
//!   it to the blocking pool to its commit.
//!
//! A value kept as a blob passes two more on the node that takes its body, before its
//! reference is proposed:
//!
//! - `blob_import`: the body into this node's blob store, hashed, written and flushed
//!   (as fast as the body comes: through a router, the router's hop is in it);
//! - `blob_hold`: a majority of the cluster holding the blob durably (the other members
//!   copy it from this node; the first majority to answer ends it);
//!
//! and on each member asked to hold it:
//!
//! - `blob_fetch`: copying the blob from the asking node's file and checking it against
//!   its hash (or, when that fails, fetching it through iroh-blobs), and flushing it (a
//!   blob this member already holds counts too, at next to no time).
//!
//! The histograms' buckets end at about 5 s; a large blob's stages run longer and are
//! counted past the last bucket, their sums (so their means) stay exact.
//!
//! What the HTTP layer adds around them is `aspen_http_request_duration_seconds`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// One stage of a write (see the module docs).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    Propose = 0,
    LogQueue = 1,
    LogWrite = 2,
    AppendEntries = 3,
    Apply = 4,
    AppendServe = 5,
    BlobImport = 6,
    BlobHold = 7,
    BlobFetch = 8,
}

impl Stage {
    const ALL: [Stage; 9] = [
        Stage::Propose,
        Stage::LogQueue,
        Stage::LogWrite,
        Stage::AppendEntries,
        Stage::Apply,
        Stage::AppendServe,
        Stage::BlobImport,
        Stage::BlobHold,
        Stage::BlobFetch,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Propose => "propose",
            Stage::LogQueue => "log_queue",
            Stage::LogWrite => "log_write",
            Stage::AppendEntries => "append_entries",
            Stage::Apply => "apply",
            Stage::AppendServe => "append_serve",
            Stage::BlobImport => "blob_import",
            Stage::BlobHold => "blob_hold",
            Stage::BlobFetch => "blob_fetch",
        }
    }
}

/// The label of a stage histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    stage: &'static str,
}

fn stage_histogram() -> Histogram {
    // 10 µs to ~5 s.
    Histogram::new(exponential_buckets(0.00001, 2.0, 20))
}

/// The stage histograms of one node; clones share them.
#[derive(Clone, Debug)]
pub struct Stages {
    family: Family<StageLabels, Histogram>,
    /// Each stage's histogram of `family`, in [`Stage::ALL`]'s order (a stage's index is
    /// its discriminant), made once so that an observation on the write path takes no
    /// lookup.
    each: [Histogram; Stage::ALL.len()],
}

impl Default for Stages {
    fn default() -> Self {
        let family = Family::new_with_constructor(stage_histogram as fn() -> Histogram);
        let each = Stage::ALL.map(|stage| {
            family
                .get_or_create(&StageLabels {
                    stage: stage.name(),
                })
                .clone()
        });
        Stages { family, each }
    }
}

impl Stages {
    /// Records that one pass through `stage` took `took`.
    pub fn observe(&self, stage: Stage, took: Duration) {
        self.each[stage as usize].observe(took.as_secs_f64());
    }

    /// The histograms, for registering with the node's metrics.
    pub fn family(&self) -> Family<StageLabels, Histogram> {
        self.family.clone()
    }
}
