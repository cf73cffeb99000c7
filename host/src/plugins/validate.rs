//! Checks on every value a plugin returns, before the host acts on it.
//!
//! Plugins decide, the host acts: a plan that reaches the kernel or the cloud must be
//! well-formed whatever the plugin's author got wrong. Each check names the offending
//! field with its WIT path (`routes[2].destination`) so the error tells the author where
//! to look. Caps (the guest controls every size):
//!
//! | what | cap |
//! | --- | --- |
//! | entries in any returned list | [`MAX_LIST_ENTRIES`] (10,000) |
//! | any returned string | [`MAX_STRING_BYTES`] (64 KiB) |
//! | names and ids (cell id, pod uid, instance type, container name, tag key) | [`MAX_NAME_BYTES`] (253) |
//! | a deny reason or a warning (shown to users as an Event) | [`MAX_MESSAGE_BYTES`] (1 KiB) |
//! | `node-capacity.pods` | 1..=[`MAX_LIST_ENTRIES`] |
//!
//! Lifting a plugin's result copies it out of the guest before these checks run; that copy
//! is bounded by the instance's memory cap.
//!
//! Field paths are `Display` values (`format_args!`), rendered only into a [`Violation`]:
//! a valid answer, checked on every call, allocates nothing here.

use std::fmt::Display;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::plugins::bindings::{
    Admission, Cell, CloudRoute, ClusterNetworkPlan, KeyValue, NextHop, NodeResources, Pod,
    PodNetworkPlan, PortMapping, RouteTarget,
};

pub const MAX_LIST_ENTRIES: usize = 10_000;
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Kubernetes' longest object name (DNS subdomain), which also bounds cloud ids.
pub const MAX_NAME_BYTES: usize = 253;
/// Kubernetes cuts Event messages at 1 KiB.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The smallest MTU an IPv4 link may have (RFC 791).
const MIN_MTU: u16 = 68;

/// One rule a returned value breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// WIT path of the field (`mappings[0].container-port`).
    pub field: String,
    pub reason: String,
}

type Checked = Result<(), Violation>;

fn violation(field: impl Display, reason: impl Into<String>) -> Violation {
    Violation {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn list<T>(field: impl Display + Copy, items: &[T]) -> Checked {
    if items.len() > MAX_LIST_ENTRIES {
        return Err(violation(
            field,
            format!(
                "{} entries, more than the {MAX_LIST_ENTRIES} allowed",
                items.len()
            ),
        ));
    }
    Ok(())
}

fn bounded(field: impl Display + Copy, value: &str, max: usize) -> Checked {
    if value.len() > max {
        return Err(violation(
            field,
            format!("{} bytes, more than the {max} allowed", value.len()),
        ));
    }
    Ok(())
}

fn name(field: impl Display + Copy, value: &str) -> Checked {
    if value.is_empty() {
        return Err(violation(field, "empty"));
    }
    bounded(field, value, MAX_NAME_BYTES)
}

fn ip(field: impl Display + Copy, value: &str) -> Result<IpAddr, Violation> {
    value
        .parse::<IpAddr>()
        .map_err(|_| violation(field, format!("`{}` is not an IP address", shown(value))))
}

fn cidr(field: impl Display + Copy, value: &str) -> Result<IpNet, Violation> {
    let net = value
        .parse::<IpNet>()
        .map_err(|_| violation(field, format!("`{}` is not a CIDR", shown(value))))?;
    if net.trunc() != net {
        return Err(violation(
            field,
            format!(
                "`{value}` has host bits set (the network is {})",
                net.trunc()
            ),
        ));
    }
    Ok(net)
}

/// A prefix of a guest string for an error message: errors must stay small too.
fn shown(value: &str) -> &str {
    crate::plugins::capabilities::log::truncate(value, 64)
}

fn tags(field: impl Display + Copy, tags: &[KeyValue]) -> Checked {
    list(field, tags)?;
    for (i, tag) in tags.iter().enumerate() {
        name(format_args!("{field}[{i}].key"), &tag.key)?;
        bounded(
            format_args!("{field}[{i}].value"),
            &tag.value,
            MAX_STRING_BYTES,
        )?;
    }
    Ok(())
}

fn cloud_route(field: impl Display + Copy, route: &CloudRoute) -> Checked {
    cidr(format_args!("{field}.destination"), &route.destination)?;
    match &route.target {
        RouteTarget::Instance(id) => name(format_args!("{field}.target.instance"), id),
        RouteTarget::Address(address) => {
            ip(format_args!("{field}.target.address"), address).map(drop)
        }
    }
}

/// `hostport.admit`: every mapping belongs to `pod` and to a port it declares.
pub fn admission(pod: &Pod, admission: &Admission) -> Checked {
    let mappings = match admission {
        Admission::Deny(reason) => {
            if reason.trim().is_empty() {
                return Err(violation("deny", "empty reason"));
            }
            return bounded("deny", reason, MAX_MESSAGE_BYTES);
        }
        Admission::Admit(mappings) => mappings,
    };
    list("admit", mappings)?;
    for (i, m) in mappings.iter().enumerate() {
        port_mapping(format_args!("admit[{i}]"), pod, m)?;
    }
    Ok(())
}

fn port_mapping(field: impl Display + Copy, pod: &Pod, m: &PortMapping) -> Checked {
    if m.pod_uid != pod.uid {
        return Err(violation(
            format!("{field}.pod-uid"),
            format!(
                "`{}` is not the admitted pod's uid `{}`",
                shown(&m.pod_uid),
                pod.uid
            ),
        ));
    }
    if m.pod_namespace != pod.namespace || m.pod_name != pod.name {
        return Err(violation(
            format!("{field}.pod-name"),
            format!(
                "`{}/{}` is not the admitted pod `{}/{}`",
                shown(&m.pod_namespace),
                shown(&m.pod_name),
                pod.namespace,
                pod.name
            ),
        ));
    }
    if m.host_port == 0 {
        return Err(violation(format!("{field}.host-port"), "0 is not a port"));
    }
    if m.container_port == 0 {
        return Err(violation(
            format!("{field}.container-port"),
            "0 is not a port",
        ));
    }
    if let Some(host_ip) = &m.host_ip {
        ip(format_args!("{field}.host-ip"), host_ip)?;
    }
    let container = pod
        .containers
        .iter()
        .chain(&pod.init_containers)
        .find(|c| c.name == m.container_name)
        .ok_or_else(|| {
            violation(
                format!("{field}.container-name"),
                format!("the pod has no container `{}`", shown(&m.container_name)),
            )
        })?;
    if !container
        .ports
        .iter()
        .any(|p| p.container_port == m.container_port && p.protocol == m.protocol)
    {
        return Err(violation(
            format!("{field}.container-port"),
            format!(
                "container `{}` declares no {:?} port {}",
                container.name, m.protocol, m.container_port
            ),
        ));
    }
    Ok(())
}

/// `network.plan-pod`.
pub fn pod_network_plan(plan: &PodNetworkPlan) -> Checked {
    if let Some(prefix) = plan.prefix_length
        && !(1..=128).contains(&prefix)
    {
        return Err(violation(
            "prefix-length",
            format!("{prefix} is not in 1..=128"),
        ));
    }
    list("routes", &plan.routes)?;
    for (i, route) in plan.routes.iter().enumerate() {
        let destination = cidr(format_args!("routes[{i}].destination"), &route.destination)?;
        if let NextHop::Address(address) = &route.via {
            let field = format!("routes[{i}].via.address");
            let hop = ip(&field, address)?;
            if hop.is_ipv4() != destination.addr().is_ipv4() {
                return Err(violation(
                    field,
                    format!("`{hop}` is not of the same family as `{destination}`"),
                ));
            }
        }
    }
    list("no-masquerade", &plan.no_masquerade)?;
    for (i, net) in plan.no_masquerade.iter().enumerate() {
        cidr(format_args!("no-masquerade[{i}]"), net)?;
    }
    if let Some(mtu) = plan.mtu
        && mtu < MIN_MTU
    {
        return Err(violation(
            "mtu",
            format!("{mtu} is below the minimum of {MIN_MTU}"),
        ));
    }
    Ok(())
}

/// `network.plan-cluster` (0.1.0).
pub fn cluster_network_plan(plan: &ClusterNetworkPlan) -> Checked {
    node_plan(&plan.routes, &plan.warnings)
}

/// `network.plan-node` (0.2.0): the routes and warnings of one node.
pub fn node_plan(routes: &[CloudRoute], warnings: &[String]) -> Checked {
    cloud_routes(routes)?;
    self::warnings(warnings)
}

/// Warnings shown to operators (`network.plan-routes`, and those of the plans above).
pub fn warnings(warnings: &[String]) -> Checked {
    list("warnings", warnings)?;
    for (i, warning) in warnings.iter().enumerate() {
        bounded(format_args!("warnings[{i}]"), warning, MAX_MESSAGE_BYTES)?;
    }
    Ok(())
}

/// `cloud.node-capacity`.
pub fn node_capacity(capacity: &NodeResources) -> Checked {
    if capacity.pods == 0 || capacity.pods as usize > MAX_LIST_ENTRIES {
        return Err(violation(
            "pods",
            format!("{} is not in 1..={MAX_LIST_ENTRIES}", capacity.pods),
        ));
    }
    Ok(())
}

/// A cell returned for the pod with uid `pod_uid` (`create-cell`, `get-cell`), or any of
/// this controller's cells (`list-cells`: `pod_uid` is `None`).
pub fn cell(field: impl Display + Copy, cell: &Cell, pod_uid: Option<&str>) -> Checked {
    name(format_args!("{field}.id"), &cell.id)?;
    name(format_args!("{field}.pod-uid"), &cell.pod_uid)?;
    if let Some(uid) = pod_uid
        && cell.pod_uid != uid
    {
        return Err(violation(
            format!("{field}.pod-uid"),
            format!(
                "`{}` is not the requested pod's uid `{uid}`",
                shown(&cell.pod_uid)
            ),
        ));
    }
    bounded(
        format_args!("{field}.pod-namespace"),
        &cell.pod_namespace,
        MAX_NAME_BYTES,
    )?;
    bounded(
        format_args!("{field}.pod-name"),
        &cell.pod_name,
        MAX_NAME_BYTES,
    )?;
    bounded(
        format_args!("{field}.instance-type"),
        &cell.instance_type,
        MAX_NAME_BYTES,
    )?;
    let management = cell
        .management_ip
        .as_deref()
        .map(|a| ip(format_args!("{field}.management-ip"), a))
        .transpose()?;
    let pod_ip = cell
        .pod_ip
        .as_deref()
        .map(|a| ip(format_args!("{field}.pod-ip"), a))
        .transpose()?;
    let max_prefix = match management.or(pod_ip) {
        Some(IpAddr::V4(_)) => 32,
        _ => 128,
    };
    if cell.subnet_prefix > max_prefix
        || (cell.subnet_prefix == 0 && (management.is_some() || pod_ip.is_some()))
    {
        return Err(violation(
            format!("{field}.subnet-prefix"),
            format!("{} is not in 1..={max_prefix}", cell.subnet_prefix),
        ));
    }
    if let (Some(m), Some(p)) = (management, pod_ip) {
        if m.is_ipv4() != p.is_ipv4() {
            return Err(violation(
                format!("{field}.pod-ip"),
                format!("`{p}` is not of the same family as the management IP `{m}`"),
            ));
        }
        let subnet = IpNet::new(m, cell.subnet_prefix)
            .map(|n| n.trunc())
            .map_err(|e| violation(format!("{field}.subnet-prefix"), e.to_string()))?;
        if !subnet.contains(&p) {
            return Err(violation(
                format!("{field}.pod-ip"),
                format!("`{p}` is outside the cell's subnet {subnet}"),
            ));
        }
    }
    tags(format_args!("{field}.tags"), &cell.tags)
}

/// `cloud.list-cells`.
pub fn cells(cells: &[Cell]) -> Checked {
    list("cells", cells)?;
    for (i, c) in cells.iter().enumerate() {
        cell(format_args!("cells[{i}]"), c, None)?;
    }
    Ok(())
}

/// `cloud.list-routes`.
pub fn cloud_routes(routes: &[CloudRoute]) -> Checked {
    list("routes", routes)?;
    for (i, route) in routes.iter().enumerate() {
        cloud_route(format_args!("routes[{i}]"), route)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::{Container, ContainerPort, PodRoute, Protocol};

    fn pod() -> Pod {
        Pod {
            uid: "uid-1".into(),
            namespace: "ns".into(),
            name: "web".into(),
            labels: vec![],
            annotations: vec![],
            host_network: false,
            init_containers: vec![],
            containers: vec![Container {
                name: "app".into(),
                image: "nginx".into(),
                ports: vec![ContainerPort {
                    name: None,
                    container_port: 80,
                    host_port: Some(8080),
                    host_ip: None,
                    protocol: Protocol::Tcp,
                }],
                cpu_millis: 100,
                memory_bytes: 1 << 20,
            }],
            owner_kind: None,
            runtime_class: None,
        }
    }

    fn mapping() -> PortMapping {
        PortMapping {
            pod_uid: "uid-1".into(),
            pod_namespace: "ns".into(),
            pod_name: "web".into(),
            container_name: "app".into(),
            protocol: Protocol::Tcp,
            host_ip: None,
            host_port: 8080,
            container_port: 80,
        }
    }

    fn field_of(result: Checked) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn admits_a_mapping_of_a_declared_port() {
        assert_eq!(
            admission(&pod(), &Admission::Admit(vec![mapping()])),
            Ok(())
        );
        assert_eq!(admission(&pod(), &Admission::Deny("no".into())), Ok(()));
    }

    #[test]
    fn refuses_mappings_that_do_not_match_the_pod() {
        let check = |m: PortMapping| field_of(admission(&pod(), &Admission::Admit(vec![m])));
        assert_eq!(
            check(PortMapping {
                pod_uid: "other".into(),
                ..mapping()
            }),
            "admit[0].pod-uid"
        );
        assert_eq!(
            check(PortMapping {
                container_port: 81,
                ..mapping()
            }),
            "admit[0].container-port"
        );
        assert_eq!(
            check(PortMapping {
                protocol: Protocol::Udp,
                ..mapping()
            }),
            "admit[0].container-port"
        );
        assert_eq!(
            check(PortMapping {
                container_name: "sidecar".into(),
                ..mapping()
            }),
            "admit[0].container-name"
        );
        assert_eq!(
            check(PortMapping {
                host_port: 0,
                ..mapping()
            }),
            "admit[0].host-port"
        );
        assert_eq!(
            check(PortMapping {
                host_ip: Some("10.0.0.300".into()),
                ..mapping()
            }),
            "admit[0].host-ip"
        );
        assert_eq!(
            field_of(admission(&pod(), &Admission::Deny(" ".into()))),
            "deny"
        );
    }

    fn plan() -> PodNetworkPlan {
        PodNetworkPlan {
            address_source: crate::plugins::bindings::PodAddressSource::VpcSecondary,
            prefix_length: None,
            routes: vec![PodRoute {
                destination: "0.0.0.0/0".into(),
                via: NextHop::SubnetGateway,
            }],
            no_masquerade: vec!["10.0.0.0/8".into()],
            mtu: Some(9001),
        }
    }

    #[test]
    fn checks_pod_network_plans() {
        assert_eq!(pod_network_plan(&plan()), Ok(()));
        let mut bad = plan();
        bad.routes[0].destination = "10.0.0.1/8".into();
        let v = pod_network_plan(&bad).unwrap_err();
        assert_eq!(v.field, "routes[0].destination");
        assert!(v.reason.contains("host bits"), "{}", v.reason);

        let mut bad = plan();
        bad.routes[0].via = NextHop::Address("fd00::1".into());
        assert_eq!(field_of(pod_network_plan(&bad)), "routes[0].via.address");

        let mut bad = plan();
        bad.prefix_length = Some(129);
        assert_eq!(field_of(pod_network_plan(&bad)), "prefix-length");

        let mut bad = plan();
        bad.no_masquerade = vec!["10.0.0.0/33".into()];
        assert_eq!(field_of(pod_network_plan(&bad)), "no-masquerade[0]");

        let mut bad = plan();
        bad.routes = vec![bad.routes[0].clone(); MAX_LIST_ENTRIES + 1];
        assert_eq!(field_of(pod_network_plan(&bad)), "routes");
    }

    fn a_cell() -> Cell {
        Cell {
            id: "i-0123".into(),
            pod_uid: "uid-1".into(),
            pod_namespace: "ns".into(),
            pod_name: "web".into(),
            state: crate::plugins::bindings::CellState::Running,
            management_ip: Some("10.0.1.7".into()),
            pod_ip: Some("10.0.1.8".into()),
            subnet_prefix: 24,
            instance_type: "t3.small".into(),
            tags: vec![],
        }
    }

    #[test]
    fn checks_cells() {
        assert_eq!(cell("cell", &a_cell(), Some("uid-1")), Ok(()));
        assert_eq!(
            field_of(cell("cell", &a_cell(), Some("uid-2"))),
            "cell.pod-uid"
        );
        let bad = Cell {
            pod_ip: Some("10.0.2.8".into()),
            ..a_cell()
        };
        assert_eq!(field_of(cell("cell", &bad, None)), "cell.pod-ip");
        let bad = Cell {
            subnet_prefix: 33,
            ..a_cell()
        };
        assert_eq!(field_of(cell("cell", &bad, None)), "cell.subnet-prefix");
        let bad = Cell {
            id: String::new(),
            ..a_cell()
        };
        assert_eq!(field_of(cell("cell", &bad, None)), "cell.id");
        let bad = Cell {
            id: "i".repeat(MAX_NAME_BYTES + 1),
            ..a_cell()
        };
        assert_eq!(field_of(cell("cell", &bad, None)), "cell.id");
        // Pending: no addresses yet, no prefix yet.
        let pending = Cell {
            management_ip: None,
            pod_ip: None,
            subnet_prefix: 0,
            ..a_cell()
        };
        assert_eq!(cells(&[pending]), Ok(()));
    }

    #[test]
    fn checks_cluster_plans_and_capacity() {
        let plan = ClusterNetworkPlan {
            routes: vec![CloudRoute {
                destination: "10.244.1.0/24".into(),
                target: RouteTarget::Address("10.0.0.5".into()),
            }],
            manage_routes: true,
            warnings: vec![],
        };
        assert_eq!(cluster_network_plan(&plan), Ok(()));
        let bad = ClusterNetworkPlan {
            routes: vec![CloudRoute {
                destination: "10.244.1.0/24".into(),
                target: RouteTarget::Instance(String::new()),
            }],
            ..plan.clone()
        };
        assert_eq!(
            field_of(cluster_network_plan(&bad)),
            "routes[0].target.instance"
        );
        let capacity = NodeResources {
            cpu_millis: 1000,
            memory_bytes: 1,
            pods: 0,
            ephemeral_storage_bytes: 0,
        };
        assert_eq!(field_of(node_capacity(&capacity)), "pods");
    }
}
