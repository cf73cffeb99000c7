//! Typed handles on loaded plugins: what the rest of the host calls.
//!
//! Each handle is an `Arc` on its plugin's instance pool: cheap to clone, `Send + Sync`,
//! usable from any task. Its async methods mirror the WIT exports and return
//! `Result<T, CallError>`, where `T` has passed the checks of [`validate`]; the
//! [`CallError`] says whether the plugin *answered* with its own error
//! ([`CallError::Plugin`], a WIT `plugin-error` the caller matches on) or *failed*
//! (trap, deadline, memory, invalid output), in which case the instance is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::plugins::adapt;
use crate::plugins::bindings::{
    Admission, Cell, CellRequest, CloudRoute, ClusterNetworkPlan, ClusterNode, NodeResources,
    PluginError, Pod, PodNetworkPlan, PortMapping, v0_1_0, v0_2_0,
};
use crate::plugins::metrics::ErrorKind;
use crate::plugins::pool::{Guest, Pool};
use crate::plugins::resources::{Lent, NodeMappings, PodResource};
use crate::plugins::spec::Slot;
use crate::plugins::validate;

/// Why a plugin call did not produce a usable value. Every variant names the plugin, its
/// world and the function (`instantiate` and `init` for the creation of an instance).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with its own error: the call worked, the request did not.
    #[error("plugin `{plugin}` ({world}) refused `{function}`: {error:?}")]
    Plugin {
        plugin: String,
        world: &'static str,
        function: &'static str,
        error: PluginError,
    },
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    #[error("failed to call `{function}` of plugin `{plugin}` ({world}): it trapped: {reason}")]
    Trapped {
        plugin: String,
        world: &'static str,
        function: &'static str,
        reason: String,
    },
    #[error(
        "failed to call `{function}` of plugin `{plugin}` ({world}): it ran past its deadline of {deadline:?}"
    )]
    DeadlineExceeded {
        plugin: String,
        world: &'static str,
        function: &'static str,
        deadline: Duration,
    },
    #[error(
        "failed to call `{function}` of plugin `{plugin}` ({world}): it exceeded its memory cap of {limit_bytes} bytes"
    )]
    MemoryExceeded {
        plugin: String,
        world: &'static str,
        function: &'static str,
        limit_bytes: u64,
    },
    /// The plugin returned a value the host refuses to act on.
    #[error(
        "failed to use the result of `{function}` of plugin `{plugin}` ({world}): invalid `{field}`: {reason}"
    )]
    InvalidOutput {
        plugin: String,
        world: &'static str,
        function: &'static str,
        field: String,
        reason: String,
    },
    /// A new instance could not be created for a reason other than the guest's own code
    /// (linking, the engine's instance pool).
    #[error("failed to create an instance of plugin `{plugin}` ({world}): {reason}")]
    Instantiate {
        plugin: String,
        world: &'static str,
        reason: String,
    },
}

impl CallError {
    /// The kind of failure, as the `kind` label of `cellet_plugin_errors_total`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::Plugin { .. } => ErrorKind::Plugin,
            CallError::Trapped { .. } => ErrorKind::Trap,
            CallError::DeadlineExceeded { .. } => ErrorKind::Deadline,
            CallError::MemoryExceeded { .. } => ErrorKind::Memory,
            CallError::InvalidOutput { .. } => ErrorKind::InvalidOutput,
            CallError::Instantiate { .. } => ErrorKind::Instantiate,
        }
    }
}

/// One call into a guest: lease an instance, call with the deadline armed, settle.
/// A macro rather than a function taking a closure because the call borrows both the
/// lease's store and the caller's arguments, which a closure returning a future cannot
/// express while staying `Send`.
macro_rules! guest_call {
    ($pool:expr, $function:expr, |$guest:ident, $store:ident| $call:expr) => {{
        let pool = &$pool;
        let mut lease = pool.lease($function).await?;
        let ($guest, $store) = lease.begin();
        let outcome = pool.within_deadline($call).await;
        lease.finish($function, outcome)
    }};
}

/// One call into a 0.2.0 guest that borrows host resources: lend them (`$lend`, a list of
/// `name = value` put in the instance's resource table), call with their borrows, take
/// them back, settle. On a trap the resources are taken back too; on a deadline in a host
/// function or a cancelled call the instance, its table and what was lent are dropped
/// together.
macro_rules! lending_call {
    ($pool:expr, $function:expr, [$($name:ident = $value:expr),+], |$guest:ident, $store:ident| $call:expr) => {{
        let pool = &$pool;
        let mut lease = pool.lease($function).await?;
        let ($guest, $store) = lease.begin();
        let outcome = pool
            .within_deadline(async {
                $(let $name = Lent::new($store.data_mut().table(), $value)?;)+
                let result = $call.await;
                $($name.end($store.data_mut().table());)+
                result
            })
            .await;
        lease.finish($function, outcome)
    }};
}

/// A plugin's instance pool, typed by the contract version the plugin was built for.
pub(crate) enum Versioned<A: Guest, B: Guest> {
    V0_1_0(Arc<Pool<A>>),
    V0_2_0(Arc<Pool<B>>),
}

impl<A: Guest, B: Guest> Clone for Versioned<A, B> {
    fn clone(&self) -> Self {
        match self {
            Versioned::V0_1_0(pool) => Versioned::V0_1_0(pool.clone()),
            Versioned::V0_2_0(pool) => Versioned::V0_2_0(pool.clone()),
        }
    }
}

impl<A: Guest, B: Guest> Versioned<A, B> {
    fn plugin(&self) -> &str {
        match self {
            Versioned::V0_1_0(pool) => pool.plugin(),
            Versioned::V0_2_0(pool) => pool.plugin(),
        }
    }

    fn slot(&self) -> Slot {
        match self {
            Versioned::V0_1_0(pool) => pool.slot(),
            Versioned::V0_2_0(pool) => pool.slot(),
        }
    }

    fn discard_idle(&self) -> usize {
        match self {
            Versioned::V0_1_0(pool) => pool.discard_idle(),
            Versioned::V0_2_0(pool) => pool.discard_idle(),
        }
    }
}

/// What one node needs from the VPC, validated: `network.plan-node` of contract 0.2.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub routes: Vec<CloudRoute>,
    pub warnings: Vec<String>,
}

/// What a strategy says about the cluster as a whole, validated: `network.plan-routes` of
/// contract 0.2.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesPlan {
    pub manage_routes: bool,
    pub warnings: Vec<String>,
}

/// The node plans of the last cluster pass, each with the node it was planned for, in name
/// order (one per name): reused while the node is unchanged (`plan-node` depends on the
/// node and the config alone, by contract). Kept sorted rather than hashed: a pass walks
/// it beside the nodes sorted by name, which finds what changed without hashing a name,
/// and updates it in place.
type NodePlans = Vec<(ClusterNode, NodePlan)>;

/// A loaded `network-strategy` plugin.
#[derive(Clone)]
pub struct NetworkPlugin {
    pools: Versioned<v0_1_0::NetworkStrategy, v0_2_0::NetworkStrategy>,
    node_plans: Arc<Mutex<NodePlans>>,
}

impl NetworkPlugin {
    pub(crate) fn new(pools: Versioned<v0_1_0::NetworkStrategy, v0_2_0::NetworkStrategy>) -> Self {
        NetworkPlugin {
            pools,
            node_plans: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        self.pools.plugin()
    }

    /// `plan-pod`: the network of one pod, validated.
    pub async fn plan_pod(&self, pod: &Pod) -> Result<PodNetworkPlan, CallError> {
        const F: &str = "plan-pod";
        match &self.pools {
            Versioned::V0_1_0(pool) => {
                let plan = guest_call!(pool, F, |guest, store| guest
                    .cellet_plugin_network()
                    .call_plan_pod(store, pod))?;
                validate::pod_network_plan(&plan).map_err(|v| pool.invalid(F, v))?;
                Ok(plan)
            }
            Versioned::V0_2_0(pool) => {
                let plan =
                    lending_call!(pool, F, [lent = PodResource::new(pod)], |guest, store| {
                        guest
                            .cellet_plugin0_2_0_network()
                            .call_plan_pod(&mut *store, lent.borrow())
                    })?;
                let plan = adapt::pod_network_plan(plan);
                validate::pod_network_plan(&plan).map_err(|v| pool.invalid(F, v))?;
                Ok(plan)
            }
        }
    }

    /// `plan-cluster`: the VPC routes for the whole cluster, validated.
    ///
    /// A 0.1.0 plugin plans every node in one call. A 0.2.0 plugin plans node by node
    /// (`plan-node`, only for nodes that are new or changed since the last pass), then the
    /// totals (`plan-routes`); the host takes the nodes in name order and keeps the first
    /// route for each destination, warning about a later node that claims it again.
    pub async fn plan_cluster(
        &self,
        nodes: &[ClusterNode],
    ) -> Result<ClusterNetworkPlan, CallError> {
        const F: &str = "plan-cluster";
        let pool = match &self.pools {
            Versioned::V0_1_0(pool) => {
                let plan = guest_call!(pool, F, |guest, store| guest
                    .cellet_plugin_network()
                    .call_plan_cluster(store, nodes))?;
                validate::cluster_network_plan(&plan).map_err(|v| pool.invalid(F, v))?;
                return Ok(plan);
            }
            Versioned::V0_2_0(pool) => pool,
        };

        // The kept plans and the nodes are both in name order, so one walk finds the
        // nodes that are new or changed; the plans are updated in place.
        let mut order: Vec<&ClusterNode> = nodes.iter().collect();
        order.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        order.dedup_by(|a, b| a.name == b.name);
        let mut plans =
            std::mem::take(&mut *self.node_plans.lock().unwrap_or_else(|e| e.into_inner()));
        let same_nodes = plans.len() == order.len()
            && plans
                .iter()
                .zip(&order)
                .all(|((known, _), node)| known.name == node.name);
        if !same_nodes {
            // A node joined or left: forget the plans of the nodes gone.
            plans.retain(|(known, _)| {
                order
                    .binary_search_by(|node| node.name.as_str().cmp(&known.name))
                    .is_ok()
            });
        }
        for (at, &node) in order.iter().enumerate() {
            let known = plans.get(at).filter(|(known, _)| known.name == node.name);
            if known.is_some_and(|(known, _)| known == node) {
                continue;
            }
            let is_new = known.is_none();
            match self.plan_node_v0_2_0(pool, node).await {
                Ok(plan) if is_new => plans.insert(at, (node.clone(), plan)),
                Ok(plan) => plans[at] = (node.clone(), plan),
                Err(error) => {
                    // What was planned stays valid for the next pass (a node whose plan
                    // is stale differs from it, so it is planned again).
                    *self.node_plans.lock().unwrap_or_else(|e| e.into_inner()) = plans;
                    return Err(error);
                }
            }
        }

        let mut routes: Vec<CloudRoute> = Vec::with_capacity(order.len());
        let mut warnings = Vec::new();
        let mut owners: HashMap<&str, &str> = HashMap::with_capacity(order.len());
        for (node, plan) in &plans {
            let name = node.name.as_str();
            warnings.extend(plan.warnings.iter().cloned());
            for route in &plan.routes {
                match owners.get(route.destination.as_str()) {
                    Some(owner) => warnings.push(format!(
                        "node {name} claims {}, already routed to node {owner}: skipped",
                        route.destination
                    )),
                    None => {
                        owners.insert(&route.destination, name);
                        routes.push(route.clone());
                    }
                }
            }
        }
        let node_count = u32::try_from(order.len()).unwrap_or(u32::MAX);
        let route_count = u32::try_from(routes.len()).unwrap_or(u32::MAX);
        drop(owners);
        *self.node_plans.lock().unwrap_or_else(|e| e.into_inner()) = plans;

        let summary = self
            .plan_routes_v0_2_0(pool, node_count, route_count)
            .await?;
        warnings.extend(summary.warnings);
        Ok(ClusterNetworkPlan {
            routes,
            manage_routes: summary.manage_routes,
            warnings,
        })
    }

    /// `plan-routes` of a 0.2.0 plugin, validated: what the strategy says about a cluster
    /// of `nodes` nodes whose plans hold `routes` routes. `None` for a 0.1.0 plugin, whose
    /// contract decides that inside `plan-cluster`. `plan_cluster` calls it at the end of
    /// each pass; `cellet-bench` times it alone.
    pub async fn plan_routes(
        &self,
        nodes: u32,
        routes: u32,
    ) -> Result<Option<RoutesPlan>, CallError> {
        match &self.pools {
            Versioned::V0_1_0(_) => Ok(None),
            Versioned::V0_2_0(pool) => self.plan_routes_v0_2_0(pool, nodes, routes).await.map(Some),
        }
    }

    /// What one node needs from the VPC, validated, without the host's reuse of earlier
    /// answers: `plan-node` of a 0.2.0 plugin, or `plan-cluster` of that node alone for a
    /// 0.1.0 one. `cellet-bench` times it; `plan_cluster` is what the host calls.
    pub async fn plan_node(&self, node: &ClusterNode) -> Result<NodePlan, CallError> {
        match &self.pools {
            Versioned::V0_1_0(_) => {
                let plan = self.plan_cluster(std::slice::from_ref(node)).await?;
                Ok(NodePlan {
                    routes: plan.routes,
                    warnings: plan.warnings,
                })
            }
            Versioned::V0_2_0(pool) => self.plan_node_v0_2_0(pool, node).await,
        }
    }

    /// Forget the node plans of the last `plan_cluster`, so the next one plans every node
    /// again. `cellet-bench` uses it to time a first pass.
    pub fn forget_node_plans(&self) {
        self.node_plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn plan_node_v0_2_0(
        &self,
        pool: &Pool<v0_2_0::NetworkStrategy>,
        node: &ClusterNode,
    ) -> Result<NodePlan, CallError> {
        const F: &str = "plan-node";
        let wit_node = adapt::cluster_node(node);
        let plan = guest_call!(pool, F, |guest, store| guest
            .cellet_plugin0_2_0_network()
            .call_plan_node(store, &wit_node))?;
        validate::node_plan(&plan.routes, &plan.warnings).map_err(|v| pool.invalid(F, v))?;
        Ok(NodePlan {
            routes: plan.routes,
            warnings: plan.warnings,
        })
    }

    async fn plan_routes_v0_2_0(
        &self,
        pool: &Pool<v0_2_0::NetworkStrategy>,
        nodes: u32,
        routes: u32,
    ) -> Result<RoutesPlan, CallError> {
        const F: &str = "plan-routes";
        let plan = guest_call!(pool, F, |guest, store| guest
            .cellet_plugin0_2_0_network()
            .call_plan_routes(store, nodes, routes))?;
        validate::warnings(&plan.warnings).map_err(|v| pool.invalid(F, v))?;
        Ok(RoutesPlan {
            manage_routes: plan.manage_routes,
            warnings: plan.warnings,
        })
    }
}

/// A loaded `hostport-policy` plugin.
#[derive(Clone)]
pub struct HostportPlugin(pub(crate) Versioned<v0_1_0::HostportPolicy, v0_2_0::HostportPolicy>);

impl HostportPlugin {
    pub fn name(&self) -> &str {
        self.0.plugin()
    }

    /// `admit`: the policy's answer for `pod`'s ports given `existing`, the mappings of the
    /// other pods on the node. Admitted mappings all belong to `pod` and to ports it
    /// declares.
    ///
    /// `existing` may be borrowed or handed over: a 0.2.0 policy is lent a compact copy of
    /// it (`plugins::resources`), a 0.1.0 policy receives it as a list.
    pub async fn admit(
        &self,
        pod: &Pod,
        existing: impl AsRef<[PortMapping]> + Send,
    ) -> Result<Admission, CallError> {
        let existing = existing.as_ref();
        const F: &str = "admit";
        match &self.0 {
            Versioned::V0_1_0(pool) => {
                let admission = guest_call!(pool, F, |guest, store| guest
                    .cellet_plugin_hostport()
                    .call_admit(store, pod, existing))?;
                validate::admission(pod, &admission).map_err(|v| pool.invalid(F, v))?;
                Ok(admission)
            }
            Versioned::V0_2_0(pool) => {
                let admission = lending_call!(
                    pool,
                    F,
                    [
                        lent_pod = PodResource::new(pod),
                        lent_mappings = NodeMappings::new(existing)
                    ],
                    |guest, store| guest.cellet_plugin0_2_0_hostport().call_admit(
                        &mut *store,
                        lent_pod.borrow(),
                        lent_mappings.borrow()
                    )
                )?;
                let admission = adapt::admission(admission);
                validate::admission(pod, &admission).map_err(|v| pool.invalid(F, v))?;
                Ok(admission)
            }
        }
    }
}

/// A loaded `cloud-provider` plugin.
#[derive(Clone)]
pub struct CloudPlugin(pub(crate) Versioned<v0_1_0::CloudProvider, v0_2_0::CloudProvider>);

/// Call `$method` of the cloud interface of either contract version, with the same
/// arguments, and turn a 0.2.0 answer into the host's type with `$adapt`.
macro_rules! cloud_call {
    ($plugin:expr, $function:expr, $adapt:expr, |$iface:ident, $store:ident| $call:expr) => {
        match &$plugin.0 {
            Versioned::V0_1_0(pool) => {
                let value = guest_call!(pool, $function, |guest, $store| {
                    let $iface = guest.cellet_plugin_cloud();
                    $call
                })?;
                (value, CloudPool::V0_1_0(pool))
            }
            Versioned::V0_2_0(pool) => {
                let value = guest_call!(pool, $function, |guest, $store| {
                    let $iface = guest.cellet_plugin0_2_0_cloud();
                    $call
                })?;
                ($adapt(value), CloudPool::V0_2_0(pool))
            }
        }
    };
}

/// The pool a cloud call went to, to report an invalid answer against.
enum CloudPool<'a> {
    V0_1_0(&'a Pool<v0_1_0::CloudProvider>),
    V0_2_0(&'a Pool<v0_2_0::CloudProvider>),
}

impl CloudPool<'_> {
    fn invalid(&self, function: &'static str, violation: validate::Violation) -> CallError {
        match self {
            CloudPool::V0_1_0(pool) => pool.invalid(function, violation),
            CloudPool::V0_2_0(pool) => pool.invalid(function, violation),
        }
    }
}

impl CloudPlugin {
    pub fn name(&self) -> &str {
        self.0.plugin()
    }

    pub async fn node_capacity(&self) -> Result<NodeResources, CallError> {
        const F: &str = "node-capacity";
        let (capacity, pool) = cloud_call!(self, F, adapt::node_resources, |cloud, store| cloud
            .call_node_capacity(store));
        validate::node_capacity(&capacity).map_err(|v| pool.invalid(F, v))?;
        Ok(capacity)
    }

    /// `create-cell`; the cell returned runs `request.pod`.
    pub async fn create_cell(&self, request: &CellRequest) -> Result<Cell, CallError> {
        const F: &str = "create-cell";
        let (cell, pool) = match &self.0 {
            Versioned::V0_1_0(pool) => {
                let cell = guest_call!(pool, F, |guest, store| guest
                    .cellet_plugin_cloud()
                    .call_create_cell(store, request))?;
                (cell, CloudPool::V0_1_0(pool))
            }
            Versioned::V0_2_0(pool) => {
                let cell = lending_call!(
                    pool,
                    F,
                    [lent = PodResource::new(&request.pod)],
                    |guest, store| guest.cellet_plugin0_2_0_cloud().call_create_cell(
                        &mut *store,
                        &v0_2_0::cloud::CellRequest {
                            pod: lent.borrow(),
                            needs_pod_ip: request.needs_pod_ip,
                            user_data: request.user_data.clone(),
                            tags: request.tags.clone(),
                        }
                    )
                )?;
                (adapt::cell(cell), CloudPool::V0_2_0(pool))
            }
        };
        validate::cell("cell", &cell, Some(request.pod.uid.as_str()))
            .map_err(|v| pool.invalid(F, v))?;
        Ok(cell)
    }

    /// `get-cell`; a cell returned runs the pod with `pod_uid`.
    pub async fn get_cell(&self, pod_uid: &str) -> Result<Option<Cell>, CallError> {
        const F: &str = "get-cell";
        let (cell, pool) = cloud_call!(
            self,
            F,
            |cell: Option<v0_2_0::cloud::Cell>| cell.map(adapt::cell),
            |cloud, store| cloud.call_get_cell(store, pod_uid)
        );
        if let Some(cell) = &cell {
            validate::cell("cell", cell, Some(pod_uid)).map_err(|v| pool.invalid(F, v))?;
        }
        Ok(cell)
    }

    pub async fn list_cells(&self) -> Result<Vec<Cell>, CallError> {
        const F: &str = "list-cells";
        let (cells, pool) = cloud_call!(
            self,
            F,
            |cells: Vec<v0_2_0::cloud::Cell>| cells
                .into_iter()
                .map(adapt::cell)
                .collect::<Vec<_>>(),
            |cloud, store| cloud.call_list_cells(store)
        );
        validate::cells(&cells).map_err(|v| pool.invalid(F, v))?;
        Ok(cells)
    }

    pub async fn delete_cell(&self, id: &str) -> Result<(), CallError> {
        cloud_call!(
            self,
            "delete-cell",
            std::convert::identity,
            |cloud, store| cloud.call_delete_cell(store, id)
        );
        Ok(())
    }

    pub async fn list_routes(&self) -> Result<Vec<CloudRoute>, CallError> {
        const F: &str = "list-routes";
        let (routes, pool) = cloud_call!(self, F, std::convert::identity, |cloud, store| cloud
            .call_list_routes(store));
        validate::cloud_routes(&routes).map_err(|v| pool.invalid(F, v))?;
        Ok(routes)
    }

    pub async fn ensure_route(&self, route: &CloudRoute) -> Result<(), CallError> {
        cloud_call!(
            self,
            "ensure-route",
            std::convert::identity,
            |cloud, store| cloud.call_ensure_route(store, route)
        );
        Ok(())
    }

    pub async fn remove_route(&self, destination: &str) -> Result<(), CallError> {
        cloud_call!(
            self,
            "remove-route",
            std::convert::identity,
            |cloud, store| cloud.call_remove_route(store, destination)
        );
        Ok(())
    }
}

/// A plugin loaded into its slot.
#[derive(Clone)]
pub enum PluginHandle {
    Cloud(CloudPlugin),
    Network(NetworkPlugin),
    Hostport(HostportPlugin),
}

impl PluginHandle {
    pub fn name(&self) -> &str {
        match self {
            PluginHandle::Cloud(p) => p.name(),
            PluginHandle::Network(p) => p.name(),
            PluginHandle::Hostport(p) => p.name(),
        }
    }

    pub fn slot(&self) -> Slot {
        match self {
            PluginHandle::Cloud(p) => p.0.slot(),
            PluginHandle::Network(p) => p.pools.slot(),
            PluginHandle::Hostport(p) => p.0.slot(),
        }
    }

    /// Drop the plugin's warm instances and free their memory; the next call instantiates
    /// and `init`s a fresh one. Returns how many were dropped. Used by `cellet-bench` to
    /// time instance creation; a stateful plugin (the `mock` cloud) forgets its state.
    pub fn discard_idle_instances(&self) -> usize {
        match self {
            PluginHandle::Cloud(p) => p.0.discard_idle(),
            PluginHandle::Network(p) => p.pools.discard_idle(),
            PluginHandle::Hostport(p) => p.0.discard_idle(),
        }
    }
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", self.slot().world(), self.name())
    }
}
