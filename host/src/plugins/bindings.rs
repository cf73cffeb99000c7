//! Host bindings of the plugin contract, one module per released contract version.
//!
//! Every released version of `wit/` is a frozen snapshot and gets its own module here
//! (`v0_1_0` for `wit/v0.1.0`), so a later `wit/v0.2.0` sits beside it and the host keeps
//! loading plugins built for the older one (Zed's `since_vX.Y.Z` model). The rest of the
//! host uses the re-exports at the bottom, which always point at the newest version; an
//! older version is adapted to the newest inside `plugins/` only.
//!
//! Within one version the three worlds share the `types` and `log` interfaces: the
//! `cloud-provider` world (which imports every capability) generates them, and the two
//! other worlds map them with bindgen's `with:` option. So one Rust `Pod` serves all
//! three slots and a `log` implementation is written once.

/// Bindings of `cellet:plugin@0.1.0` (`wit/v0.1.0`).
pub mod v0_1_0 {
    /// The contract version these bindings were generated from.
    pub const VERSION: &str = "0.1.0";

    /// `world cloud-provider`, plus the shared `types`, `log` and capability interfaces.
    ///
    /// Capability imports (`ec2`, `local-cells`) are async: the host serves them with
    /// network I/O (the AWS SDK, netlink) while the guest waits on its fiber. `log` is a
    /// plain synchronous call.
    pub mod cloud_provider {
        wasmtime::component::bindgen!({
            world: "cloud-provider",
            path: "../wit/v0.1.0",
            imports: {
                "cellet:plugin/ec2": async,
                "cellet:plugin/local-cells": async,
            },
            exports: { default: async },
            additional_derives: [PartialEq, Eq],
        });
    }

    /// `world network-strategy`; `types` and `log` come from [`cloud_provider`].
    pub mod network_strategy {
        wasmtime::component::bindgen!({
            world: "network-strategy",
            path: "../wit/v0.1.0",
            exports: { default: async },
            additional_derives: [PartialEq, Eq],
            with: {
                "cellet:plugin/types": crate::plugins::bindings::v0_1_0::types,
                "cellet:plugin/log": crate::plugins::bindings::v0_1_0::log,
            },
        });
    }

    /// `world hostport-policy`; `types` and `log` come from [`cloud_provider`].
    pub mod hostport_policy {
        wasmtime::component::bindgen!({
            world: "hostport-policy",
            path: "../wit/v0.1.0",
            exports: { default: async },
            additional_derives: [PartialEq, Eq],
            with: {
                "cellet:plugin/types": crate::plugins::bindings::v0_1_0::types,
                "cellet:plugin/log": crate::plugins::bindings::v0_1_0::log,
            },
        });
    }

    pub use cloud_provider::cellet::plugin::{ec2, local_cells, log, types};
    pub use cloud_provider::exports::cellet::plugin::cloud;
    pub use cloud_provider::{CloudProvider, CloudProviderPre};
    pub use hostport_policy::exports::cellet::plugin::hostport;
    pub use hostport_policy::{HostportPolicy, HostportPolicyPre};
    pub use network_strategy::exports::cellet::plugin::network;
    pub use network_strategy::{NetworkStrategy, NetworkStrategyPre};
}

// The newest contract: what the rest of the host programs against.
pub use v0_1_0::VERSION as NEWEST_VERSION;
pub use v0_1_0::cloud::{Cell, CellRequest, CellState, NodeResources};
pub use v0_1_0::hostport::{Admission, PortMapping};
pub use v0_1_0::network::{
    ClusterNetworkPlan, ClusterNode, NextHop, PodAddressSource, PodNetworkPlan, PodRoute,
};
pub use v0_1_0::types::{
    CloudRoute, Container, ContainerPort, InitContext, KeyValue, PluginError, Pod, Protocol,
    RouteTarget,
};
pub use v0_1_0::{
    CloudProvider, CloudProviderPre, HostportPolicy, HostportPolicyPre, NetworkStrategy,
    NetworkStrategyPre, cloud, ec2, hostport, local_cells, log, network, types,
};
