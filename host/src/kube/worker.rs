//! The pod worker: one reconcile of one pod, from what the pod wants to what the cloud has.
//!
//! kube-runtime's controller calls [`reconcile`] with the newest version of a pod from the
//! store, never for the same pod twice at once, with at most `max-concurrent-reconciles`
//! pods in flight; [`error_policy`] turns a failure into a retry with exponential backoff.
//! Every step is idempotent, so a reconcile cut short (a crash, a lost leadership) is
//! simply run again, by this process or the next.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::Instrument;

use super::agents::{self, AgentError, CellAgents};
use super::cells::CellDirectory;
use super::convert;
use super::events::{Events, Reason};
use super::metrics::KubeMetrics;
use super::node_rules::{self, NodeRules, RulesError};
use super::provider::{FailureKind, Plugins, failure_kind};
use super::status::{self, Progress, StatusError};
use super::stored_pod::{StoredPod, StoredPodError};
use super::{DaemonSetPolicy, KubeSettings, Shared};
use crate::cells::ClientError;
use crate::config::NodeConfig;
use crate::plugins::bindings::{
    Admission, Cell, CellRequest, CellState, KeyValue, Pod as WitPod, PodAddressSource,
    PodNetworkPlan, PortMapping,
};
use crate::plugins::{CallError, HostportPlugin};
use cellet_agent::protocol::{PodPhase, PodReport};

/// Tag keys the host puts on every cell, besides the plugin's own.
pub const TAG_CONTROLLER: &str = "cellet.io/controller";
pub const TAG_POD_UID: &str = "cellet.io/pod-uid";
pub const TAG_POD_NAMESPACE: &str = "cellet.io/pod-namespace";
pub const TAG_POD_NAME: &str = "cellet.io/pod-name";

/// First retry after a failure, and the cap the doubling stops at.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Out of capacity: nothing changes for a while, so start slower.
const BACKOFF_CAPACITY_FIRST: Duration = Duration::from_secs(10);
/// How soon a refused pod is looked at again (a hostPort may have been freed).
const REFUSED_RECHECK: Duration = Duration::from_secs(30);
/// How soon a pod waiting for its cell is looked at again.
const WAITING_RECHECK: Duration = Duration::from_secs(5);

/// Errors of one reconcile; each names the pod and the step.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A plugin call failed.
    #[error("failed to {step} for pod {pod}: {source}")]
    Plugin {
        step: &'static str,
        pod: String,
        source: CallError,
    },
    /// The pod's status could not be written.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The pod, as the store keeps it, did not decode.
    #[error(transparent)]
    Stored(#[from] StoredPodError),
    /// The pod object could not be deleted after its cell was.
    #[error("failed to delete pod {pod}: {source}")]
    Delete { pod: String, source: kube::Error },
    /// The pod's cell agent could not be reached or refused the pod.
    #[error("failed to {step} for pod {pod}: {source}")]
    Agent {
        step: &'static str,
        pod: String,
        source: AgentError,
    },
    /// The pod's hostPort rules could not be installed or removed.
    #[error("failed to {step} for pod {pod}: {source}")]
    Rules {
        step: &'static str,
        pod: String,
        source: RulesError,
    },
}

impl WorkerError {
    fn kind(&self) -> FailureKind {
        match self {
            WorkerError::Plugin { source, .. } => failure_kind(source),
            WorkerError::Status(_)
            | WorkerError::Stored(_)
            | WorkerError::Delete { .. }
            | WorkerError::Rules { .. }
            | WorkerError::Agent { .. } => FailureKind::Transient,
        }
    }
}

/// The hostPort mappings admitted on this node, by pod UID.
///
/// Admission is serialised through this table's lock, so two pods asking for the same
/// hostPort at once are decided one after the other, the second seeing the first's
/// mappings. The table is rebuilt at start by adoption ([`super::adopt`]) from the pods
/// that already have cells, oldest first, so a restart cannot hand a running pod's port
/// to a newcomer.
#[derive(Debug, Default)]
pub struct HostportTable {
    admitted: tokio::sync::Mutex<Admitted>,
}

/// The admitted pods and all their mappings in one list: the policy is handed that list
/// as it is, so an admission costs no copy of the node's mappings (with a thousand
/// hostPort pods the copy cost more than the plugin call; BENCHMARKS.md, plugins).
#[derive(Debug, Default)]
struct Admitted {
    /// UIDs of the admitted pods (a policy may admit a pod with no mapping).
    pods: HashSet<String>,
    /// Every admitted pod's mappings; each names its pod in `pod_uid`.
    mappings: Vec<PortMapping>,
}

impl Admitted {
    /// Forget every pod not in `live`, and its mappings.
    fn keep_only(&mut self, live: &HashSet<String>) {
        let before = self.pods.len();
        self.pods.retain(|uid| live.contains(uid));
        if self.pods.len() != before {
            let pods = &self.pods;
            self.mappings.retain(|m| pods.contains(&m.pod_uid));
        }
    }

    fn remove(&mut self, uid: &str) {
        if self.pods.remove(uid) {
            self.mappings.retain(|m| m.pod_uid != uid);
        }
    }
}

/// The policy's answer, as the worker uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    Denied(String),
}

impl HostportTable {
    /// Admit `pod`'s hostPorts given the other pods' mappings. `live` gives the UIDs of
    /// the pods on the node (only asked for when there is something to decide): mappings
    /// of any other pod are forgotten first (a pod deleted behind cellet's back must not
    /// hold its ports forever).
    ///
    /// A pod that declares no hostPort has nothing to decide and is admitted without a
    /// call; an admitted pod keeps its mappings without asking again.
    pub async fn admit(
        &self,
        policy: &HostportPlugin,
        pod: &WitPod,
        live: impl FnOnce() -> HashSet<String>,
    ) -> Result<Decision, CallError> {
        let declares_host_ports = pod
            .init_containers
            .iter()
            .chain(&pod.containers)
            .any(|c| c.ports.iter().any(|p| p.host_port.is_some()));
        if !declares_host_ports {
            return Ok(Decision::Admitted);
        }
        let mut admitted = self.admitted.lock().await;
        if admitted.pods.contains(&pod.uid) {
            return Ok(Decision::Admitted);
        }
        admitted.keep_only(&live());
        match policy.admit(pod, &admitted.mappings).await? {
            Admission::Admit(mappings) => {
                admitted.pods.insert(pod.uid.clone());
                admitted.mappings.extend(mappings);
                Ok(Decision::Admitted)
            }
            Admission::Deny(reason) => Ok(Decision::Denied(reason)),
        }
    }

    /// Forget a pod's mappings (its cell is gone).
    pub async fn release(&self, uid: &str) {
        self.admitted.lock().await.remove(uid);
    }

    /// The mappings admitted for a pod (none when it declares no hostPort).
    pub async fn mappings(&self, uid: &str) -> Vec<PortMapping> {
        self.admitted
            .lock()
            .await
            .mappings
            .iter()
            .filter(|m| m.pod_uid == uid)
            .cloned()
            .collect()
    }
}

/// What every reconcile shares.
pub struct Context {
    pub plugins: Plugins,
    pub client: Client,
    pub node: NodeConfig,
    pub settings: KubeSettings,
    pub events: Events,
    /// This node's pods, as the controller's reflector sees them.
    pub store: Store<StoredPod>,
    pub hostports: Arc<HostportTable>,
    /// Management IPs of the cells, for the kubelet API.
    pub cells: Arc<CellDirectory>,
    /// The node's hostPort rules.
    pub rules: Arc<NodeRules>,
    /// The cell agents; `None` when the cloud runs none (the `mock` test plugin).
    pub agents: Option<Arc<CellAgents>>,
    pub metrics: KubeMetrics,
    /// Consecutive failures per pod UID, for the backoff; cleared by a success.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.node.name)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A term's context: what lasts across terms from `shared`, and the term's hostPort table.
    pub fn new(shared: &Shared, hostports: Arc<HostportTable>) -> Self {
        Context {
            plugins: shared.plugins.clone(),
            client: shared.client.clone(),
            node: shared.node.clone(),
            settings: shared.settings.clone(),
            events: Events::new(shared.client.clone(), &shared.node.name),
            store: shared.pods.store(),
            hostports,
            cells: Arc::clone(&shared.cells),
            rules: Arc::clone(&shared.rules),
            agents: shared.agents.clone(),
            metrics: shared.metrics.clone(),
            failures: Default::default(),
        }
    }

    fn live_uids(&self) -> HashSet<String> {
        self.store
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect()
    }

    /// Write the status for `progress`; returns whether it changed.
    async fn report(&self, pod: &Pod, progress: Progress<'_>) -> Result<bool, StatusError> {
        let desired = status::desired(pod, self.node.internal_ip, progress, Timestamp::now());
        status::write(&self.client, pod, desired).await
    }
}

/// Bring one pod to what it asks for: running in its cell, or gone with its cell.
///
/// *Expected flow*: a pod being deleted loses its cell, then its object; any other pod is
/// admitted (DaemonSet policy, hostPort policy), planned (network strategy), given a cell
/// (cloud, idempotent per UID: `get-cell` before `create-cell`), and its status written.
/// *Guarantees*: never two cells for one pod UID from this host; a pod object is deleted
/// only after it was marked for deletion (`deletionTimestamp`) and its cell is gone.
/// *Assumptions*: idempotent and cancellable at every await. *Errors*: a failed plugin
/// call, status write or delete; the pod is retried with backoff by [`error_policy`].
pub async fn reconcile(stored: Arc<StoredPod>, ctx: Arc<Context>) -> Result<Action, WorkerError> {
    let span = tracing::debug_span!("reconcile", pod = %key(&*stored));
    let result = async {
        // Decoded for this reconcile only: the store keeps the spec and status encoded.
        let pod = stored.pod()?;
        if pod.metadata.deletion_timestamp.is_some() {
            teardown(&pod, &ctx).await
        } else {
            run(&pod, &ctx).await
        }
    }
    .instrument(span)
    .await;
    ctx.metrics.pod_reconciled(result.is_ok());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid(&*stored));
    }
    result
}

/// Retry a failed pod after 1 s, doubling to 5 min (10 s first when out of capacity;
/// at once the maximum when the plugin refused the input, which will not change by itself).
pub fn error_policy(pod: Arc<StoredPod>, error: &WorkerError, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(uid(&*pod)).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(error.kind(), attempts);
    tracing::warn!(pod = %key(&*pod), %error, attempts, retry_in = ?delay, "pod reconcile failed");
    Action::requeue(delay)
}

/// The delay before retry number `attempts` (1-based).
pub fn backoff(kind: FailureKind, attempts: u32) -> Duration {
    let first = match kind {
        FailureKind::Transient => BACKOFF_FIRST,
        FailureKind::Capacity => BACKOFF_CAPACITY_FIRST,
        FailureKind::Permanent => return BACKOFF_MAX,
    };
    let doublings = attempts.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

pub(super) fn key(pod: &impl ResourceExt) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn uid(pod: &impl ResourceExt) -> String {
    pod.uid().unwrap_or_default()
}

fn plugin_error(step: &'static str, pod: &Pod) -> impl FnOnce(CallError) -> WorkerError {
    let pod = key(pod);
    move |source| WorkerError::Plugin { step, pod, source }
}

/// Delete a pod's cell, then its object.
///
/// *Expected flow*: stop the pod's containers within `deletionGracePeriodSeconds` (the
/// cell agent's job, issue #5: until then the cell's deletion is the stop), remove its
/// hostPort rules from the node, delete the cell, forget its mappings, then delete the
/// object with grace 0 and the pod's UID as precondition (a new pod of the same name is
/// never touched).
/// *Guarantees*: the rules go before the cell (no node port keeps forwarding to an address
/// the cloud may hand to another pod), and the object outlives the cell. *Assumptions*:
/// idempotent; deleting missing rules, a missing cell or a missing object succeeds.
/// *Errors*: rules that cannot be removed are an Event and a retry; the cell waits for them.
async fn teardown(pod: &Pod, ctx: &Context) -> Result<Action, WorkerError> {
    let uid = uid(pod);
    if let Err(source) = ctx.rules.remove(&uid).await {
        ctx.events
            .publish(pod, Reason::HostPortRulesFailed, source.to_string())
            .await;
        return Err(WorkerError::Rules {
            step: "remove the hostPort rules",
            pod: key(pod),
            source,
        });
    }
    if let Some(cell) = ctx
        .plugins
        .cloud
        .get_cell(&uid)
        .await
        .map_err(plugin_error("look up the cell", pod))?
    {
        if let Some(agents) = ctx.agents.as_ref().filter(|_| agents::has_agent(&cell))
            && matches!(cell.state, CellState::Running)
        {
            // Containers get their grace period; a cell whose agent is gone is simply deleted.
            if let Err(error) = agents.stop(pod, &cell).await {
                tracing::warn!(pod = %key(pod), cell = %cell.id, %error, "containers not stopped by the agent; deleting the cell");
            }
        }
        if let Err(source) = ctx.plugins.cloud.delete_cell(&cell.id).await {
            ctx.events
                .publish(pod, Reason::CellDeleteFailed, source.to_string())
                .await;
            return Err(WorkerError::Plugin {
                step: "delete the cell",
                pod: key(pod),
                source,
            });
        }
        tracing::info!(pod = %key(pod), cell = %cell.id, "cell deleted");
    }
    ctx.cells.forget(&uid);
    if let Some(agents) = &ctx.agents {
        agents.forget(&uid);
    }
    ctx.hostports.release(&uid).await;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => tracing::info!(pod = %key(pod), "pod deleted"),
        // Gone already, or the name now belongs to another pod: either way, this one is gone.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(source) => {
            return Err(WorkerError::Delete {
                pod: key(pod),
                source,
            });
        }
    }
    Ok(Action::await_change())
}

/// Admit, plan and create the pod's cell, and report its status.
async fn run(pod: &Pod, ctx: &Context) -> Result<Action, WorkerError> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Ok(Action::await_change());
    }
    if ctx.settings.daemonsets == DaemonSetPolicy::Refuse
        && convert::controller_kind(pod) == Some("DaemonSet")
    {
        let message = "DaemonSet pods are refused on this node: each would get a cloud instance of its own \
                       (this node's DaemonSet policy is `refuse`)";
        return refuse(pod, ctx, Reason::DaemonSetPodRefused, message).await;
    }
    let wit_pod = match convert::plugin_pod(pod) {
        Ok(p) => p,
        Err(error) => return refuse(pod, ctx, Reason::InvalidPod, &error.to_string()).await,
    };

    let decision = ctx
        .hostports
        .admit(&ctx.plugins.hostport, &wit_pod, || ctx.live_uids())
        .await;
    match decision {
        Ok(Decision::Admitted) => {}
        Ok(Decision::Denied(reason)) => {
            refuse(pod, ctx, Reason::HostPortDenied, &reason).await?;
            return Ok(Action::requeue(REFUSED_RECHECK));
        }
        Err(source) => {
            ctx.events
                .publish(
                    pod,
                    Reason::PluginFailed,
                    format!("hostport policy: {source}"),
                )
                .await;
            return Err(plugin_error("admit hostPorts", pod)(source));
        }
    }

    let cell = match ctx
        .plugins
        .cloud
        .get_cell(&wit_pod.uid)
        .await
        .map_err(plugin_error("look up the cell", pod))?
    {
        Some(cell) if lost_before_running(pod, &cell) => {
            replace(pod, &cell, ctx).await?;
            create(pod, wit_pod.clone(), ctx).await?
        }
        Some(cell) => cell,
        None => create(pod, wit_pod.clone(), ctx).await?,
    };
    ctx.cells.record(&cell);
    if matches!(cell.state, CellState::Stopping | CellState::Terminated) {
        let note = format!(
            "cell {} is {:?} while its pod still runs",
            cell.id, cell.state
        );
        if ctx
            .report(pod, Progress::Waiting { cell: Some(&cell) })
            .await?
        {
            ctx.events.publish(pod, Reason::CellLost, note).await;
        }
        return Ok(Action::requeue(WAITING_RECHECK));
    }
    if let Some(agents) = ctx.agents.as_ref().filter(|_| agents::has_agent(&cell)) {
        return run_in_agent(pod, &wit_pod, &cell, agents, ctx).await;
    }
    let progress = status::progress_of(&cell);
    if matches!(progress, Progress::Running { .. }) {
        // Before the status says Running, so a Running pod's hostPorts answer.
        install_rules(pod, &wit_pod, &cell, ctx).await?;
    }
    let changed = ctx.report(pod, progress).await?;
    Ok(match progress {
        Progress::Running { .. } => Action::requeue(ctx.settings.pod_resync),
        _ => {
            if changed && matches!(cell.state, CellState::Pending) {
                ctx.events
                    .publish(
                        pod,
                        Reason::CellPending,
                        format!("waiting for cell {} to boot", cell.id),
                    )
                    .await;
            }
            Action::requeue(WAITING_RECHECK)
        }
    })
}

/// Whether `cell` was lost before its pod ever ran: a host killed while the cell was
/// being made (the cloud has the instance, never booted), or an agent that never came up.
/// Such a cell holds nothing of the pod and is replaced. A cell lost under a pod that ran
/// is not: a pod never moves to another address; it is reported ([`Reason::CellLost`]).
///
/// Lost is `stopping` as much as `terminated`: cellet never starts a cell again, so a cell
/// on its way down (or down and kept, as a stopped EC2 instance or a local cell whose agent
/// exited, which both plugins report as `stopping`) will not serve the pod. Waiting for it
/// would leave the pod Pending forever.
fn lost_before_running(pod: &Pod, cell: &Cell) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(cell.state, CellState::Stopping | CellState::Terminated)
        && matches!(phase, None | Some("Pending"))
}

/// Delete a cell lost before its pod ran, so that the pod gets a new one and never has two.
async fn replace(pod: &Pod, cell: &Cell, ctx: &Context) -> Result<(), WorkerError> {
    tracing::warn!(pod = %key(pod), cell = %cell.id, state = ?cell.state, "cell lost before its pod ran; replacing it");
    ctx.plugins
        .cloud
        .delete_cell(&cell.id)
        .await
        .map_err(plugin_error("delete the lost cell", pod))?;
    if let Some(agents) = &ctx.agents {
        agents.forget(&cell.pod_uid);
    }
    ctx.events
        .publish(
            pod,
            Reason::CellLost,
            format!(
                "cell {} is {:?} before the pod ran; replacing it",
                cell.id, cell.state
            ),
        )
        .await;
    Ok(())
}

/// Make the node forward the pod's admitted hostPorts to its address in `cell`.
///
/// A pod without hostPorts (or without an address yet) costs nothing here; an unchanged
/// pod returns at once. A failure is an Event on the pod and a retry.
async fn install_rules(
    pod: &Pod,
    wit_pod: &WitPod,
    cell: &Cell,
    ctx: &Context,
) -> Result<(), WorkerError> {
    let mappings = ctx.hostports.mappings(&wit_pod.uid).await;
    if mappings.is_empty() {
        return Ok(());
    }
    let Some(address) = status::pod_address(wit_pod.host_network, cell) else {
        return Ok(());
    };
    let result = match address.parse() {
        Ok(ip) => match node_rules::rules_for(&wit_pod.uid, ip, &mappings) {
            Ok(rules) => ctx.rules.set(&wit_pod.uid, rules).await,
            Err(error) => Err(error),
        },
        Err(_) => {
            tracing::warn!(pod = %key(pod), cell = %cell.id, %address, "cell reported an unparsable pod address; no hostPort rules");
            return Ok(());
        }
    };
    if let Err(source) = result {
        ctx.events
            .publish(pod, Reason::HostPortRulesFailed, source.to_string())
            .await;
        return Err(WorkerError::Rules {
            step: "install the hostPort rules",
            pod: key(pod),
            source,
        });
    }
    Ok(())
}

/// How soon the status of a pod running in an agent is read again: restarts, readiness
/// and exits are seen this late at most (agents do not push).
const AGENT_POLL: Duration = Duration::from_secs(5);
/// How soon an agent that does not answer yet is asked again.
const AGENT_RECHECK: Duration = Duration::from_secs(2);

/// Run the pod through its cell's agent and write what the agent reports.
///
/// *Expected flow*: once the cloud reports the cell running, the pod (with its network
/// plan and resolved references) is sent to the agent once, then its status is read on
/// every reconcile; hostPort rules go in when the agent first reports the pod Running.
/// *Errors*: an agent that cannot be reached yet keeps the pod waiting (an Event, a quick
/// retry); one that refuses the pod is an Event and a retry with backoff.
async fn run_in_agent(
    pod: &Pod,
    wit_pod: &WitPod,
    cell: &Cell,
    agents: &CellAgents,
    ctx: &Context,
) -> Result<Action, WorkerError> {
    if !matches!(cell.state, CellState::Running) {
        ctx.report(pod, Progress::Waiting { cell: Some(cell) })
            .await?;
        return Ok(Action::requeue(WAITING_RECHECK));
    }
    // The pod is sent once: an agent whose runtime already holds it (after a host restart
    // too) is only asked, and the network is planned only for the one send.
    let mut answer = agents.status(cell).await;
    if matches!(&answer, Ok(report) if !runtime_holds_pod(report)) {
        let plan = ctx
            .plugins
            .network
            .plan_pod(wit_pod)
            .await
            .map_err(plugin_error("plan the network", pod))?;
        answer = agents.apply(&ctx.client, pod, cell, &plan).await;
    }
    let report = match answer {
        Ok(report) => report,
        Err(AgentError::Client(ClientError::Request { source, .. })) => {
            if ctx
                .report(pod, Progress::Waiting { cell: Some(cell) })
                .await?
            {
                let note = format!("waiting for the agent of cell {}: {source}", cell.id);
                ctx.events
                    .publish(pod, Reason::AgentUnreachable, note)
                    .await;
            }
            return Ok(Action::requeue(AGENT_RECHECK));
        }
        Err(source) => {
            ctx.events
                .publish(pod, Reason::AgentFailed, source.to_string())
                .await;
            return Err(WorkerError::Agent {
                step: "run the pod in its cell",
                pod: key(pod),
                source,
            });
        }
    };
    if report.phase == PodPhase::Running {
        install_rules(pod, wit_pod, cell, ctx).await?;
    }
    let desired = status::reported(pod, ctx.node.internal_ip, cell, &report, Timestamp::now());
    status::write(&ctx.client, pod, desired).await?;
    Ok(Action::requeue(AGENT_POLL))
}

/// Whether the agent's runtime holds the pod, so that it need not be sent again.
///
/// Not `pod_uid` alone: the agent reports it as soon as the pod's network is built, before
/// its runtime has the pod (`start_time` comes with the runtime's run). A send cut between
/// the two (the host killed mid-request: the agent drops the request's work with the
/// connection) leaves a cell with a pod network and no pod, which `pod_uid` alone would
/// keep Pending for good. Sending again is safe: the agent builds the network idempotently
/// and its runtime answers a second send of the pod it runs with success.
fn runtime_holds_pod(report: &PodReport) -> bool {
    report.pod_uid.is_some() && report.start_time.is_some()
}

/// Plan the pod's network and create its cell.
async fn create(pod: &Pod, wit_pod: WitPod, ctx: &Context) -> Result<Cell, WorkerError> {
    let plan = match ctx.plugins.network.plan_pod(&wit_pod).await {
        Ok(plan) => plan,
        Err(source) => {
            ctx.events
                .publish(
                    pod,
                    Reason::PluginFailed,
                    format!("network strategy: {source}"),
                )
                .await;
            return Err(plugin_error("plan the network", pod)(source));
        }
    };
    let user_data = match &ctx.agents {
        Some(agents) => agents
            .user_data(&wit_pod.uid)
            .map_err(|e| WorkerError::Agent {
                step: "write the cell's bootstrap document",
                pod: key(pod),
                source: e.into(),
            })?,
        None => String::new(),
    };
    let request = cell_request(wit_pod, &plan, &ctx.node.controller_id, user_data);
    match ctx.plugins.cloud.create_cell(&request).await {
        Ok(cell) => {
            tracing::info!(pod = %key(pod), cell = %cell.id, "cell created");
            ctx.events
                .publish(
                    pod,
                    Reason::CellCreated,
                    format!("created cell {} ({})", cell.id, cell.instance_type),
                )
                .await;
            Ok(cell)
        }
        Err(source) => {
            let reason = match failure_kind(&source) {
                FailureKind::Capacity => Reason::InsufficientCapacity,
                _ => Reason::CellCreateFailed,
            };
            ctx.events.publish(pod, reason, source.to_string()).await;
            Err(plugin_error("create the cell", pod)(source))
        }
    }
}

/// What the cloud plugin is asked for a pod: a second VPC address unless the pod shares
/// the cell's (`hostNetwork`, or a strategy that says so), and the tags by which this
/// controller finds the cell again (its identity, the pod's UID and names).
pub fn cell_request(
    pod: WitPod,
    plan: &PodNetworkPlan,
    controller_id: &str,
    user_data: String,
) -> CellRequest {
    let needs_pod_ip =
        !pod.host_network && matches!(plan.address_source, PodAddressSource::VpcSecondary);
    let tags = [
        (TAG_CONTROLLER, controller_id.to_string()),
        (TAG_POD_UID, pod.uid.clone()),
        (TAG_POD_NAMESPACE, pod.namespace.clone()),
        (TAG_POD_NAME, pod.name.clone()),
    ]
    .into_iter()
    .map(|(key, value)| KeyValue {
        key: key.into(),
        value,
    })
    .collect();
    CellRequest {
        pod,
        needs_pod_ip,
        user_data,
        tags,
    }
}

/// Keep a pod Pending with a reason; the Event is published when the status changes, so
/// a pod re-examined every 30 s does not repeat it.
async fn refuse(
    pod: &Pod,
    ctx: &Context,
    reason: Reason,
    message: &str,
) -> Result<Action, WorkerError> {
    let changed = ctx
        .report(
            pod,
            Progress::Refused {
                reason: reason.as_str(),
                message,
            },
        )
        .await?;
    if changed {
        tracing::info!(pod = %key(pod), reason = reason.as_str(), %message, "pod refused");
        ctx.events.publish(pod, reason, message).await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_pod_drops_its_mappings_and_only_those() {
        let mapping = |uid: &str, host_port: u16| PortMapping {
            pod_uid: uid.into(),
            pod_namespace: "default".into(),
            pod_name: format!("pod-{uid}"),
            container_name: "app".into(),
            protocol: crate::plugins::bindings::Protocol::Tcp,
            host_ip: None,
            host_port,
            container_port: 80,
        };
        let mut admitted = Admitted::default();
        for (uid, ports) in [("a", &[8080, 8081][..]), ("b", &[9090]), ("c", &[])] {
            admitted.pods.insert(uid.into());
            admitted
                .mappings
                .extend(ports.iter().map(|&port| mapping(uid, port)));
        }
        let ports = |admitted: &Admitted| -> Vec<u16> {
            admitted.mappings.iter().map(|m| m.host_port).collect()
        };

        admitted.remove("a");
        assert_eq!(ports(&admitted), [9090]);
        assert!(!admitted.pods.contains("a"));

        // "c" was admitted with no mapping and is still live; "b" is gone.
        admitted.keep_only(&HashSet::from(["c".to_string()]));
        assert!(admitted.mappings.is_empty());
        assert_eq!(admitted.pods, HashSet::from(["c".to_string()]));
    }

    #[test]
    fn only_a_cell_lost_before_its_pod_ran_is_replaced() {
        let pod = |phase: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({"status": {"phase": phase}})).unwrap()
        };
        let cell = |state| Cell {
            id: "cell-1".into(),
            pod_uid: "uid-1".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            state,
            management_ip: None,
            pod_ip: None,
            subnet_prefix: 24,
            instance_type: "local".into(),
            tags: vec![],
        };
        let terminated = cell(CellState::Terminated);
        assert!(lost_before_running(&pod(None), &terminated));
        assert!(lost_before_running(&pod(Some("Pending")), &terminated));
        assert!(
            !lost_before_running(&pod(Some("Running")), &terminated),
            "a pod never moves"
        );
        assert!(!lost_before_running(&pod(None), &cell(CellState::Pending)));
        assert!(!lost_before_running(&pod(None), &cell(CellState::Running)));
        let stopped = cell(CellState::Stopping);
        assert!(
            lost_before_running(&pod(Some("Pending")), &stopped),
            "a stopped instance never starts by itself"
        );
        assert!(!lost_before_running(&pod(Some("Running")), &stopped));
    }

    #[test]
    fn a_pod_is_sent_again_until_the_agents_runtime_holds_it() {
        assert!(!runtime_holds_pod(&PodReport::default()), "nothing applied");
        // What an apply cut after the pod network was built leaves (seen after a kill -9
        // of the host during a rollout: the pod stayed Pending, never sent again).
        let network_only = PodReport {
            pod_uid: Some("uid-1".into()),
            pod_ip: Some("10.0.0.6".parse().unwrap()),
            ..PodReport::default()
        };
        assert!(!runtime_holds_pod(&network_only));
        let running = PodReport {
            start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::now(),
            )),
            ..network_only
        };
        assert!(runtime_holds_pod(&running));
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff(FailureKind::Transient, 1), Duration::from_secs(1));
        assert_eq!(backoff(FailureKind::Transient, 4), Duration::from_secs(8));
        assert_eq!(backoff(FailureKind::Transient, 40), BACKOFF_MAX);
        assert_eq!(backoff(FailureKind::Capacity, 2), Duration::from_secs(20));
        assert_eq!(backoff(FailureKind::Permanent, 1), BACKOFF_MAX);
    }
}
