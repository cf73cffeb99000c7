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
//! Every method copies only what it returns. A method called on a handle that is not in
//! the table (a bug in the host, not something a guest can cause through the canonical
//! ABI) traps with an error naming the resource and the method.

use std::net::IpAddr;

use wasmtime::component::{Resource, ResourceTable};

use crate::plugins::bindings::v0_2_0::types::{self as wit, HostPort};
use crate::plugins::bindings::{Container, KeyValue, Pod, PortMapping, Protocol};

/// `types.pod`: the host's pod record, read by the plugin through its methods.
#[derive(Debug)]
pub struct PodResource(Pod);

/// `types.node-mappings`: the hostPort mappings on the node, for one `admit`.
#[derive(Debug)]
pub struct NodeMappings(Vec<PortMapping>);

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

impl PodResource {
    pub fn new(pod: Pod) -> Self {
        PodResource(pod)
    }
}

impl NodeMappings {
    pub fn new(mappings: Vec<PortMapping>) -> Self {
        NodeMappings(mappings)
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

fn find(pairs: &[KeyValue], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.clone())
}

impl wit::HostPod for ResourceTable {
    fn uid(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<String> {
        Ok(lent(self, &pod, "pod", "uid")?.0.uid.clone())
    }

    fn namespace(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<String> {
        Ok(lent(self, &pod, "pod", "namespace")?.0.namespace.clone())
    }

    fn name(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<String> {
        Ok(lent(self, &pod, "pod", "name")?.0.name.clone())
    }

    fn host_network(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<bool> {
        Ok(lent(self, &pod, "pod", "host-network")?.0.host_network)
    }

    fn owner_kind(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Option<String>> {
        Ok(lent(self, &pod, "pod", "owner-kind")?.0.owner_kind.clone())
    }

    fn runtime_class(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Option<String>> {
        Ok(lent(self, &pod, "pod", "runtime-class")?
            .0
            .runtime_class
            .clone())
    }

    fn label(
        &mut self,
        pod: Resource<PodResource>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(find(&lent(self, &pod, "pod", "label")?.0.labels, &key))
    }

    fn annotation(
        &mut self,
        pod: Resource<PodResource>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(find(
            &lent(self, &pod, "pod", "annotation")?.0.annotations,
            &key,
        ))
    }

    fn labels(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<KeyValue>> {
        Ok(lent(self, &pod, "pod", "labels")?.0.labels.clone())
    }

    fn annotations(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<KeyValue>> {
        Ok(lent(self, &pod, "pod", "annotations")?
            .0
            .annotations
            .clone())
    }

    fn containers(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<Container>> {
        Ok(lent(self, &pod, "pod", "containers")?.0.containers.clone())
    }

    fn init_containers(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<Container>> {
        Ok(lent(self, &pod, "pod", "init-containers")?
            .0
            .init_containers
            .clone())
    }

    fn host_ports(&mut self, pod: Resource<PodResource>) -> wasmtime::Result<Vec<HostPort>> {
        let pod = &lent(self, &pod, "pod", "host-ports")?.0;
        Ok(pod
            .containers
            .iter()
            .flat_map(|container| {
                container
                    .ports
                    .iter()
                    .filter(|port| port.host_port.is_some())
                    .map(|port| HostPort {
                        container_name: container.name.clone(),
                        port: port.clone(),
                    })
            })
            .collect())
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

/// A host mapping as the 0.2.0 record.
fn to_wit(mapping: &PortMapping) -> wit::PortMapping {
    wit::PortMapping {
        pod_uid: mapping.pod_uid.clone(),
        pod_namespace: mapping.pod_namespace.clone(),
        pod_name: mapping.pod_name.clone(),
        container_name: mapping.container_name.clone(),
        protocol: mapping.protocol,
        host_ip: mapping.host_ip.clone(),
        host_port: mapping.host_port,
        container_port: mapping.container_port,
    }
}

impl wit::HostNodeMappings for ResourceTable {
    fn conflicts(
        &mut self,
        mappings: Resource<NodeMappings>,
        protocol: Protocol,
        host_ip: Option<String>,
        host_port: u16,
    ) -> wasmtime::Result<Vec<wit::PortMapping>> {
        let mappings = &lent(self, &mappings, "node-mappings", "conflicts")?.0;
        let wanted = bound(host_ip.as_deref());
        // Protocol and port first: they rule out nearly every mapping without parsing.
        Ok(mappings
            .iter()
            .filter(|held| held.host_port == host_port && held.protocol == protocol)
            .filter(|held| overlap(&wanted, &bound(held.host_ip.as_deref())))
            .map(to_wit)
            .collect())
    }

    fn count(&mut self, mappings: Resource<NodeMappings>) -> wasmtime::Result<u32> {
        let mappings = &lent(self, &mappings, "node-mappings", "count")?.0;
        Ok(u32::try_from(mappings.len()).unwrap_or(u32::MAX))
    }

    fn all(&mut self, mappings: Resource<NodeMappings>) -> wasmtime::Result<Vec<wit::PortMapping>> {
        let mappings = &lent(self, &mappings, "node-mappings", "all")?.0;
        Ok(mappings.iter().map(to_wit).collect())
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
            NodeMappings::new(vec![
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
            labels: vec![KeyValue {
                key: "app".into(),
                value: "web".into(),
            }],
            annotations: vec![],
            host_network: false,
            init_containers: vec![],
            containers: vec![],
            owner_kind: None,
            runtime_class: None,
        };
        let lent = Lent::new(&mut table, PodResource::new(pod)).unwrap();
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
}
