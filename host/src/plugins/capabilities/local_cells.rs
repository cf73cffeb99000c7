//! `cellet:plugin/local-cells`: cells as network namespaces on this machine.
//!
//! The contract declares the interface so that the `local-cells` cloud plugin can be
//! written against it, but this host release does not implement it yet (a later issue
//! does, with netlink and a bridge standing for the VPC). Until then a config that grants
//! `local-cells` is refused at load, before any instance exists, rather than linked to
//! functions that would fail at the first pod.

use super::CapabilityError;
use crate::plugins::spec::Capability;

/// The error for any plugin granted `local-cells` by this host release.
pub(super) fn refuse(plugin: &str) -> CapabilityError {
    CapabilityError::NotImplemented {
        plugin: plugin.to_owned(),
        capability: Capability::LocalCells,
    }
}
