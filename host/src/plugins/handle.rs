//! Typed handles on loaded plugins: what the rest of the host calls.
//!
//! Each handle is an `Arc` on its plugin's instance pool: cheap to clone, `Send + Sync`,
//! usable from any task. Its async methods mirror the WIT exports and return
//! `Result<T, CallError>`, where `T` has passed the checks of [`validate`]; the
//! [`CallError`] says whether the plugin *answered* with its own error
//! ([`CallError::Plugin`], a WIT `plugin-error` the caller matches on) or *failed*
//! (trap, deadline, memory, invalid output), in which case the instance is gone.

use std::sync::Arc;
use std::time::Duration;

use crate::plugins::bindings::{
    Admission, Cell, CellRequest, CloudProvider, CloudRoute, ClusterNetworkPlan, ClusterNode,
    HostportPolicy, NetworkStrategy, NodeResources, PluginError, Pod, PodNetworkPlan, PortMapping,
};
use crate::plugins::metrics::ErrorKind;
use crate::plugins::pool::Pool;
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

/// A loaded `network-strategy` plugin.
#[derive(Clone)]
pub struct NetworkPlugin(pub(crate) Arc<Pool<NetworkStrategy>>);

impl NetworkPlugin {
    pub fn name(&self) -> &str {
        self.0.plugin()
    }

    /// `plan-pod`: the network of one pod, validated.
    pub async fn plan_pod(&self, pod: &Pod) -> Result<PodNetworkPlan, CallError> {
        const F: &str = "plan-pod";
        let plan = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_network()
            .call_plan_pod(store, pod))?;
        validate::pod_network_plan(&plan).map_err(|v| self.0.invalid(F, v))?;
        Ok(plan)
    }

    /// `plan-cluster`: the VPC routes for the whole cluster, validated.
    pub async fn plan_cluster(
        &self,
        nodes: &[ClusterNode],
    ) -> Result<ClusterNetworkPlan, CallError> {
        const F: &str = "plan-cluster";
        let plan = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_network()
            .call_plan_cluster(store, nodes))?;
        validate::cluster_network_plan(&plan).map_err(|v| self.0.invalid(F, v))?;
        Ok(plan)
    }
}

/// A loaded `hostport-policy` plugin.
#[derive(Clone)]
pub struct HostportPlugin(pub(crate) Arc<Pool<HostportPolicy>>);

impl HostportPlugin {
    pub fn name(&self) -> &str {
        self.0.plugin()
    }

    /// `admit`: the policy's answer for `pod`'s ports given the mappings of other pods.
    /// Admitted mappings all belong to `pod` and to ports it declares.
    pub async fn admit(&self, pod: &Pod, existing: &[PortMapping]) -> Result<Admission, CallError> {
        const F: &str = "admit";
        let admission = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_hostport()
            .call_admit(store, pod, existing))?;
        validate::admission(pod, &admission).map_err(|v| self.0.invalid(F, v))?;
        Ok(admission)
    }
}

/// A loaded `cloud-provider` plugin.
#[derive(Clone)]
pub struct CloudPlugin(pub(crate) Arc<Pool<CloudProvider>>);

impl CloudPlugin {
    pub fn name(&self) -> &str {
        self.0.plugin()
    }

    pub async fn node_capacity(&self) -> Result<NodeResources, CallError> {
        const F: &str = "node-capacity";
        let capacity = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_cloud()
            .call_node_capacity(store))?;
        validate::node_capacity(&capacity).map_err(|v| self.0.invalid(F, v))?;
        Ok(capacity)
    }

    /// `create-cell`; the cell returned runs `request.pod`.
    pub async fn create_cell(&self, request: &CellRequest) -> Result<Cell, CallError> {
        const F: &str = "create-cell";
        let cell = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_cloud()
            .call_create_cell(store, request))?;
        validate::cell("cell", &cell, Some(request.pod.uid.as_str()))
            .map_err(|v| self.0.invalid(F, v))?;
        Ok(cell)
    }

    /// `get-cell`; a cell returned runs the pod with `pod_uid`.
    pub async fn get_cell(&self, pod_uid: &str) -> Result<Option<Cell>, CallError> {
        const F: &str = "get-cell";
        let cell = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_cloud()
            .call_get_cell(store, pod_uid))?;
        if let Some(cell) = &cell {
            validate::cell("cell", cell, Some(pod_uid)).map_err(|v| self.0.invalid(F, v))?;
        }
        Ok(cell)
    }

    pub async fn list_cells(&self) -> Result<Vec<Cell>, CallError> {
        const F: &str = "list-cells";
        let cells = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_cloud()
            .call_list_cells(store))?;
        validate::cells(&cells).map_err(|v| self.0.invalid(F, v))?;
        Ok(cells)
    }

    pub async fn delete_cell(&self, id: &str) -> Result<(), CallError> {
        guest_call!(self.0, "delete-cell", |guest, store| guest
            .cellet_plugin_cloud()
            .call_delete_cell(store, id))
    }

    pub async fn list_routes(&self) -> Result<Vec<CloudRoute>, CallError> {
        const F: &str = "list-routes";
        let routes = guest_call!(self.0, F, |guest, store| guest
            .cellet_plugin_cloud()
            .call_list_routes(store))?;
        validate::cloud_routes(&routes).map_err(|v| self.0.invalid(F, v))?;
        Ok(routes)
    }

    pub async fn ensure_route(&self, route: &CloudRoute) -> Result<(), CallError> {
        guest_call!(self.0, "ensure-route", |guest, store| guest
            .cellet_plugin_cloud()
            .call_ensure_route(store, route))
    }

    pub async fn remove_route(&self, destination: &str) -> Result<(), CallError> {
        guest_call!(self.0, "remove-route", |guest, store| guest
            .cellet_plugin_cloud()
            .call_remove_route(store, destination))
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
            PluginHandle::Network(p) => p.0.slot(),
            PluginHandle::Hostport(p) => p.0.slot(),
        }
    }

    /// Drop the plugin's warm instances and free their memory; the next call instantiates
    /// and `init`s a fresh one. Returns how many were dropped. Used by `cellet-bench` to
    /// time instance creation; a stateful plugin (the `mock` cloud) forgets its state.
    pub fn discard_idle_instances(&self) -> usize {
        match self {
            PluginHandle::Cloud(p) => p.0.discard_idle(),
            PluginHandle::Network(p) => p.0.discard_idle(),
            PluginHandle::Hostport(p) => p.0.discard_idle(),
        }
    }
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", self.slot().world(), self.name())
    }
}
