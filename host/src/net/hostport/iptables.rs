//! The iptables backend (config `backend: iptables`), for nodes whose other tools still
//! live in iptables: chains of our own, rewritten whole by one `iptables-restore --noflush`
//! per family and change.
//!
//! Layout (CNI portmap's, with its pains removed):
//! - nat `CELLET-HOSTPORT-DNAT`, entered from PREROUTING and OUTPUT for local destinations:
//!   one DNAT rule per mapping, hostIP-bound ones first. Declaring the chain in the batch
//!   (`:CELLET-HOSTPORT-DNAT - [0:0]`) flushes it under `--noflush`, so the batch *is* the
//!   chain's new content: re-applying is idempotent and a removed pod's rules go away with
//!   no per-rule delete that could fail or miss. portmap adds and deletes rule by rule, one
//!   `iptables` process each, every one taking the xtables lock.
//! - nat `CELLET-HOSTPORT-MASQ`, entered from POSTROUTING: masquerade exactly the
//!   connections a mapping DNATed (`--ctstate DNAT --ctorigdstport`), for the reasons given
//!   in `nftables` (the pod is on another machine; hairpin; localhost).
//! - raw `CELLET-HOSTPORT-GUARD` (IPv4), entered from PREROUTING: the `route_localnet` guard,
//!   as in `nftables`.
//!
//! Every rule carries the pod UID as its comment. The jumps from the built-in chains are
//! added only when `iptables-save` does not show them, so they exist once. Nothing but these
//! chains and the jumps into them is written; IPv4 and IPv6 are one transaction each
//! (iptables has no batch spanning both). `--wait` bounds the wait for the xtables lock
//! that legacy iptables takes, instead of failing at once on contention.

use std::net::IpAddr;

use super::exec::{ExecError, Runner};
use super::rule::{Family, HostPortRule};

pub const DNAT_CHAIN: &str = "CELLET-HOSTPORT-DNAT";
pub const MASQ_CHAIN: &str = "CELLET-HOSTPORT-MASQ";
pub const GUARD_CHAIN: &str = "CELLET-HOSTPORT-GUARD";

/// How long `iptables-restore` waits for the xtables lock held by another process.
const LOCK_WAIT: &str = "--wait=10";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to apply the {family} chains with {tool}: {source}")]
    Apply {
        family: &'static str,
        tool: &'static str,
        source: ExecError,
    },
    #[error("failed to list the {family} rules with {tool}: {source}")]
    List {
        family: &'static str,
        tool: &'static str,
        source: ExecError,
    },
    #[error("failed to parse rule in chain {chain}: unexpected `{line}`")]
    Parse { chain: &'static str, line: String },
}

/// A jump from a built-in chain into one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Jump {
    table: &'static str,
    from: &'static str,
    to: &'static str,
    /// Matches and comment between `-A FROM` and `-j TO`.
    spec: &'static str,
}

const JUMPS: [Jump; 4] = [
    Jump {
        table: "nat",
        from: "PREROUTING",
        to: DNAT_CHAIN,
        spec: "-m comment --comment \"cellet hostPort DNAT\" -m addrtype --dst-type LOCAL",
    },
    Jump {
        table: "nat",
        from: "OUTPUT",
        to: DNAT_CHAIN,
        spec: "-m comment --comment \"cellet hostPort DNAT\" -m addrtype --dst-type LOCAL",
    },
    Jump {
        table: "nat",
        from: "POSTROUTING",
        to: MASQ_CHAIN,
        spec: "-m comment --comment \"cellet hostPort masquerade\"",
    },
    Jump {
        table: "raw",
        from: "PREROUTING",
        to: GUARD_CHAIN,
        spec: "-m comment --comment \"cellet hostPort localnet guard\"",
    },
];

fn tools(family: Family) -> (&'static str, &'static str, &'static str) {
    match family {
        Family::V4 => ("IPv4", "iptables-save", "iptables-restore"),
        Family::V6 => ("IPv6", "ip6tables-save", "ip6tables-restore"),
    }
}

/// The guard is IPv4 only: IPv6 has no `route_localnet`, `::1` never leaves `lo`.
fn jumps(family: Family) -> impl Iterator<Item = &'static Jump> {
    JUMPS
        .iter()
        .filter(move |j| family == Family::V4 || j.to != GUARD_CHAIN)
}

/// What `iptables-save` and `ip6tables-save` show of ours.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The mappings in the DNAT chains, both families, sorted.
    pub rules: Vec<HostPortRule>,
    /// Jumps already present, per family (`JUMPS` order).
    present: [Vec<bool>; 2],
}

fn slot(family: Family) -> usize {
    match family {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// Read our chains and jumps back from the kernel.
pub async fn list(runner: &Runner) -> Result<Snapshot, Error> {
    let mut snapshot = Snapshot::default();
    for family in [Family::V4, Family::V6] {
        let (name, save, _) = tools(family);
        let dump = runner
            .run(save, &[], None)
            .await
            .map_err(|source| Error::List {
                family: name,
                tool: save,
                source,
            })?;
        let (rules, present) = parse_save(&dump, family)?;
        snapshot.rules.extend(rules);
        snapshot.present[slot(family)] = present;
    }
    snapshot.rules.sort();
    Ok(snapshot)
}

/// Parse one family's `iptables-save` output: our DNAT chain's rules, and which of our
/// jumps exist.
fn parse_save(dump: &str, family: Family) -> Result<(Vec<HostPortRule>, Vec<bool>), Error> {
    let mut table = "";
    let mut rules = Vec::new();
    let mut present: Vec<bool> = jumps(family).map(|_| false).collect();
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = match name {
                "nat" => "nat",
                "raw" => "raw",
                _ => "",
            };
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rest.split(' ').next().unwrap_or_default();
        for (i, jump) in jumps(family).enumerate() {
            if table == jump.table
                && chain == jump.from
                && line.ends_with(&format!(" -j {}", jump.to))
            {
                present[i] = true;
            }
        }
        if table == "nat" && chain == DNAT_CHAIN {
            let rule = parse_dnat(line).ok_or_else(|| Error::Parse {
                chain: DNAT_CHAIN,
                line: line.to_owned(),
            })?;
            rules.push(rule);
        }
    }
    rules.sort();
    Ok((rules, present))
}

/// `-A CELLET-HOSTPORT-DNAT [-d H/32] -p P -m P --dport N -m comment --comment UID -j DNAT --to-destination A:N`
fn parse_dnat(line: &str) -> Option<HostPortRule> {
    let tokens = tokenize(line)?;
    let value = |flag: &str| {
        tokens
            .iter()
            .position(|t| t == flag)
            .and_then(|i| tokens.get(i + 1))
            .map(String::as_str)
    };
    let host_ip = match value("-d") {
        Some(d) => Some(d.split('/').next()?.parse().ok()?),
        None => None,
    };
    let to = value("--to-destination")?;
    let (pod_ip, container_port) = to.rsplit_once(':')?;
    let pod_ip: IpAddr = pod_ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(HostPortRule {
        pod_uid: value("--comment")?.to_owned(),
        pod_ip,
        protocol: value("-p")?.parse().ok()?,
        host_ip,
        host_port: value("--dport")?.parse().ok()?,
        container_port: container_port.parse().ok()?,
    })
}

/// Split an `iptables-save` line into words, honouring double quotes (comments).
fn tokenize(line: &str) -> Option<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ').is_some() {}
        let Some(&first) = chars.peek() else {
            return Some(tokens);
        };
        let mut token = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => token.push(chars.next()?),
                    c => token.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ' ') {
                token.push(c);
            }
        }
        tokens.push(token);
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}/32"),
        IpAddr::V6(ip) => format!("{ip}/128"),
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

/// Render one family's `iptables-restore --noflush` batch holding exactly `rules` (of that
/// family), adding the jumps that `present` says are missing.
fn render(family: Family, rules: &[HostPortRule], present: &[bool]) -> String {
    let mut rules: Vec<&HostPortRule> = rules.iter().filter(|r| r.family() == family).collect();
    // hostIP-bound mappings before those for every address, then the usual order.
    rules.sort_by_key(|r| (r.host_ip.is_none(), *r));
    let missing = |table: &'static str| {
        jumps(family)
            .enumerate()
            .filter(move |(i, j)| j.table == table && !present.get(*i).copied().unwrap_or(false))
            .map(|(_, j)| format!("-A {} {} -j {}\n", j.from, j.spec, j.to))
    };
    let mut out = String::from("*nat\n");
    out += &format!(":{DNAT_CHAIN} - [0:0]\n:{MASQ_CHAIN} - [0:0]\n");
    out.extend(missing("nat"));
    for r in &rules {
        let dest = r
            .host_ip
            .map(|h| format!("-d {} ", host(h)))
            .unwrap_or_default();
        out += &format!(
            "-A {DNAT_CHAIN} {dest}-p {p} -m {p} --dport {} -m comment --comment \"{}\" -j DNAT --to-destination {}\n",
            r.host_port,
            r.pod_uid,
            endpoint(r.pod_ip, r.container_port),
            p = r.protocol,
        );
    }
    for r in &rules {
        out += &format!(
            "-A {MASQ_CHAIN} -d {} -p {p} -m {p} --dport {} -m conntrack --ctstate DNAT --ctorigdstport {} -m comment --comment \"{}\" -j MASQUERADE\n",
            host(r.pod_ip),
            r.container_port,
            r.host_port,
            r.pod_uid,
            p = r.protocol,
        );
    }
    out += "COMMIT\n";
    if family == Family::V4 {
        out += &format!("*raw\n:{GUARD_CHAIN} - [0:0]\n");
        out.extend(missing("raw"));
        out += &format!("-A {GUARD_CHAIN} -d 127.0.0.0/8 ! -i lo -j DROP\nCOMMIT\n");
    }
    out
}

/// Make our chains hold exactly `rules`: one `iptables-restore` and one
/// `ip6tables-restore`, each a transaction.
pub async fn apply(
    runner: &Runner,
    rules: &[HostPortRule],
    snapshot: &Snapshot,
) -> Result<(), Error> {
    for family in [Family::V4, Family::V6] {
        let (name, _, restore) = tools(family);
        let batch = render(family, rules, &snapshot.present[slot(family)]);
        runner
            .run(restore, &[LOCK_WAIT, "--noflush"], Some(&batch))
            .await
            .map_err(|source| Error::Apply {
                family: name,
                tool: restore,
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::hostport::rule::Protocol;

    fn rules() -> Vec<HostPortRule> {
        let r = |uid: &str, pod: &str, proto, host: Option<&str>, hp, cp| {
            HostPortRule::try_new(uid, pod.parse().unwrap(), proto, host, hp, cp).unwrap()
        };
        vec![
            r("pod-a", "10.200.1.2", Protocol::Tcp, None, 8080, 80),
            r(
                "pod-b",
                "10.200.1.3",
                Protocol::Sctp,
                Some("10.200.0.1"),
                9000,
                9,
            ),
            r(
                "pod-c",
                "fd00:200::3",
                Protocol::Udp,
                Some("fd00:200::1"),
                5353,
                53,
            ),
        ]
    }

    #[test]
    fn renders_owned_chains_and_only_the_missing_jumps() {
        let expected = r#"*nat
:CELLET-HOSTPORT-DNAT - [0:0]
:CELLET-HOSTPORT-MASQ - [0:0]
-A OUTPUT -m comment --comment "cellet hostPort DNAT" -m addrtype --dst-type LOCAL -j CELLET-HOSTPORT-DNAT
-A CELLET-HOSTPORT-DNAT -d 10.200.0.1/32 -p sctp -m sctp --dport 9000 -m comment --comment "pod-b" -j DNAT --to-destination 10.200.1.3:9
-A CELLET-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -m comment --comment "pod-a" -j DNAT --to-destination 10.200.1.2:80
-A CELLET-HOSTPORT-MASQ -d 10.200.1.3/32 -p sctp -m sctp --dport 9 -m conntrack --ctstate DNAT --ctorigdstport 9000 -m comment --comment "pod-b" -j MASQUERADE
-A CELLET-HOSTPORT-MASQ -d 10.200.1.2/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 -m comment --comment "pod-a" -j MASQUERADE
COMMIT
*raw
:CELLET-HOSTPORT-GUARD - [0:0]
-A CELLET-HOSTPORT-GUARD -d 127.0.0.0/8 ! -i lo -j DROP
COMMIT
"#;
        // PREROUTING, POSTROUTING and the raw guard jump exist already; OUTPUT's is missing.
        assert_eq!(
            render(Family::V4, &rules(), &[true, false, true, true]),
            expected
        );

        let v6 = render(Family::V6, &rules(), &[false, false, false]);
        assert!(v6.contains("-A CELLET-HOSTPORT-DNAT -d fd00:200::1/128 -p udp -m udp --dport 5353 -m comment --comment \"pod-c\" -j DNAT --to-destination [fd00:200::3]:53\n"), "{v6}");
        assert!(v6.contains("-A PREROUTING "), "{v6}");
        assert!(!v6.contains("*raw"), "no localnet guard for IPv6: {v6}");
    }

    #[test]
    fn parses_a_save_dump_back_into_rules_and_jumps() {
        let dump = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*raw
:PREROUTING ACCEPT [0:0]
:CELLET-HOSTPORT-GUARD - [0:0]
-A PREROUTING -m comment --comment "cellet hostPort localnet guard" -j CELLET-HOSTPORT-GUARD
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:CELLET-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment "cellet hostPort DNAT" -m addrtype --dst-type LOCAL -j CELLET-HOSTPORT-DNAT
-A PREROUTING -j FOREIGN-CHAIN
-A CELLET-HOSTPORT-DNAT -d 10.200.0.1/32 -p sctp -m sctp --dport 9000 -m comment --comment pod-b -j DNAT --to-destination 10.200.1.3:9
-A CELLET-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -m comment --comment "pod-a" -j DNAT --to-destination 10.200.1.2:80
-A FOREIGN-CHAIN -p tcp -m tcp --dport 1 -j DNAT --to-destination 10.200.1.9:1
COMMIT
"#;
        let (rules, present) = parse_save(dump, Family::V4).unwrap();
        assert_eq!(rules, self::rules()[..2].to_vec());
        assert_eq!(present, vec![true, false, false, true]);

        let bad = "*nat\n-A CELLET-HOSTPORT-DNAT -p tcp -j ACCEPT\n";
        let err = parse_save(bad, Family::V4).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to parse rule in chain CELLET-HOSTPORT-DNAT"),
            "{err}"
        );
    }
}
