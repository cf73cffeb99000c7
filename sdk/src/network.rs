//! The `network-strategy` world: how a pod gets its address and how the cluster reaches it.
//!
//! Implement [`NetworkStrategy`] and export it with [`export_network_strategy!`](crate::export_network_strategy).

use std::marker::PhantomData;

use crate::__bindings::cloud_world::cellet::plugin0_2_0::types::Pod;
use crate::__bindings::network_world::exports::cellet::plugin0_2_0::network::Guest;
pub use crate::__bindings::network_world::exports::cellet::plugin0_2_0::network::{
    ClusterNode, NextHop, NodePlan, PodAddressSource, PodNetworkPlan, PodRoute, RoutesPlan,
};
use crate::instance;
use crate::pod::PodView;
use crate::types::{InitContext, PluginError};

/// A network strategy. It decides, the host acts: its methods return plans that the host
/// validates before applying, and the strategy has no capability but logging.
///
/// The cluster's VPC routes are planned node by node ([`plan_node`](Self::plan_node)),
/// then over the totals ([`plan_routes`](Self::plan_routes)). The host asks again for a
/// node only when the node changes, so `plan_node` must depend on the node and the config
/// alone. The host takes nodes in name order and keeps the first route for each
/// destination CIDR, warning about a later node that claims it again;
/// [`testing::plan_cluster`](crate::testing::plan_cluster) does the same in native tests.
pub trait NetworkStrategy: Sized + 'static {
    /// Build the strategy for one instance from its config (see the crate docs on state).
    fn init(ctx: InitContext) -> Result<Self, PluginError>;

    /// Plan the network of one pod; called before its cell exists.
    fn plan_pod(&self, pod: PodView<'_>) -> Result<PodNetworkPlan, PluginError>;

    /// Plan what one node needs from the VPC: routes to its pods, and warnings about it.
    ///
    /// The default wants no route and warns about nothing: right for strategies under
    /// which the VPC already routes every pod address (VPC-native addressing).
    fn plan_node(&self, node: ClusterNode) -> Result<NodePlan, PluginError> {
        let _ = node;
        Ok(NodePlan {
            routes: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Say whether the host manages the routes the nodes need, given how many nodes and
    /// routes (duplicates skipped) there are; refuse with `capacity` when they cannot fit.
    ///
    /// The default asks the host to manage none and warns about nothing.
    fn plan_routes(&self, nodes: u32, routes: u32) -> Result<RoutesPlan, PluginError> {
        let _ = (nodes, routes);
        Ok(RoutesPlan {
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
pub fn vpc_pod_plan(
    pod: &PodView<'_>,
    no_masquerade: Vec<String>,
    mtu: Option<u16>,
) -> PodNetworkPlan {
    PodNetworkPlan {
        address_source: if pod.host_network() {
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

    fn plan_pod(pod: &Pod) -> Result<PodNetworkPlan, PluginError> {
        instance::with(|strategy: &mut T| strategy.plan_pod(PodView::lent(pod)))
    }

    fn plan_node(node: ClusterNode) -> Result<NodePlan, PluginError> {
        instance::with(|strategy: &mut T| strategy.plan_node(node))
    }

    fn plan_routes(nodes: u32, routes: u32) -> Result<RoutesPlan, PluginError> {
        instance::with(|strategy: &mut T| strategy.plan_routes(nodes, routes))
    }
}

/// Export a [`NetworkStrategy`] as the component's `network-strategy` world.
///
/// ```
/// use cellet_sdk::network::{NetworkStrategy, PodAddressSource, PodNetworkPlan, default_route};
/// use cellet_sdk::{InitContext, PluginError, pod::PodView};
///
/// struct Flat;
///
/// impl NetworkStrategy for Flat {
///     fn init(_ctx: InitContext) -> Result<Self, PluginError> {
///         Ok(Flat)
///     }
///
///     fn plan_pod(&self, _pod: PodView) -> Result<PodNetworkPlan, PluginError> {
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
    use crate::testing::{NodeBuilder, context};

    /// Counts the nodes it planned, to show that one value serves every call. (The glue of
    /// `plan-pod` needs a pod lent by a host, so it is exercised by the host's tests.)
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

        fn plan_pod(&self, pod: PodView) -> Result<PodNetworkPlan, PluginError> {
            Ok(vpc_pod_plan(&pod, vec![], Some(self.mtu)))
        }

        fn plan_node(&self, node: ClusterNode) -> Result<NodePlan, PluginError> {
            self.planned.set(self.planned.get() + 1);
            Ok(NodePlan {
                routes: vec![],
                warnings: vec![format!("{} {}", node.name, self.mtu + self.planned.get())],
            })
        }
    }

    #[test]
    fn export_glue_keeps_the_value_built_by_init() {
        type Glue = __Export<Counting>;
        let node = || NodeBuilder::new("n1").build();

        let before = <Glue as Guest>::plan_node(node()).unwrap_err();
        assert!(matches!(before, PluginError::Internal(_)), "{before:?}");

        <Glue as Guest>::init(context(serde_json::json!({ "mtu": 1500 }))).unwrap();
        assert_eq!(
            <Glue as Guest>::plan_node(node()).unwrap().warnings,
            ["n1 1501"]
        );
        assert_eq!(
            <Glue as Guest>::plan_node(node()).unwrap().warnings,
            ["n1 1502"]
        );
        let routes = <Glue as Guest>::plan_routes(1, 0).unwrap();
        assert!(!routes.manage_routes && routes.warnings.is_empty());

        let err = <Glue as Guest>::init(context(serde_json::json!({ "mtu": "big" }))).unwrap_err();
        assert!(
            matches!(err, PluginError::InvalidConfig(ref m) if m.contains("`mtu`")),
            "{err:?}"
        );
        assert!(<Glue as Guest>::plan_node(node()).is_err());
    }

    #[test]
    fn a_host_network_pod_keeps_the_cells_address() {
        let strategy = Counting {
            mtu: 1500,
            planned: std::cell::Cell::new(0),
        };
        let pod = crate::testing::PodBuilder::new("kube-system", "agent")
            .host_network(true)
            .build();
        let plan = strategy.plan_pod(pod.view()).unwrap();
        assert_eq!(plan.address_source, PodAddressSource::HostNetwork);
    }
}
