//! Node networking applied by the host: the rules it owns in the node's kernel.
//!
//! `hostport` turns the desired set of hostPort mappings into DNAT rules (nftables or
//! iptables) and keeps the kernel equal to it.

pub mod hostport;
