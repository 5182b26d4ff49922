//! The Prometheus plumbing both services share: label sets, latency histograms and the
//! text rendering. Each service keeps its own registry and names.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Latencies by label set, in seconds.
pub type Latencies = Family<Labels, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 100 µs to about 3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// An empty family of latency histograms.
pub fn latencies() -> Latencies {
    Family::new_with_constructor(latency as fn() -> Histogram)
}

/// Adds one to the series of `family` whose label `name` is `value`.
pub fn count(family: &Family<Labels, Counter>, name: &'static str, value: impl Into<String>) {
    family.get_or_create(&vec![(name, value.into())]).inc();
}

/// The registry in Prometheus text format; empty if it cannot be encoded.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_latencies() {
        let mut registry = Registry::with_prefix("t");
        let counts: Family<Labels, Counter> = Family::default();
        let times = latencies();
        registry.register("things", "Things", counts.clone());
        registry.register("took_seconds", "Time", times.clone());
        count(&counts, "outcome", "ok");
        times
            .get_or_create(&vec![("route", "x".into())])
            .observe(0.002);
        let text = render(&registry);
        assert!(text.contains("t_things_total{outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("t_took_seconds_bucket"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
