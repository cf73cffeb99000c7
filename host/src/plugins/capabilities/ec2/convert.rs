//! Translation between the records of `ec2.wit` and the AWS SDK's types.
//!
//! EC2 marks nearly every response field optional; the WIT records keep `option` only where
//! the absence means something to a plugin (an instance without an address yet). Elsewhere
//! a missing field becomes the empty string or zero, which a plugin treats like any other
//! value it does not recognise.

use aws_sdk_ec2::types as aws;

use crate::plugins::bindings::ec2::{
    Filter, Image, Instance, InstanceTypeInfo, Route, RouteTable, RouteTarget, Subnet,
};
use crate::plugins::bindings::types::KeyValue;

pub(super) fn filters(filters: Vec<Filter>) -> Option<Vec<aws::Filter>> {
    non_empty(
        filters
            .into_iter()
            .map(|f| {
                aws::Filter::builder()
                    .name(f.name)
                    .set_values(Some(f.values))
                    .build()
            })
            .collect(),
    )
}

pub(super) fn tags_to_aws(tags: Vec<KeyValue>) -> Vec<aws::Tag> {
    tags.into_iter()
        .map(|t| aws::Tag::builder().key(t.key).value(t.value).build())
        .collect()
}

/// `None` for an empty list, so the SDK leaves the parameter out of the request: EC2 reads
/// an absent list as "no restriction", and some calls refuse an explicit empty one.
pub(super) fn non_empty<T>(items: Vec<T>) -> Option<Vec<T>> {
    (!items.is_empty()).then_some(items)
}

fn tags_from_aws(tags: &[aws::Tag]) -> Vec<KeyValue> {
    tags.iter()
        .map(|t| KeyValue {
            key: t.key().unwrap_or_default().to_owned(),
            value: t.value().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn owned(value: Option<&str>) -> String {
    value.unwrap_or_default().to_owned()
}

/// EC2 models counts as signed integers; a negative one never occurs, and would read as 0.
fn count<T: TryInto<U>, U: Default>(value: Option<T>) -> U {
    value.and_then(|v| v.try_into().ok()).unwrap_or_default()
}

pub(super) fn instance(instance: &aws::Instance) -> Instance {
    // The primary interface (device index 0) carries the management address as its
    // primary address and the pod address as a secondary one.
    let primary_interface = instance
        .network_interfaces()
        .iter()
        .find(|nic| nic.attachment().and_then(|a| a.device_index()) == Some(0));
    let secondary_private_ips = primary_interface
        .map(|nic| {
            nic.private_ip_addresses()
                .iter()
                .filter(|address| address.primary() != Some(true))
                .filter_map(|address| address.private_ip_address().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Instance {
        instance_id: owned(instance.instance_id()),
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|name| name.as_str().to_owned())
            .unwrap_or_default(),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        image_id: owned(instance.image_id()),
        subnet_id: instance.subnet_id().map(str::to_owned),
        vpc_id: instance.vpc_id().map(str::to_owned),
        private_ip: instance.private_ip_address().map(str::to_owned),
        secondary_private_ips,
        network_interface_id: primary_interface
            .and_then(|nic| nic.network_interface_id())
            .map(str::to_owned),
        tags: tags_from_aws(instance.tags()),
    }
}

pub(super) fn instance_type_info(info: &aws::InstanceTypeInfo) -> InstanceTypeInfo {
    InstanceTypeInfo {
        instance_type: info
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        vcpus: count(info.v_cpu_info().and_then(|v| v.default_v_cpus())),
        memory_mib: count(info.memory_info().and_then(|m| m.size_in_mib())),
        max_network_interfaces: count(
            info.network_info()
                .and_then(|n| n.maximum_network_interfaces()),
        ),
        ipv4_addresses_per_interface: count(
            info.network_info()
                .and_then(|n| n.ipv4_addresses_per_interface()),
        ),
    }
}

pub(super) fn subnet(subnet: &aws::Subnet) -> Subnet {
    Subnet {
        subnet_id: owned(subnet.subnet_id()),
        vpc_id: owned(subnet.vpc_id()),
        cidr_block: owned(subnet.cidr_block()),
        availability_zone: owned(subnet.availability_zone()),
        available_ip_address_count: count(subnet.available_ip_address_count()),
        tags: tags_from_aws(subnet.tags()),
    }
}

pub(super) fn image(image: &aws::Image) -> Image {
    Image {
        image_id: owned(image.image_id()),
        name: image.name().map(str::to_owned),
        state: image
            .state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        architecture: image
            .architecture()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        tags: tags_from_aws(image.tags()),
    }
}

pub(super) fn route_table(table: &aws::RouteTable) -> RouteTable {
    RouteTable {
        route_table_id: owned(table.route_table_id()),
        vpc_id: owned(table.vpc_id()),
        routes: table.routes().iter().filter_map(route).collect(),
        tags: tags_from_aws(table.tags()),
    }
}

/// IPv4 and IPv6 CIDR routes; routes to a prefix list have no CIDR and are left out.
fn route(route: &aws::Route) -> Option<Route> {
    let destination_cidr = route
        .destination_cidr_block()
        .or(route.destination_ipv6_cidr_block())?
        .to_owned();
    // A route to an instance also names the instance's interface: the instance is what a
    // plugin asked for, so it wins.
    let target = if let Some(id) = route.instance_id() {
        Some(RouteTarget::InstanceId(id.to_owned()))
    } else if let Some(id) = route.network_interface_id() {
        Some(RouteTarget::NetworkInterfaceId(id.to_owned()))
    } else {
        route
            .gateway_id()
            .map(|id| RouteTarget::GatewayId(id.to_owned()))
    };
    Some(Route {
        destination_cidr,
        target,
        state: route
            .state()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "active".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_address_is_a_secondary_address_of_the_primary_interface() {
        let primary = aws::InstanceNetworkInterface::builder()
            .network_interface_id("eni-primary")
            .attachment(
                aws::InstanceNetworkInterfaceAttachment::builder()
                    .device_index(0)
                    .build(),
            )
            .private_ip_addresses(
                aws::InstancePrivateIpAddress::builder()
                    .private_ip_address("10.0.0.5")
                    .primary(true)
                    .build(),
            )
            .private_ip_addresses(
                aws::InstancePrivateIpAddress::builder()
                    .private_ip_address("10.0.0.6")
                    .primary(false)
                    .build(),
            )
            .build();
        let other = aws::InstanceNetworkInterface::builder()
            .network_interface_id("eni-other")
            .attachment(
                aws::InstanceNetworkInterfaceAttachment::builder()
                    .device_index(1)
                    .build(),
            )
            .private_ip_addresses(
                aws::InstancePrivateIpAddress::builder()
                    .private_ip_address("10.0.9.9")
                    .primary(false)
                    .build(),
            )
            .build();
        let instance = aws::Instance::builder()
            .instance_id("i-1")
            .state(
                aws::InstanceState::builder()
                    .name(aws::InstanceStateName::Running)
                    .build(),
            )
            .instance_type(aws::InstanceType::T3Micro)
            .private_ip_address("10.0.0.5")
            .network_interfaces(other)
            .network_interfaces(primary)
            .tags(aws::Tag::builder().key("k").value("v").build())
            .build();

        let converted = super::instance(&instance);
        assert_eq!(converted.state, "running");
        assert_eq!(converted.instance_type, "t3.micro");
        assert_eq!(converted.private_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(converted.secondary_private_ips, vec!["10.0.0.6".to_owned()]);
        assert_eq!(
            converted.network_interface_id.as_deref(),
            Some("eni-primary")
        );
        assert_eq!(
            converted.tags,
            vec![KeyValue {
                key: "k".into(),
                value: "v".into()
            }]
        );
    }

    #[test]
    fn a_route_to_an_instance_is_reported_by_instance_and_prefix_list_routes_are_skipped() {
        let table = aws::RouteTable::builder()
            .route_table_id("rtb-1")
            .routes(
                aws::Route::builder()
                    .destination_cidr_block("10.244.1.0/24")
                    .instance_id("i-1")
                    .network_interface_id("eni-1")
                    .state(aws::RouteState::Active)
                    .build(),
            )
            .routes(
                aws::Route::builder()
                    .destination_cidr_block("10.0.0.0/16")
                    .gateway_id("local")
                    .build(),
            )
            .routes(
                aws::Route::builder()
                    .destination_prefix_list_id("pl-1")
                    .gateway_id("vpce-1")
                    .build(),
            )
            .build();
        let converted = route_table(&table);
        assert_eq!(converted.routes.len(), 2);
        assert_eq!(
            converted.routes[0].target,
            Some(RouteTarget::InstanceId("i-1".into()))
        );
        assert_eq!(
            converted.routes[1].target,
            Some(RouteTarget::GatewayId("local".into()))
        );
        assert_eq!(converted.routes[1].state, "active");
    }

    #[test]
    fn empty_lists_are_left_out_of_requests() {
        assert_eq!(filters(Vec::new()), None);
        assert_eq!(non_empty(vec!["i-1"]), Some(vec!["i-1"]));
    }
}
