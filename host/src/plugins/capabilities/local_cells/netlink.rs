//! Named network namespaces, and netlink (rtnetlink) sockets opened inside them.
//!
//! A namespace is created and deleted with `ip netns add|delete`, not with rtnetlink's
//! `NetworkNamespace` helpers: those `fork()` the calling process, and a fork of this
//! multi-threaded (tokio) process may only run async-signal-safe code until it execs,
//! which their child (allocating, mounting) does not respect. `ip netns` is one short,
//! separate process, and it is the tool whose layout (`/run/netns/NAME` bind mounts, with
//! shared mount propagation) every other tool (`ip -n`, `ip netns exec`, CNI) expects.
//!
//! Everything else (links, addresses, routes) goes over netlink. A netlink socket belongs
//! to the namespace its creator was in when it was opened, so a socket for namespace N is
//! opened by a short-lived thread that first enters N with `setns(2)`; the socket then
//! serves any task of the runtime. The thread is a fresh one (never a pooled tokio thread)
//! because it never leaves N again.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tokio::process::Command;

use super::LocalCellsError;

/// Where `ip netns` keeps its namespaces.
pub(super) const NETNS_DIR: &str = "/run/netns";
/// Budget of one netlink request or one `ip netns` command: they are local kernel calls that
/// take microseconds to milliseconds; a hang means a wedged kernel or tool.
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The bind mount that keeps namespace `name` alive without a process in it.
pub(super) fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub(super) fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Run one bounded step.
pub(super) async fn bounded<T>(
    action: impl FnOnce() -> String,
    work: impl Future<Output = Result<T, LocalCellsError>>,
) -> Result<T, LocalCellsError> {
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(LocalCellsError::Timeout {
                action: action(),
                after: STEP_TIMEOUT,
            })
        })
}

/// `ip netns add NAME`, unless it exists.
pub(super) async fn add_netns(name: &str) -> Result<(), LocalCellsError> {
    if netns_exists(name) {
        return Ok(());
    }
    ip_netns("add", name).await
}

/// `ip netns delete NAME`, if it exists. The namespace itself lives on while a process
/// is still inside it; callers stop the cell's agent first and delete the links by name.
pub(super) async fn delete_netns(name: &str) -> Result<(), LocalCellsError> {
    if !netns_exists(name) {
        return Ok(());
    }
    ip_netns("delete", name).await
}

async fn ip_netns(verb: &str, name: &str) -> Result<(), LocalCellsError> {
    let command = format!("ip netns {verb} {name}");
    let output = bounded(|| command.clone(), async {
        Command::new("ip")
            .args(["netns", verb, name])
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| LocalCellsError::Io {
                action: format!("run `{command}` (is iproute2 installed?)"),
                source,
            })
    })
    .await?;
    if output.status.success() {
        return Ok(());
    }
    Err(LocalCellsError::Command {
        command,
        reason: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// Run `work` on a fresh thread inside namespace `netns` (see the module docs).
pub(super) async fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, LocalCellsError> {
    let action = format!("enter network namespace {netns}");
    let file = File::open(netns_path(netns)).map_err(|source| LocalCellsError::Io {
        action: action.clone(),
        source,
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            let result = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| work());
            let _ = tx.send(result);
        })
        .map_err(|source| LocalCellsError::Io {
            action: action.clone(),
            source,
        })?;
    match rx.await {
        Ok(result) => result.map_err(|source| LocalCellsError::Io { action, source }),
        Err(_) => Err(LocalCellsError::Io {
            action,
            source: std::io::Error::other("the namespace thread panicked"),
        }),
    }
}

/// An rtnetlink connection to one namespace; its background task ends with it.
pub(super) struct Netlink {
    pub handle: rtnetlink::Handle,
    /// For messages: `cell-0a1b2c3d`, or `the host` for the host's own namespace.
    pub netns: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// A connection to the namespace this process runs in.
    pub fn current() -> Result<Netlink, LocalCellsError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| LocalCellsError::Io {
                action: "open a netlink socket".to_owned(),
                source,
            })?;
        Ok(Netlink {
            handle,
            netns: "the host".to_owned(),
            task: tokio::spawn(connection),
        })
    }

    /// A connection to the named namespace.
    pub async fn open(netns: &str) -> Result<Netlink, LocalCellsError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = in_netns(netns, move || {
            // The socket registers with the runtime's reactor as it is created.
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })
        .await?;
        Ok(Netlink {
            handle,
            netns: netns.to_owned(),
            task: tokio::spawn(connection),
        })
    }

    fn failed(
        &self,
        action: impl std::fmt::Display,
    ) -> impl FnOnce(rtnetlink::Error) -> LocalCellsError {
        let action = format!("{action} in {}", self.netns);
        move |source| LocalCellsError::Netlink { action, source }
    }

    /// The index of link `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, LocalCellsError> {
        bounded(|| format!("look up link {name} in {}", self.netns), async {
            let found = self
                .handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await;
            match found {
                Ok(link) => Ok(link.map(|l| l.header.index)),
                Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
                Err(e) => Err(self.failed(format!("look up link {name}"))(e)),
            }
        })
        .await
    }

    /// The index of link `name`, which must exist.
    pub async fn require_link(&self, name: &str) -> Result<u32, LocalCellsError> {
        self.link_index(name)
            .await?
            .ok_or_else(|| LocalCellsError::Missing {
                what: format!("link {name} in {}", self.netns),
            })
    }

    /// Delete link `name`; a missing link is not an error.
    pub async fn delete_link(&self, name: &str) -> Result<(), LocalCellsError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        bounded(|| format!("delete link {name} in {}", self.netns), async {
            match self.handle.link().del(index).execute().await {
                Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(()),
                other => other.map_err(self.failed(format!("delete link {name}"))),
            }
        })
        .await
    }

    /// Create bridge `name` unless it exists; returns its index.
    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, LocalCellsError> {
        if let Some(index) = self.link_index(name).await? {
            return Ok(index);
        }
        bounded(
            || format!("create bridge {name} in {}", self.netns),
            async {
                ignore_exists(
                    self.handle
                        .link()
                        .add(LinkBridge::new(name).build())
                        .execute()
                        .await,
                )
                .map_err(self.failed(format!("create bridge {name}")))
            },
        )
        .await?;
        self.require_link(name).await
    }

    /// Create a veth pair: `name` here, `peer_name` in the namespace open as `peer_netns`.
    /// Both ends are made at once, so no half-moved pair is ever left behind.
    pub async fn add_veth(
        &self,
        name: &str,
        peer_name: &str,
        peer_netns: &File,
    ) -> Result<(), LocalCellsError> {
        use std::os::fd::AsRawFd as _;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_name.to_owned())
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let message = LinkVeth::new(name, peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        bounded(|| format!("create veth {name} in {}", self.netns), async {
            ignore_exists(self.handle.link().add(message).execute().await)
                .map_err(self.failed(format!("create veth {name} (peer {peer_name})")))
        })
        .await
    }

    /// Set link `index` up, and enslave it to `controller` if given.
    pub async fn set_up(
        &self,
        name: &str,
        index: u32,
        controller: Option<u32>,
    ) -> Result<(), LocalCellsError> {
        let mut message = LinkUnspec::new_with_index(index).up();
        if let Some(controller) = controller {
            message = message.controller(controller);
        }
        bounded(|| format!("set link {name} up in {}", self.netns), async {
            self.handle
                .link()
                .set(message.build())
                .execute()
                .await
                .map_err(self.failed(format!("set link {name} up")))
        })
        .await
    }

    /// Add `address/prefix` to link `index` unless it is there.
    pub async fn add_address(
        &self,
        name: &str,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LocalCellsError> {
        bounded(
            || format!("add {address}/{prefix} to {name} in {}", self.netns),
            async {
                ignore_exists(
                    self.handle
                        .address()
                        .add(index, address.into(), prefix)
                        .execute()
                        .await,
                )
                .map_err(self.failed(format!("add {address}/{prefix} to {name}")))
            },
        )
        .await
    }

    /// The default route via `gateway`, replacing any other default route.
    pub async fn set_default_route(&self, gateway: Ipv4Addr) -> Result<(), LocalCellsError> {
        let message = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        bounded(
            || format!("set the default route via {gateway} in {}", self.netns),
            async {
                self.handle
                    .route()
                    .add(message)
                    .replace()
                    .execute()
                    .await
                    .map_err(self.failed(format!("set the default route via {gateway}")))
            },
        )
        .await
    }
}

/// Write `value` to a sysctl file (`/proc/sys/...`) of namespace `netns`: `/proc/sys/net`
/// shows the namespace of the thread that opens it.
pub(super) async fn write_sysctl(
    netns: &str,
    path: &'static str,
    value: &'static str,
) -> Result<(), LocalCellsError> {
    in_netns(netns, move || std::fs::write(path, value))
        .await
        .map_err(|error| match error {
            LocalCellsError::Io { source, .. } => LocalCellsError::Io {
                action: format!("write {value} to {path} in {netns}"),
                source,
            },
            other => other,
        })
}

/// The errno of a netlink refusal.
pub(super) fn errno(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) if message.raw_code() != 0 => {
            Some(Errno::from_raw(-message.raw_code()))
        }
        _ => None,
    }
}

/// Creating what already exists is success: every step is idempotent.
fn ignore_exists(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
        other => other,
    }
}
