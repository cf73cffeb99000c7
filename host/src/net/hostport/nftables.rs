//! The nftables backend (the default): one table of our own, `inet cellet-hostport`,
//! holding IPv4 and IPv6 together, replaced whole in one `nft -f` transaction per change.
//!
//! Layout, and why:
//! - The mappings are *elements of verdict-free maps*, not one rule per mapping: the DNAT
//!   rules are a fixed eight and look a packet up in O(1), where CNI portmap's per-container
//!   chains are walked in line; 1,000 pods cost 1,000 map elements, not 3,000 rules.
//!   `bound4`/`bound6` hold mappings with a hostIP (keyed by it), `any4`/`any6` those for
//!   every node address (`fib daddr type local`). Each element's comment is the pod UID,
//!   which is how [`list`] gives back whose mapping it is.
//! - `endpoints4`/`endpoints6` are the pod endpoints we DNAT to; `postrouting` masquerades
//!   connections DNATed to them. Every hostPort connection is masqueraded, not only
//!   hairpin and localhost ones: the pod runs in a cell, another machine, whose replies
//!   follow the VPC's routes and not the node, so without SNAT to the node the reply would
//!   skip the node's conntrack and the client would drop it. The same rule covers hairpin
//!   (a pod reaching its own hostPort: source == destination after DNAT) and localhost
//!   (source 127.0.0.1). The match is on the DNAT result because nft cannot put
//!   `ct original proto-dst` in a set key; a connection another owner DNATs to the same
//!   pod endpoint is masqueraded too, which only hides its client address.
//! - `localnet-guard` drops packets arriving from outside to 127.0.0.0/8, which
//!   `route_localnet` (needed for localhost access, see `localnet`) would otherwise accept
//!   (CVE-2020-8558). It restores the kernel's default and runs before NAT, so the replies
//!   of localhost connections (addressed to the node until conntrack un-NATs them) pass.
//!
//! The transaction is `add table; delete table; table { … }`: creating the table first
//! makes the delete valid when it does not exist yet, and the kernel commits the batch as
//! one, so packets meet either the old ruleset or the new one. Nothing outside this table is
//! read or written.
//!
//! The text is rendered here and fed to one `nft -f -`, rather than built with the
//! `nftables` crate's JSON types: the ruleset has a fixed shape, the text is what an
//! operator reads in `nft list table`, and the tests compare it as text.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::Value;

use super::exec::{ExecError, Runner};
use super::rule::{Family, HostPortRule, Protocol};

/// The table we own, in the `inet` family.
pub const TABLE: &str = "cellet-hostport";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to apply the nftables transaction: {0}")]
    Apply(#[source] ExecError),
    #[error("failed to list table inet {TABLE}: {0}")]
    List(#[source] ExecError),
    #[error("failed to parse `nft -j list table inet {TABLE}`: {0}")]
    Json(#[source] serde_json::Error),
    #[error("failed to read an element of map `{map}` in table inet {TABLE}: unexpected {element}")]
    Element { map: String, element: String },
}

/// The maps, by family and by whether the mapping has a hostIP.
fn map_name(family: Family, bound: bool) -> &'static str {
    match (family, bound) {
        (Family::V4, true) => "bound4",
        (Family::V4, false) => "any4",
        (Family::V6, true) => "bound6",
        (Family::V6, false) => "any6",
    }
}

/// Render the whole transaction that makes the table hold exactly `rules`.
pub fn render(rules: &[HostPortRule]) -> String {
    let mut out = String::new();
    let w = &mut out;
    // `writeln!` into a String cannot fail.
    let _ = writeln!(w, "add table inet {TABLE}");
    let _ = writeln!(w, "delete table inet {TABLE}");
    let _ = writeln!(w, "table inet {TABLE} {{");
    for family in [Family::V4, Family::V6] {
        let addr = match family {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        };
        for bound in [true, false] {
            let key = if bound {
                format!("{addr} . inet_proto . inet_service")
            } else {
                "inet_proto . inet_service".to_owned()
            };
            let elements: Vec<String> = rules
                .iter()
                .filter(|r| r.family() == family && r.host_ip.is_some() == bound)
                .map(|r| {
                    let host = r.host_ip.map(|h| format!("{h} . ")).unwrap_or_default();
                    format!(
                        "{host}{} . {} comment \"{}\" : {} . {}",
                        r.protocol, r.host_port, r.pod_uid, r.pod_ip, r.container_port
                    )
                })
                .collect();
            let _ = writeln!(w, "\tmap {} {{", map_name(family, bound));
            let _ = writeln!(w, "\t\ttype {key} : {addr} . inet_service");
            write_elements(w, &elements);
            let _ = writeln!(w, "\t}}");
        }
        let mut endpoints: Vec<(IpAddr, Protocol, u16)> = rules
            .iter()
            .filter(|r| r.family() == family)
            .map(|r| (r.pod_ip, r.protocol, r.container_port))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let elements: Vec<String> = endpoints
            .iter()
            .map(|(ip, proto, port)| format!("{ip} . {proto} . {port}"))
            .collect();
        let _ = writeln!(w, "\tset endpoints{} {{", suffix(family));
        let _ = writeln!(w, "\t\ttype {addr} . inet_proto . inet_service");
        write_elements(w, &elements);
        let _ = writeln!(w, "\t}}");
    }
    // `dstnat` is accepted as a priority name for prerouting only (nft 1.0.6); -100 is its
    // value, the same as iptables' nat table.
    for (chain, hook, priority) in [
        ("prerouting", "prerouting", "dstnat"),
        ("output", "output", "-100"),
    ] {
        let _ = writeln!(w, "\tchain {chain} {{");
        let _ = writeln!(
            w,
            "\t\ttype nat hook {hook} priority {priority}; policy accept;"
        );
        for (family, ip, nfproto) in [(Family::V4, "ip", "ipv4"), (Family::V6, "ip6", "ipv6")] {
            let _ = writeln!(
                w,
                "\t\tmeta nfproto {nfproto} dnat {ip} to {ip} daddr . meta l4proto . th dport map @{}",
                map_name(family, true)
            );
            let _ = writeln!(
                w,
                "\t\tmeta nfproto {nfproto} fib daddr type local dnat {ip} to meta l4proto . th dport map @{}",
                map_name(family, false)
            );
        }
        let _ = writeln!(w, "\t}}");
    }
    let _ = writeln!(w, "\tchain postrouting {{");
    let _ = writeln!(
        w,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(
        w,
        "\t\tct status dnat ip daddr . meta l4proto . th dport @endpoints4 masquerade"
    );
    let _ = writeln!(
        w,
        "\t\tct status dnat ip6 daddr . meta l4proto . th dport @endpoints6 masquerade"
    );
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "\tchain localnet-guard {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook prerouting priority raw; policy accept;"
    );
    let _ = writeln!(w, "\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 drop");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "}}");
    out
}

fn suffix(family: Family) -> &'static str {
    match family {
        Family::V4 => "4",
        Family::V6 => "6",
    }
}

fn write_elements(w: &mut String, elements: &[String]) {
    if elements.is_empty() {
        return;
    }
    let _ = writeln!(w, "\t\telements = {{");
    let _ = writeln!(w, "\t\t\t{}", elements.join(",\n\t\t\t"));
    let _ = writeln!(w, "\t\t}}");
}

/// Replace the table with one holding exactly `rules`, in one transaction.
pub async fn apply(runner: &Runner, rules: &[HostPortRule]) -> Result<(), Error> {
    runner
        .run("nft", &["-f", "-"], Some(&render(rules)))
        .await
        .map_err(Error::Apply)?;
    Ok(())
}

/// The mappings the table holds now (none if the table does not exist), read back from
/// the kernel: this, not memory, is what a reconcile compares against, so a restarted host
/// sees what its predecessor left.
pub async fn list(runner: &Runner) -> Result<Vec<HostPortRule>, Error> {
    match runner
        .run("nft", &["-j", "list", "table", "inet", TABLE], None)
        .await
    {
        Ok(json) => parse_listing(&json),
        Err(e)
            if e.stderr()
                .is_some_and(|s| s.contains("No such file or directory")) =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(Error::List(e)),
    }
}

/// Read the mappings out of `nft -j list table` output: the elements of the four maps.
pub fn parse_listing(json: &str) -> Result<Vec<HostPortRule>, Error> {
    let listing: Value = serde_json::from_str(json).map_err(Error::Json)?;
    let objects = listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice);
    let mut rules = Vec::new();
    for map in objects
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o.get("map"))
    {
        let Some(name) = map.get("name").and_then(Value::as_str) else {
            continue;
        };
        let bound = match name {
            "bound4" | "bound6" => true,
            "any4" | "any6" => false,
            _ => continue,
        };
        let elements = map.get("elem").and_then(Value::as_array).map(Vec::as_slice);
        for element in elements.unwrap_or_default() {
            let rule = parse_element(element, bound).ok_or_else(|| Error::Element {
                map: name.to_owned(),
                element: element.to_string(),
            })?;
            rules.push(rule);
        }
    }
    rules.sort();
    Ok(rules)
}

/// `[{"elem": {"val": {"concat": [host?, proto, port]}, "comment": uid}}, {"concat": [ip, port]}]`
fn parse_element(element: &Value, bound: bool) -> Option<HostPortRule> {
    let [key, value] = element.as_array()?.as_slice() else {
        return None;
    };
    let key = key.get("elem")?;
    let pod_uid = key.get("comment")?.as_str()?.to_owned();
    let mut fields = key.get("val")?.get("concat")?.as_array()?.iter();
    let host_ip = if bound {
        Some(fields.next()?.as_str()?.parse().ok()?)
    } else {
        None
    };
    let protocol = fields.next()?.as_str()?.parse().ok()?;
    let host_port = u16::try_from(fields.next()?.as_u64()?).ok()?;
    let [pod_ip, container_port] = value.get("concat")?.as_array()?.as_slice() else {
        return None;
    };
    Some(HostPortRule {
        pod_uid,
        pod_ip: pod_ip.as_str()?.parse().ok()?,
        protocol,
        host_ip,
        host_port,
        container_port: u16::try_from(container_port.as_u64()?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<HostPortRule> {
        let r = |uid: &str, pod: &str, proto, host: Option<&str>, hp, cp| {
            HostPortRule::try_new(uid, pod.parse().unwrap(), proto, host, hp, cp).unwrap()
        };
        let mut rules = vec![
            r("pod-a", "10.200.1.2", Protocol::Tcp, None, 8080, 80),
            r("pod-a", "10.200.1.2", Protocol::Udp, None, 5353, 53),
            r(
                "pod-b",
                "10.200.1.3",
                Protocol::Sctp,
                Some("10.200.0.1"),
                9000,
                9,
            ),
            r("pod-c", "fd00:200::3", Protocol::Tcp, None, 8080, 80),
        ];
        rules.sort();
        rules
    }

    #[test]
    fn renders_the_whole_table_as_one_transaction() {
        let expected = r#"add table inet cellet-hostport
delete table inet cellet-hostport
table inet cellet-hostport {
	map bound4 {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
		elements = {
			10.200.0.1 . sctp . 9000 comment "pod-b" : 10.200.1.3 . 9
		}
	}
	map any4 {
		type inet_proto . inet_service : ipv4_addr . inet_service
		elements = {
			tcp . 8080 comment "pod-a" : 10.200.1.2 . 80,
			udp . 5353 comment "pod-a" : 10.200.1.2 . 53
		}
	}
	set endpoints4 {
		type ipv4_addr . inet_proto . inet_service
		elements = {
			10.200.1.2 . tcp . 80,
			10.200.1.2 . udp . 53,
			10.200.1.3 . sctp . 9
		}
	}
	map bound6 {
		type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
	}
	map any6 {
		type inet_proto . inet_service : ipv6_addr . inet_service
		elements = {
			tcp . 8080 comment "pod-c" : fd00:200::3 . 80
		}
	}
	set endpoints6 {
		type ipv6_addr . inet_proto . inet_service
		elements = {
			fd00:200::3 . tcp . 80
		}
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @bound4
		meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @any4
		meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @bound6
		meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @any6
	}
	chain output {
		type nat hook output priority -100; policy accept;
		meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @bound4
		meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @any4
		meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @bound6
		meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @any6
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ip daddr . meta l4proto . th dport @endpoints4 masquerade
		ct status dnat ip6 daddr . meta l4proto . th dport @endpoints6 masquerade
	}
	chain localnet-guard {
		type filter hook prerouting priority raw; policy accept;
		iifname != "lo" ip daddr 127.0.0.0/8 drop
	}
}
"#;
        assert_eq!(render(&rules()), expected);
    }

    #[test]
    fn parses_the_elements_of_a_listing_back_into_rules() {
        // The shape `nft -j list table` prints (nft 1.0.6), trimmed to what is read.
        let json = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
          {"table": {"family": "inet", "name": "cellet-hostport", "handle": 1}},
          {"map": {"family": "inet", "name": "bound4", "table": "cellet-hostport",
            "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
            "elem": [[{"elem": {"val": {"concat": ["10.200.0.1", "sctp", 9000]}, "comment": "pod-b"}},
                      {"concat": ["10.200.1.3", 9]}]]}},
          {"map": {"family": "inet", "name": "any4", "table": "cellet-hostport",
            "type": ["inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
            "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "pod-a"}}, {"concat": ["10.200.1.2", 80]}],
                     [{"elem": {"val": {"concat": ["udp", 5353]}, "comment": "pod-a"}}, {"concat": ["10.200.1.2", 53]}]]}},
          {"map": {"family": "inet", "name": "any6", "table": "cellet-hostport",
            "type": ["inet_proto", "inet_service"], "map": "ipv6_addr . inet_service",
            "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "pod-c"}}, {"concat": ["fd00:200::3", 80]}]]}},
          {"set": {"family": "inet", "name": "endpoints4", "table": "cellet-hostport"}}]}"#;
        assert_eq!(parse_listing(json).unwrap(), rules());
    }

    #[test]
    fn an_element_without_owner_is_an_error_naming_the_map() {
        let json = r#"{"nftables": [{"map": {"name": "any4",
            "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.200.1.2", 80]}]]}}]}"#;
        let err = parse_listing(json).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to read an element of map `any4`"),
            "{err}"
        );
    }
}
