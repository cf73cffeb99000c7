//! The host resources of contract 0.2.0 (`types.pod`, `types.node-mappings`): values the
//! host lends a plugin for one call, which the plugin reads field by field instead of
//! receiving a copy of everything.
//!
//! # Expected flow
//!
//! A handle puts the value in the instance's resource table ([`Lent::new`]) before the
//! call, hands the guest a `borrow<...>` of it, and takes it out again when the call ends
//! ([`Lent::end`]), whatever the outcome. The guest cannot keep a borrow past the call (the
//! component model forbids it), and an instance whose call failed is dropped with its
//! store and table, so nothing lent outlives its call.
//!
//! # Why the lent values are compact copies
//!
//! The table owns what it holds (`'static`), and the handles are given borrowed records,
//! so each call copies what it lends. A plain clone of the pod is ~100 strings and of 100
//! mappings ~450, each allocated for the call and freed after it: in the profile of a warm
//! `admit` that was over half of the call (BENCHMARKS.md, "Plugins"). So a lent value
//! keeps its strings in one buffer ([`Text`]) and its records as spans into it: a handful
//! of allocations per call, whatever the pod or the node holds.
//!
//! Every method copies only what it returns. A method called on a handle that is not in
//! the table (a bug in the host, not something a guest can cause through the canonical
//! ABI) traps with an error naming the resource and the method.

use std::net::IpAddr;
use std::ops::Range;

use wasmtime::component::{Resource, ResourceTable};

use crate::plugins::bindings::v0_2_0::types::{self as wit, HostPort};
use crate::plugins::bindings::{Container, ContainerPort, KeyValue, Pod, PortMapping, Protocol};

/// The strings of one lent value, in one buffer.
#[derive(Debug)]
struct Text(String);

/// Where one string is in a [`Text`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

impl Text {
    fn with_capacity(bytes: usize) -> Self {
        Text(String::with_capacity(bytes))
    }

    fn push(&mut self, text: &str) -> Span {
        let start = self.0.len();
        self.0.push_str(text);
        Span {
            start,
            end: self.0.len(),
        }
    }

    fn push_opt(&mut self, text: Option<&String>) -> Option<Span> {
        text.map(|text| self.push(text))
    }

    fn get(&self, span: Span) -> &str {
        &self.0[span.start..span.end]
    }

    fn string(&self, span: Span) -> String {
        self.get(span).to_string()
    }

    fn string_opt(&self, span: Option<Span>) -> Option<String> {
        span.map(|span| self.string(span))
    }
}

/// `types.pod`: a compact copy of the host's pod record, read by the plugin through its
/// methods.
#[derive(Debug)]
pub struct PodResource {
    text: Text,
    uid: Span,
    namespace: Span,
    name: Span,
    host_network: bool,
    owner_kind: Option<Span>,
    runtime_class: Option<Span>,
    /// The labels, then the annotations (`labels` of them are labels).
    pairs: Vec<(Span, Span)>,
    labels: usize,
    /// The containers, then the init containers (`containers` of them are containers).
    all_containers: Vec<LentContainer>,
    containers: usize,
    /// The ports of every container, each container's in its `ports` range.
    ports: Vec<LentPort>,
}

#[derive(Debug)]
struct LentContainer {
    name: Span,
    image: Span,
    ports: Range<usize>,
    cpu_millis: u64,
    memory_bytes: u64,
}

#[derive(Debug)]
struct LentPort {
    name: Option<Span>,
    container_port: u16,
    host_port: Option<u16>,
    host_ip: Option<Span>,
    protocol: Protocol,
}

/// `types.node-mappings`: a compact copy of the hostPort mappings on the node, for one
/// `admit`.
#[derive(Debug)]
pub struct NodeMappings {
    text: Text,
    held: Vec<LentMapping>,
}

#[derive(Debug)]
struct LentMapping {
    pod_uid: Span,
    pod_namespace: Span,
    pod_name: Span,
    container_name: Span,
    protocol: Protocol,
    host_ip: Option<Span>,
    host_port: u16,
    container_port: u16,
}

/// A value in an instance's resource table for the duration of one call.
pub(crate) struct Lent<T: 'static> {
    owned: Resource<T>,
}

impl<T: Send + 'static> Lent<T> {
    /// Put `value` in `table`.
    pub(crate) fn new(table: &mut ResourceTable, value: T) -> wasmtime::Result<Self> {
        Ok(Lent {
            owned: table.push(value)?,
        })
    }

    /// The handle to pass to the guest: a borrow, which the guest cannot drop or keep.
    pub(crate) fn borrow(&self) -> Resource<T> {
        Resource::new_borrow(self.owned.rep())
    }

    /// Take the value out of `table` again.
    pub(crate) fn end(self, table: &mut ResourceTable) {
        // Only a host bug could have removed it already; the call's outcome stands.
        if let Err(error) = table.delete(self.owned) {
            tracing::error!(%error, "a lent plugin resource was already gone at the end of its call");
        }
    }
}

fn opt_len(text: Option<&String>) -> usize {
    text.map_or(0, String::len)
}

impl PodResource {
    pub fn new(pod: &Pod) -> Self {
        let containers = || pod.containers.iter().chain(&pod.init_containers);
        let bytes = pod.uid.len()
            + pod.namespace.len()
            + pod.name.len()
            + opt_len(pod.owner_kind.as_ref())
            + opt_len(pod.runtime_class.as_ref())
            + pod
                .labels
                .iter()
                .chain(&pod.annotations)
                .map(|kv| kv.key.len() + kv.value.len())
                .sum::<usize>()
            + containers()
                .map(|c| {
                    c.name.len()
                        + c.image.len()
                        + c.ports
                            .iter()
                            .map(|p| opt_len(p.name.as_ref()) + opt_len(p.host_ip.as_ref()))
                            .sum::<usize>()
                })
                .sum::<usize>();
        let mut text = Text::with_capacity(bytes);
        let (uid, namespace, name) = (
            text.push(&pod.uid),
            text.push(&pod.namespace),
            text.push(&pod.name),
        );
        let (owner_kind, runtime_class) = (
            text.push_opt(pod.owner_kind.as_ref()),
            text.push_opt(pod.runtime_class.as_ref()),
        );
        let pairs = pod
            .labels
            .iter()
            .chain(&pod.annotations)
            .map(|kv| (text.push(&kv.key), text.push(&kv.value)))
            .collect();
        let mut ports = Vec::with_capacity(containers().map(|c| c.ports.len()).sum());
        let all_containers = containers()
            .map(|container| {
                let first = ports.len();
                ports.extend(container.ports.iter().map(|port| LentPort {
                    name: text.push_opt(port.name.as_ref()),
                    container_port: port.container_port,
                    host_port: port.host_port,
                    host_ip: text.push_opt(port.host_ip.as_ref()),
                    protocol: port.protocol,
                }));
                LentContainer {
                    name: text.push(&container.name),
                    image: text.push(&container.image),
                    ports: first..ports.len(),
                    cpu_millis: container.cpu_millis,
                    memory_bytes: container.memory_bytes,
                }
            })
            .collect();
        PodResource {
            text,
            uid,
            namespace,
            name,
            host_network: pod.host_network,
            owner_kind,
            runtime_class,
            pairs,
            labels: pod.labels.len(),
            all_containers,
            containers: pod.containers.len(),
            ports,
        }
    }

    fn labels(&self) -> &[(Span, Span)] {
        &self.pairs[..self.labels]
    }

    fn annotations(&self) -> &[(Span, Span)] {
        &self.pairs[self.labels..]
    }

    fn find(&self, pairs: &[(Span, Span)], key: &str) -> Option<String> {
        pairs
            .iter()
            .find(|(k, _)| self.text.get(*k) == key)
            .map(|(_, value)| self.text.string(*value))
    }

    fn key_values(&self, pairs: &[(Span, Span)]) -> Vec<KeyValue> {
        pairs
            .iter()
            .map(|(key, value)| KeyValue {
                key: self.text.string(*key),
                value: self.text.string(*value),
            })
            .collect()
    }

    fn port(&self, port: &LentPort) -> ContainerPort {
        ContainerPort {
            name: self.text.string_opt(port.name),
            container_port: port.container_port,
            host_port: port.host_port,
            host_ip: self.text.string_opt(port.host_ip),
            protocol: port.protocol,
        }
    }

    fn containers(&self, containers: &[LentContainer]) -> Vec<Container> {
        containers
            .iter()
            .map(|container| Container {
                name: self.text.string(container.name),
                image: self.text.string(container.image),
                ports: self.ports[container.ports.clone()]
                    .iter()
                    .map(|port| self.port(port))
                    .collect(),
                cpu_millis: container.cpu_millis,
                memory_bytes: container.memory_bytes,
            })
            .collect()
    }

    fn host_ports(&self) -> Vec<HostPort> {
        self.all_containers[..self.containers]
            .iter()
            .flat_map(|container| {
                self.ports[container.ports.clone()]
                    .iter()
                    .filter(|port| port.host_port.is_some())
                    .map(|port| HostPort {
                        container_name: self.text.string(container.name),
                        port: self.port(port),
                    })
            })
            .collect()
    }
}

impl NodeMappings {
    pub fn new(mappings: &[PortMapping]) -> Self {
        let bytes = mappings
            .iter()
            .map(|m| {
                m.pod_uid.len()
                    + m.pod_namespace.len()
                    + m.pod_name.len()
                    + m.container_name.len()
                    + opt_len(m.host_ip.as_ref())
            })
            .sum();
        let mut text = Text::with_capacity(bytes);
        let mut held = Vec::with_capacity(mappings.len());
        held.extend(mappings.iter().map(|mapping| LentMapping {
            pod_uid: text.push(&mapping.pod_uid),
            pod_namespace: text.push(&mapping.pod_namespace),
            pod_name: text.push(&mapping.pod_name),
            container_name: text.push(&mapping.container_name),
            protocol: mapping.protocol,
            host_ip: text.push_opt(mapping.host_ip.as_ref()),
            host_port: mapping.host_port,
            container_port: mapping.container_port,
        }));
        NodeMappings { text, held }
    }

    /// A held mapping as the 0.2.0 record.
    fn to_wit(&self, mapping: &LentMapping) -> wit::PortMapping {
        wit::PortMapping {
            pod_uid: self.text.string(mapping.pod_uid),
            pod_namespace: self.text.string(mapping.pod_namespace),
            pod_name: self.text.string(mapping.pod_name),
            container_name: self.text.string(mapping.container_name),
            protocol: mapping.protocol,
            host_ip: self.text.string_opt(mapping.host_ip),
            host_port: mapping.host_port,
            container_port: mapping.container_port,
        }
    }
}

/// The lent value behind `handle`, or a trap naming the resource and the method.
fn lent<'t, T: 'static>(
    table: &'t ResourceTable,
    handle: &Resource<T>,
    resource: &str,
    method: &str,
) -> wasmtime::Result<&'t T> {
    table.get(handle).map_err(|error| {
        wasmtime::format_err!(
            "`{resource}.{method}` called on a handle the host does not hold: {error}"
        )
    })
}

impl wit::HostPod for ResourceTable {
    fn uid(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<String> {
        let pod = lent(self, &pod, "pod", "uid")?;
        Ok(pod.text.string(pod.uid))
    }

    fn namespace(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<String> {
        let pod = lent(self, &pod, "pod", "namespace")?;
        Ok(pod.text.string(pod.namespace))
    }

    fn name(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<String> {
        let pod = lent(self, &pod, "pod", "name")?;
        Ok(pod.text.string(pod.name))
    }

    fn host_network(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<bool> {
        Ok(lent(self, &pod, "pod", "host-network")?.host_network)
    }

    fn owner_kind(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Option<String>> {
        let pod = lent(self, &pod, "pod", "owner-kind")?;
        Ok(pod.text.string_opt(pod.owner_kind))
    }

    fn runtime_class(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Option<String>> {
        let pod = lent(self, &pod, "pod", "runtime-class")?;
        Ok(pod.text.string_opt(pod.runtime_class))
    }

    fn label(
        &mut self,
        pod: Resource<PodResource>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        let pod = lent(self, &pod, "pod", "label")?;
        Ok(pod.find(pod.labels(), &key))
    }

    fn annotation(
        &mut self,
        pod: Resource<PodResource>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        let pod = lent(self, &pod, "pod", "annotation")?;
        Ok(pod.find(pod.annotations(), &key))
    }

    fn labels(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<KeyValue>> {
        let pod = lent(self, &pod, "pod", "labels")?;
        Ok(pod.key_values(pod.labels()))
    }

    fn annotations(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<KeyValue>> {
        let pod = lent(self, &pod, "pod", "annotations")?;
        Ok(pod.key_values(pod.annotations()))
    }

    fn containers(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<Container>> {
        let pod = lent(self, &pod, "pod", "containers")?;
        Ok(pod.containers(&pod.all_containers[..pod.containers]))
    }

    fn init_containers(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<Container>> {
        let pod = lent(self, &pod, "pod", "init-containers")?;
        Ok(pod.containers(&pod.all_containers[pod.containers..]))
    }

    fn host_ports(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<HostPort>> {
        Ok(lent(self, &pod, "pod", "host-ports")?.host_ports())
    }

    fn drop(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<()> {
        // Only an owned handle is dropped through here, and the host never hands one out.
        self.delete(pod)?;
        Ok(())
    }
}

/// The node address a mapping binds to: `None` for every address (unset, empty,
/// `0.0.0.0`, `::`). An address the host cannot parse is kept as text and overlaps only
/// itself and every-address mappings.
#[derive(PartialEq, Eq)]
enum Bound<'a> {
    Every,
    Ip(IpAddr),
    Text(&'a str),
}

fn bound(host_ip: Option<&str>) -> Bound<'_> {
    match host_ip {
        None | Some("") => Bound::Every,
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => Bound::Every,
            Ok(ip) => Bound::Ip(ip),
            Err(_) => Bound::Text(text),
        },
    }
}

fn overlap(a: &Bound<'_>, b: &Bound<'_>) -> bool {
    matches!(a, Bound::Every) || matches!(b, Bound::Every) || a == b
}

impl wit::HostNodeMappings for ResourceTable {
    fn conflicts(
        &mut self,
        mappings: Resource<NodeMappings>,
        protocol: Protocol,
        host_ip: Option<String>,
        host_port: u16,
    ) -> wasmtime::Result<Vec<wit::PortMapping>> {
        let mappings = lent(self, &mappings, "node-mappings", "conflicts")?;
        let wanted = bound(host_ip.as_deref());
        // Protocol and port first: they rule out nearly every mapping without parsing.
        Ok(mappings
            .held
            .iter()
            .filter(|held| held.host_port == host_port && held.protocol == protocol)
            .filter(|held| {
                let held_ip = held.host_ip.map(|span| mappings.text.get(span));
                overlap(&wanted, &bound(held_ip))
            })
            .map(|held| mappings.to_wit(held))
            .collect())
    }

    fn count(&mut self, mappings: Resource<NodeMappings>) -> wasmtime::Result<u32> {
        let mappings = lent(self, &mappings, "node-mappings", "count")?;
        Ok(u32::try_from(mappings.held.len()).unwrap_or(u32::MAX))
    }

    fn all(&mut self, mappings: Resource<NodeMappings>) -> wasmtime::Result<Vec<wit::PortMapping>> {
        let mappings = lent(self, &mappings, "node-mappings", "all")?;
        Ok(mappings
            .held
            .iter()
            .map(|held| mappings.to_wit(held))
            .collect())
    }

    fn drop(&mut self, mappings: Resource<NodeMappings>) -> wasmtime::Result<()> {
        self.delete(mappings)?;
        Ok(())
    }
}

impl wit::Host for ResourceTable {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::v0_2_0::types::{HostNodeMappings, HostPod};

    fn mapping(uid: &str, protocol: Protocol, host_ip: Option<&str>, port: u16) -> PortMapping {
        PortMapping {
            pod_uid: uid.into(),
            pod_namespace: "ns".into(),
            pod_name: uid.into(),
            container_name: "c".into(),
            protocol,
            host_ip: host_ip.map(Into::into),
            host_port: port,
            container_port: 80,
        }
    }

    #[test]
    fn conflicts_are_the_overlapping_mappings_of_the_same_protocol_and_port() {
        let mut table = ResourceTable::new();
        let lent = Lent::new(
            &mut table,
            NodeMappings::new(&[
                mapping("every", Protocol::Tcp, None, 8080),
                mapping("wildcard", Protocol::Tcp, Some("0.0.0.0"), 8080),
                mapping("five", Protocol::Tcp, Some("10.0.0.5"), 8080),
                mapping("six", Protocol::Tcp, Some("10.0.0.6"), 8080),
                mapping("udp", Protocol::Udp, None, 8080),
                mapping("other-port", Protocol::Tcp, None, 9090),
            ]),
        )
        .unwrap();
        let uids =
            |found: Vec<wit::PortMapping>| found.into_iter().map(|m| m.pod_uid).collect::<Vec<_>>();
        let on_five = table
            .conflicts(lent.borrow(), Protocol::Tcp, Some("10.0.0.5".into()), 8080)
            .unwrap();
        assert_eq!(uids(on_five), ["every", "wildcard", "five"]);
        let everywhere = table
            .conflicts(lent.borrow(), Protocol::Tcp, None, 8080)
            .unwrap();
        assert_eq!(uids(everywhere), ["every", "wildcard", "five", "six"]);
        assert_eq!(table.count(lent.borrow()).unwrap(), 6);
        assert_eq!(table.all(lent.borrow()).unwrap().len(), 6);
        lent.end(&mut table);
    }

    #[test]
    fn a_pod_lends_what_is_asked_and_a_handle_gone_traps_naming_the_method() {
        let mut table = ResourceTable::new();
        let pod = Pod {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "web".into(),
            labels: vec![kv("app", "web")],
            annotations: vec![],
            host_network: false,
            init_containers: vec![],
            containers: vec![],
            owner_kind: None,
            runtime_class: None,
        };
        let lent = Lent::new(&mut table, PodResource::new(&pod)).unwrap();
        let handle = lent.borrow();
        assert_eq!(
            table.label(lent.borrow(), "app".into()).unwrap().as_deref(),
            Some("web")
        );
        assert_eq!(table.label(lent.borrow(), "tier".into()).unwrap(), None);
        assert!(table.host_ports(lent.borrow()).unwrap().is_empty());
        lent.end(&mut table);
        let err = table.uid(handle).unwrap_err();
        assert!(err.to_string().contains("`pod.uid`"), "{err}");
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }

    fn port(host_port: Option<u16>, host_ip: Option<&str>, name: Option<&str>) -> ContainerPort {
        ContainerPort {
            name: name.map(Into::into),
            container_port: 8080,
            host_port,
            host_ip: host_ip.map(Into::into),
            protocol: Protocol::Udp,
        }
    }

    fn container(name: &str, ports: Vec<ContainerPort>) -> Container {
        Container {
            name: name.into(),
            image: format!("registry.local/{name}:1"),
            ports,
            cpu_millis: 250,
            memory_bytes: 1 << 28,
        }
    }

    /// The compact copy answers every method with the record's own values.
    #[test]
    fn a_lent_pod_reads_back_as_the_record() {
        let pod = Pod {
            uid: "u-1".into(),
            namespace: "shop".into(),
            name: "web".into(),
            labels: vec![kv("app", "web"), kv("tier", "")],
            annotations: vec![kv("note", "ünïcode"), kv("app", "not-a-label")],
            host_network: true,
            init_containers: vec![container("setup", vec![port(Some(9), None, None)])],
            containers: vec![
                container(
                    "nginx",
                    vec![port(Some(80), Some("10.0.0.5"), Some("http"))],
                ),
                container("empty", vec![]),
                container(
                    "sidecar",
                    vec![
                        port(None, None, Some("admin")),
                        port(Some(81), Some(""), None),
                    ],
                ),
            ],
            owner_kind: Some("ReplicaSet".into()),
            runtime_class: None,
        };
        let mut table = ResourceTable::new();
        let lent = Lent::new(&mut table, PodResource::new(&pod)).unwrap();
        let b = || lent.borrow();
        assert_eq!(table.uid(b()).unwrap(), pod.uid);
        assert_eq!(table.namespace(b()).unwrap(), pod.namespace);
        assert_eq!(table.name(b()).unwrap(), pod.name);
        assert!(table.host_network(b()).unwrap());
        assert_eq!(table.owner_kind(b()).unwrap(), pod.owner_kind);
        assert_eq!(table.runtime_class(b()).unwrap(), None);
        assert_eq!(table.labels(b()).unwrap(), pod.labels);
        assert_eq!(table.annotations(b()).unwrap(), pod.annotations);
        assert_eq!(
            table.label(b(), "app".into()).unwrap().as_deref(),
            Some("web")
        );
        assert_eq!(table.label(b(), "note".into()).unwrap(), None);
        assert_eq!(
            table.annotation(b(), "app".into()).unwrap().as_deref(),
            Some("not-a-label")
        );
        assert_eq!(table.containers(b()).unwrap(), pod.containers);
        assert_eq!(table.init_containers(b()).unwrap(), pod.init_containers);
        let host_ports: Vec<(String, ContainerPort)> = table
            .host_ports(b())
            .unwrap()
            .into_iter()
            .map(|p| (p.container_name, p.port))
            .collect();
        assert_eq!(
            host_ports,
            [
                ("nginx".to_string(), pod.containers[0].ports[0].clone()),
                ("sidecar".to_string(), pod.containers[2].ports[1].clone()),
            ]
        );
        lent.end(&mut table);
    }

    #[test]
    fn lent_mappings_read_back_as_the_records() {
        let held = [
            mapping("a", Protocol::Tcp, None, 8080),
            mapping("b", Protocol::Sctp, Some("fd00::1"), 9000),
        ];
        let mut table = ResourceTable::new();
        let lent = Lent::new(&mut table, NodeMappings::new(&held)).unwrap();
        let all: Vec<PortMapping> = table
            .all(lent.borrow())
            .unwrap()
            .into_iter()
            .map(crate::plugins::adapt::port_mapping)
            .collect();
        assert_eq!(all, held);
        lent.end(&mut table);
    }
}
