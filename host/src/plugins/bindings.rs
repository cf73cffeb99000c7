//! Host bindings of the plugin contract, one module per released contract version.
//!
//! Every released version of `wit/` is a frozen snapshot and gets its own module here
//! (`v0_1_0` for `wit/v0.1.0`, `v0_2_0` for `wit/v0.2.0`), so the host keeps loading
//! plugins built for an older one (Zed's `since_vX.Y.Z` model). The rest of the host uses
//! the re-exports at the bottom: the host's model of a pod, a plan, a mapping or a cell.
//! Those are the 0.1.0 records, which 0.2.0 either reuses (`types@0.1.0`) or repeats field
//! for field; `adapt` turns a 0.2.0 answer into them, so one set of checks
//! (`validate`) and one set of callers serve both contracts.
//!
//! Within one version the three worlds share the `types` and `log` interfaces: the
//! `cloud-provider` world (which imports every shared interface) generates them, and the
//! two other worlds map them with bindgen's `with:` option. So one Rust `Pod` serves all
//! three slots and a `log` implementation is written once. 0.2.0 imports `types@0.1.0` and
//! the capabilities (`log`, `ec2`, `local-cells`) at 0.1.0, and maps them onto the
//! `v0_1_0` modules: a capability is implemented and linked once for both contracts.

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

    /// Bindings of one of the two worlds other than `cloud-provider`, which differ only in
    /// their name: `types` and `log` come from [`cloud_provider`].
    macro_rules! sharing_types {
        ($world:tt) => {
            wasmtime::component::bindgen!({
                world: $world,
                path: "../wit/v0.1.0",
                exports: { default: async },
                additional_derives: [PartialEq, Eq],
                with: {
                    "cellet:plugin/types": crate::plugins::bindings::v0_1_0::types,
                    "cellet:plugin/log": crate::plugins::bindings::v0_1_0::log,
                },
            });
        };
    }

    /// `world network-strategy`; `types` and `log` come from [`cloud_provider`].
    pub mod network_strategy {
        sharing_types!("network-strategy");
    }

    /// `world hostport-policy`; `types` and `log` come from [`cloud_provider`].
    pub mod hostport_policy {
        sharing_types!("hostport-policy");
    }

    pub use cloud_provider::cellet::plugin::{ec2, local_cells, log, types};
    pub use cloud_provider::exports::cellet::plugin::cloud;
    pub use cloud_provider::{CloudProvider, CloudProviderPre};
    pub use hostport_policy::exports::cellet::plugin::hostport;
    pub use hostport_policy::{HostportPolicy, HostportPolicyPre};
    pub use network_strategy::exports::cellet::plugin::network;
    pub use network_strategy::{NetworkStrategy, NetworkStrategyPre};
}

/// Bindings of `cellet:plugin@0.2.0` (`wit/v0.2.0`).
///
/// Its `types` interface declares two host resources, mapped onto the host's own types
/// ([`PodResource`](crate::plugins::resources::PodResource) and
/// [`NodeMappings`](crate::plugins::resources::NodeMappings)), which a call puts in the
/// instance's resource table for its duration (see `plugins::resources`).
pub mod v0_2_0 {
    /// The contract version these bindings were generated from.
    pub const VERSION: &str = "0.2.0";

    /// `world cloud-provider`, plus the `types@0.2.0` interface with its resources.
    pub mod cloud_provider {
        wasmtime::component::bindgen!({
            world: "cloud-provider",
            path: "../wit/v0.2.0",
            // A resource method called on a handle the host does not hold traps.
            imports: { "cellet:plugin/types@0.2.0": trappable },
            exports: { default: async },
            with: {
                "cellet:plugin/types@0.1.0": crate::plugins::bindings::v0_1_0::types,
                "cellet:plugin/log@0.1.0": crate::plugins::bindings::v0_1_0::log,
                "cellet:plugin/ec2@0.1.0": crate::plugins::bindings::v0_1_0::ec2,
                "cellet:plugin/local-cells@0.1.0": crate::plugins::bindings::v0_1_0::local_cells,
                "cellet:plugin/types@0.2.0.pod": crate::plugins::resources::PodResource,
                "cellet:plugin/types@0.2.0.node-mappings": crate::plugins::resources::NodeMappings,
            },
        });
    }

    /// Bindings of one of the two worlds other than `cloud-provider`, which differ only in
    /// their name: `types` comes from [`cloud_provider`].
    macro_rules! sharing_types {
        ($world:tt) => {
            wasmtime::component::bindgen!({
                world: $world,
                path: "../wit/v0.2.0",
                exports: { default: async },
                with: {
                    "cellet:plugin/types@0.1.0": crate::plugins::bindings::v0_1_0::types,
                    "cellet:plugin/log@0.1.0": crate::plugins::bindings::v0_1_0::log,
                    "cellet:plugin/types@0.2.0": crate::plugins::bindings::v0_2_0::types,
                },
            });
        };
    }

    /// `world network-strategy`; `types` comes from [`cloud_provider`].
    pub mod network_strategy {
        sharing_types!("network-strategy");
    }

    /// `world hostport-policy`; `types` comes from [`cloud_provider`].
    pub mod hostport_policy {
        sharing_types!("hostport-policy");
    }

    pub use cloud_provider::cellet::plugin0_2_0::types;
    pub use cloud_provider::exports::cellet::plugin0_2_0::cloud;
    pub use cloud_provider::{CloudProvider, CloudProviderPre};
    pub use hostport_policy::exports::cellet::plugin0_2_0::hostport;
    pub use hostport_policy::{HostportPolicy, HostportPolicyPre};
    pub use network_strategy::exports::cellet::plugin0_2_0::network;
    pub use network_strategy::{NetworkStrategy, NetworkStrategyPre};
}

// The newest contract this host links, and the host's model types (see the module docs).
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
pub use v0_2_0::VERSION as NEWEST_VERSION;
