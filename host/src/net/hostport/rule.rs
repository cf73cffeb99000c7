//! The input of the hostPort applier: one mapping `node:hostPort → podIP:containerPort`,
//! its validation, and the choice of which mappings of a desired set can be installed
//! together.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{AddrParseError, IpAddr};
use std::str::FromStr;

/// Transport protocol of a mapping. The names are those of the WIT `protocol` enum, of
/// nft's `inet_proto` and of iptables' `-p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| RuleError::UnknownProtocol {
                value: s.to_owned(),
            })
    }
}

/// IP family of a mapping: that of its pod IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Why a mapping cannot be rendered into kernel rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The UID travels into rule comments, so it is held to the characters of a UID: a
    /// quote or a newline there would let a pod's metadata write rules.
    #[error("pod UID `{uid}` is not 1 to {MAX_UID_LEN} characters of [A-Za-z0-9._-]")]
    InvalidPodUid { uid: String },
    #[error("pod {uid}: {which} port 0 is not a port")]
    ZeroPort { uid: String, which: &'static str },
    #[error("pod {uid}: pod IP {pod_ip} cannot receive forwarded traffic")]
    UnusablePodIp { uid: String, pod_ip: IpAddr },
    #[error("pod {uid}: host IP {host_ip} and pod IP {pod_ip} are of different families")]
    FamilyMismatch {
        uid: String,
        host_ip: IpAddr,
        pod_ip: IpAddr,
    },
    #[error("pod {uid}: failed to parse host IP `{value}`: {source}")]
    InvalidHostIp {
        uid: String,
        value: String,
        source: AddrParseError,
    },
    #[error("unknown protocol `{value}` (known: tcp, udp, sctp)")]
    UnknownProtocol { value: String },
}

/// Longest pod UID accepted (Kubernetes UIDs are 36-character UUIDs).
pub const MAX_UID_LEN: usize = 64;

/// One hostPort mapping on the node: traffic to `host_ip` (every node address when `None`)
/// on `host_port` goes to `pod_ip:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPortRule {
    /// The owner: every kernel rule carries it, so a pod's rules are found and removed exactly.
    pub pod_uid: String,
    pub pod_ip: IpAddr,
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl HostPortRule {
    /// Build a rule from the fields of a policy's `port-mapping` (the host IP as the
    /// plugin's string) and the pod IP the cell got, validating it.
    pub fn try_new(
        pod_uid: impl Into<String>,
        pod_ip: IpAddr,
        protocol: Protocol,
        host_ip: Option<&str>,
        host_port: u16,
        container_port: u16,
    ) -> Result<Self, RuleError> {
        let pod_uid = pod_uid.into();
        let host_ip = match host_ip.map(str::trim) {
            // Kubernetes writes "every address" as an empty or unspecified hostIP.
            None | Some("") => None,
            Some(value) => match value.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(source) => {
                    return Err(RuleError::InvalidHostIp {
                        uid: pod_uid,
                        value: value.to_owned(),
                        source,
                    });
                }
            },
        };
        let rule = HostPortRule {
            pod_uid,
            pod_ip,
            protocol,
            host_ip,
            host_port,
            container_port,
        };
        rule.validate()?;
        Ok(rule)
    }

    pub fn family(&self) -> Family {
        Family::of(self.pod_ip)
    }

    /// Check what the renderers rely on: a safe UID, real ports, a routable pod IP, one
    /// family.
    pub fn validate(&self) -> Result<(), RuleError> {
        let uid = &self.pod_uid;
        let uid_ok = !uid.is_empty()
            && uid.len() <= MAX_UID_LEN
            && uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !uid_ok {
            return Err(RuleError::InvalidPodUid { uid: uid.clone() });
        }
        for (which, port) in [("host", self.host_port), ("container", self.container_port)] {
            if port == 0 {
                return Err(RuleError::ZeroPort {
                    uid: uid.clone(),
                    which,
                });
            }
        }
        let ip = self.pod_ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(RuleError::UnusablePodIp {
                uid: uid.clone(),
                pod_ip: ip,
            });
        }
        if let Some(host_ip) = self.host_ip
            && Family::of(host_ip) != self.family()
        {
            return Err(RuleError::FamilyMismatch {
                uid: uid.clone(),
                host_ip,
                pod_ip: ip,
            });
        }
        Ok(())
    }

    /// Whether `127.0.0.1:hostPort` reaches this mapping, which takes `route_localnet`
    /// on the way to the pod (see `localnet`). IPv6 has no such switch: `[::1]` never leaves
    /// the loopback device, so IPv6 mappings are not reachable on `::1`.
    pub fn reachable_on_loopback(&self) -> bool {
        self.family() == Family::V4 && self.host_ip.is_none_or(|ip| ip.is_loopback())
    }

    fn port_key(&self) -> (Family, Protocol, u16) {
        (self.family(), self.protocol, self.host_port)
    }

    /// Two mappings conflict when one packet could match both: same family, protocol and
    /// port, and host IPs that are equal or of which one is "every address".
    fn conflicts_with(&self, other: &HostPortRule) -> bool {
        self.port_key() == other.port_key()
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for HostPortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
            None => "*".to_owned(),
        };
        let pod = match self.pod_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        write!(
            f,
            "{}/{host}:{} -> {pod}:{} (pod {})",
            self.protocol, self.host_port, self.container_port, self.pod_uid
        )
    }
}

/// A desired mapping that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub rule: HostPortRule,
    pub reason: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error(transparent)]
    Invalid(RuleError),
    /// Another mapping holds the same node port; `holder` is its pod.
    #[error("node port held by pod {holder}")]
    Conflict { holder: String },
}

/// The mappings that can be installed together, and those that cannot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Sorted and without duplicates.
    pub accepted: Vec<HostPortRule>,
    pub rejected: Vec<Rejected>,
}

/// Choose from `desired` the mappings to install. The policy should never admit two pods
/// on one node port, but the host checks every plan: on a conflict the mapping already in
/// the kernel (`installed`) keeps the port, so a newcomer can never steal a running pod's
/// traffic; between two newcomers the smaller one (by pod UID) wins, so the outcome does not
/// depend on the order the caller listed them in.
pub fn select(desired: &[HostPortRule], installed: &[HostPortRule]) -> Selection {
    let unique: BTreeSet<&HostPortRule> = desired.iter().collect();
    let installed: BTreeSet<&HostPortRule> = installed.iter().collect();
    let (incumbents, newcomers): (Vec<&HostPortRule>, Vec<&HostPortRule>) =
        unique.into_iter().partition(|r| installed.contains(r));

    let mut selection = Selection::default();
    let mut by_port: BTreeMap<(Family, Protocol, u16), Vec<&HostPortRule>> = BTreeMap::new();
    for rule in incumbents.into_iter().chain(newcomers) {
        if let Err(e) = rule.validate() {
            selection.rejected.push(Rejected {
                rule: rule.clone(),
                reason: RejectReason::Invalid(e),
            });
            continue;
        }
        let holders = by_port.entry(rule.port_key()).or_default();
        if let Some(holder) = holders.iter().find(|h| h.conflicts_with(rule)) {
            let holder = holder.pod_uid.clone();
            selection.rejected.push(Rejected {
                rule: rule.clone(),
                reason: RejectReason::Conflict { holder },
            });
            continue;
        }
        holders.push(rule);
        selection.accepted.push(rule.clone());
    }
    selection.accepted.sort();
    selection
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(uid: &str, pod_ip: &str, host_ip: Option<&str>, port: u16) -> HostPortRule {
        HostPortRule::try_new(
            uid,
            pod_ip.parse().unwrap(),
            Protocol::Tcp,
            host_ip,
            port,
            80,
        )
        .unwrap()
    }

    #[test]
    fn unspecified_host_ip_means_every_address() {
        for host_ip in [None, Some(""), Some("0.0.0.0"), Some("::")] {
            assert_eq!(
                rule("a", "10.200.0.2", host_ip, 8080).host_ip,
                None,
                "{host_ip:?}"
            );
        }
    }

    #[test]
    fn invalid_rules_are_refused_with_the_field_named() {
        let ip: IpAddr = "10.200.0.2".parse().unwrap();
        let err = HostPortRule::try_new("a\"b", ip, Protocol::Tcp, None, 1, 1).unwrap_err();
        assert!(matches!(err, RuleError::InvalidPodUid { .. }), "{err}");
        let err = HostPortRule::try_new("a", ip, Protocol::Tcp, None, 0, 1).unwrap_err();
        assert_eq!(err.to_string(), "pod a: host port 0 is not a port");
        let err = HostPortRule::try_new("a", ip, Protocol::Tcp, Some("fd00::1"), 1, 1).unwrap_err();
        assert!(matches!(err, RuleError::FamilyMismatch { .. }), "{err}");
        let err = HostPortRule::try_new("a", ip, Protocol::Tcp, Some("nope"), 1, 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pod a: failed to parse host IP `nope`"),
            "{err}"
        );
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let err = HostPortRule::try_new("a", lo, Protocol::Tcp, None, 1, 1).unwrap_err();
        assert!(matches!(err, RuleError::UnusablePodIp { .. }), "{err}");
        assert_eq!("SCTP".parse::<Protocol>().unwrap(), Protocol::Sctp);
        assert!("icmp".parse::<Protocol>().is_err());
    }

    #[test]
    fn installed_mapping_keeps_its_port_against_a_newcomer() {
        let incumbent = rule("zzz", "10.200.0.3", None, 8080);
        let newcomer = rule("aaa", "10.200.0.2", Some("10.200.9.1"), 8080);
        let other_port = rule("bbb", "10.200.0.4", None, 8081);
        let desired = [newcomer.clone(), incumbent.clone(), other_port.clone()];

        let s = select(&desired, std::slice::from_ref(&incumbent));
        assert_eq!(s.accepted, vec![other_port.clone(), incumbent.clone()]);
        assert_eq!(
            s.rejected,
            vec![Rejected {
                rule: newcomer.clone(),
                reason: RejectReason::Conflict {
                    holder: "zzz".into()
                }
            }]
        );

        // With nothing installed, the order of the input does not decide: the smaller wins.
        let s = select(&[incumbent.clone(), newcomer.clone()], &[]);
        assert_eq!(s.accepted, vec![newcomer]);
    }

    #[test]
    fn distinct_host_ips_and_families_share_a_port() {
        let a = rule("a", "10.200.0.2", Some("10.200.9.1"), 8080);
        let b = rule("b", "10.200.0.3", Some("10.200.9.2"), 8080);
        let c = rule("c", "fd00:200::2", None, 8080);
        let s = select(&[a.clone(), b.clone(), c.clone(), a.clone()], &[]);
        assert_eq!(
            s.accepted,
            vec![a, b, c],
            "duplicates collapse, nothing conflicts"
        );
        assert!(s.rejected.is_empty());
    }
}
