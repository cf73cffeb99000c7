//! Kubernetes objects as the plugins see them: a `Pod` as the WIT `pod` record, a `Node`
//! as the WIT `cluster-node` record.
//!
//! Only the fields that decide where and how a pod runs cross into WebAssembly; resource
//! quantities are parsed here, once, so every plugin sees plain millicores and bytes.

use k8s_openapi::api::core::v1::{Container as K8sContainer, Node as K8sNode, Pod as K8sPod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::plugins::bindings::{ClusterNode, Container, ContainerPort, KeyValue, Pod, Protocol};

/// The label virtual kubelets (cellet, virtual-kubelet's providers) put on their Node.
pub const VIRTUAL_NODE_LABEL: (&str, &str) = ("type", "virtual-kubelet");

/// Errors of converting a pod for the plugins.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A field the contract needs is absent (a pod from the API always has them).
    #[error("failed to convert pod {pod}: missing field {field}")]
    Missing { pod: String, field: &'static str },
    /// A port or quantity is outside what the contract can carry.
    #[error("failed to convert pod {pod}: field {field}: {reason}")]
    Invalid {
        pod: String,
        field: String,
        reason: String,
    },
}

/// Build the WIT `pod` record of a Kubernetes pod.
pub fn plugin_pod(pod: &K8sPod) -> Result<Pod, ConvertError> {
    let meta = &pod.metadata;
    let key = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    );
    let missing = |field| ConvertError::Missing {
        pod: key.clone(),
        field,
    };
    let spec = pod.spec.as_ref().ok_or_else(|| missing("spec"))?;
    let containers = |list: &[K8sContainer], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, c)| container(c, &key, &format!("spec.{field}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Pod {
        uid: meta.uid.clone().ok_or_else(|| missing("metadata.uid"))?,
        namespace: meta
            .namespace
            .clone()
            .ok_or_else(|| missing("metadata.namespace"))?,
        name: meta.name.clone().ok_or_else(|| missing("metadata.name"))?,
        labels: key_values(meta.labels.as_ref()),
        annotations: key_values(meta.annotations.as_ref()),
        host_network: spec.host_network.unwrap_or(false),
        init_containers: containers(
            spec.init_containers.as_deref().unwrap_or_default(),
            "initContainers",
        )?,
        containers: containers(&spec.containers, "containers")?,
        owner_kind: controller_kind(pod).map(str::to_string),
        runtime_class: spec.runtime_class_name.clone(),
    })
}

/// Build the WIT `cluster-node` record of a Kubernetes node, for a network strategy's
/// cluster planning (`plan-node` under contract 0.2.0, `plan-cluster` under 0.1.0): its PodCIDRs (`spec.podCIDRs`, or the older single `spec.podCIDR`),
/// its InternalIP addresses, its provider ID, and whether it is a virtual node (by the
/// `type=virtual-kubelet` label), whose pods live in cells rather than behind the node.
pub fn cluster_node(node: &K8sNode) -> ClusterNode {
    let spec = node.spec.as_ref();
    let mut pod_cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if pod_cidrs.is_empty() {
        pod_cidrs.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    let internal_ips = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect();
    let (label, value) = VIRTUAL_NODE_LABEL;
    ClusterNode {
        name: node.metadata.name.clone().unwrap_or_default(),
        pod_cidrs,
        internal_ips,
        provider_id: spec
            .and_then(|s| s.provider_id.clone())
            .filter(|id| !id.is_empty()),
        virtual_: node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(label))
            .is_some_and(|v| v == value),
    }
}

/// Kind of the pod's controlling owner (`ReplicaSet`, `DaemonSet`...).
pub fn controller_kind(pod: &K8sPod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str())
}

fn key_values(map: Option<&std::collections::BTreeMap<String, String>>) -> Vec<KeyValue> {
    map.into_iter()
        .flatten()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

fn container(c: &K8sContainer, pod: &str, path: &str) -> Result<Container, ConvertError> {
    let invalid = |field: String, reason: String| ConvertError::Invalid {
        pod: pod.to_string(),
        field,
        reason,
    };
    let port = |value: i32, field: String| {
        u16::try_from(value)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid(field, format!("{value} is not a port (1..=65535)")))
    };
    let mut ports = Vec::new();
    for (i, p) in c.ports.as_deref().unwrap_or_default().iter().enumerate() {
        let at = format!("{path}.ports[{i}]");
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return Err(invalid(
                    format!("{at}.protocol"),
                    format!("unknown protocol `{other}`"),
                ));
            }
        };
        ports.push(ContainerPort {
            name: p.name.clone(),
            container_port: port(p.container_port, format!("{at}.containerPort"))?,
            host_port: p
                .host_port
                .map(|h| port(h, format!("{at}.hostPort")))
                .transpose()?,
            host_ip: p.host_ip.clone().filter(|ip| !ip.is_empty()),
            protocol,
        });
    }
    // Requests decide placement; when only limits are set, Kubernetes defaults the
    // requests to the limits, and so do we.
    let resources = c.resources.as_ref();
    let amount = |name: &str, unit: Unit| -> Result<u64, ConvertError> {
        let requests = resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(name));
        let limits = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|m| m.get(name));
        let Some((quantity, which)) = requests
            .map(|q| (q, "requests"))
            .or(limits.map(|q| (q, "limits")))
        else {
            return Ok(0);
        };
        parse_quantity(quantity, unit)
            .map_err(|reason| invalid(format!("{path}.resources.{which}.{name}"), reason))
    };
    Ok(Container {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        ports,
        cpu_millis: amount("cpu", Unit::Milli)?,
        memory_bytes: amount("memory", Unit::One)?,
    })
}

/// The unit a quantity is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Thousandths (CPU in millicores).
    Milli,
    /// Units (bytes).
    One,
}

/// Parse a Kubernetes quantity (`500m`, `1.5`, `128Mi`, `1G`, `1e3`) into `unit`,
/// rounding up as the API server does when it canonicalises to the smallest unit.
pub fn parse_quantity(quantity: &Quantity, unit: Unit) -> Result<u64, String> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a quantity"))?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..]
                .parse()
                .map_err(|_| format!("`{text}` has an invalid exponent"))?;
            10f64.powi(e)
        }
        _ => return Err(format!("`{text}` has an unknown suffix `{suffix}`")),
    };
    let scaled = value * factor * if unit == Unit::Milli { 1e3 } else { 1.0 };
    if !scaled.is_finite() || scaled < 0.0 || scaled >= u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(scaled.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort as K8sPort, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn nodes_convert_with_their_pod_cidrs_internal_ips_and_virtual_label() {
        use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
        let address = |type_: &str, address: &str| NodeAddress {
            type_: type_.into(),
            address: address.into(),
        };
        let regular = Node {
            metadata: ObjectMeta {
                name: Some("worker-1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                provider_id: Some("aws:///us-east-1a/i-0abc".into()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    address("Hostname", "worker-1"),
                    address("InternalIP", "10.0.1.7"),
                ]),
                ..Default::default()
            }),
        };
        let node = cluster_node(&regular);
        assert_eq!(node.name, "worker-1");
        assert_eq!(
            node.pod_cidrs,
            ["10.244.1.0/24"],
            "the single podCIDR field counts"
        );
        assert_eq!(node.internal_ips, ["10.0.1.7"], "only InternalIP addresses");
        assert_eq!(
            node.provider_id.as_deref(),
            Some("aws:///us-east-1a/i-0abc")
        );
        assert!(!node.virtual_);

        let cells = Node {
            metadata: ObjectMeta {
                name: Some("cellet-1".into()),
                labels: Some([("type".to_string(), "virtual-kubelet".to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.2.0/24".into()),
                pod_cidrs: Some(vec!["10.244.2.0/24".into(), "fd00:2::/64".into()]),
                provider_id: Some(String::new()),
                ..Default::default()
            }),
            status: None,
        };
        let node = cluster_node(&cells);
        assert_eq!(
            node.pod_cidrs,
            ["10.244.2.0/24", "fd00:2::/64"],
            "podCIDRs wins"
        );
        assert!(node.internal_ips.is_empty());
        assert_eq!(node.provider_id, None, "an empty provider ID is none");
        assert!(node.virtual_);
    }

    #[test]
    fn quantities_convert_to_millis_and_bytes() {
        assert_eq!(parse_quantity(&q("500m"), Unit::Milli), Ok(500));
        assert_eq!(parse_quantity(&q("1.5"), Unit::Milli), Ok(1500));
        assert_eq!(parse_quantity(&q("2"), Unit::Milli), Ok(2000));
        assert_eq!(parse_quantity(&q("128Mi"), Unit::One), Ok(128 << 20));
        assert_eq!(parse_quantity(&q("1G"), Unit::One), Ok(1_000_000_000));
        assert_eq!(parse_quantity(&q("1e3"), Unit::One), Ok(1000));
        assert_eq!(parse_quantity(&q("100n"), Unit::Milli), Ok(1), "rounded up");
        assert!(
            parse_quantity(&q("12parsecs"), Unit::One)
                .unwrap_err()
                .contains("unknown suffix")
        );
        assert!(
            parse_quantity(&q("lots"), Unit::One)
                .unwrap_err()
                .contains("not a quantity")
        );
    }

    #[test]
    fn a_pod_converts_with_ports_resources_and_owner() {
        let pod = K8sPod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    kind: "ReplicaSet".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![K8sContainer {
                    name: "nginx".into(),
                    image: Some("nginx:1.27".into()),
                    ports: Some(vec![K8sPort {
                        container_port: 80,
                        host_port: Some(8080),
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    }]),
                    resources: Some(ResourceRequirements {
                        limits: Some(
                            [
                                ("cpu".to_string(), q("250m")),
                                ("memory".to_string(), q("64Mi")),
                            ]
                            .into(),
                        ),
                        requests: Some([("memory".to_string(), q("32Mi"))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let p = plugin_pod(&pod).unwrap();
        assert_eq!(
            (p.uid.as_str(), p.namespace.as_str(), p.name.as_str()),
            ("u-1", "shop", "web-0")
        );
        assert_eq!(p.owner_kind.as_deref(), Some("ReplicaSet"));
        assert_eq!(p.labels.len(), 1);
        let c = &p.containers[0];
        assert_eq!(
            (c.cpu_millis, c.memory_bytes),
            (250, 32 << 20),
            "requests win over limits"
        );
        assert_eq!(c.ports[0].host_port, Some(8080));
        assert!(matches!(c.ports[0].protocol, Protocol::Udp));
    }

    #[test]
    fn an_out_of_range_port_names_its_field() {
        let pod = K8sPod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("n".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![K8sContainer {
                    name: "c".into(),
                    ports: Some(vec![K8sPort {
                        container_port: 70000,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let err = plugin_pod(&pod).unwrap_err().to_string();
        assert!(
            err.contains("spec.containers[0].ports[0].containerPort"),
            "{err}"
        );
    }
}
