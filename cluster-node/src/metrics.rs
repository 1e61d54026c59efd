//! Prometheus metrics of a node, rendered in the text format at `GET /metrics`.
//!
//! Request counters and latency histograms are updated by the HTTP layer; Raft gauges
//! (term, leadership, applied revision) are read from openraft's metrics at scrape time,
//! so they are never stale.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aspen_api::server::ServeStats;

use aspen_api::wire::ReplicaReport;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::raft_types::AspenRaft;
use crate::stages::Stages;

/// Labels of a request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The operation (`get`, `put`, `scan`, `cas`, ...).
    pub op: &'static str,
    /// HTTP status class of the answer (`2xx`, `4xx`, `5xx`).
    pub status: &'static str,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation.
    pub op: &'static str,
}

/// Labels of the per-protocol refusal count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlpnLabels {
    alpn: String,
}

/// Labels of the per-source replica gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// All metrics of one node.
pub struct NodeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram>,
    term: Gauge,
    is_leader: Gauge,
    applied: Gauge,
    applied_index: Gauge,
    last_log: Gauge,
    members: Gauge,
    refused: Family<AlpnLabels, Gauge>,
    replica_revision: Family<SourceLabels, Gauge>,
    replica_lag_revisions: Family<SourceLabels, Gauge>,
    replica_lag_seconds: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    http_refused: Gauge,
    blob_puts: Gauge,
    /// What the node's HTTP listener counts (handed to `serve_with`).
    pub http: Arc<ServeStats>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for NodeMetrics {
    fn default() -> Self {
        NodeMetrics::with_stages(&Stages::default())
    }
}

impl NodeMetrics {
    /// The node's metrics, its write stage histograms among them.
    pub fn with_stages(stages: &Stages) -> Self {
        let mut registry = Registry::with_prefix("aspen");
        registry.register(
            "write_stage_seconds",
            "Time of each stage a write passes on this node (see cluster-node/src/stages.rs)",
            stages.family(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let (term, is_leader, applied, applied_index, last_log, members) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by operation and status class",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by operation",
            latency.clone(),
        );
        registry.register("raft_term", "Current Raft term", term.clone());
        registry.register(
            "raft_is_leader",
            "1 when this node is the leader",
            is_leader.clone(),
        );
        registry.register(
            "applied_revision",
            "The cluster revision this node's copy has reached",
            applied.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest Raft log index applied on this node",
            applied_index.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Highest Raft log index on this node",
            last_log.clone(),
        );
        registry.register(
            "cluster_members",
            "Members in the current membership",
            members.clone(),
        );
        let refused = Family::<AlpnLabels, Gauge>::default();
        registry.register(
            "connections_refused",
            "iroh connections refused by this node's access policy since start, by protocol",
            refused.clone(),
        );
        let replica_revision = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "replica_revision",
            "The owner revision this node's replica of a source cluster is exact at",
            replica_revision.clone(),
        );
        let replica_lag_revisions = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "replica_lag_revisions",
            "Owner revisions this node's replica of a source cluster lacks",
            replica_lag_revisions.clone(),
        );
        let replica_lag_seconds = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "replica_lag_seconds",
            "Upper bound on how stale this node's replica of a source cluster is (absent while unknown)",
            replica_lag_seconds.clone(),
        );
        let http_refused = Gauge::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed on accept since start because the listener served the most it allows",
            http_refused.clone(),
        );
        let blob_puts = Gauge::default();
        registry.register(
            "blob_puts_in_flight",
            "Values being taken as blobs by this node now (at most MAX_PUTS_IN_FLIGHT; past it puts are refused with 503 overloaded)",
            blob_puts.clone(),
        );
        NodeMetrics {
            registry,
            requests,
            latency,
            term,
            is_leader,
            applied,
            applied_index,
            last_log,
            members,
            refused,
            replica_revision,
            replica_lag_revisions,
            replica_lag_seconds,
            http_refused,
            blob_puts,
            http: Arc::new(ServeStats::default()),
        }
    }
}

impl NodeMetrics {
    /// Counts one request and its latency.
    pub fn observe(&self, op: &'static str, status: u16, seconds: f64) {
        let status = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels { op, status })
            .inc();
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(seconds);
    }

    /// Sets the count of values being taken as blobs (read before each render).
    pub fn set_blob_puts(&self, in_flight: usize) {
        self.blob_puts.set(in_flight as i64);
    }

    /// Renders every metric, refreshing the Raft gauges from `raft`, the applied revision
    /// from `revision`, the refusal counts from `refused` (and the HTTP listener's) and the
    /// replica gauges from `replicas` first.
    pub fn render(
        &self,
        raft: &AspenRaft,
        revision: u64,
        refused: &[(String, u64)],
        replicas: &[ReplicaReport],
    ) -> String {
        for (alpn, n) in refused {
            self.refused
                .get_or_create(&AlpnLabels { alpn: alpn.clone() })
                .set(*n as i64);
        }
        for r in replicas {
            let labels = SourceLabels {
                source: r.source.clone(),
            };
            self.replica_revision
                .get_or_create(&labels)
                .set(r.revision as i64);
            self.replica_lag_revisions
                .get_or_create(&labels)
                .set(r.lag_revisions as i64);
            match r.lag_ms {
                Some(ms) => {
                    self.replica_lag_seconds
                        .get_or_create(&labels)
                        .set(ms as f64 / 1000.0);
                }
                None => {
                    self.replica_lag_seconds.remove(&labels);
                }
            }
        }
        self.http_refused.set(self.http.refused() as i64);
        let m = raft.metrics().borrow().clone();
        self.term.set(m.current_term as i64);
        self.is_leader.set((m.current_leader == Some(m.id)) as i64);
        self.applied.set(revision as i64);
        self.applied_index
            .set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.last_log.set(m.last_log_index.unwrap_or(0) as i64);
        self.members.set(m.membership_config.nodes().count() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
