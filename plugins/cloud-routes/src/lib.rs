//! `cloud-routes`: the network strategy for clusters whose CNI gives each regular node a
//! PodCIDR (flannel, Calico without overlay, kubenet...). Cell pods keep their VPC address;
//! the VPC route table sends each node's PodCIDR to that node, so cells reach regular pods
//! and regular pods' replies come back through the VPC.
//!
//! - `plan-pod`: address `vpc-secondary` (`host-network` for `hostNetwork` pods), default
//!   route via the subnet's router, no masquerading towards the cluster and VPC CIDRs.
//! - `plan-cluster`: one route per PodCIDR of every regular (non-virtual) node, to the
//!   node's instance when its `providerID` names one (`aws:///us-east-1a/i-0abc...`), else
//!   to its first InternalIP. A node without PodCIDR, or without instance and address, gets
//!   a warning instead of a route. Routes come out sorted by node name, then CIDR.
//!
//! **Route-table limit.** Route tables are small (50 entries by default on AWS). At 80 % of
//! `route-table-limit` the plan carries a warning; past the limit `plan-cluster` fails with
//! `capacity` rather than return part of the routes. The host reconciles the VPC to
//! exactly the planned set, so a truncated plan would *remove* the routes of the nodes left
//! out; failing keeps the routes already in place and reports the problem. Set the limit to
//! the table's quota minus the routes it holds for other reasons (local, gateways).
//!
//! ```yaml
//! config:
//!   vpc-cidrs: ["10.0.0.0/16"]         # default: the RFC 1918 ranges
//!   cluster-cidrs: ["10.244.0.0/16"]   # required: the cluster's pod CIDR(s)
//!   manage-routes: false               # default: only check; true: the host creates them
//!   route-table-limit: 50              # default
//!   mtu: 9001                          # default: the VPC interface's MTU
//! ```

use cellet_sdk::net::{self, IpNet};
use cellet_sdk::network::{
    ClusterNode, NetworkStrategy, NodePlan, PodNetworkPlan, RoutesPlan, vpc_pod_plan,
};
use cellet_sdk::pod::PodView;
use cellet_sdk::types::{CloudRoute, RouteTarget};
use cellet_sdk::{InitContext, PluginError};
use serde::Deserialize;

fn default_route_table_limit() -> u32 {
    50
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default = "cellet_sdk::net::rfc1918_cidrs")]
    vpc_cidrs: Vec<String>,
    cluster_cidrs: Vec<String>,
    #[serde(default)]
    manage_routes: bool,
    #[serde(default = "default_route_table_limit")]
    route_table_limit: u32,
    #[serde(default)]
    mtu: Option<u16>,
}

#[derive(Debug)]
pub struct CloudRoutes {
    no_masquerade: Vec<String>,
    manage_routes: bool,
    route_table_limit: u32,
    mtu: Option<u16>,
}

/// The instance id in an AWS provider id (`aws:///us-east-1a/i-0123456789abcdef0`), if it
/// is one.
fn aws_instance_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    (id.starts_with("i-") && id.len() > 2).then_some(id)
}

impl NetworkStrategy for CloudRoutes {
    fn init(ctx: InitContext) -> Result<Self, PluginError> {
        let config: Config = cellet_sdk::config(&ctx)?;
        for (field, list) in [
            ("vpc-cidrs", &config.vpc_cidrs),
            ("cluster-cidrs", &config.cluster_cidrs),
        ] {
            if list.is_empty() {
                return Err(PluginError::InvalidConfig(format!(
                    "config field `{field}`: list at least one CIDR"
                )));
            }
        }
        if config.route_table_limit == 0 {
            return Err(PluginError::InvalidConfig(
                "config field `route-table-limit`: must be at least 1".to_string(),
            ));
        }
        let cluster = net::parse_cidrs("cluster-cidrs", &config.cluster_cidrs)
            .map_err(net::NetError::into_config_error)?;
        let vpc = net::parse_cidrs("vpc-cidrs", &config.vpc_cidrs)
            .map_err(net::NetError::into_config_error)?;
        let mut no_masquerade: Vec<String> = Vec::new();
        for cidr in cluster.iter().chain(&vpc).map(IpNet::to_string) {
            if !no_masquerade.contains(&cidr) {
                no_masquerade.push(cidr);
            }
        }
        Ok(CloudRoutes {
            no_masquerade,
            manage_routes: config.manage_routes,
            route_table_limit: config.route_table_limit,
            mtu: config.mtu,
        })
    }

    fn plan_pod(&self, pod: PodView) -> Result<PodNetworkPlan, PluginError> {
        Ok(vpc_pod_plan(&pod, self.no_masquerade.clone(), self.mtu))
    }

    /// One route per PodCIDR of a regular node, to its instance (from an AWS providerID)
    /// or else its first InternalIP; a warning for a node with neither, or without a
    /// PodCIDR. (A PodCIDR two nodes claim is routed once, by the host: see the trait.)
    fn plan_node(&self, node: ClusterNode) -> Result<NodePlan, PluginError> {
        let mut plan = NodePlan {
            routes: Vec::new(),
            warnings: Vec::new(),
        };
        if node.virtual_ {
            return Ok(plan);
        }
        if node.pod_cidrs.is_empty() {
            plan.warnings.push(format!(
                "node {} has no PodCIDR: cells cannot reach pods on it through cloud routes",
                node.name
            ));
            return Ok(plan);
        }
        let target = match node.provider_id.as_deref().and_then(aws_instance_id) {
            Some(id) => RouteTarget::Instance(id.to_string()),
            None => match node.internal_ips.first() {
                Some(ip) => {
                    let ip = net::parse_ip(format_args!("node {} internalIPs[0]", node.name), ip)
                        .map_err(net::NetError::into_input_error)?;
                    RouteTarget::Address(ip.to_string())
                }
                None => {
                    plan.warnings.push(format!(
                        "node {} has PodCIDRs but neither an instance id in its providerID nor an \
                         InternalIP: no route to its pods",
                        node.name
                    ));
                    return Ok(plan);
                }
            },
        };
        for (i, text) in node.pod_cidrs.iter().enumerate() {
            let cidr = net::parse_cidr(format_args!("node {} podCIDRs[{i}]", node.name), text)
                .map_err(net::NetError::into_input_error)?;
            plan.routes.push(CloudRoute {
                destination: cidr.to_string(),
                target: target.clone(),
            });
        }
        Ok(plan)
    }

    /// The route table's limit: refused past it, a warning from 80 % on.
    fn plan_routes(&self, _nodes: u32, routes: u32) -> Result<RoutesPlan, PluginError> {
        let (count, limit) = (u64::from(routes), u64::from(self.route_table_limit));
        if count > limit {
            return Err(PluginError::Capacity(format!(
                "the cluster needs {count} cloud routes, over `route-table-limit` {limit}: raise the route \
                 table's quota (and the limit), or use fewer, larger PodCIDRs"
            )));
        }
        let mut warnings = Vec::new();
        if count * 5 >= limit * 4 {
            warnings.push(format!(
                "cloud routes use {count} of `route-table-limit` {limit} (80 % or more): raise the quota before \
                 nodes are added"
            ));
        }
        Ok(RoutesPlan {
            manage_routes: self.manage_routes,
            warnings,
        })
    }
}

cellet_sdk::export_network_strategy!(CloudRoutes);

#[cfg(test)]
mod tests {
    use cellet_sdk::network::{NextHop, PodAddressSource};
    use cellet_sdk::testing::{NodeBuilder, PodBuilder, context, plan_cluster};
    use serde_json::{Value, json};

    use super::*;

    fn strategy(extra: Value) -> CloudRoutes {
        let mut config =
            json!({ "vpc-cidrs": ["10.0.0.0/16"], "cluster-cidrs": ["10.244.0.0/16"] });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        CloudRoutes::init(context(config)).unwrap()
    }

    fn node(i: usize) -> ClusterNode {
        NodeBuilder::new(&format!("node-{i:03}"))
            .pod_cidr(&format!("10.244.{i}.0/24"))
            .internal_ip(&format!("10.0.1.{i}"))
            .build()
    }

    #[test]
    fn pods_keep_vpc_addresses_and_do_not_masquerade_to_the_cluster() {
        let plan = strategy(json!({}))
            .plan_pod(PodBuilder::new("shop", "web").build().view())
            .unwrap();
        assert_eq!(plan.address_source, PodAddressSource::VpcSecondary);
        assert_eq!(plan.routes[0].via, NextHop::SubnetGateway);
        assert_eq!(plan.no_masquerade, vec!["10.244.0.0/16", "10.0.0.0/16"]);
    }

    #[test]
    fn one_route_per_pod_cidr_to_the_instance_or_the_address() {
        let nodes = vec![
            NodeBuilder::new("b-by-ip")
                .pod_cidr("10.244.2.0/24")
                .internal_ip("10.0.1.12")
                .build(),
            NodeBuilder::new("a-aws")
                .pod_cidr("10.244.1.0/24")
                .pod_cidr("fd00:244:1::/64")
                .internal_ip("10.0.1.11")
                .aws_instance("us-east-1a", "i-0123456789abcdef0")
                .build(),
            NodeBuilder::new("c-gce")
                .pod_cidr("10.244.3.0/24")
                .provider_id("gce://p/z/vm")
                .internal_ip("10.0.1.13")
                .build(),
            NodeBuilder::new("cellet")
                .pod_cidr("10.244.9.0/24")
                .internal_ip("10.0.1.99")
                .virtual_node()
                .build(),
        ];
        let plan = plan_cluster(&strategy(json!({ "manage-routes": true })), nodes).unwrap();
        assert!(plan.manage_routes);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let instance = RouteTarget::Instance("i-0123456789abcdef0".to_string());
        assert_eq!(
            plan.routes,
            vec![
                CloudRoute {
                    destination: "10.244.1.0/24".into(),
                    target: instance.clone()
                },
                CloudRoute {
                    destination: "fd00:244:1::/64".into(),
                    target: instance
                },
                CloudRoute {
                    destination: "10.244.2.0/24".into(),
                    target: RouteTarget::Address("10.0.1.12".into())
                },
                CloudRoute {
                    destination: "10.244.3.0/24".into(),
                    target: RouteTarget::Address("10.0.1.13".into())
                },
            ]
        );
    }

    #[test]
    fn nodes_without_pod_cidr_or_target_are_warned_about() {
        let nodes = vec![
            NodeBuilder::new("no-cidr").internal_ip("10.0.1.5").build(),
            NodeBuilder::new("no-target")
                .pod_cidr("10.244.5.0/24")
                .build(),
            node(6),
        ];
        let plan = plan_cluster(&strategy(json!({})), nodes).unwrap();
        assert!(!plan.manage_routes, "check-only by default");
        assert_eq!(plan.routes.len(), 1);
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(plan.warnings[0].contains("no-cidr") && plan.warnings[0].contains("no PodCIDR"));
        assert!(plan.warnings[1].contains("no-target"));
    }

    #[test]
    fn duplicate_pod_cidrs_are_routed_once() {
        let twin = NodeBuilder::new("node-999")
            .pod_cidr("10.244.1.0/24")
            .internal_ip("10.0.9.9")
            .build();
        let plan = plan_cluster(&strategy(json!({})), vec![node(1), twin]).unwrap();
        assert_eq!(plan.routes.len(), 1);
        assert_eq!(
            plan.routes[0].target,
            RouteTarget::Address("10.0.1.1".into())
        );
        assert!(plan.warnings[0].contains("node-999"), "{:?}", plan.warnings);
    }

    #[test]
    fn route_table_limit_warns_at_80_percent_and_refuses_past_it() {
        let s = strategy(json!({ "route-table-limit": 10 }));
        let plan = plan_cluster(&s, (0..7).map(node).collect()).unwrap();
        assert!(plan.warnings.is_empty(), "70 %: {:?}", plan.warnings);
        let plan = plan_cluster(&s, (0..8).map(node).collect()).unwrap();
        assert_eq!(plan.routes.len(), 8);
        assert!(
            plan.warnings[0].contains("8 of `route-table-limit` 10"),
            "{:?}",
            plan.warnings
        );
        let plan = plan_cluster(&s, (0..10).map(node).collect()).unwrap();
        assert_eq!(plan.routes.len(), 10);
        let err = plan_cluster(&s, (0..11).map(node).collect()).unwrap_err();
        assert!(
            matches!(&err, PluginError::Capacity(m) if m.contains("11 cloud routes")),
            "{err:?}"
        );

        let default_limit = strategy(json!({}));
        assert!(plan_cluster(&default_limit, (0..50).map(node).collect()).is_ok());
        assert!(plan_cluster(&default_limit, (0..51).map(node).collect()).is_err());
    }

    #[test]
    fn vpc_cidrs_default_to_the_private_ranges() {
        let strategy =
            CloudRoutes::init(context(json!({ "cluster-cidrs": ["10.244.0.0/16"] }))).unwrap();
        let plan = strategy
            .plan_pod(PodBuilder::new("shop", "web").build().view())
            .unwrap();
        assert_eq!(
            plan.no_masquerade,
            vec![
                "10.244.0.0/16",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16"
            ]
        );
    }

    #[test]
    fn aws_provider_ids() {
        assert_eq!(aws_instance_id("aws:///us-east-1a/i-0abc"), Some("i-0abc"));
        assert_eq!(aws_instance_id("aws://us-east-1a/i-0abc"), Some("i-0abc"));
        assert_eq!(
            aws_instance_id("aws:///us-east-1a/fargate-ip-10-0-1-1"),
            None
        );
        assert_eq!(aws_instance_id("gce://proj/zone/i-0abc"), None);
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases = [
            (json!({}), "cluster-cidrs"),
            (json!({ "vpc-cidrs": ["10.0.0.0/16"] }), "cluster-cidrs"),
            (
                json!({ "vpc-cidrs": [], "cluster-cidrs": ["10.244.0.0/16"] }),
                "`vpc-cidrs`",
            ),
            (
                json!({ "vpc-cidrs": ["10.0.0.0/16"], "cluster-cidrs": ["10.244.0.1/16"] }),
                "`cluster-cidrs[0]`",
            ),
            (
                json!({ "vpc-cidrs": ["10.0.0.0/16"], "cluster-cidrs": ["10.244.0.0/16"], "route-table-limit": 0 }),
                "`route-table-limit`",
            ),
            (
                json!({ "vpc-cidrs": ["10.0.0.0/16"], "cluster-cidrs": ["10.244.0.0/16"], "manage-routes": "yes" }),
                "`manage-routes`",
            ),
        ];
        for (config, needle) in cases {
            let err = CloudRoutes::init(context(config.clone())).unwrap_err();
            assert!(
                matches!(&err, PluginError::InvalidConfig(m) if m.contains(needle)),
                "{config}: {err:?}"
            );
        }
    }
}
