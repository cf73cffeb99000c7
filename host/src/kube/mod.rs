//! The host's Kubernetes side: the virtual node and the pods bound to it.
//!
//! Separate loops, as in virtual-kubelet's `node` package, each in its own file:
//!
//! - [`leader`]: of the replicas serving one node, only the leader runs anything below;
//!   it stops at once when it loses the lock.
//! - [`node`]: registers the Node and reports its status; [`lease`]: renews its Lease.
//! - [`adopt`]: at start, adopts this controller's cells; then sweeps orphans.
//! - [`pods`] → [`worker`] → [`status`]: the pod watch hands each pod to a worker, which
//!   calls the plugins ([`provider`]), installs the pod's hostPort rules ([`node_rules`])
//!   and writes the pod's status; [`events`] tells users what failed or waits.
//! - [`routes`]: watches the cluster's Nodes and keeps the cloud's routes as the network
//!   strategy plans them (node by node: `plan-node` for each new or changed node, then
//!   `plan-routes`; a 0.1.0 strategy's single `plan-cluster`).
//!
//! What outlives a leader term is built once by [`NodeLoop::new`] and shared: the pod
//! watch and its store, the cells' management IPs ([`cells`]), the node's rules and the
//! [`metrics`]; the kubelet API reads the first two on every replica.
//!
//! Data flows one way: watch → worker → plugins (decide) → cloud and node rules (act) → status.
//!
//! All of it talks to the API server through one [`client`], over HTTP/2 where the server
//! offers it.

pub mod adopt;
pub mod agents;
pub mod cells;
pub mod client;
pub mod convert;
pub mod events;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod node_rules;
pub mod pods;
pub mod provider;
pub mod routes;
pub mod status;
pub mod stored_pod;
pub mod volumes;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use kube::{Api, Client};

use crate::config::NodeConfig;
use crate::net::hostport::HostPortRules;
use agents::CellAgents;
use cells::CellDirectory;
use leader::{LeaderElector, LeaderSettings};
use metrics::KubeMetrics;
use node_rules::NodeRules;
use pods::PodWatch;
use provider::Plugins;
use stored_pod::StoredPod;
use worker::{Context, HostportTable};

/// The field manager of every server-side apply cellet makes.
pub const FIELD_MANAGER: &str = "cellet";

/// What to do with pods of DaemonSets.
///
/// A DaemonSet that tolerates every taint lands one pod on each node, the virtual one
/// included, and there each pod costs a cloud instance — Kip's users were surprised by
/// exactly that. So the default refuses them: the pod stays Pending, with status reason
/// `DaemonSetPodRefused` and an Event saying why. Pending rather than Failed: a Failed
/// DaemonSet pod is deleted and recreated by its controller, again and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DaemonSetPolicy {
    #[default]
    Refuse,
    /// Run them like any other pod (a cell each).
    Allow,
}

/// Settings of the Kubernetes loop; the defaults are the kubelet's where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// How often the node status is computed (kubelet `nodeStatusUpdateFrequency`).
    pub node_status_update_frequency: Duration,
    /// How often an unchanged status is reported anyway (kubelet
    /// `nodeStatusReportFrequency`; liveness is the Lease's job).
    pub node_status_report_frequency: Duration,
    /// `leaseDurationSeconds` of the node Lease (kubelet `nodeLeaseDurationSeconds`).
    pub node_lease_duration: Duration,
    /// How often the node Lease is renewed (the kubelet: a quarter of the duration).
    pub node_lease_renew_interval: Duration,
    /// Pods reconciled at once.
    pub max_concurrent_reconciles: u16,
    pub daemonsets: DaemonSetPolicy,
    /// How often orphan cells are looked for (deleted on the second sighting).
    pub orphan_sweep_interval: Duration,
    /// How often a running pod is looked at again without a change (catches a cell that
    /// died behind cellet's back).
    pub pod_resync: Duration,
    pub leader: LeaderSettings,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            node_status_update_frequency: Duration::from_secs(10),
            node_status_report_frequency: Duration::from_secs(300),
            node_lease_duration: Duration::from_secs(40),
            node_lease_renew_interval: Duration::from_secs(10),
            max_concurrent_reconciles: 32,
            daemonsets: DaemonSetPolicy::Refuse,
            orphan_sweep_interval: Duration::from_secs(20),
            pod_resync: Duration::from_secs(60),
            leader: LeaderSettings::default(),
        }
    }
}

/// Errors of starting the Kubernetes loop; once started, it retries everything itself.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable credentials: neither `KUBECONFIG` (or `~/.kube/config`) nor the
    /// in-cluster service account.
    #[error(
        "failed to build a Kubernetes client from KUBECONFIG, ~/.kube/config or the in-cluster config: {source}"
    )]
    Client { source: kube::Error },
}

/// A client with the ambient credentials: `KUBECONFIG` (or `~/.kube/config`), else the
/// in-cluster service account; over HTTP/2 where the API server offers it ([`client`]).
pub async fn connect() -> Result<Client, KubeError> {
    let config = kube::Config::infer().await.map_err(|e| KubeError::Client {
        source: kube::Error::InferConfig(e),
    })?;
    crate::api::tls::install_default_provider();
    client::client_from_config(config).map_err(|source| KubeError::Client { source })
}

/// What every leader term shares, built once per process.
pub struct Shared {
    pub client: Client,
    pub node: NodeConfig,
    pub settings: KubeSettings,
    pub plugins: Plugins,
    pub pods: PodWatch,
    pub cells: Arc<CellDirectory>,
    pub rules: Arc<NodeRules>,
    /// The cell agents (`None`: the cloud runs none, as the `mock` test plugin).
    pub agents: Option<Arc<CellAgents>>,
    pub metrics: KubeMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.node.name)
            .field("plugins", &self.plugins)
            .finish_non_exhaustive()
    }
}

/// The node, ready to run. Built before it runs, so the kubelet API can be given its pod
/// store and cell directory first.
pub struct NodeLoop {
    shared: Shared,
    watch: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for NodeLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLoop")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl NodeLoop {
    pub fn new(
        client: Client,
        node: NodeConfig,
        settings: KubeSettings,
        plugins: Plugins,
        rules: HostPortRules,
        agents: Option<Arc<CellAgents>>,
        metrics: KubeMetrics,
    ) -> Self {
        let (pods, watch) = PodWatch::new(client.clone(), &node.name);
        let rules = Arc::new(NodeRules::new(rules, metrics.clone()));
        let shared = Shared {
            client,
            node,
            settings,
            plugins,
            pods,
            cells: Arc::new(CellDirectory::new(agents.clone())),
            rules,
            agents,
            metrics,
        };
        NodeLoop {
            shared,
            watch: Box::pin(watch),
        }
    }

    /// The node's pods, as the process's watch sees them.
    pub fn pods(&self) -> Store<StoredPod> {
        self.shared.pods.store()
    }

    /// The management IPs of the cells, as the workers last saw them.
    pub fn cells(&self) -> Arc<CellDirectory> {
        Arc::clone(&self.shared.cells)
    }

    /// Run the node until `shutdown` completes.
    ///
    /// *Expected flow*: watch the node's pods for the life of the process; wait for
    /// leadership; as leader, register the node, renew its Lease, report its status, adopt
    /// cells and re-render the node's rules, then work pods; on losing leadership stop all
    /// of that at once (every task is dropped mid-flight; all of them are idempotent) and
    /// wait for leadership again. *Guarantees*: on `shutdown`, work stops and leadership is
    /// released so another replica takes over without waiting out the lock; cells and node
    /// rules are left in place, for the next leader to adopt.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let NodeLoop { shared, watch } = self;
        tokio::select! {
            () = watch => tracing::error!(node = %shared.node.name, "pod watch ended"),
            () = lead(&shared, shutdown) => {}
        }
    }
}

/// Take turns as leader until `shutdown` completes.
async fn lead(shared: &Shared, shutdown: impl Future<Output = ()>) {
    let node = &shared.node;
    let mut elector = LeaderElector::new(
        shared.client.clone(),
        &node.name,
        leader::process_identity(),
        shared.settings.leader.clone(),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = elector.acquire() => {}
        }
        shared.metrics.set_leader(true);
        let outcome = tokio::select! {
            () = &mut shutdown => None,
            lost = elector.hold() => Some(lost),
            () = act(shared) => {
                // None of the loops ends by itself; if one ever does, start over.
                tracing::error!(node = %node.name, "node loops ended; starting over");
                Some(leader::Lost::Abandoned)
            }
        };
        shared.metrics.set_leader(false);
        match outcome {
            Some(lost) => {
                tracing::warn!(?lost, identity = %elector.identity(), "not leading; stopped acting");
                if lost == leader::Lost::Abandoned
                    && let Err(error) = elector.release().await
                {
                    tracing::warn!(%error, "leadership not released");
                }
            }
            None => {
                if let Err(error) = elector.release().await {
                    tracing::warn!(%error, "leadership not released; another replica waits for the lock to expire");
                }
                tracing::info!(node = %node.name, "stopped; cells left running for the next leader");
                return;
            }
        }
    }
}

/// Everything the leader does, until dropped.
async fn act(shared: &Shared) {
    let Shared {
        client,
        node,
        settings,
        plugins,
        ..
    } = shared;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut retry = Duration::from_millis(200);
    let registered = loop {
        match node::register(&nodes, node).await {
            Ok(n) => break n,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "node not registered");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(7));
            }
        }
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease::NODE_LEASE_NAMESPACE);
    let heartbeat = lease::renew_loop(
        leases,
        registered.clone(),
        settings.node_lease_duration,
        settings.node_lease_renew_interval,
    );
    let status = node::status_loop(nodes, node.clone(), settings.clone(), plugins, registered);
    let pods = async {
        let hostports = Arc::new(HostportTable::default());
        let mut retry = Duration::from_millis(200);
        let adopted = loop {
            match adopt::adopt(client, node, plugins, &hostports, &shared.cells).await {
                Ok(adopted) => break adopted,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "adoption failed; retrying before pods are worked");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
            }
        };
        // The node's whole rule set from the adopted pods: rules of pods gone while no
        // leader ran are removed. A failure here holds no pod back; each pod's worker
        // retries its own rules and reports on the pod.
        if let Err(error) = shared.rules.replace_all(adopted.rules).await {
            tracing::warn!(%error, "node hostPort rules not re-rendered at start; the pod workers retry");
        }
        let context = Arc::new(Context::new(shared, hostports));
        let sweep = adopt::sweep(
            plugins.clone(),
            shared.pods.store(),
            adopted.orphans,
            settings.orphan_sweep_interval,
            Arc::clone(&shared.rules),
        );
        tokio::join!(
            pods::control(&shared.pods, context, settings.max_concurrent_reconciles),
            sweep
        );
    };
    let routes = routes::control(client.clone(), plugins.clone(), shared.metrics.clone());
    tokio::join!(heartbeat, status, pods, routes, shared.rules.run());
}
