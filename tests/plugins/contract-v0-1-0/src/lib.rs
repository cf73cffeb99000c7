//! A network-strategy plugin built against the frozen contract `cellet:plugin@0.1.0`
//! (`wit/v0.1.0`), with raw wit-bindgen: what a plugin built before 0.2.0 looks like. The
//! host's runtime tests load it and check that every value crosses intact both ways, so
//! its answers are made from its input:
//!
//! - `plan-pod`: `host-network` as the pod says; one default route; `no-masquerade` is the
//!   value of the pod's label `cellet.test/no-masquerade`; the MTU is 1000 plus the number
//!   of ports the pod's containers declare, plus 100 per annotation.
//! - `plan-cluster`: one route per node with a PodCIDR, its first PodCIDR to its first
//!   InternalIP; the host manages them; one warning naming the number of nodes.

// wit-bindgen's canonical-ABI glue is `unsafe` by nature, and `export!` expands it at the
// crate root; this crate writes no `unsafe` of its own.
#![allow(unsafe_code)]

mod bindings {
    wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "network-strategy" });
}

use bindings::cellet::plugin::types::{CloudRoute, InitContext, PluginError, Pod, RouteTarget};
use bindings::exports::cellet::plugin::network::{
    ClusterNetworkPlan, ClusterNode, Guest, NextHop, PodAddressSource, PodNetworkPlan, PodRoute,
};

/// The label whose value becomes the plan's only `no-masquerade` CIDR.
const NO_MASQUERADE_LABEL: &str = "cellet.test/no-masquerade";

struct ContractV010;

impl Guest for ContractV010 {
    fn init(_context: InitContext) -> Result<(), PluginError> {
        Ok(())
    }

    fn plan_pod(pod: Pod) -> Result<PodNetworkPlan, PluginError> {
        let ports: usize = pod.containers.iter().map(|c| c.ports.len()).sum();
        let mtu = 1000 + ports + 100 * pod.annotations.len();
        Ok(PodNetworkPlan {
            address_source: if pod.host_network {
                PodAddressSource::HostNetwork
            } else {
                PodAddressSource::VpcSecondary
            },
            prefix_length: None,
            routes: vec![PodRoute {
                destination: "0.0.0.0/0".to_string(),
                via: NextHop::SubnetGateway,
            }],
            no_masquerade: pod
                .labels
                .iter()
                .filter(|kv| kv.key == NO_MASQUERADE_LABEL)
                .map(|kv| kv.value.clone())
                .collect(),
            mtu: u16::try_from(mtu).ok(),
        })
    }

    fn plan_cluster(nodes: Vec<ClusterNode>) -> Result<ClusterNetworkPlan, PluginError> {
        let routes = nodes
            .iter()
            .filter_map(|node| {
                Some(CloudRoute {
                    destination: node.pod_cidrs.first()?.clone(),
                    target: RouteTarget::Address(node.internal_ips.first()?.clone()),
                })
            })
            .collect();
        Ok(ClusterNetworkPlan {
            routes,
            manage_routes: true,
            warnings: vec![format!("planned {} nodes", nodes.len())],
        })
    }
}

bindings::export!(ContractV010 with_types_in bindings);
