//! Cloud routes as entries of the configured VPC route table: the pure parts.
//!
//! EC2 routes point at instances, interfaces or gateways, never at a bare address, so a
//! route to an address goes to the instance whose primary address it is, and every route
//! this plugin reports or changes is one to an instance. The table's other entries (the
//! VPC's `local` route, gateways, peerings) are neither reported nor ever touched.

use cellet_sdk::capabilities::ec2::{Route, RouteTable, RouteTarget as Ec2Target};
use cellet_sdk::net::IpNet;
use cellet_sdk::types::{CloudRoute, RouteTarget};

/// What `ensure-route` has to do to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No route for the destination yet.
    Create,
    /// A route exists but goes elsewhere, or is a blackhole (its instance is gone).
    Replace,
    /// The route is already there and active.
    Keep,
}

/// The route of `table` for `destination`, compared as networks (EC2 answers with the
/// canonical text, the host may not have sent it).
pub fn find<'a>(table: &'a RouteTable, destination: &IpNet) -> Option<&'a Route> {
    table.routes.iter().find(|route| {
        route
            .destination_cidr
            .parse::<IpNet>()
            .is_ok_and(|net| net == *destination)
    })
}

/// What to do so that `destination` goes to `instance_id`.
pub fn change(current: Option<&Route>, instance_id: &str) -> Change {
    match current {
        None => Change::Create,
        Some(route) => {
            let same_target =
                matches!(&route.target, Some(Ec2Target::InstanceId(id)) if id == instance_id);
            if same_target && route.state == "active" {
                Change::Keep
            } else {
                Change::Replace
            }
        }
    }
}

/// Whether a route is one this plugin may replace or remove: a route to an instance or an
/// interface. Gateways and the `local` route are the VPC's own.
pub fn is_managed(route: &Route) -> bool {
    matches!(
        route.target,
        Some(Ec2Target::InstanceId(_) | Ec2Target::NetworkInterfaceId(_))
    )
}

/// The table's routes to instances, as the contract's routes.
pub fn cloud_routes(table: &RouteTable) -> Vec<CloudRoute> {
    table
        .routes
        .iter()
        .filter_map(|route| match &route.target {
            Some(Ec2Target::InstanceId(id)) => Some(CloudRoute {
                destination: route.destination_cidr.clone(),
                target: RouteTarget::Instance(id.clone()),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, target: Option<Ec2Target>, state: &str) -> Route {
        Route {
            destination_cidr: destination.into(),
            target,
            state: state.into(),
        }
    }

    fn table() -> RouteTable {
        RouteTable {
            route_table_id: "rtb-1".into(),
            vpc_id: "vpc-1".into(),
            routes: vec![
                route(
                    "10.0.0.0/16",
                    Some(Ec2Target::GatewayId("local".into())),
                    "active",
                ),
                route(
                    "0.0.0.0/0",
                    Some(Ec2Target::GatewayId("igw-1".into())),
                    "active",
                ),
                route(
                    "10.244.1.0/24",
                    Some(Ec2Target::InstanceId("i-1".into())),
                    "active",
                ),
                route(
                    "10.244.2.0/24",
                    Some(Ec2Target::InstanceId("i-2".into())),
                    "blackhole",
                ),
                route(
                    "10.244.3.0/24",
                    Some(Ec2Target::NetworkInterfaceId("eni-3".into())),
                    "active",
                ),
                route("10.99.0.0/16", None, "active"),
            ],
            tags: Vec::new(),
        }
    }

    #[test]
    fn only_instance_routes_are_reported() {
        let routes = cloud_routes(&table());
        assert_eq!(
            routes,
            vec![
                CloudRoute {
                    destination: "10.244.1.0/24".into(),
                    target: RouteTarget::Instance("i-1".into())
                },
                CloudRoute {
                    destination: "10.244.2.0/24".into(),
                    target: RouteTarget::Instance("i-2".into())
                },
            ]
        );
    }

    #[test]
    fn a_route_is_created_kept_or_replaced() {
        let table = table();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            change(find(&table, &net("10.244.9.0/24")), "i-1"),
            Change::Create
        );
        assert_eq!(
            change(find(&table, &net("10.244.1.0/24")), "i-1"),
            Change::Keep
        );
        assert_eq!(
            change(find(&table, &net("10.244.1.0/24")), "i-9"),
            Change::Replace
        );
        assert_eq!(
            change(find(&table, &net("10.244.2.0/24")), "i-2"),
            Change::Replace,
            "a blackhole is replaced"
        );
        assert_eq!(
            change(find(&table, &net("10.244.3.0/24")), "i-3"),
            Change::Replace
        );
    }

    #[test]
    fn gateway_routes_are_never_managed() {
        let table = table();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(!is_managed(find(&table, &net("10.0.0.0/16")).unwrap()));
        assert!(!is_managed(find(&table, &net("0.0.0.0/0")).unwrap()));
        assert!(!is_managed(find(&table, &net("10.99.0.0/16")).unwrap()));
        assert!(is_managed(find(&table, &net("10.244.3.0/24")).unwrap()));
    }
}
