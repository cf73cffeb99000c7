//! Contract 0.2.0 records to and from the host's model types (the 0.1.0 records, see
//! `bindings`). 0.2.0 repeats the 0.1.0 records its interfaces declare field for field, so
//! every conversion here moves fields and never drops or invents one; the host then
//! validates a 0.2.0 answer with the same checks as a 0.1.0 one.

use crate::plugins::bindings::v0_2_0::{cloud, hostport, network, types};
use crate::plugins::bindings::{
    Admission, Cell, CellState, ClusterNode, NextHop, NodeResources, PodAddressSource,
    PodNetworkPlan, PodRoute, PortMapping,
};

pub(crate) fn pod_network_plan(plan: network::PodNetworkPlan) -> PodNetworkPlan {
    PodNetworkPlan {
        address_source: match plan.address_source {
            network::PodAddressSource::VpcSecondary => PodAddressSource::VpcSecondary,
            network::PodAddressSource::HostNetwork => PodAddressSource::HostNetwork,
        },
        prefix_length: plan.prefix_length,
        routes: plan
            .routes
            .into_iter()
            .map(|route| PodRoute {
                destination: route.destination,
                via: match route.via {
                    network::NextHop::SubnetGateway => NextHop::SubnetGateway,
                    network::NextHop::Address(address) => NextHop::Address(address),
                    network::NextHop::Direct => NextHop::Direct,
                },
            })
            .collect(),
        no_masquerade: plan.no_masquerade,
        mtu: plan.mtu,
    }
}

pub(crate) fn cluster_node(node: &ClusterNode) -> network::ClusterNode {
    network::ClusterNode {
        name: node.name.clone(),
        pod_cidrs: node.pod_cidrs.clone(),
        internal_ips: node.internal_ips.clone(),
        provider_id: node.provider_id.clone(),
        virtual_: node.virtual_,
    }
}

pub(crate) fn port_mapping(mapping: types::PortMapping) -> PortMapping {
    PortMapping {
        pod_uid: mapping.pod_uid,
        pod_namespace: mapping.pod_namespace,
        pod_name: mapping.pod_name,
        container_name: mapping.container_name,
        protocol: mapping.protocol,
        host_ip: mapping.host_ip,
        host_port: mapping.host_port,
        container_port: mapping.container_port,
    }
}

pub(crate) fn admission(admission: hostport::Admission) -> Admission {
    match admission {
        hostport::Admission::Admit(mappings) => {
            Admission::Admit(mappings.into_iter().map(port_mapping).collect())
        }
        hostport::Admission::Deny(reason) => Admission::Deny(reason),
    }
}

pub(crate) fn node_resources(resources: cloud::NodeResources) -> NodeResources {
    NodeResources {
        cpu_millis: resources.cpu_millis,
        memory_bytes: resources.memory_bytes,
        pods: resources.pods,
        ephemeral_storage_bytes: resources.ephemeral_storage_bytes,
    }
}

pub(crate) fn cell(cell: cloud::Cell) -> Cell {
    Cell {
        id: cell.id,
        pod_uid: cell.pod_uid,
        pod_namespace: cell.pod_namespace,
        pod_name: cell.pod_name,
        state: match cell.state {
            cloud::CellState::Pending => CellState::Pending,
            cloud::CellState::Running => CellState::Running,
            cloud::CellState::Stopping => CellState::Stopping,
            cloud::CellState::Terminated => CellState::Terminated,
        },
        management_ip: cell.management_ip,
        pod_ip: cell.pod_ip,
        subnet_prefix: cell.subnet_prefix,
        instance_type: cell.instance_type,
        tags: cell.tags,
    }
}
