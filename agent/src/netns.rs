//! The pod network: the pod's own network namespace, wired to the cell so that the VPC
//! delivers the pod IP to the cell exactly as EC2 delivers a secondary IP of the ENI.
//!
//! ```text
//!   VPC ──── eth0 (management IP, proxy ARP for the pod IP)         cell netns
//!                 ip_forward=1, route POD_IP/32 dev pod-veth
//!                 pod-veth 169.254.1.1/32 ─┐  nft: pod-veth → cell itself: dropped
//!                                          │ veth pair
//!                 eth0 POD_IP/prefix ──────┘  default (and plan routes) via 169.254.1.1
//!                                                                     pod netns /run/netns/cellet-pod-<uid>
//! ```
//!
//! Why a veth pair, not macvlan or ipvlan: ipvlan (one MAC, many IPs — the natural fit for a
//! secondary IP) is not built into the kernels cellet runs on, and a macvlan gives the pod a
//! MAC address of its own, which the VPC drops (EC2 forwards only the ENI's own MAC). A
//! routed veth keeps the one MAC: the cell answers ARP for the pod IP on its management
//! interface (proxy ARP) and forwards, so the pod keeps its VPC address end to end, with
//! no NAT.
//!
//! The pod cannot reach the agent's management port: the cell's input hook drops every new
//! connection arriving from the pod veth (replies to connections the cell opened, such as
//! probes, pass); forwarding through the cell stays open.
//!
//! Two parts, done at two times:
//!
//! - [`prepare_cell`], once when the agent starts, before it listens: what belongs to the
//!   cell whatever pod it runs — forwarding, proxy ARP on the management interface, and the
//!   nftables table that keeps every pod namespace off the agent's port. Done before any
//!   pod exists, there is no moment when a pod's veth is up and the table is not there yet.
//! - [`PodNet::setup`] and [`PodNet::teardown`], per pod: the namespace, the veth pair,
//!   addresses, routes, `hosts` and `resolv.conf`. Teardown leaves nothing of the pod; the
//!   cell's part stays while the agent (the cell) lives.
//!
//! The namespace is a named one (a bind mount under `/run/netns`), so it outlives the agent
//! process and the runtime's containers join it by path. An agent in a mount namespace of
//! its own (started by `ip netns exec`, as local cells are), whose mounts never propagate
//! back, keeps a `/run/netns` of its own instead: the host's directory would otherwise get
//! an empty file that no tool can open, left behind if the agent dies. The pod namespace is
//! then seen by the agent and its containers only, and lives as long as they do.
//!
//! Links, addresses and routes are made over rtnetlink, in batches ([`rtnl`]): the pod side
//! in one exchange in the pod namespace (the veth pair made from there, its `eth0` up at
//! once and at a known index, so that loopback, address and routes follow in the same
//! datagram), the cell side in one more. The nftables table is written over netlink too, one
//! atomic nf_tables transaction ([`isolation`]): no process is started (an `nft` process
//! cost more than all the rest of the pod's setup).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostAlias;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoVeth, LinkAttribute, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{
    AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::protocol::{PodDns, PodNetwork};
use crate::sandbox::PodSandbox;

mod isolation;
mod masquerade;
mod rtnl;

use rtnl::{Request, Rtnl};

/// The cell side of the veth pair.
pub const CELL_VETH: &str = "pod-veth";
/// The pod side of the veth pair, inside the pod namespace.
pub const POD_INTERFACE: &str = "eth0";
/// The pod's gateway: a link-local address on the cell side of the veth, the same in every
/// cell, so it never takes an address of the VPC.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Where named network namespaces live (`ip netns`' directory).
pub const NETNS_DIR: &str = "/run/netns";
/// The nftables table of the agent in the cell namespace.
pub const NFT_TABLE: &str = "cellet_agent";
/// The routing protocol number that marks routes the agent added in the cell namespace
/// (`ip route show proto 211`), so teardown deletes exactly its own.
const ROUTE_PROTOCOL: u8 = 211;
/// The loopback's index in every network namespace (`LOOPBACK_IFINDEX`, fixed by the
/// kernel), so a new pod namespace's `lo` needs no lookup.
const LOOPBACK_INDEX: u32 = 1;
/// The index the pod's `eth0` is made with in a namespace made for it, so that its address
/// and routes need no lookup. Above the few devices a new namespace may already hold (`lo`
/// is 1; with `net.core.fb_tunnels_only_for_init_net=0`, the fallback devices of loaded
/// tunnel modules, `tunl0`, `sit0`, `gre0`... take the next ones).
const POD_INTERFACE_INDEX: u32 = 64;

/// Errors of building or removing the pod network; each names the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("failed to {action}: {source}")]
    Netlink {
        action: String,
        source: rtnetlink::Error,
    },
    /// A file, sysctl or namespace operation failed.
    #[error("failed to {action}: {source}")]
    Io { action: String, source: io::Error },
    /// The kernel refused a step of the agent's nftables table.
    #[error("failed to write the nftables table {NFT_TABLE}: {0}")]
    Nft(String),
    /// The management interface has no IPv4 address (or does not exist).
    #[error("the management interface {0} has no IPv4 address")]
    NoManagementAddress(String),
    /// A route of the plan has a destination that is not `a.b.c.d/n`.
    #[error("route destination {0:?} is not an IPv4 CIDR")]
    BadRoute(String),
    /// An entry of the plan's no-masquerade list is neither an IPv4 nor an IPv6 CIDR.
    #[error("no-masquerade entry {0:?} is not a CIDR")]
    BadNoMasquerade(String),
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let action = action.into();
    move |source| NetError::Io { action, source }
}

/// Set up what the pod network needs of the cell itself, whatever pod it runs: IPv4
/// forwarding, proxy ARP without delay on the management interface (the VPC then reaches
/// the pod IP as a secondary IP of that interface), and the nftables table that drops new
/// connections from the pod veth to the cell (the agent's port included) and has the
/// (empty) `postrouting` chain the pod's SNAT rules go into.
///
/// Why at agent start and not per pod: all of it is the cell's, not one pod's. The table
/// names the veth (`iifname "pod-veth"`), not a pod, and guards the agent's port from any
/// pod namespace the cell will ever hold; the sysctls are the cell's routing, as a
/// Kubernetes node has forwarding on before its first pod. The cell is an instance made for
/// one pod and deleted with it, so what this sets lives exactly as long as it is needed,
/// and in place before any pod's veth exists (a pod never runs, even for a moment, without
/// the table). Per pod it was an nf_tables transaction registering an input hook, and
/// another removing it, plus four sysctl writes.
///
/// # Expected flow
/// `cellet-agent` calls it once its management interface has an address, before it
/// listens; the host cannot send a pod before that.
///
/// # Guarantees
/// Idempotent: an agent started again replaces the table in one transaction (no moment
/// without it) and writes the same values.
///
/// # Errors
/// The first step that fails, naming its sysctl or the table's step; the agent then does
/// not start.
pub fn prepare_cell(management_interface: &str) -> Result<(), NetError> {
    for (key, value) in [
        ("ipv4/ip_forward".to_string(), "1"),
        (format!("ipv4/conf/{management_interface}/proxy_arp"), "1"),
        // Proxy ARP answers after a random delay of up to 0.8 s by default; a secondary IP
        // of an ENI answers at once.
        (
            format!("ipv4/neigh/{management_interface}/proxy_delay"),
            "0",
        ),
    ] {
        write_sysctl(&key, value)?;
    }
    isolation::load().map_err(NetError::Nft)
}

/// The pod network of one cell.
#[derive(Debug, Clone)]
pub struct PodNet {
    netns_name: String,
    management_interface: String,
    /// `hosts` and `resolv.conf` of the pod.
    files_dir: PathBuf,
}

impl PodNet {
    /// The pod network of pod `pod_uid`, in a cell whose management interface is
    /// `management_interface`, with its files under `state_dir/network`.
    pub fn new(pod_uid: &str, management_interface: &str, state_dir: &Path) -> PodNet {
        PodNet {
            netns_name: format!("cellet-pod-{pod_uid}"),
            management_interface: management_interface.to_string(),
            files_dir: state_dir.join("network"),
        }
    }

    /// The name of the pod namespace (`cellet-pod-<pod uid>`).
    pub fn netns_name(&self) -> &str {
        &self.netns_name
    }

    /// The pod namespace's file, which containers join.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns_name)
    }

    /// Build the pod's network as `network` says and write its `hosts` and `resolv.conf`.
    ///
    /// # Guarantees
    /// Idempotent: what exists already is kept (a running pod keeps its connections), what
    /// is missing is made, addresses and routes are replaced. A veth whose pod side is not
    /// in the pod namespace (left by an agent that ran in another mount namespace) is
    /// replaced.
    ///
    /// # Assumptions
    /// [`prepare_cell`] ran in this cell (the agent does it when it starts): this is only
    /// the pod's part.
    ///
    /// # Errors
    /// The first step that fails, naming its object; what was made before stays, and
    /// [`PodNet::teardown`] removes it.
    pub async fn setup(
        &self,
        network: &PodNetwork,
        host_aliases: &[HostAlias],
    ) -> Result<PodSandbox, NetError> {
        // Blocking netlink exchanges on the calling thread, on purpose: the whole setup is
        // well under a millisecond of kernel work in a cell that runs one pod, and a hop to
        // the blocking pool and back would add two scheduler wake-ups to it.
        self.setup_blocking(network, host_aliases)
    }

    fn setup_blocking(
        &self,
        network: &PodNetwork,
        host_aliases: &[HostAlias],
    ) -> Result<PodSandbox, NetError> {
        let mut cell = Rtnl::open().map_err(io_error("open a netlink socket in the cell"))?;
        let management = management_link(&mut cell, &self.management_interface)?;
        let host_ip = management.ip;
        let pod_ip = network.pod_ip.unwrap_or(host_ip);
        let (hosts_file, resolv_conf) = self.write_files(network, pod_ip, host_aliases)?;
        let sandbox = PodSandbox {
            netns: network.pod_ip.map(|_| self.netns_path()),
            pod_ip,
            host_ip,
            hostname: network.hostname.clone(),
            hosts_file,
            resolv_conf,
        };
        let Some(pod_ip) = network.pod_ip else {
            return Ok(sandbox);
        };
        let routes = network
            .routes
            .iter()
            .map(|route| parse_cidr(&route.destination).map(|dest| (dest, route.via)))
            .collect::<Result<Vec<_>, _>>()?;
        // IPv6 entries hold nothing an IPv4 pod reaches.
        let no_masquerade = network
            .no_masquerade
            .iter()
            .filter(|cidr| !cidr.contains(':'))
            .map(|cidr| parse_cidr(cidr).map_err(|_| NetError::BadNoMasquerade(cidr.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mtu = network.mtu.map_or(management.mtu, u32::from);

        // Pod side, one exchange: the veth pair unless both ends are in place, loopback
        // up, the pod's address, the gateway on-link and every plan route through it.
        // The cell's namespace: the veth's peer is sent there by descriptor (open until the
        // batch is answered), and this thread comes back to it from the pod's.
        let cell_netns = File::open("/proc/thread-self/ns/net")
            .map_err(io_error("open the cell's namespace"))?;
        let mut pod = self.open_netns(&cell_netns)?;
        let mut batch = Vec::new();
        let pod_index = self.ensure_veth(&mut cell, &mut pod, &cell_netns, mtu, &mut batch)?;
        batch.push(link_up(LOOPBACK_INDEX, "set lo of the pod up"));
        batch.push(Request::new(
            RouteNetlinkMessage::NewAddress(
                AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(pod_index)
                    .address(pod_ip, network.prefix_len)
                    .build(),
            ),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("add {pod_ip}/{} to the pod", network.prefix_len),
        ));
        batch.push(add_route(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(POD_GATEWAY, 32)
                .output_interface(pod_index)
                .scope(RouteScope::Link)
                .build(),
            format!("add the route to {POD_GATEWAY} in the pod"),
        ));
        for &((destination, prefix), _) in &routes {
            batch.push(add_route(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(destination, prefix)
                    .output_interface(pod_index)
                    .gateway(POD_GATEWAY)
                    .build(),
                format!("add the route to {destination}/{prefix} in the pod"),
            ));
        }
        pod.rtnl.apply(batch)?;

        // Cell side, one exchange once the veth's index is known: the pod's gateway
        // address, the link up with proxy ARP (for pods whose prefix makes them ARP for
        // their neighbours directly; the management side's proxy ARP is the cell's, see
        // `prepare_cell`), the route to the pod, and the plan routes with a next hop of
        // their own, which also hold for the cell that forwards the pod's traffic (the
        // default route stays the cell's).
        let cell_index = cell
            .link(CELL_VETH)?
            .map(|link| link.header.index)
            .ok_or_else(|| NetError::Io {
                action: format!("find {CELL_VETH} after making the veth pair"),
                source: io::ErrorKind::NotFound.into(),
            })?;
        // Proxy ARP as a per-link IPv4 setting in the message that brings the link up:
        // the sysctl file `conf/pod-veth/proxy_arp` would be one more open and write, and
        // `conf/all` would turn it on for every link of the cell.
        let mut proxy_arp = InetDevConf::default();
        proxy_arp.proxy_arp = 1;
        let mut batch = vec![
            Request::new(
                RouteNetlinkMessage::NewAddress(
                    AddressMessageBuilder::<Ipv4Addr>::new()
                        .index(cell_index)
                        .address(POD_GATEWAY, 32)
                        .build(),
                ),
                NLM_F_CREATE | NLM_F_REPLACE,
                format!("add {POD_GATEWAY}/32 to {CELL_VETH}"),
            ),
            Request::new(
                RouteNetlinkMessage::SetLink(
                    LinkUnspec::new_with_index(cell_index)
                        .up()
                        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![
                            AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(proxy_arp)]),
                        ]))
                        .build(),
                ),
                0,
                format!("set {CELL_VETH} up with proxy ARP"),
            ),
            add_route(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(pod_ip, 32)
                    .output_interface(cell_index)
                    .scope(RouteScope::Link)
                    .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                    .build(),
                format!("add the route to {pod_ip} via {CELL_VETH}"),
            ),
        ];
        for &((destination, prefix), via) in &routes {
            if prefix == 0 {
                continue;
            }
            let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination, prefix)
                .output_interface(management.index)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
            route = match via {
                Some(gateway) => route.gateway(gateway),
                None => route.scope(RouteScope::Link),
            };
            batch.push(add_route(
                route.build(),
                format!("add the route to {destination}/{prefix} in the cell"),
            ));
        }
        cell.apply(batch)?;
        // The pod's SNAT to the outside, when the plan says what is inside.
        if !no_masquerade.is_empty() {
            masquerade::load(pod_ip, &self.management_interface, host_ip, &no_masquerade)
                .map_err(NetError::Nft)?;
        }
        Ok(sandbox)
    }

    /// Remove the pod network: its SNAT rules, the veth pair, the cell routes the agent
    /// added, the pod namespace and the pod's files. What [`prepare_cell`] set up is the
    /// cell's and stays as long as the agent (the cell) lives: it holds nothing of the pod.
    ///
    /// # Guarantees
    /// Idempotent: what is gone already is skipped. It never touches links, routes or
    /// tables the agent did not make.
    ///
    /// # Caveats
    /// A namespace still used by processes (containers not yet stopped) lives on, unnamed,
    /// until they exit; stop the runtime first.
    pub async fn teardown(&self) -> Result<(), NetError> {
        masquerade::remove().map_err(NetError::Nft)?;
        let mut cell = Rtnl::open().map_err(io_error("open a netlink socket in the cell"))?;
        // By name (index 0): one exchange, and "no such device" when it is gone already.
        // Deleting one end deletes the other, and the routes through it.
        cell.apply(vec![
            Request::new(
                RouteNetlinkMessage::DelLink(LinkUnspec::new_with_name(CELL_VETH).build()),
                0,
                format!("delete {CELL_VETH}"),
            )
            .unless_gone(),
        ])?;
        let routes = cell.dump(
            RouteNetlinkMessage::GetRoute(RouteMessageBuilder::<Ipv4Addr>::new().build()),
            "list the cell's routes",
        )?;
        cell.apply(
            routes
                .into_iter()
                .filter_map(|message| match message {
                    RouteNetlinkMessage::NewRoute(route)
                        if route.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL) =>
                    {
                        Some(
                            Request::new(
                                RouteNetlinkMessage::DelRoute(route),
                                0,
                                "delete a route the agent added",
                            )
                            .unless_gone(),
                        )
                    }
                    _ => None,
                })
                .collect(),
        )?;
        remove_netns(&self.netns_path())?;
        match std::fs::remove_dir_all(&self.files_dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(format!(
                "remove {}",
                self.files_dir.display()
            ))(error)),
            _ => Ok(()),
        }
    }

    /// Open the pod namespace, making it first if it does not exist, and a netlink socket
    /// inside it; `fresh` when it was made now (it has nothing but `lo` and the kernel's
    /// fallback tunnel devices).
    fn open_netns(&self, cell_netns: &File) -> Result<OpenNetns, NetError> {
        let path = self.netns_path();
        if is_netns(&path) {
            let file = File::open(&path).map_err(io_error(format!("open {}", path.display())))?;
            return Ok(OpenNetns {
                rtnl: rtnl_in(&file)?,
                fresh: false,
            });
        }
        Ok(OpenNetns {
            rtnl: create_netns(&path, cell_netns)?,
            fresh: true,
        })
    }

    /// Put the requests that make the veth pair first in `batch` unless both ends are
    /// where they belong (a stale end is deleted first); the index of the pod side.
    fn ensure_veth(
        &self,
        cell: &mut Rtnl,
        pod: &mut OpenNetns,
        cell_netns: &File,
        mtu: u32,
        batch: &mut Vec<Request>,
    ) -> Result<u32, NetError> {
        let cell_side = cell.link(CELL_VETH)?;
        // A namespace made just now has no `eth0`: no need to ask.
        let pod_side = match pod.fresh {
            true => None,
            false => pod.rtnl.link(POD_INTERFACE)?,
        };
        match (cell_side, pod_side) {
            (Some(_), Some(pod_side)) => {
                let index = pod_side.header.index;
                batch.push(link_up(index, format!("set {POD_INTERFACE} of the pod up")));
                return Ok(index);
            }
            // Deleting one end of a veth deletes the other, wherever it is.
            (Some(stale), None) => cell.apply(vec![delete_link(stale, CELL_VETH)])?,
            (None, Some(stale)) => pod.rtnl.apply(vec![delete_link(stale, POD_INTERFACE)])?,
            (None, None) => {}
        }
        // Made from the pod namespace, `eth0` being the pair's first end: the kernel brings
        // the first end up in the message that makes the pair, which it cannot do for the
        // peer (it configures the peer before it ties the two ends together, and opening
        // an untied veth fails with ENOTCONN, "Transport endpoint is not connected"). The
        // peer, `pod-veth`, goes to the cell.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(CELL_VETH)
            .mtu(mtu)
            .setns_by_fd(cell_netns.as_raw_fd())
            .build();
        let mut veth = LinkVeth::new(POD_INTERFACE, CELL_VETH)
            .mtu(mtu)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
        // In a namespace made just now, `eth0` gets an index chosen here, so that the
        // address and routes go in the same exchange; elsewhere it is looked up.
        if pod.fresh {
            veth = veth.index(POD_INTERFACE_INDEX);
        }
        let made = Request::new(
            RouteNetlinkMessage::NewLink(veth.build()),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add the veth pair {POD_INTERFACE}/{CELL_VETH}"),
        );
        if pod.fresh {
            batch.push(made);
            return Ok(POD_INTERFACE_INDEX);
        }
        pod.rtnl.apply(vec![made])?;
        pod.rtnl
            .link(POD_INTERFACE)?
            .map(|link| link.header.index)
            .ok_or_else(|| NetError::Io {
                action: format!(
                    "find {POD_INTERFACE} in {} after making it",
                    self.netns_name
                ),
                source: io::ErrorKind::NotFound.into(),
            })
    }

    /// Write the pod's `hosts` and `resolv.conf` (atomically: the runtime may be reading
    /// them for a container that starts now). Plain blocking calls: two small files on a
    /// local disk take microseconds, less than handing each call to tokio's blocking pool
    /// and back.
    fn write_files(
        &self,
        network: &PodNetwork,
        pod_ip: Ipv4Addr,
        host_aliases: &[HostAlias],
    ) -> Result<(PathBuf, PathBuf), NetError> {
        std::fs::create_dir_all(&self.files_dir)
            .map_err(io_error(format!("create {}", self.files_dir.display())))?;
        let hosts = if network.pod_ip.is_some() {
            hosts_file(network, pod_ip, host_aliases)
        } else {
            // hostNetwork pods see the cell's own names, as the kubelet gives them the node's.
            let own = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            own + &host_aliases_lines(host_aliases)
        };
        let resolv = match &network.dns {
            Some(dns) => resolv_conf(dns),
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        let hosts_path = self.files_dir.join("hosts");
        let resolv_path = self.files_dir.join("resolv.conf");
        write_atomically(&hosts_path, hosts.as_bytes())?;
        write_atomically(&resolv_path, resolv.as_bytes())?;
        Ok((hosts_path, resolv_path))
    }
}

/// The pod namespace, opened, with a netlink socket inside it.
struct OpenNetns {
    rtnl: Rtnl,
    /// Made by this setup: no `eth0` in it yet.
    fresh: bool,
}

/// The management interface as the pod network needs it.
struct ManagementLink {
    index: u32,
    /// The pod's veth takes it unless the plan gives an MTU.
    mtu: u32,
    /// Its first IPv4 address: the cell's (and a `hostNetwork` pod's) address.
    ip: Ipv4Addr,
}

/// The management interface's index and MTU (one link message) and first IPv4 address.
fn management_link(rtnl: &mut Rtnl, interface: &str) -> Result<ManagementLink, NetError> {
    let link = rtnl
        .link(interface)?
        .ok_or_else(|| NetError::NoManagementAddress(interface.to_string()))?;
    let index = link.header.index;
    let mtu = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(1500);
    let mut query = AddressMessage::default();
    query.header.family = AddressFamily::Inet;
    rtnl.dump(
        RouteNetlinkMessage::GetAddress(query),
        &format!("list the addresses of {interface}"),
    )?
    .into_iter()
    .filter_map(|message| match message {
        RouteNetlinkMessage::NewAddress(address) if address.header.index == index => Some(address),
        _ => None,
    })
    .flat_map(|address| address.attributes)
    .find_map(|attribute| match attribute {
        AddressAttribute::Address(IpAddr::V4(ip)) | AddressAttribute::Local(IpAddr::V4(ip)) => {
            Some(ip)
        }
        _ => None,
    })
    .map(|ip| ManagementLink { index, mtu, ip })
    .ok_or_else(|| NetError::NoManagementAddress(interface.to_string()))
}

/// The IPv4 address of `interface` in the agent's own namespace.
pub async fn interface_ipv4(interface: &str) -> Result<Ipv4Addr, NetError> {
    let mut rtnl = Rtnl::open().map_err(io_error("open a netlink socket"))?;
    management_link(&mut rtnl, interface).map(|link| link.ip)
}

/// A netlink socket inside `netns`: made by a thread of its own that enters the namespace
/// first (a socket stays in the namespace it was made in), so no thread of the agent's
/// runtime ever changes namespace.
fn rtnl_in(netns: &File) -> Result<Rtnl, NetError> {
    let netns = netns
        .try_clone()
        .map_err(io_error("duplicate the pod namespace's descriptor"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
        Rtnl::open()
    })
    .join()
    .map_err(|_| NetError::Io {
        action: "open a netlink socket in the pod namespace".into(),
        source: io::Error::other("the thread panicked"),
    })?
    .map_err(io_error("open a netlink socket in the pod namespace"))
}

/// Set link `index` up.
fn link_up(index: u32, action: impl Into<String>) -> Request {
    Request::new(
        RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build()),
        0,
        action,
    )
}

/// Add or replace a route.
fn add_route(route: RouteMessage, action: impl Into<String>) -> Request {
    Request::new(
        RouteNetlinkMessage::NewRoute(route),
        NLM_F_CREATE | NLM_F_REPLACE,
        action,
    )
}

/// Delete a stale link found under `name`; nothing to do when it went meanwhile.
fn delete_link(link: LinkMessage, name: &str) -> Request {
    Request::new(
        RouteNetlinkMessage::DelLink(LinkUnspec::new_with_index(link.header.index).build()),
        0,
        format!("delete the stale {name}"),
    )
    .unless_gone()
}

/// True when `path` is a mounted network namespace (not a leftover empty file).
fn is_netns(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| {
        nix::sys::statfs::fstatfs(&file)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    })
}

/// Make a network namespace and bind-mount it at `path`, as `ip netns add` does, and open
/// the netlink socket the pod side is configured with inside it: the calling thread
/// unshares its network namespace, mounts it, opens the socket (a socket stays in the
/// namespace it was made in) and goes back to `home`, the namespace it was in.
///
/// Why on the calling thread rather than on a thread of its own: starting and joining a
/// thread are two waits for the scheduler, which on a loaded machine cost more than the
/// namespace itself. Nothing else runs on the thread meanwhile (no `.await` in between).
fn create_netns(path: &Path, home: &File) -> Result<Rtnl, NetError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(io_error(format!("create {NETNS_DIR}")))?;
    if own_mount_namespace() {
        private_netns_dir(dir)?;
    } else {
        share_netns_dir(dir)?;
    }
    std::fs::write(path, b"").map_err(io_error(format!("create {}", path.display())))?;
    let errno = |errno: nix::errno::Errno| io::Error::from_raw_os_error(errno as i32);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(errno)
        .map_err(io_error(format!("create the namespace {}", path.display())))?;
    let made = nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(errno)
    .map_err(io_error(format!(
        "mount the namespace on {}",
        path.display()
    )))
    .and_then(|()| {
        Rtnl::open().map_err(io_error(format!(
            "open a netlink socket in {}",
            path.display()
        )))
    });
    return_home(home);
    made
}

/// Bring the calling thread back to network namespace `home`. A thread of the agent's
/// runtime left in a pod namespace would make every later socket of the agent there, so a
/// failure (which needs a closed descriptor or a lost capability) ends the process.
fn return_home(home: &File) {
    if let Err(errno) = nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET) {
        tracing::error!(%errno, "cannot return to the cell's network namespace");
        std::process::abort();
    }
}

/// Move the agent into a mount namespace of its own, receiving the instance's mounts
/// (slave propagation) but never showing its own: the pod namespace it mounts on a private
/// `/run/netns` then lives exactly as long as the agent and its containers, and never
/// leaves a file on the instance (or, for local cells, on the host that shares one
/// filesystem with every cell). Unlike `ip netns exec`, `/sys` is left as it is, so runc
/// still finds the cgroup hierarchies under `/sys/fs/cgroup`. Call it before any thread
/// is started.
pub fn enter_private_mount_namespace() -> Result<(), NetError> {
    use nix::mount::{MsFlags, mount};
    let failed = |action: &str| {
        let action = action.to_string();
        move |errno: nix::errno::Errno| NetError::Io {
            action,
            source: io::Error::from_raw_os_error(errno as i32),
        }
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(failed("unshare the mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(failed("make / a slave mount"))
}

/// True when the agent's mount namespace is not the one of PID 1 (the instance's).
fn own_mount_namespace() -> bool {
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    namespace("self") != namespace("1")
}

/// Mount a tmpfs of the agent's own on `/run/netns`, once per agent process (its mount
/// namespace lives as long as the process and its containers).
fn private_netns_dir(dir: &Path) -> Result<(), NetError> {
    static MOUNTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut mounted = MOUNTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *mounted {
        return Ok(());
    }
    nix::mount::mount(
        Some("cellet-agent"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(|errno| NetError::Io {
        action: format!("mount a tmpfs of the agent's own on {}", dir.display()),
        source: io::Error::from_raw_os_error(errno as i32),
    })?;
    *mounted = true;
    Ok(())
}

/// Make `/run/netns` a shared mount point, as iproute2 does, so namespaces mounted there
/// show in mount namespaces made later (`ip netns exec`, containers).
fn share_netns_dir(dir: &Path) -> Result<(), NetError> {
    use nix::mount::{MsFlags, mount};
    let shared = |dir: &Path| {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared(dir).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|()| shared(dir))
    .map_err(|errno| NetError::Io {
        action: format!("make {} a shared mount", dir.display()),
        source: io::Error::from_raw_os_error(errno as i32),
    })
}

/// Unmount and remove a named namespace; nothing to do when it is gone.
fn remove_netns(path: &Path) -> Result<(), NetError> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => {}
        Err(errno) => {
            return Err(NetError::Io {
                action: format!("unmount {}", path.display()),
                source: io::Error::from_raw_os_error(errno as i32),
            });
        }
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error(format!("remove {}", path.display()))(error))
        }
        _ => Ok(()),
    }
}

fn write_sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys/net").join(key);
    std::fs::write(&path, value).map_err(io_error(format!("set {} to {value}", path.display())))
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), NetError> {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents)
        .map_err(io_error(format!("write {}", temporary.display())))?;
    std::fs::rename(&temporary, path).map_err(io_error(format!("replace {}", path.display())))
}

/// `a.b.c.d/n` → address and prefix length.
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let bad = || NetError::BadRoute(text.to_string());
    let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
    let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((address, prefix))
}

/// The pod's `/etc/hosts`, as the kubelet writes it.
fn hosts_file(network: &PodNetwork, pod_ip: Ipv4Addr, host_aliases: &[HostAlias]) -> String {
    let mut text = String::from(
        "# Kubernetes-managed hosts file (cellet-agent).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    match &network.fqdn {
        Some(fqdn) => text.push_str(&format!("{pod_ip}\t{fqdn}\t{}\n", network.hostname)),
        None => text.push_str(&format!("{pod_ip}\t{}\n", network.hostname)),
    }
    text + &host_aliases_lines(host_aliases)
}

fn host_aliases_lines(host_aliases: &[HostAlias]) -> String {
    if host_aliases.is_empty() {
        return String::new();
    }
    let mut text = String::from("\n# Entries added by HostAliases.\n");
    for alias in host_aliases {
        let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
        text.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    text
}

/// The pod's `resolv.conf`.
fn resolv_conf(dns: &PodDns) -> String {
    let mut text = String::new();
    for server in &dns.nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        let options: Vec<String> = dns
            .options
            .iter()
            .map(|option| match &option.value {
                Some(value) => format!("{}:{value}", option.name),
                None => option.name.clone(),
            })
            .collect();
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DnsOption;

    fn network() -> PodNetwork {
        PodNetwork {
            pod_ip: Some(Ipv4Addr::new(10, 250, 0, 11)),
            prefix_len: 32,
            routes: vec![],
            mtu: None,
            no_masquerade: vec![],
            dns: None,
            hostname: "web-0".into(),
            fqdn: Some("web-0.web.default.svc.cluster.local".into()),
        }
    }

    #[test]
    fn hosts_file_names_the_pod_and_its_aliases() {
        let aliases = [HostAlias {
            ip: "10.1.2.3".into(),
            hostnames: Some(vec!["foo.local".into(), "bar.local".into()]),
        }];
        let text = hosts_file(&network(), Ipv4Addr::new(10, 250, 0, 11), &aliases);
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.250.0.11\tweb-0.web.default.svc.cluster.local\tweb-0\n"));
        assert!(
            text.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n")
        );
    }

    #[test]
    fn resolv_conf_lists_servers_searches_and_options() {
        let dns = PodDns {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec![
                DnsOption {
                    name: "ndots".into(),
                    value: Some("5".into()),
                },
                DnsOption {
                    name: "edns0".into(),
                    value: None,
                },
            ],
        };
        assert_eq!(
            resolv_conf(&dns),
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
        );
    }

    #[test]
    fn route_destinations_must_be_ipv4_cidrs() {
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(
            parse_cidr("10.0.0.0/16").unwrap(),
            (Ipv4Addr::new(10, 0, 0, 0), 16)
        );
        for bad in ["10.0.0.0", "10.0.0.0/33", "fd00::/8", "x/1"] {
            assert!(
                matches!(parse_cidr(bad), Err(NetError::BadRoute(_))),
                "{bad}"
            );
        }
    }
}
