//! Metrics of the Kubernetes loop, registered in the host's one registry:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `cellet_leader` | gauge | — (1 while this process leads its node) |
//! | `cellet_pod_reconciles_total` | counter | outcome (`ok`, `error`) |
//! | `cellet_hostport_reconciles_total` | counter | outcome (`ok`, `error`) |
//! | `cellet_hostport_rules` | gauge | — (mappings installed after the last reconcile) |
//! | `cellet_cloud_routes_missing` | gauge | — (planned cloud routes not in place after the last route reconcile) |
//! | `cellet_network_strategy_warnings` | gauge | — (warnings of the last cluster plan: every node's and the routes') |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The loop's metrics. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct KubeMetrics {
    leader: Gauge,
    pod_reconciles: Family<OutcomeLabels, Counter>,
    hostport_reconciles: Family<OutcomeLabels, Counter>,
    hostport_rules: Gauge,
    cloud_routes_missing: Gauge,
    network_warnings: Gauge,
}

fn outcome(ok: bool) -> OutcomeLabels {
    OutcomeLabels {
        outcome: if ok { "ok" } else { "error" },
    }
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cellet_leader",
            "1 while this process leads its node, else 0",
            self.leader.clone(),
        );
        registry.register(
            "cellet_pod_reconciles",
            "Reconciles of pods by the pod workers, by outcome",
            self.pod_reconciles.clone(),
        );
        registry.register(
            "cellet_hostport_reconciles",
            "Reconciles of the node's hostPort rules, by outcome",
            self.hostport_reconciles.clone(),
        );
        registry.register(
            "cellet_hostport_rules",
            "hostPort mappings installed on the node after the last reconcile",
            self.hostport_rules.clone(),
        );
        registry.register(
            "cellet_cloud_routes_missing",
            "Cloud routes the network strategy plans that were not in place after the last route reconcile",
            self.cloud_routes_missing.clone(),
        );
        registry.register(
            "cellet_network_strategy_warnings",
            "Warnings of the network strategy's last cluster plan (each is logged)",
            self.network_warnings.clone(),
        );
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn pod_reconciled(&self, ok: bool) {
        self.pod_reconciles.get_or_create(&outcome(ok)).inc();
    }

    /// One reconcile of the node's rules; `installed` when it succeeded.
    pub fn hostport_reconciled(&self, installed: Option<usize>) {
        self.hostport_reconciles
            .get_or_create(&outcome(installed.is_some()))
            .inc();
        if let Some(n) = installed {
            self.hostport_rules.set(n as i64);
        }
    }

    pub fn set_cloud_routes_missing(&self, missing: usize) {
        self.cloud_routes_missing.set(missing as i64);
    }

    pub fn set_network_warnings(&self, warnings: usize) {
        self.network_warnings.set(warnings as i64);
    }
}
