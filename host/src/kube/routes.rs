//! The cluster's cloud routes: the Nodes of the cluster in, the VPC's route table out.
//!
//! Layers: a `watcher` on every Node (re-lists and re-watches by itself, with backoff) →
//! a `reflector` store → [`control`], which turns the store into the strategy's
//! `cluster-node` records ([`convert::cluster_node`]), has the network strategy plan the
//! routes the cluster needs (`NetworkPlugin::plan_cluster`: under contract 0.2.0 one
//! `plan-node` call per node that is new or changed since the last pass, the other nodes'
//! plans reused, then `plan-routes` over the totals; a 0.1.0 strategy's one `plan-cluster`
//! call over every node), and reconciles the cloud plugin's routes to them with
//! `list-routes`, `ensure-route` and `remove-route`.
//!
//! The strategy is asked again when what it sees changes (a Node added or removed, a
//! PodCIDR allocated, an address changed), not on every Node heartbeat, and every
//! [`RESYNC`] in any case, so a route removed behind cellet's back comes back; a pass in
//! which no node changed costs the strategy one `plan-routes` call.
//!
//! **Which routes are cellet's.** The cloud plugin's `list-routes` reports the routes it
//! manages and no other (`local-cells`: the VPC router's routes of cellet's own protocol
//! number; `aws-ec2`: the configured table's routes to instances, never its gateways or
//! `local` route), so the reconcile removes the listed routes the plan does not want, and
//! never sees, let alone touches, anyone else's.
//!
//! With `manage-routes: false` the plan is only checked: missing or misdirected routes
//! are logged and counted, nothing is changed (a cloud controller's route controller owns
//! the table).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::convert;
use super::metrics::KubeMetrics;
use super::provider::{FailureKind, Plugins, failure_kind};
use crate::plugins::CallError;
use crate::plugins::bindings::{CloudRoute, ClusterNode, RouteTarget};

/// How long a burst of Node changes is let settle before the strategy is asked.
const SETTLE: Duration = Duration::from_millis(500);
/// The first wait after a failed reconcile; it doubles up to [`RESYNC`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How often the routes are reconciled when no Node changed (repairs drift in the cloud).
pub const RESYNC: Duration = Duration::from_secs(60);

/// What a reconcile changes in the route table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteChanges {
    /// Routes to create or re-point (also every wanted route to an instance, which the
    /// cloud may list by address: `ensure-route` is idempotent).
    pub ensure: Vec<CloudRoute>,
    /// Destinations of listed routes the plan does not want.
    pub remove: Vec<String>,
}

/// A destination as a network, so `10.244.1.0/24` listed by the cloud and planned by the
/// strategy compare equal however each spells it; unparsable text stays text.
fn network(destination: &str) -> Result<IpNet, String> {
    destination
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| destination.to_string())
}

/// The changes that make `present` (the cloud's listed routes) equal to `wanted`.
pub fn diff(wanted: &[CloudRoute], present: &[CloudRoute]) -> RouteChanges {
    let present_by_destination: BTreeMap<_, _> = present
        .iter()
        .map(|route| (network(&route.destination), route))
        .collect();
    let wanted_destinations: Vec<_> = wanted
        .iter()
        .map(|route| network(&route.destination))
        .collect();
    let ensure = wanted
        .iter()
        .zip(&wanted_destinations)
        .filter(|(route, destination)| {
            present_by_destination
                .get(*destination)
                .is_none_or(|listed| listed.target != route.target)
        })
        .map(|(route, _)| route.clone())
        .collect();
    let remove = present
        .iter()
        .filter(|route| !wanted_destinations.contains(&network(&route.destination)))
        .map(|route| route.destination.clone())
        .collect();
    RouteChanges { ensure, remove }
}

fn target_text(target: &RouteTarget) -> String {
    match target {
        RouteTarget::Instance(id) => format!("instance {id}"),
        RouteTarget::Address(address) => format!("address {address}"),
    }
}

/// The cluster's nodes as the strategy sees them, sorted by name.
fn cluster_nodes(store: &Store<Node>) -> Vec<ClusterNode> {
    let mut nodes: Vec<ClusterNode> = store
        .state()
        .iter()
        .map(|node| convert::cluster_node(node))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// Routes the cloud plugin refused for good (`unsupported`, `invalid-input`: a local VPC
/// that is IPv4-only given an IPv6 PodCIDR), remembered across reconciles so that each is
/// logged once, not every resync. A refused route is counted as missing; it does not fail
/// the reconcile, which would retry the whole table for a route that cannot be made.
#[derive(Debug, Default)]
pub struct RefusedRoutes {
    routes: BTreeSet<(String, String)>,
}

impl RefusedRoutes {
    /// Note a refusal; true the first time this route (destination and target) is refused.
    pub fn first_refusal(&mut self, route: &CloudRoute) -> bool {
        self.routes
            .insert((route.destination.clone(), target_text(&route.target)))
    }

    /// Forget refusals of routes the plan no longer wants, so a route wanted again later
    /// is logged again.
    fn keep_wanted(&mut self, wanted: &[CloudRoute]) {
        self.routes.retain(|(destination, target)| {
            wanted
                .iter()
                .any(|r| &r.destination == destination && &target_text(&r.target) == target)
        });
    }
}

/// Failures of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The network strategy's cluster pass failed (a `plan-node` or `plan-routes` call, or
    /// a 0.1.0 strategy's `plan-cluster`).
    #[error("failed to plan the cluster's routes: {0}")]
    Plan(CallError),
    /// The cloud plugin's `list-routes` failed.
    #[error("failed to list the cloud's routes: {0}")]
    List(CallError),
    /// Some routes could not be created or removed (the others were).
    #[error("failed to change {failed} of {attempted} cloud routes (each is logged)")]
    Apply { failed: usize, attempted: usize },
}

/// Plan the routes for `nodes` and bring the cloud's routes to the plan.
///
/// *Expected flow*: the strategy's cluster pass (`plan-node` for each new or changed node,
/// `plan-routes`) → its warnings logged → `list-routes` → [`diff`] →
/// with `manage-routes`, `ensure-route` for each missing or misdirected route, then
/// `remove-route` for each listed route not wanted; without it, the differences are
/// logged. *Guarantees*: only routes `list-routes` reports are removed; a failed change
/// does not stop the others; a route the plugin refuses for good ([`RefusedRoutes`]) is
/// counted as missing and logged once, and does not fail the reconcile. *Assumptions*: idempotent, so it is safe to run again at any
/// time, and cancellable between calls. *Errors*: the plan or the listing failing (nothing
/// changed), or the count of changes that failed.
pub async fn reconcile(
    plugins: &Plugins,
    nodes: &[ClusterNode],
    metrics: &KubeMetrics,
    refused: &mut RefusedRoutes,
) -> Result<RouteChanges, RoutesError> {
    let plan = plugins
        .network
        .plan_cluster(nodes)
        .await
        .map_err(RoutesError::Plan)?;
    for warning in &plan.warnings {
        tracing::warn!(plugin = plugins.network.name(), %warning, "network strategy warning");
    }
    metrics.set_network_warnings(plan.warnings.len());
    if !plan.manage_routes && plan.routes.is_empty() {
        // Nothing to make and nothing to check (`vpc-native`): the cloud is not asked,
        // so a cloud plugin without routes (`list-routes` unsupported) is no error.
        metrics.set_cloud_routes_missing(0);
        return Ok(RouteChanges::default());
    }
    let present = plugins
        .cloud
        .list_routes()
        .await
        .map_err(RoutesError::List)?;
    let changes = diff(&plan.routes, &present);
    refused.keep_wanted(&plan.routes);
    if !plan.manage_routes {
        for route in &changes.ensure {
            tracing::warn!(
                destination = %route.destination,
                target = %target_text(&route.target),
                "cloud route missing or misdirected; the strategy's manage-routes is off, so it is only reported"
            );
        }
        metrics.set_cloud_routes_missing(changes.ensure.len());
        return Ok(changes);
    }
    let mut failed = 0;
    let mut missing = 0;
    for route in &changes.ensure {
        match plugins.cloud.ensure_route(route).await {
            Ok(()) => tracing::info!(
                destination = %route.destination,
                target = %target_text(&route.target),
                "cloud route ensured"
            ),
            Err(error) if failure_kind(&error) == FailureKind::Permanent => {
                // The same route fails the same way until the plan changes: counted as
                // missing, logged once, and no reason to retry the other routes.
                missing += 1;
                if refused.first_refusal(route) {
                    tracing::warn!(destination = %route.destination, target = %target_text(&route.target), %error, "cloud route refused by the cloud plugin; it stays missing");
                }
            }
            Err(error) => {
                failed += 1;
                missing += 1;
                tracing::warn!(destination = %route.destination, %error, "cloud route not ensured");
            }
        }
    }
    for destination in &changes.remove {
        match plugins.cloud.remove_route(destination).await {
            Ok(()) => tracing::info!(%destination, "cloud route removed: no node wants it"),
            Err(error) => {
                failed += 1;
                tracing::warn!(%destination, %error, "cloud route not removed");
            }
        }
    }
    metrics.set_cloud_routes_missing(missing);
    let attempted = changes.ensure.len() + changes.remove.len();
    if failed > 0 {
        return Err(RoutesError::Apply { failed, attempted });
    }
    Ok(changes)
}

/// Watch the cluster's Nodes and keep the cloud's routes as the strategy plans them,
/// until dropped (the leader runs it; a new term starts from a fresh watch).
pub async fn control(client: Client, plugins: Plugins, metrics: KubeMetrics) {
    let resync = RESYNC;
    let (store, writer) = reflector::store::<Node>();
    let changed = Notify::new();
    let events = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(|node| node.managed_fields_mut().clear());
    let watch = reflector::reflector(writer, events).for_each(|event| {
        match event {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                changed.notify_one()
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "node watch failed; retrying with backoff"),
        }
        std::future::ready(())
    });
    let reconcile_loop = async {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        // What the strategy last planned for, and when; `None` after a failure.
        let mut last: Option<(Vec<ClusterNode>, Instant)> = None;
        let mut refused = RefusedRoutes::default();
        let mut retry = FIRST_RETRY;
        loop {
            let wait = if last.is_some() { resync } else { retry };
            let _ = tokio::time::timeout(wait, changed.notified()).await;
            tokio::time::sleep(SETTLE).await;
            let nodes = cluster_nodes(&store);
            if let Some((planned, at)) = &last
                && *planned == nodes
                && at.elapsed() < resync
            {
                // A heartbeat or a condition changed, nothing the strategy sees.
                continue;
            }
            match reconcile(&plugins, &nodes, &metrics, &mut refused).await {
                Ok(changes) => {
                    tracing::debug!(nodes = nodes.len(), ?changes, "cloud routes reconciled");
                    last = Some((nodes, Instant::now()));
                    retry = FIRST_RETRY;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "cloud routes not reconciled");
                    last = None;
                    retry = (retry * 2).min(resync);
                }
            }
        }
    };
    tokio::join!(watch, reconcile_loop);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_address(destination: &str, address: &str) -> CloudRoute {
        CloudRoute {
            destination: destination.into(),
            target: RouteTarget::Address(address.into()),
        }
    }

    #[test]
    fn missing_and_misdirected_routes_are_ensured_and_unwanted_ones_removed() {
        let wanted = [
            to_address("10.244.1.0/24", "10.0.0.11"),
            to_address("10.244.2.0/24", "10.0.0.12"),
            to_address("10.244.3.0/24", "10.0.0.13"),
        ];
        let present = [
            to_address("10.244.1.0/24", "10.0.0.11"),
            to_address("10.244.2.0/24", "10.0.0.99"),
            to_address("10.244.9.0/24", "10.0.0.19"),
        ];
        assert_eq!(
            diff(&wanted, &present),
            RouteChanges {
                ensure: vec![wanted[1].clone(), wanted[2].clone()],
                remove: vec!["10.244.9.0/24".into()],
            }
        );
        assert_eq!(diff(&wanted, &wanted), RouteChanges::default());
        assert_eq!(
            diff(&[], &present).remove.len(),
            3,
            "no node left: every listed route goes"
        );
    }

    #[test]
    fn a_refused_route_is_logged_once_while_it_is_wanted() {
        let ipv6 = to_address("fd00:244:1::/64", "10.0.0.11");
        let mut refused = RefusedRoutes::default();
        assert!(refused.first_refusal(&ipv6));
        assert!(!refused.first_refusal(&ipv6), "the next resync is quiet");
        assert!(
            refused.first_refusal(&to_address("fd00:244:1::/64", "10.0.0.12")),
            "another target is another route"
        );
        refused.keep_wanted(&[]);
        assert!(
            refused.first_refusal(&ipv6),
            "wanted again after it was not"
        );
    }

    #[test]
    fn destinations_compare_as_networks() {
        let wanted = [to_address("fd00:244:1::/64", "10.0.0.11")];
        let present = [to_address("fd00:244:1:0::/64", "10.0.0.11")];
        assert_eq!(diff(&wanted, &present), RouteChanges::default());
    }

    #[test]
    fn a_route_to_an_instance_is_ensured_again_when_the_cloud_lists_it_by_address() {
        let wanted = [CloudRoute {
            destination: "10.244.1.0/24".into(),
            target: RouteTarget::Instance("cell-0a1b2c3d".into()),
        }];
        let present = [to_address("10.244.1.0/24", "10.0.0.11")];
        let changes = diff(&wanted, &present);
        assert_eq!(changes.ensure, wanted.to_vec());
        assert!(changes.remove.is_empty());
    }
}
