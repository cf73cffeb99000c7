//! Prometheus metrics of the plugin runtime.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `cellet_plugin_calls_total` | counter | plugin, slot, function |
//! | `cellet_plugin_errors_total` | counter | plugin, slot, function, kind |
//! | `cellet_plugin_traps_total` | counter | plugin, slot, function |
//! | `cellet_plugin_call_duration_seconds` | histogram | plugin, slot, function |
//! | `cellet_plugin_instance_memory_bytes` | gauge | plugin, slot |
//! | `cellet_plugin_instances_created_total` | counter | plugin, slot |
//! | `cellet_plugin_cache_lookups_total` | counter | outcome |
//!
//! `kind` is one of [`ErrorKind`]'s names. `instance_memory_bytes` is the linear memory
//! held by the plugin's live instances (warm or busy), summed. Label values come from the
//! config (plugin names) and from the host's own function names: never from a guest.
//!
//! Handles are resolved once per plugin and function at load time, so a call costs two
//! counter increments and one histogram observation (an uncontended `parking_lot` lock),
//! with no label lookup and no allocation.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::plugins::spec::Slot;

/// What kind of failure a call ended in (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The guest returned its own WIT `plugin-error`.
    Plugin,
    Trap,
    Deadline,
    Memory,
    InvalidOutput,
    /// A new instance could not be created (or its `init` failed).
    Instantiate,
}

impl ErrorKind {
    const ALL: [ErrorKind; 6] = [
        ErrorKind::Plugin,
        ErrorKind::Trap,
        ErrorKind::Deadline,
        ErrorKind::Memory,
        ErrorKind::InvalidOutput,
        ErrorKind::Instantiate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Plugin => "plugin",
            ErrorKind::Trap => "trap",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Memory => "memory",
            ErrorKind::InvalidOutput => "invalid-output",
            ErrorKind::Instantiate => "instantiate",
        }
    }
}

/// Outcome of a compiled-component cache lookup (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache without compiling.
    Hit,
    /// Not in the cache: compiled and stored.
    Miss,
    /// In the cache but unreadable: compiled again and replaced.
    Recompiled,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Recompiled => "recompiled",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    slot: &'static str,
    function: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    plugin: String,
    slot: &'static str,
    function: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    slot: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    outcome: &'static str,
}

/// Buckets from 1 µs to about 67 s, ×4 apart: warm calls take microseconds, cloud calls
/// take seconds.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 4.0, 14))
}

/// The runtime's metric families. Clones share the same series.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    traps: Family<CallLabels, Counter>,
    duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    memory: Family<PluginLabels, Gauge>,
    instances_created: Family<PluginLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        PluginMetrics {
            calls: Family::default(),
            errors: Family::default(),
            traps: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            memory: Family::default(),
            instances_created: Family::default(),
            cache: Family::default(),
        }
    }
}

impl PluginMetrics {
    /// Register every family in `registry` (the one the host serves on `/metrics`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cellet_plugin_calls",
            "Calls into plugins",
            self.calls.clone(),
        );
        registry.register(
            "cellet_plugin_errors",
            "Plugin calls that failed, by kind of failure",
            self.errors.clone(),
        );
        registry.register(
            "cellet_plugin_traps",
            "Plugin calls that trapped (the instance was discarded)",
            self.traps.clone(),
        );
        registry.register(
            "cellet_plugin_call_duration_seconds",
            "Duration of plugin calls, instance creation included",
            self.duration.clone(),
        );
        registry.register(
            "cellet_plugin_instance_memory_bytes",
            "Linear memory held by a plugin's live instances",
            self.memory.clone(),
        );
        registry.register(
            "cellet_plugin_instances_created",
            "Plugin instances created (first use, growth, or replacement after a failure)",
            self.instances_created.clone(),
        );
        registry.register(
            "cellet_plugin_cache_lookups",
            "Compiled-component cache lookups by outcome",
            self.cache.clone(),
        );
    }

    pub(crate) fn record_cache(&self, outcome: CacheOutcome) {
        self.cache
            .get_or_create(&CacheLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The series of one plugin, for the functions of its world.
    pub(crate) fn for_plugin(
        &self,
        plugin: &str,
        slot: Slot,
        functions: &[&'static str],
    ) -> PluginSeries {
        let slot_label = slot.config_key();
        let plugin_labels = PluginLabels {
            plugin: plugin.to_owned(),
            slot: slot_label,
        };
        let functions = functions
            .iter()
            .map(|&function| {
                let labels = CallLabels {
                    plugin: plugin.to_owned(),
                    slot: slot_label,
                    function,
                };
                let errors = ErrorKind::ALL.map(|kind| {
                    self.errors
                        .get_or_create(&ErrorLabels {
                            plugin: plugin.to_owned(),
                            slot: slot_label,
                            function,
                            kind: kind.as_str(),
                        })
                        .clone()
                });
                CallMetrics {
                    function,
                    calls: self.calls.get_or_create(&labels).clone(),
                    traps: self.traps.get_or_create(&labels).clone(),
                    duration: self.duration.get_or_create(&labels).clone(),
                    errors,
                }
            })
            .collect();
        PluginSeries {
            functions,
            memory: self.memory.get_or_create(&plugin_labels).clone(),
            instances_created: self.instances_created.get_or_create(&plugin_labels).clone(),
        }
    }
}

/// The series of one plugin.
#[derive(Debug, Clone)]
pub(crate) struct PluginSeries {
    functions: Vec<CallMetrics>,
    pub(crate) memory: Gauge,
    pub(crate) instances_created: Counter,
}

impl PluginSeries {
    /// The series of `function`. Every function a handle calls was listed at load, so a
    /// miss is a bug in this module's callers.
    pub(crate) fn function(&self, function: &'static str) -> &CallMetrics {
        self.functions
            .iter()
            .find(|m| m.function == function)
            .unwrap_or_else(|| panic!("no metrics series for plugin function `{function}`"))
    }
}

/// The series of one function of one plugin.
#[derive(Debug, Clone)]
pub(crate) struct CallMetrics {
    function: &'static str,
    calls: Counter,
    traps: Counter,
    duration: Histogram,
    errors: [Counter; ErrorKind::ALL.len()],
}

impl CallMetrics {
    pub(crate) fn call(&self, took: Duration) {
        self.calls.inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub(crate) fn error(&self, kind: ErrorKind) {
        let index = ErrorKind::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or_default();
        self.errors[index].inc();
        if kind == ErrorKind::Trap {
            self.traps.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn series_are_exported_with_their_labels() {
        let metrics = PluginMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let series = metrics.for_plugin("net", Slot::Network, &["plan-pod"]);
        let plan_pod = series.function("plan-pod");
        plan_pod.call(Duration::from_micros(3));
        plan_pod.error(ErrorKind::Trap);
        series.memory.set(65536);
        metrics.record_cache(CacheOutcome::Hit);

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"cellet_plugin_calls_total{plugin="net",slot="network",function="plan-pod"} 1"#,
            r#"cellet_plugin_traps_total{plugin="net",slot="network",function="plan-pod"} 1"#,
            r#"cellet_plugin_errors_total{plugin="net",slot="network",function="plan-pod",kind="trap"} 1"#,
            r#"cellet_plugin_errors_total{plugin="net",slot="network",function="plan-pod",kind="deadline"} 0"#,
            r#"cellet_plugin_instance_memory_bytes{plugin="net",slot="network"} 65536"#,
            r#"cellet_plugin_cache_lookups_total{outcome="hit"} 1"#,
            r#"cellet_plugin_call_duration_seconds_count{plugin="net",slot="network",function="plan-pod"} 1"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
