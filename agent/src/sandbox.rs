//! What the pod network hands to the container runtime: the namespace its containers join
//! and the files they bind-mount.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The pod's network sandbox, built by [`crate::netns`] before the runtime starts any
/// container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandbox {
    /// The pod network namespace file (`/run/netns/cellet-pod-<pod uid>`) every container joins;
    /// `None` for `hostNetwork` pods, whose containers stay in the cell's namespace.
    pub netns: Option<PathBuf>,
    /// The pod's address (`status.podIP` for the downward API): its own, or the
    /// management address for `hostNetwork` pods.
    pub pod_ip: Ipv4Addr,
    /// The cell's management address (`status.hostIP`).
    pub host_ip: Ipv4Addr,
    /// The pod's hostname (the containers' UTS hostname).
    pub hostname: String,
    /// `/etc/hosts` to bind-mount read-only into every container.
    pub hosts_file: PathBuf,
    /// `/etc/resolv.conf` to bind-mount read-only into every container.
    pub resolv_conf: PathBuf,
}
