//! The Node object: registration, and the status loop that reports it.
//!
//! Registration and status are two server-side applies with the field manager `cellet`:
//! one on the object (labels and the taint), one on the `status` subresource (capacity,
//! conditions, addresses, node info). Each apply states everything cellet owns, so it is
//! idempotent and a restart is the same call as a first start.
//!
//! Reporting follows the kubelet when the node Lease is on (it always is here): the status
//! is computed every `node-status-update-frequency` (10 s) and sent only when it changed,
//! or when `node-status-report-frequency` (5 min) passed since the last report. Liveness is
//! the Lease's job ([`super::lease`]); the status carries facts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::time::Instant;

use super::provider::Plugins;
use super::{FIELD_MANAGER, KubeSettings};
use crate::config::NodeConfig;
use crate::plugins::CallError;
use crate::plugins::bindings::NodeResources;

/// The taint that keeps pods off the virtual node unless they tolerate it, as every
/// virtual kubelet does: a pod must opt in to running in a cell.
pub const TAINT_KEY: &str = "virtual-kubelet.io/provider";
pub const TAINT_VALUE: &str = "cellet";

/// The condition types a node reports, in the kubelet's order.
const CONDITIONS: [&str; 5] = [
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

/// Errors of registering the node or reporting its status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Reading the existing Node failed.
    #[error("failed to read node {node}: {source}")]
    Get { node: String, source: kube::Error },
    /// Applying labels and taint failed.
    #[error("failed to register node {node}: {source}")]
    Register { node: String, source: kube::Error },
    /// Applying the status failed.
    #[error("failed to update the status of node {node}: {source}")]
    Status { node: String, source: kube::Error },
    /// The cloud plugin could not say the node's capacity.
    #[error("failed to get the capacity of node {node}: {source}")]
    Capacity { node: String, source: CallError },
}

/// `v1.37.2-cellet-0.1.0`: the Kubernetes API the node speaks, then what implements it
/// (virtual kubelets report their own version this way; `kubectl get nodes` shows it).
pub fn kubelet_version() -> String {
    format!("v1.37.2-cellet-{}", env!("CARGO_PKG_VERSION"))
}

/// The Go name of this machine's architecture, as `kubernetes.io/arch` wants it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The labels cellet puts on its node: those every virtual kubelet sets, then the config's
/// (which win on a clash: the operator wrote them).
pub fn labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        ("type", "virtual-kubelet"),
        ("kubernetes.io/role", "agent"),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", go_arch()),
        ("kubernetes.io/hostname", config.name.as_str()),
        ("node.kubernetes.io/instance-type", "cellet"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(config.labels.clone());
    labels
}

fn taint() -> Taint {
    Taint {
        key: TAINT_KEY.into(),
        value: Some(TAINT_VALUE.into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

/// Register the node: apply its labels and make sure it carries cellet's taint.
///
/// `spec.taints` is an atomic list, so an apply owns all of it: the taints already on the
/// node (the node lifecycle controller's `not-ready`, an operator's own) are kept in the
/// applied list, so registering never removes a taint cellet did not put there.
pub async fn register(api: &Api<Node>, config: &NodeConfig) -> Result<Node, NodeError> {
    let node = config.name.clone();
    let existing = api.get_opt(&node).await.map_err(|source| NodeError::Get {
        node: node.clone(),
        source,
    })?;
    let mut taints: Vec<Taint> = existing
        .as_ref()
        .and_then(|n| n.spec.as_ref())
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != TAINT_KEY)
        .collect();
    taints.push(taint());
    let body = Node {
        metadata: ObjectMeta {
            name: Some(node.clone()),
            labels: Some(labels(config)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        }),
        status: None,
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&node, &params, &Patch::Apply(&body))
        .await
        .map_err(|source| NodeError::Register {
            node: node.clone(),
            source,
        })?;
    tracing::info!(node = %node, created = existing.is_none(), "node registered");
    Ok(applied)
}

/// The status cellet reports for its node at `now`.
///
/// Transition times come from `previous` when a condition keeps its status, so a report
/// that changes nothing but the heartbeat compares equal by [`same_report`].
pub fn desired_status(
    config: &NodeConfig,
    capacity: &NodeResources,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", format!("{}m", capacity.cpu_millis)),
        ("memory", capacity.memory_bytes.to_string()),
        ("pods", capacity.pods.to_string()),
        (
            "ephemeral-storage",
            capacity.ephemeral_storage_bytes.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let conditions = CONDITIONS
        .iter()
        .map(|&kind| {
            let (status, reason, message) = match kind {
                "Ready" => ("True", "KubeletReady", "cellet is posting ready status"),
                "MemoryPressure" => (
                    "False",
                    "KubeletHasSufficientMemory",
                    "each pod has a cell of its own",
                ),
                "DiskPressure" => (
                    "False",
                    "KubeletHasNoDiskPressure",
                    "each pod has a cell of its own",
                ),
                "PIDPressure" => (
                    "False",
                    "KubeletHasSufficientPID",
                    "each pod has a cell of its own",
                ),
                _ => (
                    "False",
                    "CelletNetworkReady",
                    "cell networking is set up per pod by the network strategy",
                ),
            };
            let transition = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == status))
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            NodeCondition {
                type_: kind.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: Some(Time(now)),
                last_transition_time: Some(transition),
            }
        })
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.internal_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().into(),
            operating_system: "linux".into(),
            os_image: format!("cellet {version}"),
            kernel_version: String::new(),
            kubelet_version: kubelet_version(),
            kube_proxy_version: String::new(),
            container_runtime_version: format!("cellet://{version}"),
            // The node is not one machine: machine, boot and system ids of the host would
            // describe the wrong thing, so they stay empty.
            machine_id: String::new(),
            boot_id: String::new(),
            system_uuid: String::new(),
            swap: None,
            running_in_user_namespace: None,
        }),
        // The API server then proxies kubectl's WebSocket exec, attach and port-forward to
        // the kubelet API as they are, and the cell agents speak them (api::streams).
        declared_features: Some(vec![WEBSOCKETS_FEATURE.into()]),
        ..Default::default()
    }
}

/// The node feature (`status.declaredFeatures`) that makes the API server pass WebSocket
/// streaming requests through to the node instead of translating them to SPDY.
pub const WEBSOCKETS_FEATURE: &str = "ExtendWebSocketsToKubelet";

/// Whether two reports say the same thing, heartbeat times aside.
pub fn same_report(a: &NodeStatus, b: &NodeStatus) -> bool {
    fn without_heartbeats(s: &NodeStatus) -> NodeStatus {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    }
    without_heartbeats(a) == without_heartbeats(b)
}

/// Apply a status to the node's `status` subresource.
pub async fn apply_status(
    api: &Api<Node>,
    name: &str,
    status: &NodeStatus,
) -> Result<(), NodeError> {
    let body = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: None,
        status: Some(status.clone()),
    };
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| NodeError::Status {
        node: name.into(),
        source,
    })
}

/// Report the node's status now, then keep it current until the future is dropped.
///
/// *Expected flow*: every `node_status_update_frequency` ask the cloud plugin for the
/// capacity, compute the status, send it when it changed or when the report frequency
/// passed; the first tick fires at once, so a new node has its capacity within a call.
/// *Guarantees*: conditions keep their transition times across reports and restarts (the
/// registered node's status seeds the comparison). *Caveats*: a failing capacity call keeps the last known capacity (a cloud API hiccup
/// must not shrink the node); with none known yet, the loop retries before reporting.
/// *Errors*: none escape; failures are logged and retried at the next tick.
pub async fn status_loop(
    api: Api<Node>,
    config: NodeConfig,
    settings: KubeSettings,
    plugins: &Plugins,
    registered: Node,
) {
    let mut reported: Option<NodeStatus> = registered.status;
    let mut capacity: Option<NodeResources> = None;
    let mut last_report: Option<Instant> = None;
    let mut tick = tokio::time::interval(settings.node_status_update_frequency);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match plugins.cloud.node_capacity().await {
            Ok(c) => capacity = Some(c),
            Err(source) => {
                let error = NodeError::Capacity {
                    node: config.name.clone(),
                    source,
                };
                tracing::warn!(%error, kept_previous = capacity.is_some(), "node capacity unknown");
            }
        }
        let Some(capacity) = &capacity else { continue };
        let desired = desired_status(&config, capacity, reported.as_ref(), Timestamp::now());
        let changed = reported.as_ref().is_none_or(|r| !same_report(r, &desired));
        let due = last_report.is_none_or(|t| t.elapsed() >= settings.node_status_report_frequency);
        if !(changed || due) {
            continue;
        }
        match apply_status(&api, &config.name, &desired).await {
            Ok(()) => {
                tracing::debug!(node = %config.name, changed, "node status reported");
                reported = Some(desired);
                last_report = Some(Instant::now());
            }
            Err(error) => tracing::warn!(%error, "node status not reported; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            name: "cellet-0".into(),
            controller_id: "c0".into(),
            internal_ip: "10.1.2.3".parse().unwrap(),
            kubelet_port: 10250,
            labels: [("kubernetes.io/role".to_string(), "edge".to_string())].into(),
        }
    }

    fn capacity() -> NodeResources {
        NodeResources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            pods: 100,
            ephemeral_storage_bytes: 1 << 40,
        }
    }

    #[test]
    fn labels_are_the_virtual_kubelet_ones_plus_the_config() {
        let l = labels(&config());
        assert_eq!(l["type"], "virtual-kubelet");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert_eq!(l["node.kubernetes.io/instance-type"], "cellet");
        assert_eq!(l["kubernetes.io/role"], "edge", "the config wins");
    }

    #[test]
    fn status_keeps_transition_times_and_differs_only_by_heartbeat() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let t1 = Timestamp::from_second(1_000_010).unwrap();
        let first = desired_status(&config(), &capacity(), None, t0);
        let second = desired_status(&config(), &capacity(), Some(&first), t1);
        let ready = |s: &NodeStatus| s.conditions.as_ref().unwrap()[0].clone();
        assert_eq!(ready(&second).last_transition_time, Some(Time(t0)));
        assert_eq!(ready(&second).last_heartbeat_time, Some(Time(t1)));
        assert!(same_report(&first, &second));

        let bigger = NodeResources {
            pods: 200,
            ..capacity()
        };
        let third = desired_status(&config(), &bigger, Some(&second), t1);
        assert!(!same_report(&second, &third));
        assert_eq!(
            third.capacity.as_ref().unwrap()["pods"],
            Quantity("200".into())
        );
        assert_eq!(
            third.capacity.as_ref().unwrap()["cpu"],
            Quantity("4000m".into())
        );
    }
}
