//! Flushing the UDP conntrack entries a change leaves stale.
//!
//! UDP has no connection end, so an entry made before a change keeps steering the flow: to
//! the old pod after a mapping is removed or changed, or to the node itself when traffic
//! arrived before the mapping existed. After a change we delete, for each UDP node port
//! whose mapping appeared, disappeared or changed, the entries whose original destination
//! is that port (and that host IP, for a bound mapping). TCP and SCTP need nothing: a stale
//! flow is reset by the old end.
//!
//! All deletions go to one `conntrack -R -` batch (conntrack-tools ≥ 1.4.6), one process
//! per change however many ports; a batch line that matches nothing is not an error there,
//! unlike a lone `conntrack -D`. The reference ctnetlink client, batched, costs one process
//! per change; a netlink crate would save that process but add a dependency for a path
//! that runs only on changes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::exec::{ExecError, Runner};
use super::rule::{Family, HostPortRule, Protocol};

/// One set of entries to delete: UDP to `host_port` on `host_ip` (every address if `None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stale {
    pub family: Family,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
}

impl Stale {
    fn batch_line(&self) -> String {
        let family = match self.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        let dst = self
            .host_ip
            .map(|ip| format!(" --orig-dst {ip}"))
            .unwrap_or_default();
        format!(
            "-D -f {family} -p udp{dst} --orig-port-dst {}\n",
            self.host_port
        )
    }
}

/// The UDP node ports whose mapping differs between `before` and `after`.
pub fn stale(before: &[HostPortRule], after: &[HostPortRule]) -> BTreeSet<Stale> {
    let before: BTreeSet<&HostPortRule> = before.iter().collect();
    let after: BTreeSet<&HostPortRule> = after.iter().collect();
    before
        .symmetric_difference(&after)
        .filter(|r| r.protocol == Protocol::Udp)
        .map(|r| Stale {
            family: r.family(),
            host_ip: r.host_ip,
            host_port: r.host_port,
        })
        .collect()
}

/// Delete the entries of every `targets` item, in one `conntrack` process.
pub async fn flush(runner: &Runner, targets: &BTreeSet<Stale>) -> Result<(), ExecError> {
    if targets.is_empty() {
        return Ok(());
    }
    let batch: String = targets.iter().map(Stale::batch_line).collect();
    runner.run("conntrack", &["-R", "-"], Some(&batch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_udp_ports_are_stale() {
        let r = |uid: &str, pod: &str, proto, host: Option<&str>, hp| {
            HostPortRule::try_new(uid, pod.parse().unwrap(), proto, host, hp, 53).unwrap()
        };
        let kept = r("a", "10.200.1.2", Protocol::Udp, None, 5353);
        let removed = r("b", "10.200.1.3", Protocol::Udp, Some("10.200.0.1"), 5354);
        let moved_old = r("c", "fd00:200::3", Protocol::Udp, None, 5355);
        let moved_new = r("c", "fd00:200::4", Protocol::Udp, None, 5355);
        let tcp_removed = r("d", "10.200.1.5", Protocol::Tcp, None, 80);
        let added = r("e", "10.200.1.6", Protocol::Udp, None, 5356);

        let before = [kept.clone(), removed, moved_old, tcp_removed];
        let after = [kept, moved_new, added];
        let lines: String = stale(&before, &after)
            .iter()
            .map(Stale::batch_line)
            .collect();
        assert_eq!(
            lines,
            "-D -f ipv4 -p udp --orig-port-dst 5356\n\
             -D -f ipv4 -p udp --orig-dst 10.200.0.1 --orig-port-dst 5354\n\
             -D -f ipv6 -p udp --orig-port-dst 5355\n"
        );
    }
}
