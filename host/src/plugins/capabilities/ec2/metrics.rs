//! Prometheus families of the `ec2` capability: how often each EC2 operation is called,
//! how it ended, and how long it took, so an operator sees throttling (`RequestLimitExceeded`
//! counts as `ec2-error`) and a slow or unreachable endpoint (`unavailable`) per operation.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The WIT name of the operation (`run-instances`).
    operation: &'static str,
    /// `ok`, `ec2-error`, `unavailable`, `invalid` or `too-large`.
    outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~41 s: a call to a local moto takes milliseconds, a throttled RunInstances
    // with retries tens of seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The capability's metric families. Clones share the same series, so one value serves
/// every plugin instance; [`Ec2Metrics::default`] makes families that no registry exports
/// (for callers that do not serve metrics).
#[derive(Debug, Clone)]
pub struct Ec2Metrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<CallLabels, Histogram, fn() -> Histogram>,
}

impl Default for Ec2Metrics {
    fn default() -> Self {
        Ec2Metrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Ec2Metrics {
    /// Register the families as `cellet_ec2_calls_total` and
    /// `cellet_ec2_call_duration_seconds` (the registry adds its own prefix, if any).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cellet_ec2_calls",
            "EC2 API calls made for plugins, by operation and outcome",
            self.calls.clone(),
        );
        registry.register_with_unit(
            "cellet_ec2_call_duration",
            "Duration of EC2 API calls made for plugins, retries included",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    pub(super) fn observe(
        &self,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let labels = CallLabels { operation, outcome };
        self.calls.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn calls_are_exported_by_operation_and_outcome() {
        let metrics = Ec2Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe("run-instances", "ok", Duration::from_millis(20));
        metrics.observe("run-instances", "ok", Duration::from_millis(30));
        metrics.observe(
            "terminate-instances",
            "ec2-error",
            Duration::from_millis(10),
        );

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"cellet_ec2_calls_total{operation="run-instances",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cellet_ec2_call_duration_seconds_count{operation="terminate-instances",outcome="ec2-error"} 1"#),
            "{text}"
        );
    }
}
