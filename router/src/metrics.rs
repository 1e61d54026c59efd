//! Prometheus metrics of a router, rendered in the text format at `GET /metrics`:
//! requests by operation and status class, their latency, the lag of this region's
//! replicas of other regions' clusters, and HTTP connections refused at the limit.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use aspen_api::admin::ReplicaHealth;
use aspen_api::server::ServeStats;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    status: &'static str,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// Labels of the per-source replica gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// Labels of the per-cluster breaker gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// All metrics of one router.
pub struct RouterMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram>,
    replica_revision: Family<SourceLabels, Gauge>,
    replica_lag_revisions: Family<SourceLabels, Gauge>,
    replica_lag_seconds: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    http_refused: Gauge,
    breaker_open: Family<ClusterLabels, Gauge>,
    breaker_refused: Family<ClusterLabels, Gauge>,
    /// What the router's HTTP listener counts (handed to `serve_with`).
    pub http: Arc<ServeStats>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aspen_router");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
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
        let replica_revision = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "replica_revision",
            "The owner revision this region's replica of a source cluster is exact at",
            replica_revision.clone(),
        );
        let replica_lag_revisions = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "replica_lag_revisions",
            "Owner revisions this region's replica of a source cluster lacks",
            replica_lag_revisions.clone(),
        );
        let replica_lag_seconds = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "replica_lag_seconds",
            "Upper bound on how stale this region's replica of a source cluster is",
            replica_lag_seconds.clone(),
        );
        let http_refused = Gauge::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed on accept since start because the listener served the most it allows",
            http_refused.clone(),
        );
        let breaker_open = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_breaker_open",
            "1 while a cluster's requests are refused at once because no node answered as leader for a whole deadline",
            breaker_open.clone(),
        );
        let breaker_refused = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_breaker_refused",
            "Requests to a cluster refused at once by its open breaker since start",
            breaker_refused.clone(),
        );
        RouterMetrics {
            registry,
            requests,
            latency,
            replica_revision,
            replica_lag_revisions,
            replica_lag_seconds,
            http_refused,
            breaker_open,
            breaker_refused,
            http: Arc::new(ServeStats::default()),
        }
    }
}

impl RouterMetrics {
    /// Records one answered request.
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

    /// Renders every metric in the Prometheus text format, with the replica gauges set from
    /// `replicas` (as `/v1/status` reports them) and the breaker gauges from `breakers`
    /// (cluster, open, refused).
    pub fn render(&self, replicas: &[ReplicaHealth], breakers: &[(String, bool, u64)]) -> String {
        self.http_refused.set(self.http.refused() as i64);
        self.breaker_open.clear();
        self.breaker_refused.clear();
        for (cluster, open, refused) in breakers {
            let labels = ClusterLabels {
                cluster: cluster.clone(),
            };
            self.breaker_open
                .get_or_create(&labels)
                .set(i64::from(*open));
            self.breaker_refused
                .get_or_create(&labels)
                .set(*refused as i64);
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
            match r.lag_seconds {
                Some(s) => {
                    self.replica_lag_seconds.get_or_create(&labels).set(s);
                }
                None => {
                    self.replica_lag_seconds.remove(&labels);
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
