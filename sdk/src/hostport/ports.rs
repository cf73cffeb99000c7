//! The hostPort rules every policy keeps: which mappings a pod declares, when two mappings
//! collide, and admission that refuses collisions. `hostport-nat` is exactly these rules;
//! `hostport-restricted` checks its own rules first and then applies these.
//!
//! Two mappings collide when they have the same protocol and host port and their host
//! addresses overlap: an unset host IP, `0.0.0.0` or `::` means every node address and so
//! overlaps any address; two specific addresses overlap only when equal.

use std::net::IpAddr;

use crate::hostport::{Admission, NodeMappings, PortMapping};
use crate::pod::PodView;
use crate::types::PluginError;

/// The mappings a pod asks for: one per port of its `containers` that sets a hostPort.
///
/// Init containers are not mapped: they run one after another before the pod's
/// containers and are not reachable through hostPorts, as with the kubelet. An empty
/// `hostIP` reads as unset.
///
/// # Errors
/// `InvalidInput` naming the container and port when a host port is 0 or a host IP is not
/// an address; the Kubernetes API rejects both, so such a pod is a host bug.
pub fn declared(pod: &PodView<'_>) -> Result<Vec<PortMapping>, PluginError> {
    let mut mappings = Vec::new();
    for declared in pod.host_ports() {
        let (container, port) = (&declared.container_name, &declared.port);
        let Some(host_port) = port.host_port else {
            continue;
        };
        // Named only in an error: most pods have none, and this runs on every admit.
        let field = || {
            format!(
                "pod {} container {:?} port {}/{}",
                pod.key(),
                container,
                port.container_port,
                port.protocol
            )
        };
        if host_port == 0 {
            return Err(PluginError::InvalidInput(format!(
                "{}: hostPort 0",
                field()
            )));
        }
        let host_ip = port.host_ip.as_deref().filter(|ip| !ip.is_empty());
        if let Some(ip) = host_ip {
            ip.parse::<IpAddr>().map_err(|err| {
                PluginError::InvalidInput(format!("{}: hostIP {ip:?}: {err}", field()))
            })?;
        }
        let host_ip = host_ip.map(str::to_string);
        mappings.push(PortMapping {
            pod_uid: pod.uid.clone(),
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            container_name: declared.container_name,
            protocol: port.protocol,
            host_ip,
            host_port,
            container_port: port.container_port,
        });
    }
    Ok(mappings)
}

/// Whether two node addresses of mappings overlap, as the host's `node-mappings.conflicts`
/// decides it: unset, empty, `0.0.0.0` or `::` is every address and overlaps any; two
/// addresses overlap when they are the same address (or, unparsable, the same text).
pub fn addresses_overlap(a: Option<&str>, b: Option<&str>) -> bool {
    fn every(ip: Option<&str>) -> Option<Result<IpAddr, &str>> {
        match ip {
            None | Some("") => None,
            Some(text) => match text.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(Ok(ip)),
                Err(_) => Some(Err(text)),
            },
        }
    }
    match (every(a), every(b)) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

fn bound_address(mapping: &PortMapping) -> Result<Option<IpAddr>, PluginError> {
    match mapping.host_ip.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => {
            let ip: IpAddr = text.parse().map_err(|err| {
                PluginError::InvalidInput(format!(
                    "mapping of pod {}/{} hostPort {}: hostIP {text:?}: {err}",
                    mapping.pod_namespace, mapping.pod_name, mapping.host_port
                ))
            })?;
            Ok(if ip.is_unspecified() { None } else { Some(ip) })
        }
    }
}

/// Whether two mappings claim the same protocol, port and node address.
///
/// # Errors
/// `InvalidInput` when either host IP is not an address.
pub fn collide(a: &PortMapping, b: &PortMapping) -> Result<bool, PluginError> {
    if a.protocol != b.protocol || a.host_port != b.host_port {
        return Ok(false);
    }
    Ok(match (bound_address(a)?, bound_address(b)?) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    })
}

/// `hostPort 8080/TCP on 10.0.0.5` or `hostPort 8080/TCP on every address`, for messages.
pub fn describe(mapping: &PortMapping) -> String {
    let on = match mapping.host_ip.as_deref() {
        None | Some("") => "every address".to_string(),
        Some(ip) => ip.to_string(),
    };
    format!(
        "hostPort {}/{} on {on}",
        mapping.host_port, mapping.protocol
    )
}

/// Admit `wanted` for `pod` unless a mapping collides with another of the pod's own or with
/// one held on the node by another pod; the denial names the port and the holder.
///
/// Mappings in `existing` that belong to `pod` (same UID) are ignored, so admitting a pod
/// again is idempotent.
///
/// # Errors
/// `InvalidInput` when a host IP in `wanted` or `existing` is not an address.
pub fn admit(
    pod: &PodView<'_>,
    wanted: Vec<PortMapping>,
    existing: &NodeMappings<'_>,
) -> Result<Admission, PluginError> {
    for (i, first) in wanted.iter().enumerate() {
        for second in &wanted[i + 1..] {
            if collide(first, second)? {
                return Ok(Admission::Deny(format!(
                    "{} of container {:?} collides with {} of container {:?} in the same pod {}",
                    describe(second),
                    second.container_name,
                    describe(first),
                    first.container_name,
                    pod.key()
                )));
            }
        }
    }
    for mapping in &wanted {
        // Only the mappings on the same protocol, port and an overlapping address, asked
        // of the host: on a busy node, a handful out of hundreds.
        let held = existing.conflicts(
            mapping.protocol,
            mapping.host_ip.as_deref(),
            mapping.host_port,
        );
        for held in held.iter().filter(|held| held.pod_uid != pod.uid) {
            if collide(mapping, held)? {
                let (wanted, taken) = (describe(mapping), describe(held));
                // Name the holder's mapping only when it differs (another address of the
                // node, or every address): the same words twice say nothing.
                let holder = format!(
                    "pod {}/{} (container {:?})",
                    held.pod_namespace, held.pod_name, held.container_name
                );
                return Ok(Admission::Deny(if wanted == taken {
                    format!("{wanted} is already mapped on this node for {holder}")
                } else {
                    format!("{wanted} is taken: {taken} is mapped on this node for {holder}")
                }));
            }
        }
    }
    Ok(Admission::Admit(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MappingBuilder, PodBuilder};
    use crate::types::Protocol;

    fn denial(admission: Admission) -> String {
        match admission {
            Admission::Deny(reason) => reason,
            Admission::Admit(mappings) => panic!("admitted {mappings:?}"),
        }
    }

    #[test]
    fn declared_maps_only_ports_with_a_host_port() {
        let pod = PodBuilder::new("shop", "web")
            .container("nginx")
            .port(8443)
            .host_port(8080, 80)
            .host_port_with(Protocol::Udp, Some("10.0.0.5"), 5353, 53)
            .init_container("setup")
            .host_port(9000, 9000)
            .build();
        let mappings = declared(&pod.view()).unwrap();
        assert_eq!(mappings.len(), 2);
        assert_eq!(
            (mappings[0].host_port, mappings[0].container_port),
            (8080, 80)
        );
        assert_eq!(mappings[1].protocol, Protocol::Udp);
        assert_eq!(mappings[1].host_ip.as_deref(), Some("10.0.0.5"));
        assert!(
            mappings
                .iter()
                .all(|m| m.pod_uid == pod.uid && m.container_name == "nginx")
        );
    }

    #[test]
    fn declared_rejects_a_bad_host_ip_naming_the_container() {
        let pod = PodBuilder::new("shop", "web")
            .container("nginx")
            .host_port_with(Protocol::Tcp, Some("10.0.0.300"), 8080, 80)
            .build();
        let err = declared(&pod.view()).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidInput(m) if m.contains("\"nginx\"") && m.contains("10.0.0.300")),
            "{err:?}"
        );
    }

    #[test]
    fn wildcard_collides_with_specific_addresses_of_the_same_port_only() {
        let any = MappingBuilder::new("a", "one", 8080).build();
        let zero = MappingBuilder::new("a", "two", 8080)
            .host_ip("0.0.0.0")
            .build();
        let specific = MappingBuilder::new("b", "three", 8080)
            .host_ip("10.0.0.5")
            .build();
        let other_ip = MappingBuilder::new("b", "four", 8080)
            .host_ip("10.0.0.6")
            .build();
        let udp = MappingBuilder::new("c", "five", 8080)
            .protocol(Protocol::Udp)
            .build();
        let other_port = MappingBuilder::new("c", "six", 8081).build();
        assert!(collide(&any, &specific).unwrap());
        assert!(collide(&zero, &specific).unwrap());
        assert!(collide(&zero, &any).unwrap());
        assert!(!collide(&specific, &other_ip).unwrap());
        assert!(!collide(&any, &udp).unwrap());
        assert!(!collide(&any, &other_port).unwrap());
        let v6 = MappingBuilder::new("d", "v6", 8080)
            .host_ip("fd00::1")
            .build();
        let v6_long = MappingBuilder::new("d", "v6b", 8080)
            .host_ip("fd00:0:0::1")
            .build();
        assert!(collide(&v6, &v6_long).unwrap());
    }

    #[test]
    fn denial_names_the_port_and_the_holder() {
        let pod = PodBuilder::new("shop", "web").host_port(8080, 80).build();
        let held = MappingBuilder::new("shop", "old-web", 8080)
            .container("server")
            .build();
        let reason = denial(
            admit(
                &pod.view(),
                declared(&pod.view()).unwrap(),
                &NodeMappings::list(&[held]),
            )
            .unwrap(),
        );
        assert!(reason.contains("hostPort 8080/TCP"), "{reason}");
        assert!(reason.contains("shop/old-web"), "{reason}");
    }

    #[test]
    fn a_pod_colliding_with_itself_is_denied() {
        let pod = PodBuilder::new("shop", "web")
            .container("a")
            .host_port(8080, 80)
            .container("b")
            .host_port_with(Protocol::Tcp, Some("10.1.2.3"), 8080, 81)
            .build();
        let reason = denial(
            admit(
                &pod.view(),
                declared(&pod.view()).unwrap(),
                &NodeMappings::list(&[]),
            )
            .unwrap(),
        );
        assert!(reason.contains("same pod shop/web"), "{reason}");
    }

    #[test]
    fn readmitting_the_owner_is_idempotent() {
        let pod = PodBuilder::new("shop", "web").host_port(8080, 80).build();
        let first = admit(
            &pod.view(),
            declared(&pod.view()).unwrap(),
            &NodeMappings::list(&[]),
        )
        .unwrap();
        let Admission::Admit(installed) = first.clone() else {
            panic!("{first:?}")
        };
        let again = admit(
            &pod.view(),
            declared(&pod.view()).unwrap(),
            &NodeMappings::list(&installed),
        )
        .unwrap();
        assert_eq!(again, first);
    }
}
