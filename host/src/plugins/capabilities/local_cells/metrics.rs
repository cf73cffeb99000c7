//! Prometheus families of the `local-cells` capability: calls by operation and outcome,
//! their duration, and the cells made and removed, so an operator sees a VPC that fills
//! up, cells that fail to start, and slow kernel work.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// The WIT name of the operation (`create`).
    operation: &'static str,
    /// `ok`, `refused` (a request the capability turns down: bad input, full VPC), or
    /// `failed` (the kernel, a tool or the file system failed).
    outcome: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: a list reads a few files, a create makes a namespace, a veth and a
    // process; a delete may wait seconds for an agent to exit.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The capability's metric families. Clones share the same series;
/// [`LocalCellsMetrics::default`] makes families that no registry exports.
#[derive(Debug, Clone)]
pub struct LocalCellsMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    created: Counter,
    deleted: Counter,
}

impl Default for LocalCellsMetrics {
    fn default() -> Self {
        LocalCellsMetrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            created: Counter::default(),
            deleted: Counter::default(),
        }
    }
}

impl LocalCellsMetrics {
    /// Register the families as `cellet_local_cells_calls_total`,
    /// `cellet_local_cells_call_duration_seconds`, `cellet_local_cells_created_total` and
    /// `cellet_local_cells_deleted_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cellet_local_cells_calls",
            "local-cells capability calls made by plugins, by operation and outcome",
            self.calls.clone(),
        );
        registry.register_with_unit(
            "cellet_local_cells_call_duration",
            "Duration of local-cells capability calls",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "cellet_local_cells_created",
            "Cells created on this machine",
            self.created.clone(),
        );
        registry.register(
            "cellet_local_cells_deleted",
            "Cells deleted from this machine",
            self.deleted.clone(),
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

    pub(super) fn cell_created(&self) {
        self.created.inc();
    }

    pub(super) fn cell_deleted(&self) {
        self.deleted.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn calls_and_cells_are_exported() {
        let metrics = LocalCellsMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.observe("create", "ok", Duration::from_millis(40));
        metrics.observe("create", "failed", Duration::from_millis(5));
        metrics.cell_created();
        metrics.cell_deleted();

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"cellet_local_cells_calls_total{operation="create",outcome="failed"} 1"#,
            r#"cellet_local_cells_call_duration_seconds_count{operation="create",outcome="ok"} 1"#,
            "cellet_local_cells_created_total 1",
            "cellet_local_cells_deleted_total 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
