//! Cluster nodes for `plan-cluster` tests.

use crate::network::ClusterNode;

/// Builds a [`ClusterNode`]: a regular node with no PodCIDR, no address and no provider id
/// until told otherwise.
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    node: ClusterNode,
}

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        NodeBuilder {
            node: ClusterNode {
                name: name.to_string(),
                pod_cidrs: Vec::new(),
                internal_ips: Vec::new(),
                provider_id: None,
                virtual_: false,
            },
        }
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.node.pod_cidrs.push(cidr.to_string());
        self
    }

    pub fn internal_ip(mut self, ip: &str) -> Self {
        self.node.internal_ips.push(ip.to_string());
        self
    }

    pub fn provider_id(mut self, id: &str) -> Self {
        self.node.provider_id = Some(id.to_string());
        self
    }

    /// The provider id an AWS node carries: `aws:///<zone>/<instance>`.
    pub fn aws_instance(self, zone: &str, instance_id: &str) -> Self {
        self.provider_id(&format!("aws:///{zone}/{instance_id}"))
    }

    /// Mark the node virtual (cellet's own or another virtual kubelet's).
    pub fn virtual_node(mut self) -> Self {
        self.node.virtual_ = true;
        self
    }

    pub fn build(self) -> ClusterNode {
        self.node
    }
}
