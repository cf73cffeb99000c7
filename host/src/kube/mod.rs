//! The host's Kubernetes side: the virtual node and the pods bound to it.
//!
//! Separate loops, as in virtual-kubelet's `node` package, each in its own file:
//!
//! - [`leader`]: of the replicas serving one node, only the leader runs anything below;
//!   it stops at once when it loses the lock.
//! - [`node`]: registers the Node and reports its status; [`lease`]: renews its Lease.
//! - [`adopt`]: at start, adopts this controller's cells; then sweeps orphans.
//! - [`pods`] → [`worker`] → [`status`]: the pod watch hands each pod to a worker, which
//!   calls the plugins ([`provider`]) and writes the pod's status; [`events`] tells users
//!   what failed or waits.
//!
//! Data flows one way: watch → worker → plugins (decide) → cloud (act) → status.

pub mod adopt;
pub mod convert;
pub mod events;
pub mod leader;
pub mod lease;
pub mod node;
pub mod pods;
pub mod provider;
pub mod status;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use crate::config::NodeConfig;
use leader::{LeaderElector, LeaderSettings};
use provider::Plugins;
use worker::HostportTable;

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
    Run,
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
    #[error("failed to build a Kubernetes client from KUBECONFIG, ~/.kube/config or the in-cluster config: {source}")]
    Client { source: kube::Error },
}

/// Connect with the ambient credentials and [`run`] the node until `shutdown` completes.
pub async fn serve(
    node: NodeConfig,
    settings: KubeSettings,
    plugins: Plugins,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KubeError> {
    let client = Client::try_default().await.map_err(|source| KubeError::Client { source })?;
    run(client, node, settings, plugins, shutdown).await;
    Ok(())
}

/// Run the node until `shutdown` completes.
///
/// *Expected flow*: wait for leadership; as leader, register the node, renew its Lease,
/// report its status, adopt cells, then watch and work pods; on losing leadership stop
/// all of that at once (every task is dropped mid-flight; all of them are idempotent) and
/// wait for leadership again. *Guarantees*: on `shutdown`, work stops and leadership is
/// released so another replica takes over without waiting out the lock; cells are left
/// running, for the next leader to adopt.
pub async fn run(
    client: Client,
    node: NodeConfig,
    settings: KubeSettings,
    plugins: Plugins,
    shutdown: impl Future<Output = ()>,
) {
    let mut elector = LeaderElector::new(
        client.clone(),
        &node.name,
        leader::process_identity(),
        settings.leader.clone(),
    );
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = elector.acquire() => {}
        }
        let outcome = tokio::select! {
            () = &mut shutdown => None,
            lost = elector.hold() => Some(lost),
            () = act(client.clone(), node.clone(), settings.clone(), plugins.clone()) => {
                // The loops only end when their pod store's writer is gone: start over.
                tracing::error!(node = %node.name, "node loops ended; starting over");
                Some(leader::Lost::Abandoned)
            }
        };
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
async fn act(client: Client, node: NodeConfig, settings: KubeSettings, plugins: Plugins) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut retry = Duration::from_millis(200);
    let registered = loop {
        match node::register(&nodes, &node).await {
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
    let status = node::status_loop(nodes, node.clone(), settings.clone(), &plugins, registered);
    let pods = async {
        let hostports = Arc::new(HostportTable::default());
        let mut retry = Duration::from_millis(200);
        let orphans = loop {
            match adopt::adopt(&client, &node, &plugins, &hostports).await {
                Ok(orphans) => break orphans,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "adoption failed; retrying before pods are worked");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
            }
        };
        let controller = pods::PodController::new(
            client.clone(),
            node.clone(),
            settings.clone(),
            plugins.clone(),
            hostports,
        );
        let sweep = adopt::sweep(
            plugins.clone(),
            controller.store(),
            orphans,
            settings.orphan_sweep_interval,
        );
        tokio::join!(controller.run(), sweep);
    };
    tokio::join!(heartbeat, status, pods);
}
