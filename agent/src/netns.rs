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
//! The namespace is a named one (a bind mount under `/run/netns`), so it outlives the agent
//! process and the runtime's containers join it by path. An agent in a mount namespace of
//! its own (started by `ip netns exec`, as local cells are), whose mounts never propagate
//! back, keeps a `/run/netns` of its own instead: the host's directory would otherwise get
//! an empty file that no tool can open, left behind if the agent dies. The pod namespace is
//! then seen by the agent and its containers only, and lives as long as they do.
//!
//! Links, addresses and routes are made over netlink (rtnetlink); the nftables table is
//! written over netlink too, one atomic nf_tables transaction ([`isolation`]): no process
//! is started per pod (an `nft` process cost more than all the rest of the setup).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::HostAlias;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::protocol::{PodDns, PodNetwork};
use crate::sandbox::PodSandbox;

mod isolation;

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
}

fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let action = action.into();
    move |source| NetError::Netlink { action, source }
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let action = action.into();
    move |source| NetError::Io { action, source }
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
    /// # Errors
    /// The first step that fails, naming its object; what was made before stays, and
    /// [`PodNet::teardown`] removes it.
    pub async fn setup(
        &self,
        network: &PodNetwork,
        host_aliases: &[HostAlias],
    ) -> Result<PodSandbox, NetError> {
        let (connection, cell) = connect_here()?;
        let result = self.setup_with(&cell, network, host_aliases).await;
        connection.abort();
        result
    }

    async fn setup_with(
        &self,
        cell: &Handle,
        network: &PodNetwork,
        host_aliases: &[HostAlias],
    ) -> Result<PodSandbox, NetError> {
        let (management_index, host_ip) =
            management_address(cell, &self.management_interface).await?;
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

        let (netns, pod_connection, pod) = self.open_netns()?;
        let result = async {
            let mtu = match network.mtu {
                Some(mtu) => u32::from(mtu),
                None => link_mtu(cell, management_index).await?,
            };
            let cell_index = self.ensure_veth(cell, &pod, &netns, mtu).await?;

            // Cell side: the pod's gateway address, the route to the pod, forwarding and
            // proxy ARP (on the management side for the VPC, on the veth for pods whose
            // prefix makes them ARP for their neighbours directly).
            cell.address()
                .add(cell_index, IpAddr::V4(POD_GATEWAY), 32)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("add {POD_GATEWAY}/32 to {CELL_VETH}")))?;
            cell.link()
                .set(LinkUnspec::new_with_index(cell_index).up().build())
                .execute()
                .await
                .map_err(netlink(format!("set {CELL_VETH} up")))?;
            let to_pod = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(pod_ip, 32)
                .output_interface(cell_index)
                .scope(RouteScope::Link)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build();
            cell.route()
                .add(to_pod)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!(
                    "add the route to {pod_ip} via {CELL_VETH}"
                )))?;
            for (key, value) in [
                ("ipv4/ip_forward".to_string(), "1"),
                (
                    format!("ipv4/conf/{}/proxy_arp", self.management_interface),
                    "1",
                ),
                (format!("ipv4/conf/{CELL_VETH}/proxy_arp"), "1"),
                // Proxy ARP answers after a random delay of up to 0.8 s by default; a
                // secondary IP of an ENI answers at once.
                (
                    format!("ipv4/neigh/{}/proxy_delay", self.management_interface),
                    "0",
                ),
            ] {
                write_sysctl(&key, value)?;
            }
            // Plan routes with a next hop of their own also hold for the cell, which
            // forwards the pod's traffic; the default route stays the cell's.
            for &((destination, prefix), via) in &routes {
                if prefix == 0 {
                    continue;
                }
                let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(destination, prefix)
                    .output_interface(management_index)
                    .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
                route = match via {
                    Some(gateway) => route.gateway(gateway),
                    None => route.scope(RouteScope::Link),
                };
                cell.route()
                    .add(route.build())
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "add the route to {destination}/{prefix} in the cell"
                    )))?;
            }

            // Pod side: its address, the gateway on-link, and every plan route through it.
            let pod_index = link_index(&pod, POD_INTERFACE)
                .await?
                .ok_or_else(|| NetError::Io {
                    action: format!("find {POD_INTERFACE} in {}", self.netns_name),
                    source: io::ErrorKind::NotFound.into(),
                })?;
            pod.address()
                .add(pod_index, IpAddr::V4(pod_ip), network.prefix_len)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!(
                    "add {pod_ip}/{} to the pod",
                    network.prefix_len
                )))?;
            for index in [pod_index, link_index(&pod, "lo").await?.unwrap_or(1)] {
                pod.link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(netlink(format!("set link {index} of the pod up")))?;
            }
            let gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(POD_GATEWAY, 32)
                .output_interface(pod_index)
                .scope(RouteScope::Link)
                .build();
            pod.route()
                .add(gateway)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!(
                    "add the route to {POD_GATEWAY} in the pod"
                )))?;
            for &((destination, prefix), _) in &routes {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(destination, prefix)
                    .output_interface(pod_index)
                    .gateway(POD_GATEWAY)
                    .build();
                pod.route()
                    .add(route)
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink(format!(
                        "add the route to {destination}/{prefix} in the pod"
                    )))?;
            }
            isolation::load().map_err(NetError::Nft)
        }
        .await;
        pod_connection.abort();
        result.map(|()| sandbox)
    }

    /// Remove the pod network: the agent's nftables table, the veth pair, the cell routes
    /// the agent added, the pod namespace and the pod's files.
    ///
    /// # Guarantees
    /// Idempotent: what is gone already is skipped. It never touches links, routes or
    /// tables the agent did not make.
    ///
    /// # Caveats
    /// A namespace still used by processes (containers not yet stopped) lives on, unnamed,
    /// until they exit; stop the runtime first.
    pub async fn teardown(&self) -> Result<(), NetError> {
        isolation::remove().map_err(NetError::Nft)?;
        let (connection, cell) = connect_here()?;
        let result = async {
            if let Some(index) = link_index(&cell, CELL_VETH).await? {
                ignore_missing(cell.link().del(index).execute().await)
                    .map_err(netlink(format!("delete {CELL_VETH}")))?;
            }
            let routes: Vec<_> = cell
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await
                .map_err(netlink("list the cell's routes"))?;
            for route in routes
                .into_iter()
                .filter(|route| route.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
            {
                ignore_missing(cell.route().del(route).execute().await)
                    .map_err(netlink("delete a route the agent added"))?;
            }
            Ok(())
        }
        .await;
        connection.abort();
        result?;
        remove_netns(&self.netns_path())?;
        match std::fs::remove_dir_all(&self.files_dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(format!(
                "remove {}",
                self.files_dir.display()
            ))(error)),
            _ => Ok(()),
        }
    }

    /// Open the pod namespace, making it first if it does not exist, and a netlink
    /// connection inside it.
    fn open_netns(&self) -> Result<(File, tokio::task::JoinHandle<()>, Handle), NetError> {
        let path = self.netns_path();
        let open = || File::open(&path).map_err(io_error(format!("open {}", path.display())));
        if is_netns(&path) {
            let netns = open()?;
            let (connection, handle) = connect_in(&netns)?;
            return Ok((netns, connection, handle));
        }
        let (connection, handle) = create_netns(&path)?;
        let netns = open()?;
        Ok((netns, connection, handle))
    }

    /// Make the veth pair unless both ends are where they belong; returns the index of the
    /// cell side.
    async fn ensure_veth(
        &self,
        cell: &Handle,
        pod: &Handle,
        netns: &File,
        mtu: u32,
    ) -> Result<u32, NetError> {
        let cell_index = link_index(cell, CELL_VETH).await?;
        let pod_index = link_index(pod, POD_INTERFACE).await?;
        if let (Some(index), Some(_)) = (cell_index, pod_index) {
            return Ok(index);
        }
        if let Some(index) = cell_index {
            ignore_missing(cell.link().del(index).execute().await)
                .map_err(netlink(format!("delete the stale {CELL_VETH}")))?;
        }
        // The peer is made inside the pod namespace right away, under its final name: the
        // cell has an `eth0` of its own.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(POD_INTERFACE)
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = LinkVeth::new(CELL_VETH, POD_INTERFACE)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        cell.link()
            .add(veth)
            .execute()
            .await
            .map_err(netlink(format!(
                "add the veth pair {CELL_VETH}/{POD_INTERFACE}"
            )))?;
        link_index(cell, CELL_VETH)
            .await?
            .ok_or_else(|| NetError::Io {
                action: format!("find {CELL_VETH} after making it"),
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

/// The index and first IPv4 address of the management interface.
pub async fn management_address(
    handle: &Handle,
    interface: &str,
) -> Result<(u32, Ipv4Addr), NetError> {
    let index = link_index(handle, interface)
        .await?
        .ok_or_else(|| NetError::NoManagementAddress(interface.to_string()))?;
    let addresses: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("list the addresses of {interface}")))?;
    addresses
        .iter()
        .flat_map(|message| &message.attributes)
        .find_map(|attribute| match attribute {
            rtnetlink::packet_route::address::AddressAttribute::Local(IpAddr::V4(ip))
            | rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        })
        .map(|ip| (index, ip))
        .ok_or_else(|| NetError::NoManagementAddress(interface.to_string()))
}

/// The IPv4 address of `interface` in the agent's own namespace.
pub async fn interface_ipv4(interface: &str) -> Result<Ipv4Addr, NetError> {
    let (connection, handle) = connect_here()?;
    let result = management_address(&handle, interface).await;
    connection.abort();
    result.map(|(_, ip)| ip)
}

/// A netlink connection in the agent's own namespace, its task spawned.
fn connect_here() -> Result<(tokio::task::JoinHandle<()>, Handle), NetError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(io_error("open a netlink socket"))?;
    Ok((tokio::spawn(connection), handle))
}

/// A netlink connection inside `netns`: the socket is made by a thread of its own that
/// enters the namespace first (a socket stays in the namespace it was made in), so no
/// thread of the agent's runtime ever changes namespace.
fn connect_in(netns: &File) -> Result<(tokio::task::JoinHandle<()>, Handle), NetError> {
    let netns = netns
        .try_clone()
        .map_err(io_error("duplicate the pod namespace's descriptor"))?;
    let runtime = tokio::runtime::Handle::current();
    let made = std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
        // The socket registers with the reactor of the agent's runtime.
        let _runtime = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection()?;
        Ok::<_, io::Error>((connection, handle))
    })
    .join()
    .map_err(|_| NetError::Io {
        action: "open a netlink socket in the pod namespace".into(),
        source: io::Error::other("the thread panicked"),
    })?;
    let (connection, handle) =
        made.map_err(io_error("open a netlink socket in the pod namespace"))?;
    Ok((tokio::spawn(connection), handle))
}

/// The index of link `name`, `None` when there is none.
async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let found: Result<Vec<LinkMessage>, _> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await;
    match ignore_missing(found.map(|links| links.first().map(|link| link.header.index))) {
        Ok(index) => Ok(index.flatten()),
        Err(source) => Err(NetError::Netlink {
            action: format!("look up link {name}"),
            source,
        }),
    }
}

async fn link_mtu(handle: &Handle, index: u32) -> Result<u32, NetError> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("read the MTU of link {index}")))?;
    Ok(links
        .iter()
        .flat_map(|link| &link.attributes)
        .find_map(|attribute| match attribute {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
        .unwrap_or(1500))
}

/// `Ok(None)` for "no such device/route/address", which teardown and lookups expect.
fn ignore_missing<T>(result: Result<T, rtnetlink::Error>) -> Result<Option<T>, rtnetlink::Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(rtnetlink::Error::NetlinkError(message))
            if matches!(
                message.to_io().raw_os_error(),
                Some(
                    nix::libc::ENODEV
                        | nix::libc::ESRCH
                        | nix::libc::ENOENT
                        | nix::libc::EADDRNOTAVAIL
                )
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// True when `path` is a mounted network namespace (not a leftover empty file).
fn is_netns(path: &Path) -> bool {
    File::open(path).is_ok_and(|file| {
        nix::sys::statfs::fstatfs(&file)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    })
}

/// Make a network namespace and bind-mount it at `path`, as `ip netns add` does: a thread of
/// its own unshares its network namespace, the mount keeps the namespace after the thread
/// exits. The same thread opens the netlink connection the pod side is configured with
/// (one thread per pod, not two: under load each thread start and join waits for the
/// scheduler).
fn create_netns(path: &Path) -> Result<(tokio::task::JoinHandle<()>, Handle), NetError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(io_error(format!("create {NETNS_DIR}")))?;
    if own_mount_namespace() {
        private_netns_dir(dir)?;
    } else {
        share_netns_dir(dir)?;
    }
    std::fs::write(path, b"").map_err(io_error(format!("create {}", path.display())))?;
    let target = path.to_path_buf();
    let runtime = tokio::runtime::Handle::current();
    let made = std::thread::spawn(move || {
        let errno = |errno: nix::errno::Errno| io::Error::from_raw_os_error(errno as i32);
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(errno)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno)?;
        // The socket registers with the reactor of the agent's runtime.
        let _runtime = runtime.enter();
        let (connection, handle, _) = rtnetlink::new_connection()?;
        Ok::<_, io::Error>((connection, handle))
    })
    .join()
    .map_err(|_| NetError::Io {
        action: format!("create the namespace {}", path.display()),
        source: io::Error::other("the thread panicked"),
    })?;
    let (connection, handle) =
        made.map_err(io_error(format!("create the namespace {}", path.display())))?;
    Ok((tokio::spawn(connection), handle))
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
