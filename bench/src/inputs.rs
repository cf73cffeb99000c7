//! The realistic inputs every plugin is measured with, built once in the SDK's types (for
//! the native baseline) and converted field by field into the host's types (for the
//! WebAssembly calls), so both sides decide on exactly the same records.
//!
//! - a pod with 3 containers, 10 ports of which 4 publish a hostPort (TCP and UDP, one
//!   bound to a node address), 20 labels and 20 annotations;
//! - 50 regular nodes, each with a PodCIDR, an InternalIP and an AWS provider id, and the
//!   same 50 with one node changed (its InternalIP), for the host's cluster pass that
//!   plans again only what changed;
//! - 100 hostPort mappings already on the node, held by 50 other pods, none colliding
//!   with the pod's own.
//!
//! The SDK and the host generate their records from the same WIT with different
//! generators (wit-bindgen in the guest, wasmtime's `bindgen!` in the host), hence two
//! sets of types with the same fields.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use cellet::plugins::bindings as host;
use cellet_sdk::hostport::PortMapping;
use cellet_sdk::network::ClusterNode;
use cellet_sdk::testing::{MappingBuilder, NodeBuilder, PodBuilder, cell_request};
use cellet_sdk::types::{Container, ContainerPort, KeyValue, Pod, Protocol};

/// Number of cluster nodes handed to `plan-cluster`.
pub const NODES: usize = 50;
/// Number of mappings already on the node handed to `admit`.
pub const EXISTING_MAPPINGS: usize = 100;

/// Every input, in both type families.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub native: NativeInputs,
    pub host: HostInputs,
}

/// The inputs as the plugin crates take them.
#[derive(Debug, Clone)]
pub struct NativeInputs {
    pub pod: Pod,
    pub nodes: Vec<ClusterNode>,
    pub existing: Vec<PortMapping>,
}

/// The same inputs as the host runtime's handles take them.
#[derive(Debug, Clone)]
pub struct HostInputs {
    pub pod: host::Pod,
    pub nodes: Vec<host::ClusterNode>,
    /// `nodes` with `node-00`'s InternalIP changed: cluster passes alternate between the
    /// two, so each pass finds exactly one node changed.
    pub nodes_one_changed: Vec<host::ClusterNode>,
    /// How many cluster passes were made, to alternate between the two node sets.
    pub passes: Arc<AtomicUsize>,
    pub existing: Vec<host::PortMapping>,
    pub cell_request: host::CellRequest,
}

impl Inputs {
    pub fn realistic() -> Self {
        let native = NativeInputs {
            pod: pod(),
            nodes: nodes(),
            existing: existing_mappings(),
        };
        let request = cell_request(&native.pod);
        let nodes: Vec<host::ClusterNode> = native.nodes.iter().map(host_node).collect();
        let mut nodes_one_changed = nodes.clone();
        nodes_one_changed[0].internal_ips = vec!["10.0.9.250".to_string()];
        let host = HostInputs {
            pod: host_pod(&native.pod),
            nodes,
            nodes_one_changed,
            passes: Arc::default(),
            existing: native.existing.iter().map(host_mapping).collect(),
            cell_request: host::CellRequest {
                pod: host_pod(&native.pod),
                needs_pod_ip: request.needs_pod_ip,
                user_data: request.user_data.clone(),
                tags: request.tags.iter().map(host_kv).collect(),
            },
        };
        Inputs { native, host }
    }
}

/// `shop/checkout-…`: an application container, a service-mesh sidecar and a log shipper.
fn pod() -> Pod {
    let mut pod = PodBuilder::new("shop", "checkout-7d9f8b6c4-x2kzq")
        .container("checkout")
        .resources(500, 512 << 20)
        .host_port(8080, 8080)
        .port(8443)
        .port(9090)
        .port(9091)
        .container("envoy")
        .resources(100, 128 << 20)
        .host_port(15001, 15001)
        .port(15006)
        .port(15090)
        .container("fluent-bit")
        .resources(50, 64 << 20)
        .host_port_with(Protocol::Udp, None, 24224, 24224)
        .host_port_with(Protocol::Tcp, Some("10.0.0.10"), 24225, 24224)
        .port(2020);
    // The builder starts with `app`; 19 more make 20.
    for i in 1..20 {
        pod = pod.label(
            &format!("app.kubernetes.io/part-{i:02}"),
            &format!("checkout-component-{i:02}"),
        );
    }
    for i in 0..20 {
        pod = pod.annotation(
            &format!("checkout.shop.example.com/annotation-{i:02}"),
            &format!(
                "{{\"revision\":{i},\"checksum\":\"sha256:{:064x}\"}}",
                i * 0x9e37_79b9u64
            ),
        );
    }
    pod.build()
}

/// `node-00`…`node-49`: PodCIDR `10.244.<i>.0/24`, InternalIP `10.0.<i/200>.<10+i>`.
fn nodes() -> Vec<ClusterNode> {
    (0..NODES)
        .map(|i| {
            NodeBuilder::new(&format!("node-{i:02}"))
                .pod_cidr(&format!("10.244.{i}.0/24"))
                .internal_ip(&format!("10.0.{}.{}", i / 200, 10 + i % 200))
                .aws_instance("us-east-1a", &format!("i-0{:016x}", 0xabc0_0000 + i))
                .build()
        })
        .collect()
}

/// Two mappings each for 50 pods of namespace `ingress`, on ports 30000–30099: TCP and
/// UDP alternately, every fourth one bound to a node address.
fn existing_mappings() -> Vec<PortMapping> {
    (0..EXISTING_MAPPINGS)
        .map(|i| {
            let port = 30000 + u16::try_from(i).expect("EXISTING_MAPPINGS fits in u16");
            let builder = MappingBuilder::new("ingress", &format!("gateway-{:02}", i / 2), port)
                .container("gateway")
                .container_port(8000 + port % 100)
                .protocol(if i % 2 == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                });
            if i % 4 == 0 {
                builder.host_ip("10.0.0.10")
            } else {
                builder
            }
            .build()
        })
        .collect()
}

fn host_pod(pod: &Pod) -> host::Pod {
    host::Pod {
        uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        labels: pod.labels.iter().map(host_kv).collect(),
        annotations: pod.annotations.iter().map(host_kv).collect(),
        host_network: pod.host_network,
        init_containers: pod.init_containers.iter().map(host_container).collect(),
        containers: pod.containers.iter().map(host_container).collect(),
        owner_kind: pod.owner_kind.clone(),
        runtime_class: pod.runtime_class.clone(),
    }
}

fn host_container(container: &Container) -> host::Container {
    host::Container {
        name: container.name.clone(),
        image: container.image.clone(),
        ports: container.ports.iter().map(host_port).collect(),
        cpu_millis: container.cpu_millis,
        memory_bytes: container.memory_bytes,
    }
}

fn host_port(port: &ContainerPort) -> host::ContainerPort {
    host::ContainerPort {
        name: port.name.clone(),
        container_port: port.container_port,
        host_port: port.host_port,
        host_ip: port.host_ip.clone(),
        protocol: host_protocol(port.protocol),
    }
}

fn host_protocol(protocol: Protocol) -> host::Protocol {
    match protocol {
        Protocol::Tcp => host::Protocol::Tcp,
        Protocol::Udp => host::Protocol::Udp,
        Protocol::Sctp => host::Protocol::Sctp,
    }
}

fn host_kv(kv: &KeyValue) -> host::KeyValue {
    host::KeyValue {
        key: kv.key.clone(),
        value: kv.value.clone(),
    }
}

fn host_node(node: &ClusterNode) -> host::ClusterNode {
    host::ClusterNode {
        name: node.name.clone(),
        pod_cidrs: node.pod_cidrs.clone(),
        internal_ips: node.internal_ips.clone(),
        provider_id: node.provider_id.clone(),
        virtual_: node.virtual_,
    }
}

fn host_mapping(mapping: &PortMapping) -> host::PortMapping {
    host::PortMapping {
        pod_uid: mapping.pod_uid.clone(),
        pod_namespace: mapping.pod_namespace.clone(),
        pod_name: mapping.pod_name.clone(),
        container_name: mapping.container_name.clone(),
        protocol: host_protocol(mapping.protocol),
        host_ip: mapping.host_ip.clone(),
        host_port: mapping.host_port,
        container_port: mapping.container_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inputs_have_the_sizes_the_benchmark_promises() {
        let inputs = Inputs::realistic();
        let pod = &inputs.native.pod;
        assert_eq!(pod.containers.len(), 3);
        let ports: Vec<_> = pod.containers.iter().flat_map(|c| &c.ports).collect();
        assert_eq!(ports.len(), 10);
        assert_eq!(ports.iter().filter(|p| p.host_port.is_some()).count(), 4);
        assert_eq!((pod.labels.len(), pod.annotations.len()), (20, 20));
        assert_eq!(inputs.native.nodes.len(), NODES);
        assert!(inputs.native.nodes.iter().all(|n| n.pod_cidrs.len() == 1));
        assert_eq!(inputs.native.existing.len(), EXISTING_MAPPINGS);
    }

    #[test]
    fn host_records_carry_the_same_values() {
        let inputs = Inputs::realistic();
        let (native, host) = (&inputs.native, &inputs.host);
        assert_eq!(host.pod.uid, native.pod.uid);
        assert_eq!(
            host.pod.annotations[7].value,
            native.pod.annotations[7].value
        );
        let host_ports: Vec<_> = host.pod.containers.iter().flat_map(|c| &c.ports).collect();
        assert_eq!(host_ports[8].host_ip.as_deref(), Some("10.0.0.10"));
        assert_eq!(host_ports[7].protocol, host::Protocol::Udp);
        assert_eq!(host.nodes[49].pod_cidrs, vec!["10.244.49.0/24".to_string()]);
        assert_eq!(host.existing[3].protocol, host::Protocol::Udp);
        assert_eq!(
            host.cell_request.tags.len(),
            cell_request(&native.pod).tags.len()
        );
        assert_ne!(host.nodes[0], host.nodes_one_changed[0]);
        assert_eq!(host.nodes[1..], host.nodes_one_changed[1..]);
    }
}
