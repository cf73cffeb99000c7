//! `vpc-native`: the network strategy for clusters whose pods take addresses from the VPC
//! (aws-vpc-cni and the like). A cell's pod gets the cell's second VPC address, so the VPC
//! routes it like any other pod and no cloud route is needed.
//!
//! - `plan-pod`: address `vpc-secondary` (`host-network` for `hostNetwork` pods), a default
//!   route via the subnet's router, and no masquerading towards the VPC and the cluster's
//!   pod CIDRs, so pods see each other's real addresses.
//! - `plan-cluster`: no route, `manage-routes: false`. It warns about every regular node
//!   whose PodCIDR lies outside the VPC CIDRs: pods there have overlay addresses the VPC
//!   cannot route, so the cluster is not VPC-native and `cloud-routes` is the strategy to
//!   use. (`cluster-cidrs` does not silence that warning: declaring a range as the
//!   cluster's does not make the VPC route it.)
//!
//! ```yaml
//! config:
//!   vpc-cidrs: ["10.0.0.0/16"]        # default: the RFC 1918 ranges (see below)
//!   cluster-cidrs: ["100.64.0.0/16"]  # default []: further pod ranges (custom networking)
//!   mtu: 9001                         # default: the VPC interface's MTU
//! ```
//!
//! Without `vpc-cidrs` the strategy assumes the VPC is somewhere in the private ranges of
//! RFC 1918: pods then keep their address towards every private address, and only PodCIDRs
//! outside those ranges draw a warning. List the VPC's CIDR blocks for exact warnings.

use cellet_sdk::net::{self, IpNet};
use cellet_sdk::network::{ClusterNode, NetworkStrategy, NodePlan, PodNetworkPlan, vpc_pod_plan};
use cellet_sdk::pod::PodView;
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default = "cellet_sdk::net::rfc1918_cidrs")]
    vpc_cidrs: Vec<String>,
    #[serde(default)]
    cluster_cidrs: Vec<String>,
    #[serde(default)]
    mtu: Option<u16>,
}

#[derive(Debug)]
pub struct VpcNative {
    vpc: Vec<IpNet>,
    /// `vpc` as the warnings name it (`10.0.0.0/16, 10.1.0.0/16`), rendered once.
    vpc_listed: String,
    /// VPC CIDRs then cluster CIDRs, without duplicates, as the plan lists them.
    no_masquerade: Vec<String>,
    mtu: Option<u16>,
}

impl NetworkStrategy for VpcNative {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        if config.vpc_cidrs.is_empty() {
            return Err(PluginError::InvalidConfig(
                "config field `vpc-cidrs`: list at least the VPC's primary CIDR block (or leave the field out)"
                    .to_string(),
            ));
        }
        let vpc = net::parse_cidrs("vpc-cidrs", &config.vpc_cidrs)
            .map_err(net::NetError::into_config_error)?;
        let cluster = net::parse_cidrs("cluster-cidrs", &config.cluster_cidrs)
            .map_err(net::NetError::into_config_error)?;
        let mut no_masquerade: Vec<String> = Vec::new();
        for cidr in vpc.iter().chain(&cluster).map(IpNet::to_string) {
            if !no_masquerade.contains(&cidr) {
                no_masquerade.push(cidr);
            }
        }
        let vpc_listed = vpc
            .iter()
            .map(IpNet::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(VpcNative {
            vpc,
            vpc_listed,
            no_masquerade,
            mtu: config.mtu,
        })
    }

    fn plan_pod(&self, pod: PodView) -> Result<PodNetworkPlan, PluginError> {
        Ok(vpc_pod_plan(&pod, self.no_masquerade.clone(), self.mtu))
    }

    /// No route (the VPC routes every pod address already); a warning for each PodCIDR of
    /// a regular node outside the VPC, whose pods cells cannot reach.
    fn plan_node(&self, node: ClusterNode) -> Result<NodePlan, PluginError> {
        let mut warnings = Vec::new();
        if !node.virtual_ {
            for (i, text) in node.pod_cidrs.iter().enumerate() {
                let cidr = net::parse_cidr(format_args!("node {} podCIDRs[{i}]", node.name), text)
                    .map_err(net::NetError::into_input_error)?;
                if !net::covered_by(&cidr, &self.vpc) {
                    warnings.push(format!(
                        "node {} has PodCIDR {cidr} outside the VPC CIDRs ({}): its pods are not \
                         reachable from cells, the cluster is not VPC-native (use the cloud-routes strategy)",
                        node.name, self.vpc_listed
                    ));
                }
            }
        }
        Ok(NodePlan {
            routes: Vec::new(),
            warnings,
        })
    }
}

cellet_sdk::export_network_strategy!(VpcNative);

#[cfg(test)]
mod tests {
    use cellet_sdk::network::{NextHop, PodAddressSource};
    use cellet_sdk::testing::{NodeBuilder, PodBuilder, context, plan_cluster};
    use serde_json::json;

    use super::*;

    fn strategy() -> VpcNative {
        VpcNative::init(context(json!({
            "vpc-cidrs": ["10.0.0.0/16", "10.1.0.0/16"],
            "cluster-cidrs": ["100.64.0.0/16", "10.1.0.0/16"],
            "mtu": 9001,
        })))
        .unwrap()
    }

    #[test]
    fn pods_keep_vpc_addresses_and_route_via_the_gateway() {
        let plan = strategy()
            .plan_pod(PodBuilder::new("shop", "web").build().view())
            .unwrap();
        assert_eq!(plan.address_source, PodAddressSource::VpcSecondary);
        assert_eq!(plan.prefix_length, None);
        assert_eq!(plan.routes.len(), 1);
        assert_eq!(plan.routes[0].destination, "0.0.0.0/0");
        assert_eq!(plan.routes[0].via, NextHop::SubnetGateway);
        assert_eq!(
            plan.no_masquerade,
            vec!["10.0.0.0/16", "10.1.0.0/16", "100.64.0.0/16"]
        );
        assert_eq!(plan.mtu, Some(9001));
    }

    #[test]
    fn host_network_pods_use_the_cell_address() {
        let plan = strategy()
            .plan_pod(
                PodBuilder::new("kube-system", "agent")
                    .host_network(true)
                    .build()
                    .view(),
            )
            .unwrap();
        assert_eq!(plan.address_source, PodAddressSource::HostNetwork);
    }

    #[test]
    fn cluster_plan_has_no_routes_and_warns_about_overlay_pod_cidrs() {
        let nodes = vec![
            NodeBuilder::new("vpc-cni-node")
                .internal_ip("10.0.1.10")
                .build(),
            NodeBuilder::new("prefix-node")
                .pod_cidr("10.0.128.0/28")
                .build(),
            NodeBuilder::new("flannel-node")
                .pod_cidr("10.244.1.0/24")
                .build(),
            NodeBuilder::new("custom-net")
                .pod_cidr("100.64.3.0/24")
                .build(),
            NodeBuilder::new("other-vk")
                .pod_cidr("192.168.0.0/24")
                .virtual_node()
                .build(),
        ];
        let plan = plan_cluster(&strategy(), nodes).unwrap();
        assert!(plan.routes.is_empty());
        assert!(!plan.manage_routes);
        // Nodes are planned in name order.
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("custom-net"));
        assert!(
            plan.warnings[1].contains("flannel-node") && plan.warnings[1].contains("10.244.1.0/24")
        );
    }

    #[test]
    fn without_vpc_cidrs_the_private_ranges_are_assumed() {
        let strategy = VpcNative::init(context(json!({}))).unwrap();
        let plan = strategy
            .plan_pod(PodBuilder::new("shop", "web").build().view())
            .unwrap();
        assert_eq!(
            plan.no_masquerade,
            vec!["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        );
        let nodes = vec![
            NodeBuilder::new("private")
                .pod_cidr("10.244.1.0/24")
                .build(),
            NodeBuilder::new("cgnat").pod_cidr("100.64.1.0/24").build(),
        ];
        let warnings = plan_cluster(&strategy, nodes).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cgnat"), "{warnings:?}");
    }

    #[test]
    fn a_garbage_pod_cidr_is_invalid_input_naming_the_node() {
        let nodes = vec![NodeBuilder::new("n1").pod_cidr("10.244.1.0/33").build()];
        let err = plan_cluster(&strategy(), nodes).unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidInput(m) if m.contains("node n1 podCIDRs[0]")),
            "{err:?}"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (json!({ "vpc-cidrs": [] }), "`vpc-cidrs`"),
            (
                json!({ "vpc-cidrs": ["10.0.0.0/16"], "cluster-cidrs": ["10.244.0.0/16", "x"] }),
                "`cluster-cidrs[1]`",
            ),
            (
                json!({ "vpc-cidrs": ["10.0.0.0/16"], "mtu": 100000 }),
                "`mtu`",
            ),
            (json!({ "vpc-cidr": ["10.0.0.0/16"] }), "vpc-cidr"),
        ];
        for (config, needle) in cases {
            let err = VpcNative::init(context(config.clone())).unwrap_err();
            assert!(
                matches!(&err, PluginError::InvalidConfig(m) if m.contains(needle)),
                "{config}: {err:?}"
            );
        }
    }
}
