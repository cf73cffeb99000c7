//! The host's cluster pass, for native tests of a strategy's `plan_node` and `plan_routes`.

use std::collections::HashMap;

use crate::network::{ClusterNode, NetworkStrategy};
use crate::types::{CloudRoute, PluginError};

/// What the host makes of a strategy's answers for a set of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub routes: Vec<CloudRoute>,
    pub manage_routes: bool,
    pub warnings: Vec<String>,
}

/// Plan `nodes` the way the host does: `plan_node` for each node in name order, the first
/// route for each destination kept (a later node claiming it is skipped with a warning
/// naming both nodes), then `plan_routes` over the totals, whose warnings come last.
pub fn plan_cluster<S: NetworkStrategy>(
    strategy: &S,
    mut nodes: Vec<ClusterNode>,
) -> Result<ClusterPlan, PluginError> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let node_count = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
    let mut routes: Vec<CloudRoute> = Vec::new();
    let mut warnings = Vec::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    for node in nodes {
        let name = node.name.clone();
        let plan = strategy.plan_node(node)?;
        warnings.extend(plan.warnings);
        for route in plan.routes {
            match owners.get(&route.destination) {
                Some(owner) => warnings.push(format!(
                    "node {name} claims {}, already routed to node {owner}: skipped",
                    route.destination
                )),
                None => {
                    owners.insert(route.destination.clone(), name.clone());
                    routes.push(route);
                }
            }
        }
    }
    let route_count = u32::try_from(routes.len()).unwrap_or(u32::MAX);
    let summary = strategy.plan_routes(node_count, route_count)?;
    warnings.extend(summary.warnings);
    Ok(ClusterPlan {
        routes,
        manage_routes: summary.manage_routes,
        warnings,
    })
}
