//! The local VPC in the kernel: its namespace, bridge and router, the host's uplink, each
//! cell's namespace and veth, and the VPC router's routes.
//!
//! ```text
//!  host namespace            VPC namespace (router, ip_forward=1)          cell namespace
//!  UPLINK host-address/P ─── UPLINK ─┐
//!                                    BRIDGE gateway/P ── cell-0a1b2c3d ─── eth0 management/P
//!                                                                          default via gateway
//! ```
//!
//! Every function here is idempotent: it makes what is missing and leaves what exists.

use std::fs::File;
use std::net::Ipv4Addr;

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use nix::errno::Errno;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};

use super::LocalCellsError;
use super::netlink::{self, Netlink, bounded, errno};
use super::settings::LocalCellsSettings;

/// The `proto` of every route cellet sets in the VPC router (`ip route show proto 211`):
/// list and remove see only these, so routes of anyone else are never touched. 211 is
/// unassigned in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 211;
/// The main routing table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u8 = 254;
/// A cell's interface, inside its namespace.
pub const CELL_INTERFACE: &str = "eth0";

/// Make the VPC: its namespace with forwarding on, the bridge with the gateway address,
/// and the host's uplink with the host's address.
pub async fn ensure(settings: &LocalCellsSettings) -> Result<(), LocalCellsError> {
    let vpc_ns = &settings.vpc_namespace;
    let prefix = settings.subnet.prefix_len();
    netlink::add_netns(vpc_ns).await?;
    netlink::write_sysctl(vpc_ns, "/proc/sys/net/ipv4/ip_forward", "1").await?;

    let vpc = Netlink::open(vpc_ns).await?;
    let lo = vpc.require_link("lo").await?;
    vpc.set_up("lo", lo, None).await?;
    let bridge = vpc.ensure_bridge(&settings.bridge).await?;
    vpc.add_address(&settings.bridge, bridge, settings.gateway(), prefix)
        .await?;
    vpc.set_up(&settings.bridge, bridge, None).await?;

    let host = Netlink::current()?;
    if host.link_index(&settings.uplink).await?.is_none() {
        let vpc_file = open_netns(vpc_ns)?;
        host.add_veth(&settings.uplink, &settings.uplink, &vpc_file)
            .await?;
    }
    let uplink_vpc = vpc.require_link(&settings.uplink).await?;
    vpc.set_up(&settings.uplink, uplink_vpc, Some(bridge))
        .await?;
    let uplink = host.require_link(&settings.uplink).await?;
    host.add_address(&settings.uplink, uplink, settings.host_address(), prefix)
        .await?;
    host.set_up(&settings.uplink, uplink, None).await
}

/// Remove the VPC: the host's uplink and the VPC namespace (its bridge and routes go with
/// it). Cells must be deleted first.
pub async fn remove(settings: &LocalCellsSettings) -> Result<(), LocalCellsError> {
    Netlink::current()?.delete_link(&settings.uplink).await?;
    netlink::delete_netns(&settings.vpc_namespace).await
}

fn open_netns(name: &str) -> Result<File, LocalCellsError> {
    File::open(netlink::netns_path(name)).map_err(|source| LocalCellsError::Io {
        action: format!("open network namespace {name}"),
        source,
    })
}

/// Plumb cell `name`: its namespace, a veth from the VPC bridge (the VPC end named after
/// the cell) to its `eth0`, the management address, and the default route via the gateway.
pub async fn plumb_cell(
    settings: &LocalCellsSettings,
    name: &str,
    management_ip: Ipv4Addr,
) -> Result<(), LocalCellsError> {
    netlink::add_netns(name).await?;
    let vpc = Netlink::open(&settings.vpc_namespace).await?;
    let cell = Netlink::open(name).await?;
    if vpc.link_index(name).await?.is_none() {
        vpc.add_veth(name, CELL_INTERFACE, &open_netns(name)?)
            .await?;
    }
    let bridge = vpc.require_link(&settings.bridge).await?;
    let vpc_end = vpc.require_link(name).await?;
    vpc.set_up(name, vpc_end, Some(bridge)).await?;

    let lo = cell.require_link("lo").await?;
    cell.set_up("lo", lo, None).await?;
    let eth0 = cell.require_link(CELL_INTERFACE).await?;
    cell.add_address(
        CELL_INTERFACE,
        eth0,
        management_ip,
        settings.subnet.prefix_len(),
    )
    .await?;
    cell.set_up(CELL_INTERFACE, eth0, None).await?;
    cell.set_default_route(settings.gateway()).await
}

/// Remove cell `name`'s namespace and its veth. The veth is deleted by its VPC end too:
/// should anything still hold the namespace open, the cell is off the VPC all the same.
pub async fn unplumb_cell(
    settings: &LocalCellsSettings,
    name: &str,
) -> Result<(), LocalCellsError> {
    if netlink::netns_exists(&settings.vpc_namespace) {
        Netlink::open(&settings.vpc_namespace)
            .await?
            .delete_link(name)
            .await?;
    }
    netlink::delete_netns(name).await
}

/// A route of the VPC router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VpcRoute {
    pub destination: Ipv4Net,
    pub next_hop: Ipv4Addr,
}

/// The destination, next hop and protocol of an IPv4 route of the main table.
fn read_route(message: &RouteMessage) -> Option<(Ipv4Net, Option<Ipv4Addr>, RouteProtocol)> {
    if message.header.table != MAIN_TABLE {
        return None;
    }
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Table(table) if *table != u32::from(MAIN_TABLE) => return None,
            _ => {}
        }
    }
    let net = Ipv4Net::new(destination, message.header.destination_prefix_length).ok()?;
    Some((net, gateway, message.header.protocol))
}

async fn main_table(
    vpc: &Netlink,
) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, RouteProtocol)>, LocalCellsError> {
    bounded(|| format!("list routes in {}", vpc.netns), async {
        let messages: Vec<RouteMessage> = vpc
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| LocalCellsError::Netlink {
                action: format!("list routes in {}", vpc.netns),
                source,
            })?;
        Ok(messages.iter().filter_map(read_route).collect())
    })
    .await
}

/// The routes cellet set in the VPC router.
pub async fn list_routes(settings: &LocalCellsSettings) -> Result<Vec<VpcRoute>, LocalCellsError> {
    let vpc = Netlink::open(&settings.vpc_namespace).await?;
    Ok(main_table(&vpc)
        .await?
        .into_iter()
        .filter(|(_, _, protocol)| *protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
        .filter_map(|(destination, gateway, _)| {
            gateway.map(|next_hop| VpcRoute {
                destination,
                next_hop,
            })
        })
        .collect())
}

/// Create or replace cellet's route for `route.destination`. A route of anyone else for
/// the same destination is refused rather than replaced.
pub async fn set_route(
    settings: &LocalCellsSettings,
    route: VpcRoute,
) -> Result<(), LocalCellsError> {
    let vpc = Netlink::open(&settings.vpc_namespace).await?;
    let foreign = main_table(&vpc)
        .await?
        .into_iter()
        .find(|(destination, _, protocol)| {
            *destination == route.destination && *protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
        });
    if let Some((destination, gateway, protocol)) = foreign {
        return Err(LocalCellsError::Refused {
            reason: format!(
                "the VPC router already has a route for {destination} that cellet did not set (proto {protocol:?}{}); not replacing it",
                gateway.map(|g| format!(", via {g}")).unwrap_or_default()
            ),
        });
    }
    let message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.addr(), route.destination.prefix_len())
        .gateway(route.next_hop)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build();
    let action = format!(
        "set the route {} via {} in {}",
        route.destination, route.next_hop, vpc.netns
    );
    bounded(|| action.clone(), async {
        vpc.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|source| LocalCellsError::Netlink {
                action: action.clone(),
                source,
            })
    })
    .await
}

/// Remove cellet's route for `destination`; a missing route (or only someone else's) is
/// success, and someone else's stays: the kernel matches the protocol on delete.
pub async fn remove_route(
    settings: &LocalCellsSettings,
    destination: Ipv4Net,
) -> Result<(), LocalCellsError> {
    if !netlink::netns_exists(&settings.vpc_namespace) {
        return Ok(());
    }
    let vpc = Netlink::open(&settings.vpc_namespace).await?;
    let message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(destination.addr(), destination.prefix_len())
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build();
    let action = format!("remove the route for {destination} in {}", vpc.netns);
    bounded(|| action.clone(), async {
        match vpc.handle.route().del(message).execute().await {
            Err(e) if errno(&e) == Some(Errno::ESRCH) => Ok(()),
            other => other.map_err(|source| LocalCellsError::Netlink {
                action: action.clone(),
                source,
            }),
        }
    })
    .await
}
