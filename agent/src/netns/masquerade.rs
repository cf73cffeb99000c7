//! The pod's SNAT: traffic from the pod that leaves the cell by its management interface
//! for a destination outside the plan's no-masquerade CIDRs takes the cell's management
//! address, as a node masquerades its pods' traffic to the outside world. Inside those CIDRs
//! (the VPC, the cluster's pods and nodes) the pod keeps its own address.
//!
//! The rules live in the `postrouting` chain of the cell's table ([`super::isolation`]),
//! written over netlink as one transaction, the messages `nft -f` would send for
//!
//! ```text
//! table inet cellet_agent {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         meta nfproto ipv4 ip saddr POD_IP ip daddr CIDR return        # one per CIDR
//!         meta nfproto ipv4 ip saddr POD_IP oifname "eth0" snat ip to MANAGEMENT_IP
//!     }
//! }
//! ```
//!
//! One rule per CIDR rather than an interval set: the strategies list overlapping CIDRs
//! (VPC and cluster ranges), which an interval set refuses unless they are merged first,
//! and the lists are short. The chain is the cell's (made with the table when the agent
//! starts), so a pod adds rules only, which registers no hook; the pod's teardown flushes
//! the chain, whose only rules are the cell's one pod's. An agent that starts again
//! replaces the table, rules included, and its pod's saved apply loads them again at once
//! (`Agent::resume`): new connections opened in between leave with the pod's address.

use std::net::Ipv4Addr;

use super::NFT_TABLE;
use super::isolation::{
    Attributes, Batch, Expression, NFT_CMP_EQ, NFT_MSG_DELRULE, NFT_REG_1, NFTA_CMP_DATA,
    NFTA_CMP_OP, NFTA_CMP_SREG, NFTA_DATA_VALUE, NFTA_IMMEDIATE_DATA, NFTA_IMMEDIATE_DREG,
    NFTA_META_DREG, NFTA_META_KEY, NFTA_RULE_CHAIN, NFTA_RULE_TABLE, bitwise_and, expression,
    interface_name_is, verdict,
};

const CHAIN: &str = "postrouting";
/// `netfilter.h`: `NF_INET_POST_ROUTING`; `NF_IP_PRI_NAT_SRC` (`srcnat`).
const NF_INET_POST_ROUTING: u32 = 4;
const PRIORITY_SRCNAT: i32 = 100;
/// `nf_tables.h`.
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFT_NAT_SNAT: u32 = 0;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
/// `enum nft_verdicts`: `NFT_RETURN` (−5), as the kernel reads it (a big-endian u32).
const NFT_RETURN: u32 = (-5i32).cast_unsigned();
const NFPROTO_IPV4: u8 = 2;
/// Offsets of the source and destination addresses in the IPv4 header.
const IPV4_SOURCE: u32 = 12;
const IPV4_DESTINATION: u32 = 16;

/// Add the cell's (empty) `postrouting` chain to the table's transaction.
pub(super) fn add_chain(batch: &mut Batch) {
    batch.base_chain(
        CHAIN,
        "nat",
        NF_INET_POST_ROUTING,
        PRIORITY_SRCNAT,
        "add the postrouting chain",
    );
}

/// Replace the pod's SNAT rules, atomically: traffic from `pod_ip` leaving by
/// `interface` for a destination outside `no_masquerade` takes `management_ip`.
pub(super) fn load(
    pod_ip: Ipv4Addr,
    interface: &str,
    management_ip: Ipv4Addr,
    no_masquerade: &[(Ipv4Addr, u8)],
) -> Result<(), String> {
    snat_rules(pod_ip, interface, management_ip, no_masquerade).send()
}

/// Remove the pod's SNAT rules (flush the chain); nothing to do when they are gone.
pub(super) fn remove() -> Result<(), String> {
    let mut batch = Batch::new();
    flush(&mut batch);
    batch.send_unless(Some(nix::libc::ENOENT))
}

fn flush(batch: &mut Batch) {
    let mut attributes = Attributes::default();
    attributes.string(NFTA_RULE_TABLE, NFT_TABLE);
    attributes.string(NFTA_RULE_CHAIN, CHAIN);
    batch.nf_tables(
        NFT_MSG_DELRULE,
        0,
        "flush the postrouting chain",
        attributes,
    );
}

fn snat_rules(
    pod_ip: Ipv4Addr,
    interface: &str,
    management_ip: Ipv4Addr,
    no_masquerade: &[(Ipv4Addr, u8)],
) -> Batch {
    let mut batch = Batch::new();
    // Flush first: applying the pod again replaces its rules, in the same transaction.
    flush(&mut batch);
    let ipv4 = nfproto_is_ipv4();
    let from_pod = address_is(IPV4_SOURCE, pod_ip, 32);
    let keep = verdict(NFT_RETURN);
    for &(network, prefix) in no_masquerade {
        let to_network = address_is(IPV4_DESTINATION, network, prefix);
        let rule: Vec<&Expression> = ipv4
            .iter()
            .chain(&from_pod)
            .chain(&to_network)
            .chain([&keep])
            .collect();
        batch.rule_in(
            CHAIN,
            "keep the pod's address inside a no-masquerade CIDR",
            &rule,
            None,
        );
    }
    let leaving = interface_name_is(NFT_META_OIFNAME, interface);
    let snat = snat_to(management_ip);
    let rule: Vec<&Expression> = ipv4
        .iter()
        .chain(&from_pod)
        .chain(&leaving)
        .chain(&snat)
        .collect();
    batch.rule_in(CHAIN, "SNAT the pod's other traffic", &rule, None);
    batch
}

/// `meta nfproto ipv4`: the IPv4 header offsets below apply (the table is `inet`).
fn nfproto_is_ipv4() -> [Expression; 2] {
    [
        expression("meta", |data| {
            data.u32_be(NFTA_META_DREG, NFT_REG_1);
            data.u32_be(NFTA_META_KEY, NFT_META_NFPROTO);
        }),
        compare_equal(&[NFPROTO_IPV4]),
    ]
}

/// The IPv4 address at `offset` of the network header is inside `network/prefix`: load it,
/// mask it (unless /32), compare.
fn address_is(offset: u32, network: Ipv4Addr, prefix: u8) -> Vec<Expression> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    let network = u32::from(network) & mask;
    let mut expressions = vec![expression("payload", |data| {
        data.u32_be(NFTA_PAYLOAD_DREG, NFT_REG_1);
        data.u32_be(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        data.u32_be(NFTA_PAYLOAD_OFFSET, offset);
        data.u32_be(NFTA_PAYLOAD_LEN, 4);
    })];
    if mask != u32::MAX {
        expressions.push(bitwise_and(mask.to_be_bytes()));
    }
    expressions.push(compare_equal(&network.to_be_bytes()));
    expressions
}

fn compare_equal(value: &[u8]) -> Expression {
    expression("cmp", |data| {
        data.u32_be(NFTA_CMP_SREG, NFT_REG_1);
        data.u32_be(NFTA_CMP_OP, NFT_CMP_EQ);
        data.nested(NFTA_CMP_DATA, |data| data.bytes(NFTA_DATA_VALUE, value));
    })
}

/// `snat ip to ADDRESS`: the address in a register, then the NAT expression.
fn snat_to(address: Ipv4Addr) -> [Expression; 2] {
    [
        expression("immediate", |data| {
            data.u32_be(NFTA_IMMEDIATE_DREG, NFT_REG_1);
            data.nested(NFTA_IMMEDIATE_DATA, |value| {
                value.bytes(NFTA_DATA_VALUE, &address.octets());
            });
        }),
        expression("nat", |data| {
            data.u32_be(NFTA_NAT_TYPE, NFT_NAT_SNAT);
            data.u32_be(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4));
            data.u32_be(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_masked_and_a_host_address_compared_whole() {
        let expressions = |offset, network, prefix| {
            address_is(offset, network, prefix)
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            expressions(IPV4_DESTINATION, Ipv4Addr::new(10, 0, 0, 0), 16),
            ["payload", "bitwise", "cmp"]
        );
        assert_eq!(
            expressions(IPV4_SOURCE, Ipv4Addr::new(10, 0, 0, 11), 32),
            ["payload", "cmp"]
        );
        assert_eq!(
            expressions(IPV4_DESTINATION, Ipv4Addr::UNSPECIFIED, 0),
            ["payload", "bitwise", "cmp"]
        );
    }
}
