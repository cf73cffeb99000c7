//! The `network-strategy` world: how a pod gets its address and how the cluster reaches it.
//!
//! Implement [`NetworkStrategy`] and export it with [`export_network_strategy!`](crate::export_network_strategy).

use std::marker::PhantomData;

use crate::__bindings::network_world::exports::cellet::plugin::network::Guest;
pub use crate::__bindings::network_world::exports::cellet::plugin::network::{
    ClusterNetworkPlan, ClusterNode, NextHop, PodAddressSource, PodNetworkPlan, PodRoute,
};
use crate::instance;
use crate::types::{InitContext, PluginError, Pod};

/// A network strategy. It decides, the host acts: both methods return plans that the host
/// validates before applying, and the strategy has no capability but logging.
pub trait NetworkStrategy: Sized + 'static {
    /// Build the strategy for one instance from its config (see the crate docs on state).
    fn init(ctx: InitContext) -> Result<Self, PluginError>;

    /// Plan the network of one pod; called before its cell exists.
    fn plan_pod(&self, pod: Pod) -> Result<PodNetworkPlan, PluginError>;

    /// Plan the VPC routes the whole cluster needs, given every node.
    ///
    /// The default wants no route and asks the host to manage none: right for strategies
    /// under which the VPC already routes every pod address (VPC-native addressing).
    fn plan_cluster(&self, nodes: Vec<ClusterNode>) -> Result<ClusterNetworkPlan, PluginError> {
        let _ = nodes;
        Ok(ClusterNetworkPlan {
            routes: Vec::new(),
            manage_routes: false,
            warnings: Vec::new(),
        })
    }
}

/// The default route of a pod: everything via the VPC subnet's router.
pub fn default_route() -> PodRoute {
    PodRoute {
        destination: "0.0.0.0/0".to_string(),
        via: NextHop::SubnetGateway,
    }
}

/// The plan of both shipped strategies: the pod keeps a VPC address (or the cell's own for
/// `hostNetwork` pods), with the subnet's prefix, a default route via the subnet's router,
/// and its own source address towards `no_masquerade`.
pub fn vpc_pod_plan(pod: &Pod, no_masquerade: Vec<String>, mtu: Option<u16>) -> PodNetworkPlan {
    PodNetworkPlan {
        address_source: if pod.host_network {
            PodAddressSource::HostNetwork
        } else {
            PodAddressSource::VpcSecondary
        },
        prefix_length: None,
        routes: vec![default_route()],
        no_masquerade,
        mtu,
    }
}

/// Export glue: implements the generated `Guest` trait for any [`NetworkStrategy`].
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: NetworkStrategy> Guest for __Export<T> {
    fn init(context: InitContext) -> Result<(), PluginError> {
        instance::init(|| T::init(context))
    }

    fn plan_pod(pod: Pod) -> Result<PodNetworkPlan, PluginError> {
        instance::with(|strategy: &mut T| strategy.plan_pod(pod))
    }

    fn plan_cluster(nodes: Vec<ClusterNode>) -> Result<ClusterNetworkPlan, PluginError> {
        instance::with(|strategy: &mut T| strategy.plan_cluster(nodes))
    }
}

/// Export a [`NetworkStrategy`] as the component's `network-strategy` world.
///
/// ```
/// use cellet_sdk::network::{NetworkStrategy, PodAddressSource, PodNetworkPlan, default_route};
/// use cellet_sdk::{InitContext, PluginError, types::Pod};
///
/// struct Flat;
///
/// impl NetworkStrategy for Flat {
///     fn init(_ctx: InitContext) -> Result<Self, PluginError> {
///         Ok(Flat)
///     }
///
///     fn plan_pod(&self, _pod: Pod) -> Result<PodNetworkPlan, PluginError> {
///         Ok(PodNetworkPlan {
///             address_source: PodAddressSource::VpcSecondary,
///             prefix_length: None,
///             routes: vec![default_route()],
///             no_masquerade: vec![],
///             mtu: None,
///         })
///     }
/// }
///
/// cellet_sdk::export_network_strategy!(Flat);
/// ```
///
/// The exports exist only when compiling for `wasm32`; natively the macro expands to
/// nothing, so the same crate is unit-tested with `cargo test`.
#[macro_export]
macro_rules! export_network_strategy {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type CelletNetworkStrategyExport = $crate::network::__Export<$ty>;
            $crate::__bindings::network_world::export_network_world!(
                CelletNetworkStrategyExport with_types_in $crate::__bindings::network_world
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{PodBuilder, context};

    /// Counts the pods it planned, to show that one value serves every call.
    struct Counting {
        mtu: u16,
        planned: std::cell::Cell<u16>,
    }

    impl NetworkStrategy for Counting {
        fn init(ctx: InitContext) -> Result<Self, PluginError> {
            #[derive(serde::Deserialize)]
            struct Config {
                mtu: u16,
            }
            let config: Config = crate::config(&ctx)?;
            Ok(Counting {
                mtu: config.mtu,
                planned: std::cell::Cell::new(0),
            })
        }

        fn plan_pod(&self, _pod: Pod) -> Result<PodNetworkPlan, PluginError> {
            self.planned.set(self.planned.get() + 1);
            Ok(PodNetworkPlan {
                address_source: PodAddressSource::VpcSecondary,
                prefix_length: None,
                routes: vec![default_route()],
                no_masquerade: vec![],
                mtu: Some(self.mtu + self.planned.get()),
            })
        }
    }

    #[test]
    fn export_glue_keeps_the_value_built_by_init() {
        type Glue = __Export<Counting>;
        let pod = PodBuilder::new("default", "web").build();

        let before = <Glue as Guest>::plan_pod(pod.clone()).unwrap_err();
        assert!(matches!(before, PluginError::Internal(_)), "{before:?}");

        <Glue as Guest>::init(context(serde_json::json!({ "mtu": 1500 }))).unwrap();
        assert_eq!(
            <Glue as Guest>::plan_pod(pod.clone()).unwrap().mtu,
            Some(1501)
        );
        assert_eq!(
            <Glue as Guest>::plan_pod(pod.clone()).unwrap().mtu,
            Some(1502)
        );
        let cluster = <Glue as Guest>::plan_cluster(vec![]).unwrap();
        assert!(!cluster.manage_routes && cluster.routes.is_empty());

        // A failed re-init forgets the old value rather than serving it.
        let err = <Glue as Guest>::init(context(serde_json::json!({ "mtu": "big" }))).unwrap_err();
        assert!(
            matches!(err, PluginError::InvalidConfig(ref m) if m.contains("`mtu`")),
            "{err:?}"
        );
        assert!(<Glue as Guest>::plan_pod(pod).is_err());
    }
}
