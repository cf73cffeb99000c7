//! `hostport-nat`, the default hostPort policy: every hostPort a pod declares is mapped
//! (TCP, UDP and SCTP, on the declared hostIP or on every node address), and the host
//! installs a DNAT rule for each, as CNI's portmap plugin does on a regular node.
//!
//! A pod is refused when one of its mappings collides with a mapping held by another pod
//! on the node, or with another of its own; the reason names the port and the holder.
//! Admitting a pod again (same UID) is idempotent. The rules are
//! [`cellet_sdk::hostport::ports`], shared with `hostport-restricted`.
//!
//! Config: none (`{}`); an unknown key is an error, so a config meant for
//! `hostport-restricted` is not silently ignored.

use cellet_sdk::hostport::{Admission, HostportPolicy, NodeMappings, ports};
use cellet_sdk::pod::PodView;
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {}

#[derive(Debug)]
pub struct HostportNat;

impl HostportPolicy for HostportNat {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let Config {} = cellet_sdk::config(&ctx)?;
        Ok(HostportNat)
    }

    fn admit(&self, pod: PodView, existing: NodeMappings) -> Result<Admission, PluginError> {
        let wanted = ports::declared(&pod)?;
        ports::admit(&pod, wanted, &existing)
    }
}

cellet_sdk::export_hostport_policy!(HostportNat);

#[cfg(test)]
mod tests {
    use cellet_sdk::hostport::PortMapping;
    use cellet_sdk::testing::{MappingBuilder, PodBuilder, context};
    use cellet_sdk::types::{Pod, Protocol};
    use serde_json::json;

    use super::*;

    fn policy() -> HostportNat {
        HostportNat::init(context(json!({}))).unwrap()
    }

    /// `admit` as the host calls it, with the pod and the node's mappings as records.
    fn admit(pod: &Pod, held: &[PortMapping]) -> Admission {
        policy()
            .admit(pod.view(), NodeMappings::list(held))
            .unwrap()
    }

    fn admitted(admission: Admission) -> Vec<PortMapping> {
        match admission {
            Admission::Admit(mappings) => mappings,
            Admission::Deny(reason) => panic!("denied: {reason}"),
        }
    }

    fn denied(admission: Admission) -> String {
        match admission {
            Admission::Deny(reason) => reason,
            Admission::Admit(mappings) => panic!("admitted {mappings:?}"),
        }
    }

    #[test]
    fn maps_every_protocol_and_honours_host_ip() {
        let pod = PodBuilder::new("games", "server")
            .container("game")
            .host_port(7777, 7777)
            .host_port_with(Protocol::Udp, None, 7777, 7778)
            .host_port_with(Protocol::Sctp, Some("10.0.3.4"), 9899, 9899)
            .port(9090)
            .build();
        let mappings = admitted(admit(&pod.clone(), &vec![]));
        let summary: Vec<_> = mappings
            .iter()
            .map(|m| {
                (
                    m.protocol,
                    m.host_ip.as_deref(),
                    m.host_port,
                    m.container_port,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Protocol::Tcp, None, 7777, 7777),
                (Protocol::Udp, None, 7777, 7778),
                (Protocol::Sctp, Some("10.0.3.4"), 9899, 9899),
            ]
        );
        assert!(
            mappings
                .iter()
                .all(|m| m.pod_uid == pod.uid && m.pod_name == "server")
        );
    }

    #[test]
    fn a_pod_without_host_ports_is_admitted_with_no_mapping() {
        let pod = PodBuilder::new("shop", "api").port(8080).build();
        let held = vec![MappingBuilder::new("shop", "web", 8080).build()];
        assert!(admitted(admit(&pod, &held)).is_empty());
    }

    #[test]
    fn a_port_held_by_another_pod_is_denied_naming_the_holder() {
        let pod = PodBuilder::new("shop", "web-2").host_port(8080, 80).build();
        let held = vec![
            MappingBuilder::new("shop", "web-1", 8080)
                .container("nginx")
                .build(),
            MappingBuilder::new("shop", "db", 5432).build(),
        ];
        let reason = denied(admit(&pod, &held));
        assert!(reason.contains("hostPort 8080/TCP"), "{reason}");
        assert!(reason.contains("shop/web-1"), "{reason}");
        assert!(reason.contains("nginx"), "{reason}");
    }

    #[test]
    fn every_address_collides_with_a_specific_address_and_back() {
        let wildcard = PodBuilder::new("a", "any").host_port(8080, 80).build();
        let specific = MappingBuilder::new("b", "one-ip", 8080)
            .host_ip("10.0.0.5")
            .build();
        denied(admit(&wildcard, &vec![specific]));

        let specific_pod = PodBuilder::new("b", "one-ip")
            .host_port_with(Protocol::Tcp, Some("10.0.0.5"), 8080, 80)
            .build();
        let zero = MappingBuilder::new("a", "any", 8080)
            .host_ip("0.0.0.0")
            .build();
        denied(admit(&specific_pod.clone(), &vec![zero]));

        // Other address, other protocol: no collision.
        let other_ip = MappingBuilder::new("c", "other-ip", 8080)
            .host_ip("10.0.0.6")
            .build();
        let udp = MappingBuilder::new("c", "udp", 8080)
            .protocol(Protocol::Udp)
            .build();
        admitted(admit(&specific_pod, &vec![other_ip, udp]));
    }

    #[test]
    fn a_pod_colliding_with_itself_is_denied() {
        let pod = PodBuilder::new("shop", "web")
            .container("a")
            .host_port(8080, 80)
            .container("b")
            .host_port(8080, 8080)
            .build();
        let reason = denied(admit(&pod, &vec![]));
        assert!(reason.contains("same pod shop/web"), "{reason}");
    }

    #[test]
    fn readmitting_the_owner_is_idempotent() {
        let pod = PodBuilder::new("shop", "web").host_port(8080, 80).build();
        let first = admitted(admit(&pod.clone(), &vec![]));
        let mut node = first.clone();
        node.push(MappingBuilder::new("shop", "db", 5432).build());
        let again = admitted(admit(&pod, &node));
        assert_eq!(again, first);
    }

    #[test]
    fn config_keys_are_refused() {
        let err =
            HostportNat::init(context(json!({ "allowed-ports": ["8000-8999"] }))).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidConfig(m) if m.contains("allowed-ports")),
            "{err:?}"
        );
    }
}
