//! The `hostport-policy` world: which hostPorts a pod may have and how they map on the node.
//!
//! Implement [`HostportPolicy`] and export it with
//! [`export_hostport_policy!`](crate::export_hostport_policy). The conflict rules every
//! policy should keep are in [`ports`]; a policy adds its own rules in front of them.

pub mod ports;

use std::marker::PhantomData;

use crate::__bindings::hostport_world::exports::cellet::plugin::hostport::Guest;
pub use crate::__bindings::hostport_world::exports::cellet::plugin::hostport::{
    Admission, PortMapping,
};
use crate::instance;
use crate::types::{InitContext, PluginError, Pod};

/// A hostPort policy. It only decides; the host owns the DNAT rules.
pub trait HostportPolicy: Sized + 'static {
    /// Build the policy for one instance from its config (see the crate docs on state).
    fn init(ctx: InitContext) -> Result<Self, PluginError>;

    /// Decide on a pod's declared ports, given every mapping installed on the node. The
    /// host may call this again for a pod it already admitted (after a restart, say):
    /// `existing` then holds that pod's own mappings too, which must not count as
    /// conflicts — [`ports::admit`] takes care of it.
    fn admit(&self, pod: Pod, existing: Vec<PortMapping>) -> Result<Admission, PluginError>;
}

/// Export glue: implements the generated `Guest` trait for any [`HostportPolicy`].
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: HostportPolicy> Guest for __Export<T> {
    fn init(context: InitContext) -> Result<(), PluginError> {
        instance::init(|| T::init(context))
    }

    fn admit(pod: Pod, existing: Vec<PortMapping>) -> Result<Admission, PluginError> {
        instance::with(|policy: &mut T| policy.admit(pod, existing))
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
