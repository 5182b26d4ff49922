//! Prometheus metrics of a node, served at `/metrics` on its local API (no bearer token:
//! counts and latencies only, nothing about any patient).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

use iryo_p2p::metrics::{latencies, Labels, Latencies};

pub struct Metrics {
    registry: Registry,
    /// Fetches this node asked for, by outcome.
    pub fetches: Family<Labels, Counter>,
    /// Fetches other nodes asked of this one, by outcome.
    pub served: Family<Labels, Counter>,
    /// Keyed fetches answered again from the kept answer.
    pub fetches_kept: Counter,
    pub checks: Family<Labels, Counter>,
    pub notifications_delivered: Counter,
    pub outbox_pending: Gauge,
    /// The agency's clock minus this node's, as the last grant showed.
    pub clock_drift_seconds: Gauge,
    /// Times the directory showed an audit log that does not extend the one kept.
    pub witness_alarms: Counter,
    pub requests: Latencies,
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            fetches: Family::default(),
            served: Family::default(),
            fetches_kept: Counter::default(),
            checks: Family::default(),
            notifications_delivered: Counter::default(),
            outbox_pending: Gauge::default(),
            clock_drift_seconds: Gauge::default(),
            witness_alarms: Counter::default(),
            requests: latencies(),
        };
        let mut registry = Registry::with_prefix("iryo_node");
        registry.register(
            "fetches",
            "Fetches requested, by outcome",
            m.fetches.clone(),
        );
        registry.register(
            "served",
            "Fetches served to peers, by outcome",
            m.served.clone(),
        );
        registry.register(
            "fetches_kept",
            "Retried fetches (same idempotency key) answered from the kept answer",
            m.fetches_kept.clone(),
        );
        registry.register(
            "checks",
            "Eligibility checks forwarded, by answer",
            m.checks.clone(),
        );
        registry.register(
            "notifications_delivered",
            "Notifications the directory acknowledged",
            m.notifications_delivered.clone(),
        );
        registry.register(
            "outbox_pending",
            "Notifications waiting in the outbox",
            m.outbox_pending.clone(),
        );
        registry.register(
            "clock_drift_seconds",
            "The agency's clock minus this node's, as the last grant showed",
            m.clock_drift_seconds.clone(),
        );
        registry.register(
            "witness_alarms",
            "Times the directory showed an audit log that does not extend the witnessed one kept",
            m.witness_alarms.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a local API request, by route",
            m.requests.clone(),
        );
        Self { registry, ..m }
    }

    pub fn render(&self) -> String {
        iryo_p2p::metrics::render(&self.registry)
    }

    pub fn count(family: &Family<Labels, Counter>, outcome: impl Into<String>) {
        iryo_p2p::metrics::count(family, "outcome", outcome);
    }

    pub fn observe(&self, route: &str, took: Duration) {
        self.requests
            .get_or_create(&vec![("route", route.into())])
            .observe(took.as_secs_f64());
    }
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}
