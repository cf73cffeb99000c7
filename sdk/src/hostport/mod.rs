//! The `hostport-policy` world: which hostPorts a pod may have and how they map on the node.
//!
//! Implement [`HostportPolicy`] and export it with
//! [`export_hostport_policy!`](crate::export_hostport_policy). The conflict rules every
//! policy should keep are in [`ports`]; a policy adds its own rules in front of them.

pub mod ports;

use std::marker::PhantomData;

pub use crate::__bindings::cloud_world::cellet::plugin0_2_0::types::PortMapping;
use crate::__bindings::cloud_world::cellet::plugin0_2_0::types::{self as wit};
pub use crate::__bindings::hostport_world::exports::cellet::plugin0_2_0::hostport::Admission;
use crate::__bindings::hostport_world::exports::cellet::plugin0_2_0::hostport::Guest;
use crate::instance;
use crate::pod::PodView;
use crate::types::{InitContext, PluginError, Protocol};

/// A hostPort policy. It only decides; the host owns the DNAT rules.
pub trait HostportPolicy: Sized + 'static {
    /// Build the policy for one instance from its config (see the crate docs on state).
    fn init(ctx: InitContext) -> Result<Self, PluginError>;

    /// Decide on a pod's declared ports, given every mapping installed on the node. The
    /// host may call this again for a pod it already admitted (after a restart, say):
    /// `existing` then holds that pod's own mappings too, which must not count as
    /// conflicts — [`ports::admit`] takes care of it.
    fn admit(&self, pod: PodView<'_>, existing: NodeMappings<'_>)
    -> Result<Admission, PluginError>;
}

/// The hostPort mappings on the node: lent by the host for one `admit`, or a plain list in
/// native tests ([`NodeMappings::list`]). Ask for the few that matter
/// ([`conflicts`](Self::conflicts)) rather than for all of them: on a lent list, each
/// mapping returned is copied from the host.
pub struct NodeMappings<'a>(Source<'a>);

enum Source<'a> {
    Host(&'a wit::NodeMappings),
    List(&'a [PortMapping]),
}

impl std::fmt::Debug for NodeMappings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Source::Host(_) => f.write_str("NodeMappings(lent by the host)"),
            Source::List(list) => f.debug_tuple("NodeMappings").field(&list).finish(),
        }
    }
}

impl<'a> NodeMappings<'a> {
    /// The mappings the host lent to this call. Used by the export glue.
    #[doc(hidden)]
    pub fn lent(mappings: &'a wit::NodeMappings) -> Self {
        NodeMappings(Source::Host(mappings))
    }

    /// A plain list, for native tests.
    pub fn list(mappings: &'a [PortMapping]) -> Self {
        NodeMappings(Source::List(mappings))
    }

    /// The mappings with this protocol and host port whose node address overlaps
    /// `host_ip` (unset, `0.0.0.0` or `::` is every address and overlaps any; two
    /// specific addresses overlap when equal), whoever owns them.
    pub fn conflicts(
        &self,
        protocol: Protocol,
        host_ip: Option<&str>,
        host_port: u16,
    ) -> Vec<PortMapping> {
        match self.0 {
            Source::Host(mappings) => mappings.conflicts(protocol, host_ip, host_port),
            Source::List(list) => list
                .iter()
                .filter(|held| held.host_port == host_port && held.protocol == protocol)
                .filter(|held| ports::addresses_overlap(host_ip, held.host_ip.as_deref()))
                .cloned()
                .collect(),
        }
    }

    /// How many mappings there are.
    pub fn count(&self) -> u32 {
        match self.0 {
            Source::Host(mappings) => mappings.count(),
            Source::List(list) => u32::try_from(list.len()).unwrap_or(u32::MAX),
        }
    }

    /// Every mapping.
    pub fn all(&self) -> Vec<PortMapping> {
        match self.0 {
            Source::Host(mappings) => mappings.all(),
            Source::List(list) => list.to_vec(),
        }
    }
}

/// Export glue: implements the generated `Guest` trait for any [`HostportPolicy`].
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: HostportPolicy> Guest for __Export<T> {
    fn init(context: InitContext) -> Result<(), PluginError> {
        instance::init(|| T::init(context))
    }

    fn admit(pod: &wit::Pod, existing: &wit::NodeMappings) -> Result<Admission, PluginError> {
        instance::with(|policy: &mut T| {
            policy.admit(PodView::lent(pod), NodeMappings::lent(existing))
        })
    }
}

/// Export a [`HostportPolicy`] as the component's `hostport-policy` world. Like
/// [`export_network_strategy!`](crate::export_network_strategy), it expands to nothing off
/// `wasm32`.
#[macro_export]
macro_rules! export_hostport_policy {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type CelletHostportPolicyExport = $crate::hostport::__Export<$ty>;
            $crate::__bindings::hostport_world::export_hostport_world!(
                CelletHostportPolicyExport with_types_in $crate::__bindings::hostport_world
            );
        };
    };
}
