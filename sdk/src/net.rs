//! Address and CIDR arithmetic on [`ipnet`], with errors that name the field they came from.
//!
//! Addresses travel through the contract as text; plugins parse them here, once, with the
//! name of the config field or record field, so an error tells the operator where to look.

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

use crate::types::PluginError;

/// The private IPv4 ranges of RFC 1918, where VPCs take their CIDRs. Network strategies
/// use them as the default VPC CIDRs when the operator has not listed the VPC's own.
pub const RFC1918: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// [`RFC1918`] as owned strings: a `#[serde(default = "cellet_sdk::net::rfc1918_cidrs")]`.
pub fn rfc1918_cidrs() -> Vec<String> {
    RFC1918.iter().map(ToString::to_string).collect()
}

/// Errors of address parsing and arithmetic.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A CIDR did not parse.
    #[error("failed to parse `{field}` {value:?} as a CIDR: {source}")]
    Cidr {
        field: String,
        value: String,
        source: ipnet::AddrParseError,
    },
    /// An address did not parse.
    #[error("failed to parse `{field}` {value:?} as an IP address: {source}")]
    Address {
        field: String,
        value: String,
        source: std::net::AddrParseError,
    },
    /// A CIDR has host bits set (`10.0.0.1/24`), which usually means a typo.
    #[error("failed to accept `{field}` {value:?}: host bits are set (did you mean {network}?)")]
    HostBits {
        field: String,
        value: String,
        network: IpNet,
    },
    /// An offset past the end of a network.
    #[error("failed to take address {offset} of {net}: it holds only {size} addresses")]
    OutOfRange {
        net: IpNet,
        offset: u128,
        size: u128,
    },
}

impl NetError {
    /// As a `PluginError::InvalidConfig`, for values read from the plugin's config.
    pub fn into_config_error(self) -> PluginError {
        PluginError::InvalidConfig(self.to_string())
    }

    /// As a `PluginError::InvalidInput`, for values in records the host handed over.
    pub fn into_input_error(self) -> PluginError {
        PluginError::InvalidInput(self.to_string())
    }
}

/// Parse a CIDR in its canonical form: `10.0.0.0/16` is accepted, `10.0.0.1/16` is refused
/// because routes and address ranges are always about whole networks.
///
/// `field` is any `Display`, rendered only into an error: a name built per item, such as
/// `format_args!("node {} podCIDRs[{i}]", node.name)`, costs nothing when the value parses.
pub fn parse_cidr(field: impl Display, value: &str) -> Result<IpNet, NetError> {
    let net: IpNet = value.trim().parse().map_err(|source| NetError::Cidr {
        field: field.to_string(),
        value: value.to_string(),
        source,
    })?;
    if net.trunc() != net {
        return Err(NetError::HostBits {
            field: field.to_string(),
            value: value.to_string(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// Parse every CIDR of a list; the field of the n-th item is named `field[n]`.
pub fn parse_cidrs(field: &str, values: &[String]) -> Result<Vec<IpNet>, NetError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| parse_cidr(format_args!("{field}[{i}]"), value))
        .collect()
}

/// Parse an IP address; `field` as for [`parse_cidr`].
pub fn parse_ip(field: impl Display, value: &str) -> Result<IpAddr, NetError> {
    value.trim().parse().map_err(|source| NetError::Address {
        field: field.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Number of addresses in a network (2^(bits - prefix)), saturating at `u128::MAX` for `::/0`.
pub fn size(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// The address `offset` places after the network address: `nth_host(10.0.1.0/24, 1)` is
/// `10.0.1.1`. Offsets count from 0, the network address itself.
pub fn nth_host(net: &IpNet, offset: u128) -> Result<IpAddr, NetError> {
    let size = size(net);
    if offset >= size {
        return Err(NetError::OutOfRange {
            net: *net,
            offset,
            size,
        });
    }
    Ok(match net.network() {
        IpAddr::V4(base) => {
            // offset < size <= 2^32, so the sum stays within u32.
            IpAddr::V4(Ipv4Addr::from(u32::from(base) + offset as u32))
        }
        IpAddr::V6(base) => IpAddr::V6(Ipv6Addr::from(u128::from(base) + offset)),
    })
}

/// The subnet's router: its first address after the network address, where AWS (and the
/// `local-cells` VPC) put it.
pub fn subnet_gateway(net: &IpNet) -> Result<IpAddr, NetError> {
    nth_host(net, 1)
}

/// Whether `ip` is inside `net`.
pub fn contains(net: &IpNet, ip: &IpAddr) -> bool {
    net.contains(ip)
}

/// Whether two networks share any address.
pub fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether some network of `outer` contains all of `inner`.
pub fn covered_by(inner: &IpNet, outer: &[IpNet]) -> bool {
    outer.iter().any(|net| net.contains(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_cidr("test", s).unwrap()
    }

    #[test]
    fn nth_host_and_gateway() {
        assert_eq!(
            nth_host(&net("10.0.1.0/24"), 0).unwrap().to_string(),
            "10.0.1.0"
        );
        assert_eq!(
            subnet_gateway(&net("10.0.1.0/24")).unwrap().to_string(),
            "10.0.1.1"
        );
        assert_eq!(
            nth_host(&net("10.0.0.0/16"), 258).unwrap().to_string(),
            "10.0.1.2"
        );
        assert_eq!(
            nth_host(&net("fd00::/64"), 0x1_0000).unwrap().to_string(),
            "fd00::1:0"
        );
        let err = nth_host(&net("10.0.1.0/30"), 4).unwrap_err();
        assert!(matches!(err, NetError::OutOfRange { size: 4, .. }), "{err}");
        assert_eq!(size(&net("0.0.0.0/0")), 1 << 32);
        assert_eq!(size(&net("::/0")), u128::MAX);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = parse_cidr("vpc-cidrs[2]", "10.0.0.0/33").unwrap_err();
        assert!(err.to_string().contains("`vpc-cidrs[2]`"), "{err}");
        let err = parse_cidr("cidr", "10.0.0.1/16").unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/16"), "{err}");
        let err = parse_cidrs("cluster-cidrs", &["10.0.0.0/8".into(), "nope".into()]).unwrap_err();
        assert!(err.to_string().contains("`cluster-cidrs[1]`"), "{err}");
        let err = parse_ip("internal-ips[0]", "10.0.0").unwrap_err();
        assert!(
            matches!(err.into_input_error(), PluginError::InvalidInput(m) if m.contains("internal-ips[0]"))
        );
    }

    #[test]
    fn containment_and_overlap() {
        let vpc = net("10.0.0.0/16");
        assert!(contains(&vpc, &"10.0.200.3".parse().unwrap()));
        assert!(!contains(&vpc, &"10.1.0.1".parse().unwrap()));
        assert!(overlap(&vpc, &net("10.0.4.0/24")));
        assert!(overlap(&net("10.0.4.0/24"), &vpc));
        assert!(!overlap(&vpc, &net("10.1.0.0/16")));
        assert!(!overlap(&vpc, &net("fd00::/8")));
        assert!(covered_by(
            &net("10.0.4.0/24"),
            &[net("192.168.0.0/16"), vpc]
        ));
        assert!(!covered_by(&net("10.0.0.0/8"), &[vpc]));
    }
}
