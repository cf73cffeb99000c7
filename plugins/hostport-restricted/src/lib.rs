//! `hostport-restricted`: a hostPort policy for clusters that limit which ports pods may
//! publish on the node. Each declared hostPort must pass, in order:
//!
//! 1. `namespaces`: the pod's namespace is listed (an empty list allows every namespace);
//! 2. `allow-privileged`: ports below 1024 need it set to `true`;
//! 3. `allowed-ports`: the port lies in one of the ranges.
//!
//! A pod failing a rule is denied with a reason that names the rule's config key. A pod that
//! passes is then held to the same collision rules as `hostport-nat`
//! ([`cellet_sdk::hostport::ports`]). Pods declaring no hostPort are always admitted.
//!
//! ```yaml
//! config:
//!   allowed-ports: ["8000-8999", "30000-32767", "9100"]   # default: every port
//!   namespaces: [monitoring, ingress]                    # default: every namespace
//!   allow-privileged: false                              # default
//! ```

use std::fmt;
use std::ops::RangeInclusive;

use cellet_sdk::hostport::{Admission, HostportPolicy, NodeMappings, PortMapping, ports};
use cellet_sdk::pod::PodView;
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    allowed_ports: Option<Vec<String>>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    allow_privileged: bool,
}

/// A range of host ports written `8000-8999`, or a single port `9100`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortRange(RangeInclusive<u16>);

impl PortRange {
    fn parse(field: &str, text: &str) -> Result<Self, PluginError> {
        let invalid = |why: &str| {
            PluginError::InvalidConfig(format!(
                "config field `{field}`: {text:?} is not a port range like \"8000-8999\" or a port like \"9100\": {why}"
            ))
        };
        let port = |s: &str| -> Result<u16, PluginError> {
            match s.trim().parse::<u16>() {
                Ok(0) => Err(invalid("ports start at 1")),
                Ok(port) => Ok(port),
                Err(err) => Err(invalid(&err.to_string())),
            }
        };
        let (low, high) = match text.split_once('-') {
            Some((low, high)) => (port(low)?, port(high)?),
            None => {
                let single = port(text)?;
                (single, single)
            }
        };
        if low > high {
            return Err(invalid("the range is empty (first port above the last)"));
        }
        Ok(PortRange(low..=high))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (low, high) = (self.0.start(), self.0.end());
        if low == high {
            write!(f, "{low}")
        } else {
            write!(f, "{low}-{high}")
        }
    }
}

#[derive(Debug)]
pub struct HostportRestricted {
    /// `None`: every port.
    allowed_ports: Option<Vec<PortRange>>,
    namespaces: Vec<String>,
    allow_privileged: bool,
}

/// Ports below this are privileged on Linux (`net.ipv4.ip_unprivileged_port_start`).
const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

impl HostportRestricted {
    /// The rule `mapping` breaks, as a denial reason; `None` when it passes them all.
    fn broken_rule(&self, pod: &PodView, mapping: &PortMapping) -> Option<String> {
        // Rendered only for a denial: admitted ports, the common case, allocate nothing.
        let port = || {
            format!(
                "{} of container {:?}",
                ports::describe(mapping),
                mapping.container_name
            )
        };
        if !self.namespaces.is_empty() && !self.namespaces.contains(&pod.namespace) {
            return Some(format!(
                "{}: namespace {:?} may not use hostPorts (rule `namespaces`: {})",
                port(),
                pod.namespace,
                self.namespaces.join(", ")
            ));
        }
        if mapping.host_port < FIRST_UNPRIVILEGED_PORT && !self.allow_privileged {
            return Some(format!(
                "{}: ports below {FIRST_UNPRIVILEGED_PORT} are privileged (rule `allow-privileged` is false)",
                port()
            ));
        }
        if let Some(ranges) = &self.allowed_ports
            && !ranges
                .iter()
                .any(|range| range.0.contains(&mapping.host_port))
        {
            let listed: Vec<String> = ranges.iter().map(PortRange::to_string).collect();
            return Some(format!(
                "{}: not in the allowed ranges (rule `allowed-ports`: {})",
                port(),
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            ));
        }
        None
    }
}

impl HostportPolicy for HostportRestricted {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        let allowed_ports = config
            .allowed_ports
            .map(|ranges| {
                ranges
                    .iter()
                    .enumerate()
                    .map(|(i, text)| PortRange::parse(&format!("allowed-ports[{i}]"), text))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(HostportRestricted {
            allowed_ports,
            namespaces: config.namespaces,
            allow_privileged: config.allow_privileged,
        })
    }

    fn admit(&self, pod: PodView, existing: NodeMappings) -> Result<Admission, PluginError> {
        let wanted = ports::declared(&pod)?;
        if let Some(reason) = wanted
            .iter()
            .find_map(|mapping| self.broken_rule(&pod, mapping))
        {
            return Ok(Admission::Deny(reason));
        }
        ports::admit(&pod, wanted, &existing)
    }
}

cellet_sdk::export_hostport_policy!(HostportRestricted);

#[cfg(test)]
mod tests {
    use cellet_sdk::testing::{MappingBuilder, PodBuilder, context};
    use cellet_sdk::types::{Pod, Protocol};
    use serde_json::json;

    use super::*;

    fn policy(config: serde_json::Value) -> HostportRestricted {
        HostportRestricted::init(context(config)).unwrap()
    }

    fn verdict(
        policy: &HostportRestricted,
        pod: Pod,
        existing: Vec<PortMapping>,
    ) -> Result<usize, String> {
        match policy
            .admit(pod.view(), NodeMappings::list(&existing))
            .unwrap()
        {
            Admission::Admit(mappings) => Ok(mappings.len()),
            Admission::Deny(reason) => Err(reason),
        }
    }

    #[test]
    fn defaults_allow_every_unprivileged_port_in_every_namespace() {
        let p = policy(json!({}));
        assert_eq!(
            verdict(
                &p,
                PodBuilder::new("any", "a").host_port(1024, 80).build(),
                vec![]
            ),
            Ok(1)
        );
        assert_eq!(
            verdict(
                &p,
                PodBuilder::new("any", "a").host_port(65535, 80).build(),
                vec![]
            ),
            Ok(1)
        );
        let reason = verdict(
            &p,
            PodBuilder::new("any", "a").host_port(80, 80).build(),
            vec![],
        )
        .unwrap_err();
        assert!(
            reason.contains("`allow-privileged`") && reason.contains("hostPort 80/TCP"),
            "{reason}"
        );
    }

    #[test]
    fn ranges_are_enforced_and_named() {
        let p = policy(json!({ "allowed-ports": ["8000-8999", "30000-32767", "9100"] }));
        for port in [8000, 8999, 30000, 32767, 9100] {
            let pod = PodBuilder::new("ns", "ok").host_port(port, 80).build();
            assert_eq!(verdict(&p, pod, vec![]), Ok(1), "port {port}");
        }
        for port in [7999, 9000, 9101, 32768] {
            let pod = PodBuilder::new("ns", "no").host_port(port, 80).build();
            let reason = verdict(&p, pod, vec![]).unwrap_err();
            assert!(
                reason.contains("`allowed-ports`: 8000-8999, 30000-32767, 9100"),
                "{reason}"
            );
        }
        let none = policy(json!({ "allowed-ports": [] }));
        let reason = verdict(
            &none,
            PodBuilder::new("ns", "no").host_port(8080, 80).build(),
            vec![],
        )
        .unwrap_err();
        assert!(reason.contains("`allowed-ports`: none"), "{reason}");
    }

    #[test]
    fn namespaces_are_enforced_only_for_pods_with_host_ports() {
        let p = policy(json!({ "namespaces": ["ingress"] }));
        assert_eq!(
            verdict(
                &p,
                PodBuilder::new("ingress", "lb")
                    .host_port(8443, 443)
                    .build(),
                vec![]
            ),
            Ok(1)
        );
        let reason = verdict(
            &p,
            PodBuilder::new("dev", "x").host_port(8443, 443).build(),
            vec![],
        )
        .unwrap_err();
        assert!(
            reason.contains("\"dev\"") && reason.contains("`namespaces`"),
            "{reason}"
        );
        assert_eq!(
            verdict(
                &p,
                PodBuilder::new("dev", "plain").port(8080).build(),
                vec![]
            ),
            Ok(0)
        );
    }

    #[test]
    fn privileged_ports_need_the_flag() {
        let p = policy(json!({ "allow-privileged": true, "allowed-ports": ["1-1023"] }));
        let pod = PodBuilder::new("ingress", "lb")
            .host_port_with(Protocol::Udp, None, 53, 53)
            .build();
        assert_eq!(verdict(&p, pod, vec![]), Ok(1));
    }

    #[test]
    fn collision_rules_still_apply_after_the_policy() {
        let p = policy(json!({ "allowed-ports": ["8000-8999"] }));
        let pod = PodBuilder::new("ns", "new").host_port(8080, 80).build();
        let held = MappingBuilder::new("ns", "old", 8080).build();
        let reason = verdict(&p, pod.clone(), vec![held]).unwrap_err();
        assert!(reason.contains("ns/old"), "{reason}");
        let own = MappingBuilder::new("ns", "new", 8080)
            .container_port(80)
            .build();
        assert_eq!(
            verdict(&p, pod, vec![own]),
            Ok(1),
            "re-admission is idempotent"
        );
    }

    #[test]
    fn bad_ranges_are_config_errors_naming_the_item() {
        for (bad, needle) in [
            ("9000-8000", "empty"),
            ("0-10", "start at 1"),
            ("80-http", "invalid digit"),
            ("70000", "too large"),
        ] {
            let err =
                HostportRestricted::init(context(json!({ "allowed-ports": ["8000-8999", bad] })))
                    .unwrap_err();
            assert!(
                matches!(&err, PluginError::InvalidConfig(m) if m.contains("`allowed-ports[1]`") && m.contains(needle)),
                "{bad}: {err:?}"
            );
        }
        let err = HostportRestricted::init(context(json!({ "namespace": ["x"] }))).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidConfig(m) if m.contains("namespace")),
            "{err:?}"
        );
    }
}
