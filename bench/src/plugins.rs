//! The plugins under measurement: their config, the functions measured, and the two ways
//! of calling them — the component through the host runtime's typed handles, and the
//! plugin crate's own trait impl called directly (the native baseline).
//!
//! Both ways reduce their answer to a [`Decision`], a short description compared before
//! anything is timed: a benchmark of two paths that decide differently would be
//! measuring two different things.

use std::fmt;
use std::sync::atomic::Ordering;

use cellet::plugins::bindings as host;
use cellet::plugins::{
    CallError, CloudPlugin, HostportPlugin, NetworkPlugin, NodePlan, PluginHandle, RoutesPlan, Slot,
};
use cellet_plugin_cloud_routes::CloudRoutes;
use cellet_plugin_hostport_nat::HostportNat;
use cellet_plugin_hostport_restricted::HostportRestricted;
use cellet_plugin_mock::Mock as MockCloud;
use cellet_plugin_vpc_native::VpcNative;
use cellet_sdk::cloud::CloudProvider;
use cellet_sdk::hostport::{HostportPolicy, NodeMappings};
use cellet_sdk::network::NetworkStrategy;
use cellet_sdk::testing::{ClusterPlan, cell_request, plan_cluster};
use cellet_sdk::{InitContext, PluginError};
use serde::Serialize;
use serde_json::json;

use crate::inputs::{HostInputs, NativeInputs};

/// A shipped plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plugin {
    VpcNative,
    CloudRoutes,
    HostportNat,
    HostportRestricted,
    Mock,
}

impl Plugin {
    pub const ALL: [Plugin; 5] = [
        Plugin::VpcNative,
        Plugin::CloudRoutes,
        Plugin::HostportNat,
        Plugin::HostportRestricted,
        Plugin::Mock,
    ];

    /// The plugin's name, as in the docs and the config.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::VpcNative => "vpc-native",
            Plugin::CloudRoutes => "cloud-routes",
            Plugin::HostportNat => "hostport-nat",
            Plugin::HostportRestricted => "hostport-restricted",
            Plugin::Mock => "mock",
        }
    }

    /// The component's file name in the plugin directory (`scripts/build-plugins`).
    pub fn component_file(self) -> String {
        format!("cellet_plugin_{}.wasm", self.name().replace('-', "_"))
    }

    pub fn slot(self) -> Slot {
        match self {
            Plugin::VpcNative | Plugin::CloudRoutes => Slot::Network,
            Plugin::HostportNat | Plugin::HostportRestricted => Slot::Hostport,
            Plugin::Mock => Slot::Cloud,
        }
    }

    /// A production-like `config:` section, the same for both ways of calling.
    pub fn config(self) -> serde_json::Value {
        match self {
            Plugin::VpcNative => json!({
                "vpc-cidrs": ["10.0.0.0/16"],
                "cluster-cidrs": ["100.64.0.0/16"],
                "mtu": 9001,
            }),
            // 50 routes against a quota raised to 100, so the plan is not refused.
            Plugin::CloudRoutes => json!({
                "vpc-cidrs": ["10.0.0.0/16"],
                "cluster-cidrs": ["10.244.0.0/16"],
                "manage-routes": true,
                "route-table-limit": 100,
            }),
            Plugin::HostportNat | Plugin::Mock => json!({}),
            // Every rule is evaluated for each of the pod's hostPorts, and all pass.
            Plugin::HostportRestricted => json!({
                "allowed-ports": ["8000-8999", "15000-15999", "24224-24225", "30000-32767"],
                "namespaces": ["shop", "ingress", "monitoring"],
                "allow-privileged": false,
            }),
        }
    }

    /// The functions measured, each with the realistic input of [`crate::inputs`].
    pub fn functions(self) -> &'static [Function] {
        match self.slot() {
            Slot::Network => &[
                Function::PlanPod,
                Function::PlanNode,
                Function::PlanRoutes,
                Function::PlanCluster,
                Function::PlanClusterCold,
            ],
            Slot::Hostport => &[Function::Admit],
            Slot::Cloud => &[Function::CreateCell],
        }
    }
}

impl fmt::Display for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A measured export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    PlanPod,
    /// `plan-node` of one node: the call a node change costs.
    PlanNode,
    /// `plan-routes` over the totals of the cluster's node plans: the call that ends every
    /// cluster pass.
    PlanRoutes,
    /// The host's whole-cluster pass (`NetworkPlugin::plan_cluster`) with one node changed
    /// since the last pass: `plan-node` of that node, the 49 others' plans reused, then
    /// `plan-routes`. The native column plans all 50 nodes (`testing::plan_cluster`).
    PlanCluster,
    /// The same pass with no plan kept (the first pass after a start): `plan-node` for
    /// each of the 50 nodes, then `plan-routes`.
    PlanClusterCold,
    Admit,
    CreateCell,
}

impl Function {
    /// The name in WIT, or of the host's pass.
    pub fn name(self) -> &'static str {
        match self {
            Function::PlanPod => "plan-pod",
            Function::PlanNode => "plan-node",
            Function::PlanRoutes => "plan-routes",
            Function::PlanCluster => "plan-cluster",
            Function::PlanClusterCold => "plan-cluster (cold)",
            Function::Admit => "admit",
            Function::CreateCell => "create-cell",
        }
    }

    /// How many plugin calls one measure is. The targets are per call, so they are
    /// checked only on measures of a call or two; the cold cluster pass is 51 calls, each
    /// also measured alone (`plan-node`, `plan-routes`), and is reported with its cost per
    /// call and no target of its own.
    pub fn plugin_calls(self) -> usize {
        match self {
            Function::PlanCluster => 2,
            Function::PlanClusterCold => crate::inputs::NODES + 1,
            _ => 1,
        }
    }

    /// What the function is given, for the report.
    pub fn input(self) -> &'static str {
        match self {
            Function::PlanPod => "the pod",
            Function::PlanNode => "one node with a PodCIDR",
            Function::PlanRoutes => "the totals of 50 nodes holding 50 routes",
            Function::PlanCluster => {
                "50 nodes with PodCIDRs, one changed since the last pass (host pass: 1 plan-node + plan-routes)"
            }
            Function::PlanClusterCold => {
                "50 nodes with PodCIDRs, none planned before (host pass: 50 plan-node + plan-routes)"
            }
            Function::Admit => "the pod + 100 existing mappings",
            Function::CreateCell => "a cell request for the pod",
        }
    }
}

impl Serialize for Function {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Errors of either way of calling.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    #[error("failed to call `{function}` of the component: {source}")]
    Wasm {
        function: &'static str,
        #[source]
        source: CallError,
    },
    #[error("failed to `{function}` natively: the plugin answered {error:?}")]
    Native {
        function: &'static str,
        error: PluginError,
    },
    #[error("failed to call `{function}`: the {world} world has no such function")]
    NotInWorld {
        function: &'static str,
        world: &'static str,
    },
}

/// What a call decided, reduced to the facts both type families share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Decision(pub String);

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The plugin crate's own value, built by its trait's `init`.
pub enum Native {
    VpcNative(VpcNative),
    CloudRoutes(CloudRoutes),
    HostportNat(HostportNat),
    HostportRestricted(HostportRestricted),
    Mock(MockCloud),
}

/// The raw answer of a native call, kept whole so that reducing it to a [`Decision`]
/// happens outside the timed region.
pub enum NativeOutput {
    PodPlan(cellet_sdk::network::PodNetworkPlan),
    NodePlan(cellet_sdk::network::NodePlan),
    RoutesPlan(cellet_sdk::network::RoutesPlan),
    ClusterPlan(ClusterPlan),
    Admission(cellet_sdk::hostport::Admission),
    Cell(cellet_sdk::cloud::Cell),
}

impl Native {
    /// `init` of the plugin's trait, as the export glue would call it.
    pub fn init(plugin: Plugin, context: InitContext) -> Result<Self, CallFailure> {
        let failed = |error| CallFailure::Native {
            function: "init",
            error,
        };
        Ok(match plugin {
            Plugin::VpcNative => Native::VpcNative(VpcNative::init(context).map_err(failed)?),
            Plugin::CloudRoutes => Native::CloudRoutes(CloudRoutes::init(context).map_err(failed)?),
            Plugin::HostportNat => Native::HostportNat(HostportNat::init(context).map_err(failed)?),
            Plugin::HostportRestricted => {
                Native::HostportRestricted(HostportRestricted::init(context).map_err(failed)?)
            }
            Plugin::Mock => Native::Mock(MockCloud::init(context).map_err(failed)?),
        })
    }

    /// Call `function` with its input. The trait methods take their records by value (a
    /// pod as a view of the record), so the input is cloned on every call: the component
    /// call copies what it reads into the guest's memory too, and a baseline without the
    /// copy would flatter native code.
    pub fn call(
        &mut self,
        function: Function,
        inputs: &NativeInputs,
    ) -> Result<NativeOutput, CallFailure> {
        match self {
            Native::VpcNative(s) => network(s, function, inputs),
            Native::CloudRoutes(s) => network(s, function, inputs),
            Native::HostportNat(p) => hostport(p, function, inputs),
            Native::HostportRestricted(p) => hostport(p, function, inputs),
            Native::Mock(c) => match function {
                Function::CreateCell => c
                    .create_cell(cell_request(&inputs.pod))
                    .map(NativeOutput::Cell)
                    .map_err(native_failed(function)),
                _ => Err(not_in_world(function, Slot::Cloud)),
            },
        }
    }
}

fn network<S: NetworkStrategy>(
    strategy: &S,
    function: Function,
    inputs: &NativeInputs,
) -> Result<NativeOutput, CallFailure> {
    match function {
        Function::PlanPod => strategy
            .plan_pod(inputs.pod.view())
            .map(NativeOutput::PodPlan)
            .map_err(native_failed(function)),
        Function::PlanNode => strategy
            .plan_node(inputs.nodes[0].clone())
            .map(NativeOutput::NodePlan)
            .map_err(native_failed(function)),
        Function::PlanRoutes => strategy
            .plan_routes(ROUTES_INPUT.0, ROUTES_INPUT.1)
            .map(NativeOutput::RoutesPlan)
            .map_err(native_failed(function)),
        Function::PlanCluster | Function::PlanClusterCold => {
            plan_cluster(strategy, inputs.nodes.clone())
                .map(NativeOutput::ClusterPlan)
                .map_err(native_failed(function))
        }
        _ => Err(not_in_world(function, Slot::Network)),
    }
}

/// What `plan-routes` is asked: 50 nodes whose plans hold 50 routes, the totals of the
/// cluster pass of `cloud-routes` on the benchmark's nodes.
const ROUTES_INPUT: (u32, u32) = (50, 50);

fn hostport<P: HostportPolicy>(
    policy: &P,
    function: Function,
    inputs: &NativeInputs,
) -> Result<NativeOutput, CallFailure> {
    match function {
        Function::Admit => policy
            .admit(inputs.pod.view(), NodeMappings::list(&inputs.existing))
            .map(NativeOutput::Admission)
            .map_err(native_failed(function)),
        _ => Err(not_in_world(function, Slot::Hostport)),
    }
}

fn native_failed(function: Function) -> impl Fn(PluginError) -> CallFailure {
    move |error| CallFailure::Native {
        function: function.name(),
        error,
    }
}

fn not_in_world(function: Function, slot: Slot) -> CallFailure {
    CallFailure::NotInWorld {
        function: function.name(),
        world: slot.world(),
    }
}

impl NativeOutput {
    pub fn decision(&self) -> Decision {
        use cellet_sdk::cloud::CellState;
        use cellet_sdk::hostport::Admission;
        use cellet_sdk::network::PodAddressSource;
        Decision(match self {
            NativeOutput::PodPlan(plan) => pod_plan(
                match plan.address_source {
                    PodAddressSource::VpcSecondary => "vpc-secondary",
                    PodAddressSource::HostNetwork => "host-network",
                },
                plan.routes.iter().map(|r| r.destination.as_str()),
                &plan.no_masquerade,
                plan.mtu,
            ),
            NativeOutput::NodePlan(plan) => node_plan(
                plan.routes.iter().map(|r| r.destination.as_str()),
                plan.warnings.len(),
            ),
            NativeOutput::RoutesPlan(plan) => routes_plan(plan.manage_routes, plan.warnings.len()),
            NativeOutput::ClusterPlan(plan) => cluster_plan(
                plan.routes.iter().map(|r| r.destination.as_str()),
                plan.manage_routes,
                plan.warnings.len(),
            ),
            NativeOutput::Admission(Admission::Admit(mappings)) => {
                admitted(mappings.iter().map(|m| (m.host_port, m.container_port)))
            }
            NativeOutput::Admission(Admission::Deny(reason)) => format!("deny: {reason}"),
            NativeOutput::Cell(cell) => cell_decision(
                &cell.pod_uid,
                match cell.state {
                    CellState::Pending => "pending",
                    CellState::Running => "running",
                    CellState::Stopping => "stopping",
                    CellState::Terminated => "terminated",
                },
                cell.pod_ip.is_some(),
            ),
        })
    }
}

/// A loaded component, through the host runtime's typed handles.
#[derive(Clone)]
pub enum Wasm {
    Network(NetworkPlugin),
    Hostport(HostportPlugin),
    Cloud(CloudPlugin),
}

/// The raw answer of a component call (already validated by the host).
pub enum WasmOutput {
    PodPlan(host::PodNetworkPlan),
    NodePlan(NodePlan),
    RoutesPlan(RoutesPlan),
    ClusterPlan(host::ClusterNetworkPlan),
    Admission(host::Admission),
    Cell(host::Cell),
}

impl Wasm {
    pub fn new(handle: PluginHandle) -> Self {
        match handle {
            PluginHandle::Network(p) => Wasm::Network(p),
            PluginHandle::Hostport(p) => Wasm::Hostport(p),
            PluginHandle::Cloud(p) => Wasm::Cloud(p),
        }
    }

    /// Call `function` through the handle: lease an instance (creating it if none is
    /// warm), lend or lower the input, run the guest, lift and validate the answer.
    pub async fn call(
        &self,
        function: Function,
        inputs: &HostInputs,
    ) -> Result<WasmOutput, CallFailure> {
        let failed = |source| CallFailure::Wasm {
            function: function.name(),
            source,
        };
        match (self, function) {
            (Wasm::Network(p), Function::PlanPod) => p
                .plan_pod(&inputs.pod)
                .await
                .map(WasmOutput::PodPlan)
                .map_err(failed),
            (Wasm::Network(p), Function::PlanNode) => p
                .plan_node(&inputs.nodes[0])
                .await
                .map(WasmOutput::NodePlan)
                .map_err(failed),
            (Wasm::Network(p), Function::PlanRoutes) => match p
                .plan_routes(ROUTES_INPUT.0, ROUTES_INPUT.1)
                .await
                .map_err(failed)?
            {
                Some(plan) => Ok(WasmOutput::RoutesPlan(plan)),
                None => Err(not_in_world(function, Slot::Network)),
            },
            (Wasm::Network(p), Function::PlanCluster) => {
                let nodes = if inputs
                    .passes
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(2)
                {
                    &inputs.nodes
                } else {
                    &inputs.nodes_one_changed
                };
                p.plan_cluster(nodes)
                    .await
                    .map(WasmOutput::ClusterPlan)
                    .map_err(failed)
            }
            (Wasm::Network(p), Function::PlanClusterCold) => {
                p.forget_node_plans();
                p.plan_cluster(&inputs.nodes)
                    .await
                    .map(WasmOutput::ClusterPlan)
                    .map_err(failed)
            }
            (Wasm::Hostport(p), Function::Admit) => p
                .admit(&inputs.pod, &inputs.existing)
                .await
                .map(WasmOutput::Admission)
                .map_err(failed),
            (Wasm::Cloud(p), Function::CreateCell) => p
                .create_cell(&inputs.cell_request)
                .await
                .map(WasmOutput::Cell)
                .map_err(failed),
            (Wasm::Network(_), _) => Err(not_in_world(function, Slot::Network)),
            (Wasm::Hostport(_), _) => Err(not_in_world(function, Slot::Hostport)),
            (Wasm::Cloud(_), _) => Err(not_in_world(function, Slot::Cloud)),
        }
    }
}

impl WasmOutput {
    pub fn decision(&self) -> Decision {
        Decision(match self {
            WasmOutput::PodPlan(plan) => pod_plan(
                match plan.address_source {
                    host::PodAddressSource::VpcSecondary => "vpc-secondary",
                    host::PodAddressSource::HostNetwork => "host-network",
                },
                plan.routes.iter().map(|r| r.destination.as_str()),
                &plan.no_masquerade,
                plan.mtu,
            ),
            WasmOutput::NodePlan(plan) => node_plan(
                plan.routes.iter().map(|r| r.destination.as_str()),
                plan.warnings.len(),
            ),
            WasmOutput::RoutesPlan(plan) => routes_plan(plan.manage_routes, plan.warnings.len()),
            WasmOutput::ClusterPlan(plan) => cluster_plan(
                plan.routes.iter().map(|r| r.destination.as_str()),
                plan.manage_routes,
                plan.warnings.len(),
            ),
            WasmOutput::Admission(host::Admission::Admit(mappings)) => {
                admitted(mappings.iter().map(|m| (m.host_port, m.container_port)))
            }
            WasmOutput::Admission(host::Admission::Deny(reason)) => format!("deny: {reason}"),
            WasmOutput::Cell(cell) => cell_decision(
                &cell.pod_uid,
                match cell.state {
                    host::CellState::Pending => "pending",
                    host::CellState::Running => "running",
                    host::CellState::Stopping => "stopping",
                    host::CellState::Terminated => "terminated",
                },
                cell.pod_ip.is_some(),
            ),
        })
    }
}

fn pod_plan<'a>(
    source: &str,
    routes: impl Iterator<Item = &'a str>,
    no_masquerade: &[String],
    mtu: Option<u16>,
) -> String {
    let routes: Vec<&str> = routes.collect();
    let mtu = mtu.map_or_else(|| "inherited".to_string(), |m| m.to_string());
    format!(
        "{source}, routes [{}], no-masquerade [{}], mtu {mtu}",
        routes.join(", "),
        no_masquerade.join(", ")
    )
}

fn cluster_plan<'a>(
    routes: impl Iterator<Item = &'a str>,
    manage: bool,
    warnings: usize,
) -> String {
    let routes: Vec<&str> = routes.collect();
    let span = match (routes.first(), routes.last()) {
        (Some(first), Some(last)) => format!(" ({first} … {last})"),
        _ => String::new(),
    };
    format!(
        "{} routes{span}, manage-routes {manage}, {warnings} warnings",
        routes.len()
    )
}

fn routes_plan(manage: bool, warnings: usize) -> String {
    format!("manage-routes {manage}, {warnings} warnings")
}

fn node_plan<'a>(routes: impl Iterator<Item = &'a str>, warnings: usize) -> String {
    let routes: Vec<&str> = routes.collect();
    format!("routes [{}], {warnings} warnings", routes.join(", "))
}

fn admitted(mappings: impl Iterator<Item = (u16, u16)>) -> String {
    let mappings: Vec<String> = mappings
        .map(|(host, container)| format!("{host}→{container}"))
        .collect();
    format!("admit [{}]", mappings.join(", "))
}

fn cell_decision(pod_uid: &str, state: &str, pod_ip: bool) -> String {
    format!(
        "cell for pod {pod_uid}, {state}, {}",
        if pod_ip {
            "with a pod IP"
        } else {
            "without a pod IP"
        }
    )
}
